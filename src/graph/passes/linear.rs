//! Recognising Burn's `Linear` layer.
//!
//! Burn records `Linear::forward` not as one op but as `matmul(x, W)` followed by
//! `add(_, reshape(b, [1, .., out]))` (and, for inputs of rank > 2, `W` reshaped to
//! `[1, .., in, out]` first). This pass turns that pattern back into one [`Op::Linear`] node whose
//! inputs are `x`, the weight parameter and the bias parameter.

use crate::graph::{BinaryOp, Graph, ModuleRef, Node, Op, ValueId, ValueKind};

use super::remove_dead_nodes;

/// Replaces every matmul by a `Linear` layer's weight (plus its bias add) with one
/// [`Op::Linear`] node. Returns how many were fused.
pub fn fuse_linear(graph: &mut Graph) -> usize {
    let mut fused = 0;
    // Bias adds taken over by a fused node; removed once the scan is done.
    let mut absorbed = Vec::new();
    // The output and layer of every fused node, to name it by its layer.
    let mut renames = Vec::new();
    for i in 0..graph.nodes.len() {
        let node = &graph.nodes[i];
        if node.op != Op::Matmul {
            continue;
        }
        let (x, w) = (node.inputs[0], node.inputs[1]);
        let Some(weight) = linear_param(graph, w, "weight") else {
            continue;
        };
        let module = graph.value(weight).kind.clone();
        let ValueKind::Parameter(param) = module else {
            continue;
        };
        let product = node.outputs[0];
        let consumers = graph.consumers(product);
        let bias_add = match consumers.as_slice() {
            [c] if !graph.outputs.contains(&product) => {
                let add = &graph.nodes[*c];
                let other = add.inputs.iter().copied().find(|&v| v != product);
                match (&add.op, other) {
                    (Op::Binary(BinaryOp::Add), Some(b)) => linear_param(graph, b, "bias")
                        .filter(|&b| same_layer(graph, b, &param.module))
                        .map(|b| (*c, b)),
                    _ => None,
                }
            }
            _ => None,
        };
        let mut inputs = vec![x, weight];
        let mut outputs = vec![product];
        if let Some((add, bias)) = bias_add {
            inputs.push(bias);
            outputs = graph.nodes[add].outputs.clone();
            absorbed.push(add);
        }
        let name = graph.nodes[i].name.clone();
        renames.push((outputs[0], param.module.clone()));
        graph.nodes[i] = Node {
            name,
            op: Op::Linear,
            inputs,
            outputs,
            module: Some(ModuleRef {
                path: param.module.clone(),
                layer: param.layer.clone(),
            }),
            activation: None,
        };
        fused += 1;
    }
    let mut index = 0;
    graph.nodes.retain(|_| {
        index += 1;
        !absorbed.contains(&(index - 1))
    });
    // The reshapes that fed the weights and biases are now dead.
    remove_dead_nodes(graph);
    // Named by their layer, as captured layers are (unless a node has that name already: a
    // layer applied twice).
    for (output, module) in renames {
        if !graph.nodes.iter().any(|n| n.name == module)
            && let Some(node) = graph.nodes.iter_mut().find(|n| n.outputs[0] == output)
        {
            node.name = module;
        }
    }
    fused
}

/// The parameter behind `id` if it is a `Linear` layer's `name` parameter, directly or through
/// a reshape that only prepends axes of length 1.
fn linear_param(graph: &Graph, id: ValueId, name: &str) -> Option<ValueId> {
    let is_param = |v: ValueId| matches!(&graph.value(v).kind, ValueKind::Parameter(p) if p.layer == "Linear" && p.name == name);
    if is_param(id) {
        return Some(id);
    }
    let producer = &graph.nodes[graph.producer(id)?];
    let source = *producer.inputs.first()?;
    let only_leading_ones = {
        let (from, to) = (&graph.value(source).shape, &graph.value(id).shape);
        to.len() >= from.len()
            && to[to.len() - from.len()..] == from[..]
            && to[..to.len() - from.len()]
                .iter()
                .all(|d| d.is_fixed() && d.fixed == 1)
    };
    (matches!(producer.op, Op::Reshape { .. }) && only_leading_ones && is_param(source))
        .then_some(source)
}

fn same_layer(graph: &Graph, id: ValueId, module: &str) -> bool {
    matches!(&graph.value(id).kind, ValueKind::Parameter(p) if p.module == module)
}
