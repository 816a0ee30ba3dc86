//! The library's error type: every failure a user can cause maps to one variant that names
//! the file, tensor, field or request parameter at fault.

use std::path::PathBuf;

/// Errors returned by the nanovllm library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A config value is missing, malformed or inconsistent.
    #[error("invalid config: field `{field}`: {reason}")]
    InvalidConfig {
        /// The config field (Hugging Face spelling).
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The model's architecture is not one nanovllm implements.
    #[error("unsupported architecture `{0}`")]
    UnsupportedArchitecture(String),
    /// A weights file is malformed (bad header, truncated data, ...).
    #[error("malformed weights file {file}: {reason}")]
    MalformedWeights {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor the architecture needs is not in the checkpoint.
    #[error("missing tensor `{name}` (looked in {file})")]
    MissingTensor {
        /// The tensor name.
        name: String,
        /// The file or directory searched.
        file: PathBuf,
    },
    /// A tensor has the wrong shape.
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The tensor name.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape in the file.
        got: Vec<usize>,
    },
    /// A tensor has a dtype nanovllm cannot use there.
    #[error("tensor `{name}` has dtype {got}, expected {expected}")]
    DTypeMismatch {
        /// The tensor name.
        name: String,
        /// Accepted dtypes.
        expected: String,
        /// The dtype in the file.
        got: String,
    },
    /// A request or call argument is invalid.
    #[error("invalid request: `{field}`: {reason}")]
    InvalidRequest {
        /// The offending parameter.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The cache has no room for the request.
    #[error("out of cache memory: {0}")]
    CacheExhausted(String),
    /// Tokenizer failure.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A tensor operation failed (a bug, or a shape the model did not expect).
    #[error("tensor op: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias for the library.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::InvalidConfig`].
    pub fn config(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::InvalidRequest`].
    pub fn request(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidRequest {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
