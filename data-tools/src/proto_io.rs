//! Reading and writing binary protobuf files (`.binaryproto`) with errors that name the file.
use std::io::Write;
use std::path::Path;

use prost::Message;

use crate::error::{DataError, Result};

/// Decodes the binary protobuf file `path` as `M`; `what` names the message in errors.
pub fn read_binary<M: Message + Default>(path: &Path, what: &'static str) -> Result<M> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io("read", path, e))?;
    M::decode(bytes.as_slice()).map_err(|source| DataError::Proto {
        path: path.to_path_buf(),
        what,
        source,
    })
}

/// Writes `msg` to `path` through a temporary file and a rename, so a crash never leaves half a file.
pub fn write_binary_atomic<M: Message>(path: &Path, msg: &M) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile_in(dir, path)?;
    tmp.1
        .write_all(&msg.encode_to_vec())
        .and_then(|_| tmp.1.sync_all())
        .map_err(|e| DataError::io("write", &tmp.0, e))?;
    std::fs::rename(&tmp.0, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp.0);
        DataError::io("write", path, e)
    })
}

/// Creates a fresh temporary file beside `target`.
fn tempfile_in(dir: &Path, target: &Path) -> Result<(std::path::PathBuf, std::fs::File)> {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    for attempt in 0..100u32 {
        let tmp = dir.join(format!(".{name}.tmp{}.{attempt}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(DataError::io("create", tmp, e)),
        }
    }
    Err(DataError::io(
        "create a temporary file in",
        dir,
        std::io::Error::other("too many stale temporary files"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crema_proto::caffe::BlobProto;

    #[test]
    fn round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.binaryproto");
        let blob = BlobProto {
            num: Some(1),
            data: vec![1.5, 2.5],
            ..Default::default()
        };
        write_binary_atomic(&path, &blob).unwrap();
        let back: BlobProto = read_binary(&path, "caffe.BlobProto").unwrap();
        assert_eq!(back, blob);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        std::fs::write(&path, [0xffu8, 0xff, 0xff]).unwrap();
        let err = read_binary::<BlobProto>(&path, "caffe.BlobProto")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m.binaryproto") && err.contains("caffe.BlobProto"),
            "{err}"
        );
        let err = read_binary::<BlobProto>(&dir.path().join("x"), "caffe.BlobProto")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read"), "{err}");
    }
}
