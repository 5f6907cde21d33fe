//! The int8 program of a quantized model: a list of steps over values that are either float
//! tensors or `u8` tensors with their quantization parameters, the layers that hold its
//! tensors, and what became of every node (the report). Plain data: written by `convert`, run
//! by `exec`, saved by `record`; below all three, so none of them imports another for it.

mod display;
mod validate;

use burn::module::{Module, Param};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::graph::{BatchMode, BinaryOp, Node, ValueId, ValueInfo, ValueShapes};
use crate::kernels::{
    ActQParams, AvgPool2d, Conv2dGeometry, MaxPool2d, QParams, Table, WideQParams,
};
use crate::nn::{QConv2d, QDynamicLinear, QLayerSpec, QLinear};

/// Version of the serialized [`QuantizedProgram`]; bumped on every incompatible change.
pub const PROGRAM_FORMAT_VERSION: u32 = 3;

/// How a value is held at run time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Domain {
    /// A float Burn tensor (NCHW for images).
    Float,
    /// `u8` values with affine parameters: NHWC for 4-D values, row-major otherwise.
    Int8(QParams),
    /// `u16` values with affine parameters (W8A16), laid out as `Int8` values.
    Int16(WideQParams),
}

impl Domain {
    /// The domain of values quantized with `qparams`.
    pub fn of(qparams: ActQParams) -> Domain {
        match qparams {
            ActQParams::U8(qp) => Domain::Int8(qp),
            ActQParams::U16(qp) => Domain::Int16(qp),
        }
    }

    /// Whether values are held as integers (8 or 16 bits).
    pub fn is_quantized(&self) -> bool {
        !matches!(self, Domain::Float)
    }

    /// The quantization parameters of integer values; `None` for float ones.
    pub fn act_qparams(&self) -> Option<ActQParams> {
        match self {
            Domain::Float => None,
            Domain::Int8(qp) => Some(ActQParams::U8(*qp)),
            Domain::Int16(qp) => Some(ActQParams::U16(*qp)),
        }
    }

    /// Bytes per value: 1 for `u8`, 2 for `u16`, 0 for float values (not in the arena).
    pub fn bytes(&self) -> usize {
        match self {
            Domain::Float => 0,
            Domain::Int8(_) => 1,
            Domain::Int16(_) => 2,
        }
    }
}

/// One step of a quantized program. Ids name values of [`QuantizedProgram::values`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Step {
    /// Float to `u8` (NCHW float to NHWC `u8` for 4-D values).
    Quantize {
        /// Float input.
        input: ValueId,
        /// Quantized output.
        output: ValueId,
    },
    /// `u8` to float.
    Dequantize {
        /// Quantized input.
        input: ValueId,
        /// Float output.
        output: ValueId,
    },
    /// A quantized convolution: layer `layer` of the model's convolutions.
    Conv2d {
        /// Index into the model's `QConv2d` layers.
        layer: usize,
        /// Quantized input.
        input: ValueId,
        /// Quantized output.
        output: ValueId,
    },
    /// A quantized linear layer.
    Linear {
        /// Index into the model's `QLinear` layers.
        layer: usize,
        /// Quantized input.
        input: ValueId,
        /// Quantized output.
        output: ValueId,
    },
    /// Quantized add, sub or mul of two values with broadcasting, with an optional fused ReLU.
    Binary {
        /// The arithmetic.
        op: BinaryOp,
        /// The two quantized inputs.
        inputs: [ValueId; 2],
        /// Quantized output.
        output: ValueId,
        /// Whether a ReLU is fused.
        relu: bool,
    },
    /// A pointwise function of quantized values, as a 256-entry table computed at convert time.
    Table {
        /// The function (`hardswish`, `sigmoid`, ...).
        name: String,
        /// `output = table[input]`.
        table: Table,
        /// Quantized input.
        input: ValueId,
        /// Quantized output.
        output: ValueId,
    },
    /// Constant padding of height and width of a quantized image.
    Pad {
        /// `[top, left, bottom, right]`.
        padding: [usize; 4],
        /// The quantized pad constant (the zero point for 0.0).
        value: u8,
        /// Quantized input.
        input: ValueId,
        /// Quantized output.
        output: ValueId,
    },
    /// Quantized concatenation along channels.
    Cat {
        /// Quantized inputs.
        inputs: Vec<ValueId>,
        /// Quantized output.
        output: ValueId,
    },
    /// Quantized max pooling.
    MaxPool2d {
        /// The window.
        pool: MaxPool2d,
        /// Quantized input.
        input: ValueId,
        /// Quantized output.
        output: ValueId,
    },
    /// Quantized average pooling.
    AvgPool2d {
        /// The window.
        pool: AvgPool2d,
        /// Quantized input.
        input: ValueId,
        /// Quantized output.
        output: ValueId,
    },
    /// Quantized global average pooling to `[N, C, 1, 1]` (also a mean over height and width).
    GlobalAvgPool {
        /// Quantized input.
        input: ValueId,
        /// Quantized output.
        output: ValueId,
    },
    /// Clamp of quantized values to `[min, max]` (a ReLU is `min = zero point`).
    Clamp {
        /// Quantized input.
        input: ValueId,
        /// Quantized output.
        output: ValueId,
        /// Lowest value.
        min: u8,
        /// Highest value.
        max: u8,
    },
    /// Reshape of quantized values to the output value's shape (in NCHW element order).
    Reshape {
        /// Quantized input.
        input: ValueId,
        /// Quantized output.
        output: ValueId,
    },
    /// A dynamically quantized linear layer: float in, float out, its input quantized per
    /// row at run time ([`crate::kernels::qlinear_dynamic`]), over the last axis.
    DynamicLinear {
        /// Index into the model's `QDynamicLinear` layers.
        layer: usize,
        /// Float input.
        input: ValueId,
        /// Float output.
        output: ValueId,
    },
    /// A node of the prepared graph run in float through Burn; its parameters are the model's
    /// float parameters.
    Float(Node),
}

impl Step {
    /// The values a step reads.
    pub fn inputs(&self) -> &[ValueId] {
        match self {
            Step::Quantize { input, .. }
            | Step::Dequantize { input, .. }
            | Step::Conv2d { input, .. }
            | Step::Linear { input, .. }
            | Step::DynamicLinear { input, .. }
            | Step::MaxPool2d { input, .. }
            | Step::AvgPool2d { input, .. }
            | Step::GlobalAvgPool { input, .. }
            | Step::Clamp { input, .. }
            | Step::Table { input, .. }
            | Step::Pad { input, .. }
            | Step::Reshape { input, .. } => std::slice::from_ref(input),
            Step::Binary { inputs, .. } => inputs,
            Step::Cat { inputs, .. } => inputs,
            Step::Float(node) => &node.inputs,
        }
    }

    /// The values a step makes.
    pub fn outputs(&self) -> &[ValueId] {
        match self {
            Step::Quantize { output, .. }
            | Step::Dequantize { output, .. }
            | Step::Conv2d { output, .. }
            | Step::Linear { output, .. }
            | Step::DynamicLinear { output, .. }
            | Step::MaxPool2d { output, .. }
            | Step::AvgPool2d { output, .. }
            | Step::GlobalAvgPool { output, .. }
            | Step::Clamp { output, .. }
            | Step::Table { output, .. }
            | Step::Pad { output, .. }
            | Step::Reshape { output, .. }
            | Step::Binary { output, .. }
            | Step::Cat { output, .. } => std::slice::from_ref(output),
            Step::Float(node) => &node.outputs,
        }
    }
}

/// What a `QConv2d` layer is, besides its tensors (what a record needs to rebuild it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConvLayer {
    /// The node's name (the layer's module path).
    pub name: String,
    /// The convolution's shape.
    pub geometry: Conv2dGeometry,
    /// Activation parameters and fused activation.
    pub spec: QLayerSpec,
}

/// What a `QLinear` layer is, besides its tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearLayer {
    /// The node's name (the layer's module path).
    pub name: String,
    /// Output features.
    pub out_features: usize,
    /// Input features.
    pub in_features: usize,
    /// Activation parameters and fused activation.
    pub spec: QLayerSpec,
}

/// What a `QDynamicLinear` layer is, besides its tensors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DynamicLinearLayer {
    /// The node's name (the layer's module path, or the matmul's name).
    pub name: String,
    /// Output features.
    pub out_features: usize,
    /// Input features.
    pub in_features: usize,
}

/// The int8 operation a node becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Int8Op {
    /// `QConv2d`.
    Conv2d,
    /// `QLinear`.
    Linear,
    /// `QDynamicLinear` (float input quantized at run time, float output).
    DynamicLinear,
    /// Quantized add, sub or mul of two values with broadcasting (two input scales to one
    /// output scale).
    Binary(BinaryOp),
    /// A pointwise function as a 256-entry table.
    Table,
    /// Constant padding of height and width.
    Pad,
    /// Quantized concatenation along channels.
    Cat,
    /// Quantized max pooling.
    MaxPool2d,
    /// Quantized average pooling.
    AvgPool2d,
    /// Quantized global average pooling (a 1x1 adaptive average pool).
    GlobalAvgPool,
    /// ReLU or clamp on quantized values.
    Clamp,
    /// Reshape of quantized values.
    Reshape,
}

impl Int8Op {
    /// Whether its output keeps its input's quantization parameters.
    pub fn shares_qparams(self) -> bool {
        matches!(
            self,
            Int8Op::MaxPool2d
                | Int8Op::AvgPool2d
                | Int8Op::GlobalAvgPool
                | Int8Op::Clamp
                | Int8Op::Reshape
                | Int8Op::Pad
        )
    }
}

/// Where a node runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Placement {
    /// On an int8 kernel.
    Int8(Int8Op),
    /// In float, and why.
    Float(String),
}

/// What became of one node of the prepared graph (the conversion report).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node's name (its layer's module path for layers).
    pub name: String,
    /// The op (`conv2d+relu`, `add`, ...).
    pub op: String,
    /// Int8, or float and why.
    pub placement: Placement,
    /// Bits of each quantized value the node makes (8, or 16 for W8A16); empty for a float
    /// node.
    #[serde(default)]
    pub bits: Vec<u8>,
    /// Bits of a conv or linear layer's weights (8, or 12 or 16 for W12 and W16).
    #[serde(default)]
    pub weight_bits: Option<u8>,
    /// Why an output the qconfig asked to be 16-bit is 8-bit, if one is.
    #[serde(default)]
    pub narrowed: Option<String>,
}

/// A quantized model's program.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantizedProgram {
    /// [`PROGRAM_FORMAT_VERSION`] of the code that wrote it.
    pub version: u32,
    /// Every value: shape (symbolic in the batch size, other sizes as captured; each run
    /// infers its own) and origin.
    pub values: Vec<ValueInfo>,
    /// How each value is held.
    pub domains: Vec<Domain>,
    /// The steps, in execution order.
    pub steps: Vec<Step>,
    /// The float inputs.
    pub inputs: Vec<ValueId>,
    /// The float outputs.
    pub outputs: Vec<ValueId>,
    /// Whether the program runs at any batch size.
    pub batch: BatchMode,
    /// The float parameters read by float steps, in the order of the model's float parameters.
    pub float_params: Vec<ValueId>,
    /// The model's `QConv2d` layers, in layer order.
    pub convs: Vec<ConvLayer>,
    /// The model's `QLinear` layers, in layer order.
    pub linears: Vec<LinearLayer>,
    /// The model's `QDynamicLinear` layers, in layer order (left out of the file when there
    /// are none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dynamic_linears: Vec<DynamicLinearLayer>,
    /// What became of every node.
    pub report: Vec<NodeReport>,
}

impl ValueShapes for QuantizedProgram {
    fn value_info(&self, id: ValueId) -> &ValueInfo {
        &self.values[id.index()]
    }

    fn input_ids(&self) -> &[ValueId] {
        &self.inputs
    }

    fn batch_mode(&self) -> &BatchMode {
        &self.batch
    }
}

impl QuantizedProgram {
    /// The quantization parameters of a `u8` value.
    pub fn qparams(&self, id: ValueId) -> Option<QParams> {
        match self.domains.get(id.index()) {
            Some(Domain::Int8(qp)) => Some(*qp),
            _ => None,
        }
    }
}

/// The layers of a quantized model that hold tensors, as one Burn module (what its record
/// stores): `QConv2d`, `QLinear` and `QDynamicLinear` layers, and the float parameters of
/// nodes kept in float.
#[derive(Module, Debug)]
pub struct QuantizedLayers {
    /// The quantized convolutions, in program order.
    pub convs: Vec<QConv2d>,
    /// The quantized linear layers, in program order.
    pub linears: Vec<QLinear>,
    /// The dynamically quantized linear layers, in program order.
    pub dynamic_linears: Vec<QDynamicLinear>,
    /// Parameters of float nodes, flattened (their shapes are in the program).
    pub floats: Vec<Param<Tensor<1>>>,
}
