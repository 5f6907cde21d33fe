//! Every registered microkernel against a naive `i64` GEMM: edge tiles (`m = 1..=mr+1`,
//! `n = 1..=nr+1` and past a panel), `K` around the 4- and 64-byte alignments, zero points and
//! clamps; a narrow kernel with A within its `a_max` and with A over the full range (the
//! driver's excess sums). Then every SIMD kernel — AMX on the tile emulator and (where the CPU
//! has it) on the real tiles — against the scalar kernel over random shapes (up to 5 AMX row
//! pairs, `K` past the reduction chunks), output strides, zero points, clamps, lookup tables,
//! threads and, for a narrow kernel, how many bytes exceed its range; each also with float
//! outputs (the accumulators stored, then dequantized by the driver). Narrow kernels are picked
//! only for data with few such bytes. Kernels this CPU cannot run are listed, never silently
//! passed.

use proptest::prelude::*;

use super::driver::{DenseRows, RowSource};
use super::{CheckProblem, KERNELS, Kernel, kernel, kernel_for};
use crate::kernels::{Isa, Table, available_isas, requantize};

/// `bias + Σ (a − z)·w` of row `i`, column `j` in `i64`.
fn naive_acc(p: &CheckProblem, i: usize, j: usize) -> i64 {
    let dot: i64 = (0..p.k)
        .map(|kk| {
            let a = i64::from(p.a[i * p.k + kk]) - i64::from(p.zero_point);
            a * i64::from(p.w[j * p.k + kk])
        })
        .sum();
    dot + i64::from(p.bias[j])
}

/// Every output of `p` from its naive accumulator.
fn each_output<T>(p: &CheckProblem, f: impl Fn(usize, usize, i64) -> T) -> Vec<T> {
    (0..p.m)
        .flat_map(|i| (0..p.n).map(move |j| (i, j)))
        .map(|(i, j)| f(i, j, naive_acc(p, i, j)))
        .collect()
}

/// The naive result: `acc = bias + Σ (a − z)·w` in `i64`, then the requantization definition.
fn naive(p: &CheckProblem) -> Vec<u8> {
    let r = &p.requant;
    each_output(p, |_, j, acc| {
        let acc = i32::try_from(acc).expect("test sums fit in i32");
        requantize(acc, r.multipliers[j], r.zero_point, r.qmin, r.qmax)
    })
}

/// [`naive`]'s accumulators turned into floats as [`super::params::Dequant`] defines, in the
/// bits [`CheckProblem::run_f32`] returns.
fn naive_f32(p: &CheckProblem) -> Vec<u32> {
    let f = p.float_parts();
    each_output(p, |i, j, acc| {
        let correction = i64::from(f.row_zero_points[i]) * i64::from(f.col_sums[j]);
        let exact = i32::try_from(acc - correction).expect("test sums fit in i32") as f32;
        let scale = f.row_scales[i] * p.requant.multipliers[j];
        (exact * scale + f.bias[j]).to_bits()
    })
}

#[test]
fn every_kernel_matches_the_naive_gemm_on_edge_tiles() {
    let available = available_isas();
    let mut ran = Vec::new();
    for kernel in KERNELS {
        if !available.contains(&kernel.isa) {
            eprintln!("SKIPPED: the {} kernel cannot run on this CPU", kernel.isa);
            continue;
        }
        let ms = (1..=kernel.mr + 1).chain([2 * kernel.mr + 3]);
        for m in ms {
            let ns = (1..=kernel.nr + 1).chain([63, 64, 65, 130]);
            for n in ns {
                // A within a narrow kernel's range, and over the full range (excess sums).
                let ranges = [kernel.a_max, u8::MAX];
                let ranges = &ranges[usize::from(kernel.a_max == u8::MAX)..];
                let ks = [1, 3, 4, 5, 8, 63, 64, 65, 131];
                let cases = ks
                    .into_iter()
                    .flat_map(|k| ranges.iter().map(move |&r| (k, r)));
                for (k, a_range) in cases {
                    for zero_point in [0, 91] {
                        let mut p = CheckProblem::new(m, k, n).narrowed(a_range);
                        p.zero_point = zero_point;
                        if zero_point == 0 {
                            (p.requant.qmin, p.requant.qmax) = (0, 255);
                        }
                        assert_eq!(
                            p.run(kernel),
                            naive(&p),
                            "{} (a_max {}, A up to {a_range}) m={m} n={n} k={k}",
                            kernel.isa,
                            kernel.a_max
                        );
                        assert_eq!(
                            p.run_f32(kernel),
                            naive_f32(&p),
                            "{} (a_max {}, A up to {a_range}) m={m} n={n} k={k}, float outputs",
                            kernel.isa,
                            kernel.a_max
                        );
                    }
                }
            }
        }
        ran.push((kernel.isa, kernel.a_max));
    }
    eprintln!("kernels checked: {ran:?}");
    assert!(
        ran.contains(&(Isa::Scalar, u8::MAX)),
        "the scalar kernel must always run"
    );
}

/// Dense rows with another padding byte.
struct PaddedRows<'a>(DenseRows<'a>, u8);

impl RowSource for PaddedRows<'_> {
    fn k(&self) -> usize {
        self.0.k()
    }
    fn tap_len(&self) -> Option<usize> {
        self.0.tap_len()
    }
    fn tap_rows(&self, g: usize, first: usize, count: usize, pad: &[u8], dst: &mut [*const u8]) {
        self.0.tap_rows(g, first, count, pad, dst);
    }
    fn padding(&self) -> u8 {
        self.1
    }
    fn source(&self) -> &[u8] {
        self.0.source()
    }
    fn copy_rows(&self, g: usize, first: usize, dst: &mut [u8], lda: usize) {
        self.0.copy_rows(g, first, dst, lda);
    }
}

/// A narrow kernel is picked for rows with at most one byte in 1024 above its range and
/// padding within it, and never otherwise.
#[test]
fn narrow_kernels_are_picked_only_for_rows_with_few_bytes_above_their_range() {
    let narrow: Vec<&Kernel> = KERNELS
        .iter()
        .copied()
        .filter(|k| k.a_max < u8::MAX)
        .collect();
    assert!(
        !narrow.is_empty() || !cfg!(target_arch = "x86_64"),
        "AVX2 has a narrow kernel"
    );
    for narrow in narrow {
        let a_max = narrow.a_max;
        let picks = |data: &[u8], padding: u8| {
            let rows = PaddedRows(DenseRows::new(data, 64), padding);
            std::ptr::eq(kernel_for(narrow.isa, &rows), narrow)
        };
        let mut data: Vec<u8> = (0..=a_max).cycle().take(4096).collect();
        assert!(picks(&data, a_max));
        assert!(!picks(&data, a_max + 1), "padding above the range");
        for i in 0..4 {
            data[1000 * i + 7] = u8::MAX;
        }
        assert!(picks(&data, 0), "4 bytes in 4096 above the range");
        data[4095] = a_max + 1;
        assert!(!picks(&data, 0), "5 bytes in 4096 above the range");
        let general = kernel_for(narrow.isa, &DenseRows::new(&data, 64));
        assert!(std::ptr::eq(general, kernel(narrow.isa)));
        assert_eq!((general.isa, general.a_max), (narrow.isa, u8::MAX));
    }
}

/// The scalar microkernel with one bit of every tile's last output flipped.
///
/// # Safety
/// The [`Tile`](super::Tile) contract.
unsafe fn off_by_one_tile(t: &super::Tile) {
    // SAFETY: the same contract as the scalar kernel's; the last output of the tile, row
    // `m − 1` and column `n − 1`, is inside `out` (`ldc` apart).
    unsafe {
        super::scalar::tile(t);
        *t.out.add((t.m - 1) * t.ldc + t.n - 1) ^= 1;
    }
}

/// The self-check catches a kernel that differs from scalar by one bit in one output, and
/// names the output (the paths it accepts are checked against the CPU's features in `isa`).
#[test]
fn self_check_rejects_a_kernel_off_by_one_bit() {
    let broken = super::Kernel {
        entry: super::Entry::Tile(off_by_one_tile),
        ..*kernel(Isa::Scalar)
    };
    let err = super::check_kernel(&broken).unwrap_err();
    assert!(
        err.contains("output") && err.contains("instead of"),
        "{err}"
    );
    assert_eq!(super::check_kernel(kernel(Isa::Scalar)), Ok(()));
}

/// `K` around the AMX tile depth: any `1..=300`, or a multiple of 64 up to 1280 (past the
/// 512-byte reduction chunks), ± 1.
fn amx_k() -> impl Strategy<Value = usize> {
    prop_oneof![
        1usize..=300,
        (1usize..=20, 0usize..=2).prop_map(|(tiles, offset)| 64 * tiles + offset - 1),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(192))]

    #[test]
    fn simd_kernels_match_scalar_on_random_shapes(
        m in 1usize..=140,
        n in 1usize..=140,
        k in amx_k(),
        zero_point in any::<u8>(),
        (qmin, qmax) in (0u8..=120, 130u8..=255),
        ldc_pad in 0usize..=3,
        table_seed in proptest::option::of(any::<u8>()),
        parallel in any::<bool>(),
        excess_every in prop_oneof![Just(0usize), 1usize..=64],
    ) {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
        for kernel in KERNELS.iter().filter(|k| k.isa != Isa::Scalar) {
            if !available_isas().contains(&kernel.isa) {
                eprintln!("SKIPPED: the {} kernel cannot run on this CPU", kernel.isa);
                continue;
            }
            // A narrow kernel's A within its range, with every `excess_every`-th byte above.
            let mut p = CheckProblem::new(m, k, n).narrowed(kernel.a_max);
            if kernel.a_max < u8::MAX && excess_every > 0 {
                let above = u8::MAX - kernel.a_max;
                for b in p.a.iter_mut().step_by(excess_every) {
                    *b = kernel.a_max + 1 + *b % above;
                }
            }
            p.zero_point = zero_point.min(kernel.a_max);
            (p.requant.qmin, p.requant.qmax) = (qmin, qmax);
            p.requant.table = table_seed.map(|s| {
                Table::from_array(std::array::from_fn(|q| (q as u8).wrapping_mul(7) ^ s))
            });
            (p.ldc, p.parallel) = (n + ldc_pad, parallel);
            let expected = pool.install(|| p.run(&super::scalar::KERNEL));
            prop_assert_eq!(
                pool.install(|| p.run(kernel)),
                expected,
                "{} (A up to {})",
                kernel.isa,
                kernel.a_max
            );
            let expected = pool.install(|| p.run_f32(&super::scalar::KERNEL));
            prop_assert_eq!(
                pool.install(|| p.run_f32(kernel)),
                expected,
                "{} (A up to {}), float outputs",
                kernel.isa,
                kernel.a_max
            );
        }
    }
}
