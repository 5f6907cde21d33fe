//! The wide kernels against plain `i64` references, exactly, on every available path.

use proptest::prelude::*;

use super::*;
use crate::kernels::{Conv2dGeometry, Isa, available_isas, with_isa};

/// The tiers' paths this CPU runs (one per wide microkernel).
fn paths() -> Vec<Isa> {
    let paths: Vec<Isa> = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni]
        .into_iter()
        .filter(|isa| available_isas().contains(isa))
        .collect();
    for isa in [Isa::Avx2, Isa::Avx512Vnni] {
        if !paths.contains(&isa) {
            eprintln!("SKIPPED: the wide {isa} kernel cannot run on this CPU");
        }
    }
    paths
}

/// A deterministic value in `0..=max` from a seed and an index.
fn value(seed: u64, i: usize, max: u32) -> u32 {
    let mut x = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    (x % (u64::from(max) + 1)) as u32
}

/// Weights of `bits` bits: all of `i8`, or `-32767..=32767`, every seventh at an extreme.
fn weights(seed: u64, len: usize, bits: u8) -> Vec<i16> {
    let max: i16 = if bits == 8 { 127 } else { 32767 };
    (0..len)
        .map(|i| match (i % 7, bits) {
            (0, 8) => -128,
            (0, _) => -max,
            (1, _) => max,
            _ => (value(seed, i, 2 * max as u32) as i32 - i32::from(max)) as i16,
        })
        .collect()
}

fn inputs<I: WideInput + TryFrom<u32>>(seed: u64, len: usize) -> Vec<I> {
    (0..len)
        .map(|i| {
            // Every seventh value at an extreme, to reach the accumulator bounds.
            let v = match i % 7 {
                0 => 0,
                1 => u32::from(I::MAX),
                _ => value(seed, i, u32::from(I::MAX)),
            };
            I::try_from(v).ok().expect("in range")
        })
        .collect()
}

/// `Σ (x − z)·w + bias` per output, requantized: the definition, in `i64`.
fn reference_conv<I: WideInput, O: WideOutput>(
    x: &[I],
    [n, h, w]: [usize; 3],
    z: u16,
    g: &Conv2dGeometry,
    weight: &[i16],
    bias: &[i32],
    requant: &RequantWide,
) -> Vec<O> {
    let (oh, ow) = g.output_size(h, w).unwrap();
    let (cin, cout) = (g.in_channels, g.out_channels);
    let (ipg, opg) = (cin / g.groups, cout / g.groups);
    let [kh, kw] = g.kernel;
    let mut out = Vec::new();
    for (b, oy, ox) in
        (0..n).flat_map(|b| (0..oh).flat_map(move |y| (0..ow).map(move |x| (b, y, x))))
    {
        for o in 0..cout {
            let mut acc = i64::from(bias[o]);
            for (c, ky, kx) in
                (0..ipg).flat_map(|c| (0..kh).flat_map(move |i| (0..kw).map(move |j| (c, i, j))))
            {
                let iy = (oy * g.stride[0] + ky * g.dilation[0]) as isize - g.padding[0] as isize;
                let ix = (ox * g.stride[1] + kx * g.dilation[1]) as isize - g.padding[1] as isize;
                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                    continue;
                }
                let ch = (o / opg) * ipg + c;
                let q = x[((b * h + iy as usize) * w + ix as usize) * cin + ch].get();
                let wt = weight[((o * ipg + c) * kh + ky) * kw + kx];
                acc += i64::from(q - i32::from(z)) * i64::from(wt);
            }
            let m = requant.multiplier(o);
            let q = requantize_wide(acc, m, requant.zero_point, requant.qmin, requant.qmax);
            out.push(O::from_clamped(q));
        }
    }
    out
}

/// Runs one random convolution on every path and compares with the reference.
fn check_conv<I: WideInput + TryFrom<u32>, O: WideOutput + PartialEq + std::fmt::Debug>(
    g: Conv2dGeometry,
    [n, h, w]: [usize; 3],
    seed: u64,
    weight_bits: u8,
) {
    let ipg = g.in_channels / g.groups;
    let len = g.out_channels * ipg * g.kernel[0] * g.kernel[1];
    let weight = weights(seed, len, weight_bits);
    let bias: Vec<i32> = (0..g.out_channels)
        .map(|i| value(seed ^ 1, i, 2_000_000) as i32 - 1_000_000)
        .collect();
    let x: Vec<I> = inputs(seed ^ 2, n * h * w * g.in_channels);
    let z = value(seed ^ 3, 0, u32::from(I::MAX)) as u16;
    let zy = value(seed ^ 4, 0, u32::from(O::MAX)) as u16;
    let m: Vec<f32> = (0..g.out_channels)
        .map(|i| 1e-5 * (1 + value(seed ^ 5, i, 1000)) as f32)
        .collect();
    let mut requant = RequantWide::new(m, zy, O::MAX);
    requant.qmin = zy.min(O::MAX / 8);
    let expected: Vec<O> = reference_conv(&x, [n, h, w], z, &g, &weight, &bias, &requant);
    let packed = PackedWideConv2d::new(g, &weight, &bias).unwrap();
    for isa in paths() {
        let mut out = vec![O::default(); expected.len()];
        with_isa(isa, || {
            qconv2d_wide(&x, [n, h, w], z, &packed, &requant, &mut out)
        })
        .unwrap()
        .unwrap();
        assert_eq!(out, expected, "{isa} {g:?} {n}x{h}x{w}");
    }
}

fn geometry(
    cin: usize,
    cout: usize,
    groups: usize,
    k: [usize; 2],
    s: [usize; 2],
    p: usize,
    d: [usize; 2],
) -> Conv2dGeometry {
    Conv2dGeometry {
        in_channels: cin,
        out_channels: cout,
        kernel: k,
        stride: s,
        padding: [p, p, p + 1, p],
        dilation: d,
        groups,
    }
}

#[test]
fn self_check_passes_on_every_tier_this_cpu_has() {
    // Called directly, not through `available_isas` (which drops a path that fails it).
    assert_eq!(self_check(Isa::Scalar), Ok(()));
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") {
            assert_eq!(self_check(Isa::Avx2), Ok(()));
        }
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
            assert_eq!(self_check(Isa::Avx512Vnni), Ok(()));
        }
    }
}

#[test]
fn long_reductions_of_extreme_values_stay_exact() {
    // K = 3·3·96 = 864 taps of 65535 against -128: past the i32 range of one block.
    let g = geometry(96, 17, 1, [3, 3], [1, 1], 1, [1, 1]);
    let weight = vec![-128i16; 17 * 96 * 9];
    let x = vec![u16::MAX; 5 * 5 * 96];
    let requant = RequantWide::new(vec![1e-9], 0, u16::MAX);
    let packed = PackedWideConv2d::new(g, &weight, &[0; 17]).unwrap();
    let expected: Vec<u16> = reference_conv(&x, [1, 5, 5], 0, &g, &weight, &[0; 17], &requant);
    // The centre output sums 864 products of 65535·(-128) = -7,247,708,160 (i32 would wrap).
    assert!(expected.iter().all(|&q| q == 0));
    let requant = RequantWide::new(vec![-1e-6], 0, u16::MAX);
    let expected: Vec<u16> = reference_conv(&x, [1, 5, 5], 0, &g, &weight, &[0; 17], &requant);
    assert_eq!(expected[2 * 5 * 17 + 2 * 17], 7248);
    for isa in paths() {
        let mut out = vec![0u16; expected.len()];
        with_isa(isa, || {
            qconv2d_wide(&x, [1, 5, 5], 0, &packed, &requant, &mut out)
        })
        .unwrap()
        .unwrap();
        assert_eq!(out, expected, "{isa}");
    }
}

#[test]
fn bad_shapes_and_parameters_are_errors() {
    let g = geometry(4, 4, 1, [3, 3], [1, 1], 1, [1, 1]);
    assert!(PackedWideConv2d::new(g, &[0; 10], &[0; 4]).is_err());
    let packed = PackedWideConv2d::new(g, &[0; 144], &[0; 4]).unwrap();
    let requant = RequantWide::new(vec![1.0], 0, 255);
    let mut out = vec![0u8; 4 * 4 * 4];
    assert!(qconv2d_wide(&[0u16; 63], [1, 4, 4], 0, &packed, &requant, &mut out).is_err());
    assert!(qconv2d_wide(&[0u8; 64], [1, 4, 4], 300, &packed, &requant, &mut out).is_err());
    let too_wide = RequantWide::new(vec![1.0], 0, 256);
    assert!(qconv2d_wide(&[0u16; 64], [1, 4, 4], 0, &packed, &too_wide, &mut out).is_err());
    let linear = PackedWide::new(1, 5, 3, &[0; 3], |_, _, _| 1).unwrap();
    assert!(qlinear_wide(&[0u16; 9], 0, &linear, &requant, &mut [0u8; 6]).is_err());
    assert!(PackedWide::new(1, 5, 3, &[0; 2], |_, _, _| 1).is_err());
    let min = PackedWide::new(1, 5, 3, &[0; 3], |_, _, _| i16::MIN).unwrap_err();
    assert!(min.to_string().contains("-32768"), "{min}");
}

#[test]
fn sixteen_bit_weights_sum_exactly_one_pair_per_block() {
    // 65535 (q − 32768 = 32767) against 32767 weights: each pair sums to 2^31 − 2^17, so
    // blocks of one pair; the centre's 864 taps reach 9.3·10^11 in i64.
    let g = geometry(96, 17, 1, [3, 3], [1, 1], 1, [1, 1]);
    let weight = vec![32767i16; 17 * 96 * 9];
    let x = vec![u16::MAX; 5 * 5 * 96];
    let requant = RequantWide::new(vec![1e-8], 0, u16::MAX);
    let packed = PackedWideConv2d::new(g, &weight, &[0; 17]).unwrap();
    let expected: Vec<u16> = reference_conv(&x, [1, 5, 5], 32768, &g, &weight, &[0; 17], &requant);
    assert_eq!(
        expected[2 * 5 * 17 + 2 * 17],
        9277,
        "864·32767² = 9.28·10^11, past i32"
    );
    for isa in paths() {
        let mut out = vec![0u16; expected.len()];
        with_isa(isa, || {
            qconv2d_wide(&x, [1, 5, 5], 32768, &packed, &requant, &mut out)
        })
        .unwrap()
        .unwrap();
        assert_eq!(out, expected, "{isa}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn wide_convolutions_match_the_reference_on_every_path(
        cin_per_group in 1usize..=40,
        cout_per_group in 1usize..=40,
        groups in 1usize..=3,
        k in (1usize..=3, 1usize..=3),
        s in (1usize..=2, 1usize..=2),
        p in 0usize..=1,
        d in (1usize..=2, 1usize..=2),
        (h, w) in (3usize..=9, 3usize..=9),
        n in 1usize..=2,
        seed in any::<u64>(),
        widths in 0usize..4,
        weight_bits in prop_oneof![Just(8u8), Just(16u8)],
    ) {
        let g = geometry(cin_per_group * groups, cout_per_group * groups, groups, [k.0, k.1], [s.0, s.1], p, [d.0, d.1]);
        prop_assume!(g.output_size(h, w).is_ok());
        match widths {
            0 => check_conv::<u16, u16>(g, [n, h, w], seed, weight_bits),
            1 => check_conv::<u16, u8>(g, [n, h, w], seed, weight_bits),
            2 => check_conv::<u8, u16>(g, [n, h, w], seed, weight_bits),
            _ => check_conv::<u8, u8>(g, [n, h, w], seed, weight_bits),
        }
    }

    #[test]
    fn wide_depthwise_convolutions_match_the_reference(
        c in 1usize..=70,
        k in 1usize..=5,
        s in 1usize..=2,
        p in 0usize..=2,
        (h, w) in (5usize..=12, 5usize..=12),
        seed in any::<u64>(),
        wide_out in any::<bool>(),
        weight_bits in prop_oneof![Just(8u8), Just(16u8)],
    ) {
        // 16-bit weights run as a grouped GEMM (their sums exceed the direct kernel's i32).
        let g = geometry(c, c, c, [k, k], [s, s], p, [1, 1]);
        if wide_out {
            check_conv::<u16, u16>(g, [2, h, w], seed, weight_bits);
        } else {
            check_conv::<u16, u8>(g, [2, h, w], seed, weight_bits);
        }
    }

    #[test]
    fn wide_linear_layers_match_the_reference(
        rows in 1usize..=70,
        k in 1usize..=700,
        n in 1usize..=50,
        seed in any::<u64>(),
        weight_bits in prop_oneof![Just(8u8), Just(16u8)],
    ) {
        // A linear layer is a 1x1 convolution over a 1-pixel-wide image of `rows` lines.
        let g = geometry(k, n, 1, [1, 1], [1, 1], 0, [1, 1]);
        let g = Conv2dGeometry { padding: [0; 4], ..g };
        let weight = weights(seed, n * k, weight_bits);
        let bias: Vec<i32> = (0..n).map(|i| value(seed, i, 1000) as i32 - 500).collect();
        let x: Vec<u16> = inputs(seed ^ 9, rows * k);
        let requant = RequantWide::new(vec![3e-6], 31000, u16::MAX);
        let expected: Vec<u16> = reference_conv(&x, [1, rows, 1], 1234, &g, &weight, &bias, &requant);
        let packed = PackedWide::new(1, k, n, &bias, |_, c, kk| weight[c * k + kk]).unwrap();
        for isa in paths() {
            let mut out = vec![0u16; rows * n];
            with_isa(isa, || qlinear_wide(&x, 1234, &packed, &requant, &mut out)).unwrap().unwrap();
            prop_assert_eq!(&out, &expected, "{}", isa);
        }
    }

    #[test]
    fn wide_requantization_rounds_the_exact_product_half_to_even(
        acc in -(1i64 << 50)..(1i64 << 50),
        halves in -(1i64 << 20)..(1i64 << 20),
        multiplier in prop_oneof![Just(0.5f32), Just(0.25f32), 1e-9f32..1e-2],
        (zero_point, qmin, qmax) in (0u16..=65535, 0u16..=65535, 0u16..=65535),
    ) {
        prop_assume!(qmin <= qmax);
        // Arbitrary products against `f64`'s own rounding of the same product, and exact ties
        // (an odd number of halves) against integer arithmetic.
        let expected = |acc: i64| {
            let v = (acc as f64 * f64::from(multiplier)).round_ties_even() + f64::from(zero_point);
            v.clamp(f64::from(qmin), f64::from(qmax)) as i64
        };
        prop_assert_eq!(requantize_wide(acc, multiplier, zero_point, qmin, qmax), expected(acc));
        prop_assert_eq!(requantize_wide(halves, 0.5, zero_point, qmin, qmax), expected_half(halves, zero_point, qmin, qmax));
    }
}

/// `halves / 2` rounded half to even, plus `zero_point`, clamped: the integer arithmetic
/// [`requantize_wide`] must agree with for a multiplier of one half.
fn expected_half(halves: i64, zero_point: u16, qmin: u16, qmax: u16) -> i64 {
    let (q, r) = (halves.div_euclid(2), halves.rem_euclid(2));
    let rounded = if r == 1 && q % 2 != 0 { q + 1 } else { q };
    (rounded + i64::from(zero_point)).clamp(i64::from(qmin), i64::from(qmax))
}
