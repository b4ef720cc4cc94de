//! SPP (spatial pyramid pooling): pools the bottom into 1×1, 2×2, 4×4, ... bins and concatenates
//! the flattened results, so any input size gives a fixed-length output.

use super::pooling::pooled_size;
use super::work::Work;
use super::{Ctx, Layer};
use crate::blob::BlobRef;
use crate::engine::{PoolGeom, PoolMethod};
use crate::{bail, Result};
use crema_proto::caffe::spp_parameter::PoolMethod as ProtoPool;
use crema_proto::caffe::LayerParameter;

pub struct Spp {
    height: usize,
    method: PoolMethod,
    geoms: Vec<PoolGeom>,
    /// Each level's pooled output, and its gradient in backward.
    pooled: Vec<Work>,
    dx_level: Work,
}

impl Spp {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.spp_param.unwrap_or_default();
        if p.pyramid_height() == 0 {
            bail!("spp_param.pyramid_height must be at least 1");
        }
        let method = match p.pool() {
            ProtoPool::Max => PoolMethod::Max,
            ProtoPool::Ave => PoolMethod::Ave,
            ProtoPool::Stochastic => bail!("spp_param.pool STOCHASTIC is not supported (its levels need padding); use MAX or AVE"),
        };
        let height = p.pyramid_height() as usize;
        Ok(Box::new(Spp {
            height,
            method,
            geoms: vec![],
            pooled: (0..height).map(|_| Work::default()).collect(),
            dx_level: Work::default(),
        }))
    }

    /// Caffe's pooling for pyramid level `l`: 2^l bins, kernel ceil(H / bins) used as the
    /// stride, and the remainder split as padding.
    fn level_geom(&self, l: usize, shape: &[usize]) -> Result<PoolGeom> {
        let bins = 1usize << l;
        let one = |size: usize| -> Result<(usize, usize, usize)> {
            let kernel = size.div_ceil(bins);
            let pad = (kernel * bins - size).div_ceil(2);
            if pad >= kernel {
                bail!("pyramid level {l} ({bins} bins) needs more than the bottom's {size} pixels; lower pyramid_height");
            }
            Ok((kernel, pad, pooled_size(size, kernel, pad, kernel, true)))
        };
        let (kh, ph, oh) = one(shape[2])?;
        let (kw, pw, ow) = one(shape[3])?;
        Ok(PoolGeom {
            num: shape[0],
            channels: shape[1],
            in_h: shape[2],
            in_w: shape[3],
            out_h: oh,
            out_w: ow,
            kernel_h: kh,
            kernel_w: kw,
            stride_h: kh,
            stride_w: kw,
            pad_h: ph,
            pad_w: pw,
        })
    }

    /// Values per item of each level's output.
    fn widths(&self) -> Vec<usize> {
        self.geoms
            .iter()
            .map(|g| g.channels * g.out_h * g.out_w)
            .collect()
    }
}

impl Layer for Spp {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 1), (1, 1))
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let s = bottom[0].shape();
        if s.len() != 4 || s[2] == 0 || s[3] == 0 {
            bail!("needs a 4-D N×C×H×W bottom, got shape {s:?}");
        }
        self.geoms = (0..self.height)
            .map(|l| self.level_geom(l, &s))
            .collect::<Result<_>>()?;
        if self.height == 1 {
            // Caffe's one-level pyramid is a plain global pooling with an N×C×1×1 top.
            top[0].reshape(cx.engine, &[s[0], s[1], 1, 1]);
        } else {
            top[0].reshape(cx.engine, &[s[0], self.widths().iter().sum()]);
        }
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let num = bottom[0].dim(0);
        let widths = self.widths();
        let total: usize = widths.iter().sum();
        let x = bottom[0].data();
        let mut y = top[0].data_mut();
        let mut off = 0;
        for ((g, w), pooled) in self.geoms.iter().zip(&widths).zip(&mut self.pooled) {
            let p = pooled.get(e, num * w);
            e.pool_forward(g, self.method, &x, p);
            e.copy_blocks(num, *w, p, 0, *w, &mut y, off, total);
            off += w;
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
        let num = bottom[0].dim(0);
        let count = bottom[0].count();
        let widths = self.widths();
        let total: usize = widths.iter().sum();
        let (x, dy) = (bottom[0].data(), top[0].diff());
        let mut dx = bottom[0].diff_mut();
        let mut off = 0;
        for (l, ((g, w), pooled)) in self
            .geoms
            .iter()
            .zip(&widths)
            .zip(&mut self.pooled)
            .enumerate()
        {
            let Some(p) = pooled.buf() else {
                bail!("backward ran before forward")
            };
            let mut dp = e.alloc(num * w);
            e.copy_blocks(num, *w, &dy, off, total, &mut dp, 0, *w);
            off += w;
            if l == 0 {
                e.pool_backward(g, self.method, &x, p, &dp, &mut dx);
            } else {
                let dl = self.dx_level.get(e, count);
                e.pool_backward(g, self.method, &x, p, &dp, dl);
                e.axpby(1.0, dl, 1.0, &mut dx);
            }
        }
        Ok(())
    }
}
