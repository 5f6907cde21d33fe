//! Max, average and global average pooling: every available path at 1 and 2 threads against
//! naive loops with PyTorch's window rules and rounding; bad inputs are errors.

mod kernels_common;

use burn_quantize::kernels::{
    AvgPool2d, MaxPool2d, QParams, avg_pool_output_size, max_pool_output_size, qavg_pool2d,
    qglobal_avg_pool, qmax_pool2d, requantize,
};
use kernels_common::{Rng, check_all_paths};
use proptest::prelude::*;

/// PyTorch's `pooling_output_shape`, written out for one axis.
fn out_size(size: usize, k: usize, s: usize, p: usize, d: usize, ceil: bool) -> usize {
    let eff = (d * (k - 1) + 1) as i64;
    let numerator = size as i64 + 2 * p as i64 - eff + if ceil { s as i64 - 1 } else { 0 };
    let mut out = numerator.div_euclid(s as i64) + 1;
    if ceil && (out - 1) * s as i64 >= size as i64 + p as i64 {
        out -= 1;
    }
    out as usize
}

fn max_ref(x: &[u8], [n, h, w, c]: [usize; 4], p: &MaxPool2d) -> Vec<u8> {
    let oh = out_size(
        h,
        p.kernel[0],
        p.stride[0],
        p.padding[0],
        p.dilation[0],
        p.ceil_mode,
    );
    let ow = out_size(
        w,
        p.kernel[1],
        p.stride[1],
        p.padding[1],
        p.dilation[1],
        p.ceil_mode,
    );
    let mut out = Vec::new();
    for (i, oy, ox, ch) in itertools(n, oh, ow, c) {
        let mut best = 0u8;
        for ky in 0..p.kernel[0] {
            for kx in 0..p.kernel[1] {
                let iy = (oy * p.stride[0] + ky * p.dilation[0]) as i64 - p.padding[0] as i64;
                let ix = (ox * p.stride[1] + kx * p.dilation[1]) as i64 - p.padding[1] as i64;
                if (0..h as i64).contains(&iy) && (0..w as i64).contains(&ix) {
                    best = best.max(x[((i * h + iy as usize) * w + ix as usize) * c + ch]);
                }
            }
        }
        out.push(best);
    }
    out
}

fn avg_ref(
    x: &[u8],
    [n, h, w, c]: [usize; 4],
    p: &AvgPool2d,
    from: QParams,
    to: QParams,
) -> Vec<u8> {
    let oh = out_size(h, p.kernel[0], p.stride[0], p.padding[0], 1, p.ceil_mode);
    let ow = out_size(w, p.kernel[1], p.stride[1], p.padding[1], 1, p.ceil_mode);
    let mut out = Vec::new();
    for (i, oy, ox, ch) in itertools(n, oh, ow, c) {
        let y0 = (oy * p.stride[0]) as i64 - p.padding[0] as i64;
        let x0 = (ox * p.stride[1]) as i64 - p.padding[1] as i64;
        let y1 = (y0 + p.kernel[0] as i64).min((h + p.padding[0]) as i64);
        let x1 = (x0 + p.kernel[1] as i64).min((w + p.padding[1]) as i64);
        let padded = (y1 - y0) * (x1 - x0);
        let (mut sum, mut count) = (0i64, 0i64);
        for iy in y0.max(0)..y1.min(h as i64) {
            for ix in x0.max(0)..x1.min(w as i64) {
                sum += i64::from(x[((i * h + iy as usize) * w + ix as usize) * c + ch]);
                count += 1;
            }
        }
        let divisor = if p.count_include_pad { padded } else { count };
        let acc = (sum - count * i64::from(from.zero_point)) as i32;
        let m = (from.scale / to.scale) / divisor as f32;
        out.push(requantize(acc, m, to.zero_point, 0, 255));
    }
    out
}

/// PyTorch's `avg_pool2d(x, 2)`.
const AVG_2X2: AvgPool2d = AvgPool2d {
    kernel: [2, 2],
    stride: [2, 2],
    padding: [0, 0],
    ceil_mode: false,
    count_include_pad: true,
};

fn itertools(
    n: usize,
    oh: usize,
    ow: usize,
    c: usize,
) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    (0..n).flat_map(move |i| {
        (0..oh).flat_map(move |y| (0..ow).flat_map(move |x| (0..c).map(move |ch| (i, y, x, ch))))
    })
}

fn window() -> impl Strategy<Value = ([usize; 2], [usize; 2], [usize; 2], [usize; 2], bool)> {
    (
        (1usize..5, 1usize..5),
        (1usize..4, 1usize..4),
        (0usize..3, 0usize..3),
        (1usize..3, 1usize..3),
        any::<bool>(),
    )
        .prop_map(|((kh, kw), (sh, sw), (ph, pw), (dh, dw), ceil)| {
            let (ph, pw) = (ph.min(kh / 2), pw.min(kw / 2));
            ([kh, kw], [sh, sw], [ph, pw], [dh, dw], ceil)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn max_pool_matches_naive_windows(
        (kernel, stride, padding, dilation, ceil_mode) in window(),
        (n, h, w, c) in (1usize..3, 5usize..12, 5usize..12, 1usize..20),
        seed in any::<u64>(),
    ) {
        let pool = MaxPool2d { kernel, stride, padding, dilation, ceil_mode };
        let fits = |size: usize, i: usize| size + 2 * padding[i] > dilation[i] * (kernel[i] - 1);
        prop_assert_eq!(max_pool_output_size(h, w, &pool).is_ok(), fits(h, 0) && fits(w, 1));
        prop_assume!(fits(h, 0) && fits(w, 1));
        let x = Rng::new(seed).u8s(n * h * w * c);
        let expected = max_ref(&x, [n, h, w, c], &pool);
        let (oh, ow) = max_pool_output_size(h, w, &pool).expect("output size");
        prop_assert_eq!(expected.len(), n * oh * ow * c);
        check_all_paths(&format!("{pool:?}"), &expected, || {
            let mut out = vec![0; expected.len()];
            qmax_pool2d(&x, n, h, w, c, &pool, &mut out).expect("max pool");
            out
        });
    }

    #[test]
    fn avg_pool_matches_pytorch_rounding(
        (kernel, stride, padding, _, ceil_mode) in window(),
        count_include_pad in any::<bool>(),
        (n, h, w, c) in (1usize..3, 5usize..12, 5usize..12, 1usize..20),
        (s_in, z_in, s_out, z_out) in (0.01f32..0.1, any::<u8>(), 0.01f32..0.1, any::<u8>()),
        seed in any::<u64>(),
    ) {
        let pool = AvgPool2d { kernel, stride, padding, ceil_mode, count_include_pad };
        let (from, to) = (QParams::new(s_in, z_in), QParams::new(s_out, z_out));
        let x = Rng::new(seed).u8s(n * h * w * c);
        let expected = avg_ref(&x, [n, h, w, c], &pool, from, to);
        let (oh, ow) = avg_pool_output_size(h, w, &pool).expect("output size");
        prop_assert_eq!(expected.len(), n * oh * ow * c);
        check_all_paths(&format!("{pool:?}"), &expected, || {
            let mut out = vec![0; expected.len()];
            qavg_pool2d(&x, n, h, w, c, &pool, from, to, &mut out).expect("avg pool");
            out
        });
    }
}

#[test]
fn global_average_uses_the_reciprocal_of_the_reciprocal() {
    let (n, h, w, c) = (3, 7, 7, 37);
    let (from, to) = (QParams::new(0.05, 100), QParams::new(0.03, 7));
    let x = Rng::new(5).u8s(n * h * w * c);
    let m = 1.0 / (1.0 / ((from.scale / to.scale) / 49.0));
    let expected: Vec<u8> = (0..n * c)
        .map(|i| {
            let (image, ch) = (i / c, i % c);
            let sum: i32 = (0..h * w)
                .map(|p| i32::from(x[(image * h * w + p) * c + ch]))
                .sum();
            requantize(sum - 49 * 100, m, 7, 0, 255)
        })
        .collect();
    check_all_paths("global avg pool", &expected, || {
        let mut out = vec![0; n * c];
        qglobal_avg_pool(&x, n, h, w, c, from, to, &mut out).expect("global avg pool");
        out
    });
}

#[test]
fn output_sizes_follow_pytorch() {
    let max = |h, k, s, p, d, ceil_mode| {
        max_pool_output_size(
            h,
            h,
            &MaxPool2d {
                kernel: [k; 2],
                stride: [s; 2],
                padding: [p; 2],
                dilation: [d; 2],
                ceil_mode,
            },
        )
        .map(|(oh, _)| oh)
    };
    assert_eq!(max(112, 3, 2, 1, 1, false).unwrap(), 56);
    assert_eq!(max(6, 3, 2, 0, 1, false).unwrap(), 2);
    assert_eq!(max(6, 3, 2, 0, 1, true).unwrap(), 3);
    assert_eq!(max(5, 2, 2, 1, 1, true).unwrap(), 3);
    assert_eq!(max(13, 3, 2, 1, 2, false).unwrap(), 6);
    assert_eq!(avg_pool_output_size(13, 13, &AVG_2X2).unwrap(), (6, 6));
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let qp = QParams::new(0.1, 3);
    let pool = MaxPool2d {
        kernel: [3, 3],
        stride: [2, 2],
        padding: [1, 1],
        dilation: [1, 1],
        ceil_mode: false,
    };
    assert!(qmax_pool2d(&[0; 10], 1, 4, 4, 1, &pool, &mut [0; 4]).is_err());
    assert!(qmax_pool2d(&[0; 16], 1, 4, 4, 1, &pool, &mut [0; 3]).is_err());
    assert!(
        qmax_pool2d(
            &[0; 16],
            1,
            4,
            4,
            1,
            &MaxPool2d {
                stride: [0, 2],
                ..pool
            },
            &mut [0; 4]
        )
        .is_err()
    );
    assert!(
        qmax_pool2d(
            &[0; 16],
            1,
            4,
            4,
            1,
            &MaxPool2d {
                padding: [2, 1],
                ..pool
            },
            &mut [0; 4]
        )
        .is_err()
    );
    assert!(qmax_pool2d(&[], 1, 0, 4, 1, &pool, &mut []).is_err());
    assert!(
        qavg_pool2d(
            &[0; 16],
            1,
            4,
            4,
            1,
            &AVG_2X2,
            qp,
            QParams::new(0.0, 0),
            &mut [0; 4]
        )
        .is_err()
    );
    assert!(
        qavg_pool2d(
            &[0; 16],
            1,
            4,
            4,
            1,
            &AvgPool2d {
                kernel: [5, 5],
                ..AVG_2X2
            },
            qp,
            qp,
            &mut [0; 4]
        )
        .is_err()
    );
    assert!(qglobal_avg_pool(&[0; 16], 1, 4, 4, 1, qp, qp, &mut [0; 2]).is_err());
    assert!(qglobal_avg_pool(&[], 1, 0, 0, 1, qp, qp, &mut [0; 1]).is_err());
}
