//! Mean images: computed over an LMDB of Datums (raw or encoded) as Caffe's compute_image_mean
//! does, stored as a legacy 4-D BlobProto, and read back from either BlobProto form.
use std::path::Path;

use ::lmdb::{Cursor, Transaction};
use crema_proto::caffe::{BlobProto, Datum};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use crate::error::{DataError, Result};
use crate::image_io::decode_datum;
use crate::lmdb::{open_read_only, parse_datum};

/// Entries summed per parallel step.
const CHUNK: usize = 2048;

/// A mean image: `data` holds channels × height × width floats.
#[derive(Clone, Debug, PartialEq)]
pub struct MeanImage {
    /// Channels.
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// C×H×W values.
    pub data: Vec<f32>,
}

/// The C×H×W values of a decoded Datum as f64, checked against its declared shape.
fn datum_values(datum: &Datum) -> std::result::Result<([usize; 3], Vec<f64>), String> {
    let shape = [
        datum.channels().max(0) as usize,
        datum.height().max(0) as usize,
        datum.width().max(0) as usize,
    ];
    let size = shape[0] * shape[1] * shape[2];
    let values: Vec<f64> = if !datum.data().is_empty() {
        datum.data().iter().map(|&b| b as f64).collect()
    } else {
        datum.float_data.iter().map(|&f| f as f64).collect()
    };
    if size == 0 || values.len() != size {
        return Err(format!(
            "declares {}x{}x{} but holds {} values",
            shape[0],
            shape[1],
            shape[2],
            values.len()
        ));
    }
    Ok((shape, values))
}

/// Computes the mean image of the LMDB at `db`, decoding encoded Datums to their own channels.
/// Returns it as a BlobProto in Caffe's legacy form (num=1, channels, height, width) and the
/// per-channel means (the mean over pixels of each channel of the mean image).
pub fn compute_image_mean(db: &Path, show_progress: bool) -> Result<(BlobProto, Vec<f32>)> {
    let (env, dbi) = open_read_only(db)?;
    let txn = env
        .begin_ro_txn()
        .map_err(|e| DataError::lmdb(db, "begin read", e))?;
    let total = env.stat().map(|s| s.entries()).unwrap_or(0);
    let progress = if show_progress {
        let bar = ProgressBar::new(total as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} datums ({per_sec}, eta {eta})",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut cursor = txn
        .open_ro_cursor(dbi)
        .map_err(|e| DataError::lmdb(db, "open cursor", e))?;
    let mut shape: Option<[usize; 3]> = None;
    let mut sum: Vec<f64> = Vec::new();
    let mut count = 0usize;
    let mut chunk: Vec<(&[u8], &[u8])> = Vec::with_capacity(CHUNK);
    let mut iter = cursor.iter_start();
    loop {
        chunk.clear();
        for item in iter.by_ref() {
            chunk.push(item.map_err(|e| DataError::lmdb(db, "read", e))?);
            if chunk.len() == CHUNK {
                break;
            }
        }
        if chunk.is_empty() {
            break;
        }
        if shape.is_none() {
            let (key, value) = chunk[0];
            let first = decode_datum(&parse_datum(db, key, value)?, false, false)
                .map_err(|e| bad_datum(db, key, e.to_string()))?;
            let (s, _) = datum_values(&first).map_err(|r| bad_datum(db, key, r))?;
            tracing::info!(
                "compute-image-mean: datums are {}x{}x{} (CxHxW)",
                s[0],
                s[1],
                s[2]
            );
            shape = Some(s);
            sum = vec![0.0; s[0] * s[1] * s[2]];
        }
        let expected = shape.unwrap_or_default();
        let partial = chunk
            .par_iter()
            .try_fold(
                || vec![0.0f64; sum.len()],
                |mut acc, &(key, value)| -> Result<Vec<f64>> {
                    let datum = decode_datum(&parse_datum(db, key, value)?, false, false)
                        .map_err(|e| bad_datum(db, key, e.to_string()))?;
                    let (s, values) = datum_values(&datum).map_err(|r| bad_datum(db, key, r))?;
                    if s != expected {
                        return Err(bad_datum(
                            db,
                            key,
                            format!(
                                "is {}x{}x{} but the first datum is {}x{}x{}; a mean needs equally sized images (convert with --resize-height/--resize-width)",
                                s[0], s[1], s[2], expected[0], expected[1], expected[2]
                            ),
                        ));
                    }
                    for (a, v) in acc.iter_mut().zip(values) {
                        *a += v;
                    }
                    Ok(acc)
                },
            )
            .try_reduce(
                || vec![0.0f64; sum.len()],
                |mut a, b| {
                    for (x, y) in a.iter_mut().zip(b) {
                        *x += y;
                    }
                    Ok(a)
                },
            )?;
        for (s, p) in sum.iter_mut().zip(partial) {
            *s += p;
        }
        count += chunk.len();
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    let Some([c, h, w]) = shape else {
        return Err(DataError::EmptyDb {
            path: db.to_path_buf(),
        });
    };
    let data: Vec<f32> = sum.iter().map(|s| (s / count as f64) as f32).collect();
    let channel_means = (0..c)
        .map(|k| {
            let plane = &sum[k * h * w..(k + 1) * h * w];
            (plane.iter().sum::<f64>() / (count * h * w) as f64) as f32
        })
        .collect();
    let blob = BlobProto {
        num: Some(1),
        channels: Some(c as i32),
        height: Some(h as i32),
        width: Some(w as i32),
        data,
        ..Default::default()
    };
    tracing::info!(
        "compute-image-mean: averaged {count} datums of {}",
        db.display()
    );
    Ok((blob, channel_means))
}

fn bad_datum(db: &Path, key: &[u8], reason: String) -> DataError {
    DataError::BadDatum {
        path: db.to_path_buf(),
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    }
}

/// Writes a mean BlobProto as a binaryproto file (atomically).
pub fn write_mean(path: &Path, blob: &BlobProto) -> Result<()> {
    Ok(crema_proto::write_binary_atomic(path, blob)?)
}

/// Reads a mean binaryproto in either the legacy (num/channels/height/width) or `shape` form.
/// Leading dimensions beyond C×H×W must be 1.
pub fn load_mean(path: &Path) -> Result<MeanImage> {
    let blob: BlobProto = crema_proto::read_binary(path, "caffe.BlobProto")?;
    mean_from_blob(&blob).map_err(|reason| DataError::Mean {
        path: path.to_path_buf(),
        reason,
    })
}

/// Interprets a BlobProto as a C×H×W mean image.
pub fn mean_from_blob(blob: &BlobProto) -> std::result::Result<MeanImage, String> {
    let legacy = blob.num.is_some()
        || blob.channels.is_some()
        || blob.height.is_some()
        || blob.width.is_some();
    let dims: Vec<i64> = if legacy {
        vec![
            blob.num() as i64,
            blob.channels() as i64,
            blob.height() as i64,
            blob.width() as i64,
        ]
    } else if let Some(shape) = &blob.shape {
        shape.dim.clone()
    } else {
        return Err("the BlobProto has neither num/channels/height/width nor shape".into());
    };
    if dims.iter().any(|&d| d < 0) {
        return Err(format!("negative dimension in {dims:?}"));
    }
    let mut d: Vec<usize> = dims.iter().map(|&x| x as usize).collect();
    while d.len() < 3 {
        d.insert(0, 1);
    }
    let (lead, chw) = d.split_at(d.len() - 3);
    if lead.iter().any(|&x| x != 1) {
        return Err(format!(
            "shape {dims:?} holds more than one image; a mean file holds 1xCxHxW"
        ));
    }
    let (c, h, w) = (chw[0], chw[1], chw[2]);
    let data: Vec<f32> = if !blob.double_data.is_empty() {
        blob.double_data.iter().map(|&v| v as f32).collect()
    } else {
        blob.data.clone()
    };
    if c * h * w == 0 || data.len() != c * h * w {
        return Err(format!(
            "shape {dims:?} needs {} values but the file holds {}",
            c * h * w,
            data.len()
        ));
    }
    Ok(MeanImage {
        channels: c,
        height: h,
        width: w,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crema_proto::caffe::BlobShape;

    #[test]
    fn blob_forms() {
        let legacy = BlobProto {
            num: Some(1),
            channels: Some(2),
            height: Some(1),
            width: Some(2),
            data: vec![1.0, 2.0, 3.0, 4.0],
            ..Default::default()
        };
        let m = mean_from_blob(&legacy).unwrap();
        assert_eq!((m.channels, m.height, m.width), (2, 1, 2));
        let shaped = BlobProto {
            shape: Some(BlobShape { dim: vec![2, 1, 2] }),
            double_data: vec![1.0, 2.0, 3.0, 4.0],
            ..Default::default()
        };
        assert_eq!(mean_from_blob(&shaped).unwrap(), m);
        let four = BlobProto {
            shape: Some(BlobShape {
                dim: vec![1, 2, 1, 2],
            }),
            data: vec![1.0, 2.0, 3.0, 4.0],
            ..Default::default()
        };
        assert_eq!(mean_from_blob(&four).unwrap(), m);
        let short = BlobProto {
            data: vec![1.0],
            ..legacy.clone()
        };
        assert!(mean_from_blob(&short)
            .unwrap_err()
            .contains("needs 4 values"));
        let many = BlobProto {
            num: Some(2),
            ..legacy
        };
        assert!(mean_from_blob(&many).is_err());
    }
}
