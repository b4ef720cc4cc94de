//! ContrastiveLoss (siamese nets): 1/2N Σ [y d² + (1 - y) max(margin - d, 0)²] with d = ‖a - b‖,
//! or with max(margin - d², 0) in Caffe's legacy_version.

use super::work::Work;
use super::{Ctx, Layer};
use crate::blob::BlobRef;
use crate::{bail, Result};
use crema_proto::caffe::LayerParameter;

pub struct ContrastiveLoss {
    margin: f32,
    legacy: bool,
    /// (pairs, values per item)
    dims: (usize, usize),
    /// a - b
    diff: Work,
    sq: Work,
    dist_sq: Work,
    coef: Work,
}

impl ContrastiveLoss {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.contrastive_loss_param.unwrap_or_default();
        Ok(Box::new(ContrastiveLoss {
            margin: p.margin(),
            legacy: p.legacy_version(),
            dims: (0, 0),
            diff: Work::default(),
            sq: Work::default(),
            dist_sq: Work::default(),
            coef: Work::default(),
        }))
    }

    /// Host copies of the squared distances and the similarity labels.
    fn pairs(&self, cx: &Ctx, bottom: &[BlobRef]) -> Result<(Vec<f32>, Vec<bool>)> {
        let Some(d) = self.dist_sq.buf() else {
            bail!("backward ran before forward")
        };
        let sim = bottom[2]
            .data_to_vec(cx.engine)
            .iter()
            .map(|v| *v as i32 != 0)
            .collect();
        Ok((cx.engine.download(d), sim))
    }
}

impl Layer for ContrastiveLoss {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((3, 3), (1, 1))
    }
    fn is_loss(&self) -> bool {
        true
    }
    fn allow_force_backward(&self, bottom: usize) -> bool {
        bottom < 2
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let (a, b) = (bottom[0].shape(), bottom[1].shape());
        if a != b {
            bail!("the two feature bottoms must have the same shape, got {a:?} and {b:?}");
        }
        let n = bottom[0].dim(0);
        if bottom[2].count() != n {
            bail!(
                "needs one similarity label per pair: {} labels for {n} pairs",
                bottom[2].count()
            );
        }
        let count = bottom[0].count();
        self.dims = (n, count.checked_div(n).unwrap_or(0));
        let e = cx.engine;
        self.diff.get(e, count);
        self.sq.get(e, count);
        self.dist_sq.get(e, n);
        self.coef.get(e, n);
        top[0].reshape(e, &[]);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let (n, c) = self.dims;
        let diff = self.diff.get(e, n * c);
        e.axpby(1.0, &bottom[0].data(), 0.0, diff);
        e.axpby(-1.0, &bottom[1].data(), 1.0, diff);
        let sq = self.sq.get(e, n * c);
        e.mul(Some(diff), diff, sq);
        e.sum_axis(n, c, 1, 1.0, sq, 0.0, self.dist_sq.get(e, n));
        let (dist_sq, sim) = self.pairs(cx, bottom)?;
        let mut loss = 0.0f64;
        for (d2, s) in dist_sq.iter().zip(&sim) {
            loss += if *s {
                *d2 as f64
            } else if self.legacy {
                (self.margin - d2).max(0.0) as f64
            } else {
                let m = (self.margin - d2.sqrt()).max(0.0) as f64;
                m * m
            };
        }
        e.upload(
            &[(loss / n.max(1) as f64 / 2.0) as f32],
            &mut top[0].data_mut(),
        );
        Ok(())
    }

    fn backward(
        &mut self,
        cx: &Ctx,
        top: &[BlobRef],
        pd: &[bool],
        bottom: &[BlobRef],
    ) -> Result<()> {
        if pd.get(2).copied().unwrap_or(false) {
            bail!(
                "cannot backpropagate to the similarity labels; set propagate_down: false for them"
            );
        }
        let e = cx.engine;
        let (n, c) = self.dims;
        let (dist_sq, sim) = self.pairs(cx, bottom)?;
        let w = e.download(&top[0].diff())[0];
        for (i, b) in bottom.iter().take(2).enumerate() {
            if !pd[i] {
                continue;
            }
            let alpha = if i == 0 { 1.0 } else { -1.0 } * w / n.max(1) as f32;
            // Per pair: d(loss)/d(a - b) is a multiple of (a - b); Caffe's 1e-4 keeps it finite.
            let coef: Vec<f32> = dist_sq
                .iter()
                .zip(&sim)
                .map(|(d2, s)| {
                    if *s {
                        alpha
                    } else if self.legacy {
                        if self.margin - d2 > 0.0 {
                            -alpha
                        } else {
                            0.0
                        }
                    } else {
                        let d = d2.sqrt();
                        let m = self.margin - d;
                        if m > 0.0 {
                            -alpha * m / (d + 1e-4)
                        } else {
                            0.0
                        }
                    }
                })
                .collect();
            let cb = self.coef.get(e, n);
            e.upload(&coef, cb);
            let Some(diff) = self.diff.buf() else {
                bail!("backward ran before forward")
            };
            e.channel_scale(1, n, c, cb, Some(diff), &mut b.diff_mut());
        }
        Ok(())
    }
}
