//! Reading the PyTorch goldens (safetensors + JSON) in `../shared/goldens`.

use std::path::Path;

use burn::tensor::{Device, Tensor, TensorData};

/// A golden tensor: its values as f32 and its shape.
pub struct Golden {
    pub values: Vec<f32>,
    pub shape: Vec<usize>,
}

impl Golden {
    /// The first `n` items along axis 0 as a Burn tensor.
    pub fn first<const D: usize>(&self, n: usize, device: &Device) -> Tensor<D> {
        let mut shape = self.shape.clone();
        let item: usize = shape[1..].iter().product();
        shape[0] = n;
        Tensor::from_data(
            TensorData::new(self.values[..n * item].to_vec(), shape),
            device,
        )
    }
}

/// Reads tensor `name` of a safetensors file (f32, or integer types widened to f32).
pub fn read_tensor(path: &Path, name: &str) -> Result<Golden, Box<dyn std::error::Error>> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let file = safetensors::SafeTensors::deserialize(&bytes)?;
    let view = file
        .tensor(name)
        .map_err(|e| format!("{}: {name}: {e}", path.display()))?;
    let data = view.data();
    use safetensors::Dtype;
    let values: Vec<f32> = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::U8 => data.iter().map(|&v| f32::from(v)).collect(),
        Dtype::I8 => data.iter().map(|&v| f32::from(v as i8)).collect(),
        Dtype::I64 => data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => {
            return Err(format!("{}: {name}: unsupported dtype {other:?}", path.display()).into());
        }
    };
    Ok(Golden {
        values,
        shape: view.shape().to_vec(),
    })
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Result<serde_json::Value, Box<dyn std::error::Error>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}
