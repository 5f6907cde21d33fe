//! The quantized interpreter: runs a [`QuantizedProgram`] with the int8 kernels, and its float
//! steps through Burn.
//!
//! What does not change between runs is computed once: the steps' float-value lifetimes here,
//! and per input shape a [`ShapePlan`] (every value's shape, every `u8` value's place in an
//! arena), cached. A run leases an arena (one byte buffer) from a pool, so several threads run
//! the same model at once, each on its own arena, and a run of a shape seen before allocates no
//! `u8` buffer: every int8 step writes into its output's planned bytes.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use burn::backend::ops::FloatTensorOps;
use burn::backend::{Dispatch, DispatchTensor, TensorMetadata};
use burn::tensor::{Device, TensorData};

use rayon::prelude::*;

use super::activation::ActivationKernel;
use super::floats::Floats;
use super::plan::ShapePlan;
use super::wide_binary::{self, Held, Output};
use super::{chunk, reference};
use crate::graph::{BinaryOp, Node, ValueId, ValueShapes};
use crate::kernels::{self, CatInput, QBinaryOp, QParams, QTensorRef};
use crate::nn::{QConv2d, QDynamicLinear, QLayerSpec, QLinear};
use crate::ops as float_ops;
use crate::program::{Domain, QuantizedLayers, QuantizedProgram, Step};
use crate::{Error, Result};

/// A value while a quantized program runs.
#[derive(Clone, Debug)]
pub enum RunValue {
    /// A float tensor (NCHW for images).
    Float(DispatchTensor),
    /// `u8` values: NHWC for 4-D values, row-major otherwise.
    Int8(Vec<u8>),
    /// `u16` values (W8A16), laid out as `Int8` values.
    Int16(Vec<u16>),
}

/// How the int8 steps are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arithmetic {
    /// With the int8 kernels on the fastest path.
    Kernels,
    /// Convolutions and linear layers in `f64` through Burn (see `reference`), everything else
    /// with the scalar definitions: the debug model. Gives the same integers.
    FloatReference,
}

/// What sees every value of a run as it is made (`u8` values copied out of the arena).
pub(crate) type Tap<'t> = Option<&'t mut dyn FnMut(ValueId, &RunValue) -> Result<()>>;

/// The float parameters of a program's float steps, as tensors on one device.
type FloatParams = HashMap<ValueId, DispatchTensor>;

/// Plans kept per executor; more distinct input shapes than this start the cache afresh.
const MAX_PLANS: usize = 32;

/// Runs quantized programs; holds what does not change between runs.
pub(crate) struct QuantizedExecutor {
    /// For each step, the float values it reads for the last time.
    frees: Vec<Vec<ValueId>>,
    /// The float parameters uploaded to the device of the last run.
    float_params: Mutex<Option<(Device, Arc<FloatParams>)>>,
    /// The plan of each input shape seen, by the inputs' shapes.
    plans: Mutex<HashMap<Vec<Vec<usize>>, Arc<ShapePlan>>>,
    /// Arenas not in use by a run.
    arenas: Mutex<Vec<Vec<u8>>>,
    /// Whether the program works image by image, so a large batch may run in chunks.
    per_sample: bool,
    /// The arena bytes a chunk of a batch may fill, or `None` to run batches whole.
    chunk_bytes: Option<usize>,
    /// What a run does with a non-finite value it quantizes.
    non_finite: NonFinite,
}

impl Clone for QuantizedExecutor {
    /// The same settings and plans; its own arenas and float parameters.
    fn clone(&self) -> Self {
        let plans = self.plans.lock().map(|p| p.clone()).unwrap_or_default();
        QuantizedExecutor {
            frees: self.frees.clone(),
            float_params: Mutex::new(None),
            plans: Mutex::new(plans),
            arenas: Mutex::new(Vec::new()),
            per_sample: self.per_sample,
            chunk_bytes: self.chunk_bytes,
            non_finite: self.non_finite,
        }
    }
}

/// What a run does with a non-finite (NaN or infinite) float value it quantizes: a model input,
/// or the output of a float node on its way back to int8.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NonFinite {
    /// Stop with [`Error::NonFinite`] naming the value (the default). The check rides in the
    /// quantize pass: no extra pass over the input.
    #[default]
    Error,
    /// Quantize it as PyTorch does: NaN to the top of the range, infinities to its ends.
    Quantize,
}

impl QuantizedExecutor {
    /// Checks that `program` and `layers` fit together and finds the float values' lifetimes.
    pub(crate) fn new(program: &QuantizedProgram, layers: &QuantizedLayers) -> Result<Self> {
        check(program, layers)?;
        let mut last = HashMap::new();
        for (i, step) in program.steps.iter().enumerate() {
            for &id in step.inputs() {
                last.insert(id, i);
            }
        }
        let mut frees = vec![Vec::new(); program.steps.len()];
        for (id, i) in last {
            let float = matches!(program.domains[id.index()], Domain::Float);
            if float && !program.outputs.contains(&id) && !program.float_params.contains(&id) {
                frees[i].push(id);
            }
        }
        Ok(QuantizedExecutor {
            frees,
            float_params: Mutex::new(None),
            plans: Mutex::new(HashMap::new()),
            arenas: Mutex::new(Vec::new()),
            per_sample: chunk::per_sample(program),
            chunk_bytes: Some(chunk::CHUNK_ARENA_BYTES),
            non_finite: NonFinite::default(),
        })
    }

    /// Checks the program's recorded shapes along its steps (a dry run of shapes only, at the
    /// recorded input shapes): what a record loader runs before accepting a program.
    pub(crate) fn check_recorded_shapes(
        program: &QuantizedProgram,
        layers: &QuantizedLayers,
    ) -> Result<()> {
        ShapePlan::check_recorded(program, layers)
    }

    /// Forgets the float parameters uploaded for runs (after the layers changed: a record was
    /// loaded into them, or they moved to another device).
    pub(crate) fn forget_float_params(&mut self) {
        if let Ok(params) = self.float_params.get_mut() {
            *params = None;
        }
    }

    /// Sets what runs do with non-finite values they quantize.
    pub(crate) fn set_non_finite(&mut self, policy: NonFinite) {
        self.non_finite = policy;
    }

    /// What runs do with non-finite values they quantize.
    pub(crate) fn non_finite(&self) -> NonFinite {
        self.non_finite
    }

    /// Sets the arena bytes a chunk of a batch may fill (`None`: batches run whole).
    pub(crate) fn set_chunk_bytes(&mut self, bytes: Option<usize>) {
        self.chunk_bytes = bytes;
    }

    /// Whether large batches run in chunks: the program works image by image and chunking is
    /// on.
    pub(crate) fn chunks_batches(&self) -> bool {
        self.per_sample && self.chunk_bytes.is_some()
    }

    /// Runs the program on float `inputs`, showing every value to `tap` as it is made.
    pub(crate) fn run(
        &self,
        program: &QuantizedProgram,
        layers: &QuantizedLayers,
        inputs: Vec<DispatchTensor>,
        device: &Device,
        arithmetic: Arithmetic,
        tap: Tap,
    ) -> Result<Vec<DispatchTensor>> {
        if arithmetic == Arithmetic::FloatReference && kernels::active_isa() != kernels::Isa::Scalar
        {
            return kernels::with_isa(kernels::Isa::Scalar, || {
                self.run(program, layers, inputs, device, arithmetic, tap)
            })?;
        }
        let plan = self.plan(program, layers, &inputs)?;
        if arithmetic == Arithmetic::Kernels
            && tap.is_none()
            && let Some(chunk) = self.chunk_size(&plan, &inputs)
        {
            let chunks = chunk::split(&inputs, chunk);
            let outputs = (chunks.into_par_iter())
                .map(|inputs| {
                    let plan = self.plan(program, layers, &inputs)?;
                    let run = self.run_of(program, layers, &plan, device, arithmetic)?;
                    self.run_whole(&run, inputs, None)
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(chunk::join(outputs));
        }
        let run = self.run_of(program, layers, &plan, device, arithmetic)?;
        self.run_whole(&run, inputs, tap)
    }

    /// Images per chunk when inputs whose whole-batch plan is `whole` should run in chunks
    /// (see [`chunk`]), or `None`.
    fn chunk_size(&self, whole: &ShapePlan, inputs: &[DispatchTensor]) -> Option<usize> {
        match (chunk::batch_of(inputs), self.chunk_bytes) {
            (Some(batch), Some(budget)) if self.per_sample && batch > 1 => {
                chunk::chunk_size(batch, whole.size.div_ceil(batch), budget)
            }
            _ => None,
        }
    }

    /// The context of one run of `program` under `plan`.
    fn run_of<'a>(
        &self,
        program: &'a QuantizedProgram,
        layers: &'a QuantizedLayers,
        plan: &'a ShapePlan,
        device: &'a Device,
        arithmetic: Arithmetic,
    ) -> Result<Run<'a>> {
        Ok(Run {
            program,
            layers,
            device,
            arithmetic,
            plan,
            params: self.float_params(program, layers, device)?,
            non_finite: self.non_finite,
        })
    }

    /// Runs the program on all of `inputs` at once.
    fn run_whole(
        &self,
        run: &Run<'_>,
        inputs: Vec<DispatchTensor>,
        mut tap: Tap,
    ) -> Result<Vec<DispatchTensor>> {
        let program = run.program;
        let mut arena = Lease::take(&self.arenas, run.plan.size);
        let inputs = program.inputs.iter().copied().zip(inputs);
        let mut floats = Floats::new(inputs, &run.params, run.device);
        for (step, frees) in program.steps.iter().zip(&self.frees) {
            run.step(step, frees, &mut arena.bytes, &mut floats)?;
            if let Some(tap) = tap.as_mut() {
                run.show(step, &arena.bytes, &mut floats, &mut **tap)?;
            }
            for &id in frees {
                floats.remove(id);
            }
        }
        (program.outputs.iter())
            .map(|&id| floats.take_tensor(id))
            .collect()
    }

    /// The plan of runs on inputs of the shapes of `inputs`: cached, or made and cached.
    fn plan(
        &self,
        program: &QuantizedProgram,
        layers: &QuantizedLayers,
        inputs: &[DispatchTensor],
    ) -> Result<Arc<ShapePlan>> {
        let key: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
        if let Some(plan) = self.plans.lock().map_err(poisoned)?.get(&key) {
            return Ok(Arc::clone(plan));
        }
        let plan = Arc::new(ShapePlan::new(program, layers, key.clone())?);
        let mut plans = self.plans.lock().map_err(poisoned)?;
        if plans.len() >= MAX_PLANS {
            plans.clear();
        }
        plans.insert(key, Arc::clone(&plan));
        Ok(plan)
    }

    fn float_params(
        &self,
        program: &QuantizedProgram,
        layers: &QuantizedLayers,
        device: &Device,
    ) -> Result<Arc<FloatParams>> {
        let mut cache = self.float_params.lock().map_err(poisoned)?;
        if let Some((d, params)) = cache.as_ref()
            && d == device
        {
            return Ok(Arc::clone(params));
        }
        let params: HashMap<_, _> = program
            .float_params
            .iter()
            .zip(&layers.floats)
            .map(|(&id, param)| {
                let shape = program.shape_at(id, 1)?;
                let values: Vec<f32> = param.val().into_data().iter::<f32>().collect();
                let data = TensorData::new(values, shape);
                Ok((id, Dispatch::float_from_data(data, device.as_dispatch())))
            })
            .collect::<Result<_>>()?;
        let params = Arc::new(params);
        *cache = Some((device.clone(), Arc::clone(&params)));
        Ok(params)
    }
}

/// The error of a lock whose holder panicked.
fn poisoned<T>(_: T) -> Error {
    Error::InvalidGraph("a previous run panicked".into())
}

/// Checks that every step's layers and values exist.
fn check(program: &QuantizedProgram, layers: &QuantizedLayers) -> Result<()> {
    let bad = |what: String| Err(Error::InvalidGraph(what));
    if program.domains.len() != program.values.len() {
        return bad("the program's value and domain tables differ in length".into());
    }
    if program.float_params.len() != layers.floats.len() {
        return bad(format!(
            "the program reads {} float parameters, the model holds {}",
            program.float_params.len(),
            layers.floats.len()
        ));
    }
    for (i, step) in program.steps.iter().enumerate() {
        match step {
            Step::Conv2d { layer, .. } if *layer >= layers.convs.len() => {
                return bad(format!(
                    "step {i} uses convolution {layer}, the model has {}",
                    layers.convs.len()
                ));
            }
            Step::Linear { layer, .. } if *layer >= layers.linears.len() => {
                return bad(format!(
                    "step {i} uses linear layer {layer}, the model has {}",
                    layers.linears.len()
                ));
            }
            Step::DynamicLinear { layer, .. } if *layer >= layers.dynamic_linears.len() => {
                return bad(format!(
                    "step {i} uses dynamic linear layer {layer}, the model has {}",
                    layers.dynamic_linears.len()
                ));
            }
            _ => {}
        }
        let mut ids = step.inputs().iter().chain(step.outputs());
        if let Some(id) = ids.find(|id| id.index() >= program.values.len()) {
            return bad(format!("step {i} refers to unknown value {id}"));
        }
    }
    Ok(())
}

/// An arena leased from a pool for one run; it goes back to the pool when dropped.
struct Lease<'p> {
    pool: &'p Mutex<Vec<Vec<u8>>>,
    bytes: Vec<u8>,
}

impl<'p> Lease<'p> {
    /// An arena of at least `size` bytes: one from the pool, grown if needed, or a new one.
    fn take(pool: &'p Mutex<Vec<Vec<u8>>>, size: usize) -> Self {
        let mut bytes = pool
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_default();
        if bytes.len() < size {
            bytes.resize(size, 0);
        }
        Lease { pool, bytes }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.push(std::mem::take(&mut self.bytes));
        }
    }
}

/// The arena around one step's output: the bytes before and after it, which hold the values
/// the step reads (the plan never places a read value over the output).
struct Around<'a> {
    before: &'a [u8],
    after: &'a [u8],
    out: Range<usize>,
}

impl Around<'_> {
    /// Splits `arena` into the output's bytes and the rest.
    fn split(arena: &mut [u8], out: Range<usize>) -> (&mut [u8], Around<'_>) {
        let (before, rest) = arena.split_at_mut(out.start);
        let (output, after) = rest.split_at_mut(out.len());
        (output, Around { before, after, out })
    }

    /// The bytes of `slot`, which must not overlap the output.
    fn get(&self, slot: Range<usize>) -> Result<&[u8]> {
        if slot.end <= self.out.start {
            Ok(&self.before[slot])
        } else if slot.start >= self.out.end {
            Ok(&self.after[slot.start - self.out.end..slot.end - self.out.end])
        } else {
            Err(Error::InvalidGraph(format!(
                "a step reads arena bytes {slot:?} over its output {:?}",
                self.out
            )))
        }
    }
}

/// One run of a program.
struct Run<'a> {
    program: &'a QuantizedProgram,
    layers: &'a QuantizedLayers,
    device: &'a Device,
    arithmetic: Arithmetic,
    plan: &'a ShapePlan,
    params: Arc<FloatParams>,
    non_finite: NonFinite,
}

impl Run<'_> {
    fn qparams(&self, id: ValueId) -> Result<QParams> {
        self.program
            .qparams(id)
            .ok_or_else(|| Error::InvalidGraph(format!("value {id} is read as int8 but is float")))
    }

    /// `[n, c, h, w]` of a 4-D value.
    fn image(&self, id: ValueId) -> Result<[usize; 4]> {
        let shape = self.plan.shape(id)?;
        <[usize; 4]>::try_from(shape).map_err(|_| Error::Shape {
            context: format!("value {id}"),
            expected: "a 4-D image tensor".into(),
            got: format!("{shape:?}"),
        })
    }

    /// Runs one step, after which the values `frees` are no longer read: `u8` outputs into
    /// their arena bytes, float outputs into `floats`.
    fn step(
        &self,
        step: &Step,
        frees: &[ValueId],
        arena: &mut [u8],
        floats: &mut Floats,
    ) -> Result<()> {
        match step {
            Step::Float(node) => self.float_step(node, frees, floats),
            Step::DynamicLinear {
                layer,
                input,
                output,
            } => {
                let shape = self.plan.shape(*output)?.to_vec();
                let layer = &self.layers.dynamic_linears[*layer];
                let mut y = floats.buffer(shape.iter().product());
                self.dynamic_linear(layer, floats.host(*input)?, &mut y)?;
                floats.insert_host(*output, y, shape);
                Ok(())
            }
            Step::Dequantize { input, output } => {
                let x = arena.get(self.plan.slot(*input)?).ok_or_else(|| {
                    Error::InvalidGraph(format!("value {input} is out of the arena"))
                })?;
                let tensor = self.dequantize(*input, x)?;
                floats.insert_tensor(*output, tensor);
                Ok(())
            }
            Step::Reshape { input, output } if self.plan.moves_no_bytes(*input, *output) => Ok(()),
            _ => {
                let output = step.outputs()[0];
                let (out, around) = Around::split(arena, self.plan.slot(output)?);
                match step {
                    Step::Quantize { input, output } => {
                        self.quantize(floats.host(*input)?, [*input, *output], out)
                    }
                    Step::Conv2d { .. } | Step::Linear { .. } => self.layer(step, &around, out),
                    _ => self.int8(step, &around, out),
                }
            }
        }
    }

    /// A float node: an activation the kernels run on host values, or any node through Burn.
    fn float_step(&self, node: &Node, frees: &[ValueId], floats: &mut Floats) -> Result<()> {
        if let Some((kernel, shape)) = ActivationKernel::of(node, |id| self.plan.shape(id))? {
            let input = node.inputs[0];
            let mut values = floats.host_to_change(input, frees.contains(&input))?;
            kernel.run(&mut values)?;
            floats.insert_host(node.outputs[0], values, shape.to_vec());
            return Ok(());
        }
        let args = (node.inputs.iter())
            .map(|&id| floats.tensor(id))
            .collect::<Result<Vec<_>>>()?;
        let shape_of = |id: ValueId| self.plan.shape(id).map(<[usize]>::to_vec);
        let outputs = float_ops::run_node(node, args, &shape_of, self.plan.batch, self.device)?;
        for (&id, tensor) in node.outputs.iter().zip(outputs) {
            floats.insert_tensor(id, tensor);
        }
        Ok(())
    }

    /// Shows what `step` made to `tap`.
    fn show(
        &self,
        step: &Step,
        arena: &[u8],
        floats: &mut Floats,
        tap: &mut dyn FnMut(ValueId, &RunValue) -> Result<()>,
    ) -> Result<()> {
        for &id in step.outputs() {
            let value = match self.program.domains[id.index()] {
                Domain::Int8(_) => RunValue::Int8(arena[self.plan.slot(id)?].to_vec()),
                Domain::Int16(_) => {
                    RunValue::Int16(kernels::as_u16(&arena[self.plan.slot(id)?])?.to_vec())
                }
                Domain::Float => RunValue::Float(floats.tensor(id)?),
            };
            tap(id, &value)?;
        }
        Ok(())
    }

    /// The bytes of `u8` value `id`.
    fn bytes<'b>(&self, around: &'b Around<'b>, id: ValueId) -> Result<&'b [u8]> {
        around.get(self.plan.slot(id)?)
    }

    /// Float value `input` to `u8` or `u16` value `output` in one pass (NCHW float to NHWC for
    /// images), checking that every value is finite unless the policy says to quantize them.
    fn quantize(&self, x: &[f32], [input, output]: [ValueId; 2], out: &mut [u8]) -> Result<()> {
        let shape = self.plan.shape(output)?;
        let finite = if let Domain::Int16(qp) = self.program.domains[output.index()] {
            let dims = nc_plane(shape);
            let out = kernels::as_u16_mut(out)?;
            kernels::quantize_wide(x, dims, qp, out)?
        } else {
            let qp = self.qparams(output)?;
            match *shape {
                [n, c, h, w] => kernels::quantize_nchw_to_nhwc(x, n, c, h, w, qp, out)?,
                _ => kernels::quantize(x, qp, out)?,
            }
        };
        if finite || self.non_finite == NonFinite::Quantize {
            return Ok(());
        }
        let context = match self.program.inputs.iter().position(|&id| id == input) {
            Some(k) => format!("model input {k} (value {input}, shape {shape:?})"),
            None => format!("float value {input} (shape {shape:?}), quantized into {output}"),
        };
        Err(Error::NonFinite { context })
    }

    /// `u8` or `u16` to a float tensor (NHWC to NCHW float for images).
    fn dequantize(&self, input: ValueId, q: &[u8]) -> Result<DispatchTensor> {
        let shape = self.plan.shape(input)?;
        let mut x = vec![0f32; shape.iter().product()];
        match (self.program.domains[input.index()], shape) {
            (Domain::Int16(qp), _) => {
                kernels::dequantize_wide(kernels::as_u16(q)?, nc_plane(shape), qp, &mut x)?
            }
            (_, &[n, c, h, w]) => {
                kernels::dequantize_nhwc_to_nchw(q, n, h, w, c, self.qparams(input)?, &mut x)?
            }
            _ => kernels::dequantize(q, self.qparams(input)?, &mut x)?,
        }
        let data = TensorData::new(x, shape.to_vec());
        Ok(Dispatch::float_from_data(data, self.device.as_dispatch()))
    }

    /// A convolution or linear layer, on the kernels or (debug model) in float.
    fn layer(&self, step: &Step, around: &Around, out: &mut [u8]) -> Result<()> {
        let reference = self.arithmetic == Arithmetic::FloatReference;
        let (input, output) = (step.inputs()[0], step.outputs()[0]);
        let x = self.bytes(around, input)?;
        let wide = |layer: &QLayerSpec| {
            layer.is_wide().then(|| LayerIo {
                input: self.program.domains[input.index()],
                output: self.program.domains[output.index()],
            })
        };
        match step {
            Step::Conv2d { layer, .. } => {
                let layer = &self.layers.convs[*layer];
                let [n, c, h, w] = self.image(input)?;
                if reference {
                    return reference::conv2d(layer, x, [n, c, h, w], self.device, out);
                }
                if let Some(io) = wide(&layer.spec) {
                    return io.conv(layer, x, [n, h, w], out);
                }
                let (packed, requant) = layer.prepared()?;
                kernels::qconv2d_prepared(x, n, h, w, packed, requant, out)
            }
            Step::Linear { layer, .. } => {
                let layer = &self.layers.linears[*layer];
                let rows = self.plan.shape(input)?[0];
                if reference {
                    return reference::linear(layer, x, rows, self.device, out);
                }
                if let Some(io) = wide(&layer.spec) {
                    return io.linear(layer, x, out);
                }
                let (packed, requant) = layer.prepared()?;
                kernels::qlinear_prepared(x, rows, packed, requant, out)
            }
            other => Err(Error::InvalidGraph(format!(
                "{other:?} is not a layer step"
            ))),
        }
    }

    /// A dynamic linear layer of `x` into `y` (rows of its output features), on the kernels
    /// or (debug model) through Burn in `f64`.
    fn dynamic_linear(&self, layer: &QDynamicLinear, x: &[f32], y: &mut [f32]) -> Result<()> {
        let packed = layer.packed()?;
        let rows = y.len() / packed.out_features();
        match self.arithmetic {
            Arithmetic::Kernels => kernels::qlinear_dynamic(x, rows, packed, y),
            Arithmetic::FloatReference => reference::dynamic_linear(layer, x, self.device, y),
        }
    }

    /// The element-wise int8 steps: binary ops, tables, clamps, concatenation, reshape.
    fn int8(&self, step: &Step, around: &Around, out: &mut [u8]) -> Result<()> {
        match step {
            Step::Binary {
                op,
                inputs: [a, b],
                output,
                relu,
            } => {
                let kind = match op {
                    BinaryOp::Add => QBinaryOp::Add,
                    BinaryOp::Sub => QBinaryOp::Sub,
                    BinaryOp::Mul => QBinaryOp::Mul,
                    BinaryOp::Div => return Err(Error::InvalidGraph("int8 division".into())),
                };
                let domain = |id: ValueId| self.program.domains[id.index()];
                if [a, b, output].iter().any(|&&id| domain(id).bytes() == 2) {
                    let held = |id: ValueId| -> Result<Held> {
                        let (bytes, shape) = (self.bytes(around, id)?, self.plan.physical(id)?);
                        let domain = domain(id);
                        Ok(Held {
                            bytes,
                            shape,
                            domain,
                        })
                    };
                    let out = Output {
                        bytes: out,
                        shape: self.plan.physical(*output)?,
                        domain: domain(*output),
                    };
                    return wide_binary::run(kind, [held(*a)?, held(*b)?], out, *relu);
                }
                let operand = |id: ValueId| -> Result<QTensorRef> {
                    let (bytes, shape) = (self.bytes(around, id)?, self.plan.physical(id)?);
                    Ok(QTensorRef::new(bytes, shape, self.qparams(id)?))
                };
                let (so, qo) = (self.plan.physical(*output)?, self.qparams(*output)?);
                kernels::qbinary(kind, operand(*a)?, operand(*b)?, so, qo, *relu, out)
            }
            Step::Table { table, input, .. } => {
                kernels::lookup(self.bytes(around, *input)?, table, out)
            }
            Step::Clamp {
                input, min, max, ..
            } => {
                let x = self.bytes(around, *input)?;
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = v.clamp(*min, *max);
                }
                Ok(())
            }
            Step::Cat { inputs, output } => {
                let shape = self.plan.shape(*output)?;
                let pixels = shape.iter().product::<usize>() / shape[1];
                let parts = (inputs.iter())
                    .map(|&id| {
                        Ok(CatInput {
                            data: self.bytes(around, id)?,
                            channels: self.plan.shape(id)?[1],
                            qparams: self.qparams(id)?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                kernels::qcat(&parts, pixels, self.qparams(*output)?, out)
            }
            Step::Reshape { input, output } => {
                let (from, to) = (self.plan.shape(*input)?, self.plan.shape(*output)?);
                reshape_copy(self.bytes(around, *input)?, from, to, out);
                Ok(())
            }
            _ => self.image_op(step, around, out),
        }
    }

    /// The int8 steps over images: pad and pools.
    fn image_op(&self, step: &Step, around: &Around, out: &mut [u8]) -> Result<()> {
        match step {
            Step::Pad {
                padding,
                value,
                input,
                ..
            } => {
                let [n, c, h, w] = self.image(*input)?;
                let x = self.bytes(around, *input)?;
                kernels::qpad_nhwc(x, n, h, w, c, *padding, *value, out)
            }
            Step::MaxPool2d { pool, input, .. } => {
                let [n, c, h, w] = self.image(*input)?;
                kernels::qmax_pool2d(self.bytes(around, *input)?, n, h, w, c, pool, out)
            }
            Step::AvgPool2d {
                pool,
                input,
                output,
            } => {
                let [n, c, h, w] = self.image(*input)?;
                let (from, to) = (self.qparams(*input)?, self.qparams(*output)?);
                let x = self.bytes(around, *input)?;
                kernels::qavg_pool2d(x, n, h, w, c, pool, from, to, out)
            }
            Step::GlobalAvgPool { input, output } => {
                let [n, c, h, w] = self.image(*input)?;
                let (from, to) = (self.qparams(*input)?, self.qparams(*output)?);
                let x = self.bytes(around, *input)?;
                kernels::qglobal_avg_pool(x, n, h, w, c, from, to, out)
            }
            other => Err(Error::InvalidGraph(format!(
                "{other:?} is not an int8 step the executor knows"
            ))),
        }
    }
}

/// `[n, c, plane]` of a value of `shape`: an NCHW image's, or `[rows, features, 1]` for a value
/// held row-major.
pub(crate) fn nc_plane(shape: &[usize]) -> [usize; 3] {
    match *shape {
        [n, c, h, w] => [n, c, h * w],
        _ => {
            let features = shape.last().copied().unwrap_or(1).max(1);
            [shape.iter().product::<usize>() / features, features, 1]
        }
    }
}

/// The element types a wide layer reads and writes (from its values' domains).
struct LayerIo {
    input: Domain,
    output: Domain,
}

/// `$call` with `$x` and `$out` as the slices of the element types `$io` says (`u8` bytes, or
/// the `u16` values they hold).
macro_rules! with_widths {
    ($io:expr, $x:ident, $out:ident, $call:expr) => {
        match ($io.input.bytes(), $io.output.bytes()) {
            (1, 1) => $call,
            (1, _) => {
                let $out = kernels::as_u16_mut($out)?;
                $call
            }
            (_, 1) => {
                let $x = kernels::as_u16($x)?;
                $call
            }
            _ => {
                let ($x, $out) = (kernels::as_u16($x)?, kernels::as_u16_mut($out)?);
                $call
            }
        }
    };
}

impl LayerIo {
    /// A wide convolution of NHWC `x` (`[n, h, w]` images) into `out`.
    fn conv(&self, layer: &QConv2d, x: &[u8], size: [usize; 3], out: &mut [u8]) -> Result<()> {
        let (packed, requant) = layer.wide()?;
        let z = layer.spec.input.zero_point();
        with_widths!(
            self,
            x,
            out,
            kernels::qconv2d_wide(x, size, z, packed, requant, out)
        )
    }

    /// A wide linear layer of row-major `x` into `out`.
    fn linear(&self, layer: &QLinear, x: &[u8], out: &mut [u8]) -> Result<()> {
        let (packed, requant) = layer.wide()?;
        let z = layer.spec.input.zero_point();
        with_widths!(
            self,
            x,
            out,
            kernels::qlinear_wide(x, z, packed, requant, out)
        )
    }
}

/// Copies the bytes of a value of shape `from` to those of a value of shape `to` holding the
/// same elements in NCHW order (4-D values are held NHWC): one pass, no NCHW copy in between.
fn reshape_copy(input: &[u8], from: &[usize], to: &[usize], out: &mut [u8]) {
    for e in 0..out.len().min(input.len()) {
        out[held_at(to, e)] = input[held_at(from, e)];
    }
}

/// Where element `e` (in NCHW order) of a value of `shape` is held (NHWC for 4-D values).
fn held_at(shape: &[usize], e: usize) -> usize {
    match *shape {
        [_, c, h, w] => {
            let hw = h * w;
            let (b, rest) = (e / (c * hw), e % (c * hw));
            (b * hw + rest % hw) * c + rest / hw
        }
        _ => e,
    }
}

#[cfg(test)]
impl QuantizedExecutor {
    /// How many plans are cached, and the address and length of every pooled arena.
    pub(crate) fn pooled(&self) -> (usize, Vec<(usize, usize)>) {
        let plans = self.plans.lock().map_or(0, |p| p.len());
        let arenas = self.arenas.lock().map_or(Vec::new(), |a| {
            a.iter().map(|b| (b.as_ptr() as usize, b.len())).collect()
        });
        (plans, arenas)
    }
}
