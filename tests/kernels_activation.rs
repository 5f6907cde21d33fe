//! The float activation kernels the quantized interpreter runs itself (GELU, softmax along the
//! last axis): the same bits on every path and thread count, within a few units in the last
//! place of the exact functions (Burn's in `f64`, and `f64` `exp`), the documented answers at
//! the edges (NaN, infinities, masked positions), and errors on bad input.

mod kernels_common;

use burn::tensor::{DType, Device, Tensor, TensorData, activation};
use burn_quantize::Error;
use burn_quantize::kernels::{gelu, softmax_last_axis};
use kernels_common::{Rng, check_all_paths};

/// The bits of `values`.
fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// Burn's GELU in `f64` (libm's `erf`): the reference.
fn gelu_f64(values: &[f32]) -> Vec<f64> {
    let x: Vec<f64> = values.iter().map(|&v| f64::from(v)).collect();
    let data = TensorData::new(x, [values.len()]);
    let t = Tensor::<1>::from_data(data, (&Device::flex(), DType::F64));
    (activation::gelu(t).into_data().iter::<f64>()).collect()
}

/// GELU of `values` on the active path.
fn gelu_of(values: &[f32]) -> Vec<f32> {
    let mut out = values.to_vec();
    gelu(&mut out);
    out
}

#[test]
fn gelu_is_within_its_error_bound_and_identical_on_every_path() {
    let mut rng = Rng::new(11);
    // Past the odd buffer sizes, the kernel's chunks (65,536 values) and its ±4·√2 clamp.
    let mut values: Vec<f32> = (0..150_001).map(|_| rng.f32(-9.0, 9.0)).collect();
    values.extend((0..2_000).map(|_| rng.f32(-1e-3, 1e-3)));
    values.extend([0.0, -0.0, 5.656_854, -5.656_854, 60.0, -60.0, 1e-30]);
    let expected = gelu_of(&values);
    let runs = check_all_paths("gelu", &bits(&expected), || bits(&gelu_of(&values)));
    assert!(runs >= 2, "{runs} runs");
    let exact = gelu_f64(&values);
    let mut worst = 0f64;
    for ((&x, &got), &want) in values.iter().zip(&expected).zip(&exact) {
        // erf's absolute error in f32 (< 5e-7, near −1) scaled by x/2, and a few roundings.
        let bound = 2.5e-7 * f64::from(x.abs()) + 4.0 * f64::from(f32::EPSILON) * want.abs();
        let err = (f64::from(got) - want).abs();
        assert!(err <= bound, "gelu({x}) = {got}, exact {want}");
        worst = worst.max(err / bound);
    }
    println!("worst error / bound: {worst:.3}");
    assert!(
        worst > 0.3,
        "the bound is looser than the arithmetic: {worst}"
    );
}

#[test]
fn gelu_edges() {
    let out = gelu_of(&[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0]);
    assert!(out[0].is_nan());
    assert_eq!(out[1], f32::INFINITY);
    // 0.5·(−∞)·(1 + erf(−∞)) = −∞·0, as the exact formula (and Burn) give.
    assert!(out[2].is_nan());
    assert_eq!(out[3], 0.0);
}

/// Softmax of rows of `row_len` values in `f64` with `f64` `exp`.
fn softmax_f64(values: &[f32], row_len: usize) -> Vec<f64> {
    values
        .chunks(row_len)
        .flat_map(|row| {
            let max = row
                .iter()
                .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
            let e: Vec<f64> = row.iter().map(|&v| (f64::from(v) - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            e.into_iter().map(move |e| e / sum)
        })
        .collect()
}

/// Softmax of `values` on the active path.
fn softmax_of(values: &[f32], row_len: usize) -> Vec<f32> {
    let mut out = values.to_vec();
    softmax_last_axis(&mut out, row_len).expect("whole rows");
    out
}

#[test]
fn softmax_is_within_its_error_bound_and_identical_on_every_path() {
    let mut rng = Rng::new(12);
    let mut worst = 0f64;
    for (rows, row_len) in [(1, 1), (3, 7), (40, 128), (9, 200), (600, 17), (2, 70_000)] {
        let spread = rng.f32(0.1, 30.0);
        let offset = rng.f32(-50.0, 50.0);
        let values: Vec<f32> = (0..rows * row_len)
            .map(|_| offset + rng.f32(-spread, spread))
            .collect();
        let expected = softmax_of(&values, row_len);
        check_all_paths("softmax", &bits(&expected), || {
            bits(&softmax_of(&values, row_len))
        });
        let exact = softmax_f64(&values, row_len);
        for (i, (&got, &want)) in expected.iter().zip(&exact).enumerate() {
            // exp's relative error (< 2e-7) and the roundings of x − max, the sum and 1/sum,
            // where x − max carries the absolute rounding error of x (|x|·2^-24).
            let x_err = f64::from(values[i].abs()) * f64::from(f32::EPSILON) / 2.0;
            let bound = want * (2e-6 + 2.0 * x_err) + 1e-45;
            worst = worst.max((f64::from(got) - want).abs() / bound);
            assert!(
                (f64::from(got) - want).abs() <= bound,
                "rows {rows}×{row_len}, value {i}: {got}, exact {want}"
            );
        }
        for row in expected.chunks(row_len) {
            let sum: f64 = row.iter().map(|&v| f64::from(v)).sum();
            assert!((sum - 1.0).abs() < 1e-5, "row sum {sum}");
        }
    }
    println!("worst error / bound: {worst:.3}");
    assert!(
        worst > 0.1,
        "the bound is looser than the arithmetic: {worst}"
    );
}

#[test]
fn softmax_edges() {
    let inf = f32::INFINITY;
    // A masked position (−∞) gets exactly 0; a row of NaN or of only −∞ becomes NaN.
    let out = softmax_of(&[0.0, -inf, 0.0, -inf, 1.0, f32::NAN, -inf, -inf], 2);
    assert_eq!(&out[..2], &[1.0, 0.0]);
    assert_eq!(&out[2..4], &[1.0, 0.0]);
    assert!(out[4..].iter().all(|v| v.is_nan()), "{out:?}");
    // Far below the row's largest value, exp underflows to 0.
    let out = softmax_of(&[0.0, -90.0, -86.0], 3);
    assert_eq!(out[1], 0.0);
    assert!(out[2] > 0.0);
}

#[test]
fn softmax_rejects_partial_rows() {
    let mut values = vec![0.0; 10];
    let err = softmax_last_axis(&mut values, 3).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
    let err = softmax_last_axis(&mut values, 0).unwrap_err();
    assert!(matches!(err, Error::Shape { .. }), "{err}");
}
