//! [`prepare_qat`] and [`QatModel`]: a prepared graph trained with fake quantization, and its
//! conversion to the int8 model.

use std::collections::HashMap;
use std::sync::Arc;

use burn::backend::ops::FloatTensorOps;
use burn::backend::{Dispatch, DispatchTensor};
use burn::module::{Module, Param};
use burn::tensor::{Device, Shape, Tensor, TensorData};

use super::fake_quant::{FakeQuantize, fake_quantize};
use crate::capture::Tensors;
use crate::exec::FloatExecutor;
use crate::graph::{Graph, ValueId, ValueKind};
use crate::observe::{FrozenObserver, Observer, ObserverConfig};
use crate::prepare::{Int8Op, Placement, Plan, PreparedModel, prepare};
use crate::qconfig::{QConfig, QConfigMap};
use crate::quantized::{DebugModel, QuantizedModel, convert, convert_debug};
use crate::{Error, Result};

type B = Dispatch;

/// The trainable parameters of a [`QatModel`]: the float parameters of its prepared graph
/// (BatchNorm folded into the layers before it), flattened, in [`QatModel::parameter_ids`]
/// order. What a Burn optimizer steps and `GradientsParams::from_grads` reads.
#[derive(Module, Debug)]
pub struct QatParams {
    /// One flattened tensor per graph parameter.
    pub tensors: Vec<Param<Tensor<1>>>,
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
/// - BatchNorm is folded into the layer before it when the model is prepared: its statistics
///   are frozen from the first step (PyTorch's `freeze_bn` at step 0) and the folded weights and
///   biases are trained.
///
/// Gradients are straight-through (zero where a value was clamped). [`convert`](Self::convert)
/// gives the same kind of [`QuantizedModel`] as post-training quantization, with the trained
/// weights and the fake quantizers' parameters; [`convert_debug`](Self::convert_debug) its debug
/// model, the fake-quantized forward computed exactly (bit-identical to the int8 model).
pub struct QatModel {
    graph: Arc<Graph>,
    qconfigs: Vec<Option<QConfig>>,
    plan: Plan,
    params: QatParams,
    /// The graph value of each tensor of `params`.
    param_ids: Vec<ValueId>,
    /// The weight quantizer of the parameters that are int8 layer weights.
    weight_of: HashMap<ValueId, WeightQuant>,
    /// One per observer of the plan, in its order.
    activations: Vec<FakeQuantize>,
    /// Which fake quantizer observes each observed value.
    observer_of: HashMap<ValueId, usize>,
    executor: FloatExecutor<Arc<Graph>>,
    steps: usize,
}

impl std::fmt::Debug for QatModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QatModel")
            .field("nodes", &self.graph.nodes.len())
            .field("parameters", &self.param_ids.len())
            .field("fake_quantizers", &self.activations.len())
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
/// // qat.update(|params| optimizer.step(lr, params, grads)); later qat.freeze_observers().
/// let int8 = qat.convert()?;
/// # Ok(()) }
/// ```
pub fn prepare_qat(graph: &Graph, qconfig: &QConfigMap, device: &Device) -> Result<QatModel> {
    let prepared = prepare(graph, qconfig)?;
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
    let (param_ids, tensors) = trainable(&graph, device)?;
    Ok(QatModel {
        executor: FloatExecutor::new(graph.clone(), device)?,
        graph,
        qconfigs,
        plan,
        params: QatParams { tensors },
        param_ids,
        weight_of,
        activations,
        observer_of,
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

/// The graph's float parameters as flattened trainable tensors on `device`.
fn trainable(graph: &Graph, device: &Device) -> Result<(Vec<ValueId>, Vec<Param<Tensor<1>>>)> {
    let mut ids: Vec<ValueId> = (graph.tensors.iter())
        .filter(|(id, data)| {
            matches!(graph.value(**id).kind, ValueKind::Parameter(_)) && data.dtype().is_float()
        })
        .map(|(id, _)| *id)
        .collect();
    ids.sort();
    let tensors = (ids.iter())
        .map(|id| {
            let data = &graph.tensors[id];
            let values: Vec<f32> = data.iter::<f32>().collect();
            let n = values.len();
            let tensor = Tensor::<1>::from_data(TensorData::new(values, [n]), device);
            Ok(Param::from_tensor(tensor))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((ids, tensors))
}

impl QatModel {
    /// The trainable parameters (for `GradientsParams::from_grads`).
    pub fn params(&self) -> &QatParams {
        &self.params
    }

    /// Replaces the parameters by what `step` makes of them (an optimizer step:
    /// `qat.update(|p| optimizer.step(lr, p, grads))`).
    pub fn update(&mut self, step: impl FnOnce(QatParams) -> QatParams) {
        let params = std::mem::replace(
            &mut self.params,
            QatParams {
                tensors: Vec::new(),
            },
        );
        self.params = step(params);
    }

    /// The graph value each tensor of [`params`](Self::params) holds.
    pub fn parameter_ids(&self) -> &[ValueId] {
        &self.param_ids
    }

    /// The prepared graph it trains (BatchNorm folded, activations fused).
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
        let params = self.layer_params()?;
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
        let outputs = self
            .executor
            .run_transformed(inputs, &params, &mut |node, outputs| {
                (node.outputs.iter().zip(outputs))
                    .map(|(&v, t)| fake(v, t))
                    .collect()
            })?;
        self.steps += 1;
        O::from_dispatch(outputs)
    }

    /// The parameters in their graph shapes, int8 layer weights fake-quantized.
    fn layer_params(&self) -> Result<HashMap<ValueId, DispatchTensor>> {
        (self.param_ids.iter().zip(&self.params.tensors))
            .map(|(&id, param)| {
                let shape = self.graph.tensors[&id].shape().as_slice().to_vec();
                let t = B::float_reshape(param.val().into_dispatch(), Shape::from(shape));
                let t = match self.weight_of.get(&id) {
                    Some(weight) => weight.apply(t)?,
                    None => t,
                };
                Ok((id, t))
            })
            .collect()
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

impl QatModel {
    /// The trained model as a calibrated [`PreparedModel`]: the prepared graph with the trained
    /// parameters, whose observers hold the fake quantizers' parameters. What
    /// [`convert`](Self::convert) converts; also for the numeric suite.
    pub fn to_prepared(&self) -> Result<PreparedModel> {
        if self.steps == 0 {
            return Err(Error::Calibration(
                "the QAT model never ran: its fake quantizers observed nothing".into(),
            ));
        }
        let mut graph = (*self.graph).clone();
        for (&id, param) in self.param_ids.iter().zip(&self.params.tensors) {
            let shape = graph.tensors[&id].shape().as_slice().to_vec();
            let values = crate::ops::float_values::<f32>(&param.val().into_dispatch())?;
            graph.tensors.insert(id, TensorData::new(values, shape));
        }
        let observers = (self.activations.iter().enumerate())
            .map(|(k, fq)| {
                let observed = fq.observer().min_max().iter().all(|(lo, hi)| lo <= hi);
                if !observed && !self.plan.fixed.contains_key(&k) {
                    return Err(Error::Calibration(format!(
                        "the fake quantizer of value {} never observed data (its observer was \
                         frozen before the first forward)",
                        self.plan.observed[k].value
                    )));
                }
                Ok(Box::new(FrozenObserver::of(fq.observer())?) as Box<dyn Observer>)
            })
            .collect::<Result<Vec<_>>>()?;
        PreparedModel::calibrated_with(graph, self.qconfigs.clone(), observers)
    }

    /// The int8 model of the trained weights and the fake quantizers' parameters (PyTorch's
    /// `convert_fx` after QAT).
    pub fn convert(&self) -> Result<QuantizedModel> {
        convert(&self.to_prepared()?)
    }

    /// The debug model of [`convert`](Self::convert): the fake-quantized forward with exact
    /// integer arithmetic, bit-identical to the int8 model.
    pub fn convert_debug(&self) -> Result<DebugModel> {
        convert_debug(&self.to_prepared()?)
    }
}
