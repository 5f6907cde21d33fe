//! Float ops of single nodes on Burn tensors: the float arithmetic of each lowered [`Op`], as
//! the same Burn backend ops that the eager forward calls (so the interpreters give what the
//! eager model gives), ops we do not lower through Burn's own interpreter (`fallback`), and
//! reading tensors back. Below the interpreters (`exec`) and `convert` (which evaluates
//! pointwise bodies into tables), so neither needs the other.

mod fallback;

use burn::backend::ops::{ActivationOps, FloatTensorOps, ModuleOps};
use burn::backend::{Dispatch, DispatchTensor, TensorMetadata};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Scalar, Shape, Slice, Tensor};

use crate::graph::{Activation, BinaryOp, Dim, Node, Op, PadMode, ReduceOp, ValueId};
use crate::{Error, Result};

type B = Dispatch;

/// Runs one float node on its inputs: a lowered op, a fused element-wise body or a fallback op
/// through Burn's interpreter, then the node's fused activation. `shape_of` gives every value's
/// shape in this run (the node's outputs included), `n` the batch size.
pub(crate) fn run_node(
    node: &Node,
    args: Vec<DispatchTensor>,
    shape_of: &dyn Fn(ValueId) -> Result<Vec<usize>>,
    n: usize,
    device: &Device,
) -> Result<Vec<DispatchTensor>> {
    let outputs = match &node.op {
        Op::Fallback(ir) => {
            let named: Vec<_> = node.inputs.iter().copied().zip(args).collect();
            fallback::run_fallback(ir, &named, shape_of, device)?
        }
        Op::Pointwise { body, .. } => {
            let x = args.into_iter().next().ok_or_else(|| {
                Error::InvalidGraph(format!("pointwise node `{}` has no input", node.name))
            })?;
            vec![pointwise(body, node.inputs[0], x, n, device)?]
        }
        op => {
            let out_shape = match node.outputs.first() {
                Some(&id) => shape_of(id)?,
                None => Vec::new(),
            };
            vec![eval(op, args, n, &out_shape)?]
        }
    };
    Ok(match node.activation {
        Some(act) => outputs.into_iter().map(|t| activation(act, t)).collect(),
        None => outputs,
    })
}

/// Runs a fused element-wise body on its argument `x` (value `input`); every value of the body
/// has `x`'s shape.
pub(crate) fn pointwise(
    body: &[Node],
    input: ValueId,
    x: DispatchTensor,
    n: usize,
    device: &Device,
) -> Result<DispatchTensor> {
    let shape = x.shape().to_vec();
    let same = |_: ValueId| Ok(shape.clone());
    let mut live = std::collections::HashMap::from([(input, x)]);
    let mut last = None;
    for node in body {
        let args = (node.inputs.iter())
            .map(|id| {
                live.get(id).cloned().ok_or_else(|| {
                    Error::InvalidGraph(format!("pointwise body reads {id}, never made"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let outputs = run_node(node, args, &same, n, device)?;
        for (&id, t) in node.outputs.iter().zip(outputs) {
            last = Some(t.clone());
            live.insert(id, t);
        }
    }
    last.ok_or_else(|| Error::InvalidGraph("empty pointwise body".into()))
}

/// Computes a lowered op (anything but [`Op::Fallback`] and [`Op::Pointwise`]) on its inputs, at
/// batch size `n`, giving an output of `out_shape` (what a reshape or slice takes in this run).
pub(crate) fn eval(
    op: &Op,
    inputs: Vec<DispatchTensor>,
    n: usize,
    out_shape: &[usize],
) -> Result<DispatchTensor> {
    let count = inputs.len();
    let mut it = inputs.into_iter();
    let mut arg = |i: usize| {
        it.next().ok_or_else(|| {
            Error::InvalidGraph(format!("op `{}` needs input {i}, has {count}", op.kind()))
        })
    };
    let x = arg(0)?;
    Ok(match op {
        Op::Conv2d(a) => {
            let (w, b) = (arg(1)?, arg(2).ok());
            let options = ConvOptions {
                stride: a.stride,
                padding: [(a.padding[0], a.padding[2]), (a.padding[1], a.padding[3])],
                dilation: a.dilation,
                groups: a.groups,
            };
            B::conv2d(x, w, b, options)
        }
        Op::BatchNorm { epsilon } => {
            let (gamma, beta, mean, var) = (arg(1)?, arg(2)?, arg(3)?, arg(4)?);
            B::batch_norm(x, gamma, beta, mean, var, *epsilon)
        }
        Op::Linear => {
            let (w, b) = (arg(1)?, arg(2).ok());
            linear(x, w, b)
        }
        Op::Matmul => B::float_matmul(x, arg(1)?),
        Op::Relu => B::relu(x),
        Op::Clamp { min, max } => match (min, max) {
            (Some(lo), Some(hi)) => B::float_clamp(x, Scalar::from(*lo), Scalar::from(*hi)),
            (Some(lo), None) => B::float_clamp_min(x, Scalar::from(*lo)),
            (None, Some(hi)) => B::float_clamp_max(x, Scalar::from(*hi)),
            (None, None) => x,
        },
        Op::Sigmoid => B::sigmoid(x),
        Op::Tanh => B::float_tanh(x),
        Op::Gelu => B::gelu(x),
        Op::Softmax { axis } => B::softmax(x, *axis),
        Op::Binary(kind) => {
            let y = arg(1)?;
            match kind {
                BinaryOp::Add => B::float_add(x, y),
                BinaryOp::Sub => B::float_sub(x, y),
                BinaryOp::Mul => B::float_mul(x, y),
                BinaryOp::Div => B::float_div(x, y),
            }
        }
        Op::Scalar { op, value } => {
            let v = Scalar::from(*value);
            match op {
                BinaryOp::Add => B::float_add_scalar(x, v),
                BinaryOp::Sub => B::float_sub_scalar(x, v),
                BinaryOp::Mul => B::float_mul_scalar(x, v),
                BinaryOp::Div => B::float_div_scalar(x, v),
            }
        }
        Op::Cat { axis } => {
            let mut all = vec![x];
            all.extend((1..count).map(&mut arg).collect::<Result<Vec<_>>>()?);
            B::float_cat(all, *axis)
        }
        Op::MaxPool2d(p) => {
            B::max_pool2d(x, p.kernel, p.stride, p.padding, p.dilation, p.ceil_mode)
        }
        Op::AvgPool2d {
            pool: p,
            count_include_pad,
        } => B::avg_pool2d(
            x,
            p.kernel,
            p.stride,
            p.padding,
            *count_include_pad,
            p.ceil_mode,
        ),
        Op::AdaptiveAvgPool2d { output } => B::adaptive_avg_pool2d(x, *output),
        Op::Reduce { op, axes } => match (op, axes) {
            (ReduceOp::Mean, None) => B::float_mean(x),
            (ReduceOp::Sum, None) => B::float_sum(x),
            (ReduceOp::Mean, Some(axes)) => axes.iter().fold(x, |t, &a| B::float_mean_dim(t, a)),
            (ReduceOp::Sum, Some(axes)) => B::float_sum_dims(x, axes),
        },
        Op::Reshape { .. } => B::float_reshape(x, Shape::from(out_shape.to_vec())),
        Op::Permute { axes } => B::float_permute(x, axes),
        Op::Pad { padding, mode } => {
            let mode = match mode {
                PadMode::Constant(v) => burn::tensor::ops::PadMode::Constant(*v as f32),
                PadMode::Reflect => burn::tensor::ops::PadMode::Reflect,
                PadMode::Edge => burn::tensor::ops::PadMode::Edge,
            };
            B::float_pad(x, padding, mode)
        }
        Op::Slice { ranges } => {
            // An axis the slice keeps whole in this run (see `graph::infer`) is 0..size.
            let sizes = x.shape().to_vec();
            let slices = (ranges.iter().enumerate())
                .map(|(axis, r)| {
                    if r.step == 1 && out_shape.get(axis) == sizes.get(axis) {
                        return Ok(Slice::new(0, Some(sizes[axis] as isize), 1));
                    }
                    let at = |d: Dim| resolve(&[d], n).map(|v| v[0] as isize);
                    Ok(Slice::new(at(r.start)?, Some(at(r.end)?), r.step))
                })
                .collect::<Result<Vec<_>>>()?;
            B::float_slice(x, &slices)
        }
        Op::Fallback(_) | Op::Pointwise { .. } => {
            return Err(Error::InvalidGraph(
                "fallback and pointwise nodes run through `run_node`".into(),
            ));
        }
    })
}

/// Applies a fused activation with the same backend ops as the unfused `Relu` / `Clamp` node.
pub(crate) fn activation(act: Activation, x: DispatchTensor) -> DispatchTensor {
    match act {
        Activation::Relu => B::relu(x),
        Activation::Clamp { min, max } => B::float_clamp(x, Scalar::from(min), Scalar::from(max)),
    }
}

/// `x · W + b` over the last axis, as Burn's `Linear` computes it: the weight `[in, out]` gets
/// leading axes of length 1 up to `x`'s rank, the bias is broadcast from `[1, .., out]`.
fn linear(x: DispatchTensor, w: DispatchTensor, b: Option<DispatchTensor>) -> DispatchTensor {
    let rank = x.shape().num_dims();
    let lift = |t: DispatchTensor| {
        let dims = t.shape().to_vec();
        let mut lifted = vec![1; rank.saturating_sub(dims.len())];
        lifted.extend(dims);
        B::float_reshape(t, Shape::from(lifted))
    };
    let y = B::float_matmul(x, lift(w));
    match b {
        Some(b) => B::float_add(y, lift(b)),
        None => y,
    }
}

/// Concrete sizes of symbolic dims at batch size `n`.
fn resolve(dims: &[Dim], n: usize) -> Result<Vec<usize>> {
    dims.iter()
        .map(|d| {
            d.at(n).ok_or_else(|| Error::Shape {
                context: "slice".into(),
                expected: "a non-negative size".into(),
                got: format!("{d} at N={n}"),
            })
        })
        .collect()
}

/// The values of a float tensor, row-major, converted to `E` (taking the tensor: a tensor
/// nothing else holds gives up its buffer instead of having it copied).
pub(crate) fn float_values<E: burn::tensor::Element>(tensor: DispatchTensor) -> Result<Vec<E>> {
    let n = tensor.shape().num_elements();
    let flat = Dispatch::float_reshape(tensor, Shape::new([n]));
    let data = Tensor::<1>::from_dispatch(flat)
        .try_into_data()
        .map_err(|e| read_error(&e))?;
    // One conversion of the whole buffer (none when the dtype is already `E`), not per element.
    (data.try_cast_as::<E>())
        .and_then(|data| data.try_into_vec::<E>())
        .map_err(|e| read_error(&e))
}

fn read_error(e: &dyn std::fmt::Debug) -> Error {
    Error::Unsupported(format!("reading a tensor back: {e:?}"))
}

/// The one output of a model as a tensor of rank `D`, or a shape error.
pub(crate) fn single_output<const D: usize>(outputs: Vec<DispatchTensor>) -> Result<Tensor<D>> {
    let [tensor] = <[_; 1]>::try_from(outputs).map_err(|o| Error::Shape {
        context: "model outputs".into(),
        expected: "one output".into(),
        got: format!("{}", o.len()),
    })?;
    let shape = tensor.shape().to_vec();
    if shape.len() != D {
        return Err(Error::Shape {
            context: "model output".into(),
            expected: format!("rank {D}"),
            got: format!("rank {} {shape:?}", shape.len()),
        });
    }
    Ok(Tensor::from_dispatch(tensor))
}
