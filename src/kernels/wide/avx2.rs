//! The AVX2 wide microkernel: 6 rows x 16 columns, `vpmaddwd` on pairs of `i16`.

#![cfg(target_arch = "x86_64")]

use std::arch::x86_64::*;

use super::gemm::{WideKernel, WideTile};
use super::pack::NR;
use crate::kernels::gemm::by_rows;
use crate::kernels::simd::Tier;

/// The kernel of the AVX2 tier.
pub(crate) static KERNEL: WideKernel = WideKernel {
    mr: MR,
    run,
    tier: Tier::Avx2,
};

const MR: usize = 6;

/// # Safety
/// The [`WideTile`] contract, on a CPU with AVX2.
unsafe fn run(t: &WideTile) {
    // SAFETY: forwarded contract; `rows::<M>` is called with `M = m` (or `MR` for `m >= MR`).
    unsafe { by_rows!(rows, t, [1, 2, 3, 4, 5], 6) }
}

/// `M` rows; per pair of steps two 32-byte loads of the panel (8 columns x 2 weights each)
/// and one broadcast of each row's two activations.
///
/// # Safety
/// The [`WideTile`] contract with `M <= m`, on a CPU with the kernel's features.
#[target_feature(enable = "avx2")]
unsafe fn rows<const M: usize>(t: &WideTile) {
    let (a, lda, b) = (t.a, t.lda, t.b);
    let mut acc = [[_mm256_setzero_si256(); 2]; M];
    for q in 0..t.pairs {
        // SAFETY: pair `q < pairs` of the panel is 64 bytes at `b + q·NR·2`, and of row `i`
        // 4 bytes at `a + i·lda + 2q` (see `WideTile`); unaligned loads are used.
        unsafe {
            let w0 = _mm256_loadu_si256(b.add(q * NR * 2).cast());
            let w1 = _mm256_loadu_si256(b.add(q * NR * 2 + 16).cast());
            for (i, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_set1_epi32(a.add(i * lda + 2 * q).cast::<i32>().read_unaligned());
                acc[0] = _mm256_add_epi32(acc[0], _mm256_madd_epi16(x, w0));
                acc[1] = _mm256_add_epi32(acc[1], _mm256_madd_epi16(x, w1));
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: row `i < M <= MAX_MR` of the tile has `NR = 16` `i32`s for two 32-byte
        // stores.
        unsafe {
            _mm256_storeu_si256(t.out.add(i * NR).cast(), acc[0]);
            _mm256_storeu_si256(t.out.add(i * NR + 8).cast(), acc[1]);
        }
    }
}
