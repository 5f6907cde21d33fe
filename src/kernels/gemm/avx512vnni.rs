//! AVX-512 VNNI microkernel: 6 rows × 64 columns, `vpdpbusd zmm`.
//!
//! Per group of 4 `k`: 4 loads of B (64 columns × 4 `i8`), and for each row one broadcast of 4
//! `u8` of A and 4 `vpdpbusd`; 24 accumulators, 4 B registers and 1 broadcast register fit the
//! 32 `zmm`. Smaller edge tiles are the same code instantiated for fewer rows and vectors.
//! The epilogue ([`requant_store`], shared with AMX) is [`crate::kernels::requantize`] on 16
//! lanes: `vcvtdq2ps`, `vmulps`, `vmaxps`, `vminps`, `vcvtps2dq`, `vpaddd`, `vpmovusdb`.

use std::arch::x86_64::*;

use super::{AForm, Entry, Kernel, Tile, by_rows};
use crate::kernels::Isa;
use crate::kernels::pack::{GROUP_STRIDE, KR};

const MR: usize = 6;
const _: () = assert!(MR == 6, "by_rows! instantiates 6-row tiles");
const NV: usize = 4;

/// Registry entry of the AVX-512 VNNI kernel.
pub(super) static KERNEL: Kernel = Kernel {
    isa: Isa::Avx512Vnni,
    mr: MR,
    nr: NV * 16,
    k_align: KR,
    a_max: u8::MAX,
    a_form: AForm::Rows,
    entry: Entry::Tile(tile),
};

/// # Safety
/// The [`Tile`] contract, on a CPU with AVX-512 F/BW/VL/VNNI.
unsafe fn tile(t: &Tile) {
    // SAFETY: forwarded contract; the kernel is only registered as available after detection.
    unsafe { by_rows!(tile_m, t) }
}

/// # Safety
/// As [`tile`], with `t.m == M`.
unsafe fn tile_m<const M: usize>(t: &Tile) {
    // SAFETY: forwarded contract.
    unsafe {
        match t.n.div_ceil(16) {
            1 => tile_mn::<M, 1>(t),
            2 => tile_mn::<M, 2>(t),
            3 => tile_mn::<M, 3>(t),
            _ => tile_mn::<M, NV>(t),
        }
    }
}

/// # Safety
/// As [`tile`], with `t.m == M` and `t.n <= 16·V`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile_mn<const M: usize, const V: usize>(t: &Tile) {
    // SAFETY: the tile contract makes every pointer below valid for what is read or written:
    // per run, `M` row pointers readable for `k_groups·4` bytes; `taps·k_groups` panel groups
    // of 64 columns, 64 biases and multipliers, `M` output rows of `n` bytes.
    unsafe {
        let mut acc = [[_mm512_setzero_si512(); V]; M];
        for v in 0..V {
            let bias = _mm512_loadu_si512(t.bias.add(16 * v).cast());
            for row in acc.iter_mut() {
                row[v] = bias;
            }
        }
        let mut b = t.b;
        for tap in 0..t.taps {
            let rows = t.run_rows::<M>(tap);
            for g in 0..t.k_groups {
                let bv: [__m512i; V] =
                    std::array::from_fn(|v| _mm512_loadu_si512(b.add(64 * v).cast()));
                for i in 0..M {
                    let a = _mm512_set1_epi32(rows[i].add(g * KR).cast::<i32>().read_unaligned());
                    for v in 0..V {
                        acc[i][v] = _mm512_dpbusd_epi32(acc[i][v], a, bv[v]);
                    }
                }
                b = b.add(GROUP_STRIDE);
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (v, &acc) in acc.iter().enumerate() {
                let n = t.n.saturating_sub(16 * v).min(16);
                requant_store(acc, t, i, 16 * v, n);
            }
        }
    }
}

/// Requantizes 16 accumulators (bias included) of row `row`, columns `col..col+16` and
/// stores the first `n` bytes at [`Tile::out_at`]; a [`Tile::raw`] tile stores the
/// accumulators themselves.
///
/// # Safety
/// `t.multipliers` holds `col + 16` values and output row `row` is writable for `n <= 16`
/// elements from `col`; AVX-512 F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
pub(super) unsafe fn requant_store(acc: __m512i, t: &Tile, row: usize, col: usize, n: usize) {
    if n == 0 {
        return;
    }
    let (out, mask) = (
        t.out_at(row, col),
        if n >= 16 { u16::MAX } else { (1u16 << n) - 1 },
    );
    // SAFETY: the caller guarantees the multipliers and the `n` output elements; the mask
    // keeps the stores to them.
    unsafe {
        if t.raw {
            _mm512_mask_storeu_epi32(out.cast(), mask, acc);
            return;
        }
        let scaled = _mm512_mul_ps(
            _mm512_cvtepi32_ps(acc),
            _mm512_loadu_ps(t.multipliers.add(col)),
        );
        let clamped = _mm512_min_ps(
            _mm512_max_ps(scaled, _mm512_set1_ps(t.lo)),
            _mm512_set1_ps(t.hi),
        );
        let q = _mm512_add_epi32(_mm512_cvtps_epi32(clamped), _mm512_set1_epi32(t.zero_point));
        _mm_mask_storeu_epi8(out.cast(), mask, _mm512_cvtusepi32_epi8(q));
    }
}
