//! The quantized interpreter: runs a [`QuantizedProgram`] with the int8 kernels, and its float
//! steps through Burn.

use std::collections::HashMap;
use std::sync::Mutex;

use burn::backend::ops::FloatTensorOps;
use burn::backend::{Dispatch, DispatchTensor, TensorMetadata};
use burn::tensor::{Device, TensorData};

use super::{fallback, float_ops, float_values, reference};
use crate::convert::{QuantizedLayers, QuantizedProgram, Step};
use crate::graph::{Op, ValueId, ValueShapes};
use crate::kernels::{self, CatInput, QParams};
use crate::{Error, Result};

/// A value while a quantized program runs.
#[derive(Clone, Debug)]
pub enum RunValue {
    /// A float tensor (NCHW for images).
    Float(DispatchTensor),
    /// `u8` values: NHWC for 4-D values, row-major otherwise.
    Int8(Vec<u8>),
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

/// Runs quantized programs; holds what does not change between runs.
pub(crate) struct QuantizedExecutor {
    /// For each step, the values it reads for the last time.
    frees: Vec<Vec<ValueId>>,
    /// The float parameters uploaded to the device of the last run.
    float_params: Mutex<Option<(Device, HashMap<ValueId, DispatchTensor>)>>,
}

impl QuantizedExecutor {
    /// Checks that `program` and `layers` fit together.
    pub(crate) fn new(program: &QuantizedProgram, layers: &QuantizedLayers) -> Result<Self> {
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
        let mut last = HashMap::new();
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
                _ => {}
            }
            let (inputs, outputs) = step_values(step);
            for id in inputs.iter().chain(&outputs) {
                if id.index() >= program.values.len() {
                    return bad(format!("step {i} refers to unknown value {id}"));
                }
            }
            for id in inputs {
                last.insert(id, i);
            }
        }
        let mut frees = vec![Vec::new(); program.steps.len()];
        for (id, i) in last {
            if !program.outputs.contains(&id) && !program.float_params.contains(&id) {
                frees[i].push(id);
            }
        }
        Ok(QuantizedExecutor {
            frees,
            float_params: Mutex::new(None),
        })
    }

    /// Runs the program on float `inputs`, showing every value to `tap` as it is made.
    pub(crate) fn run(
        &self,
        program: &QuantizedProgram,
        layers: &QuantizedLayers,
        inputs: Vec<DispatchTensor>,
        device: &Device,
        arithmetic: Arithmetic,
        tap: &mut dyn FnMut(ValueId, &RunValue) -> Result<()>,
    ) -> Result<Vec<DispatchTensor>> {
        if arithmetic == Arithmetic::FloatReference && kernels::active_isa() != kernels::Isa::Scalar
        {
            return kernels::with_isa(kernels::Isa::Scalar, || {
                self.run(program, layers, inputs, device, arithmetic, tap)
            })?;
        }
        let shapes: Vec<Vec<usize>> = inputs.iter().map(|t| t.shape().to_vec()).collect();
        let n = program.batch_size_of(&shapes)?;
        let params = self.float_params(program, layers, device)?;
        let mut live: HashMap<ValueId, RunValue> = program
            .inputs
            .iter()
            .copied()
            .zip(inputs.into_iter().map(RunValue::Float))
            .collect();
        let run = Run {
            program,
            layers,
            device,
            n,
            arithmetic,
        };
        for (step, frees) in program.steps.iter().zip(&self.frees) {
            for (id, value) in run.step(step, &live, &params)? {
                tap(id, &value)?;
                live.insert(id, value);
            }
            for id in frees {
                live.remove(id);
            }
        }
        program
            .outputs
            .iter()
            .map(|id| match live.remove(id) {
                Some(RunValue::Float(t)) => Ok(t),
                _ => Err(Error::InvalidGraph(format!(
                    "program output {id} is not a float value"
                ))),
            })
            .collect()
    }

    fn float_params(
        &self,
        program: &QuantizedProgram,
        layers: &QuantizedLayers,
        device: &Device,
    ) -> Result<HashMap<ValueId, DispatchTensor>> {
        let mut cache = self
            .float_params
            .lock()
            .map_err(|_| Error::InvalidGraph("a previous run panicked".into()))?;
        if let Some((d, params)) = cache.as_ref()
            && d == device
        {
            return Ok(params.clone());
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
        *cache = Some((device.clone(), params.clone()));
        Ok(params)
    }
}

/// The values a step reads and makes.
fn step_values(step: &Step) -> (Vec<ValueId>, Vec<ValueId>) {
    match step {
        Step::Quantize { input, output }
        | Step::Dequantize { input, output }
        | Step::Conv2d { input, output, .. }
        | Step::Linear { input, output, .. }
        | Step::MaxPool2d { input, output, .. }
        | Step::AvgPool2d { input, output, .. }
        | Step::GlobalAvgPool { input, output }
        | Step::Clamp { input, output, .. }
        | Step::Reshape { input, output } => (vec![*input], vec![*output]),
        Step::Add { inputs, output, .. } => (inputs.to_vec(), vec![*output]),
        Step::Cat { inputs, output } => (inputs.clone(), vec![*output]),
        Step::Float(node) => (node.inputs.clone(), node.outputs.clone()),
    }
}

/// One run of a program at batch size `n`.
struct Run<'a> {
    program: &'a QuantizedProgram,
    layers: &'a QuantizedLayers,
    device: &'a Device,
    n: usize,
    arithmetic: Arithmetic,
}

impl Run<'_> {
    fn shape(&self, id: ValueId) -> Result<Vec<usize>> {
        self.program.shape_at(id, self.n)
    }

    fn qparams(&self, id: ValueId) -> Result<QParams> {
        self.program
            .qparams(id)
            .ok_or_else(|| Error::InvalidGraph(format!("value {id} is read as int8 but is float")))
    }

    fn step(
        &self,
        step: &Step,
        live: &HashMap<ValueId, RunValue>,
        params: &HashMap<ValueId, DispatchTensor>,
    ) -> Result<Vec<(ValueId, RunValue)>> {
        let int8 = |id: &ValueId| match live.get(id) {
            Some(RunValue::Int8(q)) => Ok(q.as_slice()),
            _ => Err(Error::InvalidGraph(format!(
                "value {id} is not an int8 value here"
            ))),
        };
        let float = |id: &ValueId| match live.get(id) {
            Some(RunValue::Float(t)) => Ok(t.clone()),
            _ => params.get(id).cloned().ok_or_else(|| {
                Error::InvalidGraph(format!("value {id} is not a float value here"))
            }),
        };
        let out = |output: &ValueId, q: Vec<u8>| Ok(vec![(*output, RunValue::Int8(q))]);
        match step {
            Step::Quantize { input, output } => {
                let (x, shape, qp) = (
                    float_values::<f32>(&float(input)?)?,
                    self.shape(*input)?,
                    self.qparams(*output)?,
                );
                let mut q = vec![0u8; x.len()];
                match shape[..] {
                    [n, c, h, w] => kernels::quantize_nchw_to_nhwc(&x, n, c, h, w, qp, &mut q)?,
                    _ => kernels::quantize(&x, qp, &mut q)?,
                }
                out(output, q)
            }
            Step::Dequantize { input, output } => {
                let (q, shape, qp) = (int8(input)?, self.shape(*input)?, self.qparams(*input)?);
                let mut x = vec![0f32; q.len()];
                match shape[..] {
                    [n, c, h, w] => kernels::dequantize_nhwc_to_nchw(q, n, h, w, c, qp, &mut x)?,
                    _ => kernels::dequantize(q, qp, &mut x)?,
                }
                let tensor =
                    Dispatch::float_from_data(TensorData::new(x, shape), self.device.as_dispatch());
                Ok(vec![(*output, RunValue::Float(tensor))])
            }
            Step::Conv2d {
                layer,
                input,
                output,
            } => {
                let layer = &self.layers.convs[*layer];
                let shape = self.image_shape(*input)?;
                if self.arithmetic == Arithmetic::FloatReference {
                    return out(
                        output,
                        reference::conv2d(layer, int8(input)?, shape, self.device)?,
                    );
                }
                let (packed, requant) = layer.packed()?;
                let [n, _, h, w] = shape;
                let mut q = vec![0u8; self.len(*output)?];
                kernels::qconv2d(int8(input)?, n, h, w, packed, requant, &mut q)?;
                out(output, q)
            }
            Step::Linear {
                layer,
                input,
                output,
            } => {
                let layer = &self.layers.linears[*layer];
                let rows = self.shape(*input)?[0];
                if self.arithmetic == Arithmetic::FloatReference {
                    return out(
                        output,
                        reference::linear(layer, int8(input)?, rows, self.device)?,
                    );
                }
                let (packed, requant) = layer.packed()?;
                let mut q = vec![0u8; self.len(*output)?];
                kernels::qlinear(int8(input)?, rows, packed, requant, &mut q)?;
                out(output, q)
            }
            Step::Add {
                inputs: [a, b],
                output,
                relu,
            } => {
                let mut q = vec![0u8; self.len(*output)?];
                let (qa, qb, qo) = (self.qparams(*a)?, self.qparams(*b)?, self.qparams(*output)?);
                kernels::qadd(int8(a)?, qa, int8(b)?, qb, qo, *relu, &mut q)?;
                out(output, q)
            }
            Step::Cat { inputs, output } => {
                let shape = self.shape(*output)?;
                let pixels = shape.iter().product::<usize>() / shape[1];
                let parts = inputs
                    .iter()
                    .map(|id| {
                        Ok(CatInput {
                            data: int8(id)?,
                            channels: self.shape(*id)?[1],
                            qparams: self.qparams(*id)?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let mut q = vec![0u8; self.len(*output)?];
                kernels::qcat(&parts, pixels, self.qparams(*output)?, &mut q)?;
                out(output, q)
            }
            Step::MaxPool2d {
                pool,
                input,
                output,
            } => {
                let [n, c, h, w] = self.image_shape(*input)?;
                let mut q = vec![0u8; self.len(*output)?];
                kernels::qmax_pool2d(int8(input)?, n, h, w, c, pool, &mut q)?;
                out(output, q)
            }
            Step::AvgPool2d {
                pool,
                input,
                output,
            } => {
                let [n, c, h, w] = self.image_shape(*input)?;
                let mut q = vec![0u8; self.len(*output)?];
                let (from, to) = (self.qparams(*input)?, self.qparams(*output)?);
                kernels::qavg_pool2d(int8(input)?, n, h, w, c, pool, from, to, &mut q)?;
                out(output, q)
            }
            Step::GlobalAvgPool { input, output } => {
                let [n, c, h, w] = self.image_shape(*input)?;
                let mut q = vec![0u8; n * c];
                let (from, to) = (self.qparams(*input)?, self.qparams(*output)?);
                kernels::qglobal_avg_pool(int8(input)?, n, h, w, c, from, to, &mut q)?;
                out(output, q)
            }
            Step::Clamp {
                input,
                output,
                min,
                max,
            } => out(
                output,
                int8(input)?.iter().map(|&v| v.clamp(*min, *max)).collect(),
            ),
            Step::Reshape { input, output } => {
                let nchw = to_nchw_order(int8(input)?, &self.shape(*input)?);
                out(output, from_nchw_order(nchw, &self.shape(*output)?))
            }
            Step::Float(node) => {
                let args = node.inputs.iter().map(float).collect::<Result<Vec<_>>>()?;
                let outputs = match &node.op {
                    Op::Fallback(ir) => {
                        let named: Vec<_> = node.inputs.iter().copied().zip(args).collect();
                        fallback::run_fallback(ir, &named, &|id| self.shape(id), self.device)?
                    }
                    op => vec![float_ops::eval(op, args, self.n)?],
                };
                Ok(node
                    .outputs
                    .iter()
                    .copied()
                    .zip(outputs)
                    .map(|(id, t)| {
                        let t = match node.activation {
                            Some(act) => float_ops::activation(act, t),
                            None => t,
                        };
                        (id, RunValue::Float(t))
                    })
                    .collect())
            }
        }
    }

    /// `[n, c, h, w]` of a 4-D value.
    fn image_shape(&self, id: ValueId) -> Result<[usize; 4]> {
        let shape = self.shape(id)?;
        <[usize; 4]>::try_from(shape.as_slice()).map_err(|_| Error::Shape {
            context: format!("value {id}"),
            expected: "a 4-D image tensor".into(),
            got: format!("{shape:?}"),
        })
    }

    fn len(&self, id: ValueId) -> Result<usize> {
        Ok(self.shape(id)?.iter().product())
    }
}

/// `u8` values in NCHW element order (4-D values are held NHWC).
fn to_nchw_order(q: &[u8], shape: &[usize]) -> Vec<u8> {
    match *shape {
        [n, c, h, w] if h * w > 1 && c > 1 => {
            let mut out = vec![0u8; q.len()];
            for b in 0..n {
                for p in 0..h * w {
                    for ch in 0..c {
                        out[(b * c + ch) * h * w + p] = q[(b * h * w + p) * c + ch];
                    }
                }
            }
            out
        }
        _ => q.to_vec(),
    }
}

/// `u8` values in NCHW element order laid out for a value of `shape` (NHWC for 4-D).
fn from_nchw_order(q: Vec<u8>, shape: &[usize]) -> Vec<u8> {
    match *shape {
        [n, c, h, w] if h * w > 1 && c > 1 => {
            let mut out = vec![0u8; q.len()];
            for b in 0..n {
                for ch in 0..c {
                    for p in 0..h * w {
                        out[(b * h * w + p) * c + ch] = q[(b * c + ch) * h * w + p];
                    }
                }
            }
            out
        }
        _ => q,
    }
}
