//! Weights in Caffe's binary format: loading a .caffemodel by layer name, and writing one.

use super::Net;
use crate::blob::BlobRef;
use crate::{bail, Result};
use crema_proto::caffe::{BlobProto, BlobShape, LayerParameter, NetParameter};
use std::path::Path;
use tracing::info;

/// The shape a BlobProto declares: `shape` if present, else the legacy num/channels/height/width.
pub fn proto_shape(b: &BlobProto) -> Vec<usize> {
    match &b.shape {
        Some(s) => s.dim.iter().map(|d| (*d).max(0) as usize).collect(),
        None => [b.num(), b.channels(), b.height(), b.width()]
            .iter()
            .map(|d| (*d).max(0) as usize)
            .collect(),
    }
}

/// Caffe's ShapeEquals: legacy 4-D shapes match blobs of up to 4 axes padded with leading 1s.
fn shape_matches(b: &BlobProto, target: &[usize]) -> bool {
    if b.shape.is_none() {
        if target.len() > 4 {
            return false;
        }
        let mut padded = vec![1usize; 4 - target.len()];
        padded.extend_from_slice(target);
        return padded == proto_shape(b);
    }
    proto_shape(b) == target
}

/// The values of a BlobProto (float or double storage).
pub fn proto_data(b: &BlobProto) -> Vec<f32> {
    if !b.double_data.is_empty() {
        b.double_data.iter().map(|v| *v as f32).collect()
    } else {
        b.data.clone()
    }
}

/// A BlobProto holding a blob's data in the modern `shape` form.
pub fn blob_to_proto(net: &Net, blob: &BlobRef) -> BlobProto {
    BlobProto {
        shape: Some(BlobShape {
            dim: blob.shape().iter().map(|d| *d as i64).collect(),
        }),
        data: blob.data_to_vec(&**net.engine()),
        ..Default::default()
    }
}

/// (layer name, blobs) of a trained net, whichever layer format it uses.
fn source_layers(src: &NetParameter) -> Vec<(String, Vec<BlobProto>)> {
    if !src.layer.is_empty() {
        src.layer
            .iter()
            .map(|l| (l.name().to_string(), l.blobs.clone()))
            .collect()
    } else {
        src.layers
            .iter()
            .map(|l| (l.name().to_string(), l.blobs.clone()))
            .collect()
    }
}

impl Net {
    /// Copies weights from a trained net into layers with the same name (Caffe's CopyTrainedLayersFrom).
    pub fn copy_trained_layers(&mut self, src: &NetParameter, origin: &str) -> Result<()> {
        let engine = self.engine().clone();
        for (name, blobs) in source_layers(src) {
            let Some(target) = self.layer_blobs(&name) else {
                info!("Ignoring source layer {name}");
                continue;
            };
            if blobs.is_empty() {
                continue;
            }
            if target.len() != blobs.len() {
                bail!(
                    "{origin}: layer `{name}` has {} weight blobs but the net's layer has {}; rename the layer to learn it from scratch",
                    blobs.len(),
                    target.len()
                );
            }
            info!("Copying source layer {name}");
            for (k, (t, s)) in target.iter().zip(&blobs).enumerate() {
                if !shape_matches(s, &t.shape()) {
                    bail!(
                        "{origin}: cannot copy param {k} of layer `{name}`: source shape {:?}, target shape {:?}; to learn this layer's parameters from scratch rather than copying from a saved net, rename the layer",
                        proto_shape(s),
                        t.shape()
                    );
                }
                let v = proto_data(s);
                if v.len() != t.count() {
                    bail!(
                        "{origin}: param {k} of layer `{name}` holds {} values for shape {:?}",
                        v.len(),
                        t.shape()
                    );
                }
                t.set_data(&*engine, &v);
            }
        }
        Ok(())
    }

    /// Loads a .caffemodel (binary NetParameter) by layer name.
    pub fn copy_trained_layers_from(&mut self, path: &Path) -> Result<()> {
        let src: NetParameter = crema_proto::read_binary(path, "caffe.NetParameter")?;
        self.copy_trained_layers(&src, &path.display().to_string())
    }

    /// The net with its weights, as Caffe writes a .caffemodel.
    pub fn to_proto(&self) -> NetParameter {
        let mut out = NetParameter {
            name: Some(self.name.clone()),
            ..Default::default()
        };
        for l in self.layers() {
            let mut lp: LayerParameter = l.param.clone();
            lp.blobs = l.blobs.iter().map(|b| blob_to_proto(self, b)).collect();
            out.layer.push(lp);
        }
        out
    }

    /// Writes the weights to a .caffemodel atomically.
    pub fn save_caffemodel(&self, path: &Path) -> Result<()> {
        crema_proto::write_binary_atomic(path, &self.to_proto())?;
        Ok(())
    }
}
