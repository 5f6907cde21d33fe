//! [`FakeQuantize`]: observe, quantize and dequantize in float, straight-through gradients.

use burn::backend::ops::FloatTensorOps;
use burn::backend::{Dispatch, DispatchTensor, TensorMetadata};
use burn::tensor::{Shape, Tensor, TensorData};

use crate::observe::{Observer, ObserverConfig, QDType, QParams};
use crate::{Error, Result};

/// PyTorch's `FakeQuantize`: in training, each forward shows the tensor to an observer (unless
/// it is disabled, [`FakeQuantize::disable_observer`], PyTorch's `disable_observer` and what
/// freezing the quantization parameters after some steps does) and returns
/// `(clamp(round(x · (1/s)) + z, qmin, qmax) − z) · s` with the observer's current parameters
/// (per tensor, or per channel along the observer's axis; rounding half to even), unless fake
/// quantization is disabled ([`FakeQuantize::disable_fake_quant`]), which returns `x`.
///
/// Gradients are straight-through: on Burn's autodiff backend the output's gradient passes to
/// `x` where `round(x · (1/s)) + z` is inside `[qmin, qmax]`, and is zero where it was clamped (as
/// PyTorch's `fake_quantize_per_tensor_affine` backward).
#[derive(Debug)]
pub struct FakeQuantize {
    observer: Box<dyn Observer>,
    /// Parameters that do not depend on the data (PyTorch's `FixedQParamsFakeQuantize`, for
    /// sigmoid and tanh outputs): used instead of the observer's, which then observes nothing.
    fixed: Option<QParams>,
    observer_enabled: bool,
    fake_quant_enabled: bool,
}

impl FakeQuantize {
    /// A fake quantizer observing with `config` (PyTorch's activation default for QAT is
    /// [`ObserverConfig::moving_average_min_max`]; for weights,
    /// [`ObserverConfig::per_channel_symmetric_weight`]).
    pub fn new(config: &ObserverConfig) -> Result<Self> {
        Ok(FakeQuantize {
            observer: config.build()?,
            fixed: None,
            observer_enabled: true,
            fake_quant_enabled: true,
        })
    }

    /// A fake quantizer with fixed `u8` parameters (per tensor, range `[0, 255]`): PyTorch's
    /// `FixedQParamsFakeQuantize` for sigmoid and tanh outputs. Its observer (built from
    /// `config`) observes nothing.
    pub fn fixed(config: &ObserverConfig, scale: f32, zero_point: u8) -> Result<Self> {
        let mut fq = FakeQuantize::new(config)?;
        fq.fixed = Some(QParams {
            scale: vec![scale],
            zero_point: vec![i32::from(zero_point)],
            dtype: QDType::QUInt8,
            axis: None,
            quant_min: 0,
            quant_max: 255,
        });
        Ok(fq)
    }

    /// Stops updating the quantization parameters (they stay as last observed).
    pub fn disable_observer(&mut self) {
        self.observer_enabled = false;
    }

    /// Updates the quantization parameters on every forward again.
    pub fn enable_observer(&mut self) {
        self.observer_enabled = true;
    }

    /// Makes the forward the identity (observing still happens if enabled).
    pub fn disable_fake_quant(&mut self) {
        self.fake_quant_enabled = false;
    }

    /// Fake-quantizes in the forward again.
    pub fn enable_fake_quant(&mut self) {
        self.fake_quant_enabled = true;
    }

    /// The current quantization parameters (scale 1 and zero point 0 before any data).
    pub fn qparams(&self) -> Result<QParams> {
        match &self.fixed {
            Some(qp) => Ok(qp.clone()),
            None => self.observer.qparams(),
        }
    }

    /// The observer (its state, for converting the trained model).
    pub fn observer(&self) -> &dyn Observer {
        self.observer.as_ref()
    }

    /// Observes `x` (if enabled) and returns it fake-quantized (if enabled). Errors on a NaN
    /// or infinite value while observing, or a tensor without the observer's channel axis.
    pub fn forward<const D: usize>(&mut self, x: Tensor<D>) -> Result<Tensor<D>> {
        Ok(Tensor::from_dispatch(
            self.forward_dispatch(x.into_dispatch())?,
        ))
    }

    /// [`forward`](Self::forward) on a tensor of any rank.
    pub(crate) fn forward_dispatch(&mut self, x: DispatchTensor) -> Result<DispatchTensor> {
        if self.observer_enabled && self.fixed.is_none() {
            let values = crate::ops::float_values::<f32>(x.clone())?;
            self.observer.observe(&values, &x.shape().to_vec())?;
        }
        if !self.fake_quant_enabled {
            return Ok(x);
        }
        fake_quantize(x, &self.qparams()?)
    }
}

type B = Dispatch;

/// `x` fake-quantized with `qp` (straight-through gradients): computed on a 3-D view
/// `[before, channels, after]` of `x` around the channel axis (`[1, 1, all]` per tensor).
pub(crate) fn fake_quantize(x: DispatchTensor, qp: &QParams) -> Result<DispatchTensor> {
    let dims = x.shape().to_vec();
    let view = match qp.axis {
        None => [1, 1, dims.iter().product()],
        Some(axis) if axis < dims.len() && dims[axis] == qp.scale.len() => [
            dims[..axis].iter().product(),
            dims[axis],
            dims[axis + 1..].iter().product(),
        ],
        Some(axis) => {
            return Err(Error::Shape {
                context: "fake quantization input".into(),
                expected: format!("{} channels on axis {axis}", qp.scale.len()),
                got: format!("{dims:?}"),
            });
        }
    };
    let x: Tensor<3> = Tensor::from_dispatch(B::float_reshape(x, Shape::from(view)));
    let fake = fake_quantize_3d(x, qp).into_dispatch();
    Ok(B::float_reshape(fake, Shape::from(dims)))
}

/// Fake quantization of `x` `[before, channels, after]` with one scale and zero point per
/// channel (or one for all).
fn fake_quantize_3d(x: Tensor<3>, qp: &QParams) -> Tensor<3> {
    let device = x.device();
    let channels = qp.scale.len();
    let tensor = |values: Vec<f32>| {
        Tensor::<3>::from_data(TensorData::new(values, [1, channels, 1]), &device)
    };
    let scale = tensor(qp.scale.clone());
    let inverse = tensor(qp.scale.iter().map(|s| 1.0 / s).collect());
    let zero = tensor(qp.zero_point.iter().map(|&z| z as f32).collect());
    let (qmin, qmax) = (qp.quant_min as f32, qp.quant_max as f32);
    let q = x.clone().mul(inverse).round().add(zero.clone());
    let inside = q
        .clone()
        .greater_equal_elem(qmin)
        .bool_and(q.clone().lower_equal_elem(qmax))
        .float();
    let fake = q.clamp(qmin, qmax).sub(zero).mul(scale);
    // Value: `fake`; gradient: 1 inside the range, 0 where clamped.
    let through = x.clone().sub(x.detach()).mul(inside);
    fake.detach().add(through)
}
