//! An observer that holds what another one computed: how a calibrated model's statistics are
//! reused by a model that observes the same values the same way (precision search variants).

use super::{Observer, ObserverConfig, QParams};
use crate::{Error, Result};

/// The parameters and range of a calibrated observer, fixed.
#[derive(Debug)]
pub(crate) struct FrozenObserver {
    config: ObserverConfig,
    qparams: QParams,
    min_max: Vec<(f32, f32)>,
}

impl FrozenObserver {
    /// What `observer` has computed so far.
    pub(crate) fn of(observer: &dyn Observer) -> Result<Self> {
        Ok(FrozenObserver {
            config: observer.config().clone(),
            qparams: observer.qparams()?,
            min_max: observer.min_max(),
        })
    }
}

impl Observer for FrozenObserver {
    fn observe(&mut self, _: &[f32], _: &[usize]) -> Result<()> {
        Err(Error::Calibration(
            "this model's statistics were taken from another calibrated model; prepare it \
             again to calibrate it"
                .into(),
        ))
    }

    fn qparams(&self) -> Result<QParams> {
        Ok(self.qparams.clone())
    }

    fn min_max(&self) -> Vec<(f32, f32)> {
        self.min_max.clone()
    }

    fn config(&self) -> &ObserverConfig {
        &self.config
    }
}
