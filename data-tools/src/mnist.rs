//! MNIST idx files (plain or gzipped) to an LMDB of Datums, as Caffe's convert_mnist_data does.
use std::io::Read;
use std::path::Path;

use crema_proto::caffe::Datum;

use crate::error::{DataError, Result};
use crate::lmdb::DatumWriter;

const IMAGES_MAGIC: u32 = 2051;
const LABELS_MAGIC: u32 = 2049;

/// The images of an idx3 file: `count` images of `rows` × `cols` bytes.
#[derive(Debug, Clone)]
pub struct MnistImages {
    /// Number of images.
    pub count: usize,
    /// Rows per image.
    pub rows: usize,
    /// Columns per image.
    pub cols: usize,
    /// `count * rows * cols` pixel bytes, image after image.
    pub pixels: Vec<u8>,
}

/// Reads a whole file, inflating it if it starts with the gzip magic bytes.
fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>> {
    let raw = std::fs::read(path).map_err(|e| DataError::io("read", path, e))?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| DataError::Mnist {
                path: path.to_path_buf(),
                reason: format!("gzip data is corrupt ({e}); download the file again"),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn bad(path: &Path, reason: String) -> DataError {
    DataError::Mnist {
        path: path.to_path_buf(),
        reason,
    }
}

/// Reads an idx3-ubyte image file (magic 2051).
pub fn read_images(path: &Path) -> Result<MnistImages> {
    let bytes = read_maybe_gzip(path)?;
    let magic = if bytes.len() >= 4 {
        be_u32(&bytes, 0)
    } else {
        0
    };
    if magic != IMAGES_MAGIC {
        let hint = if magic == LABELS_MAGIC {
            "; this is a label file, the images come first"
        } else {
            ""
        };
        return Err(bad(
            path,
            format!("magic number {magic}, expected {IMAGES_MAGIC} for an image file{hint}"),
        ));
    }
    if bytes.len() < 16 {
        return Err(bad(
            path,
            format!(
                "only {} bytes; an idx3 image file has a 16-byte header",
                bytes.len()
            ),
        ));
    }
    let count = be_u32(&bytes, 4) as usize;
    let rows = be_u32(&bytes, 8) as usize;
    let cols = be_u32(&bytes, 12) as usize;
    let needed = count
        .checked_mul(rows)
        .and_then(|n| n.checked_mul(cols))
        .ok_or_else(|| bad(path, "header sizes overflow".into()))?;
    if rows == 0 || cols == 0 {
        return Err(bad(path, format!("header says {rows}x{cols} images")));
    }
    if bytes.len() - 16 != needed {
        return Err(bad(
            path,
            format!(
                "header promises {count} images of {rows}x{cols} ({needed} bytes) but {} bytes follow; the file is truncated or not MNIST",
                bytes.len() - 16
            ),
        ));
    }
    Ok(MnistImages {
        count,
        rows,
        cols,
        pixels: bytes[16..].to_vec(),
    })
}

/// Reads an idx1-ubyte label file (magic 2049).
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_maybe_gzip(path)?;
    let magic = if bytes.len() >= 4 {
        be_u32(&bytes, 0)
    } else {
        0
    };
    if magic != LABELS_MAGIC {
        let hint = if magic == IMAGES_MAGIC {
            "; this is an image file, the labels come second"
        } else {
            ""
        };
        return Err(bad(
            path,
            format!("magic number {magic}, expected {LABELS_MAGIC} for a label file{hint}"),
        ));
    }
    if bytes.len() < 8 {
        return Err(bad(
            path,
            format!(
                "only {} bytes; an idx1 label file has an 8-byte header",
                bytes.len()
            ),
        ));
    }
    let count = be_u32(&bytes, 4) as usize;
    if bytes.len() - 8 != count {
        return Err(bad(
            path,
            format!(
                "header promises {count} labels but {} bytes follow; the file is truncated or not MNIST",
                bytes.len() - 8
            ),
        ));
    }
    Ok(bytes[8..].to_vec())
}

/// Converts items `start..start+count` (all from `start` when `count` is None) of an MNIST
/// image/label pair into an LMDB at `out`, keys `%08d` counting from 0 within the slice.
/// Returns the number of Datums written.
pub fn convert_mnist(
    images: &Path,
    labels: &Path,
    out: &Path,
    start: usize,
    count: Option<usize>,
    overwrite: bool,
) -> Result<usize> {
    let imgs = read_images(images)?;
    let labs = read_labels(labels)?;
    if imgs.count != labs.len() {
        return Err(DataError::InvalidArgument(format!(
            "{} holds {} images but {} holds {} labels; pass the matching pair (train with train, t10k with t10k)",
            images.display(),
            imgs.count,
            labels.display(),
            labs.len()
        )));
    }
    if start > imgs.count {
        return Err(DataError::InvalidArgument(format!(
            "--start {start} is past the end of {} ({} items)",
            images.display(),
            imgs.count
        )));
    }
    let available = imgs.count - start;
    let n = match count {
        Some(c) if c > available => {
            return Err(DataError::InvalidArgument(format!(
                "--start {start} --count {c} asks for more than the {available} items left in {} ({} in all)",
                images.display(),
                imgs.count
            )))
        }
        Some(c) => c,
        None => available,
    };
    let size = imgs.rows * imgs.cols;
    let mut writer = DatumWriter::create(out, overwrite)?;
    for i in 0..n {
        let item = start + i;
        let datum = Datum {
            channels: Some(1),
            height: Some(imgs.rows as i32),
            width: Some(imgs.cols as i32),
            data: Some(imgs.pixels[item * size..(item + 1) * size].to_vec()),
            label: Some(labs[item] as i32),
            encoded: Some(false),
            ..Default::default()
        };
        writer.put(&format!("{i:08}"), &datum)?;
    }
    let written = writer.finish()?;
    tracing::info!(
        "convert-mnist: wrote {written} items ({}x{}) to {}",
        imgs.rows,
        imgs.cols,
        out.display()
    );
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx3(count: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [IMAGES_MAGIC, count, rows, cols] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v.extend_from_slice(pixels);
        v
    }

    fn idx1(labels: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
        v.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        v.extend_from_slice(labels);
        v
    }

    #[test]
    fn synthetic_files_convert_and_validate() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("img");
        let lab = dir.path().join("lab.gz");
        let pixels: Vec<u8> = (0..3 * 2 * 2).map(|i| i as u8).collect();
        std::fs::write(&img, idx3(3, 2, 2, &pixels)).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &idx1(&[5, 6, 7])).unwrap();
        std::fs::write(&lab, gz.finish().unwrap()).unwrap();

        let out = dir.path().join("db");
        assert_eq!(convert_mnist(&img, &lab, &out, 1, None, false).unwrap(), 2);
        let all = crate::lmdb::read_all(&out).unwrap();
        assert_eq!(all[0].0, "00000000");
        assert_eq!(all[0].1.label(), 6);
        assert_eq!(all[0].1.data(), &[4, 5, 6, 7]);
        assert_eq!(all[1].1.height(), 2);

        let e = convert_mnist(&lab, &img, &dir.path().join("x"), 0, None, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lab.gz") && e.contains("2049"), "{e}");
        let e = convert_mnist(&img, &lab, &dir.path().join("x"), 1, Some(3), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--count 3"), "{e}");
        std::fs::write(&img, idx3(4, 2, 2, &pixels)).unwrap();
        let e = read_images(&img).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        assert!(!dir.path().join("x").exists());
    }
}
