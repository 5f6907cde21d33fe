//! BatchNorm folding: `bn(conv(x))` becomes one convolution (and `bn(linear(x))` one linear)
//! with rescaled weights and a new bias, as PyTorch's `fuse_conv_bn_weights` computes them:
//!
//! ```text
//! r = 1 / sqrt(var + eps)                (per output channel, f32)
//! W' = W * (gamma * r)                    (each output channel scaled)
//! b' = (b - mean) * r * gamma + beta      (b = 0 when the layer had no bias)
//! ```
//!
//! The folded weight keeps the layer's parameter path (`layer1.0.conv1.weight`), so it stays
//! inspectable by module path; a layer without bias gets one at `<layer>.bias`.

use burn::tensor::TensorData;

use crate::graph::{Graph, LayerLayout, Op, ParamRef, ValueId, ValueInfo, ValueKind};

/// Folds every BatchNorm whose input is a convolution or linear layer that nothing else reads.
/// Returns how many were folded.
pub fn fold_batch_norm(graph: &mut Graph) -> usize {
    fold_batch_norm_recorded(graph).len()
}

/// A BatchNorm folded into the layer before it, with what the fold started from:
/// quantization-aware training trains the layer and the BatchNorm apart until it freezes the
/// statistics ([`crate::qat`]).
#[derive(Clone, Debug)]
pub(crate) struct FoldedBatchNorm {
    /// The BatchNorm node's name (its module path).
    pub(crate) name: String,
    /// The folded weight's value, which the layer reads.
    pub(crate) folded_weight: ValueId,
    /// The folded bias's value.
    pub(crate) folded_bias: ValueId,
    /// The layer's weight layout.
    pub(crate) layout: LayerLayout,
    /// The layer's weight before folding, and its shape.
    pub(crate) weight: (Vec<f32>, Vec<usize>),
    /// The layer's bias before folding, if it had one.
    pub(crate) bias: Option<Vec<f32>>,
    /// The BatchNorm's scale, shift, running mean and running variance, and epsilon.
    pub(crate) stats: BatchNormStats,
}

/// The parameters and statistics of one BatchNorm, per channel.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct BatchNormStats {
    pub(crate) gamma: Vec<f32>,
    pub(crate) beta: Vec<f32>,
    pub(crate) mean: Vec<f32>,
    pub(crate) var: Vec<f32>,
    pub(crate) eps: f32,
}

/// [`fold_batch_norm`], returning what each fold started from.
pub(crate) fn fold_batch_norm_recorded(graph: &mut Graph) -> Vec<FoldedBatchNorm> {
    let mut folded = Vec::new();
    let mut i = 0;
    while i < graph.nodes.len() {
        if let Some(layer) = foldable_into(graph, i) {
            folded.push(fold(graph, layer, i));
            graph.nodes.remove(i);
        } else {
            i += 1;
        }
    }
    // Drop the data of weights that only the folded layers read.
    super::remove_dead_nodes(graph);
    folded
}

/// The folded weight and bias of a layer with `weight` (laid out as `layout`) and `bias`
/// followed by a BatchNorm with `stats` (PyTorch's `fuse_conv_bn_weights`).
pub(crate) fn folded_values(
    (weight, bias): (&[f32], Option<&[f32]>),
    layout: &LayerLayout,
    stats: &BatchNormStats,
) -> (Vec<f32>, Vec<f32>) {
    let BatchNormStats {
        gamma,
        beta,
        mean,
        var,
        eps,
    } = stats;
    let rsqrt: Vec<f32> = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let scale: Vec<f32> = gamma.iter().zip(&rsqrt).map(|(g, r)| g * r).collect();
    let weight = (weight.iter().enumerate())
        .map(|(k, w)| w * scale[layout.out_channel(k)])
        .collect();
    let bias = (0..scale.len())
        .map(|c| (bias.map_or(0.0, |b| b[c]) - mean[c]) * rsqrt[c] * gamma[c] + beta[c])
        .collect();
    (weight, bias)
}

/// The index of the conv/linear node that BatchNorm node `bn` can fold into.
fn foldable_into(graph: &Graph, bn: usize) -> Option<usize> {
    let node = &graph.nodes[bn];
    if !matches!(node.op, Op::BatchNorm { .. })
        || node.inputs[1..].iter().any(|&v| !has_data(graph, v))
    {
        return None;
    }
    let x = node.inputs[0];
    let layer = graph.producer(x)?;
    let producer = &graph.nodes[layer];
    let channel_axis_ok = match producer.op {
        Op::Conv2d(_) => true,
        // BatchNorm over [N, C] after a linear layer normalises its output features.
        Op::Linear => graph.value(x).shape.len() == 2,
        _ => false,
    };
    let weights_known = producer.inputs[1..].iter().all(|&v| has_data(graph, v));
    let channels = graph.tensors[&node.inputs[1]]
        .shape()
        .iter()
        .product::<usize>();
    let channels_match =
        LayerLayout::of(graph, layer).is_some_and(|l| l.geometry.out_channels == channels);
    let sole_reader = graph.consumers(x) == [bn] && !graph.outputs.contains(&x);
    (channel_axis_ok
        && weights_known
        && channels_match
        && sole_reader
        && producer.activation.is_none())
    .then_some(layer)
}

fn has_data(graph: &Graph, id: ValueId) -> bool {
    graph.tensors.contains_key(&id)
}

fn values(graph: &Graph, id: ValueId) -> Vec<f32> {
    graph.tensors[&id].iter::<f32>().collect()
}

/// Rewrites `layer`'s weight and bias with BatchNorm node `bn` folded in, and makes it produce
/// the BatchNorm's output.
fn fold(graph: &mut Graph, layer: usize, bn: usize) -> FoldedBatchNorm {
    let bn_node = graph.nodes[bn].clone();
    let Op::BatchNorm { epsilon } = bn_node.op else {
        unreachable!("checked by foldable_into")
    };
    let [gamma, beta, mean, var] = [1, 2, 3, 4].map(|k| values(graph, bn_node.inputs[k]));
    let stats = BatchNormStats {
        gamma,
        beta,
        mean,
        var,
        eps: epsilon as f32,
    };
    let channels = stats.gamma.len();
    let node = &graph.nodes[layer];
    let (weight_id, bias_id) = (node.inputs[1], node.inputs.get(2).copied());
    let weight_shape = graph.tensors[&weight_id].shape().to_vec();
    let layout = LayerLayout::of(graph, layer).expect("checked by foldable_into");
    let weight_in = values(graph, weight_id);
    let bias_in = bias_id.map(|b| values(graph, b));
    let (weight, bias) = folded_values((&weight_in, bias_in.as_deref()), &layout, &stats);

    let weight_value = replace_data(
        graph,
        weight_id,
        TensorData::new(weight, weight_shape.clone()),
    );
    let bias_value = match bias_id {
        Some(b) => replace_data(graph, b, TensorData::new(bias, [channels])),
        None => new_bias(graph, weight_id, TensorData::new(bias, [channels])),
    };
    let node = &mut graph.nodes[layer];
    node.inputs.truncate(1);
    node.inputs.extend([weight_value, bias_value]);
    node.outputs = bn_node.outputs;
    FoldedBatchNorm {
        name: bn_node.name,
        folded_weight: weight_value,
        folded_bias: bias_value,
        layout,
        weight: (weight_in, weight_shape),
        bias: bias_in,
        stats,
    }
}

/// A value with the same origin as `old` but new data (the old value may be read elsewhere).
fn replace_data(graph: &mut Graph, old: ValueId, data: TensorData) -> ValueId {
    let info = graph.value(old).clone();
    let id = graph.add_value(info);
    graph.tensors.insert(id, data);
    id
}

/// A bias parameter for the layer that owns `weight`.
fn new_bias(graph: &mut Graph, weight: ValueId, data: TensorData) -> ValueId {
    let kind = match &graph.value(weight).kind {
        ValueKind::Parameter(p) => ValueKind::Parameter(ParamRef {
            name: "bias".into(),
            ..p.clone()
        }),
        other => other.clone(),
    };
    let info = ValueInfo {
        shape: vec![crate::graph::Dim::fixed(data.shape()[0])],
        dtype: data.dtype(),
        kind,
    };
    let id = graph.add_value(info);
    graph.tensors.insert(id, data);
    id
}
