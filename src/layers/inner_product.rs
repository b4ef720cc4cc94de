//! InnerProduct: a fully connected layer, y = x Wᵀ + b (or x W with `transpose`).

use super::{canonical_axis, count, Ctx, Layer};
use crate::blob::{Blob, BlobRef};
use crate::filler::fill;
use crate::{bail, Result};
use crema_proto::caffe::{InnerProductParameter, LayerParameter};

pub struct InnerProduct {
    p: InnerProductParameter,
    blobs: Vec<BlobRef>,
    /// rows (M), inputs (K), outputs (N)
    m: usize,
    k: usize,
    n: usize,
    ones: Option<BlobRef>,
}

impl InnerProduct {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.inner_product_param.clone().unwrap_or_default();
        if p.num_output() == 0 {
            bail!("inner_product_param.num_output must be positive");
        }
        Ok(Box::new(InnerProduct {
            p,
            blobs: vec![],
            m: 0,
            k: 0,
            n: 0,
            ones: None,
        }))
    }
}

impl Layer for InnerProduct {
    fn graph_safe(&self) -> bool {
        true
    }
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 1), (1, 1))
    }

    fn setup(&mut self, cx: &Ctx, bottom: &[BlobRef], _top: &[BlobRef]) -> Result<()> {
        let shape = bottom[0].shape();
        let axis = canonical_axis(self.p.axis(), shape.len(), "inner_product_param")?;
        self.k = count(&shape, axis, shape.len());
        self.n = self.p.num_output() as usize;
        // Caffe stores W as N×K, or K×N when transpose is set.
        let wshape = if self.p.transpose() {
            [self.k, self.n]
        } else {
            [self.n, self.k]
        };
        let w = Blob::new_ref(cx.engine, &wshape);
        w.set_data(
            cx.engine,
            &fill(&self.p.weight_filler.clone().unwrap_or_default(), &wshape)?,
        );
        self.blobs = vec![w];
        if self.p.bias_term() {
            let b = Blob::new_ref(cx.engine, &[self.n]);
            b.set_data(
                cx.engine,
                &fill(&self.p.bias_filler.clone().unwrap_or_default(), &[self.n])?,
            );
            self.blobs.push(b);
        }
        Ok(())
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let shape = bottom[0].shape();
        let axis = canonical_axis(self.p.axis(), shape.len(), "inner_product_param")?;
        let k = count(&shape, axis, shape.len());
        if k != self.k {
            bail!(
                "input size {k} (shape {shape:?} from axis {axis}) does not match the weights' {}",
                self.k
            );
        }
        self.m = count(&shape, 0, axis);
        let mut tshape = shape[..axis].to_vec();
        tshape.push(self.n);
        top[0].reshape(cx.engine, &tshape);
        if self.p.bias_term() && self.ones.as_ref().is_none_or(|o| o.count() != self.m) {
            let ones = Blob::new_ref(cx.engine, &[self.m]);
            cx.engine.fill(1.0, &mut ones.data_mut());
            self.ones = Some(ones);
        }
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let (m, n, k) = (self.m, self.n, self.k);
        let trans_w = !self.p.transpose();
        let mut y = top[0].data_mut();
        e.gemm(
            false,
            trans_w,
            m,
            n,
            k,
            1.0,
            (&bottom[0].data(), 0),
            (&self.blobs[0].data(), 0),
            0.0,
            (&mut y, 0),
        );
        if let (Some(b), Some(ones)) = (self.blobs.get(1), &self.ones) {
            e.gemm(
                false,
                false,
                m,
                n,
                1,
                1.0,
                (&ones.data(), 0),
                (&b.data(), 0),
                1.0,
                (&mut y, 0),
            );
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
        let e = cx.engine;
        let (m, n, k) = (self.m, self.n, self.k);
        let dy = top[0].diff();
        if self.p.transpose() {
            // W is K×N: dW += xᵀ dy
            e.gemm(
                true,
                false,
                k,
                n,
                m,
                1.0,
                (&bottom[0].data(), 0),
                (&dy, 0),
                1.0,
                (&mut self.blobs[0].diff_mut(), 0),
            );
        } else {
            // W is N×K: dW += dyᵀ x
            e.gemm(
                true,
                false,
                n,
                k,
                m,
                1.0,
                (&dy, 0),
                (&bottom[0].data(), 0),
                1.0,
                (&mut self.blobs[0].diff_mut(), 0),
            );
        }
        if let (Some(b), Some(ones)) = (self.blobs.get(1), &self.ones) {
            e.gemm(
                true,
                false,
                1,
                n,
                m,
                1.0,
                (&ones.data(), 0),
                (&dy, 0),
                1.0,
                (&mut b.diff_mut(), 0),
            );
        }
        if pd[0] {
            let trans_w = self.p.transpose();
            e.gemm(
                false,
                trans_w,
                m,
                k,
                n,
                1.0,
                (&dy, 0),
                (&self.blobs[0].data(), 0),
                0.0,
                (&mut bottom[0].diff_mut(), 0),
            );
        }
        Ok(())
    }

    fn blobs(&mut self) -> &mut [BlobRef] {
        &mut self.blobs
    }
}
