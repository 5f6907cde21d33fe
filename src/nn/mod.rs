//! Quantized layers as Burn modules: `QConv2d` and `QLinear` hold their int8 weights, i32
//! biases and weight scales as Burn parameters (so they are saved in Burn records), and the
//! weights packed once for the kernels: the int8 ones when the layer reads and writes 8-bit
//! activations, the wide (W8A16) ones when either side is 16-bit. [`QDynamicLinear`], the
//! layer of dynamic quantization, holds int8 weights, their scales and float biases.

use burn::module::{Module, Param, ParamId};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

mod dynamic;

pub use dynamic::QDynamicLinear;

use crate::graph::Activation;
use crate::kernels::{
    self, ActQParams, Conv2dGeometry, PackedConv2d, PackedLinear, PackedWide, PackedWideConv2d,
    PreparedRequant, Requant, RequantWide, Table,
};
use crate::{Error, Result};

/// What a quantized conv or linear layer computes besides its weights: the activation
/// parameters of its input and output, and a fused activation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QLayerSpec {
    /// Quantization parameters of the input (8 or 16 bits).
    pub input: ActQParams,
    /// Quantization parameters of the output (8 or 16 bits).
    pub output: ActQParams,
    /// ReLU or clamp applied in the requantization.
    pub activation: Option<Activation>,
    /// A pointwise function fused into the output (hard-swish after a conv): the requantized
    /// `u8` goes through this table, whose input has the `output` parameters.
    #[serde(default)]
    pub table: Option<Table>,
    /// Bits of the weights: 8 (`i8`), or 12 or 16 (held as `i16`, narrow range: the wide
    /// kernels).
    #[serde(default = "eight_bits")]
    pub weight_bits: u8,
}

fn eight_bits() -> u8 {
    8
}

impl QLayerSpec {
    /// Whether the layer reads or writes 16-bit activations or has weights wider than 8 bits
    /// (and runs on the wide kernels).
    pub fn is_wide(&self) -> bool {
        self.input.bits() == 16 || self.output.bits() == 16 || self.weight_bits != 8
    }

    /// The type the weights are stored in: `I8`, or `I16` for 12- and 16-bit weights (`Err`
    /// for any other width).
    pub fn weight_dtype(&self) -> Result<DType> {
        match self.weight_bits {
            8 => Ok(DType::I8),
            12 | 16 => Ok(DType::I16),
            bits => Err(Error::InvalidArgument(format!(
                "{bits}-bit weights: layers take 8, 12 or 16"
            ))),
        }
    }

    /// The int8 requantization of a layer with these weight scales (one per output channel);
    /// `Err` for a wide layer.
    pub fn requant(&self, weight_scales: &[f32]) -> Result<Requant> {
        let (Some(input), Some(output)) = (self.input.as_u8(), self.output.as_u8()) else {
            return Err(Error::InvalidArgument(
                "a layer with 16-bit activations has no int8 requantization".into(),
            ));
        };
        let multipliers = kernels::conv_multipliers(input.scale, weight_scales, output.scale);
        let requant = Requant::new(multipliers, output.zero_point);
        let requant = match &self.table {
            Some(table) => requant.with_table(table.clone()),
            None => requant,
        };
        let [qmin, qmax] = self.bounds()?;
        Ok(Requant {
            qmin: qmin as u8,
            qmax: qmax as u8,
            ..requant
        })
    }

    /// The requantization of the wide kernels for these weight scales; `Err` when a table is
    /// fused (tables map 8-bit values; convert does not fuse them into wide layers).
    pub fn requant_wide(&self, weight_scales: &[f32]) -> Result<RequantWide> {
        if self.table.is_some() {
            return Err(Error::Unsupported(
                "a table fused into a layer with 16-bit activations".into(),
            ));
        }
        let multipliers =
            kernels::conv_multipliers(self.input.scale(), weight_scales, self.output.scale());
        let [qmin, qmax] = self.bounds()?;
        Ok(RequantWide {
            qmin,
            qmax,
            ..RequantWide::new(multipliers, self.output.zero_point(), qmax)
        })
    }

    /// The lowest and highest output value: the whole range, from the zero point for a fused
    /// ReLU, the quantized bounds for a fused clamp.
    fn bounds(&self) -> Result<[u16; 2]> {
        let full = match self.output {
            ActQParams::U8(_) => 255,
            ActQParams::U16(_) => u16::MAX,
        };
        Ok(match self.activation {
            None => [0, full],
            Some(Activation::Relu) => [self.output.zero_point(), full],
            Some(Activation::Clamp { min, max }) => {
                // The bounds quantized as the kernels quantize any value.
                let bounds = [min as f32, max as f32];
                match self.output {
                    ActQParams::U8(qp) => {
                        let mut q = [0u8; 2];
                        kernels::quantize(&bounds, qp, &mut q)?;
                        q.map(u16::from)
                    }
                    ActQParams::U16(qp) => {
                        let mut q = [0u16; 2];
                        kernels::quantize_wide(&bounds, [1, 2, 1], qp, &mut q)?;
                        q
                    }
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
    packed: Option<Kernels<PackedConv2d, PackedWideConv2d>>,
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
    packed: Option<Kernels<PackedLinear, PackedWide>>,
}

/// The integer content of a quantized conv or linear layer.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct QWeights {
    /// Integer weights in PyTorch's layout (`i8` values for 8-bit layers, held as `i16`).
    pub weight: Vec<i16>,
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

    /// A layer holding `weights`, not packed yet.
    fn unpacked(
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
            weight: weight_param(TensorData::new(weights.weight, shape), &spec, device),
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

    /// Packs the weights held in the parameters (after Burn loaded a record into them), for
    /// the int8 kernels or, when the spec has a 16-bit side, the wide ones; on an error the
    /// layer is left unpacked (and runs are errors).
    pub fn pack(&mut self) -> Result<()> {
        self.packed = None;
        let w = self.weights()?;
        check_channels("QConv2d", w.scales.len(), self.geometry.out_channels)?;
        self.packed = Some(if self.spec.is_wide() {
            let packed = PackedWideConv2d::new(self.geometry, &w.weight, &w.bias)?;
            Kernels::Wide(packed, self.spec.requant_wide(&w.scales)?)
        } else {
            let zero_point = self.spec.input.zero_point() as u8;
            let weight = w.int8()?;
            let packed = PackedConv2d::new(self.geometry, &weight, &w.bias, zero_point)?;
            Kernels::Int8(Box::new(Packed::new(
                packed,
                self.spec.requant(&w.scales)?,
            )?))
        });
        Ok(())
    }

    /// The integer weights, biases and scales.
    pub fn weights(&self) -> Result<QWeights> {
        read_weights(
            self.weight.val().into_data(),
            &self.spec,
            &self.bias,
            &self.weight_scale,
        )
    }

    /// The packed weights and requantization the int8 kernels use.
    pub fn packed(&self) -> Result<&(PackedConv2d, Requant)> {
        int8(&self.packed, "QConv2d").map(|p| &p.layer)
    }

    /// The packed weights and the requantization prepared for them
    /// ([`kernels::qconv2d_prepared`]'s arguments).
    pub fn prepared(&self) -> Result<(&PackedConv2d, &PreparedRequant)> {
        int8(&self.packed, "QConv2d").map(|p| (&p.layer.0, &p.prepared))
    }

    /// The packed weights and requantization the wide kernels use.
    pub fn wide(&self) -> Result<(&PackedWideConv2d, &RequantWide)> {
        wide(&self.packed, "QConv2d")
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
    fn unpacked(
        out_features: usize,
        in_features: usize,
        weights: QWeights,
        spec: QLayerSpec,
        device: &Device,
    ) -> Self {
        QLinear {
            weight: weight_param(
                TensorData::new(weights.weight, [out_features, in_features]),
                &spec,
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

    /// Packs the weights held in the parameters (after Burn loaded a record into them), for
    /// the int8 kernels or, when the spec has a 16-bit side, the wide ones; on an error the
    /// layer is left unpacked (and runs are errors).
    pub fn pack(&mut self) -> Result<()> {
        self.packed = None;
        let [out_features, in_features] = self.weight.val().dims();
        let w = self.weights()?;
        check_channels("QLinear", w.scales.len(), out_features)?;
        self.packed = Some(if self.spec.is_wide() {
            let weight = |_, o: usize, i: usize| w.weight[o * in_features + i];
            let packed = PackedWide::new(1, in_features, out_features, &w.bias, weight)?;
            Kernels::Wide(packed, self.spec.requant_wide(&w.scales)?)
        } else {
            let zero_point = self.spec.input.zero_point() as u8;
            let weight = w.int8()?;
            let packed =
                PackedLinear::new(&weight, out_features, in_features, &w.bias, zero_point)?;
            Kernels::Int8(Box::new(Packed::new(
                packed,
                self.spec.requant(&w.scales)?,
            )?))
        });
        Ok(())
    }

    /// The integer weights, biases and scales.
    pub fn weights(&self) -> Result<QWeights> {
        read_weights(
            self.weight.val().into_data(),
            &self.spec,
            &self.bias,
            &self.weight_scale,
        )
    }

    /// The packed weights and requantization the int8 kernels use.
    pub fn packed(&self) -> Result<&(PackedLinear, Requant)> {
        int8(&self.packed, "QLinear").map(|p| &p.layer)
    }

    /// The packed weights and the requantization prepared for them
    /// ([`kernels::qlinear_prepared`]'s arguments).
    pub fn prepared(&self) -> Result<(&PackedLinear, &PreparedRequant)> {
        int8(&self.packed, "QLinear").map(|p| (&p.layer.0, &p.prepared))
    }

    /// The packed weights and requantization the wide kernels use.
    pub fn wide(&self) -> Result<(&PackedWide, &RequantWide)> {
        wide(&self.packed, "QLinear")
    }
}

impl QWeights {
    /// The weights as `i8` (an 8-bit layer's); `Err` when one is out of range.
    pub fn int8(&self) -> Result<Vec<i8>> {
        (self.weight.iter())
            .map(|&w| i8::try_from(w))
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| {
                Error::InvalidArgument("an 8-bit layer's weight is out of the i8 range".into())
            })
    }

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
}

/// The weight parameter of a layer with `spec`, stored as `i8` or `i16` as its width says;
/// `i16` when the width is unknown or a weight does not fit it (`pack` then refuses the type).
fn weight_param<const D: usize>(
    data: TensorData,
    spec: &QLayerSpec,
    device: &Device,
) -> Param<Tensor<D, Int>> {
    let fits_i8 = || data.iter::<i16>().all(|w| i8::try_from(w).is_ok());
    let dtype = match spec.weight_dtype() {
        Ok(DType::I8) if fits_i8() => DType::I8,
        _ => DType::I16,
    };
    int_param(data, dtype, device)
}

fn int_param<const D: usize>(
    data: TensorData,
    dtype: DType,
    device: &Device,
) -> Param<Tensor<D, Int>> {
    Param::initialized(ParamId::new(), Tensor::from_data(data, (device, dtype)))
}

/// A layer's weights packed for the kernels it runs on (built by `pack`).
#[derive(Clone, Debug)]
enum Kernels<P, W> {
    /// 8-bit input and output.
    Int8(Box<Packed<P>>),
    /// A 16-bit side: the wide kernels.
    Wide(W, RequantWide),
}

/// A layer's weights packed for the int8 kernels with its requantization, as given and as
/// prepared for those packed weights.
#[derive(Clone, Debug)]
struct Packed<P> {
    layer: (P, Requant),
    prepared: PreparedRequant,
}

/// What both int8 packings prepare a requantization with.
trait PrepareRequant {
    fn prepare(&self, requant: &Requant) -> Result<PreparedRequant>;
}

impl PrepareRequant for PackedConv2d {
    fn prepare(&self, requant: &Requant) -> Result<PreparedRequant> {
        PackedConv2d::prepare(self, requant)
    }
}

impl PrepareRequant for PackedLinear {
    fn prepare(&self, requant: &Requant) -> Result<PreparedRequant> {
        PackedLinear::prepare(self, requant)
    }
}

impl<P: PrepareRequant> Packed<P> {
    fn new(packed: P, requant: Requant) -> Result<Self> {
        let prepared = packed.prepare(&requant)?;
        Ok(Packed {
            layer: (packed, requant),
            prepared,
        })
    }
}

fn int8<'a, P, W>(packed: &'a Option<Kernels<P, W>>, layer: &str) -> Result<&'a Packed<P>> {
    match packed {
        Some(Kernels::Int8(p)) => Ok(p),
        Some(Kernels::Wide(..)) => Err(Error::InvalidArgument(format!(
            "{layer} has 16-bit activations: it runs on the wide kernels"
        ))),
        None => Err(Error::InvalidArgument(format!(
            "{layer} is not packed: its weights failed to pack (see pack())"
        ))),
    }
}

fn wide<'a, P, W>(
    packed: &'a Option<Kernels<P, W>>,
    layer: &str,
) -> Result<(&'a W, &'a RequantWide)> {
    match packed {
        Some(Kernels::Wide(w, r)) => Ok((w, r)),
        Some(Kernels::Int8(_)) => Err(Error::InvalidArgument(format!(
            "{layer} has 8-bit activations: it runs on the int8 kernels"
        ))),
        None => Err(Error::InvalidArgument(format!(
            "{layer} is not packed: its weights failed to pack (see pack())"
        ))),
    }
}

/// The integer content of a layer: its `i8` or `i16` weight data (as `spec` says) and its bias
/// and scale parameters.
fn read_weights(
    weight: TensorData,
    spec: &QLayerSpec,
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
    typed(&weight, spec.weight_dtype()?, "quantized weight")?;
    typed(&bias, DType::I32, "quantized bias")?;
    Ok(QWeights {
        weight: weight.iter::<i16>().collect(),
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
