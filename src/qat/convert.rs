//! Converting a trained [`QatModel`]: its trained parameters (BatchNorm folded with the running
//! statistics) and its fake quantizers' parameters, as a calibrated [`PreparedModel`].

use burn::tensor::TensorData;

use super::{QatModel, values_of};
use crate::observe::{FrozenObserver, Observer};
use crate::prepare::PreparedModel;
use crate::quantized::{DebugModel, QuantizedModel, convert, convert_debug};
use crate::{Error, Result};

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
            let values = values_of(param.val())?;
            graph.tensors.insert(id, TensorData::new(values, shape));
        }
        for (running, trained) in self.batch_norms.iter().zip(&self.params.batch_norms) {
            let (weight, bias) = trained.folded(running)?;
            let channels = bias.len();
            let shape = running.weight.1.clone();
            (graph.tensors).insert(running.folded_weight, TensorData::new(weight, shape));
            (graph.tensors).insert(running.folded_bias, TensorData::new(bias, [channels]));
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
