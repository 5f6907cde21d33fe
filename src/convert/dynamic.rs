//! Dynamic quantization (PyTorch's `quantize_dynamic`): a captured graph becomes a program in
//! which every Linear layer and every matmul by a constant `[in, out]` matrix is a
//! [`QDynamicLinear`] (weights quantized here, per output feature, with the qconfig's weight
//! observer; inputs quantized per row at run time) and every other node runs in float.

use burn::tensor::Device;

use super::{observe_weights, push_float_params, round_weights, to_out_in, weight_bits};
use crate::graph::{Graph, Node, Op, ValueId};
use crate::nn::QDynamicLinear;
use crate::program::{
    DynamicLinearLayer, Int8Op, NodeReport, PROGRAM_FORMAT_VERSION, Placement, QuantizedLayers,
    QuantizedProgram, Step,
};
use crate::qconfig::{QConfig, QConfigMap};
use crate::{Error, Result};

/// Converts `graph` for dynamic quantization: the nodes `qconfig` maps to a [`QConfig`] that
/// are Linear layers or matmuls by a constant matrix become dynamic int8 layers (only the
/// qconfig's weight observer is read: activations are quantized at run time); the rest, and
/// the nodes mapped to `None`, run in float. Layer tensors are made on `device`.
pub fn to_dynamic_program(
    graph: &Graph,
    qconfig: &QConfigMap,
    device: &Device,
) -> Result<(QuantizedProgram, QuantizedLayers)> {
    let qconfigs = qconfig.resolve(graph)?;
    let mut layers = QuantizedLayers {
        convs: Vec::new(),
        linears: Vec::new(),
        dynamic_linears: Vec::new(),
        floats: Vec::new(),
    };
    let (mut steps, mut report, mut described) = (Vec::new(), Vec::new(), Vec::new());
    let mut float_params = Vec::new();
    for (node, qconfig) in graph.nodes.iter().zip(&qconfigs) {
        let placement = match (qconfig, linear_operands(graph, node)) {
            (Some(q), Some(operands)) => {
                let layer = dynamic_layer(graph, node, operands, q, device)?;
                let packed = layer.packed()?;
                described.push(DynamicLinearLayer {
                    name: node.name.clone(),
                    out_features: packed.out_features(),
                    in_features: packed.in_features(),
                });
                layers.dynamic_linears.push(layer);
                steps.push(Step::DynamicLinear {
                    layer: described.len() - 1,
                    input: node.inputs[0],
                    output: node.outputs[0],
                });
                Placement::Int8(Int8Op::DynamicLinear)
            }
            (q, _) => {
                let params = (&mut float_params, &mut layers.floats);
                push_float_params(graph, node, params, device);
                steps.push(Step::Float(node.clone()));
                Placement::Float(float_reason(q.is_some()).into())
            }
        };
        let weight_bits = matches!(placement, Placement::Int8(_)).then_some(8);
        report.push(NodeReport {
            name: node.name.clone(),
            op: node.op.kind(),
            placement,
            bits: Vec::new(),
            weight_bits,
            narrowed: None,
        });
    }
    let program = QuantizedProgram {
        version: PROGRAM_FORMAT_VERSION,
        values: graph.values.clone(),
        domains: vec![crate::program::Domain::Float; graph.values.len()],
        steps,
        inputs: graph.inputs.clone(),
        outputs: graph.outputs.clone(),
        batch: graph.batch.clone(),
        float_params,
        convs: Vec::new(),
        linears: Vec::new(),
        dynamic_linears: described,
        report,
    };
    program.validate()?;
    Ok((program, layers))
}

/// Why a node stays in float: its qconfig is `None`, or (`configured`) it is not linear.
fn float_reason(configured: bool) -> &'static str {
    if configured {
        "dynamic quantization makes only linear layers and matmuls by a constant matrix int8"
    } else {
        "the qconfig maps it to None"
    }
}

/// The weight `[in, out]` and optional bias of a node that is a linear map of its first input:
/// a Linear layer without a fused activation, or a matmul whose second operand is a constant
/// matrix.
fn linear_operands(graph: &Graph, node: &Node) -> Option<(ValueId, Option<ValueId>)> {
    let constant_matrix =
        |id: &ValueId| graph.tensors.get(id).is_some_and(|t| t.shape().len() == 2);
    let weight = node.inputs.get(1).filter(|id| constant_matrix(id))?;
    match node.op {
        Op::Linear if node.activation.is_none() => {
            let bias = node
                .inputs
                .get(2)
                .filter(|id| graph.tensors.contains_key(id));
            Some((*weight, bias.copied()))
        }
        Op::Matmul if !graph.tensors.contains_key(&node.inputs[0]) => Some((*weight, None)),
        _ => None,
    }
}

/// The dynamic layer of a linear node: Burn's `[in, out]` weight transposed to `[out, in]`,
/// quantized with `qconfig`'s weight observer, which must give 8-bit weights.
fn dynamic_layer(
    graph: &Graph,
    node: &Node,
    (weight, bias): (ValueId, Option<ValueId>),
    qconfig: &QConfig,
    device: &Device,
) -> Result<QDynamicLinear> {
    if weight_bits(qconfig, &node.name)? != 8 {
        return Err(Error::Unsupported(format!(
            "weights of `{}`: dynamic layers take 8-bit weights",
            node.name
        )));
    }
    let data = &graph.tensors[&weight];
    let (inputs, outputs) = (data.shape()[0], data.shape()[1]);
    let transposed = to_out_in(&data.iter::<f32>().collect::<Vec<_>>(), inputs, outputs);
    let shape = [outputs, inputs];
    let (scales, range) = observe_weights(&transposed, &shape, qconfig, &node.name)?;
    let weight = round_weights(&transposed, &scales, range);
    let weight = weight.into_iter().map(|w| w as i8).collect();
    let bias = match bias {
        Some(id) => graph.tensors[&id].iter::<f32>().collect(),
        None => vec![0.0; outputs],
    };
    QDynamicLinear::new(outputs, inputs, weight, scales, bias, device)
}
