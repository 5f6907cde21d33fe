//! Quantize, dequantize, layout changes, add, requantize and cat: every available path at 1
//! and 2 threads against the documented arithmetic; bad inputs are errors.

mod kernels_common;

use burn_quantize::kernels::{
    CatInput, QParams, dequantize, dequantize_nhwc_to_nchw, qadd, qcat, quantize,
    quantize_nchw_to_nhwc, requantize_u8,
};
use kernels_common::{Rng, check_all_paths};
use proptest::prelude::*;

/// PyTorch's quantize (fbgemm AVX2 path): one fused multiply-add by the rounded reciprocal.
fn quantize_ref(x: f32, qp: QParams) -> u8 {
    let v = x.mul_add(1.0 / qp.scale, f32::from(qp.zero_point));
    if v.is_nan() {
        255
    } else {
        v.round_ties_even().clamp(0.0, 255.0) as u8
    }
}

fn dequantize_ref(q: u8, qp: QParams) -> f32 {
    qp.scale * (i32::from(q) - i32::from(qp.zero_point)) as f32
}

/// PyTorch's vectorized `qadd_kernel`.
fn add_ref(a: u8, a_qp: QParams, b: u8, b_qp: QParams, out: QParams, relu: bool) -> u8 {
    let da = a_qp
        .scale
        .mul_add(f32::from(a), a_qp.scale * -f32::from(a_qp.zero_point));
    let db = b_qp
        .scale
        .mul_add(f32::from(b), b_qp.scale * -f32::from(b_qp.zero_point));
    let c = if relu { (da + db).max(0.0) } else { da + db };
    let r = (c * (1.0 / out.scale)).round_ties_even() + f32::from(out.zero_point);
    r.clamp(0.0, 255.0) as u8
}

fn qparams() -> impl Strategy<Value = QParams> {
    (1e-3f32..0.5, any::<u8>()).prop_map(|(s, z)| QParams::new(s, z))
}

fn values(n: usize, seed: u64, spread: f32) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    let mut x: Vec<f32> = (0..n).map(|_| rng.f32(-spread, spread)).collect();
    if n > 8 {
        x[..8].copy_from_slice(&[
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            0.0,
            -0.0,
            1e30,
            -1e30,
            0.5,
        ]);
    }
    x
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn quantize_and_dequantize_follow_fbgemm(qp in qparams(), n in 0usize..3000, seed in any::<u64>()) {
        let x = values(n, seed, 300.0 * qp.scale);
        let expected: Vec<u8> = x.iter().map(|&x| quantize_ref(x, qp)).collect();
        check_all_paths("quantize", &expected, || {
            let mut q = vec![0; n];
            quantize(&x, qp, &mut q).expect("quantize");
            q
        });
        let back: Vec<f32> = expected.iter().map(|&q| dequantize_ref(q, qp)).collect();
        check_all_paths("dequantize", &back, || {
            let mut out = vec![0.0; n];
            dequantize(&expected, qp, &mut out).expect("dequantize");
            out
        });
    }

    #[test]
    fn add_follows_qadd_kernel(a_qp in qparams(), b_qp in qparams(), out_qp in qparams(),
                               relu in any::<bool>(), n in 0usize..2000, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let (a, b) = (rng.u8s(n), rng.u8s(n));
        let expected: Vec<u8> =
            a.iter().zip(&b).map(|(&a, &b)| add_ref(a, a_qp, b, b_qp, out_qp, relu)).collect();
        check_all_paths("add", &expected, || {
            let mut out = vec![0; n];
            qadd(&a, a_qp, &b, b_qp, out_qp, relu, &mut out).expect("add");
            out
        });
    }

    #[test]
    fn cat_requantizes_each_input(c in prop::collection::vec((1usize..40, qparams()), 1..4),
                                  out_qp in qparams(), pixels in 0usize..50, seed in any::<u64>()) {
        let mut rng = Rng::new(seed);
        let data: Vec<Vec<u8>> = c.iter().map(|&(ch, _)| rng.u8s(pixels * ch)).collect();
        let inputs: Vec<CatInput> = c.iter().zip(&data)
            .map(|(&(channels, qparams), data)| CatInput { data, channels, qparams })
            .collect();
        let mut expected = Vec::new();
        for p in 0..pixels {
            for input in &inputs {
                let pixel = &input.data[p * input.channels..][..input.channels];
                expected.extend(pixel.iter().map(|&q| quantize_ref(dequantize_ref(q, input.qparams), out_qp)));
            }
        }
        let total: usize = c.iter().map(|&(ch, _)| ch).sum();
        check_all_paths("cat", &expected, || {
            let mut out = vec![0; pixels * total];
            qcat(&inputs, pixels, out_qp, &mut out).expect("cat");
            out
        });
    }
}

#[test]
fn requantize_with_the_same_parameters_is_a_copy() {
    let q: Vec<u8> = (0..=255).collect();
    for qp in [
        QParams::new(0.05, 100),
        QParams::new(1e-3, 0),
        QParams::new(0.37, 255),
    ] {
        check_all_paths("identity requantize", &q, || {
            let mut out = vec![0; 256];
            requantize_u8(&q, qp, qp, &mut out).expect("requantize");
            out
        });
        let via_float: Vec<u8> = q
            .iter()
            .map(|&v| quantize_ref(dequantize_ref(v, qp), qp))
            .collect();
        assert_eq!(
            via_float, q,
            "dequantize-then-quantize is the identity for {qp:?}"
        );
    }
}

#[test]
fn layout_changes_move_values_and_quantize_like_quantize() {
    for (n, c, h, w) in [(2, 3, 4, 5), (1, 1, 7, 3), (3, 17, 2, 9)] {
        let qp = QParams::new(0.02, 40);
        let x = values(n * c * h * w, 7, 3.0);
        let (mut nhwc, mut back) = (vec![0; x.len()], vec![0.0; x.len()]);
        for i in 0..n {
            for ch in 0..c {
                for p in 0..h * w {
                    let (nchw, q) = (
                        (i * c + ch) * h * w + p,
                        &mut nhwc[(i * h * w + p) * c + ch],
                    );
                    *q = quantize_ref(x[nchw], qp);
                    back[nchw] = dequantize_ref(*q, qp);
                }
            }
        }
        check_all_paths("quantize to NHWC", &nhwc, || {
            let mut out = vec![0; x.len()];
            quantize_nchw_to_nhwc(&x, n, c, h, w, qp, &mut out).expect("to nhwc");
            out
        });
        check_all_paths("dequantize to NCHW", &back, || {
            let mut out = vec![0.0; x.len()];
            dequantize_nhwc_to_nchw(&nhwc, n, h, w, c, qp, &mut out).expect("to nchw");
            out
        });
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let qp = QParams::new(0.1, 3);
    for bad in [
        QParams::new(0.0, 0),
        QParams::new(f32::NAN, 0),
        QParams::new(-1.0, 0),
    ] {
        assert!(quantize(&[1.0], bad, &mut [0]).is_err());
        assert!(dequantize(&[1], bad, &mut [0.0]).is_err());
        assert!(qadd(&[1], bad, &[1], qp, qp, false, &mut [0]).is_err());
        assert!(requantize_u8(&[1], qp, bad, &mut [0]).is_err());
    }
    assert!(quantize(&[1.0, 2.0], qp, &mut [0]).is_err());
    assert!(dequantize(&[1, 2], qp, &mut [0.0]).is_err());
    assert!(qadd(&[1, 2], qp, &[1], qp, qp, true, &mut [0, 0]).is_err());
    assert!(requantize_u8(&[1, 2], qp, qp, &mut [0]).is_err());
    assert!(quantize_nchw_to_nhwc(&[0.0; 5], 1, 1, 2, 3, qp, &mut [0; 6]).is_err());
    assert!(dequantize_nhwc_to_nchw(&[0; 6], 1, 2, 3, 1, qp, &mut [0.0; 5]).is_err());
    let input = CatInput {
        data: &[1, 2, 3],
        channels: 2,
        qparams: qp,
    };
    assert!(qcat(&[input], 2, qp, &mut [0; 4]).is_err());
    assert!(qcat(&[], 2, qp, &mut []).is_err());
}

/// The quantize kernels report a non-finite value wherever it is (first, a later parallel
/// chunk, last), in the pass that quantizes, on every path; the bytes are PyTorch's all the
/// same.
#[test]
fn quantize_reports_non_finite_values_on_every_path() {
    use burn_quantize::kernels::{WideQParams, quantize_wide};
    let qp = QParams::new(0.05, 100);
    let len = 70_000 * 3; // several parallel chunks; [n=2, c=3, 35000] as an image
    let mut rng = Rng::new(41);
    let clean: Vec<f32> = (0..len).map(|_| rng.f32(-6.0, 6.0)).collect();
    for at in [None, Some(0), Some(len / 2 + 7), Some(len - 1)] {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = clean.clone();
            if let Some(at) = at {
                x[at] = bad;
            }
            let expected = (
                x.iter().map(|&v| quantize_ref(v, qp)).collect::<Vec<u8>>(),
                at.is_none(),
            );
            check_all_paths("quantize, finite flag", &expected, || {
                let mut out = vec![0; len];
                let finite = quantize(&x, qp, &mut out).unwrap();
                (out, finite)
            });
            check_all_paths("quantize to NHWC, finite flag", &at.is_none(), || {
                let mut out = vec![0; len];
                quantize_nchw_to_nhwc(&x, 2, 3, 35_000, 1, qp, &mut out).unwrap()
            });
            check_all_paths("wide quantize, finite flag", &at.is_none(), || {
                let mut out = vec![0u16; len];
                quantize_wide(&x, [2, 3, 35_000], WideQParams::new(1e-3, 30_000), &mut out).unwrap()
            });
        }
    }
}
