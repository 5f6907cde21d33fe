//! AMX-INT8 GEMM, written once over a [`TileUnit`]: the real tiles or the scalar emulator.
//!
//! One call computes a whole driver task (a block of A rows × a range of panels): the tile
//! configuration is loaded once and released at the end. Tiles: `tmm0..3` accumulate a 2×2
//! block of 16×16 `i32` tiles of C (32 rows × 32 columns) over the reduction (or over chunks
//! of a long one, see [`run`]), `tmm4/5` hold 16 rows × 64 `u8` of A (rows 0-15 and 16-31),
//! `tmm6/7` hold 16 `k`-groups × 16 columns × 4 `i8` of B (columns 0-15 and 16-31): exactly 16
//! consecutive groups of a packed panel, rows `GROUP_STRIDE` bytes apart. A comes as groups
//! of 16 rows ([`AForm::Strided`]), each one strided tile load per 64 bytes of a run: an
//! implicit GEMM's evenly spaced pixels are loaded straight from the activation with the
//! pixel stride, the rest was copied by the driver (runs a multiple of 64 bytes, rows padded
//! to 32). Each finished C block is stored once to a small buffer
//! and requantized there with its bias by the unit's 16-lane store (AVX-512 on the real unit).
//! Rows and columns past the problem are computed on padding and not stored.

use super::tile_emulator::Emulated;
#[cfg(target_arch = "x86_64")]
use super::tile_unit::Amx;
use super::tile_unit::{TileConfig, TileUnit};
use super::{AForm, Block, Entry, Kernel, Tile};
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
    a_max: u8::MAX,
    a_form: AForm::Strided { group: TR },
    entry: Entry::Block(block_amx),
};

/// Registry entry of the same kernel on the tile emulator (a test path, any CPU).
pub(super) static EMULATED: Kernel = Kernel {
    isa: Isa::AmxEmulated,
    mr: MR,
    nr: NR,
    k_align: K_ALIGN,
    a_max: u8::MAX,
    a_form: AForm::Strided { group: TR },
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
/// A reduction longer than [`KC_ALL`] steps over at least [`KC_MIN_PAIRS`] row pairs is cut
/// into equal chunks of at most [`KC`] steps so that the B chunk of a column pair (32
/// columns × 512 `k`, 16 KiB) stays in L1 while every row pair of the task passes over it;
/// between chunks the C tiles of each row pair wait in an `i32` buffer. Software-pipelined:
/// while the tiles accumulate one block, the previous finished block (stored to an L1
/// buffer) is requantized a few rows per reduction step, so the AVX-512 epilogue runs in the
/// shadow of `tdpbusd`.
///
/// # Safety
/// The [`Block`] contract for [`AForm::Strided`] groups of 16 rows, padded to a multiple of
/// 32 rows, and `k_groups % 16 == 0`; `unit` can execute.
#[inline(always)]
unsafe fn run<U: TileUnit>(unit: &mut U, blk: &Block) {
    let t = &blk.tile;
    debug_assert!(t.k_groups.is_multiple_of(KB / KR));
    let a = GroupedA {
        bases: t.rows,
        strides: t.strides,
        groups: t.tap_stride,
        steps_per_run: t.k_groups / TR,
    };
    let steps = t.taps * a.steps_per_run;
    let kc = chunk_steps(steps, t.m.div_ceil(MR));
    let rows_per_step = MR.div_ceil(kc);
    let mut drained = Drained::new();
    let chunked = if steps > kc { t.m.div_ceil(MR) } else { 0 };
    let mut partial: Vec<CBlock> = (0..chunked).map(|_| CBlock::new()).collect();
    // SAFETY: the block contract: every run holds `ceil(m / 32)·2` groups of 16 rows of
    // `k_groups·KR` bytes; the B panels hold `taps·k_groups` groups of `PANEL` columns,
    // `panel_len` bytes apart.
    unsafe {
        unit.load_config(&CONFIG);
        for p in 0..blk.panels {
            for c0 in (0..PANEL).step_by(NR).take_while(|c0| p * PANEL + c0 < t.n) {
                let b = t.b.add(p * blk.panel_len + c0 * KR).cast::<u8>();
                for k0 in (0..steps).step_by(kc) {
                    let chunk = k0..(k0 + kc).min(steps);
                    for i0 in (0..t.m).step_by(MR) {
                        if k0 == 0 {
                            zero_c(unit);
                        } else {
                            partial[i0 / MR].load_tiles(unit);
                        }
                        accumulate(unit, &a, i0 / MR, b, chunk.clone(), |unit, s| {
                            drained.requant(unit, t, (s - k0 + 1) * rows_per_step)
                        });
                        if chunk.end < steps {
                            partial[i0 / MR].store_tiles(unit);
                        } else {
                            drained.requant(unit, t, MR);
                            drained.store(unit, t, i0, p * PANEL + c0);
                        }
                    }
                }
            }
            drained.requant(unit, t, MR);
            (blk.finish)(p);
        }
        unit.release();
    }
}

/// Reduction steps of 64 per chunk: B chunks of 32 columns × 512 bytes.
const KC: usize = 8;

/// A reduction of at most this many steps is not chunked (its B slice, 32 columns × 768
/// bytes, fits L1 whole).
const KC_ALL: usize = 12;

/// Fewer row pairs than this per task do not chunk the reduction: too little reuse of a B
/// chunk to pay for spilling C.
const KC_MIN_PAIRS: usize = 4;

/// Steps per reduction chunk for a reduction of `steps` over `pairs` row pairs: all of them
/// up to [`KC_ALL`] steps or below [`KC_MIN_PAIRS`] pairs, else equal chunks of at most
/// [`KC`].
fn chunk_steps(steps: usize, pairs: usize) -> usize {
    if steps <= KC_ALL || pairs < KC_MIN_PAIRS {
        steps.max(1)
    } else {
        steps.div_ceil(steps.div_ceil(KC))
    }
}

/// `tilezero` on `tmm0..3`.
///
/// # Safety
/// The configuration is loaded.
#[inline(always)]
unsafe fn zero_c<U: TileUnit>(unit: &mut U) {
    // SAFETY: tiles 0-3 are configured.
    unsafe {
        unit.zero::<0>();
        unit.zero::<1>();
        unit.zero::<2>();
        unit.zero::<3>();
    }
}

/// The rows of A as the driver hands them over ([`AForm::Strided`]): per run of the
/// reduction and group of 16 rows, a base pointer and a stride.
struct GroupedA {
    bases: *const *const u8,
    strides: *const usize,
    /// Groups per run (16 rows each, the task's rows padded to 32).
    groups: usize,
    /// Reduction steps (64 bytes of `k`) per run.
    steps_per_run: usize,
}

impl GroupedA {
    /// Where group `j` of run `run` reads step `within` of the run, and its stride.
    ///
    /// # Safety
    /// `run < taps`, `j < groups`.
    #[inline(always)]
    unsafe fn group(&self, run: usize, j: usize, within: usize) -> (*const u8, usize) {
        let i = run * self.groups + j;
        // SAFETY: `i` is inside the base and stride arrays; the offset stays inside the
        // group's first row (`within < steps_per_run`).
        unsafe { ((*self.bases.add(i)).add(within * KB), *self.strides.add(i)) }
    }
}

/// `tmm0..3` += the 32×32 block of A (rows `32·pair..`) times B (columns `b..b+32`) over the
/// reduction steps `steps` (64 `k` each, counted over all runs); `between(unit, s)` runs
/// after the tile instructions of step `s`.
///
/// # Safety
/// `a` keeps the [`Tile`] contract for [`AForm::Strided`] with groups `2·pair` and
/// `2·pair + 1`; `steps.end·16` groups of 32 columns at `b`, `GROUP_STRIDE` apart; the
/// configuration is loaded.
#[inline(always)]
unsafe fn accumulate<U: TileUnit>(
    unit: &mut U,
    a: &GroupedA,
    pair: usize,
    b: *const u8,
    steps: std::ops::Range<usize>,
    mut between: impl FnMut(&U, usize),
) {
    let (mut run, mut within) = (steps.start / a.steps_per_run, steps.start % a.steps_per_run);
    // SAFETY: every tile load reads 16 rows of 64 bytes inside the operands above.
    unsafe {
        for s in steps {
            let (a0, lda0) = a.group(run, 2 * pair, within);
            let (a1, lda1) = a.group(run, 2 * pair + 1, within);
            let b = b.add(s * TR * GROUP_STRIDE);
            unit.load::<4>(a0, lda0);
            unit.load::<5>(a1, lda1);
            unit.load::<6>(b, GROUP_STRIDE);
            unit.load::<7>(b.add(TR * KR), GROUP_STRIDE);
            unit.dpbusd::<0, 4, 6>();
            unit.dpbusd::<1, 4, 7>();
            unit.dpbusd::<2, 5, 6>();
            unit.dpbusd::<3, 5, 7>();
            between(unit, s);
            within += 1;
            if within == a.steps_per_run {
                (run, within) = (run + 1, 0);
            }
        }
    }
}

/// `$unit.$op::<q>(tile q's place in the C block at $base, 128)` for the four C tiles `q`
/// (one call per tile: tile numbers are immediates).
macro_rules! each_c_tile {
    ($unit:ident . $op:ident, $base:expr) => {{
        let base: *mut u8 = $base;
        $unit.$op::<0>(CBlock::quarter(base, 0), NR * 4);
        $unit.$op::<1>(CBlock::quarter(base, 1), NR * 4);
        $unit.$op::<2>(CBlock::quarter(base, 2), NR * 4);
        $unit.$op::<3>(CBlock::quarter(base, 3), NR * 4);
    }};
}

/// A 32×32 `i32` block of C in memory, laid out as `tmm0..3` are stored: 128-byte rows.
#[repr(C, align(64))]
struct CBlock([[i32; NR]; MR]);

impl CBlock {
    /// A zeroed block.
    fn new() -> Self {
        CBlock([[0; NR]; MR])
    }

    /// Where tile `q` of `tmm0..3` starts in a block at `base` (rows `16·(q / 2)..`, columns
    /// `16·(q % 2)..`).
    fn quarter(base: *mut u8, q: usize) -> *mut u8 {
        base.wrapping_add(TR * (q / 2) * NR * 4 + TR * (q % 2) * 4)
    }

    /// `tilestored` of `tmm0..3` into the block.
    ///
    /// # Safety
    /// The configuration is loaded.
    #[inline(always)]
    unsafe fn store_tiles<U: TileUnit>(&mut self, unit: &mut U) {
        // SAFETY: each tile store writes 16 rows of 64 bytes at a 128-byte stride inside the
        // block, which `&mut self` owns.
        unsafe { each_c_tile!(unit.store, self.0.as_mut_ptr().cast()) }
    }

    /// `tileloadd` of `tmm0..3` from the block.
    ///
    /// # Safety
    /// The configuration is loaded.
    #[inline(always)]
    unsafe fn load_tiles<U: TileUnit>(&self, unit: &mut U) {
        // SAFETY: each tile load reads 16 rows of 64 bytes at a 128-byte stride inside the
        // block.
        unsafe { each_c_tile!(unit.load, self.0.as_ptr().cast::<u8>().cast_mut()) }
    }
}

/// A finished 32×32 block of C stored from `tmm0..3`, requantized into the output a few rows
/// at a time.
struct Drained {
    c: CBlock,
    /// Output row of `c[0]` and column of `c[i][0]` (relative to the task's tile).
    i0: usize,
    col: usize,
    /// Rows already written, rows to write.
    done: usize,
    rows: usize,
}

impl Drained {
    /// A buffer with nothing to write.
    fn new() -> Self {
        Drained {
            c: CBlock::new(),
            i0: 0,
            col: 0,
            done: 0,
            rows: 0,
        }
    }

    /// Stores `tmm0..3`, the block at rows `i0..`, columns `col..` of `t` (everything
    /// before must be written: [`Drained::requant`] up to `MR`).
    ///
    /// # Safety
    /// The configuration is loaded.
    #[inline(always)]
    unsafe fn store<U: TileUnit>(&mut self, unit: &mut U, t: &Tile, i0: usize, col: usize) {
        debug_assert_eq!(self.done, self.rows);
        // SAFETY: forwarded.
        unsafe { self.c.store_tiles(unit) };
        (self.i0, self.col, self.done, self.rows) = (i0, col, 0, (t.m - i0).min(MR));
    }

    /// Writes the stored rows below `upto` not written yet: bias, then the unit's
    /// requantizing store.
    ///
    /// # Safety
    /// The [`Tile`] contract of `t` for the stored block's rows and columns.
    #[inline(always)]
    unsafe fn requant<U: TileUnit>(&mut self, unit: &U, t: &Tile, upto: usize) {
        let end = upto.min(self.rows);
        for i in self.done..end {
            for v in 0..NR / TR {
                let j = self.col + TR * v;
                let n = (t.n - self.col).saturating_sub(TR * v).min(TR);
                if n == 0 {
                    break;
                }
                let row = &self.c.0[i][TR * v..][..TR];
                // SAFETY: column `j < t.n`, so its bias and multipliers exist and output row
                // `i0 + i < t.m` is writable for `n` elements from column `j`.
                unsafe {
                    let acc = std::array::from_fn(|l| row[l].wrapping_add(*t.bias.add(j + l)));
                    unit.requant_store(&acc, t, self.i0 + i, j, n);
                }
            }
        }
        self.done = self.done.max(end);
    }
}
