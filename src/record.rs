//! Saving and loading a [`QuantizedModel`] as a Burn burnpack record.
//!
//! The file is one burnpack: the layers' tensors as Burn's `ModuleSnapshot` writes them (`i8`
//! weights, `i32` biases, `f32` scales and float parameters) and, in its metadata, the record
//! format version and the program as JSON (steps, value shapes, activation parameters, layer
//! geometry). Loading checks the version, rebuilds the layers from the program, loads the
//! tensors into them, checks every tensor's type and shape, and packs the weights again, so a
//! reloaded model computes bit for bit what the saved one did.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use burn::module::{Param, ParamId};
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::{Device, Tensor};

use crate::graph::ValueShapes;
use crate::nn::{QConv2d, QLinear, QWeights};
use crate::program::{PROGRAM_FORMAT_VERSION, QuantizedLayers, QuantizedProgram};
use crate::quantized::QuantizedModel;
use crate::{Error, Result};

/// Version of the record layout; bumped on every incompatible change.
pub const RECORD_FORMAT_VERSION: u32 = 1;

const KEY_VERSION: &str = "burn_quantize.record_version";
const KEY_PROGRAM: &str = "burn_quantize.program";

impl QuantizedModel {
    /// Saves the model to `path` (a burnpack file; no extension is added).
    pub fn save_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let program = serde_json::to_string(&self.program).map_err(|e| Error::BadFile {
            path: path.to_path_buf(),
            reason: format!("program to JSON: {e}"),
        })?;
        let mut store = BurnpackStore::from_file(path)
            .auto_extension(false)
            .overwrite(true)
            .metadata(KEY_VERSION, RECORD_FORMAT_VERSION.to_string())
            .metadata(KEY_PROGRAM, program);
        self.layers
            .save_into(&mut store)
            .map_err(|e| Error::BadFile {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    }

    /// Loads a model saved by [`save_file`](Self::save_file). A missing, truncated or corrupt
    /// file, or one of another format version, is an error naming the path.
    pub fn load_file(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let bad = |reason: String| Error::BadFile {
            path: path.to_path_buf(),
            reason,
        };
        if !path.is_file() {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let program = read_program(path)?;
        let mut layers = skeleton(&program, device)?;
        let mut store = BurnpackStore::from_file(path).auto_extension(false);
        let applied = catch_unwind(AssertUnwindSafe(|| layers.load_from(&mut store)))
            .map_err(|_| bad("the tensor data cannot be read".into()))?
            .map_err(|e| bad(e.to_string()))?;
        if !applied.missing.is_empty() || !applied.errors.is_empty() || !applied.unused.is_empty() {
            return Err(bad(format!(
                "tensors missing {:?}, unexpected {:?}, errors {:?}",
                applied.missing.iter().map(|(k, _)| k).collect::<Vec<_>>(),
                applied.unused,
                applied.errors
            )));
        }
        for conv in &mut layers.convs {
            conv.pack().map_err(|e| bad(e.to_string()))?;
        }
        for linear in &mut layers.linears {
            linear.pack().map_err(|e| bad(e.to_string()))?;
        }
        QuantizedModel::new(program, layers).map_err(|e| bad(e.to_string()))
    }
}

/// The program in a record's metadata, after checking the record's version.
fn read_program(path: &Path) -> Result<QuantizedProgram> {
    let bad = |reason: String| Error::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let reader = catch_unwind(|| burn_pack::Reader::from_file_exact(path))
        .map_err(|_| bad("not a burnpack file".into()))?
        .map_err(|e| bad(e.to_string()))?;
    let metadata = reader.metadata();
    let version = metadata
        .get(KEY_VERSION)
        .ok_or_else(|| bad("not a burn-quantize record (no format version)".into()))?;
    if version != &RECORD_FORMAT_VERSION.to_string() {
        return Err(bad(format!(
            "record format version {version}; this build reads {RECORD_FORMAT_VERSION}"
        )));
    }
    let json = metadata
        .get(KEY_PROGRAM)
        .ok_or_else(|| bad("no program in the record".into()))?;
    // The version first: another version's program need not parse as this one's.
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| bad(format!("program: {e}")))?;
    let version = value.get("version").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(PROGRAM_FORMAT_VERSION)) {
        return Err(bad(format!(
            "program format version {}; this build reads {PROGRAM_FORMAT_VERSION}",
            version.map_or("missing".into(), |v| v.to_string())
        )));
    }
    serde_json::from_value(value).map_err(|e| bad(format!("program: {e}")))
}

/// Layers of the right shapes and types, holding zeros, for a record to be loaded into.
fn skeleton(program: &QuantizedProgram, device: &Device) -> Result<QuantizedLayers> {
    let convs = program
        .convs
        .iter()
        .map(|l| {
            let g = l.geometry;
            let weights =
                g.out_channels * (g.in_channels / g.groups.max(1)) * g.kernel[0] * g.kernel[1];
            QConv2d::unpacked(
                g,
                QWeights::zeros(weights, g.out_channels),
                l.spec.clone(),
                device,
            )
        })
        .collect();
    let linears = program
        .linears
        .iter()
        .map(|l| {
            let zeros = QWeights::zeros(l.out_features * l.in_features, l.out_features);
            QLinear::unpacked(l.out_features, l.in_features, zeros, l.spec.clone(), device)
        })
        .collect();
    let floats = program
        .float_params
        .iter()
        .map(|&id| {
            let n: usize = program.shape_at(id, 1)?.iter().product();
            Ok(Param::initialized(
                ParamId::new(),
                Tensor::zeros([n], device),
            ))
        })
        .collect::<Result<_>>()?;
    Ok(QuantizedLayers {
        convs,
        linears,
        floats,
    })
}
