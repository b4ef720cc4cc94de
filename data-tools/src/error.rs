//! The one error type of the data tools: every message names the file and says what would fix it.
use std::path::PathBuf;

/// Result with [`DataError`].
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// Everything that can go wrong while converting, reading or transforming data.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file or directory could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What we were doing ("read", "create directory", ...).
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },

    /// An LMDB call failed.
    #[error("LMDB {}: {op} failed: {source}", path.display())]
    Lmdb {
        /// The database directory.
        path: PathBuf,
        /// The LMDB operation that failed.
        op: &'static str,
        /// LMDB's reason.
        source: ::lmdb::Error,
    },

    /// The output database exists and `overwrite` was not asked for.
    #[error("output database {} already exists; pass --overwrite to replace it or choose another name", path.display())]
    DbExists {
        /// The existing path.
        path: PathBuf,
    },

    /// The input database directory does not exist.
    #[error("LMDB {} does not exist; create it with `crema convert-imageset` or `crema convert-mnist`, or fix the path", path.display())]
    DbMissing {
        /// The missing path.
        path: PathBuf,
    },

    /// The path exists but is not an LMDB environment.
    #[error("{} is not an LMDB: {reason}", path.display())]
    NotLmdb {
        /// The offending path.
        path: PathBuf,
        /// Why it is not one.
        reason: String,
    },

    /// The database holds no entries.
    #[error("LMDB {} is empty; re-run the conversion that should have filled it", path.display())]
    EmptyDb {
        /// The empty database.
        path: PathBuf,
    },

    /// An LMDB value is not a serialized Datum (or is an inconsistent one).
    #[error("LMDB {}: entry {key:?} is not a valid Datum: {reason}", path.display())]
    BadDatum {
        /// The database.
        path: PathBuf,
        /// The entry's key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// An MNIST idx file is malformed.
    #[error("MNIST file {}: {reason}", path.display())]
    Mnist {
        /// The idx file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A line of an image list file is malformed.
    #[error("{}:{line}: {reason}; each line must be `relative/path label` with an integer label", path.display())]
    ListLine {
        /// The list file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: String,
    },

    /// The image root folder does not exist.
    #[error("image root folder {} does not exist or is not a directory; fix ROOTFOLDER", path.display())]
    RootMissing {
        /// The root folder.
        path: PathBuf,
    },

    /// An image could not be read or decoded.
    #[error("cannot decode image {}: {reason}", path.display())]
    Image {
        /// The image file (or the LMDB entry it came from).
        path: PathBuf,
        /// The decoder's reason.
        reason: String,
    },

    /// With check_size, an image differs in size from the first one.
    #[error("{} is {}x{}x{} (CxHxW) but the first image was {}x{}x{}; resize with --resize-height/--resize-width or drop --check-size", path.display(), found[0], found[1], found[2], expected[0], expected[1], expected[2])]
    SizeMismatch {
        /// The offending image.
        path: PathBuf,
        /// The first image's channels, height, width.
        expected: [u32; 3],
        /// This image's channels, height, width.
        found: [u32; 3],
    },

    /// A protobuf file (mean, weights) could not be read or decoded.
    #[error(transparent)]
    Proto(#[from] crema_proto::ProtoError),

    /// A mean file decodes but its contents are inconsistent.
    #[error("mean file {}: {reason}", path.display())]
    Mean {
        /// The mean file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A transformation could not be applied (datum and parameters disagree).
    #[error("transform_param: {0}")]
    Transform(String),

    /// Options that contradict each other or are out of range.
    #[error("{0}")]
    InvalidArgument(String),
}

impl DataError {
    /// Shorthand for [`DataError::Io`].
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// Shorthand for [`DataError::Lmdb`].
    pub fn lmdb(path: impl Into<PathBuf>, op: &'static str, source: ::lmdb::Error) -> Self {
        DataError::Lmdb {
            path: path.into(),
            op,
            source,
        }
    }
}
