//! `u8 × i8 → i32` GEMM with a fused requantizing epilogue, one microkernel per ISA.
//!
//! Each microkernel is described as data ([`Kernel`]: its ISA, tile shape, how it reads A and
//! its entry point) and registered in [`KERNELS`]; the driver ([`driver`]) cuts a problem into
//! tiles and threads without knowing any ISA. Every microkernel computes, for its tile,
//! `acc[i][j] = packed_bias[j] + Σ_k a[i][k]·b[k][j]` with wrapping `i32` arithmetic and then
//! [`crate::kernels::requantize`] per element; the scalar kernel is the fallback and the oracle.
//!
//! A path may register a second, faster kernel that multiplies exactly only A bytes up to a
//! bound ([`Kernel::a_max`]; AVX2's `vpmaddubsw` kernel, for the 7-bit activations of PyTorch's
//! `x86`/`fbgemm` presets). The driver lowers the rare larger bytes to the bound and hands the
//! kernel the rest as per-row sums to add, so the result is exact on any data; [`kernel_for`]
//! picks such a kernel per call when few bytes need it.

mod amx;
pub(crate) mod driver;
mod scalar;
#[cfg(test)]
mod tests;
mod tile_emulator;
mod tile_unit;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_u7;
#[cfg(target_arch = "x86_64")]
mod avx512vnni;
#[cfg(target_arch = "x86_64")]
mod avxvnni;

use super::Isa;
use super::pack::PackedB;
use super::params::{Dequant, Epilogue, Requant};
use driver::{DenseRows, RowSource};

#[cfg(target_arch = "x86_64")]
pub(crate) use tile_unit::usable as amx_usable;

/// `$f::<M>($t)` for `M = $t.m` in `1..=5`, `$f::<6>($t)` otherwise: the edge-row
/// instantiations of a 6-row microkernel (or, given the edge counts and the full count, of
/// another height).
#[cfg(target_arch = "x86_64")]
macro_rules! by_rows {
    ($f:ident, $t:expr) => {
        by_rows!($f, $t, [1, 2, 3, 4, 5], 6)
    };
    ($f:ident, $t:expr, [$($edge:literal),*], $full:literal) => {
        match $t.m {
            $($edge => $f::<$edge>($t),)*
            _ => $f::<$full>($t),
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(crate) use by_rows;

/// One microkernel call: an `m × n` block of outputs over the whole reduction.
///
/// The reduction is `taps` consecutive runs of `k_groups` groups of `KR` steps (one run for a
/// plain GEMM; a convolution's kernel taps for an implicit GEMM): run `t` of row `i` is read
/// from `rows[t·tap_stride + i]`, and B's groups follow one another across the runs.
///
/// Safety contract, kept by the driver: for every run `t`, `rows[t·tap_stride..][0..m]` are
/// readable for `k_groups·KR` bytes (twice that for [`AForm::Widened`]; for
/// [`AForm::Strided`]: `rows[t·tap_stride + j]` and `strides[t·tap_stride + j]` are the base
/// and stride of the `group` rows of group `j`, for every group of the `mr`-padded rows, each
/// row readable for `k_groups·KR` bytes); `b` is readable for `taps·k_groups` groups
/// `GROUP_STRIDE` bytes apart of the kernel's `nr` columns; `bias` and `multipliers` hold
/// `nr` values; `out` row `i < m` is writable for `n` elements at [`Tile::out_at`]`(i, 0)`;
/// `adds` is null or holds `m` pointers, each null or readable for `add_col + nr` sums.
pub(crate) struct Tile {
    /// Pointers to the rows of A, run by run.
    pub(crate) rows: *const *const u8,
    /// Pointers between the first rows of two consecutive runs.
    pub(crate) tap_stride: usize,
    /// Runs of the reduction (`>= 1`).
    pub(crate) taps: usize,
    /// Bytes between the rows of each group, run by run ([`AForm::Strided`] only).
    pub(crate) strides: *const usize,
    /// Rows to compute (`1..=mr`).
    pub(crate) m: usize,
    /// Columns to compute (`1..=nr`).
    pub(crate) n: usize,
    /// Groups of `KR` reduction steps per run.
    pub(crate) k_groups: usize,
    /// The first `k` group of the tile's first column in a packed panel.
    pub(crate) b: *const i8,
    /// Packed biases of the tile's columns.
    pub(crate) bias: *const i32,
    /// Requantization multipliers of the tile's columns.
    pub(crate) multipliers: *const f32,
    /// Output zero point.
    pub(crate) zero_point: i32,
    /// Lower clamp `qmin − z` (applied before rounding).
    pub(crate) lo: f32,
    /// Upper clamp `qmax − z` (applied before rounding).
    pub(crate) hi: f32,
    /// The output element of row 0, column 0.
    pub(crate) out: *mut u8,
    /// Elements between output rows.
    pub(crate) ldc: usize,
    /// Whether the tile stores its `i32` accumulators (bias and `adds` included) instead of
    /// requantized bytes: the output elements are then `i32`s, which the driver turns into
    /// floats ([`super::params::Dequant`]).
    pub(crate) raw: bool,
    /// Null, or per row of the tile null or that row's sums to add to the accumulators
    /// ([`Kernel::a_max`]), read at `add_col..add_col + nr`. Only given to narrow kernels.
    pub(crate) adds: *const *const i32,
    /// Where the tile's first column is in the `adds` rows.
    pub(crate) add_col: usize,
}

impl Tile {
    /// The pointers to the `M` rows of run `tap`.
    ///
    /// # Safety
    /// `tap < taps` and `M <= m` under the tile contract (the run's row pointers are readable).
    #[inline(always)]
    pub(crate) unsafe fn run_rows<const M: usize>(&self, tap: usize) -> [*const u8; M] {
        // SAFETY: the caller's bounds keep `tap·tap_stride + i` inside the pointer array.
        std::array::from_fn(|i| unsafe { *self.rows.add(tap * self.tap_stride + i) })
    }

    /// Where output row `i`, column `col` of the tile is (a byte, or an `i32` when
    /// [`Tile::raw`]); inside the output when `i < m` and `col < n`.
    #[inline(always)]
    pub(crate) fn out_at(&self, i: usize, col: usize) -> *mut u8 {
        let element = if self.raw { 4 } else { 1 };
        self.out.wrapping_add((i * self.ldc + col) * element)
    }
}

/// A registered microkernel.
pub(crate) struct Kernel {
    /// The path it belongs to.
    pub(crate) isa: Isa,
    /// Rows per call.
    pub(crate) mr: usize,
    /// Columns per call (divides the panel width).
    pub(crate) nr: usize,
    /// The reduction is read in multiples of this many bytes (A rows are padded to it).
    pub(crate) k_align: usize,
    /// The largest A byte the kernel multiplies exactly: `u8::MAX` for a path's main kernel.
    /// For a narrow kernel the driver lowers every larger byte to `a_max` and passes the rest,
    /// `Σ (byte − a_max)·b` per row and column, in [`Tile::adds`] for the kernel to add before
    /// requantizing; [`kernel_for`] picks it only for data with few such bytes.
    pub(crate) a_max: u8,
    /// How the kernel reads A.
    pub(crate) a_form: AForm,
    /// The entry point.
    pub(crate) entry: Entry,
}

/// How a microkernel reads the rows of A (the driver prepares them so).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum AForm {
    /// Pointers to `u8` rows, run by run: in place where the source allows (the taps of an
    /// implicit GEMM), else copied.
    Rows,
    /// Groups of `group` rows (`mr` is a multiple), each read from a base pointer with one
    /// stride (AMX's strided tile loads): run by run, a group whose rows are evenly spaced is
    /// read in place (the taps of an implicit GEMM, with the pixel stride), any other group is
    /// copied; rows are padded to `mr`. Needs runs of a multiple of `k_align` bytes to read in
    /// place (else one run, copied).
    Strided {
        /// Rows per group (per tile load).
        group: usize,
    },
    /// Rows copied and zero-extended to `u16` (AVX2's `vpmaddwd` takes 16-bit operands):
    /// `2·k_groups·KR` bytes per row, one run.
    Widened,
}

/// How the driver calls a microkernel.
#[derive(Clone, Copy)]
pub(crate) enum Entry {
    /// Once per `mr × nr` tile; see [`Tile`] for the safety contract.
    Tile(unsafe fn(&Tile)),
    /// Once per driver task, for kernels with state to set up per task (AMX's tile
    /// configuration); see [`Block`] for the safety contract.
    Block(unsafe fn(&Block)),
}

/// One call of a [`Entry::Block`] kernel: a task's rows of A against consecutive panels.
///
/// Safety contract, kept by the driver: `tile` keeps the [`Tile`] contract for all its `m`
/// rows (padded to `mr`) and its `n` columns, with the columns running on over `panels`
/// panels of `B` that are `panel_len` bytes apart (biases and multipliers contiguous).
pub(crate) struct Block<'a> {
    /// Rows `0..m`, columns `0..n` (`n <= panels·PANEL`) from the first panel on.
    pub(crate) tile: Tile,
    /// Panels to compute.
    pub(crate) panels: usize,
    /// Bytes between the packed B panels.
    pub(crate) panel_len: usize,
    /// Called with each panel index `0..panels` once its output is written.
    pub(crate) finish: &'a dyn Fn(usize),
}

/// Every microkernel compiled into this build.
pub(crate) static KERNELS: &[&Kernel] = &[
    &scalar::KERNEL,
    #[cfg(target_arch = "x86_64")]
    &avx2::KERNEL,
    #[cfg(target_arch = "x86_64")]
    &avx2_u7::KERNEL,
    #[cfg(target_arch = "x86_64")]
    &avxvnni::KERNEL,
    #[cfg(target_arch = "x86_64")]
    &avx512vnni::KERNEL,
    #[cfg(target_arch = "x86_64")]
    &amx::KERNEL,
    &amx::EMULATED,
];

/// The full-range microkernel of `isa` (the scalar one for a path this build has none for).
pub(crate) fn kernel(isa: Isa) -> &'static Kernel {
    KERNELS
        .iter()
        .copied()
        .find(|k| k.isa == isa && k.a_max == u8::MAX)
        .unwrap_or(&scalar::KERNEL)
}

/// A narrow kernel is picked when at most one source byte in this many is above its `a_max`
/// (measured: 1 in 2,000 to 1 in 100,000 in ResNet-18 and MobileNetV2 under the `x86` preset).
const EXCESS_RARITY: usize = 1024;

/// The microkernel of `isa` for a GEMM over `rows`: the path's narrow kernel if it has one,
/// the padding is within its [`Kernel::a_max`] and few source bytes are above it (one pass
/// over the source, a small fraction of the GEMM that reads it), else [`kernel`].
pub(crate) fn kernel_for(isa: Isa, rows: &dyn RowSource) -> &'static Kernel {
    let suits = |k: &&Kernel| {
        let source = rows.source();
        rows.padding() <= k.a_max && bytes_above(source, k.a_max) <= source.len() / EXCESS_RARITY
    };
    KERNELS
        .iter()
        .copied()
        .find(|k| k.isa == isa && k.a_max < u8::MAX)
        .filter(suits)
        .unwrap_or_else(|| kernel(isa))
}

/// How many of `data`'s bytes are above `limit`: a byte-sized count per chunk of 255 bytes,
/// which cannot overflow and lets the compiler count in byte lanes.
fn bytes_above(data: &[u8], limit: u8) -> usize {
    data.chunks(255)
        .map(|chunk| {
            chunk
                .iter()
                .fold(0u8, |n, &b| n.wrapping_add(u8::from(b > limit)))
        })
        .map(usize::from)
        .sum()
}

/// Runs each of `isa`'s kernels on small fixed problems (edge tiles, odd `K`, zero points,
/// clamps, direct and packed A; for a narrow kernel, A within its [`Kernel::a_max`] and A
/// above it) and compares every byte with the scalar kernel.
pub(crate) fn self_check(isa: Isa) -> Result<(), String> {
    KERNELS
        .iter()
        .filter(|k| k.isa == isa)
        .try_for_each(|kernel| check_kernel(kernel))
}

/// [`self_check`] of one kernel.
pub(crate) fn check_kernel(kernel: &Kernel) -> Result<(), String> {
    let problems = [(37, 201, 70), (13, 128, 16), (1, 4, 1)]
        .into_iter()
        .flat_map(|size| [(size, kernel.a_max), (size, u8::MAX)]);
    for ((m, k, n), a_max) in problems {
        let problem = CheckProblem::new(m, k, n).narrowed(a_max);
        let (expected, got) = (problem.run(&scalar::KERNEL), problem.run(kernel));
        if let Some(i) = (0..expected.len()).find(|&i| expected[i] != got[i]) {
            return Err(format!(
                "GEMM m={m} k={k} n={n} (A up to {a_max}): output {i} is {} instead of {}",
                got[i], expected[i]
            ));
        }
        let (expected, got) = (problem.run_f32(&scalar::KERNEL), problem.run_f32(kernel));
        if let Some(i) = (0..expected.len()).find(|&i| expected[i] != got[i]) {
            return Err(format!(
                "GEMM m={m} k={k} n={n} (A up to {a_max}) with float outputs: output {i} is {} instead of {}",
                f32::from_bits(got[i]),
                f32::from_bits(expected[i])
            ));
        }
    }
    Ok(())
}

/// The float-output constants of a [`CheckProblem`] ([`Dequant`]'s, owned).
pub(crate) struct FloatParts {
    pub(crate) row_scales: Vec<f32>,
    pub(crate) row_zero_points: Vec<i32>,
    pub(crate) col_sums: Vec<i32>,
    pub(crate) bias: Vec<f32>,
}

/// A deterministic GEMM problem for [`self_check`] and the kernel tests.
pub(crate) struct CheckProblem {
    pub(crate) m: usize,
    pub(crate) k: usize,
    pub(crate) n: usize,
    pub(crate) a: Vec<u8>,
    pub(crate) w: Vec<i8>,
    pub(crate) bias: Vec<i32>,
    pub(crate) zero_point: u8,
    pub(crate) requant: Requant,
    /// Bytes between output rows (`>= n`).
    pub(crate) ldc: usize,
    /// Whether the driver spreads tasks over the current rayon pool.
    pub(crate) parallel: bool,
}

impl CheckProblem {
    /// Pseudo-random data covering the extremes of `u8` and `i8`.
    pub(crate) fn new(m: usize, k: usize, n: usize) -> Self {
        let mut state = (m * 131 + k * 17 + n) as u32 | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let a = (0..m * k).map(|_| next() as u8).collect();
        let w = (0..n * k).map(|_| next() as i8).collect();
        let bias = (0..n).map(|_| (next() % 20_001) as i32 - 10_000).collect();
        let multipliers = (0..n).map(|_| (next() % 1000 + 1) as f32 * 2e-6).collect();
        let requant = Requant {
            multipliers,
            zero_point: 100,
            qmin: 20,
            qmax: 240,
            table: None,
        };
        CheckProblem {
            m,
            k,
            n,
            a,
            w,
            bias,
            zero_point: 91,
            requant,
            ldc: n,
            parallel: false,
        }
    }

    /// The same problem with every A byte and the zero point reduced into `0..=a_max`
    /// (modulo `a_max + 1`), for a kernel exact only on such data.
    pub(crate) fn narrowed(mut self, a_max: u8) -> Self {
        let modulus = u16::from(a_max) + 1;
        let narrow = |b: u8| (u16::from(b) % modulus) as u8;
        self.a.iter_mut().for_each(|b| *b = narrow(*b));
        self.zero_point = narrow(self.zero_point);
        self
    }

    /// The packed weights (with the zero point folded into the biases).
    fn packed(&self) -> PackedB {
        let w = |_, c, kk| self.w[c * self.k + kk];
        PackedB::new(1, self.k, self.n, self.zero_point, &self.bias, w)
    }

    /// The output of `kernel`: `m` rows of `n` bytes, `ldc` bytes apart (the bytes between
    /// rows keep the value 0xEE the buffer starts with).
    pub(crate) fn run(&self, kernel: &Kernel) -> Vec<u8> {
        let packed = self.packed();
        let epilogue = Epilogue::new(&self.requant, packed.columns());
        let mut out = vec![0xEE; self.m * self.ldc];
        let rows = DenseRows::new(&self.a, self.k);
        let gemm = driver::Gemm {
            rows: &rows,
            m: self.m,
            b: &packed,
            epilogue: &epilogue,
            dequant: None,
        };
        gemm.run(kernel, &mut out, self.ldc, self.parallel);
        out
    }

    /// The per-row and per-column constants of [`CheckProblem::run_f32`] (the column scales
    /// are the requantization multipliers).
    pub(crate) fn float_parts(&self) -> FloatParts {
        FloatParts {
            row_scales: (0..self.m).map(|r| (r % 7 + 1) as f32 * 1e-3).collect(),
            row_zero_points: (0..self.m).map(|r| (r * 37 % 129) as i32).collect(),
            col_sums: (0..self.n)
                .map(|c| {
                    (0..self.k)
                        .map(|kk| i32::from(self.w[c * self.k + kk]))
                        .sum()
                })
                .collect(),
            bias: self.bias.iter().map(|&b| b as f32 * 0.01).collect(),
        }
    }

    /// The bits of the float outputs of `kernel` ([`driver::Gemm::run_f32`]), with a scale
    /// and zero point per row and a scale, weight sum and bias per column made from the
    /// problem's data: `m` rows of `n` values, `ldc` apart (the rest keeps `0xEEEEEEEE`).
    pub(crate) fn run_f32(&self, kernel: &Kernel) -> Vec<u32> {
        let packed = self.packed();
        let parts = self.float_parts();
        let dequant = Dequant {
            row_scales: &parts.row_scales,
            row_zero_points: &parts.row_zero_points,
            col_scales: &self.requant.multipliers,
            col_sums: &parts.col_sums,
            bias: &parts.bias,
        };
        let epilogue = Epilogue::unused(packed.column_count());
        let mut out = vec![f32::from_bits(0xEEEE_EEEE); self.m * self.ldc];
        let rows = DenseRows::new(&self.a, self.k);
        let gemm = driver::Gemm {
            rows: &rows,
            m: self.m,
            b: &packed,
            epilogue: &epilogue,
            dequant: Some(&dequant),
        };
        gemm.run_f32(kernel, &mut out, self.ldc, self.parallel);
        out.iter().map(|v| v.to_bits()).collect()
    }
}
