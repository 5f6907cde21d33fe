//! Conv2d and linear: every available path at 1 and 2 threads against naive `i64` references,
//! over random shapes (proptest) and fixed edge cases; bad inputs are errors.

mod kernels_common;

use burn_quantize::Error;
use burn_quantize::kernels::{
    Conv2dGeometry, PackedConv2d, PackedLinear, Requant, qconv2d, qconv2d_prepared, qlinear,
    qlinear_prepared,
};
use kernels_common::{Rng, check_all_paths, geometry};
use proptest::prelude::*;

/// A conv problem with its data.
#[derive(Debug, Clone)]
struct ConvCase {
    batch: usize,
    h: usize,
    w: usize,
    geometry: Conv2dGeometry,
    zx: u8,
    zy: u8,
    per_channel: bool,
    clamp: u8,
    seed: u64,
    /// The largest input byte: 255, or 127 for 7-bit activations (PyTorch's `reduce_range`,
    /// which AVX2 runs on a faster kernel when the zero point is ≤ 127 too).
    input_max: u8,
}

impl ConvCase {
    /// The same case on 7-bit input data and zero point.
    fn seven_bit(self) -> Self {
        ConvCase {
            input_max: 127,
            zx: self.zx % 128,
            ..self
        }
    }

    fn run(&self) {
        let g = &self.geometry;
        let mut rng = Rng::new(self.seed);
        let input = rng.u8s_up_to(self.batch * self.h * self.w * g.in_channels, self.input_max);
        let weights =
            rng.i8s(g.out_channels * g.in_channels / g.groups * g.kernel[0] * g.kernel[1]);
        let bias: Vec<i32> = (0..g.out_channels)
            .map(|_| rng.range(-5000, 5000) as i32)
            .collect();
        let channels = if self.per_channel { g.out_channels } else { 1 };
        let multipliers = (0..channels)
            .map(|_| 10f32.powf(rng.f32(-4.5, -2.0)))
            .collect();
        let mut requant = Requant::new(multipliers, self.zy);
        requant = match self.clamp {
            0 => requant,
            1 => requant.with_relu(),
            _ => requant.with_relu6(0.05),
        };
        let expected = kernels_common::conv2d(
            &input,
            [self.batch, self.h, self.w],
            g,
            &weights,
            &bias,
            self.zx,
            &requant,
        );
        let packed = PackedConv2d::new(*g, &weights, &bias, self.zx).expect("valid conv");
        let (oh, ow) = packed.output_size(self.h, self.w).expect("output size");
        check_all_paths(&format!("{self:?}"), &expected, || {
            let mut out = vec![0; self.batch * oh * ow * g.out_channels];
            qconv2d(
                &input, self.batch, self.h, self.w, &packed, &requant, &mut out,
            )
            .expect("conv");
            out
        });
    }
}

/// Geometry: kind 0 = dense, 1 = grouped, 2 = depthwise (channel multiplier 1 or 2).
fn conv_case() -> impl Strategy<Value = ConvCase> {
    (
        (0u8..3, channels(), 1usize..10, 2usize..4),
        (
            prop::sample::select(vec![1usize, 2, 3, 5, 7]),
            prop::sample::select(vec![1usize, 3, 5, 7]),
        ),
        (1usize..3, 1usize..3, 1usize..3, 1usize..3),
        (0usize..4, 0usize..4, 0usize..4, 0usize..4),
        (0usize..9, 0usize..9, 1usize..3),
        (
            prop_oneof![Just(0u8), any::<u8>()],
            any::<u8>(),
            any::<bool>(),
            0u8..3,
            any::<u64>(),
        ),
        prop_oneof![Just(255u8), Just(127u8)],
    )
        .prop_map(
            |(
                kind,
                (kh, kw),
                (sh, sw, dh, dw),
                pads,
                (eh, ew, batch),
                (zx, zy, pc, clamp, seed),
                input_max,
            )| {
                let (cin_g, cout_g, groups) = kind_channels(kind);
                let (pt, pl, pb, pr) = pads;
                let h = eh + (dh * (kh - 1) + 1).saturating_sub(pt + pb).max(1);
                let w = ew + (dw * (kw - 1) + 1).saturating_sub(pl + pr).max(1);
                let geometry = Conv2dGeometry {
                    in_channels: cin_g * groups,
                    out_channels: cout_g * groups,
                    kernel: [kh, kw],
                    stride: [sh, sw],
                    padding: [pt, pl, pb, pr],
                    dilation: [dh, dw],
                    groups,
                };
                ConvCase {
                    batch,
                    h,
                    w,
                    geometry,
                    zx,
                    zy,
                    per_channel: pc,
                    clamp,
                    seed,
                    input_max,
                }
            },
        )
}

/// Channels per group: small counts (im2col), multiples of 4 from 16 up (read in place, tap
/// by tap, by the kernels that take row pointers) and multiples of 64 (read in place by AMX's
/// strided tile loads too).
fn channels() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 1usize..10, 1 => prop::sample::select(vec![16usize, 20, 36, 64, 128])]
}

fn kind_channels((kind, a, b, groups): (u8, usize, usize, usize)) -> (usize, usize, usize) {
    match kind {
        0 => (a, b, 1),
        1 => (a, b, groups),
        _ => (1, 1 + b % 2, a + 1),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_convs_match_the_naive_reference(case in conv_case()) {
        case.run();
    }
}

fn case(batch: usize, hw: usize, geometry: Conv2dGeometry, seed: u64) -> ConvCase {
    ConvCase {
        batch,
        h: hw,
        w: hw,
        geometry,
        zx: 117,
        zy: 3,
        per_channel: true,
        clamp: 1,
        seed,
        input_max: 255,
    }
}

#[test]
fn pointwise_convs_read_the_input_in_place() {
    for (cin, cout, stride) in [(8, 16, 1), (16, 70, 2), (64, 128, 1), (12, 5, 2), (7, 9, 1)] {
        case(2, 9, geometry(cin, cout, 1, stride, 0, 1), cin as u64).run();
        case(2, 9, geometry(cin, cout, 1, stride, 0, 1), cin as u64)
            .seven_bit()
            .run();
    }
}

#[test]
fn resnet_like_blocks_cross_panels_and_row_blocks() {
    for case in [
        case(1, 14, geometry(64, 64, 3, 1, 1, 1), 1),
        case(2, 9, geometry(64, 130, 3, 2, 1, 1), 2),
        case(1, 6, geometry(256, 33, 3, 1, 1, 1), 3),
        case(1, 23, geometry(3, 64, 7, 2, 3, 1), 4),
    ] {
        case.clone().run();
        case.seven_bit().run();
    }
}

/// Channels a multiple of 64: AMX loads 16 pixels of a tap with one strided tile load where
/// they are evenly spaced (inside one output row, none on padding) and copies the other
/// groups of 16 (crossing a row or the batch, touching padding, past the last pixel).
#[test]
fn amx_tile_groups_read_pixels_in_place_or_copied() {
    let dilated = |mut g: Conv2dGeometry| {
        g.dilation = [2, 2];
        g
    };
    case(2, 16, geometry(64, 40, 1, 1, 0, 1), 11).run();
    case(1, 33, geometry(128, 64, 1, 2, 0, 1), 12).run();
    case(2, 20, geometry(64, 64, 3, 1, 1, 1), 13).run();
    case(1, 34, geometry(64, 48, 3, 2, 1, 1), 14).run();
    case(1, 21, dilated(geometry(64, 32, 3, 1, 2, 1)), 15).run();
    case(2, 18, geometry(128, 96, 3, 1, 1, 2), 16).run();
    case(1, 7, geometry(192, 33, 3, 1, 0, 1), 17).run();
}

#[test]
fn depthwise_and_grouped_convs() {
    case(2, 10, geometry(24, 24, 3, 1, 1, 24), 5).run();
    case(1, 15, geometry(16, 32, 5, 2, 2, 16), 6).run();
    case(1, 8, geometry(16, 32, 3, 1, 1, 4), 7).run();
    case(1, 7, geometry(12, 12, 1, 1, 0, 3), 8).run();
    // Wide depthwise layers: whole 16-channel SIMD steps and a masked rest.
    case(1, 9, geometry(37, 37, 5, 2, 2, 37), 9).run();
    case(2, 6, geometry(96, 96, 3, 1, 1, 96), 10).run();
}

#[test]
fn linear_layers_match_the_naive_reference() {
    let mut rng = Rng::new(42);
    let cases = [
        (1, 64, 10, 128),
        (3, 37, 19, 0),
        (7, 512, 1000, 77),
        (13, 5, 1, 255),
        (5, 300, 40, 64),
    ];
    // Full-range input, and 7-bit input where the zero point allows (AVX2's faster kernel).
    let with_widths = cases.into_iter().flat_map(|c| {
        [(c, 255u8), (c, 127)]
            .into_iter()
            .filter(|&((.., zx), max)| zx <= max)
    });
    for ((rows, in_f, out_f, zx), input_max) in with_widths {
        let input = rng.u8s_up_to(rows * in_f, input_max);
        let w = rng.i8s(out_f * in_f);
        let bias: Vec<i32> = (0..out_f).map(|_| rng.range(-9000, 9000) as i32).collect();
        let m = (0..out_f).map(|_| rng.f32(1e-4, 3e-3)).collect();
        let requant = Requant::new(m, 127);
        let expected = kernels_common::linear(&input, rows, &w, out_f, &bias, zx, &requant);
        let packed = PackedLinear::new(&w, out_f, in_f, &bias, zx).expect("valid linear");
        let what = format!("linear {rows}x{in_f}->{out_f} input<={input_max}");
        check_all_paths(&what, &expected, || {
            let mut out = vec![0; rows * out_f];
            qlinear(&input, rows, &packed, &requant, &mut out).expect("linear");
            out
        });
    }
}

#[test]
fn packed_weights_survive_serialization() {
    let g = geometry(6, 10, 3, 1, 1, 2);
    let mut rng = Rng::new(9);
    let (w, bias) = (rng.i8s(10 * 3 * 9), vec![100; 10]);
    let packed = PackedConv2d::new(g, &w, &bias, 5).expect("valid conv");
    let json = serde_json::to_string(&packed).expect("serialize");
    let back: PackedConv2d = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, packed);
    let tampered = json.replacen("\"out_channels\":10", "\"out_channels\":12", 1);
    assert!(
        serde_json::from_str::<PackedConv2d>(&tampered).is_err(),
        "inconsistent geometry accepted"
    );
    let dw = PackedConv2d::new(geometry(4, 4, 3, 1, 1, 4), &rng.i8s(36), &[0; 4], 0).expect("dw");
    let back: PackedConv2d =
        serde_json::from_str(&serde_json::to_string(&dw).expect("ser")).expect("de");
    assert_eq!(back, dw);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let g = geometry(4, 8, 3, 1, 1, 1);
    let w = vec![1i8; 8 * 4 * 9];
    let packed = PackedConv2d::new(g, &w, &[0; 8], 0).expect("valid conv");
    let requant = Requant::new(vec![0.01], 0);
    let mut out = vec![0u8; 5 * 5 * 8];
    let shape = |r: burn_quantize::Result<()>| matches!(r, Err(Error::Shape { .. }));
    let invalid =
        |r: burn_quantize::Result<PackedConv2d>| matches!(r, Err(Error::InvalidArgument(_)));
    assert!(shape(qconv2d(
        &[0; 99], 1, 5, 5, &packed, &requant, &mut out
    )));
    assert!(shape(qconv2d(
        &[0; 100],
        1,
        5,
        5,
        &packed,
        &requant,
        &mut out[..10]
    )));
    assert!(shape(qconv2d(
        &[0; 100],
        1,
        5,
        5,
        &packed,
        &Requant::new(vec![1.0; 3], 0),
        &mut out
    )));
    let mut bad = Requant::new(vec![1.0], 9);
    bad.qmin = 10;
    bad.qmax = 9;
    assert!(qconv2d(&[0; 100], 1, 5, 5, &packed, &bad, &mut out).is_err());
    assert!(
        qconv2d(
            &[0; 4],
            1,
            1,
            1,
            &PackedConv2d::new(geometry(4, 8, 3, 1, 0, 1), &w, &[0; 8], 0).unwrap(),
            &requant,
            &mut out
        )
        .is_err()
    );
    assert!(invalid(PackedConv2d::new(
        geometry(4, 8, 3, 0, 1, 1),
        &w,
        &[0; 8],
        0
    )));
    assert!(invalid(PackedConv2d::new(
        geometry(4, 6, 3, 1, 1, 4),
        &w,
        &[0; 6],
        0
    )));
    assert!(invalid(PackedConv2d::new(
        geometry(4, 8, 0, 1, 1, 1),
        &[],
        &[0; 8],
        0
    )));
    assert!(matches!(
        PackedConv2d::new(g, &w[1..], &[0; 8], 0),
        Err(Error::Shape { .. })
    ));
    assert!(matches!(
        PackedConv2d::new(g, &w, &[0; 7], 0),
        Err(Error::Shape { .. })
    ));
    assert!(PackedLinear::new(&[0; 6], 2, 3, &[0; 3], 0).is_err());
    assert!(PackedLinear::new(&[], 0, 3, &[], 0).is_err());
    let linear = PackedLinear::new(&[1; 6], 2, 3, &[0; 2], 0).expect("valid linear");
    assert!(qlinear(&[0; 5], 2, &linear, &requant, &mut [0; 4]).is_err());
    assert!(qlinear(&[0; 6], 2, &linear, &requant, &mut [0; 3]).is_err());
    // A requantization prepared for one layer is refused by another with other outputs, even
    // when both pad to the same packed columns.
    let other = PackedConv2d::new(geometry(4, 9, 3, 1, 1, 1), &[1; 9 * 4 * 9], &[0; 9], 0)
        .expect("valid conv");
    let prepared = other.prepare(&requant).expect("valid requant");
    assert!(shape(qconv2d_prepared(
        &[0; 100], 1, 5, 5, &packed, &prepared, &mut out
    )));
    let prepared = packed.prepare(&requant).expect("valid requant");
    assert!(shape(qlinear_prepared(
        &[0; 6],
        2,
        &linear,
        &prepared,
        &mut [0; 4]
    )));
    assert!(qconv2d_prepared(&[0; 100], 1, 5, 5, &packed, &prepared, &mut out).is_ok());
}

/// fbgemm's depthwise arithmetic: raw `u8·i8` products of consecutive taps (padding reads
/// `z_x`) summed in pairs saturated to `i16`, minus `z_x·Σ w`, plus the bias.
fn fbgemm_depthwise(
    input: &[u8],
    [h, w]: [usize; 2],
    c: usize,
    weights: &[i8],
    zx: u8,
    r: &Requant,
) -> Vec<u8> {
    let mut out = Vec::new();
    for oy in 0..h {
        for ox in 0..w {
            for ch in 0..c {
                let taps: Vec<i32> = (0..9)
                    .map(|t| {
                        let (iy, ix) = ((oy + t / 3) as i64 - 1, (ox + t % 3) as i64 - 1);
                        let inside = (0..h as i64).contains(&iy) && (0..w as i64).contains(&ix);
                        let x = if inside {
                            input[(iy as usize * w + ix as usize) * c + ch]
                        } else {
                            zx
                        };
                        i32::from(x) * i32::from(weights[ch * 9 + t])
                    })
                    .collect();
                let pairs: i32 = taps
                    .chunks(2)
                    .map(|p| p.iter().sum::<i32>().clamp(-32768, 32767))
                    .sum();
                let sum_w: i32 = weights[ch * 9..][..9].iter().map(|&v| i32::from(v)).sum();
                out.push(burn_quantize::kernels::requantize(
                    pairs - i32::from(zx) * sum_w,
                    r.multipliers[ch],
                    r.zero_point,
                    r.qmin,
                    r.qmax,
                ));
            }
        }
    }
    out
}

#[test]
fn fbgemm_depthwise_emulation_saturates_tap_pairs() {
    let (hw, c, zx) = (9, 16, 110);
    let mut rng = Rng::new(11);
    let input: Vec<u8> = (0..hw * hw * c)
        .map(|i| if i % 3 == 0 { 255 } else { rng.next() as u8 })
        .collect();
    let weights: Vec<i8> = (0..c * 9)
        .map(|i| if i % 2 == 0 { 127 } else { rng.next() as i8 })
        .collect();
    let requant = Requant::new((0..c).map(|_| rng.f32(1e-3, 1e-2)).collect(), 128);
    let expected = fbgemm_depthwise(&input, [hw, hw], c, &weights, zx, &requant);
    let g = geometry(c, c, 3, 1, 1, c);
    let exact = PackedConv2d::new(g, &weights, &[0; 16], zx).expect("valid conv");
    let emulated = exact.clone().emulate_fbgemm_depthwise();
    assert_ne!(
        exact, emulated,
        "3x3 depthwise over 16 channels is on fbgemm's fast path"
    );
    check_all_paths("fbgemm depthwise", &expected, || {
        let mut out = vec![0; hw * hw * c];
        qconv2d(&input, 1, hw, hw, &emulated, &requant, &mut out).expect("conv");
        out
    });
    let reference =
        kernels_common::conv2d(&input, [1, hw, hw], &g, &weights, &[0; 16], zx, &requant);
    assert_ne!(
        reference, expected,
        "the inputs must overflow i16 pairs somewhere"
    );
    let seven_bit: Vec<u8> = input.iter().map(|&v| v / 2).collect();
    let (zx7, requant) = (55, requant);
    let mut out = vec![0; hw * hw * c];
    let emulated7 = PackedConv2d::new(g, &weights, &[0; 16], zx7)
        .unwrap()
        .emulate_fbgemm_depthwise();
    qconv2d(&seven_bit, 1, hw, hw, &emulated7, &requant, &mut out).expect("conv");
    let exact7 = kernels_common::conv2d(
        &seven_bit,
        [1, hw, hw],
        &g,
        &weights,
        &[0; 16],
        zx7,
        &requant,
    );
    assert_eq!(out, exact7, "7-bit activations never saturate");
    let other = PackedConv2d::new(geometry(c, c, 3, 1, 0, c), &weights, &[0; 16], zx).unwrap();
    assert_eq!(
        other.clone().emulate_fbgemm_depthwise(),
        other,
        "not fbgemm's fast path: unchanged"
    );
}
