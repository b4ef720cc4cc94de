//! SigmoidCrossEntropyLoss: the cross-entropy of sigmoid(x) against targets in [0, 1], computed
//! from x with Caffe's overflow-free formula.

use super::{normalization, Ctx, Layer};
use crate::blob::BlobRef;
use crate::{bail, Result};
use crema_proto::caffe::loss_parameter::NormalizationMode;
use crema_proto::caffe::LayerParameter;

pub struct SigmoidCrossEntropyLoss {
    ignore: Option<i32>,
    mode: NormalizationMode,
    /// (batch size, values per item)
    dims: (usize, usize),
    norm: f32,
}

impl SigmoidCrossEntropyLoss {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.loss_param.unwrap_or_default();
        // Unlike SoftmaxWithLoss, Caffe keeps BATCH_SIZE as this layer's default.
        let mode = normalization::mode(&p, NormalizationMode::BatchSize);
        Ok(Box::new(SigmoidCrossEntropyLoss {
            ignore: p.ignore_label,
            mode,
            dims: (0, 0),
            norm: 1.0,
        }))
    }
}

impl Layer for SigmoidCrossEntropyLoss {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((2, 2), (1, 1))
    }
    fn is_loss(&self) -> bool {
        true
    }
    fn allow_force_backward(&self, bottom: usize) -> bool {
        bottom == 0
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        if bottom[0].count() != bottom[1].count() {
            bail!(
                "predictions {:?} and targets {:?} must have the same number of values",
                bottom[0].shape(),
                bottom[1].shape()
            );
        }
        let outer = bottom[0].dim(0);
        let count = bottom[0].count();
        self.dims = (outer, count.checked_div(outer).unwrap_or(0));
        top[0].reshape(cx.engine, &[]);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let (loss, valid) =
            e.sigmoid_cross_entropy(&bottom[0].data(), &bottom[1].data(), self.ignore);
        self.norm = normalization::divisor(self.mode, self.dims.0, self.dims.1, valid);
        e.upload(&[loss / self.norm], &mut top[0].data_mut());
        Ok(())
    }

    fn backward(
        &mut self,
        cx: &Ctx,
        top: &[BlobRef],
        pd: &[bool],
        bottom: &[BlobRef],
    ) -> Result<()> {
        if pd.get(1).copied().unwrap_or(false) {
            bail!("cannot backpropagate to the targets; set propagate_down: false for them");
        }
        if !pd[0] {
            return Ok(());
        }
        let e = cx.engine;
        let w = e.download(&top[0].diff())[0];
        let scale = w / self.norm;
        e.sigmoid_cross_entropy_backward(
            &bottom[0].data(),
            &bottom[1].data(),
            self.ignore,
            scale,
            &mut bottom[0].diff_mut(),
        );
        Ok(())
    }
}
