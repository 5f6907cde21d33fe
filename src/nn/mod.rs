//! Quantized layers as Burn modules: `QConv2d` and `QLinear` hold their int8 weights, i32
//! biases and weight scales as Burn parameters (so they are saved in Burn records), and the
//! weights packed once for the int8 kernels.

use burn::module::{Module, Param, ParamId};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::graph::Activation;
use crate::kernels::{
    self, Conv2dGeometry, PackedConv2d, PackedLinear, PreparedRequant, QParams, Requant, Table,
};
use crate::{Error, Result};

/// What a quantized conv or linear layer computes besides its weights: the activation
/// parameters of its input and output, and a fused activation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QLayerSpec {
    /// Quantization parameters of the input.
    pub input: QParams,
    /// Quantization parameters of the output.
    pub output: QParams,
    /// ReLU or clamp applied in the requantization.
    pub activation: Option<Activation>,
    /// A pointwise function fused into the output (hard-swish after a conv): the requantized
    /// `u8` goes through this table, whose input has the `output` parameters.
    #[serde(default)]
    pub table: Option<Table>,
}

impl QLayerSpec {
    /// The requantization of a layer with these weight scales (one per output channel).
    pub fn requant(&self, weight_scales: &[f32]) -> Result<Requant> {
        let multipliers =
            kernels::conv_multipliers(self.input.scale, weight_scales, self.output.scale);
        let requant = Requant::new(multipliers, self.output.zero_point);
        let requant = match &self.table {
            Some(table) => requant.with_table(table.clone()),
            None => requant,
        };
        Ok(match self.activation {
            None => requant,
            Some(Activation::Relu) => requant.with_relu(),
            Some(Activation::Clamp { min, max }) => {
                // The bounds quantized as the kernels quantize any value.
                let mut q = [0u8; 2];
                kernels::quantize(&[min as f32, max as f32], self.output, &mut q)?;
                Requant {
                    qmin: q[0],
                    qmax: q[1],
                    ..requant
                }
            }
        })
    }
}

/// A quantized 2-D convolution (PyTorch's `torch.ao.nn.quantized.Conv2d`).
#[derive(Module, Debug)]
pub struct QConv2d {
    /// Weights `[out, in/groups, kh, kw]`, `i8`, symmetric.
    pub weight: Param<Tensor<4, Int>>,
    /// Bias, `i32` with scale `s_x·s_w[c]`.
    pub bias: Param<Tensor<1, Int>>,
    /// Weight scale of every output channel.
    pub weight_scale: Param<Tensor<1>>,
    /// The convolution's shape.
    #[module(skip)]
    pub geometry: Conv2dGeometry,
    /// Activation parameters and fused activation.
    #[module(skip)]
    pub spec: QLayerSpec,
    #[module(skip)]
    packed: Option<Packed<PackedConv2d>>,
}

/// A quantized linear layer (PyTorch's `torch.ao.nn.quantized.Linear`).
#[derive(Module, Debug)]
pub struct QLinear {
    /// Weights `[out, in]` (PyTorch's layout), `i8`, symmetric.
    pub weight: Param<Tensor<2, Int>>,
    /// Bias, `i32` with scale `s_x·s_w[o]`.
    pub bias: Param<Tensor<1, Int>>,
    /// Weight scale of every output feature.
    pub weight_scale: Param<Tensor<1>>,
    /// Activation parameters and fused activation.
    #[module(skip)]
    pub spec: QLayerSpec,
    #[module(skip)]
    packed: Option<Packed<PackedLinear>>,
}

/// The integer content of a quantized conv or linear layer.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct QWeights {
    /// `i8` weights in PyTorch's layout.
    pub weight: Vec<i8>,
    /// `i32` biases.
    pub bias: Vec<i32>,
    /// One scale per output channel.
    pub scales: Vec<f32>,
}

impl QConv2d {
    /// A layer from its integer weights; packs them for the kernels.
    pub fn new(
        geometry: Conv2dGeometry,
        weights: QWeights,
        spec: QLayerSpec,
        device: &Device,
    ) -> Result<Self> {
        let mut layer = Self::unpacked(geometry, weights, spec, device);
        layer.pack()?;
        Ok(layer)
    }

    /// A layer holding `weights`, not packed yet (a record is loaded into it, then
    /// [`pack`](Self::pack) is called).
    pub fn unpacked(
        geometry: Conv2dGeometry,
        weights: QWeights,
        spec: QLayerSpec,
        device: &Device,
    ) -> Self {
        let g = geometry;
        let shape = [
            g.out_channels,
            g.in_channels / g.groups.max(1),
            g.kernel[0],
            g.kernel[1],
        ];
        QConv2d {
            weight: int_param(TensorData::new(weights.weight, shape), DType::I8, device),
            bias: int_param(
                TensorData::new(weights.bias, [g.out_channels]),
                DType::I32,
                device,
            ),
            weight_scale: Param::initialized(
                ParamId::new(),
                Tensor::from_data(TensorData::new(weights.scales, [g.out_channels]), device),
            ),
            geometry,
            spec,
            packed: None,
        }
    }

    /// Packs the weights held in the parameters (after a record was loaded into them).
    pub fn pack(&mut self) -> Result<()> {
        let w = self.weights()?;
        check_channels("QConv2d", w.scales.len(), self.geometry.out_channels)?;
        let packed = PackedConv2d::new(
            self.geometry,
            &w.weight,
            &w.bias,
            self.spec.input.zero_point,
        )?;
        let requant = self.spec.requant(&w.scales)?;
        let prepared = packed.prepare(&requant)?;
        self.packed = Some(Packed {
            layer: (packed, requant),
            prepared,
        });
        Ok(())
    }

    /// The integer weights, biases and scales.
    pub fn weights(&self) -> Result<QWeights> {
        read_weights(
            self.weight.val().into_data(),
            &self.bias,
            &self.weight_scale,
        )
    }

    /// The packed weights and requantization the kernels use.
    pub fn packed(&self) -> Result<&(PackedConv2d, Requant)> {
        packed(&self.packed, "QConv2d").map(|p| &p.layer)
    }

    /// The packed weights and the requantization prepared for them
    /// ([`kernels::qconv2d_prepared`]'s arguments).
    pub fn prepared(&self) -> Result<(&PackedConv2d, &PreparedRequant)> {
        packed(&self.packed, "QConv2d").map(|p| (&p.layer.0, &p.prepared))
    }
}

impl QLinear {
    /// A layer from its integer weights (`[out, in]`); packs them for the kernels.
    pub fn new(
        out_features: usize,
        in_features: usize,
        weights: QWeights,
        spec: QLayerSpec,
        device: &Device,
    ) -> Result<Self> {
        let mut layer = Self::unpacked(out_features, in_features, weights, spec, device);
        layer.pack()?;
        Ok(layer)
    }

    /// A layer holding `weights`, not packed yet.
    pub fn unpacked(
        out_features: usize,
        in_features: usize,
        weights: QWeights,
        spec: QLayerSpec,
        device: &Device,
    ) -> Self {
        QLinear {
            weight: int_param(
                TensorData::new(weights.weight, [out_features, in_features]),
                DType::I8,
                device,
            ),
            bias: int_param(
                TensorData::new(weights.bias, [out_features]),
                DType::I32,
                device,
            ),
            weight_scale: Param::initialized(
                ParamId::new(),
                Tensor::from_data(TensorData::new(weights.scales, [out_features]), device),
            ),
            spec,
            packed: None,
        }
    }

    /// Packs the weights held in the parameters (after a record was loaded into them).
    pub fn pack(&mut self) -> Result<()> {
        let [out_features, in_features] = self.weight.val().dims();
        let w = self.weights()?;
        check_channels("QLinear", w.scales.len(), out_features)?;
        let packed = PackedLinear::new(
            &w.weight,
            out_features,
            in_features,
            &w.bias,
            self.spec.input.zero_point,
        )?;
        let requant = self.spec.requant(&w.scales)?;
        let prepared = packed.prepare(&requant)?;
        self.packed = Some(Packed {
            layer: (packed, requant),
            prepared,
        });
        Ok(())
    }

    /// The integer weights, biases and scales.
    pub fn weights(&self) -> Result<QWeights> {
        read_weights(
            self.weight.val().into_data(),
            &self.bias,
            &self.weight_scale,
        )
    }

    /// The packed weights and requantization the kernels use.
    pub fn packed(&self) -> Result<&(PackedLinear, Requant)> {
        packed(&self.packed, "QLinear").map(|p| &p.layer)
    }

    /// The packed weights and the requantization prepared for them
    /// ([`kernels::qlinear_prepared`]'s arguments).
    pub fn prepared(&self) -> Result<(&PackedLinear, &PreparedRequant)> {
        packed(&self.packed, "QLinear").map(|p| (&p.layer.0, &p.prepared))
    }
}

impl QWeights {
    /// The fake-quantized float weights `s_w[c] · q_w`, in the same layout as `weight`.
    pub fn dequantized(&self) -> Vec<f32> {
        let per_channel = self.weight.len() / self.scales.len().max(1);
        self.weight
            .iter()
            .enumerate()
            .map(|(k, &q)| f32::from(q) * self.scales[k / per_channel])
            .collect()
    }

    /// [`dequantized`](Self::dequantized) weights of a linear layer `[out, in]`, transposed to
    /// Burn's `[in, out]` layout.
    pub fn dequantized_linear_burn_layout(&self, out_features: usize) -> Vec<f32> {
        let deq = self.dequantized();
        let ins = deq.len() / out_features.max(1);
        (0..deq.len())
            .map(|k| deq[(k % out_features) * ins + k / out_features])
            .collect()
    }

    /// All zeros for a layer of `weights` weights and `channels` output channels (a skeleton
    /// that a record is then loaded into).
    pub fn zeros(weights: usize, channels: usize) -> Self {
        QWeights {
            weight: vec![0; weights],
            bias: vec![0; channels],
            scales: vec![1.0; channels],
        }
    }
}

fn int_param<const D: usize>(
    data: TensorData,
    dtype: DType,
    device: &Device,
) -> Param<Tensor<D, Int>> {
    Param::initialized(ParamId::new(), Tensor::from_data(data, (device, dtype)))
}

/// A layer's weights packed for the kernels with its requantization, as given and as prepared
/// for those packed weights (both built by `pack`).
#[derive(Clone, Debug)]
struct Packed<P> {
    layer: (P, Requant),
    prepared: PreparedRequant,
}

fn packed<'a, T>(packed: &'a Option<T>, layer: &str) -> Result<&'a T> {
    packed
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument(format!("{layer} used before pack()")))
}

/// The integer content of a layer: its `i8` weight data and its bias and scale parameters.
fn read_weights(
    weight: TensorData,
    bias: &Param<Tensor<1, Int>>,
    scales: &Param<Tensor<1>>,
) -> Result<QWeights> {
    let bias = bias.val().into_data();
    let typed = |data: &TensorData, dtype: DType, what: &str| {
        if data.dtype() == dtype {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "{what} has type {:?}, expected {dtype:?}",
                data.dtype()
            )))
        }
    };
    typed(&weight, DType::I8, "quantized weight")?;
    typed(&bias, DType::I32, "quantized bias")?;
    Ok(QWeights {
        weight: weight.iter::<i8>().collect(),
        bias: bias.iter::<i32>().collect(),
        scales: scales.val().into_data().iter::<f32>().collect(),
    })
}

fn check_channels(layer: &str, scales: usize, channels: usize) -> Result<()> {
    if scales != channels {
        return Err(Error::Shape {
            context: format!("{layer} weight scales"),
            expected: format!("{channels} (one per output channel)"),
            got: scales.to_string(),
        });
    }
    Ok(())
}
