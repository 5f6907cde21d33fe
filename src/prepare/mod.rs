//! Prepare and calibrate (PyTorch's `prepare_fx` and the calibration loop).
//!
//! [`prepare`] folds BatchNorm into the layer before it, fuses ReLU/ReLU6 into conv, linear and
//! add, merges mean chains, fuses element-wise groups into pointwise nodes (tables in int8), resolves the [`QConfigMap`], decides which nodes will run in int8 ([`Plan`]) and places
//! the activation observers; [`prepare_with`] adds optional rewrites ([`PrepareOptions`]: cross-layer
//! equalization). The resulting [`PreparedModel`] runs in float like the original;
//! every run through [`PreparedModel::forward`] records what the observers see. Calibrate with
//! any closure ([`PreparedModel::calibrate`]) or over a Burn `DataLoader`
//! ([`PreparedModel::calibrate_loader`]).

mod bias_correction;
mod calibrate;
mod plan;

use std::collections::HashMap;
use std::sync::Arc;

use burn::tensor::{Device, Tensor};

use crate::capture::Tensors;
use crate::exec::FloatExecutor;
use crate::graph::{Graph, ValueId, passes};
use crate::observe::{FrozenObserver, Observer};
use crate::qconfig::{QConfig, QConfigMap};
use crate::{Error, Result};

pub use crate::program::{Int8Op, Placement};
pub(crate) use bias_correction::InputMeans;
pub use calibrate::CalibrationInput;
pub use plan::{OP_COVERAGE, ObservedValue, Plan, op_coverage_table};

/// A graph ready for calibration: folded, fused, with observers in place.
pub struct PreparedModel {
    graph: Arc<Graph>,
    qconfigs: Vec<Option<QConfig>>,
    plan: Plan,
    observers: Vec<Box<dyn Observer>>,
    /// Which observer watches each observed value.
    observer_of: HashMap<ValueId, usize>,
    /// With bias correction: the input statistics of each int8 conv and linear node, by name.
    input_means: HashMap<String, InputMeans>,
    /// The nodes in `input_means` reading each value.
    means_of: HashMap<ValueId, Vec<String>>,
    /// Whether bias correction is on ([`PrepareOptions::bias_correction`]).
    bias_correction: bool,
    /// The float interpreter for the device of the last batch.
    executor: Option<FloatExecutor<Arc<Graph>>>,
    batches: usize,
}

impl std::fmt::Debug for PreparedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedModel")
            .field("nodes", &self.graph.nodes.len())
            .field("observers", &self.observers.len())
            .field("batches", &self.batches)
            .finish()
    }
}

/// Options of [`prepare_with`]; all off by default.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct PrepareOptions {
    /// Cross-layer equalization ([`passes::equalize_layers`]): evens out the per-channel
    /// weight ranges of consecutive conv/linear layers (through a ReLU or nothing), which
    /// helps most where weights are quantized per tensor. Data-free; the float model computes
    /// the same function.
    pub equalize: bool,
    /// Empirical bias correction: calibration also records the mean input of every int8
    /// conv and linear layer, and convert subtracts from each layer's bias the mean output
    /// shift its weight rounding causes on that input (Nagel et al. 2019, section 4.2). Helps
    /// most where weights are quantized per tensor; the float model is not changed.
    pub bias_correction: bool,
}

impl PrepareOptions {
    /// With cross-layer equalization on or off.
    pub fn equalize(mut self, on: bool) -> Self {
        self.equalize = on;
        self
    }

    /// With empirical bias correction on or off.
    pub fn bias_correction(mut self, on: bool) -> Self {
        self.bias_correction = on;
        self
    }
}

/// Prepares a captured graph for quantization under `qconfig` (PyTorch's `prepare_fx`).
pub fn prepare(graph: &Graph, qconfig: &QConfigMap) -> Result<PreparedModel> {
    prepare_with(graph, qconfig, &PrepareOptions::default())
}

/// [`prepare`] with [`PrepareOptions`].
pub fn prepare_with(
    graph: &Graph,
    qconfig: &QConfigMap,
    options: &PrepareOptions,
) -> Result<PreparedModel> {
    let mut graph = graph.clone();
    passes::fold_batch_norm(&mut graph);
    prepare_folded(graph, qconfig, options)
}

/// [`prepare_with`] on a graph whose BatchNorm is folded already.
pub(crate) fn prepare_folded(
    mut graph: Graph,
    qconfig: &QConfigMap,
    options: &PrepareOptions,
) -> Result<PreparedModel> {
    passes::fuse_activations(&mut graph);
    if options.equalize {
        passes::equalize_layers(&mut graph);
    }
    passes::merge_means(&mut graph);
    passes::fuse_pointwise(&mut graph);
    passes::remove_dead_nodes(&mut graph);
    graph.validate()?;
    let qconfigs = qconfig.resolve(&graph)?;
    PreparedModel::build(Arc::new(graph), qconfigs, options.bias_correction)
}

impl PreparedModel {
    /// Plans `graph` (already prepared) under the per-node `qconfigs` and places fresh
    /// observers.
    fn build(
        graph: Arc<Graph>,
        qconfigs: Vec<Option<QConfig>>,
        bias_correction: bool,
    ) -> Result<PreparedModel> {
        let plan = plan::plan(&graph, &qconfigs);
        let observers = (plan.observed.iter())
            .map(|o| o.config.build())
            .collect::<Result<Vec<_>>>()?;
        let observer_of = (plan.observed.iter().enumerate())
            .map(|(i, o)| (o.value, i))
            .collect();
        let input_means: HashMap<String, InputMeans> = if bias_correction {
            (graph.nodes.iter().enumerate())
                .filter(|(n, _)| matches!(plan.placement[*n], Placement::Int8(_)))
                .filter_map(|(n, node)| Some((node.name.clone(), InputMeans::of(&graph, n)?)))
                .collect()
        } else {
            HashMap::new()
        };
        let mut means_of: HashMap<ValueId, Vec<String>> = HashMap::new();
        for node in (graph.nodes.iter()).filter(|n| input_means.contains_key(&n.name)) {
            means_of
                .entry(node.inputs[0])
                .or_default()
                .push(node.name.clone());
        }
        Ok(PreparedModel {
            graph,
            qconfigs,
            plan,
            observers,
            observer_of,
            input_means,
            means_of,
            bias_correction,
            executor: None,
            batches: 0,
        })
    }

    /// The same prepared graph with other per-node qconfigs (in node order), uncalibrated:
    /// what sensitivity analysis and the precision search try.
    pub fn with_qconfigs(&self, qconfigs: Vec<Option<QConfig>>) -> Result<PreparedModel> {
        if qconfigs.len() != self.graph.nodes.len() {
            return Err(Error::InvalidArgument(format!(
                "{} qconfigs for a graph of {} nodes",
                qconfigs.len(),
                self.graph.nodes.len()
            )));
        }
        PreparedModel::build(self.graph.clone(), qconfigs, self.bias_correction)
    }

    /// [`with_qconfigs`](Self::with_qconfigs), calibrated without running the model: every
    /// observer and bias-correction statistic is taken from one of `sources` (calibrated
    /// models of the same prepared graph) that observed the same value with the same config.
    /// `None` when one is in no source.
    pub fn with_qconfigs_from(
        &self,
        qconfigs: Vec<Option<QConfig>>,
        sources: &[&PreparedModel],
    ) -> Result<Option<PreparedModel>> {
        let mut variant = self.with_qconfigs(qconfigs)?;
        for (k, observed) in variant.plan.observed.iter().enumerate() {
            let source = sources.iter().find_map(|s| {
                let i = *s.observer_of.get(&observed.value)?;
                (s.batches > 0 && s.observers[i].config() == &observed.config)
                    .then(|| s.observers[i].as_ref())
            });
            let Some(source) = source else {
                return Ok(None);
            };
            variant.observers[k] = Box::new(FrozenObserver::of(source)?);
        }
        for (layer, means) in &mut variant.input_means {
            match sources.iter().find_map(|s| s.input_means.get(layer)) {
                Some(found) => *means = found.clone(),
                None => return Ok(None),
            }
        }
        variant.batches = sources.iter().map(|s| s.batches).max().unwrap_or(0);
        Ok(Some(variant))
    }
}

impl PreparedModel {
    /// A calibrated model of an already prepared `graph` (same structure as the one `qconfigs`
    /// was resolved on) whose observers are `observers`, in the order of [`Plan::observed`]
    /// and with its configs: how a model trained with fake quantization is converted.
    pub(crate) fn calibrated_with(
        graph: Graph,
        qconfigs: Vec<Option<QConfig>>,
        observers: Vec<Box<dyn Observer>>,
    ) -> Result<PreparedModel> {
        graph.validate()?;
        let mut model = PreparedModel::build(Arc::new(graph), qconfigs, false)?;
        let fits = observers.len() == model.plan.observed.len()
            && (observers.iter().zip(&model.plan.observed)).all(|(o, p)| o.config() == &p.config);
        if !fits {
            return Err(Error::InvalidArgument(format!(
                "{} observers do not fit the {} values the plan observes",
                observers.len(),
                model.plan.observed.len()
            )));
        }
        model.observers = observers;
        model.batches = 1;
        Ok(model)
    }
}

impl PreparedModel {
    /// The prepared graph (BatchNorm folded, activations fused).
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// The [`QConfig`] of every node, in node order.
    pub fn qconfigs(&self) -> &[Option<QConfig>] {
        &self.qconfigs
    }

    /// Where each node will run, and which activations are observed.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The activation observers, in the order of [`Plan::observed`].
    pub fn observers(&self) -> &[Box<dyn Observer>] {
        &self.observers
    }

    /// With bias correction on, the input statistics of int8 layer `node`.
    pub(crate) fn input_means(&self, node: &str) -> Option<&InputMeans> {
        self.input_means.get(node)
    }

    /// The device calibration ran on (where the last batch was), if a batch was run.
    pub fn calibration_device(&self) -> Option<Device> {
        self.executor.as_ref().map(|e| e.device().clone())
    }

    /// How many batches were observed so far.
    pub fn batches_observed(&self) -> usize {
        self.batches
    }

    /// Runs the float model on `input` (on the input's device) and records what the observers
    /// see: the calibration forward. Returns the model's output.
    pub fn forward<const DI: usize, const DO: usize>(
        &mut self,
        input: Tensor<DI>,
    ) -> Result<Tensor<DO>> {
        self.run(input)
    }

    /// [`forward`](Self::forward) for models of several inputs or outputs: one tensor or a
    /// tuple of tensors each ([`Tensors`]).
    pub fn run<I: Tensors, O: Tensors>(&mut self, inputs: I) -> Result<O> {
        let device = inputs.device();
        if self.executor.as_ref().is_none_or(|e| e.device() != &device) {
            self.executor = Some(FloatExecutor::new(self.graph.clone(), &device)?);
        }
        let executor = self.executor.as_ref().expect("just made");
        let inputs = inputs.into_dispatch();
        let (observers, observer_of) = (&mut self.observers, &self.observer_of);
        let (input_means, means_of) = (&mut self.input_means, &self.means_of);
        let mut record =
            |value: ValueId, tensor: &burn::backend::DispatchTensor, name: &str| -> Result<()> {
                let observer = observer_of.get(&value);
                let layers = means_of.get(&value).map_or(&[][..], Vec::as_slice);
                if observer.is_none() && layers.is_empty() {
                    return Ok(());
                }
                let shape = burn::backend::TensorMetadata::shape(tensor).to_vec();
                let values = crate::ops::float_values::<f32>(tensor.clone())?;
                if let Some(&k) = observer {
                    observers[k].observe(&values, &shape).map_err(|e| match e {
                        Error::NonFinite { context } => Error::NonFinite {
                            context: format!("{name} ({context})"),
                        },
                        other => other,
                    })?;
                }
                for layer in layers {
                    input_means
                        .get_mut(layer)
                        .expect("made with means_of")
                        .observe(&values, &shape)?;
                }
                Ok(())
            };
        for (k, (&v, input)) in self.graph.inputs.iter().zip(&inputs).enumerate() {
            let name = match k {
                0 => "the model input".to_string(),
                k => format!("model input {k}"),
            };
            record(v, input, &name)?;
        }
        let outputs = executor.run_observed(inputs, &mut |node, outputs| {
            for (&v, t) in node.outputs.iter().zip(outputs) {
                record(v, t, &format!("the output of node `{}`", node.name))?;
            }
            Ok(())
        })?;
        self.batches += 1;
        O::from_dispatch(outputs)
    }

    /// Runs `calibrate` on the prepared model (the tutorial's `calibrate(model, data_loader)`),
    /// then checks that something was observed.
    pub fn calibrate(mut self, calibrate: impl FnOnce(&mut Self) -> Result<()>) -> Result<Self> {
        calibrate(&mut self)?;
        self.check_calibrated()?;
        Ok(self)
    }

    /// An error unless at least one batch was observed.
    pub(crate) fn check_calibrated(&self) -> Result<()> {
        if self.batches == 0 {
            return Err(Error::Calibration(
                "no batch was observed: the calibration data is empty".into(),
            ));
        }
        Ok(())
    }
}
