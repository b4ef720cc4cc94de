//! Im2col: unrolls every convolution window into a column (Caffe's layer exposing its own im2col),
//! N×C×H×W to N×(C·kh·kw)×oh×ow. It is a grouped convolution with one-hot filters, so every engine
//! runs it with its convolution; backward is that convolution's backward-data (col2im).

use super::conv::{conv_window, Window};
use super::work::Work;
use super::{Ctx, Layer};
use crate::blob::BlobRef;
use crate::engine::ConvGeom;
use crate::{bail, Result};
use crema_proto::caffe::LayerParameter;

pub struct Im2col {
    win: Window,
    geom: Option<ConvGeom>,
    /// One-hot filters: output channel c·kh·kw + k copies offset k of input channel c.
    filters: Work,
}

impl Im2col {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.convolution_param.clone().unwrap_or_default();
        if p.axis() != 1 {
            bail!(
                "convolution_param.axis {} is not supported; crema unrolls N×C×H×W blobs on axis 1",
                p.axis()
            );
        }
        Ok(Box::new(Im2col {
            win: conv_window(&p)?,
            geom: None,
            filters: Work::default(),
        }))
    }
}

impl Layer for Im2col {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 1), (1, 1))
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let s = bottom[0].shape();
        if s.len() != 4 {
            bail!("needs a 4-D N×C×H×W bottom, got shape {s:?}");
        }
        let w = &self.win;
        let kk = w.kernel.0 * w.kernel.1;
        let g = ConvGeom {
            num: s[0],
            in_channels: s[1],
            in_h: s[2],
            in_w: s[3],
            out_channels: s[1] * kk,
            kernel_h: w.kernel.0,
            kernel_w: w.kernel.1,
            stride_h: w.stride.0,
            stride_w: w.stride.1,
            pad_h: w.pad.0,
            pad_w: w.pad.1,
            dilation_h: w.dilation.0,
            dilation_w: w.dilation.1,
            group: s[1].max(1),
        };
        let (eh, ew) = (
            w.dilation.0 * (w.kernel.0 - 1) + 1,
            w.dilation.1 * (w.kernel.1 - 1) + 1,
        );
        if s[2] + 2 * w.pad.0 < eh || s[3] + 2 * w.pad.1 < ew {
            bail!(
                "kernel (dilated {eh}×{ew}) is larger than the padded input {}×{}",
                s[2] + 2 * w.pad.0,
                s[3] + 2 * w.pad.1
            );
        }
        top[0].reshape(cx.engine, &[s[0], s[1] * kk, g.out_h(), g.out_w()]);
        let n = g.weight_count();
        if self.filters.buf().is_none_or(|b| b.len() != n) {
            // Each group's kk×1×kh×kw filter bank is the identity.
            let mut v = vec![0.0f32; n];
            for c in 0..s[1] {
                for k in 0..kk {
                    v[(c * kk + k) * kk + k] = 1.0;
                }
            }
            let f = self.filters.get(cx.engine, n);
            cx.engine.upload(&v, f);
        }
        self.geom = Some(g);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        if let (Some(g), Some(f)) = (&self.geom, self.filters.buf()) {
            cx.engine
                .conv_forward(g, &bottom[0].data(), f, &mut top[0].data_mut());
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
        if let (Some(g), Some(f), true) = (&self.geom, self.filters.buf(), pd[0]) {
            cx.engine
                .conv_backward_data(g, &top[0].diff(), f, &mut bottom[0].diff_mut());
        }
        Ok(())
    }
}
