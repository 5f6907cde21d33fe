//! The inputs and outputs of a forward: one tensor, or a tuple of up to four tensors of any
//! ranks. What lets capture, calibration and the quantized model take models with several
//! inputs and several outputs.

use burn::backend::{DispatchTensor, TensorMetadata};
use burn::tensor::{Device, Tensor, TensorData};
use burn_ir::TensorId;

use crate::{Error, Result};

/// One tensor or a tuple of tensors, as a forward takes or returns them.
pub trait Tensors: Sized {
    /// How many tensors.
    const COUNT: usize;

    /// The device of the first tensor.
    fn device(&self) -> Device;

    /// Every tensor's data, in order.
    fn to_datas(&self) -> Vec<TensorData>;

    /// The tensors made from `datas` (one per tensor, of its rank) on `device`.
    fn from_datas(datas: Vec<TensorData>, device: &Device) -> Result<Self>;

    /// The tensors, in order.
    fn into_dispatch(self) -> Vec<DispatchTensor>;

    /// The tensors from a run's outputs: their count and ranks checked.
    fn from_dispatch(tensors: Vec<DispatchTensor>) -> Result<Self>;

    /// The tensors' ids on the capture device (`None` if one is not a capture tensor).
    #[doc(hidden)]
    fn capture_ids(&self) -> Option<Vec<TensorId>>;
}

/// A tensor of rank `D` from output `k` of a run.
fn of_rank<const D: usize>(tensor: DispatchTensor, k: usize) -> Result<Tensor<D>> {
    let shape = tensor.shape().to_vec();
    if shape.len() != D {
        return Err(Error::Shape {
            context: format!("model output {k}"),
            expected: format!("rank {D}"),
            got: format!("rank {} {shape:?}", shape.len()),
        });
    }
    Ok(Tensor::from_dispatch(tensor))
}

/// `Err` unless there are `expected` tensors.
fn count<T>(items: Vec<T>, expected: usize, what: &str) -> Result<Vec<T>> {
    if items.len() == expected {
        Ok(items)
    } else {
        Err(Error::Shape {
            context: format!("model {what}"),
            expected: format!("{expected} tensor(s)"),
            got: format!("{}", items.len()),
        })
    }
}

impl<const D: usize> Tensors for Tensor<D> {
    const COUNT: usize = 1;

    fn device(&self) -> Device {
        Tensor::device(self)
    }

    fn to_datas(&self) -> Vec<TensorData> {
        vec![self.to_data()]
    }

    fn from_datas(datas: Vec<TensorData>, device: &Device) -> Result<Self> {
        let [data] = <[_; 1]>::try_from(count(datas, 1, "inputs")?).expect("counted");
        Ok(Tensor::from_data(data, device))
    }

    fn into_dispatch(self) -> Vec<DispatchTensor> {
        vec![self.into_dispatch()]
    }

    fn from_dispatch(tensors: Vec<DispatchTensor>) -> Result<Self> {
        let [tensor] = <[_; 1]>::try_from(count(tensors, 1, "outputs")?).expect("counted");
        of_rank(tensor, 0)
    }

    fn capture_ids(&self) -> Option<Vec<TensorId>> {
        super::paths::capture_id(self).map(|id| vec![id])
    }
}

/// `Tensors` for a tuple of tensors of ranks `$d`, at positions `$i`.
macro_rules! tuple_tensors {
    ($n:literal: $($d:ident $i:tt),+) => {
        impl<$(const $d: usize),+> Tensors for ($(Tensor<$d>,)+) {
            const COUNT: usize = $n;

            fn device(&self) -> Device {
                self.0.device()
            }

            fn to_datas(&self) -> Vec<TensorData> {
                vec![$(self.$i.to_data()),+]
            }

            fn from_datas(datas: Vec<TensorData>, device: &Device) -> Result<Self> {
                let mut datas = count(datas, $n, "inputs")?.into_iter();
                Ok(($(Tensor::<$d>::from_data(datas.next().expect(stringify!($i)), device),)+))
            }

            fn into_dispatch(self) -> Vec<DispatchTensor> {
                vec![$(self.$i.into_dispatch()),+]
            }

            fn from_dispatch(tensors: Vec<DispatchTensor>) -> Result<Self> {
                let mut tensors = count(tensors, $n, "outputs")?.into_iter();
                Ok(($(of_rank::<$d>(tensors.next().expect("counted"), $i)?,)+))
            }

            fn capture_ids(&self) -> Option<Vec<TensorId>> {
                Some(vec![$(super::paths::capture_id(&self.$i)?),+])
            }
        }
    };
}

tuple_tensors!(2: A 0, B 1);
tuple_tensors!(3: A 0, B 1, C 2);
tuple_tensors!(4: A 0, B 1, C 2, D 3);
