//! The operations of our graph and their attributes.

use burn_ir::{OperationIr, ScalarIr};
use serde::{Deserialize, Serialize};

use super::Dim;

/// An operation of the graph. Inputs are listed in the node; the op holds only attributes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// 2-D convolution, NCHW. Inputs: x, weight `[out, in/groups, kh, kw]`, optional bias `[out]`.
    Conv2d(Conv2dAttrs),
    /// Batch normalization with running statistics. Inputs: x, gamma, beta, mean, variance.
    BatchNorm {
        /// Added to the variance before its square root.
        epsilon: f64,
    },
    /// `x · W + b` over the last axis. Inputs: x, weight `[in, out]` (Burn's layout), optional
    /// bias `[out]`. Recognised from Burn's matmul + bias add.
    Linear,
    /// Matrix product of two activations (or an activation and a non-Linear parameter).
    Matmul,
    /// `max(x, 0)`.
    Relu,
    /// Clamp to `[min, max]`; a missing bound is open. ReLU6 is `Clamp { 0, 6 }`.
    Clamp {
        /// Lower bound.
        min: Option<f64>,
        /// Upper bound.
        max: Option<f64>,
    },
    /// Logistic sigmoid.
    Sigmoid,
    /// Hyperbolic tangent.
    Tanh,
    /// GELU (erf form).
    Gelu,
    /// Softmax along an axis.
    Softmax {
        /// The axis.
        axis: usize,
    },
    /// Element-wise binary op of two tensors, with broadcasting.
    Binary(BinaryOp),
    /// Element-wise op of a tensor and a scalar (`x op value`).
    Scalar {
        /// The operation.
        op: BinaryOp,
        /// The scalar, as Burn recorded it.
        value: ScalarIr,
    },
    /// Concatenation along an axis.
    Cat {
        /// The axis.
        axis: usize,
    },
    /// 2-D max pooling.
    MaxPool2d(Pool2dAttrs),
    /// 2-D average pooling.
    AvgPool2d {
        /// Window, stride and padding (dilation is 1).
        pool: Pool2dAttrs,
        /// Whether padded positions count in the divisor.
        count_include_pad: bool,
    },
    /// Adaptive average pooling to a fixed output size.
    AdaptiveAvgPool2d {
        /// Output height and width.
        output: [usize; 2],
    },
    /// Mean or sum over axes, each kept with length 1; over all elements (to shape `[1]`) when
    /// `axes` is `None`.
    Reduce {
        /// Mean or sum.
        op: ReduceOp,
        /// The reduced axes, or `None` for all.
        axes: Option<Vec<usize>>,
    },
    /// Reshape to a shape symbolic in the batch size.
    Reshape {
        /// The target shape.
        shape: Vec<Dim>,
    },
    /// Reorder axes (`swap_dims` is lowered to this too).
    Permute {
        /// `out axis i = in axis axes[i]`.
        axes: Vec<usize>,
    },
    /// Pad every axis.
    Pad {
        /// `(before, after)` per axis.
        padding: Vec<(usize, usize)>,
        /// How padded values are made.
        mode: PadMode,
    },
    /// Take a strided range along every axis.
    Slice {
        /// One range per axis.
        ranges: Vec<SliceRange>,
    },
    /// An element-wise function of one value made of several nodes (hard-swish
    /// `x · hard_sigmoid(x)`, SiLU `x · sigmoid(x)`, tanh-GELU, ELU, a chain of scalar ops, ...),
    /// fused by [`passes::fuse_pointwise`](super::passes::fuse_pointwise). The node's one input is
    /// the function's argument; `body` runs in order and its last node's output is the node's
    /// output. Quantized, the whole function is one 256-entry `u8 -> u8` table.
    Pointwise {
        /// What the function is (`hardswish`, `silu`, `gelu_tanh`, ..., or its ops joined by `+`).
        name: String,
        /// The fused nodes, in order; every value they read is the argument or made before.
        body: Vec<super::Node>,
    },
    /// A Burn op we do not lower: kept as Burn recorded it and executed by Burn's own
    /// interpreter. Its tensor ids are our value ids; its shapes are filled in at run time.
    Fallback(Box<OperationIr>),
}

/// An activation fused into the op before it (PyTorch's `ConvReLU2d`, `LinearReLU`,
/// `add_relu`): applied to the node's output.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `clamp(x, min, max)`; ReLU6 is `Clamp { min: 0, max: 6 }`.
    Clamp {
        /// Lower bound.
        min: f64,
        /// Upper bound.
        max: f64,
    },
}

impl std::fmt::Display for Activation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Activation::Relu => write!(f, "relu"),
            Activation::Clamp { min, max } if *min == 0.0 && *max == 6.0 => write!(f, "relu6"),
            Activation::Clamp { min, max } => write!(f, "clamp({min}, {max})"),
        }
    }
}

/// The arithmetic of [`Op::Binary`] and [`Op::Scalar`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BinaryOp {
    /// `a + b`
    Add,
    /// `a - b`
    Sub,
    /// `a * b`
    Mul,
    /// `a / b`
    Div,
}

/// The arithmetic of [`Op::Reduce`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReduceOp {
    /// Arithmetic mean.
    Mean,
    /// Sum.
    Sum,
}

/// Attributes of a 2-D convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Conv2dAttrs {
    /// Stride `[h, w]`.
    pub stride: [usize; 2],
    /// Padding `[top, left, bottom, right]`.
    pub padding: [usize; 4],
    /// Dilation `[h, w]`.
    pub dilation: [usize; 2],
    /// Groups.
    pub groups: usize,
}

/// Attributes of a 2-D pooling window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pool2dAttrs {
    /// Window `[h, w]`.
    pub kernel: [usize; 2],
    /// Stride `[h, w]`.
    pub stride: [usize; 2],
    /// Symmetric padding `[h, w]`.
    pub padding: [usize; 2],
    /// Dilation `[h, w]`.
    pub dilation: [usize; 2],
    /// Whether the output size rounds up.
    pub ceil_mode: bool,
}

impl Pool2dAttrs {
    /// The kernels' max pooling window.
    pub fn max_pool(&self) -> crate::kernels::MaxPool2d {
        crate::kernels::MaxPool2d {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            ceil_mode: self.ceil_mode,
        }
    }

    /// The kernels' average pooling window (dilation is 1).
    pub fn avg_pool(&self, count_include_pad: bool) -> crate::kernels::AvgPool2d {
        crate::kernels::AvgPool2d {
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
            ceil_mode: self.ceil_mode,
            count_include_pad,
        }
    }
}

/// How [`Op::Pad`] fills the border.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum PadMode {
    /// A constant.
    Constant(f64),
    /// Mirror without repeating the edge.
    Reflect,
    /// Repeat the edge.
    Edge,
}

/// A range `start..end` with a step along one axis, in absolute, non-negative indices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SliceRange {
    /// First index.
    pub start: Dim,
    /// One past the last index.
    pub end: Dim,
    /// Step (negative steps walk backwards from `end - 1`, as Burn does).
    pub step: isize,
}

impl Op {
    /// A short lower-case name for listings and node names (`conv2d`, `add`, ...).
    pub fn kind(&self) -> String {
        match self {
            Op::Conv2d(_) => "conv2d".into(),
            Op::BatchNorm { .. } => "batch_norm".into(),
            Op::Linear => "linear".into(),
            Op::Matmul => "matmul".into(),
            Op::Relu => "relu".into(),
            Op::Clamp { .. } => "clamp".into(),
            Op::Sigmoid => "sigmoid".into(),
            Op::Tanh => "tanh".into(),
            Op::Gelu => "gelu".into(),
            Op::Softmax { .. } => "softmax".into(),
            Op::Binary(op) => op.name().into(),
            Op::Scalar { op, .. } => format!("{}_scalar", op.name()),
            Op::Cat { .. } => "cat".into(),
            Op::MaxPool2d(_) => "max_pool2d".into(),
            Op::AvgPool2d { .. } => "avg_pool2d".into(),
            Op::AdaptiveAvgPool2d { .. } => "adaptive_avg_pool2d".into(),
            Op::Reduce {
                op: ReduceOp::Mean, ..
            } => "mean".into(),
            Op::Reduce {
                op: ReduceOp::Sum, ..
            } => "sum".into(),
            Op::Reshape { .. } => "reshape".into(),
            Op::Permute { .. } => "permute".into(),
            Op::Pad { .. } => "pad".into(),
            Op::Slice { .. } => "slice".into(),
            Op::Pointwise { name, .. } => name.clone(),
            Op::Fallback(ir) => format!("fallback:{}", fallback_name(ir)),
        }
    }
}

impl BinaryOp {
    /// `add`, `sub`, `mul` or `div`.
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }
}

/// The Burn op's variant name (`Exp`, `ArgMax`, ...), for listings and error messages.
pub(crate) fn fallback_name(ir: &OperationIr) -> String {
    fn variant<T: std::fmt::Debug>(op: &T) -> String {
        let text = format!("{op:?}");
        text.split(|c: char| !c.is_alphanumeric() && c != '_')
            .next()
            .unwrap_or("op")
            .to_string()
    }
    match ir {
        OperationIr::BaseFloat(op) | OperationIr::BaseInt(op) | OperationIr::BaseBool(op) => {
            variant(op)
        }
        OperationIr::NumericFloat(_, op) | OperationIr::NumericInt(_, op) => variant(op),
        OperationIr::Float(_, op) => variant(op),
        OperationIr::Int(op) => variant(op),
        OperationIr::Bool(op) => variant(op),
        OperationIr::Module(op) => variant(op),
        OperationIr::Activation(op) => variant(op),
        OperationIr::Distributed(op) => variant(op),
        OperationIr::Custom(op) => op.id.to_string(),
        other => variant(other),
    }
}
