//! Dead-node removal.

use std::collections::HashSet;

use crate::graph::{Graph, ValueId};

/// Removes nodes whose outputs nobody reads (and that are not graph outputs), then the data of
/// parameters and constants that no node reads any more. Returns how many nodes were removed.
pub fn remove_dead_nodes(graph: &mut Graph) -> usize {
    let before = graph.nodes.len();
    let mut live: HashSet<ValueId> = graph.outputs.iter().copied().collect();
    let mut keep = vec![false; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate().rev() {
        if node.outputs.iter().any(|o| live.contains(o)) {
            keep[i] = true;
            live.extend(node.inputs.iter().copied());
        }
    }
    let mut flags = keep.into_iter();
    graph.nodes.retain(|_| flags.next().unwrap_or(false));
    graph.tensors.retain(|id, _| live.contains(id));
    before - graph.nodes.len()
}
