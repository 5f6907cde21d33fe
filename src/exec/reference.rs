//! The float arithmetic of the debug model: quantized convolutions and linear layers computed
//! by Burn's own float ops in `f64`, on the integers the kernels see.
//!
//! `acc = conv(q_x − z_x, q_w) + bias_i32` is exact in `f64` (every partial sum is an integer
//! far below 2^53), so it equals the kernels' `i32` accumulator; the accumulator then goes
//! through [`kernels::requantize`] (or [`kernels::requantize_wide`] for a layer with a 16-bit
//! side, whose `i64` sums are as exact in `f64`), the one definition every kernel path matches.
//! The output integers are therefore bit-identical to the quantized model's, while nothing of
//! the kernels' packing, im2col or SIMD code is used. A dynamic linear layer's float output
//! is the kernels' float expression of that exact accumulator, so it is bit-identical too.

use burn::backend::ops::{FloatTensorOps, ModuleOps};
use burn::backend::{Dispatch, DispatchTensor};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Device, Shape, TensorData};

use crate::kernels::{self, ActQParams, Requant, RequantWide};
use crate::nn::{QConv2d, QDynamicLinear, QLayerSpec, QLinear};
use crate::ops::float_values;
use crate::{Error, Result};

type B = Dispatch;

/// The reference convolution of `input` (NHWC `[n, h, w, c]`, `u8` or `u16` bytes as the
/// layer's input) into `out` (NHWC, as its output).
pub(crate) fn conv2d(
    layer: &QConv2d,
    input: &[u8],
    [n, c, h, w]: [usize; 4],
    device: &Device,
    out: &mut [u8],
) -> Result<()> {
    let weights = layer.weights()?;
    let g = layer.geometry;
    let centred = centred(input, layer.spec.input)?;
    // (q − z) in NCHW order.
    let mut x = vec![0f64; centred.len()];
    for b in 0..n {
        for p in 0..h * w {
            for ch in 0..c {
                x[(b * c + ch) * h * w + p] = centred[(b * h * w + p) * c + ch];
            }
        }
    }
    let x = f64_tensor(x, [n, c, h, w], device);
    let wshape = [
        g.out_channels,
        g.in_channels / g.groups,
        g.kernel[0],
        g.kernel[1],
    ];
    let wt = f64_tensor(
        weights.weight.iter().map(|&v| f64::from(v)).collect(),
        wshape,
        device,
    );
    let bias = f64_tensor(
        weights.bias.iter().map(|&v| f64::from(v)).collect(),
        [g.out_channels],
        device,
    );
    let options = ConvOptions {
        stride: g.stride,
        padding: [(g.padding[0], g.padding[2]), (g.padding[1], g.padding[3])],
        dilation: g.dilation,
        groups: g.groups,
    };
    let acc = B::conv2d(x, wt, Some(bias), options);
    let dims = burn::backend::TensorMetadata::shape(&acc).to_vec();
    let [_, oc, oh, ow] = <[usize; 4]>::try_from(dims.as_slice())
        .map_err(|_| Error::InvalidGraph("reference conv gave a non-4-D result".into()))?;
    let acc = float_values::<f64>(acc)?;
    let requant = Requantizer::of(
        &layer.spec,
        || layer.packed().map(|p| &p.1),
        || layer.wide().map(|w| w.1),
    )?;
    // Requantize into NHWC.
    let mut q = vec![0u16; acc.len()];
    for b in 0..n {
        for ch in 0..oc {
            for p in 0..oh * ow {
                q[(b * oh * ow + p) * oc + ch] =
                    requant.apply(acc[(b * oc + ch) * oh * ow + p], ch)?;
            }
        }
    }
    store(&q, layer.spec.output, out)
}

/// The reference linear layer of `input` (`[rows, in]`, `u8` or `u16` bytes as the layer's
/// input) into `out` (`[rows, out]`, as its output).
pub(crate) fn linear(
    layer: &QLinear,
    input: &[u8],
    rows: usize,
    device: &Device,
    out: &mut [u8],
) -> Result<()> {
    let weights = layer.weights()?;
    let [out_features, in_features] = layer.weight.val().dims();
    let x = f64_tensor(
        centred(input, layer.spec.input)?,
        [rows, in_features],
        device,
    );
    // W is [out, in]; x · Wᵀ.
    let wt = f64_tensor(
        weights.weight.iter().map(|&v| f64::from(v)).collect(),
        [out_features, in_features],
        device,
    );
    let bias = f64_tensor(
        weights.bias.iter().map(|&v| f64::from(v)).collect(),
        [1, out_features],
        device,
    );
    let acc = B::float_add(B::float_matmul(x, B::float_swap_dims(wt, 0, 1)), bias);
    let acc = float_values::<f64>(acc)?;
    let requant = Requantizer::of(
        &layer.spec,
        || layer.packed().map(|p| &p.1),
        || layer.wide().map(|w| w.1),
    )?;
    let q = (acc.iter().enumerate())
        .map(|(k, &a)| requant.apply(a, k % out_features))
        .collect::<Result<Vec<_>>>()?;
    store(&q, layer.spec.output, out)
}

/// The reference dynamic linear layer of float `input` (rows of `in_features`) into `out`:
/// the rows quantized as the kernels quantize them, `Σ (q − z_r)·w` as an `f64` matmul (exact),
/// then the kernels' float expression `acc·(s_r·s_w) + b`.
pub(crate) fn dynamic_linear(
    layer: &QDynamicLinear,
    input: &[f32],
    device: &Device,
    out: &mut [f32],
) -> Result<()> {
    let packed = layer.packed()?;
    let (k, n) = (packed.in_features(), packed.out_features());
    let rows = kernels::quantize_dynamic_rows(input, k)?;
    let m = rows.scales.len();
    let centred = (rows.values.chunks_exact(k).zip(&rows.zero_points))
        .flat_map(|(q, &z)| q.iter().map(move |&q| f64::from(i32::from(q) - z)))
        .collect();
    let weight: Vec<f64> = (layer.weight.val().into_data().iter::<i8>())
        .map(f64::from)
        .collect();
    let x = f64_tensor(centred, [m, k], device);
    let w = f64_tensor(weight, [n, k], device);
    let acc = float_values::<f64>(B::float_matmul(x, B::float_swap_dims(w, 0, 1)))?;
    if out.len() != m * n {
        return Err(Error::Shape {
            context: "dynamic linear output".into(),
            expected: format!("{} values", m * n),
            got: format!("{} values", out.len()),
        });
    }
    let (scales, bias) = (packed.weight_scales(), packed.bias());
    for (k, (y, &acc)) in out.iter_mut().zip(&acc).enumerate() {
        let (r, o) = (k / n, k % n);
        *y = acc as i32 as f32 * (rows.scales[r] * scales[o]) + bias[o];
    }
    Ok(())
}

/// `q − z` of every value of `input`, held as `qp` says (`u8`, or `u16` in pairs of bytes).
fn centred(input: &[u8], qp: ActQParams) -> Result<Vec<f64>> {
    let z = f64::from(qp.zero_point());
    Ok(match qp {
        ActQParams::U8(_) => input.iter().map(|&q| f64::from(q) - z).collect(),
        ActQParams::U16(_) => (kernels::as_u16(input)?.iter())
            .map(|&q| f64::from(q) - z)
            .collect(),
    })
}

/// Writes `q` into `out` as `qp` holds values.
fn store(q: &[u16], qp: ActQParams, out: &mut [u8]) -> Result<()> {
    let expected = out.len() / usize::from(qp.bits() / 8);
    if q.len() != expected {
        return Err(Error::Shape {
            context: "reference layer output".into(),
            expected: format!("{expected} elements"),
            got: format!("{} elements", q.len()),
        });
    }
    match qp {
        ActQParams::U8(_) => out.iter_mut().zip(q).for_each(|(o, &v)| *o = v as u8),
        ActQParams::U16(_) => kernels::as_u16_mut(out)?.copy_from_slice(q),
    }
    Ok(())
}

/// The requantization of a layer's accumulators: the int8 kernels' or the wide kernels'.
enum Requantizer<'a> {
    Int8(&'a Requant),
    Wide(&'a RequantWide),
}

impl<'a> Requantizer<'a> {
    fn of(
        spec: &QLayerSpec,
        int8: impl FnOnce() -> Result<&'a Requant>,
        wide: impl FnOnce() -> Result<&'a RequantWide>,
    ) -> Result<Self> {
        Ok(if spec.is_wide() {
            Requantizer::Wide(wide()?)
        } else {
            Requantizer::Int8(int8()?)
        })
    }

    /// The output value of accumulator `acc` (an integer) of output channel `channel`.
    fn apply(&self, acc: f64, channel: usize) -> Result<u16> {
        match self {
            Requantizer::Int8(requant) => {
                let acc = i32::try_from(acc as i64).map_err(|_| {
                    Error::Unsupported(format!("accumulator {acc} does not fit in i32"))
                })?;
                let m = requant.multiplier(channel);
                let q = kernels::requantize(acc, m, requant.zero_point, requant.qmin, requant.qmax);
                Ok(u16::from(
                    requant.table.as_ref().map_or(q, |table| table.get(q)),
                ))
            }
            Requantizer::Wide(r) => {
                let m = r.multiplier(channel);
                Ok(kernels::requantize_wide(acc as i64, m, r.zero_point, r.qmin, r.qmax) as u16)
            }
        }
    }
}

fn f64_tensor<const D: usize>(
    values: Vec<f64>,
    shape: [usize; D],
    device: &Device,
) -> DispatchTensor {
    let data = TensorData::new(values, Shape::new(shape)).convert_dtype(DType::F64);
    B::float_from_data(data, device.as_dispatch())
}
