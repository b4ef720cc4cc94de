//! MVN: mean-variance normalisation of every item (or every item's channel): y = (x - mean) /
//! (std + eps), or only x - mean without normalize_variance.

use super::work::Work;
use super::{Ctx, Layer};
use crate::blob::BlobRef;
use crate::engine::{Activation, Buffer};
use crate::{bail, Result};
use crema_proto::caffe::{LayerParameter, MvnParameter};

pub struct Mvn {
    p: MvnParameter,
    /// (groups normalised separately, values per group)
    dims: (usize, usize),
    mean: Work,
    /// The standard deviation plus eps, per group.
    std: Work,
    eps: Work,
    /// `std` broadcast to the bottom's shape.
    std_full: Work,
    scratch: Work,
}

impl Mvn {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.mvn_param.unwrap_or_default();
        Ok(Box::new(Mvn {
            p,
            dims: (0, 0),
            mean: Work::default(),
            std: Work::default(),
            eps: Work::default(),
            std_full: Work::default(),
            scratch: Work::default(),
        }))
    }
}

impl Layer for Mvn {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 1), (1, 1))
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let s = bottom[0].shape();
        if s.is_empty() {
            bail!("needs a bottom with at least one axis");
        }
        let count = bottom[0].count();
        let groups = if self.p.across_channels() {
            s[0]
        } else {
            s[0] * s.get(1).copied().unwrap_or(1)
        };
        self.dims = (groups, count.checked_div(groups).unwrap_or(0));
        top[0].reshape(cx.engine, &s);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let (g, d) = self.dims;
        let n = g * d;
        if n == 0 {
            return Ok(());
        }
        let mean = self.mean.get(e, g);
        e.sum_axis(g, d, 1, 1.0 / d as f32, &bottom[0].data(), 0.0, mean);
        if !super::in_place(&bottom[0], &top[0]) {
            e.copy_blocks(1, n, &bottom[0].data(), 0, 0, &mut top[0].data_mut(), 0, 0);
        }
        let mut y = top[0].data_mut();
        e.scale(-1.0, mean);
        e.bias_forward(1, g, d, mean, &mut y);
        e.scale(-1.0, mean);
        if self.p.normalize_variance() {
            let sq = self.scratch.get(e, n);
            e.mul(Some(&*y), &y, sq);
            let std = self.std.get(e, g);
            e.sum_axis(g, d, 1, 1.0 / d as f32, sq, 0.0, std);
            // Caffe adds eps to the standard deviation, not to the variance.
            e.act_forward(
                Activation::Power {
                    power: 0.5,
                    scale: 1.0,
                    shift: 0.0,
                },
                None,
                std,
            );
            e.axpby(1.0, self.eps.constant(e, g, self.p.eps()), 1.0, std);
            let full = self.std_full.get(e, n);
            e.fill(0.0, full);
            e.bias_forward(1, g, d, std, full);
            e.div(None, full, &mut y);
        }
        Ok(())
    }

    fn backward(
        &mut self,
        cx: &Ctx,
        top: &[BlobRef],
        pd: &[bool],
        bottom: &[BlobRef],
    ) -> Result<()> {
        if !pd[0] {
            return Ok(());
        }
        let e = cx.engine;
        let (g, d) = self.dims;
        let n = g * d;
        if n == 0 {
            return Ok(());
        }
        // In place the top diff is the bottom diff: work from a copy of dy.
        let dy = self.scratch.get(e, n);
        e.copy_blocks(1, n, &top[0].diff(), 0, 0, dy, 0, 0);
        let dy: &Buffer = dy;
        let sums = self.mean.get(e, g);
        let mut dx = bottom[0].diff_mut();
        if !self.p.normalize_variance() {
            // dx = dy - mean(dy)
            e.sum_axis(g, d, 1, -1.0 / d as f32, dy, 0.0, sums);
            e.copy_blocks(1, n, dy, 0, 0, &mut dx, 0, 0);
            e.bias_forward(1, g, d, sums, &mut dx);
            return Ok(());
        }
        let Some(full) = self.std_full.buf() else {
            bail!("backward ran before forward")
        };
        // Caffe's formula: dx = (dy - mean(dy) - y · mean(dy · y)) / (std + eps)
        let y = top[0].data();
        e.mul(Some(&y), dy, &mut dx);
        e.sum_axis(g, d, 1, 1.0, &dx, 0.0, sums);
        e.fill(0.0, &mut dx);
        e.bias_forward(1, g, d, sums, &mut dx);
        e.mul(None, &y, &mut dx);
        e.sum_axis(g, d, 1, 1.0, dy, 0.0, sums);
        e.bias_forward(1, g, d, sums, &mut dx);
        e.axpby(1.0, dy, -1.0 / d as f32, &mut dx);
        e.div(None, full, &mut dx);
        Ok(())
    }
}
