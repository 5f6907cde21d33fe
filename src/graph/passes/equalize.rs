//! Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight
//! Equalization and Bias Correction", section 4.1): data-free, it evens out the per-channel
//! weight ranges of two consecutive layers so that one weight scale per tensor fits them all.
//!
//! For a layer `a` whose output channel `c` feeds only layer `b` (through nothing, or a ReLU,
//! which is positively homogeneous: `relu(x / s) = relu(x) / s` for `s > 0`):
//!
//! ```text
//! r1[c] = max |W_a[c, ...]|      (the weights making channel c)
//! r2[c] = max |W_b[.., c, ..]|   (the weights reading channel c)
//! s[c]  = sqrt(r1[c] / r2[c])
//! W_a[c, ...] /= s[c];  bias_a[c] /= s[c];  W_b[.., c, ..] *= s[c]
//! ```
//!
//! after which both ranges are `sqrt(r1[c]·r2[c])`, and the model computes the same function
//! (up to float rounding). Pairs are convolution → convolution (any groups, depthwise
//! included, so a pointwise → depthwise → pointwise chain is two pairs) and linear → linear;
//! chains are swept until the scales settle. A ReLU6 or other clamp between the layers is not
//! homogeneous (`clamp(x / s, 0, 6) ≠ clamp(x, 0, 6) / s`), so such pairs are left as they are:
//! equalizing them would change the model.

use burn::tensor::TensorData;

use crate::graph::{Activation, Graph, LayerLayout, Op, ValueId};

/// Sweeps over all pairs at most this many times.
const MAX_SWEEPS: usize = 20;
/// A sweep whose scales all lie within this factor of 1 ends the equalization.
const SETTLED: f32 = 1e-4;

/// Equalizes every pair of layers it can (see the module docs); run after BatchNorm folding and
/// activation fusion. Returns how many pairs were equalized.
pub fn equalize_layers(graph: &mut Graph) -> usize {
    let pairs: Vec<(usize, usize)> = (0..graph.nodes.len())
        .filter_map(|a| equalizable_pair(graph, a).map(|b| (a, b)))
        .collect();
    for _ in 0..MAX_SWEEPS {
        let mut largest_change = 0.0f32;
        for &(a, b) in &pairs {
            let scales = equalize_pair(graph, a, b);
            for s in scales {
                largest_change = largest_change.max((s - 1.0).abs());
            }
        }
        if largest_change < SETTLED {
            break;
        }
    }
    pairs.len()
}

/// The node that reads node `a`'s output as the second layer of an equalizable pair.
fn equalizable_pair(graph: &Graph, a: usize) -> Option<usize> {
    let first = &graph.nodes[a];
    let homogeneous = matches!(first.activation, None | Some(Activation::Relu));
    let &x = first.outputs.first()?;
    let [b] = graph.consumers(x)[..] else {
        return None;
    };
    let second = &graph.nodes[b];
    let same_kind = matches!(
        (&first.op, &second.op),
        (Op::Conv2d(_), Op::Conv2d(_)) | (Op::Linear, Op::Linear)
    );
    let ok = homogeneous
        && same_kind
        && second.inputs[0] == x
        && !graph.outputs.contains(&x)
        && owned_data(graph, a)
        && owned_data(graph, b)
        && matches!(
            (LayerLayout::of(graph, a), LayerLayout::of(graph, b)),
            (Some(la), Some(lb)) if la.geometry.out_channels == lb.geometry.in_channels
        );
    ok.then_some(b)
}

/// Whether node `n`'s weight and bias have data that only `n` reads.
fn owned_data(graph: &Graph, n: usize) -> bool {
    graph.nodes[n].inputs[1..]
        .iter()
        .all(|&v| graph.tensors.contains_key(&v) && graph.consumers(v) == [n])
}

/// Equalizes the channels between layers `a` and `b` once; returns the scales applied.
fn equalize_pair(graph: &mut Graph, a: usize, b: usize) -> Vec<f32> {
    let layout = |n| LayerLayout::of(graph, n).expect("checked by the pair search");
    let (la, lb) = (layout(a), layout(b));
    let (wa, wb) = (graph.nodes[a].inputs[1], graph.nodes[b].inputs[1]);
    let r1 = channel_ranges(graph, wa, la.geometry.out_channels, |k| la.out_channel(k));
    let r2 = channel_ranges(graph, wb, lb.geometry.in_channels, |k| lb.in_channel(k));
    let scales: Vec<f32> = r1
        .iter()
        .zip(&r2)
        .map(|(&r1, &r2)| {
            let s = (r1 / r2).sqrt();
            if s.is_finite() && s > 0.0 { s } else { 1.0 }
        })
        .collect();
    rescale(graph, wa, |k, w| w / scales[la.out_channel(k)]);
    if let Some(&bias) = graph.nodes[a].inputs.get(2) {
        rescale(graph, bias, |c, v| v / scales[c]);
    }
    rescale(graph, wb, |k, w| w * scales[lb.in_channel(k)]);
    scales
}

/// The largest `|w|` of each of `channels` channels, `channel(k)` naming element `k`'s.
fn channel_ranges(
    graph: &Graph,
    weight: ValueId,
    channels: usize,
    channel: impl Fn(usize) -> usize,
) -> Vec<f32> {
    let mut ranges = vec![0.0f32; channels];
    for (k, w) in graph.tensors[&weight].iter::<f32>().enumerate() {
        let r = &mut ranges[channel(k)];
        *r = r.max(w.abs());
    }
    ranges
}

/// Replaces the data of `id` by `f(k, value)` of each element.
fn rescale(graph: &mut Graph, id: ValueId, f: impl Fn(usize, f32) -> f32) {
    let data = &graph.tensors[&id];
    let shape = data.shape().to_vec();
    let values: Vec<f32> = data
        .iter::<f32>()
        .enumerate()
        .map(|(k, v)| f(k, v))
        .collect();
    graph.tensors.insert(id, TensorData::new(values, shape));
}
