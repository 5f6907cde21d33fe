//! Interpreters over a [`Graph`](crate::graph::Graph).
//!
//! [`FloatExecutor`] runs a graph in float with Burn tensors on any Burn device; ops we do not
//! lower run through Burn's own interpreter (`fallback`). The quantized interpreter runs a
//! [`QuantizedProgram`](crate::convert::QuantizedProgram) with the int8 kernels.

mod fallback;
mod float;
mod float_ops;
mod quantized;
mod reference;

pub use float::FloatExecutor;
pub(crate) use float_ops::pointwise;
pub use quantized::RunValue;
pub(crate) use quantized::{Arithmetic, QuantizedExecutor};

use burn::backend::ops::FloatTensorOps;
use burn::backend::{Dispatch, DispatchTensor, TensorMetadata};
use burn::tensor::{Shape, Tensor};

use crate::{Error, Result};

/// The values of a float tensor, row-major, converted to `E`.
pub(crate) fn float_values<E: burn::tensor::Element>(tensor: &DispatchTensor) -> Result<Vec<E>> {
    let n = tensor.shape().num_elements();
    let flat = Dispatch::float_reshape(tensor.clone(), Shape::new([n]));
    let data = Tensor::<1>::from_dispatch(flat)
        .try_into_data()
        .map_err(|e| Error::Unsupported(format!("reading a tensor back: {e:?}")))?;
    Ok(data.iter::<E>().collect())
}

/// The one output of a model as a tensor of rank `D`, or a shape error.
pub(crate) fn single_output<const D: usize>(outputs: Vec<DispatchTensor>) -> Result<Tensor<D>> {
    let [tensor] = <[_; 1]>::try_from(outputs).map_err(|o| Error::Shape {
        context: "model outputs".into(),
        expected: "one output".into(),
        got: format!("{}", o.len()),
    })?;
    let shape = tensor.shape().to_vec();
    if shape.len() != D {
        return Err(Error::Shape {
            context: "model output".into(),
            expected: format!("rank {D}"),
            got: format!("rank {} {shape:?}", shape.len()),
        });
    }
    Ok(Tensor::from_dispatch(tensor))
}
