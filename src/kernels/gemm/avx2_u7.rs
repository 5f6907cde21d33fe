//! AVX2 microkernel for A bytes ≤ 128: 4 rows × 16 columns, `vpmaddubsw` + `vpmaddwd` + `vpaddd`.
//!
//! `vpmaddubsw` multiplies `u8` by `i8` and adds adjacent pairs into `i16` with saturation.
//! With every A byte ≤ 128 a product lies in `[-16384, 16256]` and a pair sum in
//! `[-32768, 32512]`, inside `i16`, so nothing saturates and the kernel is exact: per group of
//! 4 `k`, `vpmaddubsw` gives each column two pair sums, `vpmaddwd` by ones adds them into the
//! column's `i32`, `vpaddd` accumulates — what one `vpdpbusd` does, in three instructions, on A
//! read in place ([`AForm::Rows`], like the VNNI kernels) instead of the widened copy the
//! full-range kernel needs. PyTorch's `x86` and `fbgemm` presets calibrate activations for 7
//! bits (`reduce_range`) for this instruction; values past the calibrated range still reach
//! 255, rarely: the driver lowers those bytes to 128 and hands over the rest as per-row sums
//! ([`Tile::adds`]), added here before requantizing (PyTorch's kernels saturate instead).
//! 8 accumulators, 2 B registers, the broadcast row, the ones and a product fit the 16 `ymm`.
//! The epilogue is the AVX2 one ([`super::avx2::store_rows`]).

use std::arch::x86_64::*;

use super::avx2::store_rows;
use super::{AForm, Entry, Kernel, Tile, by_rows};
use crate::kernels::Isa;
use crate::kernels::pack::{GROUP_STRIDE, KR};

const MR: usize = 4;
const _: () = assert!(MR == 4, "the by_rows! call below instantiates 4-row tiles");
const NV: usize = 2;

/// Registry entry of the 7-bit AVX2 kernel.
pub(super) static KERNEL: Kernel = Kernel {
    isa: Isa::Avx2,
    mr: MR,
    nr: NV * 8,
    k_align: KR,
    a_max: 128,
    a_form: AForm::Rows,
    entry: Entry::Tile(tile),
};

/// # Safety
/// The [`Tile`] contract with every A byte ≤ 128, on a CPU with AVX2.
unsafe fn tile(t: &Tile) {
    // SAFETY: forwarded contract; the kernel is only registered as available after detection.
    unsafe { by_rows!(tile_m, t, [1, 2, 3], 4) }
}

/// # Safety
/// As [`tile`], with `t.m == M`.
#[target_feature(enable = "avx2")]
unsafe fn tile_m<const M: usize>(t: &Tile) {
    // SAFETY: the tile contract: per run, `M` row pointers readable for `k_groups·4` bytes;
    // `taps·k_groups` panel groups of 16 columns (64 bytes), 16 biases and multipliers, `M`
    // output rows of `n` bytes; `adds` null or `M` pointers, each null or readable at
    // `add_col..add_col + 16`.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let bias: [__m256i; NV] =
            std::array::from_fn(|v| _mm256_loadu_si256(t.bias.add(8 * v).cast()));
        let mut acc = [bias; M];
        let mut b = t.b;
        for tap in 0..t.taps {
            let rows = t.run_rows::<M>(tap);
            for g in 0..t.k_groups {
                let bv: [__m256i; NV] =
                    std::array::from_fn(|v| _mm256_loadu_si256(b.add(32 * v).cast()));
                for i in 0..M {
                    let a = _mm256_set1_epi32(rows[i].add(g * KR).cast::<i32>().read_unaligned());
                    for v in 0..NV {
                        let pairs = _mm256_maddubs_epi16(a, bv[v]);
                        acc[i][v] = _mm256_add_epi32(acc[i][v], _mm256_madd_epi16(pairs, ones));
                    }
                }
                b = b.add(GROUP_STRIDE);
            }
        }
        if !t.adds.is_null() {
            for (i, acc) in acc.iter_mut().enumerate() {
                let add = *t.adds.add(i);
                if !add.is_null() {
                    for (v, acc) in acc.iter_mut().enumerate() {
                        let sums = _mm256_loadu_si256(add.add(t.add_col + 8 * v).cast());
                        *acc = _mm256_add_epi32(*acc, sums);
                    }
                }
            }
        }
        store_rows(acc, t);
    }
}
