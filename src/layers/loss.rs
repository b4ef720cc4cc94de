//! EuclideanLoss: ½N Σ (a - b)².

use super::{Ctx, Layer};
use crate::blob::{Blob, BlobRef};
use crate::{bail, Result};
use crema_proto::caffe::LayerParameter;

pub struct EuclideanLoss {
    diff: Option<BlobRef>,
}

impl EuclideanLoss {
    pub fn create(_lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        Ok(Box::new(EuclideanLoss { diff: None }))
    }
}

impl Layer for EuclideanLoss {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((2, 2), (1, 1))
    }
    fn is_loss(&self) -> bool {
        true
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let (a, b) = (bottom[0].shape(), bottom[1].shape());
        if bottom[0].count() != bottom[1].count() || a.first() != b.first() {
            bail!("both bottoms must have the same shape, got {a:?} and {b:?}");
        }
        top[0].reshape(cx.engine, &[]);
        match &self.diff {
            Some(d) => d.reshape(cx.engine, &a),
            None => self.diff = Some(Blob::new_ref(cx.engine, &a)),
        }
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let Some(d) = &self.diff else { return Ok(()) };
        {
            let mut dd = d.data_mut();
            e.axpby(1.0, &bottom[0].data(), 0.0, &mut dd);
            e.axpby(-1.0, &bottom[1].data(), 1.0, &mut dd);
        }
        let num = bottom[0].dim(0).max(1) as f32;
        let loss = e.sumsq(&d.data()) / num / 2.0;
        e.upload(&[loss], &mut top[0].data_mut());
        Ok(())
    }

    fn backward(
        &mut self,
        cx: &Ctx,
        top: &[BlobRef],
        pd: &[bool],
        bottom: &[BlobRef],
    ) -> Result<()> {
        let e = cx.engine;
        let Some(d) = &self.diff else { return Ok(()) };
        let w = e.download(&top[0].diff())[0];
        let num = bottom[0].dim(0).max(1) as f32;
        for (i, b) in bottom.iter().enumerate() {
            if pd[i] {
                let sign = if i == 0 { 1.0 } else { -1.0 };
                e.axpby(sign * w / num, &d.data(), 0.0, &mut b.diff_mut());
            }
        }
        Ok(())
    }
}
