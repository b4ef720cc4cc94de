//! Caffe's extract_features: named blobs of a net, batch after batch, into LMDBs of float Datums.

use crate::net::Net;
use crate::{bail, Error, Result};
use crema_data_tools::DatumWriter;
use crema_proto::caffe::Datum;
use std::path::PathBuf;

/// One blob's values for one item, as Caffe's extract_features stores them: channels, height and
/// width are the blob's legacy axes 1..3 (1 where the blob has fewer axes).
pub fn feature_datum(shape: &[usize], values: &[f32]) -> Datum {
    let axis = |i: usize| shape.get(i).copied().unwrap_or(1) as i32;
    let rest: usize = shape.iter().skip(4).product();
    Datum {
        channels: Some(axis(1)),
        height: Some(axis(2)),
        width: Some(axis(3) * rest as i32),
        float_data: values.to_vec(),
        ..Default::default()
    }
}

/// Caffe's keys: the item's index, zero-padded to 10 digits.
pub fn feature_key(index: usize) -> String {
    format!("{index:010}")
}

/// Runs `batches` forward passes of `net` and writes blob `blobs[i]` of every item into the new
/// LMDB `dbs[i]`; `progress` is called after each batch. Returns the items written per blob.
pub fn extract_features(
    net: &mut Net,
    blobs: &[String],
    dbs: &[PathBuf],
    batches: usize,
    overwrite: bool,
    mut progress: impl FnMut(usize),
) -> Result<usize> {
    if blobs.len() != dbs.len() {
        bail!(
            "{} blob names but {} databases; give one database per blob",
            blobs.len(),
            dbs.len()
        );
    }
    let handles = blobs
        .iter()
        .map(|b| {
            net.blob(b).ok_or_else(|| {
                Error::msg(format!(
                    "the net has no blob named `{b}`; its blobs: {}",
                    net.blob_names().join(", ")
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut writers = dbs
        .iter()
        .map(|d| DatumWriter::create(d, overwrite))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let engine = net.engine().clone();
    let mut counts = vec![0usize; blobs.len()];
    for batch in 0..batches {
        net.forward()?;
        for (i, (blob, writer)) in handles.iter().zip(writers.iter_mut()).enumerate() {
            let shape = blob.shape();
            let num = shape.first().copied().unwrap_or(1).max(1);
            let values = blob.data_to_vec(&*engine);
            let dim = values.len() / num;
            for item in values.chunks(dim.max(1)) {
                writer.put(&feature_key(counts[i]), &feature_datum(&shape, item))?;
                counts[i] += 1;
                if counts[i].is_multiple_of(1000) {
                    tracing::info!(
                        "Extracted features of {} query images for feature blob {}",
                        counts[i],
                        blobs[i]
                    );
                }
            }
        }
        progress(batch + 1);
    }
    for (i, w) in writers.into_iter().enumerate() {
        w.finish()?;
        tracing::info!(
            "Extracted features of {} query images for feature blob {}",
            counts[i],
            blobs[i]
        );
    }
    Ok(counts.first().copied().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datums_use_caffes_legacy_axes() {
        let d = feature_datum(&[10, 4096], &[1.0, 2.0]);
        assert_eq!((d.channels(), d.height(), d.width()), (4096, 1, 1));
        let d = feature_datum(&[10, 3, 5, 7], &[]);
        assert_eq!((d.channels(), d.height(), d.width()), (3, 5, 7));
        assert_eq!(feature_key(42), "0000000042");
    }
}
