//! Reading and writing Caffe's files: prototxt (protobuf text format) and binary protobuf.
//!
//! The generated prost types carry no field names, so text goes through prost-reflect's
//! `DynamicMessage` (driven by the descriptor set of caffe.proto) and is then transcoded into
//! the generated type. Parse errors become one line naming file:line:col (see `diagnose`);
//! output is printed in Caffe's own layout (see `print`).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor};

use crate::{caffe, diagnose, print};

/// Everything that can go wrong reading or writing a Caffe file.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// A prototxt does not parse; `message` already includes any suggestion.
    #[error("{origin}:{line}:{column}: {message}")]
    Parse {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    /// A file could not be read (`what` says which file it was meant to be).
    #[error("cannot read {what} `{}`: {cause}", path.display())]
    Read {
        what: String,
        path: PathBuf,
        cause: io::Error,
    },
    /// A file could not be written.
    #[error("cannot write `{}`: {cause}", path.display())]
    Write { path: PathBuf, cause: io::Error },
    /// A binary file is not the protobuf message it should be.
    #[error("{}: not a valid {message_name} binary protobuf: {cause}", path.display())]
    Decode {
        path: PathBuf,
        message_name: String,
        cause: prost::DecodeError,
    },
    /// The message name is not in caffe.proto (a bug in the caller).
    #[error("no message `{0}` in caffe.proto")]
    UnknownMessage(String),
    /// The Rust type does not match the named message (a bug in the caller).
    #[error("the Rust type does not match {message_name}: {cause}")]
    TypeMismatch {
        message_name: String,
        cause: prost::DecodeError,
    },
}

/// The descriptor pool of caffe.proto, decoded once.
pub fn descriptor_pool() -> &'static DescriptorPool {
    static POOL: OnceLock<DescriptorPool> = OnceLock::new();
    POOL.get_or_init(|| {
        // The bytes are produced by build.rs from caffe.proto, never from user input.
        DescriptorPool::decode(crate::DESCRIPTOR_SET)
            .expect("build.rs wrote a valid descriptor set")
    })
}

/// Looks up a message of caffe.proto by full name (`caffe.NetParameter`); the package may be omitted.
pub fn message_descriptor(message_name: &str) -> Result<MessageDescriptor, ProtoError> {
    let pool = descriptor_pool();
    pool.get_message_by_name(message_name)
        .or_else(|| pool.get_message_by_name(&format!("caffe.{message_name}")))
        .ok_or_else(|| ProtoError::UnknownMessage(message_name.to_owned()))
}

/// Parses prototxt `text` as `message_name`; `origin` (usually the path) prefixes error messages.
pub fn parse_text<M: Message + Default>(
    text: &str,
    origin: &str,
    message_name: &str,
) -> Result<M, ProtoError> {
    let desc = message_descriptor(message_name)?;
    // A byte-order mark is invisible in editors; Windows tools like to add one.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let dynamic = DynamicMessage::parse_text_format(desc.clone(), text).map_err(|err| {
        let located = diagnose::locate(&err, text, &desc);
        ProtoError::Parse {
            origin: origin.to_owned(),
            line: located.line,
            column: located.column,
            message: located.message,
        }
    })?;
    dynamic
        .transcode_to::<M>()
        .map_err(|cause| ProtoError::TypeMismatch {
            message_name: desc.full_name().to_owned(),
            cause,
        })
}

/// Reads and parses a prototxt file; `what` ("net definition", "solver", ...) names it in IO errors.
pub fn read_text<M: Message + Default>(
    path: &Path,
    message_name: &str,
    what: &str,
) -> Result<M, ProtoError> {
    let bytes = fs::read(path).map_err(|cause| ProtoError::Read {
        what: what.to_owned(),
        path: path.to_owned(),
        cause,
    })?;
    // Caffe reads bytes; prototxts in the wild carry comments in Latin-1 or GBK. Replacing
    // invalid UTF-8 keeps those files parsing (it only alters bytes inside comments or strings).
    let text = String::from_utf8_lossy(&bytes);
    parse_text(&text, &path.display().to_string(), message_name)
}

/// Reads a net definition (train_val.prototxt, deploy.prototxt).
pub fn read_net_text(path: &Path) -> Result<caffe::NetParameter, ProtoError> {
    read_text(path, "caffe.NetParameter", "net definition")
}

/// Reads a solver definition (solver.prototxt).
pub fn read_solver_text(path: &Path) -> Result<caffe::SolverParameter, ProtoError> {
    read_text(path, "caffe.SolverParameter", "solver")
}

/// Reads a binary protobuf file: .caffemodel, .binaryproto, .solverstate.
pub fn read_binary<M: Message + Default>(path: &Path, message_name: &str) -> Result<M, ProtoError> {
    let bytes = fs::read(path).map_err(|cause| ProtoError::Read {
        what: format!("{message_name} file"),
        path: path.to_owned(),
        cause,
    })?;
    // prost has no total-size limit (unlike protobuf's C++ CodedInputStream), so large
    // models decode directly from the buffer.
    M::decode(bytes.as_slice()).map_err(|cause| ProtoError::Decode {
        path: path.to_owned(),
        message_name: message_name.to_owned(),
        cause,
    })
}

/// Writes `msg` as binary protobuf, atomically: a crash leaves the old file or the new one.
pub fn write_binary_atomic<M: Message>(path: &Path, msg: &M) -> Result<(), ProtoError> {
    write_atomic(path, &msg.encode_to_vec())
}

/// Formats `msg` as multi-line prototxt in Caffe's layout (field-number order, one line per
/// value, one block per repeated message), readable by Caffe and by crema.
pub fn to_text<M: Message>(msg: &M, message_name: &str) -> Result<String, ProtoError> {
    let desc = message_descriptor(message_name)?;
    let mut dynamic = DynamicMessage::new(desc);
    dynamic
        .transcode_from(msg)
        .map_err(|cause| ProtoError::TypeMismatch {
            message_name: message_name.to_owned(),
            cause,
        })?;
    Ok(print::to_prototxt(&dynamic))
}

/// Writes `msg` as prototxt, atomically.
pub fn write_text_atomic<M: Message>(
    path: &Path,
    msg: &M,
    message_name: &str,
) -> Result<(), ProtoError> {
    write_atomic(path, to_text(msg, message_name)?.as_bytes())
}

/// Writes PATH.tmp-<pid>, fsyncs it, renames it over PATH and fsyncs the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ProtoError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    if let Err(cause) = written {
        let _ = fs::remove_file(&tmp);
        return Err(ProtoError::Write {
            path: path.to_owned(),
            cause,
        });
    }
    // Make the rename itself durable. Best effort: not every platform can open a directory.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}
