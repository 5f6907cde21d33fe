//! The GEMM driver: blocking, A packing, edge tiles and threads — no ISA code.
//!
//! A problem is cut into tasks of (group, block of rows, range of B panels). A task packs its
//! rows of A once (or reads them in place when the source and kernel allow), then sweeps its
//! panels: for each panel, every `mr`-row tile of the block runs the microkernel over the whole
//! reduction, so the panel stays in cache while the block of A streams from L2. Each output
//! element is computed by exactly one microkernel call over the full `K`, so the result does not
//! depend on the blocking or on the number of threads.
//!
//! A lookup table fused into the requantization is applied here, for every microkernel alike:
//! once the microkernel calls have written a task's rows of one packed panel (`PANEL` columns)
//! of requantized bytes, the driver maps that block through the table while it is in cache. Not
//! tile by tile: loading bytes right after the microkernel's narrower (masked) stores would
//! stall on store forwarding.

use std::cell::RefCell;

use rayon::prelude::*;

use super::{AForm, Block, Entry, Kernel, Tile};
use crate::kernels::pack::{KR, PANEL, PackedB};
use crate::kernels::params::Epilogue;
use crate::kernels::simd::Tier;

/// Target size of one packed block of A (L2-resident while the panels sweep over it).
const A_BLOCK_BYTES: usize = 256 * 1024;

/// The rows of the A operand of a (grouped) GEMM.
pub(crate) trait RowSource: Sync {
    /// Bytes of one row (the reduction length `K`).
    fn k(&self) -> usize;
    /// Whether the rows can be read in place, run by run ([`RowSource::tap_rows`]): the
    /// length of one run (`K` for rows stored whole; `C_in/groups` for a convolution's taps),
    /// a multiple of `KR` that divides `K`; `None` when rows must be copied.
    fn tap_len(&self) -> Option<usize>;
    /// Writes pointers to run `t` of rows `first..first + count` of group `g` to
    /// `dst[t·count..][..count]` (`dst` holds `count·K / tap_len` pointers), each readable for
    /// `tap_len` bytes; a run that lies on padding points to `padding` (`tap_len` bytes of
    /// [`RowSource::padding`]). Only called when `tap_len()` is `Some`.
    fn tap_rows(&self, g: usize, first: usize, count: usize, padding: &[u8], dst: &mut [*const u8]);
    /// The byte padding reads (a convolution's input zero point).
    fn padding(&self) -> u8;
    /// Writes the `K` bytes of rows `first..` of group `g` to `dst`, one row every `lda >= K`
    /// bytes (as many rows as `dst` holds).
    fn copy_rows(&self, g: usize, first: usize, dst: &mut [u8], lda: usize);
}

/// Rows stored one after another, `K` bytes each (a linear layer's input).
pub(crate) struct DenseRows<'a> {
    data: &'a [u8],
    k: usize,
}

impl<'a> DenseRows<'a> {
    /// Rows of `k` bytes; `data.len()` must be a multiple of `k`.
    pub(crate) fn new(data: &'a [u8], k: usize) -> Self {
        DenseRows { data, k }
    }

    fn row(&self, r: usize) -> &[u8] {
        &self.data[r * self.k..][..self.k]
    }
}

impl RowSource for DenseRows<'_> {
    fn k(&self) -> usize {
        self.k
    }

    fn tap_len(&self) -> Option<usize> {
        self.k.is_multiple_of(KR).then_some(self.k)
    }

    fn tap_rows(&self, _g: usize, first: usize, count: usize, _: &[u8], dst: &mut [*const u8]) {
        for (i, dst) in dst[..count].iter_mut().enumerate() {
            *dst = self.row(first + i).as_ptr();
        }
    }

    fn padding(&self) -> u8 {
        0
    }

    fn copy_rows(&self, _g: usize, first: usize, dst: &mut [u8], lda: usize) {
        for (i, dst) in dst.chunks_exact_mut(lda).enumerate() {
            dst[..self.k].copy_from_slice(self.row(first + i));
        }
    }
}

/// One GEMM: `m` rows per group, packed weights, requantization constants.
pub(crate) struct Gemm<'a> {
    /// Where the rows of A come from.
    pub(crate) rows: &'a dyn RowSource,
    /// Rows per group.
    pub(crate) m: usize,
    /// Packed weights and biases.
    pub(crate) b: &'a PackedB,
    /// Requantization constants per packed column.
    pub(crate) epilogue: &'a Epilogue,
}

/// A part of the output computed by one task.
struct Task {
    group: usize,
    m0: usize,
    mc: usize,
    panels: std::ops::Range<usize>,
}

/// A pointer to the output that tasks write in disjoint parts.
#[derive(Clone, Copy)]
struct SharedOut(*mut u8);

// SAFETY: tasks write disjoint (row range × column range) parts of the output, which is
// borrowed mutably for the whole parallel loop.
unsafe impl Send for SharedOut {}
// SAFETY: as above; no task reads or writes another task's part.
unsafe impl Sync for SharedOut {}

/// Per-thread buffers reused across tasks.
#[derive(Default)]
struct Scratch {
    /// Copied rows of A.
    panel: Vec<u8>,
    /// Pointers to the rows (or runs of rows) the microkernel reads.
    rows: Vec<*const u8>,
    /// One run of padding bytes.
    padding: Vec<u8>,
    /// The copied rows zero-extended, for kernels that read A as `u16`.
    wide: Vec<u16>,
}

/// Where a task's microkernel calls read A: runs of `k_groups` groups, the pointers of run
/// `t` starting `t·tap_stride` pointers after those of run 0 (see [`Tile`]).
#[derive(Clone, Copy)]
struct Runs {
    taps: usize,
    tap_stride: usize,
    k_groups: usize,
}

/// Zero-extends the `m` rows that `s.rows` points to (laid out as `runs` says) into `s.wide`,
/// each row's runs one after another, and points `s.rows` at those rows (padded to `mr`): one
/// run of `taps·k_groups` groups, `2·KR` bytes per group.
fn widen(m: usize, mr: usize, runs: Runs, s: &mut Scratch) -> Runs {
    let run_len = runs.k_groups * KR;
    let row_len = runs.taps * run_len;
    let padded_rows = m.div_ceil(mr) * mr;
    s.wide.resize(s.wide.len().max(padded_rows * row_len), 0);
    for (i, row) in s.wide.chunks_exact_mut(row_len).take(m).enumerate() {
        for (t, dst) in row.chunks_exact_mut(run_len).enumerate() {
            // SAFETY: `gather` filled run `t` of row `i < m` with a pointer readable for
            // `run_len` bytes (the `RowSource` contract or the copied panel), valid while the
            // source and `s.panel` are borrowed, which they are for this whole call.
            let src =
                unsafe { std::slice::from_raw_parts(s.rows[t * runs.tap_stride + i], run_len) };
            dst.iter_mut()
                .zip(src)
                .for_each(|(w, &a)| *w = u16::from(a));
        }
    }
    let base = s.wide.as_ptr().cast::<u8>();
    s.rows.clear();
    // SAFETY: `i·2·row_len` bytes is inside the `padded_rows` rows of `s.wide`.
    s.rows
        .extend((0..padded_rows).map(|i| unsafe { base.add(i * 2 * row_len) }));
    Runs {
        taps: 1,
        tap_stride: 0,
        k_groups: runs.taps * runs.k_groups,
    }
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

impl Gemm<'_> {
    /// Computes every output of every group with `kernel`: row `i`, column `c` of group `g` goes
    /// to `out[i·ldc + g·n + c]`. `parallel` spreads tasks over the current rayon pool.
    pub(crate) fn run(&self, kernel: &Kernel, out: &mut [u8], ldc: usize, parallel: bool) {
        let columns = self.b.groups() * self.b.n();
        assert_eq!(
            self.rows.k(),
            self.b.k(),
            "A rows and packed B disagree on K"
        );
        assert!(ldc >= columns && (self.m == 0 || out.len() >= (self.m - 1) * ldc + columns));
        assert!(self.epilogue.multipliers.len() == self.b.groups() * self.b.panels() * PANEL);
        let tasks = self.plan(kernel, parallel);
        let shared = SharedOut(out.as_mut_ptr());
        let work = |task: &Task| {
            SCRATCH
                .with(|scratch| self.run_task(kernel, task, shared, ldc, &mut scratch.borrow_mut()))
        };
        if parallel && tasks.len() > 1 {
            tasks.par_iter().for_each(work);
        } else {
            tasks.iter().for_each(work);
        }
    }

    /// Cuts the problem into tasks: row blocks sized for L2, split further (rows first, then
    /// panels) until there are a few tasks per thread.
    fn plan(&self, kernel: &Kernel, parallel: bool) -> Vec<Task> {
        let (groups, panels) = (self.b.groups(), self.b.panels());
        let lda = self.b.k().div_ceil(kernel.k_align) * kernel.k_align;
        let row_bytes = lda
            * if kernel.a_form == AForm::Widened {
                2
            } else {
                1
            };
        let threads = if parallel {
            rayon::current_num_threads()
        } else {
            1
        };
        let wanted = if threads > 1 {
            (threads * 4).div_ceil(groups)
        } else {
            1
        };
        let mut mc = (A_BLOCK_BYTES / row_bytes.max(1) / kernel.mr).max(1) * kernel.mr;
        if self.m.div_ceil(mc) < wanted {
            mc = self.m.div_ceil(wanted).div_ceil(kernel.mr).max(1) * kernel.mr;
        }
        let m_blocks = self.m.div_ceil(mc);
        let n_chunks = wanted.div_ceil(m_blocks.max(1)).clamp(1, panels.max(1));
        let per_chunk = panels.div_ceil(n_chunks).max(1);
        let mut tasks = Vec::new();
        for group in 0..groups {
            for m0 in (0..self.m).step_by(mc) {
                for p0 in (0..panels).step_by(per_chunk) {
                    let panels = p0..(p0 + per_chunk).min(panels);
                    tasks.push(Task {
                        group,
                        m0,
                        mc: mc.min(self.m - m0),
                        panels,
                    });
                }
            }
        }
        tasks
    }

    fn run_task(&self, kernel: &Kernel, task: &Task, out: SharedOut, ldc: usize, s: &mut Scratch) {
        let runs = self.gather(kernel, task, s);
        let finish = |p: usize| self.finish_panel(kernel, task, p, out, ldc);
        match kernel.entry {
            Entry::Tile(tile) => {
                for p in task.panels.clone() {
                    for c0 in (0..PANEL)
                        .step_by(kernel.nr)
                        .take_while(|c0| p * PANEL + c0 < self.b.n())
                    {
                        for i0 in (0..task.mc).step_by(kernel.mr) {
                            let rows = (runs, &s.rows[i0..]);
                            let t = self.tile(kernel, task, rows, p, c0, i0, out, ldc);
                            // SAFETY: see `Gemm::tile`; this task is the only one writing
                            // this tile.
                            unsafe { tile(&t) };
                        }
                    }
                    finish(p);
                }
            }
            Entry::Block(block) => {
                let first = task.panels.start;
                let tile = self.tile(kernel, task, (runs, &s.rows), first, 0, 0, out, ldc);
                let block_args = Block {
                    tile: Tile {
                        m: task.mc,
                        n: (self.b.n() - first * PANEL).min(task.panels.len() * PANEL),
                        ..tile
                    },
                    panels: task.panels.len(),
                    panel_len: self.b.panel(task.group, first).len(),
                    finish: &|p| finish(first + p),
                };
                // SAFETY: as for `Gemm::tile`, over the task's rows and panels: the panels of
                // group `g` are consecutive in `b`, and so are their biases and multipliers.
                unsafe { block(&block_args) };
            }
        }
    }

    /// Fills `s.rows` with the pointers the task's microkernel calls read, in the kernel's
    /// [`AForm`]: runs of rows in place when the source allows (no copy), else one run of the
    /// task's rows copied into `s.panel`, `lda` bytes apart (padded to `mr` rows); for a kernel
    /// that reads A widened, those runs zero-extended into `s.wide` in one pass.
    fn gather(&self, kernel: &Kernel, task: &Task, s: &mut Scratch) -> Runs {
        let (g, k) = (task.group, self.b.k());
        s.rows.clear();
        let runs = match self.rows.tap_len() {
            Some(tap_len) if kernel.a_form != AForm::Packed => {
                let taps = k / tap_len;
                s.padding.clear();
                s.padding.resize(tap_len, self.rows.padding());
                s.rows.resize(taps * task.mc, std::ptr::null());
                self.rows
                    .tap_rows(g, task.m0, task.mc, &s.padding, &mut s.rows);
                Runs {
                    taps,
                    tap_stride: task.mc,
                    k_groups: tap_len / KR,
                }
            }
            _ => {
                let lda = k.div_ceil(kernel.k_align) * kernel.k_align;
                let padded_rows = task.mc.div_ceil(kernel.mr) * kernel.mr;
                s.panel.resize(s.panel.len().max(padded_rows * lda), 0);
                self.rows
                    .copy_rows(g, task.m0, &mut s.panel[..task.mc * lda], lda);
                let base = s.panel.as_ptr();
                // SAFETY: `i·lda < padded_rows·lda <= s.panel.len()`.
                s.rows
                    .extend((0..padded_rows).map(|i| unsafe { base.add(i * lda) }));
                Runs {
                    taps: 1,
                    tap_stride: 0,
                    k_groups: lda / KR,
                }
            }
        };
        match kernel.a_form {
            AForm::Widened => widen(task.mc, kernel.mr, runs, s),
            AForm::Rows | AForm::Packed => runs,
        }
    }

    /// The arguments of the microkernel call for rows `i0..` of `task` (whose pointers, laid
    /// out as `runs` says, start `rows`) and columns `c0..` of panel `p`.
    ///
    /// The tile keeps the [`Tile`] contract: every run of a row holds `k_groups·KR` readable
    /// bytes (in place, see [`Gemm::gather`], or in the copied panel, `lda = k_groups·KR` bytes
    /// apart with `mr`-padded rows for kernels that need them); the panel holds
    /// `K_ALIGN >= k_align`-padded groups of `PANEL >= c0 + nr` columns; `bias` and
    /// `multipliers` hold `PANEL − c0 >= nr` values; output rows `row..row+m` are inside `out`.
    #[allow(clippy::too_many_arguments)]
    fn tile(
        &self,
        kernel: &Kernel,
        task: &Task,
        (runs, rows): (Runs, &[*const u8]),
        p: usize,
        c0: usize,
        i0: usize,
        out: SharedOut,
        ldc: usize,
    ) -> Tile {
        let (g, n, ep) = (task.group, self.b.n(), self.epilogue);
        let (col, row) = (p * PANEL + c0, task.m0 + i0);
        Tile {
            rows: rows.as_ptr(),
            tap_stride: runs.tap_stride,
            taps: runs.taps,
            lda: runs.k_groups * KR,
            m: (task.mc - i0).min(kernel.mr),
            n: (n - col).min(kernel.nr),
            k_groups: runs.k_groups,
            b: self.b.panel(g, p)[c0 * KR..].as_ptr(),
            bias: self.b.panel_bias(g, p)[c0..].as_ptr(),
            multipliers: ep.multipliers[self.b.column_offset(g, p) + c0..].as_ptr(),
            zero_point: ep.zero_point,
            lo: ep.lo,
            hi: ep.hi,
            // SAFETY: `row < m` and `g·n + col < columns <= ldc`, so the offset is inside
            // `out` (checked in `run`).
            out: unsafe { out.0.add(row * ldc + g * n + col) },
            ldc,
        }
    }

    /// Maps the task's rows of panel `p` through the fused lookup table, if any.
    fn finish_panel(&self, kernel: &Kernel, task: &Task, p: usize, out: SharedOut, ldc: usize) {
        let (g, n) = (task.group, self.b.n());
        if let Some(table) = &self.epilogue.table {
            let (col, tier) = (p * PANEL, Tier::of(kernel.isa));
            // SAFETY: rows `m0..m0+mc`, columns `g·n + col..` (at most `n − col`) of `out`:
            // the tiles this task has just written, which no other task touches.
            unsafe {
                let block = out.0.add(task.m0 * ldc + g * n + col);
                table.map_rows(tier, block, block, task.mc, (n - col).min(PANEL), ldc);
            }
        }
    }
}
