//! The hand-written int8 kernel backend.
//!
//! Everything here works on plain slices: `u8` activations with an affine zero point
//! (`x = s·(q − z)`), `i8` symmetric per-output-channel weights, `i32` biases with scale
//! `s_x·s_w[c]`, NHWC layout for images. Kernels know nothing of graphs.
//!
//! # Integer conventions (DESIGN.md §4)
//!
//! * Conv / linear accumulate `acc = Σ q_x·q_w − z_x·Σ q_w + bias_i32` in `i32` (the
//!   `−z_x·Σ q_w + bias` term is folded into a packed bias when the weights are packed;
//!   padding positions read `z_x`, so they contribute nothing). The sums use wrapping `i32`
//!   arithmetic on every path, so they are exact whenever the true sum fits in `i32` (always
//!   for `K ≤ 32768` per group and `|bias_i32| < 2^30`).
//! * The accumulator becomes `u8` through [`requantize`], the one scalar definition every
//!   SIMD path matches bit for bit, then through the [`Table`] fused into the [`Requant`], if
//!   any: `table[requantize(acc, m, z, qmin, qmax)]` on every path (GEMM, depthwise, linear).
//! * Elementwise ops (quantize, dequantize, add/sub/mul with broadcasting, cat, pooling)
//!   follow PyTorch's fbgemm/x86 arithmetic; each function's doc comment spells out the exact
//!   `f32` operations so a float "debug mode" can reproduce the integers.
//! * A dynamically quantized linear layer ([`qlinear_dynamic`]) reads and writes `f32`: it
//!   quantizes each input row at run time, runs the same GEMM with the `i32` accumulators
//!   stored, and turns them into floats with one expression every path shares.
//! * Float activations the quantized interpreter runs itself ([`gelu`],
//!   [`softmax_last_axis`]) are portable loops without fused multiply-adds: the same bits on
//!   every tier.
//! * Padding and table lookups ([`qpad_nhwc`], [`lookup`]) move bytes without arithmetic.
//!
//! # Matching PyTorch (fbgemm)
//!
//! Give a conv or linear layer `bias_i32 = quantize_bias(bias, s_x, s_w)` and
//! `Requant::new(conv_multipliers(s_x, s_w, s_y), z_y)` (plus `.with_relu()` for a fused ReLU).
//! fbgemm adds its bias as a float (`bias / (s_x·s_w)`) where we round it to `i32`, so a few
//! outputs in a thousand can differ by one step. fbgemm's depthwise kernels saturate tap-pair
//! sums to `i16` (`vpmaddubsw`); [`PackedConv2d::emulate_fbgemm_depthwise`] reproduces that,
//! exact arithmetic is the default.
//!
//! # Paths
//!
//! [`Isa`] names the instruction-set paths; [`available_isas`] lists the ones this CPU runs
//! (each SIMD GEMM path is checked bit-exact against the scalar kernel once, at first use),
//! [`active_isa`] picks the best (or the one forced by `BURN_QUANTIZE_ISA`), and [`with_isa`]
//! forces one for a closure. All paths and all thread counts give identical bytes.

mod activation;
mod binary;
mod conv;
mod dynamic;
mod elementwise;
mod gemm;
mod isa;
mod linear;
mod pack;
mod pad;
mod params;
mod peak;
mod pool;
mod simd;
mod table;
mod wide;

pub use activation::{gelu, softmax_last_axis};
pub use binary::{QBinaryOp, QTensorRef, qadd, qbinary};
pub use conv::{Conv2dGeometry, PackedConv2d, qconv2d, qconv2d_prepared};
pub use dynamic::{
    DynamicRows, MAX_DYNAMIC_IN_FEATURES, PackedDynamicLinear, qlinear_dynamic,
    quantize_dynamic_rows,
};
pub use elementwise::{
    CatInput, dequantize, dequantize_nhwc_to_nchw, qcat, quantize, quantize_nchw_to_nhwc,
    requantize_u8,
};
pub use isa::{Isa, active_isa, available_isas, with_isa};
pub use linear::{PackedLinear, qlinear, qlinear_prepared};
pub use pad::qpad_nhwc;
pub use params::{
    MAX_BIAS_I32, PreparedRequant, QParams, Requant, bias_safe_weight_scales, conv_multipliers,
    quantize_bias, requantize,
};
pub use peak::measure_peak_gmacs;
pub use pool::{
    AvgPool2d, MaxPool2d, avg_pool_output_size, max_pool_output_size, qavg_pool2d,
    qglobal_avg_pool, qmax_pool2d,
};
pub use table::{Table, lookup, lookup_in_place};
pub use wide::{
    ActQParams, PackedWide, PackedWideConv2d, RequantWide, Typed, WideInput, WideOutput,
    WideQParams, WideTensorRef, as_u16, as_u16_mut, dequantize_wide, qbinary_wide, qconv2d_wide,
    qlinear_wide, quantize_wide, requantize_wide,
};
