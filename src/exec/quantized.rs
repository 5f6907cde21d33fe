//! The quantized interpreter: runs a [`QuantizedProgram`] with the int8 kernels, and its float
//! steps through Burn.

use std::collections::HashMap;
use std::sync::Mutex;

use burn::backend::ops::FloatTensorOps;
use burn::backend::{Dispatch, DispatchTensor, TensorMetadata};
use burn::tensor::{Device, TensorData};

use super::reference;
use crate::graph::{
    BinaryOp, RunShapes, ValueId, ValueShapes, broadcast_all, cat_shape, reshape_target,
};
use crate::kernels::{self, CatInput, QBinaryOp, QParams, QTensorRef};
use crate::ops::{self as float_ops, float_values};
use crate::program::{QuantizedLayers, QuantizedProgram, Step};
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
        let mut shapes =
            RunShapes::new(program, inputs.iter().map(|t| t.shape().to_vec()).collect())?;
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
            arithmetic,
        };
        for (i, (step, frees)) in program.steps.iter().zip(&self.frees).enumerate() {
            run.infer(step, &mut shapes).map_err(|e| match e {
                Error::Shape {
                    context,
                    expected,
                    got,
                } => Error::Shape {
                    context: format!("step {i} ({}): {context}", step_kind(step)),
                    expected,
                    got,
                },
                other => other,
            })?;
            for (id, value) in run.step(step, &live, &params, &shapes)? {
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
        | Step::Table { input, output, .. }
        | Step::Pad { input, output, .. }
        | Step::Reshape { input, output } => (vec![*input], vec![*output]),
        Step::Binary { inputs, output, .. } => (inputs.to_vec(), vec![*output]),
        Step::Cat { inputs, output } => (inputs.clone(), vec![*output]),
        Step::Float(node) => (node.inputs.clone(), node.outputs.clone()),
    }
}

/// A step's name in errors.
fn step_kind(step: &Step) -> String {
    match step {
        Step::Float(node) => format!("float node `{}`", node.name),
        other => format!("{other:?}")
            .split([' ', '{', '('])
            .next()
            .unwrap_or("")
            .to_lowercase(),
    }
}

/// One run of a program.
struct Run<'a> {
    program: &'a QuantizedProgram,
    layers: &'a QuantizedLayers,
    device: &'a Device,
    arithmetic: Arithmetic,
}

type Shapes<'a> = RunShapes<'a, QuantizedProgram>;

impl Run<'_> {
    /// Infers and records the shape of what `step` makes in this run.
    fn infer(&self, step: &Step, shapes: &mut Shapes) -> Result<()> {
        let shape = |id: &ValueId| shapes.get(*id);
        let bad = |got: String| Error::Shape {
            context: "input".into(),
            expected: "a shape the step accepts".into(),
            got,
        };
        let image4 = |id: &ValueId| -> Result<[usize; 4]> {
            let s = shape(id)?;
            <[usize; 4]>::try_from(s.as_slice()).map_err(|_| bad(format!("{s:?}, not 4-D")))
        };
        let (output, out) = match step {
            Step::Float(node) => return shapes.infer(node),
            Step::Quantize { input, output }
            | Step::Dequantize { input, output }
            | Step::Clamp { input, output, .. }
            | Step::Table { input, output, .. } => (*output, shape(input)?),
            Step::Conv2d {
                layer,
                input,
                output,
            } => {
                let [n, c, h, w] = image4(input)?;
                let g = self.layers.convs[*layer].geometry;
                if c != g.in_channels {
                    return Err(bad(format!(
                        "{c} channels into `{}`, which takes {}",
                        self.program.convs[*layer].name, g.in_channels
                    )));
                }
                let (oh, ow) = g.output_size(h, w)?;
                (*output, vec![n, g.out_channels, oh, ow])
            }
            Step::Linear {
                layer,
                input,
                output,
            } => {
                let x = shape(input)?;
                let l = &self.program.linears[*layer];
                if x.len() != 2 || x[1] != l.in_features {
                    return Err(bad(format!(
                        "{x:?} into `{}`, which takes {} features",
                        l.name, l.in_features
                    )));
                }
                (*output, vec![x[0], l.out_features])
            }
            Step::Binary { inputs, output, .. } => {
                let both = vec![shape(&inputs[0])?, shape(&inputs[1])?];
                (*output, broadcast_all(&both).map_err(bad)?)
            }
            Step::Cat { inputs, output } => {
                let all = inputs.iter().map(shape).collect::<Result<Vec<_>>>()?;
                (*output, cat_shape(&all, 1).map_err(bad)?)
            }
            Step::MaxPool2d {
                pool,
                input,
                output,
            } => {
                let [n, c, h, w] = image4(input)?;
                let (oh, ow) = kernels::max_pool_output_size(h, w, pool)?;
                (*output, vec![n, c, oh, ow])
            }
            Step::AvgPool2d {
                pool,
                input,
                output,
            } => {
                let [n, c, h, w] = image4(input)?;
                let (oh, ow) = kernels::avg_pool_output_size(h, w, pool)?;
                (*output, vec![n, c, oh, ow])
            }
            Step::GlobalAvgPool { input, output } => {
                let [n, c, _, _] = image4(input)?;
                (*output, vec![n, c, 1, 1])
            }
            Step::Pad {
                padding: [t, l, b, r],
                input,
                output,
                ..
            } => {
                let [n, c, h, w] = image4(input)?;
                (*output, vec![n, c, h + t + b, w + l + r])
            }
            Step::Reshape { input, output } => {
                let (rec_in, rec_out) = (shapes.recorded(*input)?, shapes.recorded(*output)?);
                (
                    *output,
                    reshape_target(&rec_in, &rec_out, &shape(input)?).map_err(bad)?,
                )
            }
        };
        shapes.set(output, out);
        Ok(())
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
        shapes: &Shapes,
    ) -> Result<Vec<(ValueId, RunValue)>> {
        let shape = |id: ValueId| shapes.get(id);
        let image_shape = |id: ValueId| image_shape(shapes, id);
        let len = |id: ValueId| Ok::<_, Error>(shapes.get(id)?.iter().product::<usize>());
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
                    shape(*input)?,
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
                let (q, shape, qp) = (int8(input)?, shape(*input)?, self.qparams(*input)?);
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
                let shape = image_shape(*input)?;
                if self.arithmetic == Arithmetic::FloatReference {
                    return out(
                        output,
                        reference::conv2d(layer, int8(input)?, shape, self.device)?,
                    );
                }
                let (packed, requant) = layer.packed()?;
                let [n, _, h, w] = shape;
                let mut q = vec![0u8; len(*output)?];
                kernels::qconv2d(int8(input)?, n, h, w, packed, requant, &mut q)?;
                out(output, q)
            }
            Step::Linear {
                layer,
                input,
                output,
            } => {
                let layer = &self.layers.linears[*layer];
                let rows = shape(*input)?[0];
                if self.arithmetic == Arithmetic::FloatReference {
                    return out(
                        output,
                        reference::linear(layer, int8(input)?, rows, self.device)?,
                    );
                }
                let (packed, requant) = layer.packed()?;
                let mut q = vec![0u8; len(*output)?];
                kernels::qlinear(int8(input)?, rows, packed, requant, &mut q)?;
                out(output, q)
            }
            Step::Binary {
                op,
                inputs: [a, b],
                output,
                relu,
            } => {
                let mut q = vec![0u8; len(*output)?];
                let kind = match op {
                    BinaryOp::Add => QBinaryOp::Add,
                    BinaryOp::Sub => QBinaryOp::Sub,
                    BinaryOp::Mul => QBinaryOp::Mul,
                    BinaryOp::Div => return Err(Error::InvalidGraph("int8 division".into())),
                };
                let (sa, sb) = (physical(&shape(*a)?), physical(&shape(*b)?));
                let qa = QTensorRef::new(int8(a)?, &sa, self.qparams(*a)?);
                let qb = QTensorRef::new(int8(b)?, &sb, self.qparams(*b)?);
                let (so, qo) = (physical(&shape(*output)?), self.qparams(*output)?);
                kernels::qbinary(kind, qa, qb, &so, qo, *relu, &mut q)?;
                out(output, q)
            }
            Step::Table {
                table,
                input,
                output,
                ..
            } => {
                let mut q = vec![0u8; len(*output)?];
                kernels::lookup(int8(input)?, table, &mut q)?;
                out(output, q)
            }
            Step::Pad {
                padding,
                value,
                input,
                output,
            } => {
                let [n, c, h, w] = image_shape(*input)?;
                let mut q = vec![0u8; len(*output)?];
                kernels::qpad_nhwc(int8(input)?, n, h, w, c, *padding, *value, &mut q)?;
                out(output, q)
            }
            Step::Cat { inputs, output } => {
                let out_shape = shape(*output)?;
                let pixels = out_shape.iter().product::<usize>() / out_shape[1];
                let parts = inputs
                    .iter()
                    .map(|id| {
                        Ok(CatInput {
                            data: int8(id)?,
                            channels: shape(*id)?[1],
                            qparams: self.qparams(*id)?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                let mut q = vec![0u8; len(*output)?];
                kernels::qcat(&parts, pixels, self.qparams(*output)?, &mut q)?;
                out(output, q)
            }
            Step::MaxPool2d {
                pool,
                input,
                output,
            } => {
                let [n, c, h, w] = image_shape(*input)?;
                let mut q = vec![0u8; len(*output)?];
                kernels::qmax_pool2d(int8(input)?, n, h, w, c, pool, &mut q)?;
                out(output, q)
            }
            Step::AvgPool2d {
                pool,
                input,
                output,
            } => {
                let [n, c, h, w] = image_shape(*input)?;
                let mut q = vec![0u8; len(*output)?];
                let (from, to) = (self.qparams(*input)?, self.qparams(*output)?);
                kernels::qavg_pool2d(int8(input)?, n, h, w, c, pool, from, to, &mut q)?;
                out(output, q)
            }
            Step::GlobalAvgPool { input, output } => {
                let [n, c, h, w] = image_shape(*input)?;
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
                let nchw = to_nchw_order(int8(input)?, &shape(*input)?);
                out(output, from_nchw_order(nchw, &shape(*output)?))
            }
            Step::Float(node) => {
                let args = node.inputs.iter().map(float).collect::<Result<Vec<_>>>()?;
                let n = shapes.batch();
                let outputs = float_ops::run_node(node, args, &shape, n, self.device)?;
                Ok(node
                    .outputs
                    .iter()
                    .copied()
                    .zip(outputs.into_iter().map(RunValue::Float))
                    .collect())
            }
        }
    }
}

/// `[n, c, h, w]` of a 4-D value.
fn image_shape(shapes: &Shapes, id: ValueId) -> Result<[usize; 4]> {
    let shape = shapes.get(id)?;
    <[usize; 4]>::try_from(shape.as_slice()).map_err(|_| Error::Shape {
        context: format!("value {id}"),
        expected: "a 4-D image tensor".into(),
        got: format!("{shape:?}"),
    })
}

/// The shape of a value's buffer: NHWC for a 4-D (NCHW) value, the shape itself otherwise.
fn physical(shape: &[usize]) -> Vec<usize> {
    match *shape {
        [n, c, h, w] => vec![n, h, w, c],
        _ => shape.to_vec(),
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
