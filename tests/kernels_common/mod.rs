//! Shared helpers of the kernel tests: every path × thread count, deterministic data, and naive
//! references written independently of the packed code (i64 sums, direct loops).

#![allow(dead_code)]

use std::sync::OnceLock;

use burn_quantize::kernels::{Conv2dGeometry, Isa, Requant, available_isas, requantize, with_isa};
use rayon::{ThreadPool, ThreadPoolBuilder};

/// Rayon pools of 1 and 2 threads, built once.
fn pools() -> &'static [(usize, ThreadPool)] {
    static POOLS: OnceLock<Vec<(usize, ThreadPool)>> = OnceLock::new();
    POOLS.get_or_init(|| {
        [1, 2]
            .into_iter()
            .map(|n| {
                (
                    n,
                    ThreadPoolBuilder::new()
                        .num_threads(n)
                        .build()
                        .expect("thread pool"),
                )
            })
            .collect()
    })
}

/// The paths this CPU runs; the others are reported (once per test binary) as skipped.
pub fn paths() -> Vec<Isa> {
    static REPORTED: OnceLock<()> = OnceLock::new();
    let available = available_isas();
    REPORTED.get_or_init(|| {
        let skipped: Vec<_> = Isa::ALL
            .into_iter()
            .filter(|isa| !available.contains(isa))
            .collect();
        eprintln!("kernel paths tested: {available:?}; SKIPPED (not runnable here): {skipped:?}");
    });
    for isa in expected_paths() {
        assert!(
            available.contains(&isa),
            "{isa}: this CPU runs it, but it is not among the available paths {available:?}"
        );
    }
    available
}

/// The paths this CPU's features say it runs: a path missing from [`available_isas`] would be
/// skipped silently by every kernel test.
fn expected_paths() -> Vec<Isa> {
    let mut paths = vec![Isa::Scalar, Isa::AmxEmulated];
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let avx2 = has!("avx2") && has!("fma");
        let avx512 = avx2 && has!("avx512f") && has!("avx512bw") && has!("avx512vl");
        paths.extend(
            [
                (Isa::Avx2, avx2),
                (Isa::AvxVnni, avx2 && has!("avxvnni")),
                (Isa::Avx512Vnni, avx512 && has!("avx512vnni")),
            ]
            .into_iter()
            .filter_map(|(isa, runs)| runs.then_some(isa)),
        );
    }
    paths
}

/// Runs `f` on every available path at 1 and 2 threads and asserts each result equals
/// `expected`; returns how many (path, threads) combinations ran.
pub fn check_all_paths<T: PartialEq + std::fmt::Debug + Send>(
    what: &str,
    expected: &T,
    f: impl Fn() -> T + Sync,
) -> usize {
    let mut runs = 0;
    for isa in paths() {
        for (threads, pool) in pools() {
            let got = pool.install(|| with_isa(isa, &f)).expect("available path");
            assert_eq!(&got, expected, "{what}: path {isa}, {threads} thread(s)");
            runs += 1;
        }
    }
    runs
}

/// A small xorshift generator for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn u8s(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// `n` bytes uniform in `0..=max`.
    pub fn u8s_up_to(&mut self, n: usize, max: u8) -> Vec<u8> {
        (0..n)
            .map(|_| (self.next() % (u64::from(max) + 1)) as u8)
            .collect()
    }

    pub fn i8s(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| self.next() as i8).collect()
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }

    /// Uniform in `[lo, hi)`.
    pub fn f32(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32)
    }
}

/// Naive quantized conv2d, NHWC in and out: `acc = bias + Σ (x − z_x)·w` over valid taps in
/// `i64`, then the requantization definition (and the requant's table, if any).
pub fn conv2d(
    input: &[u8],
    [batch, h, w]: [usize; 3],
    g: &Conv2dGeometry,
    weights_oihw: &[i8],
    bias: &[i32],
    zx: u8,
    requant: &Requant,
) -> Vec<u8> {
    let ([kh, kw], [sh, sw], [dh, dw]) = (g.kernel, g.stride, g.dilation);
    let [pt, pl, pb, pr] = g.padding;
    let oh = (h + pt + pb - dh * (kh - 1) - 1) / sh + 1;
    let ow = (w + pl + pr - dw * (kw - 1) - 1) / sw + 1;
    let (cin_g, cout_g) = (g.in_channels / g.groups, g.out_channels / g.groups);
    let mut out = Vec::with_capacity(batch * oh * ow * g.out_channels);
    for n in 0..batch {
        for oy in 0..oh {
            for ox in 0..ow {
                for oc in 0..g.out_channels {
                    let group = oc / cout_g;
                    let mut acc = i64::from(bias[oc]);
                    for ci in 0..cin_g {
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * sh + ky * dh) as i64 - pt as i64;
                                let ix = (ox * sw + kx * dw) as i64 - pl as i64;
                                if iy < 0 || ix < 0 || iy >= h as i64 || ix >= w as i64 {
                                    continue;
                                }
                                let (iy, ix) = (iy as usize, ix as usize);
                                let c = group * cin_g + ci;
                                let x =
                                    i64::from(input[((n * h + iy) * w + ix) * g.in_channels + c]);
                                let wv = weights_oihw[((oc * cin_g + ci) * kh + ky) * kw + kx];
                                acc += (x - i64::from(zx)) * i64::from(wv);
                            }
                        }
                    }
                    out.push(requant_i64(acc, requant, oc));
                }
            }
        }
    }
    out
}

/// Naive quantized linear: `acc = bias + Σ (x − z_x)·w` in `i64`, then requantization.
pub fn linear(
    input: &[u8],
    rows: usize,
    w: &[i8],
    out_f: usize,
    bias: &[i32],
    zx: u8,
    r: &Requant,
) -> Vec<u8> {
    let in_f = w.len() / out_f;
    let mut out = Vec::with_capacity(rows * out_f);
    for row in 0..rows {
        for o in 0..out_f {
            let dot: i64 = (0..in_f)
                .map(|i| {
                    (i64::from(input[row * in_f + i]) - i64::from(zx)) * i64::from(w[o * in_f + i])
                })
                .sum();
            out.push(requant_i64(dot + i64::from(bias[o]), r, o));
        }
    }
    out
}

fn requant_i64(acc: i64, r: &Requant, channel: usize) -> u8 {
    let acc = i32::try_from(acc).expect("reference sum fits in i32");
    let m = if r.multipliers.len() == 1 {
        r.multipliers[0]
    } else {
        r.multipliers[channel]
    };
    let q = requantize(acc, m, r.zero_point, r.qmin, r.qmax);
    // A fused lookup table maps the requantized value.
    r.table
        .as_ref()
        .map_or(q, |table| table.entries()[usize::from(q)])
}

/// A square-kernel geometry with equal strides and padding on every side.
pub fn geometry(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    groups: usize,
) -> Conv2dGeometry {
    Conv2dGeometry {
        in_channels: cin,
        out_channels: cout,
        kernel: [k, k],
        stride: [stride, stride],
        padding: [pad; 4],
        dilation: [1, 1],
        groups,
    }
}
