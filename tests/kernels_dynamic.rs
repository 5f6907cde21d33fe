//! The dynamically quantized linear kernel: bit-exact against a scalar reference written from
//! the documented arithmetic (per-row 7-bit quantization, `i64` sums) on every path and thread
//! count, over random shapes and at the largest reductions; close to the float layer; and
//! clear errors on bad input.

mod kernels_common;

use burn_quantize::Error;
use burn_quantize::kernels::{MAX_DYNAMIC_IN_FEATURES, PackedDynamicLinear, qlinear_dynamic};
use kernels_common::{Rng, check_all_paths};
use proptest::prelude::*;

/// One layer and its input.
struct Case {
    rows: usize,
    k: usize,
    n: usize,
    input: Vec<f32>,
    weights: Vec<i8>,
    scales: Vec<f32>,
    bias: Vec<f32>,
}

impl Case {
    /// Random data: inputs with an offset (so zero points vary), some rows constant or zero.
    fn new(rows: usize, k: usize, n: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut input = Vec::with_capacity(rows * k);
        for r in 0..rows {
            let (offset, spread) = (rng.f32(-3.0, 3.0), rng.f32(0.01, 4.0));
            match r % 9 {
                7 => input.extend(std::iter::repeat_n(offset, k)),
                8 => input.extend(std::iter::repeat_n(0.0, k)),
                _ => input.extend((0..k).map(|_| offset + rng.f32(-spread, spread))),
            }
        }
        Case {
            rows,
            k,
            n,
            input,
            weights: rng.i8s(n * k),
            scales: (0..n).map(|_| rng.f32(1e-4, 0.05)).collect(),
            bias: (0..n).map(|_| rng.f32(-1.0, 1.0)).collect(),
        }
    }

    fn layer(&self) -> PackedDynamicLinear {
        PackedDynamicLinear::new(&self.weights, self.n, self.k, &self.scales, &self.bias)
            .expect("valid layer")
    }

    /// The kernel's output bits.
    fn run(&self, layer: &PackedDynamicLinear) -> Vec<u32> {
        let mut out = vec![0.0; self.rows * self.n];
        qlinear_dynamic(&self.input, self.rows, layer, &mut out).expect("valid run");
        out.iter().map(|v| v.to_bits()).collect()
    }

    /// The documented arithmetic, written out: per-row scale and zero point, `i64` sums.
    fn reference(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(self.rows * self.n);
        for x in self.input.chunks_exact(self.k) {
            let min = x.iter().fold(0.0f32, |m, &v| m.min(v));
            let max = x.iter().fold(0.0f32, |m, &v| m.max(v));
            let s = if max > min { (max - min) / 127.0 } else { 1.0 };
            let z = (-min / s).round_ties_even().clamp(0.0, 127.0);
            let q: Vec<i64> = x
                .iter()
                .map(|&v| v.mul_add(1.0 / s, z).round_ties_even().clamp(0.0, 255.0) as i64)
                .collect();
            assert!(q.iter().all(|&q| q <= 128), "7-bit rows reach 128 at most");
            for o in 0..self.n {
                let w = &self.weights[o * self.k..][..self.k];
                let dot: i64 = q
                    .iter()
                    .zip(w)
                    .map(|(&q, &w)| (q - z as i64) * i64::from(w))
                    .sum();
                let exact = i32::try_from(dot).expect("fits") as f32;
                out.push((exact * (s * self.scales[o]) + self.bias[o]).to_bits());
            }
        }
        out
    }

    /// The float layer `x·wᵀ·s_w + b` in `f64`.
    fn float(&self) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.rows * self.n);
        for x in self.input.chunks_exact(self.k) {
            for o in 0..self.n {
                let w = &self.weights[o * self.k..][..self.k];
                let dot: f64 = x
                    .iter()
                    .zip(w)
                    .map(|(&x, &w)| f64::from(x) * f64::from(w))
                    .sum();
                out.push(dot * f64::from(self.scales[o]) + f64::from(self.bias[o]));
            }
        }
        out
    }
}

fn check_exact(case: &Case) {
    let (layer, expected) = (case.layer(), case.reference());
    let what = format!(
        "dynamic linear rows={} k={} n={}",
        case.rows, case.k, case.n
    );
    check_all_paths(&what, &expected, || case.run(&layer));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn dynamic_linear_is_exact_on_random_shapes(
        rows in 0usize..=40,
        k in 1usize..=300,
        n in 1usize..=150,
        seed in any::<u64>(),
    ) {
        check_exact(&Case::new(rows, k, n, seed));
    }
}

#[test]
fn dynamic_linear_is_exact_at_large_reductions_and_extreme_weights() {
    for (rows, k, n) in [(9, 4096, 33), (3, MAX_DYNAMIC_IN_FEATURES, 5)] {
        let mut case = Case::new(rows, k, n, k as u64);
        // Every weight at an extreme and every input at a bound: the largest sums.
        for (i, w) in case.weights.iter_mut().enumerate() {
            *w = if i % 3 == 0 { i8::MAX } else { i8::MIN };
        }
        for (i, x) in case.input.iter_mut().enumerate() {
            *x = if (i / k) % 2 == 0 {
                5.0
            } else {
                -5.0 + (i % 2) as f32
            };
        }
        check_exact(&case);
    }
}

#[test]
fn dynamic_linear_is_close_to_the_float_layer() {
    let case = Case::new(64, 768, 96, 7);
    let out: Vec<f64> = case
        .run(&case.layer())
        .iter()
        .map(|&b| f64::from(f32::from_bits(b)))
        .collect();
    let float = case.float();
    let signal: f64 = float.iter().map(|v| v * v).sum();
    let noise: f64 = float.iter().zip(&out).map(|(f, q)| (f - q).powi(2)).sum();
    let sqnr = 10.0 * (signal / noise).log10();
    assert!(sqnr > 38.0, "SQNR {sqnr:.2} dB");
}

#[test]
fn dynamic_linear_rejects_bad_input() {
    let case = Case::new(2, 8, 3, 1);
    let layer = case.layer();
    let mut out = vec![0.0; 6];
    let short = qlinear_dynamic(&case.input[..15], 2, &layer, &mut out);
    assert!(matches!(short, Err(Error::Shape { .. })), "{short:?}");
    let wrong_out = qlinear_dynamic(&case.input, 2, &layer, &mut out[..5]);
    assert!(
        matches!(wrong_out, Err(Error::Shape { .. })),
        "{wrong_out:?}"
    );
    for bad in [f32::NAN, f32::INFINITY] {
        let mut input = case.input.clone();
        input[5] = bad;
        let got = qlinear_dynamic(&input, 2, &layer, &mut out);
        assert!(
            matches!(got, Err(Error::NonFinite { .. })),
            "{bad}: {got:?}"
        );
    }
    let new = |w: &[i8], n, k, s: &[f32], b: &[f32]| PackedDynamicLinear::new(w, n, k, s, b);
    let (w, s, b) = (&case.weights, &case.scales, &case.bias);
    assert!(matches!(
        new(w, 3, 8, &[0.1, 0.0, 0.1], b),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        new(w, 3, 8, &[0.1, f32::NAN, 0.1], b),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        new(w, 3, 8, s, &[0.0, f32::INFINITY, 0.0]),
        Err(Error::NonFinite { .. })
    ));
    assert!(matches!(new(w, 3, 7, s, b), Err(Error::Shape { .. })));
    assert!(matches!(
        new(&[], 0, 8, &[], &[]),
        Err(Error::InvalidArgument(_))
    ));
    let huge = MAX_DYNAMIC_IN_FEATURES + 1;
    assert!(matches!(
        new(&vec![0; huge], 1, huge, &[0.1], &[0.0]),
        Err(Error::InvalidArgument(_))
    ));
}
