//! Quantized linear (fully connected) layer.
//!
//! `acc[r][o] = bias'[o] + Σ_i x[r][i]·w[o][i]` in wrapping `i32` with
//! `bias' = bias_i32 − z_x·Σ_i w[o][i]`, then [`crate::kernels::requantize`] per output feature
//! and the [`Requant`]'s fused lookup table, if any (`table[q]`, applied by the GEMM driver to
//! each block of output rows it has written): the same GEMM as a 1×1 convolution (rows read in place when
//! `in_features % 4 == 0`).

use serde::{Deserialize, Serialize};

use super::active_isa;
use super::gemm::{self, driver::DenseRows, driver::Gemm};
use super::pack::PackedB;
use super::params::{PreparedRequant, Requant, expect_len};
use crate::{Error, Result};

/// A linear layer's weights packed once for every kernel path (and for saving).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackedLinear {
    input_zero_point: u8,
    weights: PackedB,
}

impl PackedLinear {
    /// Packs PyTorch-ordered weights `[out_features, in_features]` (row-major) with `i32`
    /// biases (scale `s_x·s_w[o]`), folding the input zero point into the biases.
    pub fn new(
        weights: &[i8],
        out_features: usize,
        in_features: usize,
        bias: &[i32],
        input_zero_point: u8,
    ) -> Result<Self> {
        if out_features == 0 || in_features == 0 {
            return Err(Error::InvalidArgument(format!(
                "linear layer with {out_features} outputs and {in_features} inputs"
            )));
        }
        expect_len("linear weights", weights.len(), out_features * in_features)?;
        expect_len("linear bias", bias.len(), out_features)?;
        let weights = PackedB::new(
            1,
            in_features,
            out_features,
            input_zero_point,
            bias,
            |_, o, i| weights[o * in_features + i],
        );
        Ok(PackedLinear {
            input_zero_point,
            weights,
        })
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weights.k()
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weights.n()
    }

    /// The input zero point folded into the packed biases.
    pub fn input_zero_point(&self) -> u8 {
        self.input_zero_point
    }

    /// `requant` checked against this layer's output features and laid out for its packed
    /// weights, for [`qlinear_prepared`]: done once per layer, not per run.
    pub fn prepare(&self, requant: &Requant) -> Result<PreparedRequant> {
        PreparedRequant::new(requant, self.out_features(), self.weights.columns())
    }
}

/// Quantized linear: `input` `[rows, in_features]` → `output` `[rows, out_features]`.
///
/// Every ISA path and thread count writes the same bytes. Errors on wrong buffer lengths or bad
/// multipliers. A layer run many times prepares its requantization once
/// ([`PackedLinear::prepare`]) and calls [`qlinear_prepared`].
pub fn qlinear(
    input: &[u8],
    rows: usize,
    linear: &PackedLinear,
    requant: &Requant,
    output: &mut [u8],
) -> Result<()> {
    let requant = linear.prepare(requant)?;
    qlinear_prepared(input, rows, linear, &requant, output)
}

/// [`qlinear`] with the requantization prepared for `linear` by [`PackedLinear::prepare`]
/// (an error if it was prepared for another layer).
pub fn qlinear_prepared(
    input: &[u8],
    rows: usize,
    linear: &PackedLinear,
    requant: &PreparedRequant,
    output: &mut [u8],
) -> Result<()> {
    let (k, n) = (linear.in_features(), linear.out_features());
    expect_len("linear input", input.len(), rows * k)?;
    expect_len("linear output", output.len(), rows * n)?;
    let columns = linear.weights.column_count();
    let epilogue = requant.epilogue("linear requantization", n, columns)?;
    let source = DenseRows::new(input, k);
    let gemm = Gemm {
        rows: &source,
        m: rows,
        b: &linear.weights,
        epilogue,
        dequant: None,
    };
    gemm.run(gemm::kernel_for(active_isa(), &source), output, n, true);
    Ok(())
}
