//! Parameter: a learned blob of a given shape as the layer's only top (no bottoms).

use super::{Ctx, Layer};
use crate::blob::{Blob, BlobRef};
use crate::{bail, Result};
use crema_proto::caffe::LayerParameter;

pub struct Parameter {
    shape: Vec<usize>,
    blobs: Vec<BlobRef>,
}

impl Parameter {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let dims = lp
            .parameter_param
            .as_ref()
            .and_then(|p| p.shape.as_ref())
            .map(|s| s.dim.clone())
            .unwrap_or_default();
        if let Some(d) = dims.iter().find(|d| **d < 0) {
            bail!("parameter_param.shape has dimension {d}; dimensions must not be negative");
        }
        Ok(Box::new(Parameter {
            shape: dims.iter().map(|d| *d as usize).collect(),
            blobs: vec![],
        }))
    }
}

impl Layer for Parameter {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((0, 0), (1, 1))
    }

    fn setup(&mut self, cx: &Ctx, _bottom: &[BlobRef], _top: &[BlobRef]) -> Result<()> {
        // Caffe leaves the blob zero; a caffemodel or a shared parameter gives it values.
        self.blobs = vec![Blob::new_ref(cx.engine, &self.shape)];
        Ok(())
    }

    fn reshape(&mut self, cx: &Ctx, _bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        top[0].reshape(cx.engine, &self.shape);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, _bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let n = self.blobs[0].count();
        cx.engine.copy_blocks(
            1,
            n,
            &self.blobs[0].data(),
            0,
            0,
            &mut top[0].data_mut(),
            0,
            0,
        );
        Ok(())
    }

    fn backward(
        &mut self,
        cx: &Ctx,
        top: &[BlobRef],
        _pd: &[bool],
        _bottom: &[BlobRef],
    ) -> Result<()> {
        let n = self.blobs[0].count();
        cx.engine.add_blocks(
            1,
            n,
            &top[0].diff(),
            0,
            0,
            &mut self.blobs[0].diff_mut(),
            0,
            0,
        );
        Ok(())
    }

    fn blobs(&mut self) -> &mut [BlobRef] {
        &mut self.blobs
    }
}
