//! ArgMax: the indexes (and optionally values) of the top-k entries, per item or along an axis.
//! Host-side and forward-only, as Caffe's layer.

use super::{canonical_axis, Ctx, Layer};
use crate::blob::BlobRef;
use crate::{bail, Result};
use crema_proto::caffe::LayerParameter;

pub struct ArgMax {
    out_max_val: bool,
    top_k: usize,
    axis: Option<i32>,
    resolved: Option<usize>,
}

impl ArgMax {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.argmax_param.unwrap_or_default();
        if p.top_k() == 0 {
            bail!("argmax_param.top_k must be at least 1");
        }
        Ok(Box::new(ArgMax {
            out_max_val: p.out_max_val(),
            top_k: p.top_k() as usize,
            axis: p.axis,
            resolved: None,
        }))
    }
}

impl Layer for ArgMax {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 1), (1, 1))
    }
    fn allow_force_backward(&self, _bottom: usize) -> bool {
        false
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let s = bottom[0].shape();
        // Caffe's top: the bottom's shape with k along the axis, or N × (1 or 2) × k without one.
        let mut shape = vec![1; s.len().max(3)];
        match self.axis {
            Some(axis) => {
                let a = canonical_axis(axis, s.len(), "argmax_param")?;
                if s[a] < self.top_k {
                    bail!(
                        "top_k ({}) must not exceed the size {} of axis {a}",
                        self.top_k,
                        s[a]
                    );
                }
                shape = s.clone();
                shape[a] = self.top_k;
                self.resolved = Some(a);
            }
            None => {
                let dim = bottom[0].count_range(1, s.len());
                if self.top_k > dim {
                    bail!(
                        "top_k ({}) must not exceed the {dim} values per item",
                        self.top_k
                    );
                }
                shape[0] = s.first().copied().unwrap_or(1);
                shape[2] = self.top_k;
                if self.out_max_val {
                    shape[1] = 2;
                }
                self.resolved = None;
            }
        }
        top[0].reshape(cx.engine, &shape);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let x = bottom[0].data_to_vec(e);
        let s = bottom[0].shape();
        let (dim, stride) = match self.resolved {
            Some(a) => (s[a], bottom[0].count_range(a + 1, s.len())),
            None => (bottom[0].count_range(1, s.len()), 1),
        };
        let k = self.top_k;
        let num = x.len().checked_div(dim).unwrap_or(0);
        let mut y = vec![0.0f32; top[0].count()];
        let mut pairs: Vec<(f32, usize)> = Vec::with_capacity(dim);
        for i in 0..num {
            let (outer, inner) = (i / stride, i % stride);
            pairs.clear();
            pairs.extend((0..dim).map(|j| (x[(outer * dim + j) * stride + inner], j)));
            // Caffe sorts (value, index) pairs descending: ties go to the larger index.
            pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
            for (j, (v, idx)) in pairs.iter().take(k).enumerate() {
                match self.resolved {
                    Some(_) => {
                        y[(outer * k + j) * stride + inner] =
                            if self.out_max_val { *v } else { *idx as f32 }
                    }
                    None if self.out_max_val => {
                        y[2 * i * k + j] = *idx as f32;
                        y[2 * i * k + k + j] = *v;
                    }
                    None => y[i * k + j] = *idx as f32,
                }
            }
        }
        e.upload(&y, &mut top[0].data_mut());
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
            bail!("ArgMax has no gradient; it must not feed a loss");
        }
        Ok(())
    }
}
