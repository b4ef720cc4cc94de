//! The library's error type. Every message is one line that names the file, layer or field at fault.

use std::path::PathBuf;

/// Errors from building, running and training nets.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error(transparent)]
    Proto(#[from] crema_proto::ProtoError),
    #[error(transparent)]
    Data(#[from] crema_data_tools::DataError),
    /// An error raised while setting up or running one layer.
    #[error("layer `{layer}` (type {kind}): {msg}")]
    Layer {
        layer: String,
        kind: String,
        msg: String,
    },
    #[error("{what} `{path}`: {source}")]
    Io {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Msg(String),
}

/// Shorthand result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A free-form message error.
    pub fn msg(s: impl Into<String>) -> Self {
        Error::Msg(s.into())
    }

    /// Attaches a layer's name and type to an error raised inside it (once).
    pub fn in_layer(self, layer: &str, kind: &str) -> Self {
        match self {
            Error::Msg(msg) => Error::Layer {
                layer: layer.to_string(),
                kind: kind.to_string(),
                msg,
            },
            other => other,
        }
    }

    /// An I/O error naming what was being accessed and its path.
    pub fn io(what: &str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.to_string(),
            path: path.into(),
            source,
        }
    }
}

/// Returns early with a formatted [`Error::Msg`].
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::Error::Msg(format!($($arg)*))) };
}
