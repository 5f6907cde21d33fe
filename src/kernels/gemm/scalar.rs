//! The portable microkernel: the fallback path and the oracle the SIMD kernels are checked
//! against.

use super::{AForm, Entry, Kernel, Tile};
use crate::kernels::Isa;
use crate::kernels::pack::{GROUP_STRIDE, KR};
use crate::kernels::params::requantize_parts;

const MR: usize = 4;
const NR: usize = 16;

/// Registry entry of the scalar kernel.
pub(super) static KERNEL: Kernel = Kernel {
    isa: Isa::Scalar,
    mr: MR,
    nr: NR,
    k_align: KR,
    a_max: u8::MAX,
    a_form: AForm::Rows,
    entry: Entry::Tile(tile),
};

/// `acc = bias + Σ a·b` in wrapping `i32`, then [`requantize_parts`] per element (or `acc`
/// itself for a [`Tile::raw`] tile).
///
/// # Safety
/// The [`Tile`] contract.
pub(super) unsafe fn tile(t: &Tile) {
    let k_bytes = t.k_groups * KR;
    // SAFETY: the tile contract: `nr` biases and multipliers.
    let (bias, multipliers) = unsafe {
        (
            std::slice::from_raw_parts(t.bias, NR),
            std::slice::from_raw_parts(t.multipliers, NR),
        )
    };
    let mut acc = [[0i32; NR]; MR];
    for (i, acc) in acc.iter_mut().enumerate().take(t.m) {
        *acc = std::array::from_fn(|j| bias[j]);
        for tap in 0..t.taps {
            // SAFETY: the tile contract: row `i` of run `tap` is readable for `k_bytes`.
            let a =
                unsafe { std::slice::from_raw_parts(*t.rows.add(tap * t.tap_stride + i), k_bytes) };
            for (g, a) in a.chunks_exact(KR).enumerate() {
                let g = tap * t.k_groups + g;
                // SAFETY: group `g < taps·k_groups` of the panel holds `NR` columns of `KR`
                // bytes.
                let b = unsafe { std::slice::from_raw_parts(t.b.add(g * GROUP_STRIDE), NR * KR) };
                for (acc, b) in acc.iter_mut().zip(b.chunks_exact(KR)) {
                    let dot = (0..KR)
                        .map(|l| i32::from(a[l]) * i32::from(b[l]))
                        .sum::<i32>();
                    *acc = acc.wrapping_add(dot);
                }
            }
        }
    }
    for (i, acc) in acc.iter().enumerate().take(t.m) {
        for (j, &acc) in acc.iter().enumerate().take(t.n) {
            let out = t.out_at(i, j);
            // SAFETY: output row `i < m` is writable for `n > j` elements.
            unsafe {
                if t.raw {
                    out.cast::<i32>().write_unaligned(acc);
                } else {
                    *out = requantize_parts(acc, multipliers[j], t.zero_point, t.lo, t.hi);
                }
            }
        }
    }
}
