//! Every registered microkernel against a naive `i64` GEMM: edge tiles (`m = 1..=mr+1`,
//! `n = 1..=nr+1` and past a panel), `K` around the 4- and 64-byte alignments, zero points and
//! clamps. Then the AMX kernel, on the tile emulator and (where the CPU has it) on the real
//! tiles, against the scalar kernel over random shapes (up to 5 row pairs, `K` past the
//! reduction chunks), output strides, zero points, clamps, lookup tables and threads. Kernels
//! this CPU cannot run are listed, never silently passed.

use proptest::prelude::*;

use super::{CheckProblem, KERNELS};
use crate::kernels::{Isa, Table, available_isas, requantize};

/// The naive result: `acc = bias + Σ (a − z)·w` in `i64`, then the requantization definition.
fn naive(p: &CheckProblem) -> Vec<u8> {
    let r = &p.requant;
    let mut out = Vec::with_capacity(p.m * p.n);
    for i in 0..p.m {
        for j in 0..p.n {
            let dot: i64 = (0..p.k)
                .map(|kk| {
                    let a = i64::from(p.a[i * p.k + kk]) - i64::from(p.zero_point);
                    a * i64::from(p.w[j * p.k + kk])
                })
                .sum();
            let acc = i32::try_from(dot + i64::from(p.bias[j])).expect("test sums fit in i32");
            out.push(requantize(
                acc,
                r.multipliers[j],
                r.zero_point,
                r.qmin,
                r.qmax,
            ));
        }
    }
    out
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
                for k in [1, 3, 4, 5, 8, 63, 64, 65, 131] {
                    for zero_point in [0, 91] {
                        let mut p = CheckProblem::new(m, k, n);
                        p.zero_point = zero_point;
                        if zero_point == 0 {
                            (p.requant.qmin, p.requant.qmax) = (0, 255);
                        }
                        assert_eq!(
                            p.run(kernel.isa),
                            naive(&p),
                            "{} m={m} n={n} k={k}",
                            kernel.isa
                        );
                    }
                }
            }
        }
        ran.push(kernel.isa);
    }
    eprintln!("kernels checked: {ran:?}");
    assert!(
        ran.contains(&crate::kernels::Isa::Scalar),
        "the scalar kernel must always run"
    );
}

#[test]
fn self_check_accepts_every_available_kernel() {
    for isa in available_isas() {
        assert_eq!(super::self_check(isa), Ok(()), "{isa}");
    }
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
    fn amx_kernel_matches_scalar_on_random_shapes(
        m in 1usize..=140,
        n in 1usize..=140,
        k in amx_k(),
        zero_point in any::<u8>(),
        (qmin, qmax) in (0u8..=120, 130u8..=255),
        ldc_pad in 0usize..=3,
        table_seed in proptest::option::of(any::<u8>()),
        parallel in any::<bool>(),
    ) {
        let mut p = CheckProblem::new(m, k, n);
        (p.zero_point, p.requant.qmin, p.requant.qmax) = (zero_point, qmin, qmax);
        p.requant.table = table_seed.map(|s| {
            Table::from_array(std::array::from_fn(|q| (q as u8).wrapping_mul(7) ^ s))
        });
        (p.ldc, p.parallel) = (n + ldc_pad, parallel);
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("pool");
        let expected = pool.install(|| p.run(Isa::Scalar));
        for isa in [Isa::AmxEmulated, Isa::Amx] {
            if !available_isas().contains(&isa) {
                eprintln!("SKIPPED: the {isa} kernel cannot run on this CPU");
                continue;
            }
            prop_assert_eq!(pool.install(|| p.run(isa)), expected.clone(), "{}", isa);
        }
    }
}
