//! PReLU: y = max(0, x) + a·min(0, x) with a learned slope `a` per channel (or one shared).

use super::work::Work;
use super::{in_place, Ctx, Layer};
use crate::blob::{Blob, BlobRef};
use crate::engine::{Activation, Buffer};
use crate::filler::fill;
use crate::{bail, Result};
use crema_proto::caffe::{FillerParameter, LayerParameter};

const RELU: Activation = Activation::Relu {
    negative_slope: 0.0,
};

pub struct PRelu {
    channel_shared: bool,
    filler: Option<FillerParameter>,
    blobs: Vec<BlobRef>,
    /// (outer, slopes, inner) for the broadcast of the slopes.
    dims: (usize, usize, usize),
    /// The bottom's data, kept when running in place.
    saved: Work,
    neg: Work,
    pos: Work,
    prod: Work,
}

impl PRelu {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.prelu_param.clone().unwrap_or_default();
        Ok(Box::new(PRelu {
            channel_shared: p.channel_shared(),
            filler: p.filler.clone(),
            blobs: vec![],
            dims: (0, 0, 0),
            saved: Work::default(),
            neg: Work::default(),
            pos: Work::default(),
            prod: Work::default(),
        }))
    }
}

impl Layer for PRelu {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 1), (1, 1))
    }

    fn setup(&mut self, cx: &Ctx, bottom: &[BlobRef], _top: &[BlobRef]) -> Result<()> {
        let shape = bottom[0].shape();
        if shape.len() < 2 {
            bail!("needs a bottom with at least 2 axes (N×C×...), got shape {shape:?}");
        }
        let sshape: Vec<usize> = if self.channel_shared {
            vec![]
        } else {
            vec![shape[1]]
        };
        let filler = self.filler.clone().unwrap_or(FillerParameter {
            r#type: Some("constant".into()),
            value: Some(0.25),
            ..Default::default()
        });
        let a = Blob::new_ref(cx.engine, &sshape);
        a.set_data(cx.engine, &fill(&filler, &sshape)?);
        self.blobs = vec![a];
        Ok(())
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let shape = bottom[0].shape();
        if shape.len() < 2 {
            bail!("needs a bottom with at least 2 axes (N×C×...), got shape {shape:?}");
        }
        let n = bottom[0].count();
        let c = shape[1];
        if !self.channel_shared && self.blobs[0].count() != c {
            bail!(
                "bottom has {c} channels but the layer has {} slopes",
                self.blobs[0].count()
            );
        }
        self.dims = if self.channel_shared {
            (shape[0], 1, n / shape[0].max(1))
        } else {
            (shape[0], c, n / (shape[0] * c).max(1))
        };
        top[0].reshape(cx.engine, &shape);
        let e = cx.engine;
        self.neg.get(e, n);
        self.pos.get(e, n);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let (o, c, i) = self.dims;
        let n = o * c * i;
        if in_place(&bottom[0], &top[0]) {
            e.copy_blocks(1, n, &bottom[0].data(), 0, 0, self.saved.get(e, n), 0, 0);
        }
        let neg = self.neg.get(e, n);
        let x_own;
        let x: &Buffer = if in_place(&bottom[0], &top[0]) {
            match self.saved.buf() {
                Some(b) => b,
                None => bail!("no saved input"),
            }
        } else {
            x_own = bottom[0].data();
            &x_own
        };
        let mut y = top[0].data_mut();
        // y = max(x, 0) + a · (x - max(x, 0))
        e.act_forward(RELU, Some(x), &mut y);
        e.axpby(1.0, x, 0.0, neg);
        e.axpby(-1.0, &y, 1.0, neg);
        e.channel_scale(o, c, i, &self.blobs[0].data(), None, neg);
        e.axpby(1.0, neg, 1.0, &mut y);
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
        let (o, c, i) = self.dims;
        let n = o * c * i;
        let pos = self.pos.get(e, n);
        let neg = self.neg.get(e, n);
        let prod = self.prod.get(e, n);
        {
            let x_own;
            let x: &Buffer = if in_place(&bottom[0], &top[0]) {
                match self.saved.buf() {
                    Some(b) => b,
                    None => bail!("backward ran before forward"),
                }
            } else {
                x_own = bottom[0].data();
                &x_own
            };
            // pos = dy·[x > 0], neg = dy·[x ≤ 0]
            {
                let dy = top[0].diff();
                e.act_backward(RELU, x, x, Some(&dy), pos);
                e.axpby(1.0, &dy, 0.0, neg);
                e.axpby(-1.0, pos, 1.0, neg);
            }
            // da += Σ dy · x · [x ≤ 0]
            e.mul(Some(x), neg, prod);
            e.bias_backward(o, c, i, prod, &mut self.blobs[0].diff_mut());
        }
        if pd[0] {
            // dx = dy·[x > 0] + a · dy·[x ≤ 0]
            let mut dx = bottom[0].diff_mut();
            e.channel_scale(o, c, i, &self.blobs[0].data(), Some(neg), &mut dx);
            e.axpby(1.0, pos, 1.0, &mut dx);
        }
        Ok(())
    }

    fn blobs(&mut self) -> &mut [BlobRef] {
        &mut self.blobs
    }
}
