//! Activation fusion: a ReLU or clamp (ReLU6) right after a convolution, a linear layer or an
//! add becomes part of that node (PyTorch's `ConvReLU2d`, `LinearReLU`, `add_relu`), so that the
//! int8 kernels apply it as the clamp of their requantization.

use crate::graph::{Activation, BinaryOp, Graph, Op};

/// Fuses every ReLU / two-sided clamp whose input is a conv, linear or add that nothing else
/// reads. Returns how many were fused.
pub fn fuse_activations(graph: &mut Graph) -> usize {
    let mut fused = 0;
    let mut i = 0;
    while i < graph.nodes.len() {
        let act = match graph.nodes[i].op {
            Op::Relu => Some(Activation::Relu),
            Op::Clamp {
                min: Some(min),
                max: Some(max),
            } => Some(Activation::Clamp { min, max }),
            _ => None,
        };
        let x = graph.nodes[i].inputs[0];
        let target = act.and_then(|_| graph.producer(x)).filter(|&p| {
            let producer = &graph.nodes[p];
            let fusable = matches!(
                producer.op,
                Op::Conv2d(_) | Op::Linear | Op::Binary(BinaryOp::Add)
            );
            fusable
                && producer.activation.is_none()
                && graph.consumers(x) == [i]
                && !graph.outputs.contains(&x)
        });
        match (act, target) {
            (Some(act), Some(p)) => {
                let outputs = graph.nodes.remove(i).outputs;
                graph.nodes[p].activation = Some(act);
                graph.nodes[p].outputs = outputs;
                fused += 1;
            }
            _ => i += 1,
        }
    }
    fused
}
