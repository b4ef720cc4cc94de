//! Reduction: SUM, ASUM, SUMSQ or MEAN over all axes from `axis` on, times `coeff`.

use super::work::Work;
use super::{canonical_axis, count, Ctx, Layer};
use crate::blob::BlobRef;
use crate::engine::Activation;
use crate::Result;
use crema_proto::caffe::reduction_parameter::ReductionOp;
use crema_proto::caffe::LayerParameter;

pub struct Reduction {
    op: ReductionOp,
    axis: i32,
    coeff: f32,
    /// (items, values reduced per item)
    dims: (usize, usize),
    scratch: Work,
}

impl Reduction {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.reduction_param.unwrap_or_default();
        Ok(Box::new(Reduction {
            op: p.operation(),
            axis: p.axis(),
            coeff: p.coeff(),
            dims: (0, 0),
            scratch: Work::default(),
        }))
    }

    /// The coefficient applied to every reduced value (MEAN divides by the count).
    fn factor(&self) -> f32 {
        match self.op {
            ReductionOp::Mean => self.coeff / self.dims.1.max(1) as f32,
            _ => self.coeff,
        }
    }
}

impl Layer for Reduction {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 1), (1, 1))
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let s = bottom[0].shape();
        let a = canonical_axis(self.axis, s.len(), "reduction_param")?;
        self.dims = (count(&s, 0, a), count(&s, a, s.len()));
        // The top keeps the axes before `axis` (a scalar for axis 0).
        top[0].reshape(cx.engine, &s[..a]);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let (num, dim) = self.dims;
        let f = self.factor();
        let x = bottom[0].data();
        let mut y = top[0].data_mut();
        match self.op {
            ReductionOp::Sum | ReductionOp::Mean => e.sum_axis(num, dim, 1, f, &x, 0.0, &mut y),
            ReductionOp::Asum => {
                let t = self.scratch.get(e, num * dim);
                e.act_forward(Activation::AbsVal, Some(&x), t);
                e.sum_axis(num, dim, 1, f, t, 0.0, &mut y);
            }
            ReductionOp::Sumsq => {
                let t = self.scratch.get(e, num * dim);
                e.mul(Some(&x), &x, t);
                e.sum_axis(num, dim, 1, f, t, 0.0, &mut y);
            }
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
        let (num, dim) = self.dims;
        let f = self.factor();
        let mut dx = bottom[0].diff_mut();
        // dx[i, :] = f · dy[i], then the derivative of the reduced function.
        e.fill(0.0, &mut dx);
        e.bias_forward(1, num, dim, &top[0].diff(), &mut dx);
        e.scale(f, &mut dx);
        let x = bottom[0].data();
        match self.op {
            ReductionOp::Sum | ReductionOp::Mean => {}
            ReductionOp::Asum => {
                let t = self.scratch.get(e, num * dim);
                e.fill(0.0, t);
                e.add_sign(1.0, &x, t);
                e.mul(None, t, &mut dx);
            }
            ReductionOp::Sumsq => {
                e.mul(None, &x, &mut dx);
                e.scale(2.0, &mut dx);
            }
        }
        Ok(())
    }
}
