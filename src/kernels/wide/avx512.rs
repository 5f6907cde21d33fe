//! The AVX-512 BW wide microkernel: 12 rows x 16 columns, `vpmaddwd` on pairs of `i16`.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::gemm::{WideKernel, WideTile};
use super::pack::NR;
use crate::kernels::gemm::by_rows;
use crate::kernels::simd::Tier;

/// The kernel of the AVX-512 tier.
pub(crate) static KERNEL: WideKernel = WideKernel {
    mr: MR,
    run,
    tier: Tier::Avx512,
};

const MR: usize = 12;

/// # Safety
/// The [`WideTile`] contract, on a CPU with AVX-512 F and BW.
unsafe fn run(t: &WideTile) {
    // SAFETY: forwarded contract; `rows::<M>` is called with `M = m` (or `MR` for `m >= MR`).
    unsafe { by_rows!(rows, t, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], 12) }
}

/// `M` rows; per pair of steps one 64-byte load of the panel (16 columns x 2 weights) and one
/// broadcast of each row's two activations.
///
/// # Safety
/// The [`WideTile`] contract with `M <= m`, on a CPU with the kernel's features.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn rows<const M: usize>(t: &WideTile) {
    let (a, lda, b) = (t.a, t.lda, t.b);
    let mut acc = [_mm512_setzero_si512(); M];
    for q in 0..t.pairs {
        // SAFETY: pair `q < pairs` of the panel is 64 bytes at `b + q·NR·2`, and of row `i`
        // 4 bytes at `a + i·lda + 2q` (see `WideTile`); unaligned loads are used.
        unsafe {
            let w = _mm512_loadu_si512(b.add(q * NR * 2).cast());
            for (i, acc) in acc.iter_mut().enumerate() {
                let x = _mm512_set1_epi32(a.add(i * lda + 2 * q).cast::<i32>().read_unaligned());
                *acc = _mm512_add_epi32(*acc, _mm512_madd_epi16(x, w));
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: row `i < M <= MAX_MR` of the tile has `NR` `i32`s for the 64-byte store.
        unsafe { _mm512_storeu_si512(t.out.add(i * NR).cast(), *acc) };
    }
}
