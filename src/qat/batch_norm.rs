//! BatchNorm in quantization-aware training, as PyTorch's `ConvBn2d`/`LinearBn1d`
//! (`_forward_approximate`): the layer and its BatchNorm train apart while the weight is
//! fake-quantized folded with the running statistics,
//!
//! ```text
//! s = gamma / sqrt(running_var + eps)
//! y = bn_batch_stats(layer(x, fq(W · s), 0) / s + b)     (and the running statistics update)
//! ```
//!
//! until the statistics are frozen ([`super::QatModel::freeze_bn`]), after which the layer runs
//! folded: `layer(x, fq(W · s), (b − running_mean) · s + beta)`, what `convert` computes.

use burn::backend::ops::FloatTensorOps;
use burn::backend::{Dispatch, DispatchTensor, TensorMetadata};
use burn::module::{Module, Param};
use burn::tensor::{Device, Shape, Tensor, TensorData};

use super::{flat_param, values_of};
use crate::exec::RunNode;
use crate::graph::Node;
use crate::graph::passes::{BatchNormStats, FoldedBatchNorm, folded_values};
use crate::{Error, Result};

/// PyTorch's BatchNorm momentum (and Burn's), for the running statistics.
const MOMENTUM: f32 = 0.1;

/// The trainable parameters of a layer with the BatchNorm that follows it.
#[derive(Module, Debug)]
pub struct QatBatchNorm {
    /// The layer's weight before folding, flattened.
    pub weight: Param<Tensor<1>>,
    /// The layer's bias before folding, if it had one.
    pub bias: Option<Param<Tensor<1>>>,
    /// BatchNorm's scale.
    pub gamma: Param<Tensor<1>>,
    /// BatchNorm's shift.
    pub beta: Param<Tensor<1>>,
}

/// `t` (a tensor of any rank) as a tensor of rank `D` and shape `dims`.
fn reshaped<const D: usize>(t: DispatchTensor, dims: [usize; D]) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::float_reshape(t, Shape::from(dims)))
}

impl QatBatchNorm {
    /// The parameters of `folded` as they were before folding.
    pub(crate) fn new(folded: &FoldedBatchNorm, device: &Device) -> Self {
        QatBatchNorm {
            weight: flat_param(&folded.weight.0, device),
            bias: folded.bias.as_ref().map(|b| flat_param(b, device)),
            gamma: flat_param(&folded.stats.gamma, device),
            beta: flat_param(&folded.stats.beta, device),
        }
    }

    /// The folded weight and bias (host values, the fold pass's arithmetic) with `running`
    /// statistics: what `convert` quantizes.
    pub(crate) fn folded(&self, running: &FoldedBatchNorm) -> Result<(Vec<f32>, Vec<f32>)> {
        let weight = values_of(self.weight.val())?;
        let bias = self.bias.as_ref().map(|b| values_of(b.val())).transpose()?;
        let stats = BatchNormStats {
            gamma: values_of(self.gamma.val())?,
            beta: values_of(self.beta.val())?,
            ..running.stats.clone()
        };
        Ok(folded_values(
            (&weight, bias.as_deref()),
            &running.layout,
            &stats,
        ))
    }

    /// This step's tensors of the layer, with the running statistics of `running`.
    pub(crate) fn tensors(&self, running: &FoldedBatchNorm) -> FoldedTensors {
        let device = self.gamma.val().device();
        let stats = &running.stats;
        let rsqrt: Vec<f32> = (stats.var.iter())
            .map(|v| 1.0 / (v + stats.eps).sqrt())
            .collect();
        let channels = rsqrt.len();
        let constant =
            |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [channels]), &device);
        let rsqrt = constant(&rsqrt);
        let scale = self.gamma.val().mul(rsqrt.clone());
        let (shape, axis) = (&running.weight.1, usize::from(running.layout.linear));
        let [rows, cols] = match axis {
            0 => [channels, shape.iter().product::<usize>() / channels],
            _ => [shape.iter().product::<usize>() / channels, channels],
        };
        let per_channel = match axis {
            0 => scale.clone().reshape([channels, 1]),
            _ => scale.clone().reshape([1, channels]),
        };
        let weight = self.weight.val().reshape([rows, cols]).mul(per_channel);
        let layer_bias = self.bias.as_ref().map(|b| b.val());
        let bias = layer_bias
            .clone()
            .unwrap_or_else(|| Tensor::zeros([channels], &device));
        let folded_bias = (bias.sub(constant(&stats.mean)).mul(rsqrt))
            .mul(self.gamma.val())
            .add(self.beta.val());
        FoldedTensors {
            weight: Dispatch::float_reshape(weight.into_dispatch(), Shape::from(shape.clone())),
            bias: folded_bias.into_dispatch(),
            scale,
            layer_bias,
            gamma: self.gamma.val(),
            beta: self.beta.val(),
        }
    }
}

/// One step's tensors of a layer with its BatchNorm.
pub(crate) struct FoldedTensors {
    /// `W · s` (to be fake-quantized).
    pub(crate) weight: DispatchTensor,
    /// `(b − running_mean) · s + beta`.
    pub(crate) bias: DispatchTensor,
    scale: Tensor<1>,
    layer_bias: Option<Tensor<1>>,
    gamma: Tensor<1>,
    beta: Tensor<1>,
}

impl FoldedTensors {
    /// Runs layer `node` (whose BatchNorm was folded into it) on `args` with the folded
    /// weight and no bias, then BatchNorm with this batch's statistics and the node's fused
    /// activation; updates the running statistics in `running`.
    pub(crate) fn run_with_batch_statistics(
        &self,
        node: &Node,
        mut args: Vec<DispatchTensor>,
        run: &RunNode<'_>,
        running: &mut FoldedBatchNorm,
    ) -> Result<DispatchTensor> {
        if args.len() != 3 {
            return Err(Error::InvalidGraph(format!(
                "layer `{}` with a folded BatchNorm reads {} values, not 3",
                node.name,
                args.len()
            )));
        }
        let mut plain = node.clone();
        plain.activation = None;
        let device = self.scale.device();
        args[2] = Tensor::<1>::zeros([self.scale.dims()[0]], &device).into_dispatch();
        let out = (run(&plain, args)?.into_iter().next())
            .ok_or_else(|| Error::InvalidGraph(format!("layer `{}` made no output", node.name)))?;
        let y = self.batch_norm(out, running)?;
        Ok(match node.activation {
            Some(act) => crate::ops::activation(act, y),
            None => y,
        })
    }

    /// The layer's output `[n, c, ...]`, computed with the folded weight and no bias, through
    /// BatchNorm with this batch's statistics; updates the running statistics in `running`.
    fn batch_norm(
        &self,
        out: DispatchTensor,
        running: &mut FoldedBatchNorm,
    ) -> Result<DispatchTensor> {
        let dims = out.shape().to_vec();
        let channels = self.scale.dims()[0];
        if dims.len() < 2 || dims[1] != channels {
            return Err(Error::Shape {
                context: "a layer's output before its BatchNorm".into(),
                expected: format!("[n, {channels}, ...]"),
                got: format!("{dims:?}"),
            });
        }
        let rest: usize = dims[2..].iter().product();
        let view = |t: Tensor<1>| t.reshape([1, channels, 1]);
        let y = reshaped(out, [dims[0], channels, rest]);
        let mut y = y.div(view(self.scale.clone()));
        if let Some(b) = &self.layer_bias {
            y = y.add(view(b.clone()));
        }
        let mean = y.clone().mean_dim(0).mean_dim(2);
        let centred = y.sub(mean.clone());
        let var = centred.clone().mul(centred.clone()).mean_dim(0).mean_dim(2);
        let eps = running.stats.eps;
        let normalized = centred.div(var.clone().add_scalar(eps).sqrt());
        let out = normalized
            .mul(view(self.gamma.clone()))
            .add(view(self.beta.clone()));
        update_running(running, mean, var, dims[0] * rest)?;
        Ok(Dispatch::float_reshape(
            out.into_dispatch(),
            Shape::from(dims),
        ))
    }
}

/// The running statistics after a batch of `count` values per channel with `mean` and (biased)
/// `var` (`[1, c, 1]`): PyTorch's update, with the unbiased variance.
fn update_running(
    running: &mut FoldedBatchNorm,
    mean: Tensor<3>,
    var: Tensor<3>,
    count: usize,
) -> Result<()> {
    let mean = values_of(mean.detach().flatten(0, 2))?;
    let var = values_of(var.detach().flatten(0, 2))?;
    let unbias = count as f32 / (count.max(2) - 1) as f32;
    let stats = &mut running.stats;
    for c in 0..mean.len() {
        stats.mean[c] = (1.0 - MOMENTUM) * stats.mean[c] + MOMENTUM * mean[c];
        stats.var[c] = (1.0 - MOMENTUM) * stats.var[c] + MOMENTUM * var[c] * unbias;
    }
    Ok(())
}
