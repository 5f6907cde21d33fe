//! AMX-INT8 GEMM, written once over a [`TileUnit`]: the real tiles or the scalar emulator.
//!
//! One call computes a whole driver task (a block of packed A rows × a range of panels): the
//! tile configuration is loaded once and released at the end. Tiles: `tmm0..3` accumulate a
//! 2×2 block of 16×16 `i32` tiles of C (32 rows × 32 columns) over the whole reduction,
//! `tmm4/5` hold 16 rows × 64 `u8` of A (rows 0-15 and 16-31), `tmm6/7` hold 16 `k`-groups ×
//! 16 columns × 4 `i8` of B (columns 0-15 and 16-31): exactly 16 consecutive groups of a
//! packed panel, rows `GROUP_STRIDE` bytes apart. A is packed by the driver (uniform stride,
//! `K` padded to 64, rows padded to 32). Each C block is stored once to a small buffer and
//! requantized there with its bias by the unit's 16-lane store (AVX-512 on the real unit).
//! Rows and columns past the problem are computed on padding and not stored.

use super::tile_emulator::Emulated;
#[cfg(target_arch = "x86_64")]
use super::tile_unit::Amx;
use super::tile_unit::{TileConfig, TileUnit};
use super::{Block, Entry, Kernel, Tile};
use crate::kernels::Isa;
use crate::kernels::pack::{GROUP_STRIDE, K_ALIGN, KR, PANEL};

/// Rows of a C block (two tiles).
const MR: usize = 32;
/// Columns of a C block (two tiles).
const NR: usize = 32;
/// Rows (and `k` groups) of one tile.
const TR: usize = 16;
/// Bytes of `k` per A tile row (`K_ALIGN`).
const KB: usize = 64;

/// Registry entry of the AMX kernel.
#[cfg(target_arch = "x86_64")]
pub(super) static KERNEL: Kernel = Kernel {
    isa: Isa::Amx,
    mr: MR,
    nr: NR,
    k_align: K_ALIGN,
    packed_a: true,
    entry: Entry::Block(block_amx),
};

/// Registry entry of the same kernel on the tile emulator (a test path, any CPU).
pub(super) static EMULATED: Kernel = Kernel {
    isa: Isa::AmxEmulated,
    mr: MR,
    nr: NR,
    k_align: K_ALIGN,
    packed_a: true,
    entry: Entry::Block(block_emulated),
};

/// Palette 1; tiles 0-7 all 16 rows × 64 bytes.
static CONFIG: TileConfig = TileConfig::uniform(TR as u8, KB as u16);

/// The real tile unit's entry point.
///
/// # Safety
/// The [`Block`] contract, on a CPU and process where [`super::amx_usable`] returned true.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn block_amx(blk: &Block) {
    // SAFETY: the kernel is only registered as available once `amx_usable` held; forwarded
    // contract.
    unsafe { run(&mut Amx::new(), blk) }
}

/// The emulated tile unit's entry point.
///
/// # Safety
/// The [`Block`] contract.
unsafe fn block_emulated(blk: &Block) {
    // SAFETY: forwarded contract.
    unsafe { run(&mut Emulated::new(), blk) }
}

/// The whole task on `unit`: configure, every 32×32 block of C, release.
///
/// # Safety
/// The [`Block`] contract with `rows[0..]` `lda` bytes apart from `rows[0]`, padded to a
/// multiple of 32 rows, and `k_groups % 16 == 0`; `unit` can execute.
#[inline(always)]
unsafe fn run<U: TileUnit>(unit: &mut U, blk: &Block) {
    let t = &blk.tile;
    debug_assert!(t.k_groups.is_multiple_of(KB / KR));
    // SAFETY: the block contract: `rows[0]` starts `ceil(m / 32)·32` rows of `lda` bytes; the
    // B panels hold `k_groups` groups of `PANEL` columns, `panel_len` bytes apart.
    unsafe {
        let a = *t.rows;
        unit.load_config(&CONFIG);
        for p in 0..blk.panels {
            for c0 in (0..PANEL).step_by(NR).take_while(|c0| p * PANEL + c0 < t.n) {
                let b = t.b.add(p * blk.panel_len + c0 * KR).cast::<u8>();
                for i0 in (0..t.m).step_by(MR) {
                    accumulate(unit, a.add(i0 * t.lda), t.lda, b, t.k_groups / TR);
                    drain(unit, t, i0, p * PANEL + c0);
                }
            }
            (blk.finish)(p);
        }
        unit.release();
    }
}

/// `tmm0..3` = the 32×32 block of `A[rows a..a+32] · B[columns b..b+32]` over `steps`
/// reductions of 64.
///
/// # Safety
/// 32 rows of `steps·64` bytes at `a`, `lda` apart; `steps·16` groups of 32 columns at `b`,
/// `GROUP_STRIDE` apart; the configuration is loaded.
#[inline(always)]
unsafe fn accumulate<U: TileUnit>(
    unit: &mut U,
    a: *const u8,
    lda: usize,
    b: *const u8,
    steps: usize,
) {
    // SAFETY: every tile load reads 16 rows of 64 bytes inside the operands above.
    unsafe {
        unit.zero::<0>();
        unit.zero::<1>();
        unit.zero::<2>();
        unit.zero::<3>();
        for s in 0..steps {
            let (a, b) = (a.add(s * KB), b.add(s * TR * GROUP_STRIDE));
            unit.load::<4>(a, lda);
            unit.load::<5>(a.add(TR * lda), lda);
            unit.load::<6>(b, GROUP_STRIDE);
            unit.load::<7>(b.add(TR * KR), GROUP_STRIDE);
            unit.dpbusd::<0, 4, 6>();
            unit.dpbusd::<1, 4, 7>();
            unit.dpbusd::<2, 5, 6>();
            unit.dpbusd::<3, 5, 7>();
        }
    }
}

/// Stores `tmm0..3` once and writes rows `i0..` (at most 32), columns `col..` (at most 32)
/// of the output: bias, then the unit's requantizing store.
///
/// # Safety
/// The [`Tile`] contract of `t` for rows `i0..` and columns `col..` of the block.
#[inline(always)]
unsafe fn drain<U: TileUnit>(unit: &mut U, t: &Tile, i0: usize, col: usize) {
    #[repr(C, align(64))]
    struct Acc([[i32; NR]; MR]);
    let mut c = Acc([[0; NR]; MR]);
    let stride = NR * 4;
    // SAFETY: each tile store writes 16 rows of 64 bytes at a 128-byte stride inside `c`;
    // the bias, multipliers and output rows are the tile contract's.
    unsafe {
        let base = c.0.as_mut_ptr().cast::<u8>();
        unit.store::<0>(base, stride);
        unit.store::<1>(base.add(TR * 4), stride);
        unit.store::<2>(base.add(TR * stride), stride);
        unit.store::<3>(base.add(TR * stride + TR * 4), stride);
        for (i, row) in c.0.iter().enumerate().take(t.m - i0) {
            for v in 0..NR / TR {
                let (j, n) = (col + TR * v, (t.n - col).saturating_sub(TR * v).min(TR));
                if n == 0 {
                    break;
                }
                let acc = std::array::from_fn(|l| row[TR * v + l].wrapping_add(*t.bias.add(j + l)));
                unit.requant_store(&acc, t, j, t.out.add((i0 + i) * t.ldc + j), n);
            }
        }
    }
}
