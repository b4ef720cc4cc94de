//! HingeLoss: one-vs-all hinge loss over N×D scores, L1 (Σ max(0, 1 - δ x)) or L2 (its square),
//! where δ is +1 for the true class and -1 for the others. Host-side, as Caffe's layer.

use super::{Ctx, Layer};
use crate::blob::BlobRef;
use crate::{bail, Result};
use crema_proto::caffe::hinge_loss_parameter::Norm;
use crema_proto::caffe::LayerParameter;

pub struct HingeLoss {
    norm: Norm,
    dims: (usize, usize),
    /// max(0, 1 - δ x) from forward, for backward.
    margins: Vec<f32>,
}

impl HingeLoss {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let norm = lp.hinge_loss_param.map(|p| p.norm()).unwrap_or(Norm::L1);
        Ok(Box::new(HingeLoss {
            norm,
            dims: (0, 0),
            margins: vec![],
        }))
    }
}

/// The true class of item `n`, checked against the number of classes.
fn label(labels: &[f32], n: usize, classes: usize) -> Result<usize> {
    let l = labels[n] as i32;
    if l < 0 || l as usize >= classes {
        bail!("label {} is outside [0, {classes})", labels[n]);
    }
    Ok(l as usize)
}

impl Layer for HingeLoss {
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
        let num = bottom[0].dim(0);
        if bottom[1].count() != num {
            bail!(
                "needs one label per item: {} labels for {num} items",
                bottom[1].count()
            );
        }
        self.dims = (num, bottom[0].count().checked_div(num).unwrap_or(0));
        top[0].reshape(cx.engine, &[]);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let (num, dim) = self.dims;
        let mut m = bottom[0].data_to_vec(e);
        let labels = bottom[1].data_to_vec(e);
        for n in 0..num {
            let l = label(&labels, n, dim)?;
            m[n * dim + l] *= -1.0;
        }
        m.iter_mut().for_each(|v| *v = (1.0 + *v).max(0.0));
        let sum: f64 = match self.norm {
            Norm::L1 => m.iter().map(|v| *v as f64).sum(),
            Norm::L2 => m.iter().map(|v| (*v as f64) * (*v as f64)).sum(),
        };
        e.upload(&[(sum / num.max(1) as f64) as f32], &mut top[0].data_mut());
        self.margins = m;
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
            bail!("cannot backpropagate to the labels; set propagate_down: false for them");
        }
        if !pd[0] {
            return Ok(());
        }
        let e = cx.engine;
        let (num, dim) = self.dims;
        let labels = bottom[1].data_to_vec(e);
        let w = e.download(&top[0].diff())[0] / num.max(1) as f32;
        let mut d = self.margins.clone();
        for n in 0..num {
            let l = label(&labels, n, dim)?;
            d[n * dim + l] *= -1.0;
        }
        match self.norm {
            Norm::L1 => d.iter_mut().for_each(|v| {
                *v = w * if *v > 0.0 {
                    1.0
                } else if *v < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            }),
            Norm::L2 => d.iter_mut().for_each(|v| *v *= 2.0 * w),
        }
        e.upload(&d, &mut bottom[0].diff_mut());
        Ok(())
    }
}
