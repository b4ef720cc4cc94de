//! Pooling: MAX, AVE and STOCHASTIC, global or windowed, with Caffe's ceil-mode output size.

use super::work::Work;
use super::{Ctx, Layer, Phase};
use crate::blob::BlobRef;
use crate::engine::{PoolGeom, PoolMethod};
use crate::{bail, Result};
use crema_proto::caffe::pooling_parameter::{PoolMethod as ProtoPool, RoundMode};
use crema_proto::caffe::{LayerParameter, PoolingParameter};

pub struct Pooling {
    p: PoolingParameter,
    /// None for STOCHASTIC, which the layer runs with its own engine operations.
    method: Option<PoolMethod>,
    geom: Option<PoolGeom>,
    /// STOCHASTIC: one uniform draw per output, and the index each output took.
    rand: Work,
    taken: Work,
}

/// Caffe's pooled size: ceil by default, minus one when the last window would start in the padding.
pub fn pooled_size(input: usize, kernel: usize, pad: usize, stride: usize, ceil: bool) -> usize {
    let span = (input + 2 * pad).saturating_sub(kernel);
    let mut out = if ceil {
        span.div_ceil(stride)
    } else {
        span / stride
    } + 1;
    if pad > 0 && (out - 1) * stride >= input + pad {
        out -= 1;
    }
    out
}

impl Pooling {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.pooling_param.unwrap_or_default();
        let method = match p.pool() {
            ProtoPool::Max => Some(PoolMethod::Max),
            ProtoPool::Ave => Some(PoolMethod::Ave),
            ProtoPool::Stochastic => None,
        };
        let padded = p.pad() != 0 || p.pad_h() != 0 || p.pad_w() != 0;
        if method.is_none() && padded {
            bail!(
                "padding is implemented only for MAX and AVE pooling (as in Caffe), not STOCHASTIC"
            );
        }
        Ok(Box::new(Pooling {
            p,
            method,
            geom: None,
            rand: Work::default(),
            taken: Work::default(),
        }))
    }

    fn make_geom(&self, shape: &[usize]) -> Result<PoolGeom> {
        if shape.len() != 4 {
            bail!("needs a 4-D N×C×H×W bottom, got shape {shape:?}");
        }
        let p = &self.p;
        let (h, w) = (shape[2], shape[3]);
        let two = |single: Option<u32>,
                   hh: Option<u32>,
                   ww: Option<u32>,
                   default: u32,
                   what: &str|
         -> Result<(usize, usize)> {
            match (single, hh, ww) {
                (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                    bail!("give either {what} or {what}_h and {what}_w, not both")
                }
                (Some(v), None, None) => Ok((v as usize, v as usize)),
                (None, a, b) => Ok((a.unwrap_or(default) as usize, b.unwrap_or(default) as usize)),
            }
        };
        let (kernel, pad, stride) = if p.global_pooling() {
            if p.kernel_size.is_some() || p.kernel_h.is_some() {
                bail!(
                    "with global_pooling the kernel size comes from the bottom; remove kernel_size"
                );
            }
            ((h, w), (0, 0), (1, 1))
        } else {
            let k = two(p.kernel_size, p.kernel_h, p.kernel_w, 0, "kernel_size")?;
            if k.0 == 0 || k.1 == 0 {
                bail!("pooling_param needs kernel_size (or kernel_h and kernel_w), or global_pooling: true");
            }
            let pad = two(p.pad, p.pad_h, p.pad_w, 0, "pad")?;
            let s = two(p.stride, p.stride_h, p.stride_w, 1, "stride")?;
            if s.0 == 0 || s.1 == 0 {
                bail!("pooling stride must be positive");
            }
            if pad.0 >= k.0 || pad.1 >= k.1 {
                bail!("pad {:?} must be smaller than the kernel {:?}", pad, k);
            }
            (k, pad, s)
        };
        let ceil = p.round_mode() == RoundMode::Ceil;
        Ok(PoolGeom {
            num: shape[0],
            channels: shape[1],
            in_h: h,
            in_w: w,
            out_h: pooled_size(h, kernel.0, pad.0, stride.0, ceil),
            out_w: pooled_size(w, kernel.1, pad.1, stride.1, ceil),
            kernel_h: kernel.0,
            kernel_w: kernel.1,
            stride_h: stride.0,
            stride_w: stride.1,
            pad_h: pad.0,
            pad_w: pad.1,
        })
    }
}

impl Layer for Pooling {
    fn graph_safe(&self) -> bool {
        self.method.is_some() // stochastic pooling draws random numbers
    }
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 1), (1, 1))
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let g = self.make_geom(&bottom[0].shape())?;
        top[0].reshape(cx.engine, &[g.num, g.channels, g.out_h, g.out_w]);
        self.geom = Some(g);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let Some(g) = &self.geom else { return Ok(()) };
        let (x, mut y) = (bottom[0].data(), top[0].data_mut());
        match (self.method, cx.phase) {
            (Some(m), _) => e.pool_forward(g, m, &x, &mut y),
            (None, Phase::Train) => {
                let n = g.num * g.channels * g.out_h * g.out_w;
                let rand = self.rand.get(e, n);
                e.rng_uniform(rand);
                e.pool_stochastic_train(g, &x, rand, &mut y, self.taken.get(e, n));
            }
            (None, Phase::Test) => e.pool_stochastic_test(g, &x, &mut y),
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
        let Some(g) = &self.geom else { return Ok(()) };
        if !pd[0] {
            return Ok(());
        }
        let e = cx.engine;
        match (self.method, self.taken.buf()) {
            (Some(m), _) => e.pool_backward(
                g,
                m,
                &bottom[0].data(),
                &top[0].data(),
                &top[0].diff(),
                &mut bottom[0].diff_mut(),
            ),
            (None, Some(taken)) if cx.phase == Phase::Train => {
                e.pool_stochastic_backward(g, taken, &top[0].diff(), &mut bottom[0].diff_mut())
            }
            (None, _) => bail!(
                "STOCHASTIC pooling has a gradient only in TRAIN, through the sampled elements"
            ),
        }
        Ok(())
    }
}
