//! Depthwise convolution: every available path (scalar, AVX2, AVX-VNNI, AVX-512 VNNI, AMX) at 1
//! and 2 threads against naive references, exact and with fbgemm's saturated tap pairs, over
//! channel counts around the SIMD widths, every kernel size, stride, padding, dilation,
//! channel multiplier, row widths around the register block, extreme zero points and fused
//! lookup tables.

mod kernels_common;

use burn_quantize::kernels::{Conv2dGeometry, PackedConv2d, Requant, Table, qconv2d, requantize};
use kernels_common::{Rng, check_all_paths};
use proptest::prelude::*;

/// A depthwise problem; its data comes from `data.seed`.
#[derive(Debug, Clone)]
struct Case {
    batch: usize,
    h: usize,
    w: usize,
    geometry: Conv2dGeometry,
    /// fbgemm's saturated tap pairs (only on the geometries fbgemm's depthwise kernels take).
    fbgemm: bool,
    data: Data,
}

/// Zero points, output clamp, fused table and the seed of the tensors.
#[derive(Debug, Clone, Copy)]
struct Data {
    zx: u8,
    zy: u8,
    /// 0: no clamp, 1: ReLU, 2: ReLU6.
    clamp: u8,
    table: bool,
    seed: u64,
}

/// `C_in = c`, `C_out = m·c`, depthwise.
fn depthwise(c: usize, m: usize, kernel: [usize; 2], stride: [usize; 2]) -> Conv2dGeometry {
    Conv2dGeometry {
        in_channels: c,
        out_channels: m * c,
        kernel,
        stride,
        padding: [kernel[0] / 2, kernel[1] / 2, kernel[0] / 2, kernel[1] / 2],
        dilation: [1, 1],
        groups: c,
    }
}

impl Case {
    fn run(&self) {
        let g = &self.geometry;
        let (mut rng, d) = (Rng::new(self.data.seed), self.data);
        // Mostly full-range bytes and weights, so that fbgemm's pairs overflow `i16` often.
        let input: Vec<u8> = (0..self.batch * self.h * self.w * g.in_channels)
            .map(|_| match rng.next() % 3 {
                0 => 255,
                _ => rng.next() as u8,
            })
            .collect();
        let weights: Vec<i8> = (0..g.out_channels * g.kernel[0] * g.kernel[1])
            .map(|_| match rng.next() % 4 {
                0 => 127,
                1 => -128,
                _ => rng.next() as i8,
            })
            .collect();
        let bias: Vec<i32> = (0..g.out_channels)
            .map(|_| rng.range(-20_000, 20_000) as i32)
            .collect();
        let requant = self.requant(&mut rng);
        let mut packed = PackedConv2d::new(*g, &weights, &bias, d.zx).expect("valid conv");
        if self.fbgemm {
            let emulated = packed.clone().emulate_fbgemm_depthwise();
            assert_ne!(emulated, packed, "{self:?}: not on fbgemm's depthwise path");
            packed = emulated;
        }
        let dims = [self.batch, self.h, self.w];
        let expected = if self.fbgemm {
            saturated_reference(&input, dims, g, &weights, &bias, d.zx, &requant)
        } else {
            kernels_common::conv2d(&input, dims, g, &weights, &bias, d.zx, &requant)
        };
        check_all_paths(&format!("{self:?}"), &expected, || {
            let mut out = vec![0; expected.len()];
            let [batch, h, w] = dims;
            qconv2d(&input, batch, h, w, &packed, &requant, &mut out).expect("conv");
            out
        });
    }

    fn requant(&self, rng: &mut Rng) -> Requant {
        let c = self.geometry.out_channels;
        let multipliers = (0..c).map(|_| 10f32.powf(rng.f32(-5.0, -2.5))).collect();
        let mut requant = Requant::new(multipliers, self.data.zy);
        requant = match self.data.clamp {
            0 => requant,
            1 => requant.with_relu(),
            _ => requant.with_relu6(0.05),
        };
        if self.data.table {
            let entries: Vec<u8> = (0..256).map(|_| rng.next() as u8).collect();
            requant = requant.with_table(Table::new(&entries).expect("256 entries"));
        }
        requant
    }
}

/// fbgemm's depthwise arithmetic for any geometry: per channel, the raw `x·w` products of the
/// taps in row-major order (padding reads `z_x`) summed in pairs saturated to `i16`, plus
/// `bias − z_x·Σw`, wrapped to `i32`.
fn saturated_reference(
    input: &[u8],
    [batch, h, w]: [usize; 3],
    g: &Conv2dGeometry,
    weights: &[i8],
    bias: &[i32],
    zx: u8,
    r: &Requant,
) -> Vec<u8> {
    let ([kh, kw], [sh, sw], [dh, dw], [pt, pl, pb, pr]) =
        (g.kernel, g.stride, g.dilation, g.padding);
    let oh = (h + pt + pb - dh * (kh - 1) - 1) / sh + 1;
    let ow = (w + pl + pr - dw * (kw - 1) - 1) / sw + 1;
    let m = g.out_channels / g.in_channels;
    let mut out = Vec::new();
    for (n, oy, ox) in
        (0..batch).flat_map(|n| (0..oh).flat_map(move |y| (0..ow).map(move |x| (n, y, x))))
    {
        for oc in 0..g.out_channels {
            let products: Vec<i64> = (0..kh * kw)
                .map(|t| {
                    let iy = (oy * sh + t / kw * dh) as i64 - pt as i64;
                    let ix = (ox * sw + t % kw * dw) as i64 - pl as i64;
                    let inside = (0..h as i64).contains(&iy) && (0..w as i64).contains(&ix);
                    let x = if inside {
                        input[((n * h + iy as usize) * w + ix as usize) * g.in_channels + oc / m]
                    } else {
                        zx
                    };
                    i64::from(x) * i64::from(weights[oc * kh * kw + t])
                })
                .collect();
            let pairs: i64 = products
                .chunks(2)
                .map(|p| p.iter().sum::<i64>().clamp(-32768, 32767))
                .sum();
            let sum_w: i64 = weights[oc * kh * kw..][..kh * kw]
                .iter()
                .map(|&v| i64::from(v))
                .sum();
            let acc = (pairs + i64::from(bias[oc]) - i64::from(zx) * sum_w) as i32;
            let q = requantize(acc, r.multipliers[oc], r.zero_point, r.qmin, r.qmax);
            out.push(r.table.as_ref().map_or(q, |t| t.get(q)));
        }
    }
    out
}

/// Channel counts around the 8/16/32/64-channel steps.
const CHANNELS: [usize; 19] = [
    1, 3, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 40, 48, 63, 64, 65, 72, 80,
];

/// An extreme or arbitrary zero point.
fn zero_point() -> impl Strategy<Value = u8> {
    prop_oneof![Just(0u8), Just(255u8), Just(128u8), any::<u8>()]
}

/// Any zero points, clamp, table and seed.
fn data() -> impl Strategy<Value = Data> {
    (
        zero_point(),
        zero_point(),
        0u8..3,
        any::<bool>(),
        any::<u64>(),
    )
        .prop_map(|(zx, zy, clamp, table, seed)| Data {
            zx,
            zy,
            clamp,
            table,
            seed,
        })
}

/// Any depthwise geometry (exact arithmetic): odd and even kernels, strides, dilations,
/// asymmetric padding, channel multipliers 1 and 2.
fn exact_case() -> impl Strategy<Value = Case> {
    let sizes = prop::sample::select(vec![1usize, 3, 5, 7]);
    (
        (
            prop::sample::select(CHANNELS.to_vec()),
            1usize..3,
            sizes,
            1usize..5,
        ),
        ([1usize..3, 1..3], [1usize..3, 1..3]),
        [0usize..4, 0..4, 0..4, 0..4],
        (0usize..4, 0usize..14, 1usize..3),
        data(),
    )
        .prop_map(
            |((c, m, kh, kw), (stride, dilation), padding, (eh, ew, batch), data)| {
                let geometry = Conv2dGeometry {
                    padding,
                    dilation,
                    ..depthwise(c, m, [kh, kw], stride)
                };
                let [pt, pl, pb, pr] = padding;
                let span = |d: usize, k: usize| d * (k - 1) + 1;
                let h = eh + span(dilation[0], kh).saturating_sub(pt + pb).max(1);
                let w = ew + span(dilation[1], kw).saturating_sub(pl + pr).max(1);
                let fbgemm = false;
                Case {
                    batch,
                    h,
                    w,
                    geometry,
                    fbgemm,
                    data,
                }
            },
        )
}

/// The geometries fbgemm runs with its depthwise kernels, with saturated tap pairs.
fn fbgemm_case() -> impl Strategy<Value = Case> {
    let sizes = prop::sample::select(vec![3usize, 5]);
    (
        (1usize..11, 1usize..3, sizes, 1usize..3),
        (1usize..12, 1usize..14, 1usize..3),
        data(),
    )
        .prop_map(|((c8, m, k, s), (h, w, batch), data)| {
            let geometry = depthwise(8 * c8, m, [k, k], [s, s]);
            Case {
                batch,
                h,
                w,
                geometry,
                fbgemm: true,
                data,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(160))]

    #[test]
    fn exact_depthwise_matches_the_naive_reference(case in exact_case()) {
        case.run();
    }

    #[test]
    fn fbgemm_depthwise_matches_the_saturating_reference(case in fbgemm_case()) {
        case.run();
    }
}

/// Every channel count with MobileNet's 3×3 and 5×5 layers, rows from 1 to 13 pixels wide.
#[test]
fn every_channel_count_and_row_width() {
    for (i, &c) in CHANNELS.iter().enumerate() {
        for (k, stride, w) in [
            (3, 1, 1 + i % 13),
            (5, 2, 13 - i % 13),
            (3, 2, 6),
            (5, 1, 9),
        ] {
            for fbgemm in [false, true].into_iter().filter(|&f| !f || c % 8 == 0) {
                let data = Data {
                    zx: [0, 255, 77][i % 3],
                    zy: [255, 0, 128][i % 3],
                    clamp: (i % 3) as u8,
                    table: i % 2 == 0,
                    seed: (c * 100 + k) as u64,
                };
                let geometry = depthwise(c, 1, [k, k], [stride; 2]);
                Case {
                    batch: 1,
                    h: 5,
                    w,
                    geometry,
                    fbgemm,
                    data,
                }
                .run();
            }
        }
    }
}
