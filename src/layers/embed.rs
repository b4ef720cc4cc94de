//! Embed: looks up row `x` of a learned input_dim × num_output table for every (integral) input
//! value, plus an optional bias: a one-hot InnerProduct without the one-hot vectors.

use super::{Ctx, Layer};
use crate::blob::{Blob, BlobRef};
use crate::filler::fill;
use crate::{bail, Result};
use crema_proto::caffe::{EmbedParameter, LayerParameter};

pub struct Embed {
    p: EmbedParameter,
    blobs: Vec<BlobRef>,
    /// Table rows of the current inputs.
    rows: Vec<usize>,
}

impl Embed {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.embed_param.clone().unwrap_or_default();
        if p.num_output() == 0 {
            bail!("embed_param.num_output must be positive");
        }
        if p.input_dim() == 0 {
            bail!("embed_param.input_dim must be positive (the number of distinct inputs)");
        }
        Ok(Box::new(Embed {
            p,
            blobs: vec![],
            rows: vec![],
        }))
    }

    fn width(&self) -> usize {
        self.p.num_output() as usize
    }
}

impl Layer for Embed {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 1), (1, 1))
    }
    fn allow_force_backward(&self, _bottom: usize) -> bool {
        false
    }

    fn setup(&mut self, cx: &Ctx, _bottom: &[BlobRef], _top: &[BlobRef]) -> Result<()> {
        let (k, n) = (self.p.input_dim() as usize, self.width());
        let w = Blob::new_ref(cx.engine, &[k, n]);
        w.set_data(
            cx.engine,
            &fill(&self.p.weight_filler.clone().unwrap_or_default(), &[k, n])?,
        );
        self.blobs = vec![w];
        if self.p.bias_term() {
            let b = Blob::new_ref(cx.engine, &[n]);
            b.set_data(
                cx.engine,
                &fill(&self.p.bias_filler.clone().unwrap_or_default(), &[n])?,
            );
            self.blobs.push(b);
        }
        Ok(())
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let mut s = bottom[0].shape();
        s.push(self.width());
        top[0].reshape(cx.engine, &s);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let k = self.p.input_dim() as usize;
        let n = self.width();
        self.rows = bottom[0]
            .data_to_vec(e)
            .iter()
            .map(|v| {
                if *v < 0.0 || *v as usize >= k || v.fract() != 0.0 {
                    bail!("input {v} is not an integer in [0, input_dim = {k})");
                }
                Ok(*v as usize)
            })
            .collect::<Result<_>>()?;
        let (w, mut y) = (self.blobs[0].data(), top[0].data_mut());
        for (i, r) in self.rows.iter().enumerate() {
            e.copy_blocks(1, n, &w, r * n, 0, &mut y, i * n, 0);
        }
        if let Some(b) = self.blobs.get(1) {
            e.bias_forward(self.rows.len(), n, 1, &b.data(), &mut y);
        }
        Ok(())
    }

    fn backward(
        &mut self,
        cx: &Ctx,
        top: &[BlobRef],
        pd: &[bool],
        _bottom: &[BlobRef],
    ) -> Result<()> {
        if pd[0] {
            bail!("cannot backpropagate to Embed's input (it holds indexes); set propagate_down: false");
        }
        let e = cx.engine;
        let n = self.width();
        let dy = top[0].diff();
        {
            let mut dw = self.blobs[0].diff_mut();
            for (i, r) in self.rows.iter().enumerate() {
                e.add_blocks(1, n, &dy, i * n, 0, &mut dw, r * n, 0);
            }
        }
        if let Some(b) = self.blobs.get(1) {
            e.bias_backward(self.rows.len(), n, 1, &dy, &mut b.diff_mut());
        }
        Ok(())
    }

    fn blobs(&mut self) -> &mut [BlobRef] {
        &mut self.blobs
    }
}
