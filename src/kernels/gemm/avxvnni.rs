//! AVX-VNNI microkernel: 6 rows × 16 columns, VEX-encoded `vpdpbusd ymm`.
//!
//! Per group of 4 `k`: 2 loads of B (16 columns × 4 `i8`), and for each row one broadcast of 4
//! `u8` of A and 2 `vpdpbusd`; 12 accumulators + 2 B + 1 broadcast fit the 16 `ymm`. The
//! epilogue is the AVX2 one ([`super::avx2::store_rows`]). This CPU family (Alder Lake and
//! later) cannot be tested here: dispatch checks it bit for bit against the scalar kernel before
//! first use.

use std::arch::x86_64::*;

use super::avx2::store_rows;
use super::{AForm, Entry, Kernel, Tile, by_rows};
use crate::kernels::Isa;
use crate::kernels::pack::{GROUP_STRIDE, KR};

const MR: usize = 6;
const _: () = assert!(MR == 6, "by_rows! instantiates 6-row tiles");
const NV: usize = 2;

/// Registry entry of the AVX-VNNI kernel.
pub(super) static KERNEL: Kernel = Kernel {
    isa: Isa::AvxVnni,
    mr: MR,
    nr: NV * 8,
    k_align: KR,
    a_max: u8::MAX,
    a_form: AForm::Rows,
    entry: Entry::Tile(tile),
};

/// # Safety
/// The [`Tile`] contract, on a CPU with AVX2 and AVX-VNNI.
unsafe fn tile(t: &Tile) {
    // SAFETY: forwarded contract; the kernel is only registered as available after detection.
    unsafe { by_rows!(tile_m, t) }
}

/// # Safety
/// As [`tile`], with `t.m == M`.
#[target_feature(enable = "avx2,avxvnni")]
unsafe fn tile_m<const M: usize>(t: &Tile) {
    // SAFETY: the tile contract: per run, `M` row pointers readable for `k_groups·4` bytes;
    // `taps·k_groups` panel groups of 16 columns (64 bytes), 16 biases and multipliers, `M`
    // output rows of `n` bytes.
    unsafe {
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
                        acc[i][v] = _mm256_dpbusd_avx_epi32(acc[i][v], a, bv[v]);
                    }
                }
                b = b.add(GROUP_STRIDE);
            }
        }
        store_rows(acc, t);
    }
}
