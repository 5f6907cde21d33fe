//! Observers through the public API: configuration checks, edge cases every kind must handle,
//! and the behaviour of the clipping observers (percentile, entropy) against min-max.

use burn_quantize::Error;
use burn_quantize::observe::{Observer, ObserverConfig, ObserverKind, QDType, QParams, QScheme};

/// Every kind, as an activation observer (u8 affine), plus the two weight presets.
fn all_configs() -> Vec<ObserverConfig> {
    vec![
        ObserverConfig::min_max(false),
        ObserverConfig::moving_average_min_max(true),
        ObserverConfig::histogram(true),
        ObserverConfig::percentile(99.9, false),
        ObserverConfig::entropy(false),
        ObserverConfig::min_max_weight(),
        ObserverConfig::per_channel_symmetric_weight(),
    ]
}

fn build(config: &ObserverConfig) -> Box<dyn Observer> {
    config.build().expect("valid config")
}

/// A seeded standard normal sample (xorshift + Box-Muller), so tests need no extra crate.
fn normal(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            ((-2.0 * uniform().ln()).sqrt() * (2.0 * std::f64::consts::PI * uniform()).cos()) as f32
        })
        .collect()
}

/// The float range `[lo, hi]` the qparams represent.
fn represented(params: &QParams) -> (f32, f32) {
    let (scale, zp) = (params.scale[0], params.zero_point[0]);
    (
        scale * (params.quant_min - zp) as f32,
        scale * (params.quant_max - zp) as f32,
    )
}

fn observed(config: &ObserverConfig, batches: &[Vec<f32>]) -> QParams {
    let mut observer = build(config);
    for batch in batches {
        observer.observe(batch, &[batch.len()]).unwrap();
    }
    observer.qparams().unwrap()
}

#[test]
fn presets_match_pytorch_defaults() {
    assert_eq!(ObserverConfig::histogram(true).quant_range(), (0, 127));
    assert_eq!(ObserverConfig::histogram(false).quant_range(), (0, 255));
    assert_eq!(ObserverConfig::min_max_weight().quant_range(), (-128, 127));
    let weight = ObserverConfig::per_channel_symmetric_weight();
    assert_eq!(weight.scheme, QScheme::PerChannelSymmetric { axis: 0 });
    assert_eq!(weight.dtype, QDType::QInt8);
    assert_eq!(
        ObserverConfig::moving_average_min_max(false).kind,
        ObserverKind::MovingAverageMinMax {
            averaging_constant: 0.01
        }
    );
}

#[test]
fn configs_round_trip_through_serde() {
    for config in all_configs() {
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            serde_json::from_str::<ObserverConfig>(&json).unwrap(),
            config
        );
    }
}

#[test]
fn invalid_combinations_are_rejected() {
    let invalid = [
        ObserverConfig {
            scheme: QScheme::PerChannelAffine { axis: 0 },
            ..ObserverConfig::min_max(false)
        },
        ObserverConfig {
            scheme: QScheme::PerTensorSymmetric,
            ..ObserverConfig::per_channel_symmetric_weight()
        },
        ObserverConfig {
            scheme: QScheme::PerTensorSymmetric,
            ..ObserverConfig::histogram(true)
        },
        ObserverConfig::percentile(0.0, false),
        ObserverConfig::percentile(100.5, false),
        ObserverConfig {
            kind: ObserverKind::MovingAverageMinMax {
                averaging_constant: 0.0,
            },
            ..ObserverConfig::min_max(false)
        },
        ObserverConfig {
            kind: ObserverKind::Histogram { bins: 0 },
            ..ObserverConfig::min_max(false)
        },
        ObserverConfig {
            kind: ObserverKind::Entropy { bins: 100 },
            ..ObserverConfig::min_max(false)
        },
    ];
    for config in invalid {
        assert!(
            matches!(config.build(), Err(Error::InvalidArgument(_))),
            "{config:?}"
        );
    }
    for config in all_configs() {
        assert!(config.validate().is_ok(), "{config:?}");
    }
}

#[test]
fn every_kind_defaults_before_data_and_ignores_empty_batches() {
    for config in all_configs() {
        let mut observer = build(&config);
        observer.observe(&[], &[0, 4]).unwrap();
        let params = observer.qparams().unwrap();
        assert_eq!(
            (params.scale, params.zero_point),
            (vec![1.0], vec![0]),
            "{config:?}"
        );
        assert_eq!(observer.config(), &config);
    }
}

#[test]
fn every_kind_rejects_non_finite_values_and_bad_shapes() {
    for config in all_configs() {
        let mut observer = build(&config);
        observer.observe(&[0.5, -0.25, 1.0, 2.0], &[2, 2]).unwrap();
        let before = observer.qparams().unwrap();
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let err = observer
                .observe(&[0.0, bad, 1.0, 2.0], &[2, 2])
                .unwrap_err();
            assert!(matches!(err, Error::NonFinite { .. }), "{config:?}: {err}");
        }
        let err = observer.observe(&[0.0; 3], &[2, 2]).unwrap_err();
        assert!(matches!(err, Error::Shape { .. }), "{config:?}: {err}");
        assert_eq!(
            observer.qparams().unwrap(),
            before,
            "{config:?}: state changed by a rejected batch"
        );
    }
}

#[test]
fn all_zeros_and_constants_give_pytorchs_qparams() {
    for config in all_configs() {
        let mut observer = build(&config);
        observer.observe(&[0.0; 16], &[4, 4]).unwrap();
        let params = observer.qparams().unwrap();
        assert!(
            params.scale.iter().all(|&s| s == f32::EPSILON),
            "{config:?}: {params:?}"
        );
    }
    // A constant 3.25 on u8 affine: the range [0, 3.25], zero point 0.
    for config in [
        ObserverConfig::min_max(false),
        ObserverConfig::histogram(false),
        ObserverConfig::percentile(99.0, false),
    ] {
        let params = observed(&config, &[vec![3.25; 100], vec![3.25; 50]]);
        assert_eq!(
            (params.scale[0], params.zero_point[0]),
            (3.25 / 255.0, 0),
            "{config:?}"
        );
    }
}

#[test]
fn negative_only_input_puts_the_zero_point_at_the_top() {
    let batch: Vec<f32> = (0..1000).map(|i| -0.5 - i as f32 / 1000.0).collect();
    for config in [
        ObserverConfig::min_max(false),
        ObserverConfig::histogram(false),
    ] {
        let params = observed(&config, std::slice::from_ref(&batch));
        assert_eq!(params.zero_point, vec![255], "{config:?}");
    }
    let params = observed(&ObserverConfig::min_max(true), &[batch]);
    assert_eq!(params.zero_point, vec![127]);
}

#[test]
fn per_channel_weights_get_one_scale_per_output_channel() {
    // A [3, 2, 2] weight whose channel c spans ±(c + 1).
    let weight: Vec<f32> = (0..3)
        .flat_map(|c| {
            let m = (c + 1) as f32;
            [m, -m, 0.5 * m, 0.0]
        })
        .collect();
    let mut observer = build(&ObserverConfig::per_channel_symmetric_weight());
    observer.observe(&weight, &[3, 2, 2]).unwrap();
    let params = observer.qparams().unwrap();
    assert_eq!(params.axis, Some(0));
    assert_eq!(params.scale, vec![1.0 / 127.5, 2.0 / 127.5, 3.0 / 127.5]);
    assert_eq!(params.zero_point, vec![0, 0, 0]);
    assert_eq!(
        observer.min_max(),
        vec![(-1.0, 1.0), (-2.0, 2.0), (-3.0, 3.0)]
    );
}

#[test]
fn clipping_observers_cut_outliers_that_min_max_keeps() {
    let mut batch = normal(200_000, 7);
    batch[123] = 40.0;
    batch[4567] = -30.0;
    let batches = vec![batch];
    let (_, minmax_hi) = represented(&observed(&ObserverConfig::min_max(false), &batches));
    assert!(minmax_hi >= 40.0);
    for config in [
        ObserverConfig::percentile(99.99, false),
        ObserverConfig::entropy(false),
    ] {
        let (lo, hi) = represented(&observed(&config, &batches));
        assert!(hi < 15.0 && lo > -15.0, "{config:?}: [{lo}, {hi}]");
        assert!(
            hi > 2.0 && lo < -2.0,
            "{config:?} clips the bulk of the data: [{lo}, {hi}]"
        );
    }
}

#[test]
fn clipping_observers_stay_near_min_max_without_outliers() {
    let batches: Vec<Vec<f32>> = (0..4)
        .map(|b| {
            (0..50_000)
                .map(|i| ((i * 7 + b) % 50_000) as f32 / 49_999.0)
                .collect()
        })
        .collect();
    let (_, minmax_hi) = represented(&observed(&ObserverConfig::min_max(false), &batches));
    for config in [
        ObserverConfig::percentile(99.99, false),
        ObserverConfig::entropy(false),
    ] {
        let (lo, hi) = represented(&observed(&config, &batches));
        assert_eq!(lo, 0.0, "{config:?}");
        assert!(
            (hi - minmax_hi).abs() <= 0.01 * minmax_hi,
            "{config:?}: {hi} vs {minmax_hi}"
        );
    }
}

#[test]
fn histogram_observers_absorb_many_growing_batches_quickly() {
    let start = std::time::Instant::now();
    for config in [
        ObserverConfig::histogram(true),
        ObserverConfig::percentile(99.9, false),
        ObserverConfig::entropy(false),
    ] {
        let mut observer = build(&config);
        for b in 0..200 {
            let batch: Vec<f32> = normal(2_000, b)
                .iter()
                .map(|v| v * (1.0 + b as f32 * 0.05))
                .collect();
            observer.observe(&batch, &[batch.len()]).unwrap();
        }
        let params = observer.qparams().unwrap();
        let (lo, hi) = represented(&params);
        assert!(
            lo < -3.0 && hi > 3.0 && hi < 60.0,
            "{config:?}: [{lo}, {hi}]"
        );
    }
    assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
}
