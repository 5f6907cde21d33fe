//! 256-entry lookup tables: any function of one `u8` activation, precomputed.
//!
//! A [`Table`] maps every input value `q ∈ 0..=255` to an output value `table[q]`; the caller
//! computes the entries (e.g. `quantize(f(dequantize(q, in)), out)` for a sigmoid or a hardswish)
//! and the kernels only index: `out[i] = table[input[i]]`, no arithmetic. A table can also be
//! fused into a conv or linear layer's requantization ([`Requant::with_table`]), which then
//! computes `table[requantize(acc, m, z, qmin, qmax)]`.
//!
//! A byte-indexed gather does not vectorize as plain Rust, so there is no [`multiversion`]
//! loop here: the portable path is a scalar loop, and on the AVX-512 tier, when the CPU has
//! AVX-512 VBMI (Ice Lake, Zen 4 and later), 64 bytes are looked up at once with two
//! `vpermi2b` (entries 0–127 and 128–255, indexed by the low 7 bits) and a blend on the top bit.
//! A lookup has no arithmetic, so both give the same bytes.
//!
//! [`Requant::with_table`]: crate::kernels::Requant::with_table
//! [`multiversion`]: super::simd::multiversion

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::elementwise::{CHUNK, tier};
use super::params::expect_len;
use super::simd::Tier;
use crate::{Error, Result};

/// A lookup table of 256 `u8` entries (serialized as a list of exactly 256 bytes).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "Vec<u8>", into = "Vec<u8>")]
pub struct Table {
    entries: [u8; 256],
}

impl Table {
    /// The number of entries.
    pub const LEN: usize = 256;

    /// The table with `entries[q]` for input `q`; `Err(Shape)` unless there are exactly 256.
    pub fn new(entries: &[u8]) -> Result<Self> {
        let entries = entries.try_into().map_err(|_| Error::Shape {
            context: "lookup table".into(),
            expected: format!("{} entries", Self::LEN),
            got: format!("{} entries", entries.len()),
        })?;
        Ok(Table { entries })
    }

    /// The table with `entries[q]` for input `q`.
    pub fn from_array(entries: [u8; 256]) -> Self {
        Table { entries }
    }

    /// The entries, indexed by input value.
    pub fn entries(&self) -> &[u8; 256] {
        &self.entries
    }

    /// The output for input `q`: `table[q]`.
    #[inline(always)]
    pub fn get(&self, q: u8) -> u8 {
        self.entries[usize::from(q)]
    }

    /// Replaces every byte `q` of `bytes` by `table[q]`, sequentially, on `tier`.
    #[inline]
    pub(crate) fn map_in_place(&self, tier: Tier, bytes: &mut [u8]) {
        let p = bytes.as_mut_ptr();
        // SAFETY: one row of `bytes.len()` bytes, readable and writable through `p`, which no
        // one else accesses while `bytes` is borrowed.
        unsafe { self.map_rows(tier, p, p, 1, bytes.len(), 0) };
    }

    /// `out[i] = table[input[i]]` on `tier`, sequentially (`out.len() == input.len()`).
    fn map(&self, tier: Tier, input: &[u8], out: &mut [u8]) {
        assert_eq!(
            input.len(),
            out.len(),
            "lookup lengths are checked by the caller"
        );
        // SAFETY: one row of `out.len()` bytes, readable from `input`, writable in `out`.
        unsafe { self.map_rows(tier, input.as_ptr(), out.as_mut_ptr(), 1, out.len(), 0) };
    }

    /// `dst[r·stride + j] = table[src[r·stride + j]]` for `rows` rows of `cols` bytes, on `tier`
    /// (the GEMM driver maps a block of output rows in place with `src == dst`).
    ///
    /// # Safety
    /// Row `r < rows` must be readable at `src + r·stride` and writable at `dst + r·stride` for
    /// `cols` bytes, with no one else accessing them during the call; `src` and `dst` are equal
    /// or their rows do not overlap.
    #[inline]
    pub(crate) unsafe fn map_rows(
        &self,
        tier: Tier,
        src: *const u8,
        dst: *mut u8,
        rows: usize,
        cols: usize,
        stride: usize,
    ) {
        #[cfg(target_arch = "x86_64")]
        if vbmi::usable(tier) {
            // SAFETY: `usable` checked the features; the caller's contract gives the rows.
            return unsafe { vbmi::map_rows(&self.entries, src, dst, rows, cols, stride) };
        }
        let _ = tier;
        for r in 0..rows {
            for j in 0..cols {
                // SAFETY: `j < cols` bytes of row `r`, by the caller's contract.
                unsafe { *dst.add(r * stride + j) = self.get(*src.add(r * stride + j)) };
            }
        }
    }
}

impl TryFrom<Vec<u8>> for Table {
    type Error = Error;

    fn try_from(entries: Vec<u8>) -> Result<Self> {
        Table::new(&entries)
    }
}

impl From<Table> for Vec<u8> {
    fn from(table: Table) -> Self {
        table.entries.to_vec()
    }
}

/// Table lookup: `out[i] = table[input[i]]`, in parallel chunks. `Err(Shape)` unless `out` has
/// the length of `input`.
pub fn lookup(input: &[u8], table: &Table, out: &mut [u8]) -> Result<()> {
    expect_len("lookup output", out.len(), input.len())?;
    let tier = tier();
    out.par_chunks_mut(CHUNK)
        .zip(input.par_chunks(CHUNK))
        .for_each(|(out, input)| table.map(tier, input, out));
    Ok(())
}

/// Table lookup in place: `data[i] = table[data[i]]`, in parallel chunks.
pub fn lookup_in_place(data: &mut [u8], table: &Table) {
    let tier = tier();
    data.par_chunks_mut(CHUNK)
        .for_each(|data| table.map_in_place(tier, data));
}

/// The AVX-512 VBMI lookup.
#[cfg(target_arch = "x86_64")]
mod vbmi {
    use std::arch::x86_64::*;

    use crate::kernels::simd::Tier;

    /// Whether [`map`] may run with `tier`: the AVX-512 tier (F/BW/VL, from an available ISA)
    /// on a CPU with VBMI.
    #[inline(always)]
    pub(super) fn usable(tier: Tier) -> bool {
        tier == Tier::Avx512 && std::arch::is_x86_feature_detected!("avx512vbmi")
    }

    /// `dst[r·stride + j] = entries[src[r·stride + j]]` for `rows` rows of `cols` bytes, 64
    /// bytes per step (a masked step for the rest of a row); each step reads its source bytes
    /// before writing, so `src == dst` is allowed.
    ///
    /// # Safety
    /// AVX-512 F/BW and VBMI must be available; the rows must be readable at `src` and writable
    /// at `dst` as [`Table::map_rows`](super::Table::map_rows) requires.
    #[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
    pub(super) unsafe fn map_rows(
        entries: &[u8; 256],
        src: *const u8,
        dst: *mut u8,
        rows: usize,
        cols: usize,
        stride: usize,
    ) {
        let p = entries.as_ptr();
        // SAFETY: `entries` holds 4·64 bytes.
        let (t0, t1, t2, t3) = unsafe {
            (
                _mm512_loadu_si512(p.cast()),
                _mm512_loadu_si512(p.add(64).cast()),
                _mm512_loadu_si512(p.add(128).cast()),
                _mm512_loadu_si512(p.add(192).cast()),
            )
        };
        for r in 0..rows {
            for j in (0..cols).step_by(64) {
                let n = (cols - j).min(64);
                let mask: __mmask64 = if n == 64 { u64::MAX } else { (1 << n) - 1 };
                let at = r * stride + j;
                // SAFETY: masked to the `n <= cols − j` bytes from `j` in row `r`, which the
                // caller's contract covers; masked-off bytes are not touched.
                unsafe {
                    let q = _mm512_maskz_loadu_epi8(mask, src.add(at).cast());
                    let low = _mm512_permutex2var_epi8(t0, q, t1);
                    let high = _mm512_permutex2var_epi8(t2, q, t3);
                    let v = _mm512_mask_blend_epi8(_mm512_movepi8_mask(q), low, high);
                    _mm512_mask_storeu_epi8(dst.add(at).cast(), mask, v);
                }
            }
        }
    }
}
