//! PyTorch's `PerChannelMinMaxObserver`: running min and max of every channel along an axis.

use rayon::prelude::*;

use super::scan::{PARALLEL_CHUNK, check_shape, finite_min_max};
use super::{Observer, ObserverConfig, QParams};
use crate::{Error, Result};

/// Running min and max per index along the scheme's axis.
#[derive(Debug)]
pub(crate) struct PerChannelMinMaxObserver {
    config: ObserverConfig,
    axis: usize,
    /// One `(min, max)` per channel; empty before any data.
    ranges: Vec<(f32, f32)>,
}

impl PerChannelMinMaxObserver {
    pub(crate) fn new(config: ObserverConfig) -> Self {
        let axis = config.scheme.axis().expect("validated: per-channel scheme");
        PerChannelMinMaxObserver {
            config,
            axis,
            ranges: Vec::new(),
        }
    }
}

impl Observer for PerChannelMinMaxObserver {
    fn observe(&mut self, values: &[f32], shape: &[usize]) -> Result<()> {
        const CONTEXT: &str = "per-channel min-max observer";
        check_shape(values, shape, CONTEXT)?;
        let Some(&channels) = shape.get(self.axis) else {
            return Err(Error::Shape {
                context: CONTEXT.to_string(),
                expected: format!("a tensor with axis {}", self.axis),
                got: format!("shape {shape:?}"),
            });
        };
        if !self.ranges.is_empty() && channels != self.ranges.len() {
            return Err(Error::Shape {
                context: CONTEXT.to_string(),
                expected: format!("{} channels along axis {}", self.ranges.len(), self.axis),
                got: format!("shape {shape:?}"),
            });
        }
        if values.is_empty() {
            return Ok(());
        }
        let batch = channel_min_max(values, shape, self.axis)?;
        if self.ranges.is_empty() {
            self.ranges = batch;
        } else {
            for ((min, max), (batch_min, batch_max)) in self.ranges.iter_mut().zip(batch) {
                *min = batch_min.min(*min);
                *max = batch_max.max(*max);
            }
        }
        Ok(())
    }

    fn qparams(&self) -> Result<QParams> {
        QParams::from_ranges(&self.config, &self.ranges)
    }

    fn min_max(&self) -> Vec<(f32, f32)> {
        self.ranges.clone()
    }

    fn config(&self) -> &ObserverConfig {
        &self.config
    }
}

/// `torch.aminmax(x.permute(axis first).flatten(1), dim=1)`: the min and max of every channel.
/// The tensor is `outer × channels × inner` around the axis; each channel owns `outer` contiguous
/// runs of `inner` values.
fn channel_min_max(values: &[f32], shape: &[usize], axis: usize) -> Result<Vec<(f32, f32)>> {
    let channels = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let outer = values.len() / (channels * inner);
    let channel = |c: usize| -> Result<(f32, f32)> {
        (0..outer).try_fold((f32::INFINITY, f32::NEG_INFINITY), |(min, max), o| {
            let start = (o * channels + c) * inner;
            let (run_min, run_max) =
                finite_min_max(&values[start..start + inner], "per-channel observer input")?;
            Ok((run_min.min(min), run_max.max(max)))
        })
    };
    if values.len() >= 2 * PARALLEL_CHUNK {
        (0..channels).into_par_iter().map(channel).collect()
    } else {
        (0..channels).map(channel).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{ObserverKind, QDType, QScheme};

    fn per_channel(axis: usize) -> Box<dyn Observer> {
        ObserverConfig {
            kind: ObserverKind::PerChannelMinMax,
            dtype: QDType::QInt8,
            scheme: QScheme::PerChannelSymmetric { axis },
            reduce_range: false,
        }
        .build()
        .unwrap()
    }

    #[test]
    fn axis_zero_groups_leading_blocks() {
        let mut observer = per_channel(0);
        // shape [2, 3]: channel 0 = [1, -2, 3], channel 1 = [4, 5, -6]
        observer
            .observe(&[1.0, -2.0, 3.0, 4.0, 5.0, -6.0], &[2, 3])
            .unwrap();
        assert_eq!(observer.min_max(), vec![(-2.0, 3.0), (-6.0, 5.0)]);
        let params = observer.qparams().unwrap();
        assert_eq!(params.axis, Some(0));
        assert_eq!(params.scale, vec![3.0 / 127.5, 6.0 / 127.5]);
    }

    #[test]
    fn inner_axis_strides_through_the_tensor() {
        let mut observer = per_channel(1);
        // shape [2, 3, 2] (N, C, W): channel c holds x[n, c, w] for every n, w.
        let values: Vec<f32> = (0..12).map(|i| i as f32).collect();
        observer.observe(&values, &[2, 3, 2]).unwrap();
        assert_eq!(
            observer.min_max(),
            vec![(0.0, 7.0), (2.0, 9.0), (4.0, 11.0)]
        );
        observer.observe(&[-1.0; 6], &[1, 3, 2]).unwrap();
        assert_eq!(
            observer.min_max(),
            vec![(-1.0, 7.0), (-1.0, 9.0), (-1.0, 11.0)]
        );
    }

    #[test]
    fn bad_shapes_are_rejected() {
        let mut observer = per_channel(2);
        assert!(matches!(
            observer.observe(&[0.0; 4], &[2, 2]),
            Err(Error::Shape { .. })
        ));
        observer.observe(&[0.0; 8], &[2, 2, 2]).unwrap();
        assert!(matches!(
            observer.observe(&[0.0; 6], &[2, 1, 3]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            observer.observe(&[0.0; 7], &[2, 2, 2]),
            Err(Error::Shape { .. })
        ));
    }

    #[test]
    fn no_data_gives_the_default() {
        let params = per_channel(0).qparams().unwrap();
        assert_eq!((params.scale, params.zero_point), (vec![1.0], vec![0]));
    }
}
