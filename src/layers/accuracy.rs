//! Accuracy: fraction of positions whose label is among the top-k predictions (host-side, as Caffe).

use super::{canonical_axis, count, Ctx, Layer};
use crate::blob::BlobRef;
use crate::{bail, Result};
use crema_proto::caffe::{AccuracyParameter, LayerParameter};

pub struct Accuracy {
    p: AccuracyParameter,
    dims: (usize, usize, usize),
}

impl Accuracy {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.accuracy_param.unwrap_or_default();
        if p.top_k() == 0 {
            bail!("accuracy_param.top_k must be at least 1");
        }
        Ok(Box::new(Accuracy { p, dims: (0, 0, 0) }))
    }
}

impl Layer for Accuracy {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((2, 2), (1, 2))
    }
    fn allow_force_backward(&self, _bottom: usize) -> bool {
        false
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let s = bottom[0].shape();
        let a = canonical_axis(self.p.axis(), s.len(), "accuracy_param")?;
        let (o, c, i) = (count(&s, 0, a), s[a], count(&s, a + 1, s.len()));
        if self.p.top_k() as usize > c {
            bail!(
                "top_k ({}) must not exceed the number of classes ({c})",
                self.p.top_k()
            );
        }
        if bottom[1].count() != o * i {
            bail!(
                "number of labels ({}) must equal outer × inner of the predictions ({o} × {i})",
                bottom[1].count()
            );
        }
        self.dims = (o, c, i);
        top[0].reshape(cx.engine, &[]);
        if let Some(t) = top.get(1) {
            t.reshape(cx.engine, &[c]);
        }
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let (o, c, inner) = self.dims;
        let e = cx.engine;
        let x = bottom[0].data_to_vec(e);
        let labels = bottom[1].data_to_vec(e);
        let k = self.p.top_k() as usize;
        let (mut correct, mut total) = (0usize, 0usize);
        let mut per_class = vec![(0usize, 0usize); c];
        for oi in 0..o {
            for ii in 0..inner {
                let label = labels[oi * inner + ii] as i32;
                if Some(label) == self.p.ignore_label {
                    continue;
                }
                if label < 0 || label as usize >= c {
                    bail!("label {label} is outside [0, {c})");
                }
                let l = label as usize;
                let v = x[(oi * c + l) * inner + ii];
                // Rank of the true class: how many other classes score at least as high (Caffe
                // counts ties against the true class, so constant outputs are not top-1 hits).
                let higher = (0..c)
                    .filter(|&cc| cc != l && x[(oi * c + cc) * inner + ii] >= v)
                    .count();
                per_class[l].1 += 1;
                total += 1;
                if higher < k {
                    correct += 1;
                    per_class[l].0 += 1;
                }
            }
        }
        let acc = if total == 0 {
            0.0
        } else {
            correct as f32 / total as f32
        };
        e.upload(&[acc], &mut top[0].data_mut());
        if let Some(t) = top.get(1) {
            let v: Vec<f32> = per_class
                .iter()
                .map(|(ok, n)| if *n == 0 { 0.0 } else { *ok as f32 / *n as f32 })
                .collect();
            e.upload(&v, &mut t.data_mut());
        }
        Ok(())
    }

    fn backward(
        &mut self,
        _cx: &Ctx,
        _top: &[BlobRef],
        pd: &[bool],
        _bottom: &[BlobRef],
    ) -> Result<()> {
        if pd.iter().any(|p| *p) {
            bail!("Accuracy has no gradient; it must not feed a loss");
        }
        Ok(())
    }
}
