//! Mean chains: `x.mean_dim(3).mean_dim(2)` (what a spatial mean records in Burn) becomes one
//! [`Op::Reduce`] over both axes, in the same order, so that the global-pool pattern is one node.

use crate::graph::{Graph, Op, ReduceOp};

/// Merges every mean over some axes whose only reader is another mean over other axes (and that
/// is not a graph output) into that reader. Returns how many were merged.
pub fn merge_means(graph: &mut Graph) -> usize {
    let mut merged = 0;
    let mut i = 0;
    while i < graph.nodes.len() {
        let target = match &graph.nodes[i].op {
            Op::Reduce {
                op: ReduceOp::Mean,
                axes: Some(first),
            } => {
                let x = graph.nodes[i].outputs[0];
                match graph.consumers(x)[..] {
                    [c] if !graph.outputs.contains(&x) => match &graph.nodes[c].op {
                        Op::Reduce {
                            op: ReduceOp::Mean,
                            axes: Some(second),
                        } if second.iter().all(|a| !first.contains(a)) => {
                            Some((c, [first.clone(), second.clone()].concat()))
                        }
                        _ => None,
                    },
                    _ => None,
                }
            }
            _ => None,
        };
        match target {
            Some((c, axes)) if graph.nodes[i].activation.is_none() => {
                let input = graph.nodes[i].inputs[0];
                graph.nodes[c].inputs[0] = input;
                graph.nodes[c].op = Op::Reduce {
                    op: ReduceOp::Mean,
                    axes: Some(axes),
                };
                graph.nodes.remove(i);
                merged += 1;
            }
            _ => i += 1,
        }
    }
    merged
}
