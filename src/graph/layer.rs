//! Where a conv or linear node's weights sit: its geometry and the channels of each weight
//! element, shared by the passes that rewrite weights (BatchNorm folding, equalization), by
//! calibration statistics and by convert.

use super::{Graph, Op};
use crate::kernels::Conv2dGeometry;

/// The weight layout of a conv or linear node; a linear layer is a 1x1 convolution over its
/// features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LayerLayout {
    /// The convolution's shape (stride, padding and dilation 1 and 0 for a linear layer).
    pub(crate) geometry: Conv2dGeometry,
    /// Whether the node is linear: weights `[in, out]` (Burn's layout), input `[..., in]`.
    pub(crate) linear: bool,
}

impl LayerLayout {
    /// The layout of graph node `n` from its weight's shape; `None` for another op or a weight
    /// without data or of the wrong rank.
    pub(crate) fn of(graph: &Graph, n: usize) -> Option<LayerLayout> {
        let node = &graph.nodes[n];
        let shape = graph.tensors.get(node.inputs.get(1)?)?.shape();
        LayerLayout::from_weight(&node.op, shape)
    }

    /// The layout of a node with op `op` whose weight has shape `shape`: conv weights are
    /// `[out, in/groups, kh, kw]`, linear weights `[in, out]`.
    pub(crate) fn from_weight(op: &Op, shape: &[usize]) -> Option<LayerLayout> {
        match (op, shape) {
            (Op::Conv2d(a), &[out, per_group, kh, kw]) => Some(LayerLayout {
                geometry: Conv2dGeometry {
                    in_channels: per_group * a.groups,
                    out_channels: out,
                    kernel: [kh, kw],
                    stride: a.stride,
                    padding: a.padding,
                    dilation: a.dilation,
                    groups: a.groups,
                },
                linear: false,
            }),
            (Op::Linear, &[inputs, out]) => Some(LayerLayout {
                geometry: Conv2dGeometry {
                    in_channels: inputs,
                    out_channels: out,
                    kernel: [1, 1],
                    stride: [1, 1],
                    padding: [0; 4],
                    dilation: [1, 1],
                    groups: 1,
                },
                linear: true,
            }),
            _ => None,
        }
    }

    /// Weight elements per output channel.
    fn per_out(&self) -> usize {
        let g = &self.geometry;
        g.in_channels / g.groups * g.kernel[0] * g.kernel[1]
    }

    /// The output channel of weight element `k`.
    pub(crate) fn out_channel(&self, k: usize) -> usize {
        if self.linear {
            k % self.geometry.out_channels
        } else {
            k / self.per_out()
        }
    }

    /// The input channel of weight element `k`.
    pub(crate) fn in_channel(&self, k: usize) -> usize {
        let g = &self.geometry;
        if self.linear {
            return k / g.out_channels;
        }
        let per_group = g.in_channels / g.groups;
        let local = (k / (g.kernel[0] * g.kernel[1])) % per_group;
        let group = self.out_channel(k) / (g.out_channels / g.groups);
        group * per_group + local
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Conv2dAttrs;

    #[test]
    fn channels_of_grouped_conv_and_linear_weights() {
        let attrs = Conv2dAttrs {
            stride: [1, 1],
            padding: [0; 4],
            dilation: [1, 1],
            groups: 2,
        };
        // [out 4, in/groups 3, 2, 1]: 6 elements per output, outputs 0-1 in group 0.
        let conv = LayerLayout::from_weight(&Op::Conv2d(attrs), &[4, 3, 2, 1]).unwrap();
        assert_eq!(conv.geometry.in_channels, 6);
        assert_eq!((conv.out_channel(13), conv.in_channel(13)), (2, 3));
        assert_eq!((conv.out_channel(5), conv.in_channel(5)), (0, 2));
        let linear = LayerLayout::from_weight(&Op::Linear, &[3, 5]).unwrap();
        assert_eq!((linear.out_channel(7), linear.in_channel(7)), (2, 1));
        assert!(LayerLayout::from_weight(&Op::Linear, &[3, 5, 1]).is_none());
    }
}
