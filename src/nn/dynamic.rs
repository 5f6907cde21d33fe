//! [`QDynamicLinear`]: a dynamically quantized linear layer as a Burn module.

use burn::module::{Module, Param, ParamId};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

use crate::kernels::PackedDynamicLinear;
use crate::{Error, Result};

/// A dynamically quantized linear layer (PyTorch's `torch.ao.nn.quantized.dynamic.Linear`):
/// `i8` weights with a scale per output feature, float biases; its input is quantized per row
/// at run time and its output is float ([`crate::kernels::qlinear_dynamic`]).
#[derive(Module, Debug)]
pub struct QDynamicLinear {
    /// Weights `[out, in]` (PyTorch's layout), `i8`, symmetric.
    pub weight: Param<Tensor<2, Int>>,
    /// Weight scale of every output feature.
    pub weight_scale: Param<Tensor<1>>,
    /// Float bias of every output feature (zeros for a layer without one).
    pub bias: Param<Tensor<1>>,
    #[module(skip)]
    packed: Option<PackedDynamicLinear>,
}

impl QDynamicLinear {
    /// A layer from its `i8` weights `[out_features, in_features]` (row-major), scales and
    /// biases; packs them for the kernels (an error if they do not fit, see
    /// [`PackedDynamicLinear::new`]).
    pub fn new(
        out_features: usize,
        in_features: usize,
        weight: Vec<i8>,
        scales: Vec<f32>,
        bias: Vec<f32>,
        device: &Device,
    ) -> Result<Self> {
        let packed = PackedDynamicLinear::new(&weight, out_features, in_features, &scales, &bias)?;
        let float = |values: Vec<f32>| {
            let data = TensorData::new(values, [out_features]);
            Param::initialized(ParamId::new(), Tensor::from_data(data, device))
        };
        let weight = TensorData::new(weight, [out_features, in_features]);
        Ok(QDynamicLinear {
            weight: Param::initialized(
                ParamId::new(),
                Tensor::from_data(weight, (device, DType::I8)),
            ),
            weight_scale: float(scales),
            bias: float(bias),
            packed: Some(packed),
        })
    }

    /// Packs the weights again from the parameters (after they were loaded or mapped); on
    /// error the layer stays unpacked and [`QDynamicLinear::packed`] says why.
    pub fn pack(&mut self) -> Result<()> {
        self.packed = None;
        let [out_features, in_features] = self.weight.val().dims();
        let weight = self.weight.val().into_data();
        if weight.dtype() != DType::I8 {
            return Err(Error::InvalidArgument(format!(
                "dynamic linear weights of type {:?}, expected I8",
                weight.dtype()
            )));
        }
        let weight: Vec<i8> = weight.iter::<i8>().collect();
        let floats = |p: &Param<Tensor<1>>| p.val().into_data().iter::<f32>().collect::<Vec<_>>();
        let (scales, bias) = (floats(&self.weight_scale), floats(&self.bias));
        let packed = PackedDynamicLinear::new(&weight, out_features, in_features, &scales, &bias)?;
        self.packed = Some(packed);
        Ok(())
    }

    /// The packed layer the kernels run.
    pub fn packed(&self) -> Result<&PackedDynamicLinear> {
        self.packed.as_ref().ok_or_else(|| {
            Error::InvalidArgument(
                "QDynamicLinear is not packed: its weights failed to pack (see pack())".into(),
            )
        })
    }
}
