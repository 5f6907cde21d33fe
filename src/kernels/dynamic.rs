//! Dynamically quantized linear layer (PyTorch's `quantize_dynamic`): int8 weights quantized
//! ahead of time, activations quantized at run time, float outputs.
//!
//! Each input row is quantized on its own, affine to 7 bits: `s_r = (max − min) / 127` over
//! the row's values and 0, `z_r = clamp(round(−min / s_r), 0, 127)` (rounding half to even),
//! and `q = clamp(round(fma(x, 1/s_r, z_r)), 0, 255)` as [`crate::kernels::quantize`] does,
//! which is at most 128. Seven bits, as PyTorch's `reduce_range` on x86, keep AVX2's
//! `vpmaddubsw` kernel exact on every input (it is exact up to 128); a scale per row (a token,
//! in a transformer) wins back more than the bit lost. The int8 GEMM accumulates
//! `acc = Σ_i q[r][i]·w[o][i]` in `i32` on any kernel path, and the output is
//! `((acc − z_r·Σ_i w[o][i]) as f32)·(s_r·s_w[o]) + bias[o]`, every float operation rounded on
//! its own, so every path and thread count writes the same bits.

use rayon::prelude::*;

use super::active_isa;
use super::elementwise::quantize_slice;
use super::gemm::{self, driver::DenseRows, driver::Gemm};
use super::pack::PackedB;
use super::params::{Dequant, Epilogue, expect_len};
use super::simd::{Tier, multiversion};
use crate::{Error, Result};

/// The largest number of input features: keeps `|acc|` and `|z_r·Σw|` below `2^31`
/// (`128·128·K` each).
pub const MAX_DYNAMIC_IN_FEATURES: usize = 1 << 16;

/// The largest quantized activation.
const Q_MAX: f32 = 127.0;

/// A linear layer's int8 weights packed for dynamic quantization, with a scale per output
/// feature and float biases.
#[derive(Clone, Debug)]
pub struct PackedDynamicLinear {
    weights: PackedB,
    scales: Vec<f32>,
    sums: Vec<i32>,
    bias: Vec<f32>,
    epilogue: Epilogue,
}

impl PackedDynamicLinear {
    /// Packs PyTorch-ordered int8 weights `[out_features, in_features]` (row-major) whose
    /// output feature `o` has scale `scales[o]` (zero point 0), with float biases. Errors on
    /// wrong lengths, more than [`MAX_DYNAMIC_IN_FEATURES`] inputs, or a scale that is not
    /// finite and positive or a bias that is not finite.
    pub fn new(
        weights: &[i8],
        out_features: usize,
        in_features: usize,
        scales: &[f32],
        bias: &[f32],
    ) -> Result<Self> {
        if out_features == 0 || in_features == 0 || in_features > MAX_DYNAMIC_IN_FEATURES {
            return Err(Error::InvalidArgument(format!(
                "dynamic linear layer with {out_features} outputs and {in_features} inputs (1..={MAX_DYNAMIC_IN_FEATURES} inputs)"
            )));
        }
        expect_len(
            "dynamic linear weights",
            weights.len(),
            out_features * in_features,
        )?;
        expect_len("dynamic linear weight scales", scales.len(), out_features)?;
        expect_len("dynamic linear bias", bias.len(), out_features)?;
        if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::InvalidArgument(format!(
                "dynamic linear weight scale {s} (must be finite and positive)"
            )));
        }
        if !bias.iter().all(|b| b.is_finite()) {
            return Err(Error::NonFinite {
                context: "dynamic linear bias".into(),
            });
        }
        let w = |o: usize, i: usize| weights[o * in_features + i];
        let sums = (0..out_features)
            .map(|o| (0..in_features).map(|i| i32::from(w(o, i))).sum())
            .collect();
        let zero_bias = vec![0; out_features];
        let packed = PackedB::new(1, in_features, out_features, 0, &zero_bias, |_, o, i| {
            w(o, i)
        });
        Ok(PackedDynamicLinear {
            epilogue: Epilogue::unused(packed.column_count()),
            weights: packed,
            scales: scales.to_vec(),
            sums,
            bias: bias.to_vec(),
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

    /// The scale of each output feature's weights.
    pub fn weight_scales(&self) -> &[f32] {
        &self.scales
    }

    /// The float bias of each output feature.
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }
}

/// Rows of float values quantized for a dynamic linear layer, each with its own parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct DynamicRows {
    /// The quantized values, `0..=128`, row after row.
    pub values: Vec<u8>,
    /// The scale of each row.
    pub scales: Vec<f32>,
    /// The zero point of each row (`0..=127`).
    pub zero_points: Vec<i32>,
}

/// Quantizes `input`, rows of `k` values, as [`qlinear_dynamic`] does (see the module
/// documentation). Errors when `input` is not whole rows or holds a NaN or an infinity.
pub fn quantize_dynamic_rows(input: &[f32], k: usize) -> Result<DynamicRows> {
    if k == 0 || !input.len().is_multiple_of(k) {
        return Err(Error::Shape {
            context: "dynamic quantization input".into(),
            expected: format!("rows of {k} values"),
            got: format!("{} values", input.len()),
        });
    }
    let tier = Tier::of(active_isa());
    let mut values = vec![0u8; input.len()];
    let params = (values.par_chunks_mut(k).zip(input.par_chunks(k)))
        .map(|(q, x)| {
            let (min, max) = row_range(tier, x);
            let scale = if max > min { (max - min) / Q_MAX } else { 1.0 };
            let zero_point = (-min / scale).round_ties_even().clamp(0.0, Q_MAX);
            // The quantizing pass also tells whether every value was finite.
            if !quantize_slice(tier, x, 1.0 / scale, zero_point, q) {
                return Err(Error::NonFinite {
                    context: "the input of a dynamic linear layer".into(),
                });
            }
            Ok((scale, zero_point as i32))
        })
        .collect::<Result<Vec<_>>>()?;
    let (scales, zero_points) = params.into_iter().unzip();
    Ok(DynamicRows {
        values,
        scales,
        zero_points,
    })
}

multiversion! {
    /// The smallest and the largest of 0 and the values of `x` (NaNs are passed over).
    fn row_range(x: &[f32]) -> (f32, f32) {
        let (mut lo, mut hi) = (0.0f32, 0.0f32);
        for &v in x {
            lo = if v < lo { v } else { lo };
            hi = if v > hi { v } else { hi };
        }
        (lo, hi)
    }
}

/// Dynamically quantized linear: `input` `[rows, in_features]` → `output`
/// `[rows, out_features]`, both `f32` (see the module documentation for the arithmetic).
///
/// Errors on wrong buffer lengths and on a NaN or infinite input (which has no scale).
pub fn qlinear_dynamic(
    input: &[f32],
    rows: usize,
    layer: &PackedDynamicLinear,
    output: &mut [f32],
) -> Result<()> {
    let (k, n) = (layer.in_features(), layer.out_features());
    expect_len("dynamic linear input", input.len(), rows * k)?;
    expect_len("dynamic linear output", output.len(), rows * n)?;
    let quantized = quantize_dynamic_rows(input, k)?;
    let dequant = Dequant {
        row_scales: &quantized.scales,
        row_zero_points: &quantized.zero_points,
        col_scales: &layer.scales,
        col_sums: &layer.sums,
        bias: &layer.bias,
    };
    let source = DenseRows::new(&quantized.values, k);
    let gemm = Gemm {
        rows: &source,
        m: rows,
        b: &layer.weights,
        epilogue: &layer.epilogue,
        dequant: Some(&dequant),
    };
    gemm.run_f32(gemm::kernel_for(active_isa(), &source), output, n, true);
    Ok(())
}
