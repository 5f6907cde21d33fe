//! [`prepare_qat`] and [`QatModel`]: a prepared graph trained with fake quantization, and its
//! conversion to the int8 model.

use std::collections::HashMap;
use std::sync::Arc;

use burn::backend::ops::FloatTensorOps;
use burn::backend::{Dispatch, DispatchTensor};
use burn::module::{Module, Param};
use burn::tensor::{Device, Shape, Tensor};

use super::batch_norm::{FoldedTensors, QatBatchNorm};
use super::fake_quant::{FakeQuantize, fake_quantize};
use super::flat_param;
use crate::capture::Tensors;
use crate::exec::FloatExecutor;
use crate::graph::passes::{FoldedBatchNorm, fold_batch_norm_recorded};
use crate::graph::{Graph, ValueId, ValueKind};
use crate::observe::ObserverConfig;
use crate::prepare::{Int8Op, Placement, Plan, PrepareOptions, prepare_folded};
use crate::qconfig::{QConfig, QConfigMap};
use crate::{Error, Result};

type B = Dispatch;

/// The trainable parameters of a [`QatModel`]: what a Burn optimizer steps and
/// `GradientsParams::from_grads` reads.
#[derive(Module, Debug)]
pub struct QatParams {
    /// The float parameters of the prepared graph, flattened, in
    /// [`QatModel::parameter_ids`] order (all but the layers followed by a BatchNorm).
    pub tensors: Vec<Param<Tensor<1>>>,
    /// The layers followed by a BatchNorm, with its scale and shift, in the order of
    /// [`QatModel::batch_norm_layers`].
    pub batch_norms: Vec<QatBatchNorm>,
}

/// A model prepared for quantization-aware training (PyTorch's `prepare_qat_fx` result): the
/// prepared graph run in float on an autodiff device, with a [`FakeQuantize`] on every value
/// the int8 model will quantize and on the weights of every int8 conv and linear layer.
///
/// - Activations: one fake quantizer per observer of the [`Plan`] (the qconfig's activation
///   observer, which keeps updating until [`freeze_observers`](Self::freeze_observers); use
///   [`QConfig::qat_preset`] for PyTorch's moving-average default), also applied without
///   observing to the outputs of ops that share their input's parameters (pools, reshape), as
///   the int8 model rounds them. Sigmoid and tanh outputs use their fixed parameters.
/// - Weights: per output channel with the qconfig's weight observer on the current weights
///   at every step, so the scales `convert` computes from the trained weights are the ones
///   the last forward used. Biases stay float (the int8 model quantizes them with the input
///   and weight scales, as PyTorch).
/// - BatchNorm after a conv or linear layer trains as in PyTorch's `ConvBn2d`: the weight
///   fake-quantized folded with the running statistics, the output normalized with the batch's
///   statistics, which update the running ones, until [`freeze_bn`](Self::freeze_bn); from
///   then on the layer runs folded with the running statistics, as `convert` folds it.
///
/// Gradients are straight-through (zero where a value was clamped). [`convert`](Self::convert)
/// gives the same kind of [`QuantizedModel`](crate::quantized::QuantizedModel) as post-training
/// quantization, with the trained weights and the fake quantizers' parameters;
/// [`convert_debug`](Self::convert_debug) its debug model, the fake-quantized forward computed
/// exactly (bit-identical to the int8 model).
pub struct QatModel {
    pub(super) graph: Arc<Graph>,
    pub(super) qconfigs: Vec<Option<QConfig>>,
    pub(super) plan: Plan,
    pub(super) params: QatParams,
    /// The graph value of each tensor of `params`.
    pub(super) param_ids: Vec<ValueId>,
    /// The weight quantizer of the parameters that are int8 layer weights.
    weight_of: HashMap<ValueId, WeightQuant>,
    /// One per observer of the plan, in its order.
    pub(super) activations: Vec<FakeQuantize>,
    /// The BatchNorms folded into layers, with their running statistics (as `params`).
    pub(super) batch_norms: Vec<FoldedBatchNorm>,
    /// Which of `batch_norms` a layer reading this folded weight has.
    batch_norm_of: HashMap<ValueId, usize>,
    /// Whether BatchNorm uses (and no longer updates) its running statistics.
    bn_frozen: bool,
    /// Which fake quantizer observes each observed value.
    observer_of: HashMap<ValueId, usize>,
    executor: FloatExecutor<Arc<Graph>>,
    pub(super) steps: usize,
}

impl std::fmt::Debug for QatModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QatModel")
            .field("nodes", &self.graph.nodes.len())
            .field("parameters", &self.param_ids.len())
            .field("fake_quantizers", &self.activations.len())
            .field("batch_norms", &self.batch_norms.len())
            .field("bn_frozen", &self.bn_frozen)
            .field("steps", &self.steps)
            .finish()
    }
}

/// How an int8 layer's weight is fake-quantized.
#[derive(Clone, Debug)]
struct WeightQuant {
    config: ObserverConfig,
    /// A linear weight is stored `[in, out]`; its channels are the outputs.
    transposed: bool,
}

/// Prepares `graph` for quantization-aware training under `qconfig` (PyTorch's
/// `prepare_qat_fx`), with its parameters on `device` (an autodiff device, e.g.
/// `Device::flex().autodiff()`, to train it).
///
/// ```no_run
/// use burn::prelude::*;
/// use burn_quantize::models::fashion::FashionNet;
/// use burn_quantize::qat::prepare_qat;
/// use burn_quantize::qconfig::{Engine, QConfig, QConfigMap};
/// use burn_quantize::Graph;
///
/// # fn run(model: FashionNet, images: Tensor<4>) -> burn_quantize::Result<()> {
/// let device = Device::flex(); // to train: Device::flex().autodiff() (the `train` feature)
/// let graph = Graph::capture(&model, &images)?;
/// let qconfig = QConfigMap::global(QConfig::qat_preset(Engine::X86)); // get_default_qat_qconfig
/// let mut qat = prepare_qat(&graph, &qconfig, &device)?;
/// let logits: Tensor<2> = qat.forward(images.to_device(&device))?;
/// // With the `train` feature: loss.backward(), GradientsParams::from_grads(grads, qat.params()),
/// // qat.update(|params| optimizer.step(lr, params, grads))?; later qat.freeze_bn() and
/// // qat.freeze_observers().
/// let int8 = qat.convert()?;
/// # Ok(()) }
/// ```
pub fn prepare_qat(graph: &Graph, qconfig: &QConfigMap, device: &Device) -> Result<QatModel> {
    let mut graph = graph.clone();
    let folded = fold_batch_norm_recorded(&mut graph);
    let prepared = prepare_folded(graph, qconfig, &PrepareOptions::default())?;
    let graph = Arc::new(prepared.graph().clone());
    let plan = prepared.plan().clone();
    let qconfigs = prepared.qconfigs().to_vec();
    let activations = (plan.observed.iter().enumerate())
        .map(|(k, o)| match plan.fixed.get(&k) {
            Some(&(scale, zero_point)) => FakeQuantize::fixed(&o.config, scale, zero_point),
            None => FakeQuantize::new(&o.config),
        })
        .collect::<Result<Vec<_>>>()?;
    let observer_of = (plan.observed.iter().enumerate())
        .map(|(k, o)| (o.value, k))
        .collect();
    let weight_of = int8_weights(&graph, &plan, &qconfigs);
    // Folds whose layer is still in the graph (all, unless a later pass removed a dead one).
    let batch_norms: Vec<FoldedBatchNorm> = (folded.into_iter())
        .filter(|f| {
            graph
                .nodes
                .iter()
                .any(|n| n.inputs.get(1) == Some(&f.folded_weight))
        })
        .collect();
    let batch_norm_of = (batch_norms.iter().enumerate())
        .map(|(j, f)| (f.folded_weight, j))
        .collect();
    let folded_ids: Vec<ValueId> = (batch_norms.iter())
        .flat_map(|f| [f.folded_weight, f.folded_bias])
        .collect();
    let (param_ids, tensors) = trainable(&graph, &folded_ids, device);
    let params = QatParams {
        tensors,
        batch_norms: (batch_norms.iter())
            .map(|f| QatBatchNorm::new(f, device))
            .collect(),
    };
    Ok(QatModel {
        executor: FloatExecutor::new(graph.clone(), device)?,
        graph,
        qconfigs,
        plan,
        params,
        param_ids,
        weight_of,
        activations,
        observer_of,
        batch_norms,
        batch_norm_of,
        bn_frozen: false,
        steps: 0,
    })
}

/// The weight quantizer of every int8 conv and linear layer's weight.
fn int8_weights(
    graph: &Graph,
    plan: &Plan,
    qconfigs: &[Option<QConfig>],
) -> HashMap<ValueId, WeightQuant> {
    (graph.nodes.iter().zip(&plan.placement).zip(qconfigs))
        .filter_map(|((node, placement), qconfig)| {
            let transposed = match placement {
                Placement::Int8(Int8Op::Conv2d) => false,
                Placement::Int8(Int8Op::Linear) => true,
                _ => return None,
            };
            let config = qconfig.as_ref()?.weight.clone();
            Some((node.inputs[1], WeightQuant { config, transposed }))
        })
        .collect()
}

/// The graph's float parameters but `folded` as flattened trainable tensors on `device`.
fn trainable(
    graph: &Graph,
    folded: &[ValueId],
    device: &Device,
) -> (Vec<ValueId>, Vec<Param<Tensor<1>>>) {
    let mut ids: Vec<ValueId> = (graph.tensors.iter())
        .filter(|(id, data)| {
            matches!(graph.value(**id).kind, ValueKind::Parameter(_))
                && data.dtype().is_float()
                && !folded.contains(id)
        })
        .map(|(id, _)| *id)
        .collect();
    ids.sort();
    let tensors = (ids.iter())
        .map(|id| flat_param(&graph.tensors[id].iter::<f32>().collect::<Vec<_>>(), device))
        .collect();
    (ids, tensors)
}

impl QatModel {
    /// The trainable parameters (for `GradientsParams::from_grads`).
    pub fn params(&self) -> &QatParams {
        &self.params
    }

    /// Replaces the parameters by what `step` makes of them (an optimizer step:
    /// `qat.update(|p| optimizer.step(lr, p, grads))?`). Parameters of other shapes are an
    /// error, and the model keeps its own.
    pub fn update(&mut self, step: impl FnOnce(QatParams) -> QatParams) -> Result<()> {
        let updated = step(self.params.clone());
        let shapes = |p: &QatParams| -> Vec<Vec<usize>> {
            let mut shapes: Vec<Vec<usize>> = p.tensors.iter().map(|t| t.dims().to_vec()).collect();
            for bn in &p.batch_norms {
                shapes.push(bn.weight.dims().to_vec());
                shapes.push(bn.gamma.dims().to_vec());
                shapes.push(bn.beta.dims().to_vec());
                shapes.extend(bn.bias.iter().map(|b| b.dims().to_vec()));
            }
            shapes
        };
        if shapes(&updated) != shapes(&self.params) {
            return Err(Error::InvalidArgument(
                "the updated QAT parameters do not have the model's shapes".into(),
            ));
        }
        self.params = updated;
        Ok(())
    }

    /// The graph value each tensor of [`params`](Self::params) holds.
    pub fn parameter_ids(&self) -> &[ValueId] {
        &self.param_ids
    }

    /// The layers followed by a BatchNorm, by the folded weight value they read in the
    /// prepared graph, in the order of [`QatParams::batch_norms`].
    pub fn batch_norm_layers(&self) -> Vec<ValueId> {
        self.batch_norms.iter().map(|f| f.folded_weight).collect()
    }

    /// Each BatchNorm's name (its module path) and running mean and variance, in the order of
    /// [`QatParams::batch_norms`].
    pub fn batch_norm_statistics(&self) -> Vec<(&str, &[f32], &[f32])> {
        (self.batch_norms.iter())
            .map(|f| (f.name.as_str(), &f.stats.mean[..], &f.stats.var[..]))
            .collect()
    }

    /// Stops updating BatchNorm's running statistics and uses them from now on (PyTorch's
    /// `freeze_bn_stats`, usually after some epochs): each layer then runs folded, as
    /// `convert` folds it.
    pub fn freeze_bn(&mut self) {
        self.bn_frozen = true;
    }

    /// Normalizes with batch statistics and updates the running ones again.
    pub fn unfreeze_bn(&mut self) {
        self.bn_frozen = false;
    }

    /// The prepared graph it trains (activations fused; a layer followed by a BatchNorm reads
    /// the folded weight and bias, which the model computes at every step).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Where each node will run, and which activations are fake-quantized.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The activation fake quantizers, in the order of [`Plan::observed`].
    pub fn fake_quantizers(&self) -> &[FakeQuantize] {
        &self.activations
    }

    /// How many forwards ran.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// Stops updating every activation's quantization parameters (PyTorch's
    /// `model.apply(torch.ao.quantization.disable_observer)`, usually after some epochs).
    pub fn freeze_observers(&mut self) {
        self.activations
            .iter_mut()
            .for_each(FakeQuantize::disable_observer);
    }

    /// Updates the activations' quantization parameters on every forward again.
    pub fn unfreeze_observers(&mut self) {
        self.activations
            .iter_mut()
            .for_each(FakeQuantize::enable_observer);
    }
}

impl QatModel {
    /// The fake-quantized forward on one input of rank `DI` (on the model's device), giving its
    /// one output of rank `DO`; observers that are not frozen update.
    pub fn forward<const DI: usize, const DO: usize>(
        &mut self,
        input: Tensor<DI>,
    ) -> Result<Tensor<DO>> {
        self.run(input)
    }

    /// [`forward`](Self::forward) for models of several inputs or outputs.
    pub fn run<I: Tensors, O: Tensors>(&mut self, inputs: I) -> Result<O> {
        if &inputs.device() != self.executor.device() {
            return Err(Error::InvalidArgument(format!(
                "the input is on {:?}, the model on {:?}",
                inputs.device(),
                self.executor.device()
            )));
        }
        let (params, folded) = self.layer_params()?;
        let graph = &self.graph;
        let (activations, observer_of) = (&mut self.activations, &self.observer_of);
        let qparams_of = &self.plan.qparams_of;
        let mut fake = |value: ValueId, t: DispatchTensor| -> Result<DispatchTensor> {
            if let Some(&k) = observer_of.get(&value) {
                activations[k].forward_dispatch(t)
            } else if let Some(&k) = qparams_of.get(&value) {
                fake_quantize(t, &activations[k].qparams()?)
            } else {
                Ok(t)
            }
        };
        let inputs = (graph.inputs.iter().zip(inputs.into_dispatch()))
            .map(|(&v, t)| fake(v, t))
            .collect::<Result<Vec<_>>>()?;
        let (batch_norms, batch_norm_of) = (&mut self.batch_norms, &self.batch_norm_of);
        let batch_statistics = !self.bn_frozen;
        let outputs = self
            .executor
            .run_transformed(inputs, &params, &mut |node, args, run| {
                let bn = (node.inputs.get(1))
                    .and_then(|w| batch_norm_of.get(w))
                    .filter(|_| batch_statistics);
                let outputs = match bn {
                    Some(&j) => vec![folded[j].run_with_batch_statistics(
                        node,
                        args,
                        run,
                        &mut batch_norms[j],
                    )?],
                    None => run(node, args)?,
                };
                (node.outputs.iter().zip(outputs))
                    .map(|(&v, t)| fake(v, t))
                    .collect()
            })?;
        self.steps += 1;
        O::from_dispatch(outputs)
    }

    /// The parameters in their graph shapes (layers with a BatchNorm folded with its running
    /// statistics), int8 layer weights fake-quantized; and each BatchNorm layer's tensors.
    fn layer_params(&self) -> Result<(HashMap<ValueId, DispatchTensor>, Vec<FoldedTensors>)> {
        let quantized = |id: ValueId, t: DispatchTensor| match self.weight_of.get(&id) {
            Some(weight) => weight.apply(t),
            None => Ok(t),
        };
        let mut params = (self.param_ids.iter().zip(&self.params.tensors))
            .map(|(&id, param)| {
                let shape = self.graph.tensors[&id].shape().as_slice().to_vec();
                let t = B::float_reshape(param.val().into_dispatch(), Shape::from(shape));
                Ok((id, quantized(id, t)?))
            })
            .collect::<Result<HashMap<_, _>>>()?;
        let mut folded = Vec::new();
        for (running, trained) in self.batch_norms.iter().zip(&self.params.batch_norms) {
            let tensors = trained.tensors(running);
            let weight = quantized(running.folded_weight, tensors.weight.clone())?;
            params.insert(running.folded_weight, weight);
            params.insert(running.folded_bias, tensors.bias.clone());
            folded.push(tensors);
        }
        Ok((params, folded))
    }
}

impl WeightQuant {
    /// `weight` fake-quantized per output channel with parameters observed on it now.
    fn apply(&self, weight: DispatchTensor) -> Result<DispatchTensor> {
        let mut fq = FakeQuantize::new(&self.config)?;
        if self.transposed {
            let out_in = fq.forward_dispatch(B::float_swap_dims(weight, 0, 1))?;
            Ok(B::float_swap_dims(out_in, 0, 1))
        } else {
            fq.forward_dispatch(weight)
        }
    }
}
