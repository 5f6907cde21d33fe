//! [`FakeQuantize`]: observe, quantize and dequantize in float, straight-through gradients.

use burn::tensor::{Tensor, TensorData};

use crate::observe::{Observer, ObserverConfig, QParams};
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
            observer_enabled: true,
            fake_quant_enabled: true,
        })
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
        self.observer.qparams()
    }

    /// The observer (its state, for converting the trained model).
    pub fn observer(&self) -> &dyn Observer {
        self.observer.as_ref()
    }

    /// Observes `x` (if enabled) and returns it fake-quantized (if enabled). Errors on a NaN
    /// or infinite value while observing, or a tensor without the observer's channel axis.
    pub fn forward<const D: usize>(&mut self, x: Tensor<D>) -> Result<Tensor<D>> {
        if self.observer_enabled {
            let data = x.clone().detach().into_data();
            let values: Vec<f32> = data
                .try_to_vec::<f32>()
                .map_err(|e| Error::InvalidArgument(format!("fake quantization input: {e:?}")))?;
            self.observer.observe(&values, data.shape().as_slice())?;
        }
        if !self.fake_quant_enabled {
            return Ok(x);
        }
        let qp = self.observer.qparams()?;
        let [scale, inverse, zero] = per_axis(&qp, &x)?;
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
        Ok(fake.detach().add(through))
    }
}

/// The scale, its inverse and the zero point of `qp` as tensors that broadcast against `x`:
/// `[1, .., 1]` for per-tensor parameters, the channel count on the observer's axis for
/// per-channel ones.
fn per_axis<const D: usize>(qp: &QParams, x: &Tensor<D>) -> Result<[Tensor<D>; 3]> {
    let dims = x.dims();
    let mut shape = [1usize; D];
    if let Some(axis) = qp.axis {
        if axis >= D || dims[axis] != qp.scale.len() {
            return Err(Error::Shape {
                context: "fake quantization input".into(),
                expected: format!("{} channels on axis {axis}", qp.scale.len()),
                got: format!("{dims:?}"),
            });
        }
        shape[axis] = dims[axis];
    }
    let device = x.device();
    let zero: Vec<f32> = qp.zero_point.iter().map(|&z| z as f32).collect();
    let tensor = |values: Vec<f32>| Tensor::from_data(TensorData::new(values, shape), &device);
    let inverse = qp.scale.iter().map(|s| 1.0 / s).collect();
    Ok([tensor(qp.scale.clone()), tensor(inverse), tensor(zero)])
}
