//! Element-wise fusion: every connected group of element-wise nodes that depends on a single
//! value `x` becomes one [`Op::Pointwise`] node per value it hands on (hard-swish is
//! `x · hard_sigmoid(x)`, SiLU `x · sigmoid(x)`, Burn's ELU five nodes, tanh-GELU eight). Such a
//! function of one value is, on a `u8` input, exactly a 256-entry table; the int8 model runs it
//! as one lookup.
//!
//! A node is element-wise when its op is (a unary activation, a scalar op, a binary op, or a
//! Burn op we do not lower from the list in [`ELEMENTWISE_FALLBACKS`]) and every value it reads
//! has its output's shape, with no parameter or constant tensor among them. A lone ReLU or clamp
//! is left alone: it already runs in int8 as a clamp of its input's integers.

use std::collections::{HashMap, HashSet};

use crate::graph::{Graph, Node, Op, ValueId, fallback_name};

/// Burn ops without a lowering that are element-wise (same-shape inputs and output).
pub const ELEMENTWISE_FALLBACKS: &[&str] = &[
    "HardSigmoid",
    "LeakyRelu",
    "LogSigmoid",
    "Exp",
    "Log",
    "Log1p",
    "Erf",
    "PowfScalar",
    "PowiScalar",
    "Powi",
    "Powf",
    "Sqrt",
    "Cos",
    "Cosh",
    "Sin",
    "Sinh",
    "Tan",
    "Tanh",
    "Round",
    "Floor",
    "Ceil",
    "Trunc",
    "Recip",
    "Abs",
    "Rem",
    "RemScalar",
    "Greater",
    "GreaterElem",
    "GreaterEqual",
    "GreaterEqualElem",
    "Lower",
    "LowerElem",
    "LowerEqual",
    "LowerEqualElem",
    "Equal",
    "EqualElem",
    "MaskWhere",
    "MaskFill",
    "Not",
    "And",
    "Or",
    "Cast",
    "Max",
    "Min",
    "ClampMin",
    "ClampMax",
    "Clamp",
];

/// Fuses element-wise groups (see the module documentation). Returns how many pointwise nodes
/// were made.
pub fn fuse_pointwise(graph: &mut Graph) -> usize {
    let source = sources(graph);
    let member = |i: usize| source.contains_key(&graph.nodes[i].outputs[0]);
    let mut fused: Vec<(usize, Node)> = Vec::new();
    let mut used = HashSet::new();
    let mut names = HashMap::new();
    for i in (0..graph.nodes.len()).filter(|&i| member(i)) {
        let y = graph.nodes[i].outputs[0];
        let read_outside =
            graph.outputs.contains(&y) || graph.consumers(y).into_iter().any(|c| !member(c));
        if !read_outside {
            continue;
        }
        let body = body_of(graph, &source, i);
        let lone_clamp = body.len() == 1
            && matches!(graph.nodes[i].op, Op::Relu | Op::Clamp { .. })
            && graph.nodes[i].activation.is_none();
        if lone_clamp {
            continue;
        }
        used.extend(body.iter().copied());
        let body: Vec<Node> = body.iter().map(|&k| graph.nodes[k].clone()).collect();
        let name = pattern_name(&body);
        let count = names.entry(name.clone()).or_insert(0);
        *count += 1;
        let node = Node {
            name: unique_name(graph, &format!("{name}_{count}")),
            op: Op::Pointwise { name, body },
            inputs: vec![source[&y]],
            outputs: vec![y],
            module: None,
            activation: None,
        };
        fused.push((i, node));
    }
    let made = fused.len();
    let mut fused: HashMap<usize, Node> = fused.into_iter().collect();
    let nodes = std::mem::take(&mut graph.nodes);
    graph.nodes = (nodes.into_iter().enumerate())
        .filter_map(|(i, node)| match fused.remove(&i) {
            Some(pointwise) => Some(pointwise),
            None if used.contains(&i) => None,
            None => Some(node),
        })
        .collect();
    made
}

/// For the output of every element-wise node whose inputs all derive from one value, that value.
fn sources(graph: &Graph) -> HashMap<ValueId, ValueId> {
    let mut source: HashMap<ValueId, ValueId> = HashMap::new();
    for node in &graph.nodes {
        if !is_elementwise(graph, node) {
            continue;
        }
        let roots: HashSet<ValueId> = (node.inputs.iter())
            .map(|v| source.get(v).copied().unwrap_or(*v))
            .collect();
        if let [root] = roots.into_iter().collect::<Vec<_>>()[..] {
            source.insert(node.outputs[0], root);
        }
    }
    source
}

fn is_elementwise(graph: &Graph, node: &Node) -> bool {
    let kind_ok = match &node.op {
        Op::Relu
        | Op::Clamp { .. }
        | Op::Sigmoid
        | Op::Tanh
        | Op::Gelu
        | Op::Scalar { .. }
        | Op::Binary(_) => true,
        Op::Fallback(ir) => ELEMENTWISE_FALLBACKS.contains(&fallback_name(ir).as_str()),
        _ => false,
    };
    let [out] = node.outputs[..] else {
        return false;
    };
    let shape = &graph.value(out).shape;
    kind_ok
        && !node.inputs.is_empty()
        && node
            .inputs
            .iter()
            .all(|v| !graph.tensors.contains_key(v) && &graph.value(*v).shape == shape)
}

/// The element-wise nodes that node `last` depends on back to its source, in graph order.
fn body_of(graph: &Graph, source: &HashMap<ValueId, ValueId>, last: usize) -> Vec<usize> {
    let mut body = vec![last];
    let mut stack = vec![last];
    while let Some(k) = stack.pop() {
        for v in &graph.nodes[k].inputs {
            if source.contains_key(v)
                && let Some(p) = graph.producer(*v)
                && !body.contains(&p)
            {
                body.push(p);
                stack.push(p);
            }
        }
    }
    body.sort_unstable();
    body
}

/// A readable name for a fused body: the common activations by name, else its ops.
fn pattern_name(body: &[Node]) -> String {
    let kinds: Vec<String> = body
        .iter()
        .map(|n| n.op.kind().trim_start_matches("fallback:").to_lowercase())
        .collect();
    let kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
    let known = match kinds[..] {
        ["hardsigmoid", "mul"] => "hardswish",
        ["hardsigmoid"] => "hardsigmoid",
        ["sigmoid", "mul"] => "silu",
        ["leakyrelu"] => "leaky_relu",
        [
            "lowerequalelem",
            "exp",
            "sub_scalar",
            "mul_scalar",
            "maskwhere",
        ] => "elu",
        [
            "powiscalar",
            "mul_scalar",
            "add",
            "mul_scalar",
            "tanh",
            "add_scalar",
            "mul",
            "mul_scalar",
        ] => "gelu_tanh",
        _ => "",
    };
    match known {
        "" => kinds.join("+"),
        name => name.to_string(),
    }
}

fn unique_name(graph: &Graph, wanted: &str) -> String {
    let taken = |name: &str| graph.nodes.iter().any(|n| n.name == name);
    let mut name = wanted.to_string();
    let mut k = 1;
    while taken(&name) {
        k += 1;
        name = format!("{wanted}_{k}");
    }
    name
}
