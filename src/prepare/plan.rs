//! The quantization plan: which nodes will run on int8 kernels, and which activations need an
//! observer (PyTorch FX's observer insertion for the fbgemm/x86 backends).
//!
//! - Conv2d, Linear (2-D input), add/sub/mul of two activations (with broadcasting), Cat
//!   (channel axis) and pointwise functions (tables) compute new values: their outputs get an
//!   observer. Sigmoid and hard-sigmoid have the fixed range [0, 1] (scale 1/256, zero point 0)
//!   and tanh [-1, 1] (scale 2/256, zero point 128), as PyTorch's fixed-qparams ops.
//! - MaxPool2d, AvgPool2d, a 1x1 AdaptiveAvgPool2d or a mean over height and width, a
//!   standalone ReLU or clamp, a constant pad of height and width, and Reshape keep their
//!   input's quantization parameters (PyTorch's "share qparams" ops); they run in int8 only when
//!   their input is int8.
//! - A pointwise function (a table) runs in int8 only when its input is int8: in a float region
//!   it stays float rather than adding a quantize/dequantize pair around it.
//! - An int8 node that reads a float value (a graph input, a float node's output) quantizes it:
//!   that value gets an observer too, with the reading node's activation config.
//! - Everything else, and every node whose [`QConfig`] is `None`, runs in float.

use std::collections::HashMap;

use crate::graph::{BinaryOp, Graph, Node, Op, PadMode, ReduceOp, ValueId};
use crate::observe::{ObserverConfig, QDType};
use crate::program::{Int8Op, Placement};
use crate::qconfig::QConfig;

/// One activation observer of the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedValue {
    /// The value it watches.
    pub value: ValueId,
    /// How it observes.
    pub config: ObserverConfig,
}

/// The plan for a graph.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Where each node runs, in node order.
    pub placement: Vec<Placement>,
    /// The activations to observe.
    pub observed: Vec<ObservedValue>,
    /// For every value that will be quantized, the index in `observed` of the observer that
    /// gives its quantization parameters (shared through the "share qparams" ops).
    pub qparams_of: HashMap<ValueId, usize>,
    /// Observers whose value has a fixed range (sigmoid, hard-sigmoid, tanh): the index in
    /// `observed` and the `(scale, zero point)` used instead of what the observer saw.
    pub fixed: HashMap<usize, (f32, u8)>,
    /// Values whose qconfig asked for 16 bits but that stay 8-bit, and why.
    pub narrowed: HashMap<ValueId, String>,
}

/// Makes the plan for `graph` under the per-node `qconfigs`.
pub(crate) fn plan(graph: &Graph, qconfigs: &[Option<QConfig>]) -> Plan {
    let mut plan = Plan {
        placement: Vec::new(),
        observed: Vec::new(),
        qparams_of: HashMap::new(),
        fixed: HashMap::new(),
        narrowed: HashMap::new(),
    };
    for (node, qconfig) in graph.nodes.iter().zip(qconfigs) {
        let placement = match qconfig {
            None => Placement::Float("its qconfig is None".into()),
            Some(q) => match int8_op(graph, node) {
                Ok(op) if op.shares_qparams() && !plan.qparams_of.contains_key(&node.inputs[0]) => {
                    Placement::Float(format!(
                        "its input is float ({} keeps its input's qparams)",
                        node.op.kind()
                    ))
                }
                Ok(Int8Op::Table) if !plan.qparams_of.contains_key(&node.inputs[0]) => {
                    Placement::Float(format!(
                        "its input is float ({} is a table over int8 inputs)",
                        node.op.kind()
                    ))
                }
                Ok(op) => {
                    plan.place_int8(node, op, q);
                    Placement::Int8(op)
                }
                Err(why) => Placement::Float(why),
            },
        };
        plan.placement.push(placement);
    }
    plan.narrow_16bit(graph);
    plan
}

impl Plan {
    fn observe(&mut self, value: ValueId, config: &ObserverConfig) -> usize {
        *self.qparams_of.entry(value).or_insert_with(|| {
            self.observed.push(ObservedValue {
                value,
                config: config.clone(),
            });
            self.observed.len() - 1
        })
    }

    fn place_int8(&mut self, node: &Node, op: Int8Op, qconfig: &QConfig) {
        let activation = &qconfig.activation;
        for &input in activation_inputs(node) {
            self.observe(input, qconfig.input.as_ref().unwrap_or(activation));
        }
        let output = node.outputs[0];
        if op.shares_qparams() {
            let source = self.qparams_of[&node.inputs[0]];
            self.qparams_of.insert(output, source);
        } else {
            let k = self.observe(output, activation);
            if let Some(range) = fixed_range(&node.op) {
                self.fixed.insert(k, range);
            }
        }
    }
}

impl Plan {
    /// Gives 8 bits to every value observed at 16 bits that an op without 16-bit kernels makes
    /// or reads: 16-bit values are made by conv/linear layers and adds/subs or quantized from
    /// float, and read by conv/linear layers (as their data input), adds/subs or dequantized.
    fn narrow_16bit(&mut self, graph: &Graph) {
        for k in 0..self.observed.len() {
            let value = self.observed[k].value;
            if self.observed[k].config.dtype != QDType::QUInt16 {
                continue;
            }
            if let Some(why) = self.why_not_16bit(graph, value) {
                self.observed[k].config.dtype = QDType::QUInt8;
                self.narrowed.insert(value, why);
            }
        }
    }

    /// Why `value` cannot be 16-bit, or `None` when it can.
    fn why_not_16bit(&self, graph: &Graph, value: ValueId) -> Option<String> {
        let layer = |n: usize| {
            matches!(
                self.placement[n],
                Placement::Int8(Int8Op::Conv2d | Int8Op::Linear)
            )
        };
        let add = |n: usize| {
            matches!(
                self.placement[n],
                Placement::Int8(Int8Op::Binary(BinaryOp::Add | BinaryOp::Sub))
            )
        };
        let int8 = |n: usize| matches!(self.placement[n], Placement::Int8(_));
        if let Some(p) = (graph.producer(value)).filter(|&p| int8(p) && !layer(p) && !add(p)) {
            return Some(format!(
                "it is made by `{}` ({}), which has no 16-bit kernel",
                graph.nodes[p].name,
                graph.nodes[p].op.kind()
            ));
        }
        let reader = graph
            .consumers(value)
            .into_iter()
            .find(|&c| int8(c) && !add(c) && !(layer(c) && graph.nodes[c].inputs[0] == value));
        reader.map(|c| {
            format!(
                "it is read by `{}` ({}), which has no 16-bit kernel",
                graph.nodes[c].name,
                graph.nodes[c].op.kind()
            )
        })
    }
}

/// The fixed output range of sigmoid, hard-sigmoid and tanh as `(scale, zero point)` (PyTorch's
/// `default_fixed_qparams_range_0to1_observer` and `..._neg1to1_...`).
fn fixed_range(op: &Op) -> Option<(f32, u8)> {
    match op {
        Op::Pointwise { name, .. } => match name.as_str() {
            "sigmoid" | "hardsigmoid" => Some((1.0 / 256.0, 0)),
            "tanh" => Some((2.0 / 256.0, 128)),
            _ => None,
        },
        _ => None,
    }
}

/// The activation (non-parameter) inputs a node reads: the data input of conv/linear, all
/// inputs of the others.
fn activation_inputs(node: &Node) -> &[ValueId] {
    match node.op {
        Op::Conv2d(_) | Op::Linear => &node.inputs[..1],
        _ => &node.inputs,
    }
}

/// The int8 op a node can become, or why it cannot.
fn int8_op(graph: &Graph, node: &Node) -> Result<Int8Op, String> {
    let rank = |i: usize| graph.value(node.inputs[i]).shape.len();
    let has_data = |i: usize| {
        node.inputs
            .get(i)
            .is_none_or(|v| graph.tensors.contains_key(v))
    };
    let reads_constants = node.inputs.iter().any(|v| graph.tensors.contains_key(v));
    let why = |what: &str| Err(format!("{} {what}", node.op.kind()));
    match &node.op {
        Op::Conv2d(_) if rank(0) != 4 => why("on a tensor that is not 4-D"),
        Op::Conv2d(_) if !has_data(1) || !has_data(2) => why("with computed weights"),
        Op::Conv2d(_) => Ok(Int8Op::Conv2d),
        Op::Linear if rank(0) != 2 => why("on a tensor that is not 2-D"),
        Op::Linear if !has_data(1) || !has_data(2) => why("with computed weights"),
        Op::Linear => Ok(Int8Op::Linear),
        _ if reads_constants => why("reads a constant tensor"),
        Op::Binary(kind @ (BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul)) => {
            let [a, b] = [0, 1].map(|i| &graph.value(node.inputs[i]).shape);
            let fits = a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|(x, y)| x == y || x.fixed == 1 || y.fixed == 1);
            if !fits {
                why("with broadcasting across ranks or of unequal sizes")
            } else if !(2..=4).contains(&a.len()) {
                why("on a tensor that is not 2-D, 3-D or 4-D")
            } else {
                Ok(Int8Op::Binary(*kind))
            }
        }
        Op::Pointwise { .. } => Ok(Int8Op::Table),
        Op::Reduce {
            op: ReduceOp::Mean,
            axes: Some(axes),
        } if rank(0) == 4 && matches!(axes[..], [2, 3] | [3, 2]) => Ok(Int8Op::GlobalAvgPool),
        Op::Pad {
            padding,
            mode: PadMode::Constant(_),
        } if rank(0) == 4 && padding.len() == 4 && padding[..2] == [(0, 0), (0, 0)] => {
            Ok(Int8Op::Pad)
        }
        Op::Cat { axis: 1 } if matches!(rank(0), 2 | 4) => Ok(Int8Op::Cat),
        Op::Cat { .. } => why("along an axis other than channels"),
        Op::MaxPool2d(_) => Ok(Int8Op::MaxPool2d),
        Op::AvgPool2d { .. } => Ok(Int8Op::AvgPool2d),
        Op::AdaptiveAvgPool2d { output: [1, 1] } => Ok(Int8Op::GlobalAvgPool),
        Op::AdaptiveAvgPool2d { .. } => why("to an output larger than 1x1"),
        Op::Relu
        | Op::Clamp {
            min: Some(_),
            max: Some(_),
        } => Ok(Int8Op::Clamp),
        Op::Reshape { .. } => Ok(Int8Op::Reshape),
        _ => why("has no int8 kernel"),
    }
}

/// Which ops run in int8 and when, row by row: `(op, in int8 when, otherwise)`. What the
/// planner (`prepare::plan`) decides, for users to read before trying a model (the quickstart
/// prints it).
pub const OP_COVERAGE: &[(&str, &str, &str)] = &[
    (
        "conv2d (+relu, relu6, a fused table)",
        "always (any stride, padding, dilation, groups; depthwise)",
        "-",
    ),
    (
        "linear (+relu, relu6, a fused table)",
        "on a 2-D input",
        "float on other ranks",
    ),
    (
        "add, sub, mul",
        "two activations of one rank, with broadcasting (SE gate [N,C,H,W]*[N,C,1,1])",
        "float with a constant tensor operand",
    ),
    (
        "pointwise functions: sigmoid, hard-sigmoid, hard-swish, SiLU, tanh, GELU (erf, tanh), leaky ReLU, ELU, exp/log/erf/pow and scalar add/sub/mul/div chains",
        "on an int8 input: a 256-entry table (fused into the conv/linear before it when that is its only reader)",
        "float on a float input",
    ),
    (
        "relu, clamp (relu6, hardtanh)",
        "fused into conv/linear/add, or on an int8 input",
        "float on a float input",
    ),
    ("cat", "along channels, 2-D or 4-D", "float on other axes"),
    (
        "max_pool2d, avg_pool2d",
        "on an int8 input",
        "float on a float input",
    ),
    (
        "adaptive_avg_pool2d to 1x1, mean over H and W",
        "on an int8 input",
        "float on other output sizes",
    ),
    (
        "pad (constant, height and width)",
        "on an int8 input",
        "float for reflect/edge or other axes",
    ),
    (
        "reshape, flatten",
        "on an int8 input",
        "float on a float input",
    ),
    (
        "div, matmul of two activations, softmax, permute, slice, other reductions, other Burn ops",
        "-",
        "float (Burn's ops, a quantize/dequantize at the boundary)",
    ),
];

/// [`OP_COVERAGE`] as an aligned text table.
pub fn op_coverage_table() -> String {
    let mut text = String::from("op coverage (int8 unless said otherwise):\n");
    for (op, when, otherwise) in OP_COVERAGE {
        text.push_str(&format!(
            "  {op}\n      int8: {when}\n      else: {otherwise}\n"
        ));
    }
    text
}
