//! Weights packed for the wide GEMM: panels of [`NR`] columns, the reduction in pairs.

use serde::{Deserialize, Serialize};

use super::gemm::BLOCK_PAIRS;
use crate::{Error, Result};

/// Columns per packed panel (one 512-bit register of `i32` sums, two 256-bit ones).
pub(crate) const NR: usize = 16;

/// The weights of a (grouped) GEMM (`i8` widened, or `i16` in `-32767..=32767`) packed for
/// `vpmaddwd`: panel `p`
/// of group `g` holds, for every pair `q` of reduction steps, the 16 columns' weights at
/// steps `2q` and `2q + 1` side by side (zeros past `k` and `n`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackedWide {
    groups: usize,
    k: usize,
    n: usize,
    data: Vec<i16>,
    /// `Σ_k w` per column, `[groups·n]`.
    sums: Vec<i64>,
    /// `i32` bias per column, `[groups·n]`.
    bias: Vec<i32>,
    /// The largest `|w|` (at least 1): it bounds how many pairs a block sums in `i32`.
    max_abs: i32,
}

impl PackedWide {
    /// Packs `weight(g, c, k)` (column `c < n` of group `g`, reduction step `k`) with
    /// `bias[g·n + c]`.
    pub fn new(
        groups: usize,
        k: usize,
        n: usize,
        bias: &[i32],
        weight: impl Fn(usize, usize, usize) -> i16,
    ) -> Result<Self> {
        // K <= 2^20 keeps every sum below 2^51 (`2^20·2^15·2^15`, plus the constants), exact in
        // the f64 requantization.
        if groups == 0 || k == 0 || k > 1 << 20 || n == 0 || bias.len() != groups * n {
            return Err(Error::InvalidArgument(format!(
                "wide GEMM weights: {groups} groups of {k}x{n} with {} biases",
                bias.len()
            )));
        }
        let panels = n.div_ceil(NR);
        let pairs = k.div_ceil(2);
        let mut data = vec![0i16; groups * panels * pairs * NR * 2];
        let mut sums = vec![0i64; groups * n];
        let mut max_abs = 1;
        for g in 0..groups {
            for c in 0..n {
                let panel = (g * panels + c / NR) * pairs * NR * 2;
                for kk in 0..k {
                    let w = weight(g, c, kk);
                    if w == i16::MIN {
                        return Err(Error::InvalidArgument(format!(
                            "wide GEMM weights: -32768 at column {c} of group {g} (the range is -32767..=32767)"
                        )));
                    }
                    max_abs = max_abs.max(i32::from(w).abs());
                    sums[g * n + c] += i64::from(w);
                    data[panel + ((kk / 2) * NR + c % NR) * 2 + kk % 2] = w;
                }
            }
        }
        Ok(PackedWide {
            groups,
            k,
            n,
            data,
            sums,
            bias: bias.to_vec(),
            max_abs,
        })
    }

    /// Pairs one block may sum in `i32` for inputs whose `|q − OFFSET|` is at most `max_input`:
    /// `pairs·2·max_input·max|w| < 2^31`, at most [`BLOCK_PAIRS`] (255 for `i8` weights and
    /// 16-bit inputs, 16 for 12-bit weights, 1 for 16-bit weights and inputs).
    pub(crate) fn block_pairs(&self, max_input: i32) -> usize {
        let pair = 2 * i64::from(max_input.max(1)) * i64::from(self.max_abs);
        (i64::from(i32::MAX) / pair).clamp(1, BLOCK_PAIRS as i64) as usize
    }

    /// Groups.
    pub fn groups(&self) -> usize {
        self.groups
    }

    /// Reduction length per group.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Output columns per group.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Pairs of reduction steps (`k` rounded up to even, halved).
    pub(crate) fn pairs(&self) -> usize {
        self.k.div_ceil(2)
    }

    /// Panels per group.
    pub(crate) fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// The packed weights of panel `p` of group `g`: `pairs·NR·2` values.
    pub(crate) fn panel(&self, g: usize, p: usize) -> &[i16] {
        let len = self.pairs() * NR * 2;
        &self.data[(g * self.panels() + p) * len..][..len]
    }

    /// The constant added to column `c` of group `g` for inputs read with `offset` and zero
    /// point `zero_point`: `(offset − zero_point)·Σ w + bias`.
    pub(crate) fn column_constant(&self, g: usize, c: usize, offset: i32, zero_point: i32) -> i64 {
        let i = g * self.n + c;
        i64::from(offset - zero_point) * self.sums[i] + i64::from(self.bias[i])
    }
}
