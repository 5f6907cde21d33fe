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
use crate::kernels::pack::{GROUP_STRIDE, KR, PANEL, PackedB};
use crate::kernels::params::{Dequant, Epilogue};
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
    /// The bytes the rows are made of (the input tensor; padding aside).
    fn source(&self) -> &[u8];
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

    fn source(&self) -> &[u8] {
        self.data
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
    /// For a GEMM with float outputs ([`Gemm::run_f32`]): how the accumulators become floats.
    pub(crate) dequant: Option<&'a Dequant<'a>>,
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
    /// Groups of rows copied because they are not evenly spaced ([`AForm::Strided`]).
    gathered: Vec<u8>,
    /// The base pointers of the groups while they are built ([`AForm::Strided`]).
    bases: Vec<*const u8>,
    /// The stride of each group ([`AForm::Strided`]).
    strides: Vec<usize>,
    /// Indices in `rows` of the runs holding bytes above a narrow kernel's `a_max`.
    hot: Vec<usize>,
    /// Those runs, copied with such bytes lowered to `a_max`.
    lowered: Vec<u8>,
    /// Per task row with excess bytes, the excess times B over the task's columns.
    excess_sums: Vec<i32>,
    /// Per task row, where its sums start in `excess_sums` (`usize::MAX` for none).
    slots: Vec<usize>,
    /// Per task row, a pointer to its sums or null ([`Tile::adds`]); empty when the task has
    /// no byte above `a_max`.
    adds: Vec<*const i32>,
}

/// Where a task's microkernel calls read A: runs of `k_groups` groups, the pointers of run
/// `t` starting `t·tap_stride` pointers after those of run 0 (see [`Tile`]); `tap_stride` is
/// the pointers per run.
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

/// Regroups the row pointers of `s.rows` (laid out as `runs` says, all `tap_stride` of a run
/// valid) into groups of `group` rows for a kernel with strided tile loads
/// ([`AForm::Strided`]): per run and group of the task's `m` rows padded to `mr`, a base
/// pointer in `s.rows` and a stride in `s.strides`. A group of `group` valid, evenly spaced
/// rows is read in place; any other group is copied into `s.gathered` (missing rows as zeros;
/// each byte written once, the buffer only grows).
fn into_groups(m: usize, mr: usize, group: usize, runs: Runs, s: &mut Scratch) -> Runs {
    let Scratch {
        rows,
        gathered,
        bases,
        strides,
        ..
    } = s;
    let (run_len, per_run) = (runs.k_groups * KR, runs.tap_stride);
    let groups = m.div_ceil(mr) * mr / group;
    let group_rows = |i: usize| {
        let (t, j) = (i / groups, i % groups);
        let first = (j * group).min(per_run);
        &rows[t * per_run..][first..(first + group).min(per_run)]
    };
    let spaced = |rows: &[*const u8]| (rows.len() == group).then_some(rows).and_then(even_spacing);
    let copies = (0..runs.taps * groups)
        .filter(|&i| spaced(group_rows(i)).is_none())
        .count();
    let copied_len = copies * group * run_len;
    gathered.resize(gathered.len().max(copied_len), 0);
    let mut copies = gathered[..copied_len].chunks_exact_mut(group * run_len);
    bases.clear();
    strides.clear();
    for i in 0..runs.taps * groups {
        let rows = group_rows(i);
        let (base, stride) = match spaced(rows) {
            Some(stride) => (rows[0], stride),
            None => {
                let copy = copies.next().expect("one copy per uneven group");
                let (present, missing) = copy.split_at_mut(rows.len() * run_len);
                for (&row, dst) in rows.iter().zip(present.chunks_exact_mut(run_len)) {
                    // SAFETY: every row pointer is readable for `run_len` bytes (see
                    // `Gemm::gather`) and valid while the source and `s` are borrowed.
                    dst.copy_from_slice(unsafe { std::slice::from_raw_parts(row, run_len) });
                }
                missing.fill(0);
                (copy.as_ptr(), run_len)
            }
        };
        bases.push(base);
        strides.push(stride);
    }
    std::mem::swap(rows, bases);
    Runs {
        tap_stride: groups,
        ..runs
    }
}

/// The stride of `rows` (not empty) if they are evenly spaced in ascending order (0 for one
/// row, or for rows that all point to the same bytes, like padding).
fn even_spacing(rows: &[*const u8]) -> Option<usize> {
    let first = *rows.first()? as usize;
    let stride = rows
        .get(1)
        .map_or(Some(0), |&r| (r as usize).checked_sub(first))?;
    let spaced = rows
        .iter()
        .enumerate()
        .all(|(i, &r)| r as usize == first + i * stride);
    spaced.then_some(stride)
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

impl Gemm<'_> {
    /// Computes every output of every group with `kernel`: row `i`, column `c` of group `g` goes
    /// to `out[i·ldc + g·n + c]`. `parallel` spreads tasks over the current rayon pool.
    pub(crate) fn run(&self, kernel: &Kernel, out: &mut [u8], ldc: usize, parallel: bool) {
        assert!(
            self.dequant.is_none(),
            "a GEMM with float outputs runs with run_f32"
        );
        self.check_output(out.len(), ldc);
        self.run_tasks(kernel, SharedOut(out.as_mut_ptr()), ldc, parallel);
    }

    /// [`Gemm::run`] with float outputs: the kernels store their `i32` accumulators in `out`
    /// and each task turns its block of them into floats with [`Gemm::dequant`] while it is
    /// in cache (the epilogue's requantization constants are not read).
    pub(crate) fn run_f32(&self, kernel: &Kernel, out: &mut [f32], ldc: usize, parallel: bool) {
        assert!(
            self.dequant.is_some(),
            "a GEMM with float outputs needs its Dequant"
        );
        self.check_output(out.len(), ldc);
        self.run_tasks(kernel, SharedOut(out.as_mut_ptr().cast()), ldc, parallel);
    }

    /// Panics unless the operands agree and `len` elements, `ldc` apart, hold every output.
    fn check_output(&self, len: usize, ldc: usize) {
        let columns = self.b.groups() * self.b.n();
        assert_eq!(
            self.rows.k(),
            self.b.k(),
            "A rows and packed B disagree on K"
        );
        assert!(ldc >= columns && (self.m == 0 || len >= (self.m - 1) * ldc + columns));
        assert!(self.epilogue.multipliers.len() == self.b.groups() * self.b.panels() * PANEL);
        if let Some(d) = self.dequant {
            assert!(d.rows() >= self.m && d.columns() >= columns);
        }
    }

    fn run_tasks(&self, kernel: &Kernel, out: SharedOut, ldc: usize, parallel: bool) {
        let tasks = self.plan(kernel, parallel);
        let work = |task: &Task| {
            SCRATCH.with(|scratch| self.run_task(kernel, task, out, ldc, &mut scratch.borrow_mut()))
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
                            let adds = match s.adds.is_empty() {
                                true => std::ptr::null(),
                                false => s.adds[i0..].as_ptr(),
                            };
                            let rows = (runs, &s.rows[i0..], s.strides.as_ptr(), adds);
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
                let rows = (runs, &s.rows[..], s.strides.as_ptr(), std::ptr::null());
                let tile = self.tile(kernel, task, rows, first, 0, 0, out, ldc);
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
    /// that reads A widened, those runs zero-extended into `s.wide` in one pass; for one that
    /// reads groups of rows with a stride, those runs grouped (see [`into_groups`]).
    fn gather(&self, kernel: &Kernel, task: &Task, s: &mut Scratch) -> Runs {
        let (g, k) = (task.group, self.b.k());
        s.rows.clear();
        let in_place = |tap_len: &usize| match kernel.a_form {
            AForm::Strided { .. } => tap_len.is_multiple_of(kernel.k_align),
            AForm::Rows | AForm::Widened => true,
        };
        let runs = match self.rows.tap_len().filter(in_place) {
            Some(tap_len) => {
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
                    tap_stride: padded_rows,
                    k_groups: lda / KR,
                }
            }
        };
        s.adds.clear();
        match kernel.a_form {
            AForm::Widened => widen(task.mc, kernel.mr, runs, s),
            AForm::Strided { group } => into_groups(task.mc, kernel.mr, group, runs, s),
            AForm::Rows if kernel.a_max < u8::MAX => {
                self.split_excess(kernel.a_max, task, runs, s);
                runs
            }
            AForm::Rows => runs,
        }
    }

    /// Prepares the task's runs for a narrow kernel ([`super::Kernel::a_max`]): each run
    /// holding a byte above `a_max` is copied into `s.lowered` with those bytes lowered to
    /// `a_max` (its pointer in `s.rows` moved there), and the rest, `(byte − a_max)·B[k]`, is
    /// summed per row over the task's columns into `s.excess_sums`, which `s.adds` (empty on
    /// entry) points the kernel to (left empty when no byte is above).
    fn split_excess(&self, a_max: u8, task: &Task, runs: Runs, s: &mut Scratch) {
        let run_len = runs.k_groups * KR;
        s.hot.clear();
        for t in 0..runs.taps {
            let first = t * runs.tap_stride;
            s.hot.extend((first..first + task.mc).filter(|&r| {
                // SAFETY: every run pointer of the task's rows is readable for `run_len`
                // bytes (see `Gemm::gather`).
                let run = unsafe { std::slice::from_raw_parts(s.rows[r], run_len) };
                run.iter().fold(0, |max, &b| max.max(b)) > a_max
            }));
        }
        if s.hot.is_empty() {
            return;
        }
        let columns = task.panels.len() * PANEL;
        s.lowered
            .resize(s.lowered.len().max(s.hot.len() * run_len), 0);
        s.excess_sums.clear();
        s.slots.clear();
        s.slots.resize(task.mc, usize::MAX);
        for (&r, lowered) in s.hot.iter().zip(s.lowered.chunks_exact_mut(run_len)) {
            let (t, i) = (r / runs.tap_stride, r % runs.tap_stride);
            // SAFETY: as above.
            lowered.copy_from_slice(unsafe { std::slice::from_raw_parts(s.rows[r], run_len) });
            s.rows[r] = lowered.as_ptr();
            if s.slots[i] == usize::MAX {
                s.slots[i] = s.excess_sums.len();
                s.excess_sums.resize(s.slots[i] + columns, 0);
            }
            let sums = &mut s.excess_sums[s.slots[i]..][..columns];
            for (c, byte) in lowered.iter_mut().enumerate().filter(|(_, b)| **b > a_max) {
                self.add_excess(task, t * run_len + c, i32::from(*byte - a_max), sums);
                *byte = a_max;
            }
        }
        let base = s.excess_sums.as_ptr();
        s.adds.extend(s.slots.iter().map(|&slot| match slot {
            usize::MAX => std::ptr::null(),
            // SAFETY: any other slot starts `columns` sums inside `excess_sums`.
            _ => unsafe { base.add(slot) },
        }));
    }

    /// `sums[c] += excess·B[k][c]` over the task's columns (padding columns hold zeros).
    fn add_excess(&self, task: &Task, k: usize, excess: i32, sums: &mut [i32]) {
        let (group, within) = (k / KR * GROUP_STRIDE, k % KR);
        for (p, sums) in task.panels.clone().zip(sums.chunks_exact_mut(PANEL)) {
            let weights = &self.b.panel(task.group, p)[group..][..GROUP_STRIDE];
            for (sum, w) in sums.iter_mut().zip(weights.chunks_exact(KR)) {
                *sum = sum.wrapping_add(excess * i32::from(w[within]));
            }
        }
    }

    /// The arguments of the microkernel call for rows `i0..` of `task` (whose pointers, laid
    /// out as `runs` says, start `rows`) and columns `c0..` of panel `p`, with the excess
    /// sums of those rows (`adds`, see [`Gemm::split_excess`]) if any.
    ///
    /// The tile keeps the [`Tile`] contract: every run of a row holds `k_groups·KR` readable
    /// bytes (in place, see [`Gemm::gather`], or copied, `mr`-padded, and for
    /// [`AForm::Strided`] with a base and stride per group in `rows` and `strides`, the
    /// pointers of the whole task: `i0` is 0); the panel holds
    /// `K_ALIGN >= k_align`-padded groups of `PANEL >= c0 + nr` columns; `bias` and
    /// `multipliers` hold `PANEL − c0 >= nr` values; output rows `row..row+m` are inside `out`;
    /// `adds`, if not null, holds a pointer (or null) per row, to sums over the task's columns.
    #[allow(clippy::too_many_arguments)]
    fn tile(
        &self,
        kernel: &Kernel,
        task: &Task,
        (runs, rows, strides, adds): (Runs, &[*const u8], *const usize, *const *const i32),
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
            strides,
            m: (task.mc - i0).min(kernel.mr),
            n: (n - col).min(kernel.nr),
            k_groups: runs.k_groups,
            b: self.b.panel(g, p)[c0 * KR..].as_ptr(),
            bias: self.b.panel_bias(g, p)[c0..].as_ptr(),
            multipliers: ep.multipliers[self.b.column_offset(g, p) + c0..].as_ptr(),
            zero_point: ep.zero_point,
            lo: ep.lo,
            hi: ep.hi,
            // SAFETY: `row < m` and `g·n + col < columns <= ldc`, so the element is inside
            // `out` (checked in `check_output`).
            out: unsafe { out.0.add((row * ldc + g * n + col) * self.element_bytes()) },
            ldc,
            raw: self.dequant.is_some(),
            adds,
            add_col: (p - task.panels.start) * PANEL + c0,
        }
    }

    /// Bytes per output element: 4 for the `i32`s (then floats) of [`Gemm::run_f32`].
    fn element_bytes(&self) -> usize {
        if self.dequant.is_some() { 4 } else { 1 }
    }

    /// Maps the task's rows of panel `p` through the fused lookup table, if any, or turns
    /// their accumulators into floats ([`Gemm::run_f32`]).
    fn finish_panel(&self, kernel: &Kernel, task: &Task, p: usize, out: SharedOut, ldc: usize) {
        let (g, n) = (task.group, self.b.n());
        let (col, width) = (p * PANEL, (n - p * PANEL).min(PANEL));
        if let Some(dequant) = self.dequant {
            let tier = Tier::of(kernel.isa);
            for row in task.m0..task.m0 + task.mc {
                let first = row * ldc + g * n + col;
                // SAFETY: row `row`, columns `g·n + col..` (`width` of them) of the `f32`
                // output (so 4-aligned): accumulators the task's tiles have just written,
                // which no other task touches.
                let values = unsafe {
                    std::slice::from_raw_parts_mut(out.0.cast::<i32>().add(first), width)
                };
                dequant.to_float_bits(tier, values, row, g * n + col);
            }
        } else if let Some(table) = &self.epilogue.table {
            let tier = Tier::of(kernel.isa);
            // SAFETY: rows `m0..m0+mc`, columns `g·n + col..` (`width` of them) of `out`:
            // the tiles this task has just written, which no other task touches.
            unsafe {
                let block = out.0.add(task.m0 * ldc + g * n + col);
                table.map_rows(tier, block, block, task.mc, width, ldc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{KR, Runs, Scratch, even_spacing, into_groups};

    #[test]
    fn even_spacing_needs_one_ascending_stride() {
        let data = [0u8; 64];
        let at = |offsets: &[usize]| {
            offsets
                .iter()
                .map(|&o| data[o..].as_ptr())
                .collect::<Vec<_>>()
        };
        assert_eq!(even_spacing(&at(&[0, 8, 16, 24])), Some(8));
        assert_eq!(even_spacing(&at(&[5, 5, 5])), Some(0));
        assert_eq!(even_spacing(&at(&[9])), Some(0));
        assert_eq!(even_spacing(&at(&[0, 8, 17])), None);
        assert_eq!(even_spacing(&at(&[16, 8, 0])), None);
        assert_eq!(even_spacing(&[]), None);
    }

    /// Two runs of 40 rows (padded to 64 for `mr = 32`): per run, group 0 evenly spaced (read
    /// in place), group 1 with a jump (copied), group 2 half and group 3 wholly past the rows
    /// (copied, zeros, over a scratch buffer left dirty by an earlier task).
    #[test]
    fn groups_are_read_in_place_only_when_evenly_spaced_and_whole() {
        let (run_len, rows) = (64, 40);
        let data: Vec<u8> = (0..2 * 50 * run_len).map(|i| (i % 251) as u8).collect();
        let row = |t: usize, i: usize| t * 50 + i + usize::from(i >= 20);
        let mut s = Scratch {
            rows: (0..2)
                .flat_map(|t| (0..rows).map(move |i| (t, i)))
                .map(|(t, i)| data[row(t, i) * run_len..].as_ptr())
                .collect(),
            gathered: vec![0xAB; 2 * 3 * 16 * run_len],
            ..Scratch::default()
        };
        let runs = Runs {
            taps: 2,
            tap_stride: rows,
            k_groups: run_len / KR,
        };
        let out = into_groups(rows, 32, 16, runs, &mut s);
        assert_eq!(
            (out.taps, out.tap_stride, out.k_groups),
            (2, 4, run_len / KR)
        );
        assert_eq!(
            s.gathered.len(),
            2 * 3 * 16 * run_len,
            "three copied groups per run"
        );
        for t in 0..2 {
            let (bases, strides) = (&s.rows[4 * t..][..4], &s.strides[4 * t..][..4]);
            assert_eq!(
                (bases[0], strides[0]),
                (data[row(t, 0) * run_len..].as_ptr(), run_len)
            );
            for (g, (&base, &stride)) in bases.iter().zip(strides).enumerate().skip(1) {
                assert_eq!(stride, run_len, "copies are dense");
                for r in 0..16 {
                    // SAFETY: a copied group holds 16 rows of `run_len` bytes.
                    let got = unsafe { std::slice::from_raw_parts(base.add(r * stride), run_len) };
                    let i = 16 * g + r;
                    let want = if i < rows {
                        &data[row(t, i) * run_len..][..run_len]
                    } else {
                        &[0; 64][..]
                    };
                    assert_eq!(got, want, "run {t} row {i}");
                }
            }
        }
    }
}
