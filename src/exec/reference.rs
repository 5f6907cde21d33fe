//! The float arithmetic of the debug model: quantized convolutions and linear layers computed
//! by Burn's own float ops in `f64`, on the integers the kernels see.
//!
//! `acc = conv(q_x − z_x, q_w) + bias_i32` is exact in `f64` (every partial sum is an integer
//! far below 2^53), so it equals the kernels' `i32` accumulator; the accumulator then goes
//! through [`kernels::requantize`], the one definition every kernel path matches. The output
//! integers are therefore bit-identical to the int8 model's, while nothing of the kernels'
//! packing, im2col or SIMD code is used.

use burn::backend::ops::{FloatTensorOps, ModuleOps};
use burn::backend::{Dispatch, DispatchTensor};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Device, Shape, TensorData};

use crate::kernels::{self, Requant};
use crate::nn::{QConv2d, QLinear};
use crate::ops::float_values;
use crate::{Error, Result};

type B = Dispatch;

/// The reference convolution of `input` (`u8` NHWC `[n, h, w, c]`) into `u8` NHWC.
pub(crate) fn conv2d(
    layer: &QConv2d,
    input: &[u8],
    [n, c, h, w]: [usize; 4],
    device: &Device,
) -> Result<Vec<u8>> {
    let (_, requant) = layer.packed()?;
    let weights = layer.weights()?;
    let g = layer.geometry;
    let z = i32::from(layer.spec.input.zero_point);
    // (q − z) in NCHW order, as f64.
    let mut x = vec![0f64; input.len()];
    for b in 0..n {
        for p in 0..h * w {
            for ch in 0..c {
                x[(b * c + ch) * h * w + p] =
                    f64::from(i32::from(input[(b * h * w + p) * c + ch]) - z);
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
    let acc = float_values::<f64>(&acc)?;
    // Requantize into NHWC.
    let mut out = vec![0u8; acc.len()];
    for b in 0..n {
        for ch in 0..oc {
            for p in 0..oh * ow {
                out[(b * oh * ow + p) * oc + ch] =
                    requantize(requant, acc[(b * oc + ch) * oh * ow + p], ch)?;
            }
        }
    }
    Ok(out)
}

/// The reference linear layer of `input` (`u8` `[rows, in]`) into `u8` `[rows, out]`.
pub(crate) fn linear(
    layer: &QLinear,
    input: &[u8],
    rows: usize,
    device: &Device,
) -> Result<Vec<u8>> {
    let (_, requant) = layer.packed()?;
    let weights = layer.weights()?;
    let [out_features, in_features] = layer.weight.val().dims();
    let z = f64::from(layer.spec.input.zero_point);
    let x = f64_tensor(
        input.iter().map(|&q| f64::from(q) - z).collect(),
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
    let acc = float_values::<f64>(&acc)?;
    acc.iter()
        .enumerate()
        .map(|(k, &a)| requantize(requant, a, k % out_features))
        .collect()
}

fn requantize(requant: &Requant, acc: f64, channel: usize) -> Result<u8> {
    let acc = i32::try_from(acc as i64)
        .map_err(|_| Error::Unsupported(format!("accumulator {acc} does not fit in i32")))?;
    let m = requant.multiplier(channel);
    let q = kernels::requantize(acc, m, requant.zero_point, requant.qmin, requant.qmax);
    Ok(requant.table.as_ref().map_or(q, |table| table.get(q)))
}

fn f64_tensor<const D: usize>(
    values: Vec<f64>,
    shape: [usize; D],
    device: &Device,
) -> DispatchTensor {
    let data = TensorData::new(values, Shape::new(shape)).convert_dtype(DType::F64);
    B::float_from_data(data, device.as_dispatch())
}
