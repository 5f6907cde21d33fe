//! Every registered microkernel against a naive `i64` GEMM: edge tiles (`m = 1..=mr+1`,
//! `n = 1..=nr+1` and past a panel), `K` around the 4- and 64-byte alignments, zero points and
//! clamps. Kernels this CPU cannot run are listed, never silently passed.

use super::{CheckProblem, KERNELS};
use crate::kernels::{available_isas, requantize};

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
