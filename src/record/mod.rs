//! Saving and loading a [`QuantizedModel`] as a burnpack record, and checking a record before
//! anything is built from it.
//!
//! The file is one burnpack: the layers' tensors (`i8`/`i16` weights, `i32` biases, `f32`
//! scales and float parameters, named as Burn names the parameters of [`QuantizedLayers`]) and,
//! in its metadata, the record format version, the program as JSON, and the content checksums
//! (xxh3-64 of the program and of every tensor's name, type, shape and bytes).
//!
//! A record is untrusted input. Loading reads the file once (its size bounds what is
//! allocated), then, before building anything, checks: the burnpack header and tensor table
//! (ranges inside the file, byte lengths matching type and shape), the format version, the
//! checksums, the program's own consistency ([`QuantizedProgram::validate`]), and every
//! tensor's name, type and shape against what the program reads. Only then are the layers
//! built from the file's bytes and packed, and the program's shapes checked along its steps by
//! a dry run at the recorded input shapes. Every failure is an [`Error::BadFile`] naming the
//! path and the field or tensor.
//!
//! Format version 2 added the checksums; version-1 files are refused with an error saying so
//! (quantize the model again, or load it with the release that wrote it and save it again).

mod checksum;
mod tensors;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use burn::tensor::{Bytes, Device, TensorData};

use crate::exec::QuantizedExecutor;
use crate::program::{PROGRAM_FORMAT_VERSION, QuantizedLayers, QuantizedProgram};
use crate::quantized::QuantizedModel;
use crate::{Error, Result};
use checksum::{Checksums, Stored};

/// Version of the record layout; bumped on every incompatible change (2: content checksums).
pub const RECORD_FORMAT_VERSION: u32 = 2;

/// The largest record [`QuantizedModel::load`] reads (4 GiB).
pub const MAX_RECORD_BYTES: u64 = 4 << 30;

/// The path named in errors about a record read from memory.
const IN_MEMORY: &str = "<record in memory>";

const KEY_VERSION: &str = "burn_quantize.record_version";
const KEY_PROGRAM: &str = "burn_quantize.program";
const KEY_CHECKSUMS: &str = "burn_quantize.checksums";

impl QuantizedModel {
    /// Saves the model to `path` (a burnpack file; no extension is added), with the checksums
    /// [`load`](Self::load) verifies.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_bytes().map_err(|e| rename(e, path))?;
        std::fs::write(path, bytes).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// The record [`save`](Self::save) writes, as bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let program = serde_json::to_string(&self.program)
            .map_err(|e| bad(IN_MEMORY, format!("program: {e}")))?;
        let tensors = tensors::of_layers(&self.layers)
            .into_iter()
            .map(|t| (t.name, t.data))
            .collect();
        RecordParts { program, tensors }.to_bytes()
    }

    /// Loads a model saved by [`save`](Self::save), checking the whole file first
    /// (see the [module documentation](self)). A missing file is an [`Error::Io`]; a file that
    /// is not such a record, of another format version, altered or damaged, or whose program
    /// is inconsistent, an [`Error::BadFile`] naming the path and what is wrong.
    pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let path = path.as_ref();
        let bytes = read_bounded(path)?;
        Self::from_bytes(&bytes, device).map_err(|e| rename(e, path))
    }

    /// Loads a model from a record's bytes, with every check of
    /// [`load`](Self::load) (errors name the path `<record in memory>`).
    pub fn from_bytes(bytes: &[u8], device: &Device) -> Result<Self> {
        let parts = RecordParts::from_bytes(bytes)?;
        let program = parse_program(&parts.program).map_err(|e| bad(IN_MEMORY, e))?;
        program
            .validate()
            .map_err(|e| bad(IN_MEMORY, format!("program: {e}")))?;
        let tensors = parts.tensors.into_iter().collect();
        let layers: QuantizedLayers =
            tensors::layers(&program, tensors, device).map_err(|e| bad(IN_MEMORY, e))?;
        let model =
            QuantizedModel::new(program, layers).map_err(|e| bad(IN_MEMORY, e.to_string()))?;
        QuantizedExecutor::check_recorded_shapes(&model.program, &model.layers)
            .map_err(|e| bad(IN_MEMORY, format!("program shapes: {e}")))?;
        Ok(model)
    }
}

/// The parts of a record as stored: the program's JSON and the tensors by name, read with
/// their format version and checksums verified but nothing checked against the program. For
/// tools that inspect or edit records: [`to_bytes`](Self::to_bytes) writes fresh checksums, so
/// an edited record loads only if its program and tensors pass every check of
/// [`QuantizedModel::from_bytes`].
#[derive(Clone, Debug, PartialEq)]
pub struct RecordParts {
    /// The program, as JSON.
    pub program: String,
    /// The tensors, by name.
    pub tensors: Vec<(String, TensorData)>,
}

impl RecordParts {
    /// The record's bytes: a burnpack with the format version, the program and the checksums
    /// in its metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut sums = Checksums::default();
        sums.add_program(&self.program);
        let tensors = (self.tensors.iter())
            .map(|(name, data)| {
                let shape = data.shape().to_vec();
                sums.add_tensor(name, data.dtype(), &shape, data.as_bytes());
                let bytes = Bytes::from_bytes_vec(data.as_bytes().to_vec());
                burn_pack::Tensor::new(name.clone(), data.dtype(), shape, None, bytes)
            })
            .collect();
        let bytes = burn_pack::Writer::new(tensors)
            .with_metadata(KEY_VERSION, &RECORD_FORMAT_VERSION.to_string())
            .with_metadata(KEY_PROGRAM, &self.program)
            .with_metadata(KEY_CHECKSUMS, &sums.to_text())
            .into_bytes()
            .map_err(|e| bad(IN_MEMORY, e.to_string()))?;
        Ok(bytes.to_vec())
    }

    /// Reads a record's parts, verifying its burnpack structure, format version and
    /// checksums; the error names what does not match.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let reason = |r: String| bad(IN_MEMORY, r);
        let bytes = Bytes::from_bytes_vec(bytes.to_vec());
        let reader = catch_unwind(AssertUnwindSafe(|| burn_pack::Reader::from_bytes(bytes)))
            .map_err(|_| reason("not a burnpack file".into()))?
            .map_err(|e| reason(format!("not a readable burnpack file: {e}")))?;
        let metadata = reader.metadata();
        let field = |key: &str, what: &str| {
            (metadata.get(key).cloned())
                .ok_or_else(|| reason(format!("not a burn-quantize record (no {what})")))
        };
        check_version(&field(KEY_VERSION, "format version")?).map_err(reason)?;
        let program = field(KEY_PROGRAM, "program")?;
        let stored = Stored::parse(&field(KEY_CHECKSUMS, "checksums")?).map_err(reason)?;
        let mut sums = Checksums::default();
        sums.add_program(&program);
        let mut tensors = Vec::new();
        for t in reader.into_tensors().map_err(|e| reason(e.to_string()))? {
            let bytes = t.to_bytes().map_err(|e| reason(e.to_string()))?;
            sums.add_tensor(&t.name, t.dtype, &t.shape, &bytes);
            let data = TensorData::from_bytes_vec(bytes.to_vec(), t.shape.clone(), t.dtype);
            tensors.push((t.name, data));
        }
        sums.verify(&stored).map_err(reason)?;
        Ok(RecordParts { program, tensors })
    }
}

/// The bytes of the file at `path`, if it is a file of at most [`MAX_RECORD_BYTES`].
fn read_bounded(path: &Path) -> Result<Vec<u8>> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(bad(path, "not a file".into()));
    }
    if meta.len() > MAX_RECORD_BYTES {
        return Err(bad(
            path,
            format!(
                "{} bytes; records are at most {MAX_RECORD_BYTES}",
                meta.len()
            ),
        ));
    }
    std::fs::read(path).map_err(io)
}

/// `Err` unless `version` is [`RECORD_FORMAT_VERSION`].
fn check_version(version: &str) -> std::result::Result<(), String> {
    if version == RECORD_FORMAT_VERSION.to_string() {
        return Ok(());
    }
    let hint = match version {
        "1" => {
            " (version 1 has no checksums: quantize the model again, or load it with the \
                release that wrote it and save it again)"
        }
        _ => "",
    };
    Err(format!(
        "record format version {version}; this build reads {RECORD_FORMAT_VERSION}{hint}"
    ))
}

/// The program of a record's JSON, after checking its format version (another version's
/// program need not parse as this one's).
fn parse_program(json: &str) -> std::result::Result<QuantizedProgram, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("program: {e}"))?;
    let version = value.get("version").and_then(serde_json::Value::as_u64);
    if version != Some(u64::from(PROGRAM_FORMAT_VERSION)) {
        return Err(format!(
            "program format version {}; this build reads {PROGRAM_FORMAT_VERSION}",
            version.map_or("missing".into(), |v| v.to_string())
        ));
    }
    serde_json::from_value(value).map_err(|e| format!("program: {e}"))
}

fn bad(path: impl Into<PathBuf>, reason: String) -> Error {
    Error::BadFile {
        path: path.into(),
        reason,
    }
}

/// `error` with the in-memory record's path replaced by `path`.
fn rename(error: Error, path: &Path) -> Error {
    match error {
        Error::BadFile { reason, .. } => bad(path, reason),
        other => other,
    }
}
