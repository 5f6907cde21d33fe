//! AVX2 microkernel: 6 rows × 8 columns, exact `i16` products summed by `vpmaddwd`.
//!
//! No `vpmaddubsw` (its `i16` pair sums saturate on 8-bit A; for 7-bit A, see
//! [`super::avx2_u7`]). The driver hands this kernel A already
//! zero-extended to 16 bits ([`AForm::Widened`]): per group of 4 `k`, each row's 4 values are
//! one 8-byte broadcast load, B's 8 columns × 4 `i8` are sign-extended to two registers of 4
//! columns × 4 `i16`, and `vpmaddwd` gives, per column, two exact `i32` pair sums (`a0·b0 +
//! a1·b1` and `a2·b2 + a3·b3`) that `vpaddd` accumulates. (Zero-extending A here instead costs
//! a lane-crossing shuffle per row and group; on Zen 3 that shuffle port, not `vpmaddwd`, set
//! the speed: 37-40% of the `vpmaddwd` peak.) The epilogue adds the two halves (`vphaddd`),
//! the bias, and requantizes ([`requant_store8`], shared with AVX-VNNI).

use std::arch::x86_64::*;

use super::{AForm, Entry, Kernel, Tile, by_rows};
use crate::kernels::Isa;
use crate::kernels::pack::{GROUP_STRIDE, KR};

const MR: usize = 6;
const _: () = assert!(MR == 6, "by_rows! instantiates 6-row tiles");
const NR: usize = 8;

/// Registry entry of the AVX2 kernel.
pub(super) static KERNEL: Kernel = Kernel {
    isa: Isa::Avx2,
    mr: MR,
    nr: NR,
    k_align: KR,
    a_max: u8::MAX,
    a_form: AForm::Widened,
    entry: Entry::Tile(tile),
};

/// # Safety
/// The [`Tile`] contract, on a CPU with AVX2.
unsafe fn tile(t: &Tile) {
    // SAFETY: forwarded contract; the kernel is only registered as available after detection.
    unsafe { by_rows!(tile_m, t) }
}

/// # Safety
/// As [`tile`], with `t.m == M`.
#[target_feature(enable = "avx2")]
unsafe fn tile_m<const M: usize>(t: &Tile) {
    // SAFETY: the tile contract: per run, `M` row pointers readable for `k_groups·8` bytes
    // (widened A); `taps·k_groups` panel groups of 8 columns (32 bytes), 8 biases and
    // multipliers, `M` output rows of `n` bytes.
    unsafe {
        let mut acc = [[_mm256_setzero_si256(); 2]; M];
        let mut b = t.b;
        for tap in 0..t.taps {
            let rows = t.run_rows::<M>(tap);
            for g in 0..t.k_groups {
                let b_lo = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.cast()));
                let b_hi = _mm256_cvtepi8_epi16(_mm_loadu_si128(b.add(16).cast()));
                for i in 0..M {
                    let a4 = rows[i].add(g * 2 * KR).cast::<i64>().read_unaligned();
                    let a = _mm256_set1_epi64x(a4);
                    acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(a, b_lo));
                    acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(a, b_hi));
                }
                b = b.add(GROUP_STRIDE);
            }
        }
        let bias = _mm256_loadu_si256(t.bias.cast());
        for (i, [lo, hi]) in acc.into_iter().enumerate() {
            // Per 128-bit lane: [c0 c1 c4 c5 | c2 c3 c6 c7]; reorder the 64-bit pairs.
            let sums = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_hadd_epi32(lo, hi));
            requant_store8(_mm256_add_epi32(sums, bias), t, i, 0, t.n);
        }
    }
}

/// Requantizes and stores an `M`-row tile of `NV` vectors of 8 accumulators (bias included)
/// per row: row `i`'s columns `8·v..` from `acc[i][v]`, the first `t.n` of them.
///
/// The accumulators come by value: a reference to the kernel's array made LLVM keep the
/// array in memory, storing every accumulator to the stack in every step of the k loop.
///
/// # Safety
/// The [`Tile`] contract's output and multipliers for `M <= t.m` rows and `8·NV` columns;
/// AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn store_rows<const M: usize, const NV: usize>(
    acc: [[__m256i; NV]; M],
    t: &Tile,
) {
    for (i, acc) in acc.into_iter().enumerate() {
        for (v, acc) in acc.into_iter().enumerate() {
            let n = t.n.saturating_sub(8 * v);
            if n > 0 {
                // SAFETY: row `i < t.m` and columns `8·v..8·v + n.min(8)`, `8·v < t.n`, are
                // inside the tile's output and multipliers (the caller's contract).
                unsafe { requant_store8(acc, t, i, 8 * v, n) };
            }
        }
    }
}

/// Requantizes 8 accumulators (bias included) of row `row`, columns `col..col+8` and stores
/// the first `n.min(8)` bytes at [`Tile::out_at`]; a [`Tile::raw`] tile stores the
/// accumulators themselves.
///
/// # Safety
/// `t.multipliers` holds `col + 8` values and output row `row` is writable for `n.min(8)`
/// elements from `col`; AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn requant_store8(acc: __m256i, t: &Tile, row: usize, col: usize, n: usize) {
    let (out, n) = (t.out_at(row, col), n.min(8));
    if t.raw {
        // SAFETY: the caller guarantees `n` writable `i32`s at `out`.
        unsafe { store_i32x8(acc, out.cast(), n) };
        return;
    }
    // SAFETY: the caller guarantees the multipliers and the output bytes.
    unsafe {
        let scaled = _mm256_mul_ps(
            _mm256_cvtepi32_ps(acc),
            _mm256_loadu_ps(t.multipliers.add(col)),
        );
        let clamped = _mm256_min_ps(
            _mm256_max_ps(scaled, _mm256_set1_ps(t.lo)),
            _mm256_set1_ps(t.hi),
        );
        let q = _mm256_add_epi32(_mm256_cvtps_epi32(clamped), _mm256_set1_epi32(t.zero_point));
        // Values are in 0..=255: pack to bytes; lane 0 holds columns 0-3, lane 1 columns 4-7.
        let bytes = _mm256_packus_epi16(_mm256_packus_epi32(q, q), _mm256_setzero_si256());
        let low8 = _mm_unpacklo_epi32(
            _mm256_castsi256_si128(bytes),
            _mm256_extracti128_si256::<1>(bytes),
        );
        if n == 8 {
            _mm_storel_epi64(out.cast(), low8);
        } else {
            let mut tmp = [0u8; 16];
            _mm_storeu_si128(tmp.as_mut_ptr().cast(), low8);
            std::ptr::copy_nonoverlapping(tmp.as_ptr(), out, n);
        }
    }
}

/// Stores the first `n <= 8` lanes of `acc` at `out`.
///
/// # Safety
/// `out` is writable for `n` `i32`s; AVX2.
#[target_feature(enable = "avx2")]
unsafe fn store_i32x8(acc: __m256i, out: *mut i32, n: usize) {
    // SAFETY: the caller guarantees `n` writable values; the mask keeps lanes `n..` unwritten.
    unsafe {
        if n == 8 {
            _mm256_storeu_si256(out.cast(), acc);
        } else {
            let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lanes);
            _mm256_maskstore_epi32(out, mask, acc);
        }
    }
}
