//! The crate's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in burn-quantize, with messages that name the key, shape or path
/// involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor or buffer had a shape the operation cannot take.
    #[error("shape mismatch in {context}: expected {expected}, got {got}")]
    Shape {
        /// Where the shape was checked (an op, a kernel, a model input).
        context: String,
        /// What was expected, in words or as a shape.
        expected: String,
        /// What was found.
        got: String,
    },
    /// An argument outside what the operation supports (a zero stride, a bad zero point, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A [`QConfigMap`](crate::qconfig::QConfigMap) entry that cannot be used.
    #[error("qconfig {kind} key `{key}` {reason}")]
    QConfigKey {
        /// Which kind of entry: `module`, `layer_type` or `module_regex`.
        kind: &'static str,
        /// The key as given.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Calibration could not be done (no data, a failing data loader, ...).
    #[error("calibration: {0}")]
    Calibration(String),
    /// A value that must be finite (a calibration input, an observed activation) was NaN or
    /// infinite.
    #[error("non-finite value (NaN or infinity) in {context}")]
    NonFinite {
        /// What held it: an observer, a node's output, a calibration batch.
        context: String,
    },
    /// A kernel path was requested that this CPU (or this build) cannot run.
    #[error("kernel path `{0}` is not available on this CPU")]
    IsaUnavailable(String),
    /// Capturing the model's forward on Burn's capture device failed.
    #[error("capture failed: {0}")]
    Capture(String),
    /// The captured graph uses something the graph builder or an interpreter cannot handle.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A graph is malformed (a value read before it is produced, a wrong format version, ...).
    #[error("invalid graph: {0}")]
    InvalidGraph(String),
    /// A file could not be read or written.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file was read but its content is not what it should be.
    #[error("bad file {path}: {reason}")]
    BadFile {
        /// The file involved.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Loading weights into a Burn module failed.
    #[error("loading weights from {path}: {reason}")]
    Weights {
        /// The weight file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Shorthand for results in this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
