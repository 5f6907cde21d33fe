//! The wide GEMM: `i16` activations times `i16`-widened weights, summed exactly in `i64`, with
//! one microkernel per instruction-set tier and a driver that knows none of them.

use rayon::prelude::*;

use super::pack::{NR, PackedWide};
use super::{Expanded, RequantWide, WideInput, WideOutput};
use crate::Result;
use crate::kernels::params::expect_len;
use crate::kernels::simd::Tier;
use crate::kernels::{Isa, active_isa};

/// The most pairs of reduction steps one microkernel call sums in `i32`: with `i8` weights each
/// pair adds at most `2·32768·128 = 2^23` in magnitude, so 255 of them stay below `2^31`
/// (wider weights take fewer: [`PackedWide::block_pairs`]).
pub(crate) const BLOCK_PAIRS: usize = 255;

/// Rows a microkernel computes at most (the largest `mr`).
pub(crate) const MAX_MR: usize = 12;

/// One microkernel call: for rows `i < m` (`m <= mr`) of A, `lda` values apart, and one panel
/// of B, `out[i·NR + j] = Σ_{q < pairs} a_i[2q]·b[q][j][0] + a_i[2q+1]·b[q][j][1]` in wrapping
/// `i32`.
///
/// Safety contract, kept by the driver: rows `0..m` of `a` are readable for `2·pairs` values;
/// `b` for `pairs·NR·2` values; `out` is writable for `MAX_MR·NR` values; the CPU has the
/// kernel's tier.
pub(crate) struct WideTile {
    /// Row 0 of A at the block's first pair.
    pub(crate) a: *const i16,
    /// Values between two rows of A.
    pub(crate) lda: usize,
    /// Rows to compute.
    pub(crate) m: usize,
    /// The panel of B at the block's first pair.
    pub(crate) b: *const i16,
    /// Pairs of reduction steps to sum (at most [`BLOCK_PAIRS`]).
    pub(crate) pairs: usize,
    /// `MAX_MR × NR` sums, row-major.
    pub(crate) out: *mut i32,
}

/// A microkernel entry point.
///
/// # Safety
/// The [`WideTile`] contract.
pub(crate) type MicroKernel = unsafe fn(&WideTile);

/// A registered microkernel.
pub(crate) struct WideKernel {
    /// Rows per call.
    pub(crate) mr: usize,
    /// The entry point.
    pub(crate) run: MicroKernel,
    /// The tier the driver's epilogue runs at with this kernel.
    pub(crate) tier: Tier,
}

/// The scalar microkernel: the fallback and the oracle.
static SCALAR: WideKernel = WideKernel {
    mr: 4,
    run: scalar_tile,
    tier: Tier::Base,
};

/// # Safety
/// The [`WideTile`] contract.
unsafe fn scalar_tile(t: &WideTile) {
    for i in 0..t.m {
        for j in 0..NR {
            let sum = (0..2 * t.pairs).fold(0i32, |acc, k| {
                // SAFETY: `i < m` and `k < 2·pairs` stay inside row `i` of A, and
                // `(k/2)·NR + j < pairs·NR` inside the panel (see `WideTile`).
                let (x, w) = unsafe {
                    (
                        *t.a.add(i * t.lda + k),
                        *t.b.add(((k / 2) * NR + j) * 2 + k % 2),
                    )
                };
                acc.wrapping_add(i32::from(x) * i32::from(w))
            });
            // SAFETY: `i·NR + j < MAX_MR·NR` (see `WideTile`).
            unsafe { *t.out.add(i * NR + j) = sum };
        }
    }
}

/// The microkernel of `isa`'s tier.
pub(crate) fn kernel(isa: Isa) -> &'static WideKernel {
    match Tier::of(isa) {
        Tier::Base => &SCALAR,
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2 => &super::avx2::KERNEL,
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512 => &super::avx512::KERNEL,
        #[cfg(not(target_arch = "x86_64"))]
        _ => &SCALAR,
    }
}

/// One wide GEMM per group, its rows of A made on demand by a row source.
pub(crate) struct WideGemm<'a> {
    /// The packed weights.
    pub(crate) packed: &'a PackedWide,
    /// Per panel of every group (`g·panels + p`): `(offset − z_x)·Σw + bias` and the
    /// requantization of its columns, laid out as a full tile (`MAX_MR` rows of [`NR`]).
    tiles: Vec<(Vec<i64>, Expanded)>,
    /// Pairs per microkernel call.
    block_pairs: usize,
}

impl<'a> WideGemm<'a> {
    /// A GEMM reading inputs of type `I` with zero point `zero_point`.
    pub(crate) fn new<I: WideInput>(
        packed: &'a PackedWide,
        zero_point: u16,
        requant: &'a RequantWide,
    ) -> Self {
        let (groups, n, panels) = (packed.groups(), packed.n(), packed.panels());
        let z = i32::from(zero_point);
        let expanded = requant.expanded(groups * n);
        let tiles = (0..groups * panels)
            .map(|gp| {
                let (g, p) = (gp / panels, gp % panels);
                // Column `j` of the panel, or `None` past `n`.
                let column = |k: usize| Some(p * NR + k % NR).filter(|&c| c < n);
                let constants = (0..MAX_MR * NR)
                    .map(|k| column(k).map_or(0, |c| packed.column_constant(g, c, I::OFFSET, z)))
                    .collect();
                let channels: Vec<Option<usize>> = (0..MAX_MR * NR)
                    .map(|k| column(k).map(|c| g * n + c))
                    .collect();
                (constants, expanded.gathered(&channels))
            })
            .collect();
        WideGemm {
            packed,
            tiles,
            block_pairs: packed.block_pairs(I::MAX_ABS),
        }
    }

    /// Runs with `kernel`: `fill(g, first, dst)` writes rows `first..` of group `g`'s A
    /// (`i16` values, `lda = 2·pairs` apart, zero past `k`) to `dst`, as many as it holds;
    /// output row `r` is `out[r·groups·n..]`, channel `g·n + c`.
    pub(crate) fn run<O: WideOutput>(
        &self,
        kernel: &WideKernel,
        fill: &(dyn Fn(usize, usize, &mut [i16]) + Sync),
        out: &mut [O],
    ) {
        let block = kernel.mr * 8;
        let width = self.packed.groups() * self.packed.n();
        out.par_chunks_mut(block * width)
            .enumerate()
            .for_each(|(b, out)| self.block(kernel, fill, b * block, out));
    }

    /// Rows `first..first + out.len()/width` of every group.
    fn block<O: WideOutput>(
        &self,
        kernel: &WideKernel,
        fill: &(dyn Fn(usize, usize, &mut [i16]) + Sync),
        first: usize,
        out: &mut [O],
    ) {
        let p = self.packed;
        let (n, lda) = (p.n(), 2 * p.pairs());
        let width = p.groups() * n;
        let count = out.len() / width;
        let mut a = vec![0i16; count * lda];
        let mut acc = [0i64; MAX_MR * NR];
        let mut tile = [0i32; MAX_MR * NR];
        for g in 0..p.groups() {
            fill(g, first, &mut a);
            for panel in 0..p.panels() {
                let b = p.panel(g, panel);
                for i0 in (0..count).step_by(kernel.mr) {
                    let m = kernel.mr.min(count - i0);
                    acc.fill(0);
                    for q0 in (0..p.pairs()).step_by(self.block_pairs) {
                        let pairs = self.block_pairs.min(p.pairs() - q0);
                        let t = WideTile {
                            a: a[i0 * lda + 2 * q0..].as_ptr(),
                            lda,
                            m,
                            b: b[q0 * NR * 2..].as_ptr(),
                            pairs,
                            out: tile.as_mut_ptr(),
                        };
                        // SAFETY: rows i0..i0+m of `a` hold `lda = 2·pairs()` values, so each
                        // is readable for `2·pairs` from `2·q0`; the panel holds `pairs()·NR·2`
                        // values; `tile` holds `MAX_MR·NR`; the kernel's tier is the active
                        // ISA's (see `kernel`).
                        unsafe { (kernel.run)(&t) };
                        for (acc, &t) in acc.iter_mut().zip(&tile).take(m * NR) {
                            *acc += i64::from(t);
                        }
                    }
                    self.epilogue(
                        kernel.tier,
                        g,
                        panel,
                        &acc[..m * NR],
                        &mut out[i0 * width..],
                    );
                }
            }
        }
    }

    /// Requantizes the sums of one tile (rows of [`NR`] columns of panel `panel` of group `g`)
    /// into the output rows starting at `out`.
    fn epilogue<O: WideOutput>(
        &self,
        tier: Tier,
        g: usize,
        panel: usize,
        acc: &[i64],
        out: &mut [O],
    ) {
        let n = self.packed.n();
        let width = self.packed.groups() * n;
        let first = g * n + panel * NR;
        let columns = n.min(panel * NR + NR) - panel * NR;
        let (constants, requant) = &self.tiles[g * self.packed.panels() + panel];
        let mut q = [O::default(); MAX_MR * NR];
        requant.row(tier, acc, &constants[..acc.len()], &mut q[..acc.len()]);
        for (i, q) in q[..acc.len()].chunks_exact(NR).enumerate() {
            out[i * width + first..][..columns].copy_from_slice(&q[..columns]);
        }
    }
}

/// A wide linear layer: `rows` rows of `packed.k()` inputs (zero point `zero_point`) times the
/// packed weights (one group), requantized into `rows × packed.n()` outputs.
pub fn qlinear_wide<I: WideInput, O: WideOutput>(
    input: &[I],
    zero_point: u16,
    packed: &PackedWide,
    requant: &RequantWide,
    out: &mut [O],
) -> Result<()> {
    let (k, n) = (packed.k(), packed.n());
    expect_len("wide linear input", input.len() % k, 0)?;
    let rows = input.len() / k;
    expect_len("wide linear output", out.len(), rows * n)?;
    check_zero_point::<I>(zero_point)?;
    requant.check::<O>(packed.groups() * n)?;
    let gemm = WideGemm::new::<I>(packed, zero_point, requant);
    gemm.run(kernel(active_isa()), &dense_rows(input, packed), out);
    Ok(())
}

/// The row source of a GEMM whose rows of A are stored whole, `packed.k()` values each.
fn dense_rows<'a, I: WideInput>(
    input: &'a [I],
    packed: &PackedWide,
) -> impl Fn(usize, usize, &mut [i16]) + Sync + 'a {
    let (k, lda) = (packed.k(), 2 * packed.pairs());
    move |_g, first, dst| {
        for (row, dst) in input[first * k..].chunks(k).zip(dst.chunks_exact_mut(lda)) {
            for (d, &x) in dst.iter_mut().zip(row) {
                *d = x.to_i16();
            }
        }
    }
}

/// `Err(InvalidArgument)` unless `zero_point` is a value of `I`.
pub(crate) fn check_zero_point<I: WideInput>(zero_point: u16) -> Result<()> {
    if zero_point <= I::MAX {
        Ok(())
    } else {
        Err(crate::Error::InvalidArgument(format!(
            "wide kernels: input zero point {zero_point} exceeds {}",
            I::MAX
        )))
    }
}

/// Compares `isa`'s wide microkernel with the scalar one on fixed problems with extreme
/// values, `i8` and 16-bit weights (the first-use self-check).
pub(crate) fn self_check(isa: Isa) -> std::result::Result<(), String> {
    let (rows, k, n) = (29, 2 * BLOCK_PAIRS + 7, 37);
    let int8 = |_: usize, c: usize, kk: usize| i16::from(((c * 31 + kk * 17) % 256) as u8 as i8);
    let wide =
        |_: usize, c: usize, kk: usize| (((c * 7919 + kk * 104_729) % 65535) as i32 - 32767) as i16;
    let input: Vec<u16> = (0..rows * k)
        .map(|i| {
            if i % 5 == 0 {
                0
            } else {
                (i * 7919 % 65536) as u16
            }
        })
        .collect();
    let requant = RequantWide::new(vec![1e-3], 30000, u16::MAX);
    for weight in [&int8 as &dyn Fn(usize, usize, usize) -> i16, &wide] {
        let packed = PackedWide::new(1, k, n, &vec![7; n], weight).map_err(|e| e.to_string())?;
        let run = |kernel: &WideKernel| {
            let gemm = WideGemm::new::<u16>(&packed, 30000, &requant);
            let mut out = vec![0u16; rows * n];
            gemm.run(kernel, &dense_rows(&input, &packed), &mut out);
            out
        };
        if run(kernel(isa)) != run(&SCALAR) {
            return Err("the wide (16-bit) GEMM differs from the scalar kernel".into());
        }
    }
    Ok(())
}
