//! LRN: local response normalisation across channels or within a channel.

use super::{Ctx, Layer};
use crate::blob::{Blob, BlobRef};
use crate::engine::LrnParams;
use crate::{bail, Result};
use crema_proto::caffe::lrn_parameter::NormRegion;
use crema_proto::caffe::{LayerParameter, LrnParameter};

pub struct Lrn {
    p: LrnParameter,
    params: Option<LrnParams>,
    scale: Option<BlobRef>,
}

impl Lrn {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.lrn_param.unwrap_or_default();
        if p.local_size().is_multiple_of(2) {
            bail!("lrn_param.local_size must be odd, got {}", p.local_size());
        }
        Ok(Box::new(Lrn {
            p,
            params: None,
            scale: None,
        }))
    }
}

impl Layer for Lrn {
    fn graph_safe(&self) -> bool {
        true
    }
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 1), (1, 1))
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let s = bottom[0].shape();
        if s.len() != 4 {
            bail!("needs a 4-D N×C×H×W bottom, got shape {s:?}");
        }
        self.params = Some(LrnParams {
            num: s[0],
            channels: s[1],
            height: s[2],
            width: s[3],
            local_size: self.p.local_size() as usize,
            alpha: self.p.alpha(),
            beta: self.p.beta(),
            k: self.p.k(),
            across_channels: self.p.norm_region() == NormRegion::AcrossChannels,
        });
        top[0].reshape(cx.engine, &s);
        match &self.scale {
            Some(b) => b.reshape(cx.engine, &s),
            None => self.scale = Some(Blob::new_ref(cx.engine, &s)),
        }
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        if super::in_place(&bottom[0], &top[0]) {
            bail!("LRN cannot run in place; give it a top of its own");
        }
        if let (Some(p), Some(s)) = (&self.params, &self.scale) {
            cx.engine.lrn_forward(
                p,
                &bottom[0].data(),
                &mut top[0].data_mut(),
                &mut s.data_mut(),
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
        if let (Some(p), Some(s), true) = (&self.params, &self.scale, pd[0]) {
            cx.engine.lrn_backward(
                p,
                &bottom[0].data(),
                &top[0].data(),
                &s.data(),
                &top[0].diff(),
                &mut bottom[0].diff_mut(),
            );
        }
        Ok(())
    }
}
