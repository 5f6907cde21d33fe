//! PyTorch's `MinMaxObserver` and `MovingAverageMinMaxObserver`.

use super::scan::{check_shape, finite_min_max};
use super::{Observer, ObserverConfig, ObserverKind, QParams};
use crate::Result;

/// Running (or moving-average) min and max of everything observed, per tensor.
#[derive(Debug)]
pub(crate) struct MinMaxObserver {
    config: ObserverConfig,
    /// `Some(c)` for the moving average with constant `c`.
    averaging_constant: Option<f32>,
    min: f32,
    max: f32,
}

impl MinMaxObserver {
    pub(crate) fn new(config: ObserverConfig) -> Self {
        let averaging_constant = match config.kind {
            ObserverKind::MovingAverageMinMax { averaging_constant } => Some(averaging_constant),
            _ => None,
        };
        MinMaxObserver {
            config,
            averaging_constant,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        }
    }
}

impl Observer for MinMaxObserver {
    fn observe(&mut self, values: &[f32], shape: &[usize]) -> Result<()> {
        check_shape(values, shape, "min-max observer")?;
        if values.is_empty() {
            return Ok(());
        }
        let (batch_min, batch_max) = finite_min_max(values, "min-max observer input")?;
        let first = self.min == f32::INFINITY && self.max == f32::NEG_INFINITY;
        (self.min, self.max) = match self.averaging_constant {
            // min_val + averaging_constant * (min_val_cur - min_val), in f32 tensor arithmetic.
            Some(c) if !first => (
                self.min + c * (batch_min - self.min),
                self.max + c * (batch_max - self.max),
            ),
            Some(_) => (batch_min, batch_max),
            None => (batch_min.min(self.min), batch_max.max(self.max)),
        };
        Ok(())
    }

    fn qparams(&self) -> Result<QParams> {
        QParams::from_ranges(&self.config, &[(self.min, self.max)])
    }

    fn min_max(&self) -> Vec<(f32, f32)> {
        vec![(self.min, self.max)]
    }

    fn config(&self) -> &ObserverConfig {
        &self.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn keeps_the_running_extremes() {
        let mut observer = ObserverConfig::min_max(false).build().unwrap();
        observer.observe(&[1.0, 2.0], &[2]).unwrap();
        observer.observe(&[-1.0, 0.5, 0.0], &[3]).unwrap();
        assert_eq!(observer.min_max(), vec![(-1.0, 2.0)]);
    }

    #[test]
    fn moving_average_follows_pytorch() {
        let mut observer = ObserverConfig::moving_average_min_max(false)
            .build()
            .unwrap();
        observer.observe(&[-1.0, 1.0], &[2]).unwrap();
        observer.observe(&[-3.0, 5.0], &[2]).unwrap();
        let c = 0.01f32;
        assert_eq!(
            observer.min_max(),
            vec![(-1.0 + c * (-3.0 - -1.0), 1.0 + c * (5.0 - 1.0))]
        );
    }

    #[test]
    fn non_finite_input_is_rejected_and_leaves_the_state() {
        let mut observer = ObserverConfig::min_max(false).build().unwrap();
        observer.observe(&[1.0], &[1]).unwrap();
        let err = observer.observe(&[0.0, f32::NAN], &[2]).unwrap_err();
        assert!(matches!(err, Error::NonFinite { .. }));
        assert_eq!(observer.min_max(), vec![(1.0, 1.0)]);
    }

    #[test]
    fn empty_batches_are_ignored() {
        let mut observer = ObserverConfig::min_max(false).build().unwrap();
        observer.observe(&[], &[0, 3]).unwrap();
        let params = observer.qparams().unwrap();
        assert_eq!((params.scale, params.zero_point), (vec![1.0], vec![0]));
    }
}
