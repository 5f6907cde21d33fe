//! `FakeQuantize`: its forward against a scalar reference of PyTorch's fake quantization, the
//! observer and fake-quant switches, and (with `--features train`, on Burn's autodiff backend)
//! straight-through gradients against finite differences of the function they stand for.

use burn::tensor::{Device, Tensor, TensorData};
use burn_quantize::observe::{ObserverConfig, QParams};
use burn_quantize::qat::FakeQuantize;

/// Values in [-3, 5], a few far outside any range observed on the first half.
fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut state = seed | 1;
    (0..n)
        .map(|k| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let v = (state >> 8) as f32 / (1u32 << 24) as f32 * 8.0 - 3.0;
            if k % 17 == 0 { v * 3.0 } else { v }
        })
        .collect()
}

/// PyTorch's `fake_quantize_per_{tensor,channel}_affine` in scalars: channel `c` of value `k`
/// is `k / per_channel % channels` along axis 0.
fn reference(x: &[f32], qp: &QParams, per_channel: usize) -> Vec<f32> {
    let channels = qp.scale.len();
    (x.iter().enumerate())
        .map(|(k, &v)| {
            let c = (k / per_channel) % channels;
            let (s, z) = (qp.scale[c], qp.zero_point[c] as f32);
            let q = ((v * (1.0 / s)).round_ties_even() + z)
                .clamp(qp.quant_min as f32, qp.quant_max as f32);
            (q - z) * s
        })
        .collect()
}

fn tensor<const D: usize>(x: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(x, shape), device)
}

fn floats<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

#[test]
fn per_tensor_fake_quantization_is_pytorchs_and_the_observer_freezes() {
    let device = Device::flex();
    let mut fq = FakeQuantize::new(&ObserverConfig::moving_average_min_max(false)).unwrap();
    let x = values(600, 3);
    let first = tensor(x[..300].to_vec(), [3, 100], &device);
    let out = floats(fq.forward(first).unwrap());
    let qp = fq.qparams().unwrap();
    assert_eq!(out, reference(&x[..300], &qp, 1));
    // Frozen: the second half (a wider range) is fake-quantized with the same parameters.
    fq.disable_observer();
    let second = tensor(x[300..].to_vec(), [3, 100], &device);
    let out = floats(fq.forward(second.clone()).unwrap());
    assert_eq!(fq.qparams().unwrap(), qp);
    assert_eq!(out, reference(&x[300..], &qp, 1));
    // Observing again moves the parameters; without fake quantization the forward is `x`.
    fq.enable_observer();
    fq.disable_fake_quant();
    assert_eq!(floats(fq.forward(second).unwrap()), x[300..].to_vec());
    assert_ne!(fq.qparams().unwrap(), qp);
}

#[test]
fn per_channel_weight_fake_quantization_is_pytorchs() {
    let device = Device::flex();
    let mut fq = FakeQuantize::new(&ObserverConfig::per_channel_symmetric_weight()).unwrap();
    let w = values(4 * 3 * 2 * 2, 5);
    let out = floats(
        fq.forward(tensor(w.clone(), [4, 3, 2, 2], &device))
            .unwrap(),
    );
    let qp = fq.qparams().unwrap();
    assert_eq!(qp.scale.len(), 4);
    assert_eq!(out, reference(&w, &qp, 12));
    // A tensor without the observed channel count is an error, not a wrong answer.
    fq.disable_observer();
    let err = fq
        .forward(tensor(w[..18].to_vec(), [3, 6], &device))
        .unwrap_err();
    assert!(matches!(err, burn_quantize::Error::Shape { .. }), "{err}");
}

#[cfg(feature = "train")]
mod gradients {
    use super::*;

    /// `Σ c·fq(x)` and its gradient with respect to `x` through the fake quantizer.
    fn loss_and_grad(fq: &mut FakeQuantize, x: &[f32], c: &[f32], shape: [usize; 2]) -> Vec<f32> {
        let device = Device::flex().autodiff();
        let leaf = tensor(x.to_vec(), shape, &device).require_grad();
        let weights = tensor(c.to_vec(), shape, &device);
        let loss = fq.forward(leaf.clone()).unwrap().mul(weights).sum();
        let grads = loss.backward();
        floats(leaf.grad(&grads).expect("a gradient for x"))
    }

    /// The straight-through estimate: `Σ c·g(x)` with `g` the identity inside the quantized
    /// range and constant outside; its finite differences, at points away from the range's
    /// ends, are what the gradient must be.
    fn finite_differences(x: &[f32], c: &[f32], qp: &QParams, per_channel: usize) -> Vec<f32> {
        let surrogate = |x: &[f32]| -> f64 {
            (x.iter().enumerate())
                .map(|(k, &v)| {
                    let ch = (k / per_channel) % qp.scale.len();
                    let (s, z) = (qp.scale[ch], qp.zero_point[ch] as f32);
                    let lo = (qp.quant_min as f32 - z - 0.5) * s;
                    let hi = (qp.quant_max as f32 - z + 0.5) * s;
                    f64::from(c[k]) * f64::from(v.clamp(lo, hi))
                })
                .sum()
        };
        let h = 1e-3f32;
        (0..x.len())
            .map(|k| {
                let (mut up, mut down) = (x.to_vec(), x.to_vec());
                up[k] += h;
                down[k] -= h;
                ((surrogate(&up) - surrogate(&down)) / (2.0 * f64::from(h))) as f32
            })
            .collect()
    }

    /// Moves values within 0.01 of a range end away from it (the surrogate's kinks).
    fn off_the_ends(x: &mut [f32], qp: &QParams, per_channel: usize) {
        for (k, v) in x.iter_mut().enumerate() {
            let ch = (k / per_channel) % qp.scale.len();
            let (s, z) = (qp.scale[ch], qp.zero_point[ch] as f32);
            for end in [
                (qp.quant_min as f32 - z - 0.5) * s,
                (qp.quant_max as f32 - z + 0.5) * s,
            ] {
                if (*v - end).abs() < 0.01 {
                    *v = end + 0.02;
                }
            }
        }
    }

    fn check(config: ObserverConfig, shape: [usize; 2], per_channel: usize) {
        let n = shape[0] * shape[1];
        let mut fq = FakeQuantize::new(&config).unwrap();
        // Observe the first values, then freeze: the rest reach past the range.
        let observed = values(n, 11).iter().map(|v| v * 0.5).collect();
        fq.forward(tensor(observed, shape, &Device::flex()))
            .unwrap();
        fq.disable_observer();
        let qp = fq.qparams().unwrap();
        let mut x = values(n, 13);
        off_the_ends(&mut x, &qp, per_channel);
        let c: Vec<f32> = (0..n).map(|k| (k % 7) as f32 - 3.0).collect();
        let grad = loss_and_grad(&mut fq, &x, &c, shape);
        let expected = finite_differences(&x, &c, &qp, per_channel);
        for (k, (g, e)) in grad.iter().zip(&expected).enumerate() {
            assert!(
                (g - e).abs() < 1e-2,
                "value {k} ({}): gradient {g}, finite differences {e}",
                x[k]
            );
        }
        assert!(grad.contains(&0.0), "some values are clamped");
        assert!(
            grad.iter().zip(&c).any(|(&g, &c)| g == c && c != 0.0),
            "some pass through"
        );
    }

    #[test]
    fn per_tensor_gradients_are_straight_through() {
        check(ObserverConfig::moving_average_min_max(false), [8, 25], 1);
    }

    #[test]
    fn per_channel_gradients_are_straight_through() {
        check(ObserverConfig::per_channel_symmetric_weight(), [6, 30], 30);
    }
}
