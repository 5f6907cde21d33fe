//! Weight packing: the canonical B panels every GEMM path reads.
//!
//! Per group, the `K × N` weight matrix (`K` = reduction length, `N` = output channels) is cut
//! into panels of [`PANEL`] columns. A panel stores `K` rounded up to [`K_ALIGN`] as groups of
//! [`KR`] consecutive `k`: byte `(kg·PANEL + col)·KR + i` holds `w[k = kg·KR + i][col]`. That is
//! the operand layout of `vpdpbusd` (a dword of 4 `k` per output lane) and of AMX's B tiles
//! (16 columns × 4 `k` per 64-byte row, rows `PANEL·KR` bytes apart). Padding (columns past
//! `N`, `k` past `K`) holds zeros, so it contributes nothing.
//!
//! The packed bias of column `c` is `bias[c] − z_x·Σ_k w[k][c]` (wrapping to `i32`), the
//! zero-point correction folded in once.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Output channels per packed panel.
pub(crate) const PANEL: usize = 64;
/// Consecutive `k` per packed column group (one `vpdpbusd` dword).
pub(crate) const KR: usize = 4;
/// `K` is padded to a multiple of this in the packed weights (the AMX tile depth).
pub(crate) const K_ALIGN: usize = 64;
/// Bytes between two `k` groups of a panel.
pub(crate) const GROUP_STRIDE: usize = PANEL * KR;

/// Packed weights and biases of a (possibly grouped) `u8 × i8` GEMM.
///
/// The weights are stored in 64-byte aligned lines, so a kernel's 32- and 64-byte loads of a
/// panel group never straddle two cache lines (an allocation is only 16-byte aligned, and
/// which way it falls varies from run to run).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(try_from = "PackedBParts<'static>")]
pub(crate) struct PackedB {
    groups: usize,
    k: usize,
    n: usize,
    lines: Vec<Line>,
    bias: Vec<i32>,
}

/// 64 packed weights, on a 64-byte boundary.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(64))]
struct Line([i8; LINE]);

/// Bytes per [`Line`].
const LINE: usize = 64;
const _: () =
    assert!(std::mem::size_of::<Line>() == LINE && (K_ALIGN * PANEL).is_multiple_of(LINE));

/// The serialized fields of [`PackedB`] (the weights as one byte array): borrowed from a
/// `PackedB` when saved, owned and checked before they become one when loaded.
#[derive(Serialize, Deserialize)]
struct PackedBParts<'a> {
    groups: usize,
    k: usize,
    n: usize,
    data: Cow<'a, [i8]>,
    bias: Cow<'a, [i32]>,
}

impl TryFrom<PackedBParts<'static>> for PackedB {
    type Error = Error;

    fn try_from(p: PackedBParts<'static>) -> Result<Self> {
        let (groups, k, n) = (p.groups, p.k, p.n);
        // The sizes the fields imply, computed without overflow (they come from a file).
        let panels = groups.checked_mul(n.div_ceil(PANEL));
        let bytes = k
            .checked_next_multiple_of(K_ALIGN)
            .and_then(|k| k.checked_mul(PANEL))
            .zip(panels)
            .and_then(|(panel_len, panels)| panel_len.checked_mul(panels));
        let biases = panels.and_then(|panels| panels.checked_mul(PANEL));
        if groups == 0
            || k == 0
            || n == 0
            || bytes != Some(p.data.len())
            || biases != Some(p.bias.len())
        {
            return Err(Error::InvalidArgument(format!(
                "packed weights of {groups} groups, k {k}, n {n} hold {} bytes and {} biases",
                p.data.len(),
                p.bias.len()
            )));
        }
        let mut packed = PackedB {
            groups,
            k,
            n,
            lines: vec![Line([0; LINE]); p.data.len() / LINE],
            bias: p.bias.into_owned(),
        };
        packed.data_mut().copy_from_slice(&p.data);
        Ok(packed)
    }
}

impl Serialize for PackedB {
    /// The fields of [`PackedBParts`], the weights borrowed as one byte array (no copy).
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        PackedBParts {
            groups: self.groups,
            k: self.k,
            n: self.n,
            data: Cow::Borrowed(self.data()),
            bias: Cow::Borrowed(&self.bias),
        }
        .serialize(serializer)
    }
}

impl PackedB {
    /// Packs `groups` matrices of `k × n` weights; `weight(g, c, k)` reads one value and
    /// `bias[g·n + c]` is the `i32` bias of column `c` of group `g`.
    pub(crate) fn new(
        groups: usize,
        k: usize,
        n: usize,
        input_zero_point: u8,
        bias: &[i32],
        weight: impl Fn(usize, usize, usize) -> i8,
    ) -> Self {
        let mut packed = PackedB {
            groups,
            k,
            n,
            lines: Vec::new(),
            bias: Vec::new(),
        };
        let (panels, k_groups) = (packed.panels(), packed.panel_len() / GROUP_STRIDE);
        packed.lines = vec![Line([0; LINE]); groups * panels * packed.panel_len() / LINE];
        packed.bias = vec![0; groups * panels * PANEL];
        let z = i64::from(input_zero_point);
        for g in 0..groups {
            for c in 0..n {
                let (p, col) = (c / PANEL, c % PANEL);
                let panel = (g * panels + p) * packed.panel_len();
                let mut sum = 0i64;
                for kk in 0..k {
                    let w = weight(g, c, kk);
                    sum += i64::from(w);
                    packed.data_mut()[panel + ((kk / KR) * PANEL + col) * KR + kk % KR] = w;
                }
                debug_assert!(k.div_ceil(KR) <= k_groups);
                packed.bias[(g * panels + p) * PANEL + col] =
                    (i64::from(bias[g * n + c]) - z * sum) as i32;
            }
        }
        packed
    }

    /// Number of groups.
    pub(crate) fn groups(&self) -> usize {
        self.groups
    }

    /// Reduction length per group.
    pub(crate) fn k(&self) -> usize {
        self.k
    }

    /// Output channels per group.
    pub(crate) fn n(&self) -> usize {
        self.n
    }

    /// Panels per group.
    pub(crate) fn panels(&self) -> usize {
        self.n.div_ceil(PANEL)
    }

    /// Bytes of one panel: `K` padded to [`K_ALIGN`], times [`PANEL`].
    fn panel_len(&self) -> usize {
        self.k.div_ceil(K_ALIGN) * K_ALIGN * PANEL
    }

    /// The packed weights of panel `p` of group `g` (64-byte aligned).
    pub(crate) fn panel(&self, g: usize, p: usize) -> &[i8] {
        let len = self.panel_len();
        &self.data()[(g * self.panels() + p) * len..][..len]
    }

    /// All packed weights, panel after panel.
    fn data(&self) -> &[i8] {
        // SAFETY: a `Line` is `LINE` `i8`s and nothing else (`repr(C)`, size `LINE`, checked
        // above), so the lines are `len·LINE` initialized, contiguous `i8`s borrowed from `self`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast(), self.lines.len() * LINE) }
    }

    /// All packed weights, mutably.
    fn data_mut(&mut self) -> &mut [i8] {
        let len = self.lines.len() * LINE;
        // SAFETY: as in `data`, borrowed mutably from `self`.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast(), len) }
    }

    /// The [`PANEL`] packed biases of panel `p` of group `g`.
    pub(crate) fn panel_bias(&self, g: usize, p: usize) -> &[i32] {
        &self.bias[(g * self.panels() + p) * PANEL..][..PANEL]
    }

    /// Offset of panel `p` of group `g` in per-column arrays laid out like the biases.
    pub(crate) fn column_offset(&self, g: usize, p: usize) -> usize {
        (g * self.panels() + p) * PANEL
    }

    /// Packed columns of all groups, padding included (`groups · panels · PANEL`).
    pub(crate) fn column_count(&self) -> usize {
        self.groups * self.panels() * PANEL
    }

    /// The output channel of every packed column, in packed order (`None` for padding).
    pub(crate) fn columns(&self) -> impl Iterator<Item = Option<usize>> + '_ {
        (0..self.column_count()).map(move |i| {
            let (g, c) = (i / (self.panels() * PANEL), i % (self.panels() * PANEL));
            (c < self.n).then_some(g * self.n + c)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_and_folded_bias() {
        // 2 groups, k = 5, n = 3: w(g, c, k) = g*100 + c*10 + k.
        let w = |g: usize, c: usize, k: usize| (g * 50 + c * 10 + k) as i8;
        let packed = PackedB::new(2, 5, 3, 7, &[1, 2, 3, 4, 5, 6], w);
        assert_eq!(packed.panels(), 1);
        let panel = packed.panel(1, 0);
        assert_eq!(panel.len(), K_ALIGN * PANEL);
        // k = 4 is group 1, lane 0; column 2.
        assert_eq!(panel[(PANEL + 2) * KR], w(1, 2, 4));
        assert_eq!(panel[2 * KR + 3], w(1, 2, 3));
        assert_eq!(panel[3 * KR], 0, "padding column");
        let sum: i32 = (0..5).map(|k| i32::from(w(1, 2, k))).sum();
        assert_eq!(packed.panel_bias(1, 0)[2], 6 - 7 * sum);
        let columns: Vec<_> = packed.columns().collect();
        assert_eq!(columns[PANEL + 1], Some(4));
        assert_eq!(columns[PANEL + 3], None);
    }

    #[test]
    fn serde_round_trip_checks_lengths() {
        let packed = PackedB::new(1, 3, 2, 0, &[0, 0], |_, c, k| (c + k) as i8);
        let json = serde_json::to_string(&packed).expect("serialize");
        let back: PackedB = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, packed);
        assert!(
            json.contains("\"data\":["),
            "the weights stay one byte array on disk"
        );
        for p in [&packed, &back, &packed.clone()] {
            assert_eq!(
                p.panel(0, 0).as_ptr() as usize % 64,
                0,
                "panels are 64-byte aligned"
            );
        }
        for (field, edited) in [
            ("\"k\":3", "\"k\":300"),
            ("\"k\":3", &format!("\"k\":{}", usize::MAX)),
            ("\"groups\":1", &format!("\"groups\":{}", usize::MAX / 2)),
        ] {
            let broken = json.replacen(field, edited, 1);
            assert_ne!(broken, json);
            let err = serde_json::from_str::<PackedB>(&broken).expect_err(edited);
            assert!(err.to_string().contains("packed weights of"), "{err}");
        }
    }
}
