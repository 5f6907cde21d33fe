//! The live float values of a quantized run, each held as a Burn tensor, as `f32` values on
//! the host, or both. Float steps run on Burn tensors; dynamic linear layers and the
//! activation kernels read and write host values. Each value is converted at most once each
//! way, when a step first asks for the other form: a chain of host steps (a dynamic layer, its
//! GELU, the next dynamic layer) never goes through Burn, whose conversions copy the values.

use std::collections::HashMap;

use burn::backend::{Dispatch, DispatchTensor, ops::FloatTensorOps};
use burn::tensor::{Device, TensorData};

use crate::graph::ValueId;
use crate::ops::float_values;
use crate::{Error, Result};

/// One live value: at least one of its forms.
struct Slot {
    tensor: Option<DispatchTensor>,
    host: Option<Vec<f32>>,
    shape: Vec<usize>,
}

/// Host buffers kept for reuse: enough for the values a transformer block has alive at once.
const SPARE_BUFFERS: usize = 4;

/// The float values of one run, over the model's float parameters (read-only tensors).
pub(super) struct Floats<'a> {
    live: HashMap<ValueId, Slot>,
    /// Host buffers of values that died, for [`Floats::buffer`].
    spare: Vec<Vec<f32>>,
    params: &'a HashMap<ValueId, DispatchTensor>,
    device: &'a Device,
}

impl<'a> Floats<'a> {
    /// The run's inputs, over the model's float parameters.
    pub(super) fn new(
        inputs: impl IntoIterator<Item = (ValueId, DispatchTensor)>,
        params: &'a HashMap<ValueId, DispatchTensor>,
        device: &'a Device,
    ) -> Self {
        let mut floats = Floats {
            live: HashMap::new(),
            spare: Vec::new(),
            params,
            device,
        };
        for (id, tensor) in inputs {
            floats.insert_tensor(id, tensor);
        }
        floats
    }

    /// Makes `id` the tensor `tensor`.
    pub(super) fn insert_tensor(&mut self, id: ValueId, tensor: DispatchTensor) {
        use burn::backend::TensorMetadata;
        let shape = tensor.shape().to_vec();
        let slot = Slot {
            tensor: Some(tensor),
            host: None,
            shape,
        };
        self.live.insert(id, slot);
    }

    /// Makes `id` the host values `values` of shape `shape`.
    pub(super) fn insert_host(&mut self, id: ValueId, values: Vec<f32>, shape: Vec<usize>) {
        let slot = Slot {
            tensor: None,
            host: Some(values),
            shape,
        };
        self.live.insert(id, slot);
    }

    /// Value `id` (live, or a float parameter) as a tensor. A value held only on the host
    /// moves into the tensor (no step reads the host values of a value after its tensor, but
    /// if one does they are read back).
    pub(super) fn tensor(&mut self, id: ValueId) -> Result<DispatchTensor> {
        let Some(slot) = self.live.get_mut(&id) else {
            return self.params.get(&id).cloned().ok_or_else(|| missing(id));
        };
        if slot.tensor.is_none() {
            let values = slot.host.take().ok_or_else(|| missing(id))?;
            let data = TensorData::new(values, slot.shape.clone());
            slot.tensor = Some(Dispatch::float_from_data(data, self.device.as_dispatch()));
        }
        slot.tensor.clone().ok_or_else(|| missing(id))
    }

    /// Value `id` (live, or a float parameter) on the host, row-major.
    pub(super) fn host(&mut self, id: ValueId) -> Result<&[f32]> {
        if !self.live.contains_key(&id) {
            let param = self.params.get(&id).ok_or_else(|| missing(id))?;
            self.insert_tensor(id, param.clone());
        }
        let slot = self.live.get_mut(&id).ok_or_else(|| missing(id))?;
        if slot.host.is_none() {
            let tensor = slot.tensor.as_ref().ok_or_else(|| missing(id))?;
            slot.host = Some(float_values::<f32>(tensor.clone())?);
        }
        slot.host.as_deref().ok_or_else(|| missing(id))
    }

    /// Value `id`'s host values to change in place: taken out of the run when `last_use`
    /// (no copy if they are on the host), a copy otherwise.
    pub(super) fn host_to_change(&mut self, id: ValueId, last_use: bool) -> Result<Vec<f32>> {
        if last_use {
            match self.live.remove(&id) {
                Some(Slot {
                    host: Some(values), ..
                }) => return Ok(values),
                Some(Slot {
                    tensor: Some(tensor),
                    ..
                }) => return float_values::<f32>(tensor),
                _ => {}
            }
        }
        self.host(id).map(<[f32]>::to_vec)
    }

    /// Ends value `id`'s life (its host buffer is kept for reuse).
    pub(super) fn remove(&mut self, id: ValueId) {
        if let Some(Slot {
            host: Some(values), ..
        }) = self.live.remove(&id)
            && self.spare.len() < SPARE_BUFFERS
        {
            self.spare.push(values);
        }
    }

    /// A host buffer of `len` values for a step to overwrite entirely: the buffer of a value
    /// that died, holding its old values (no zeroing, no fresh pages), or a new one.
    pub(super) fn buffer(&mut self, len: usize) -> Vec<f32> {
        match self.spare.iter().position(|b| b.len() == len) {
            Some(i) => self.spare.swap_remove(i),
            None => vec![0.0; len],
        }
    }

    /// Takes value `id` out of the run as a tensor (a program output).
    pub(super) fn take_tensor(&mut self, id: ValueId) -> Result<DispatchTensor> {
        let tensor = self.tensor(id)?;
        self.live.remove(&id);
        Ok(tensor)
    }
}

/// The error for a value that is not a live float value.
fn missing(id: ValueId) -> Error {
    Error::InvalidGraph(format!("value {id} is not a float value here"))
}
