//! BatchNorm: normalises every channel to zero mean and unit variance, with the batch's statistics
//! in TRAIN and the running ones in TEST, keeping Caffe's three blobs (mean sum, variance sum and
//! the scale factor both are divided by).

use super::work::Work;
use super::{Ctx, Layer, Phase};
use crate::blob::{Blob, BlobRef};
use crate::engine::Activation;
use crate::{bail, Result};
use crema_proto::caffe::LayerParameter;

pub struct BatchNorm {
    use_global_stats: Option<bool>,
    moving_average_fraction: f32,
    eps: f32,
    /// Resolved at setup: the given use_global_stats, else true exactly in TEST.
    global: bool,
    blobs: Vec<BlobRef>,
    channels: usize,
    /// (num, channels, spatial) of the current bottom.
    dims: (usize, usize, usize),
    mean: Work,
    var: Work,
    /// sqrt(var + eps) of the last forward pass.
    std: Work,
    /// The normalised output, kept for backward because later in-place layers overwrite the top.
    x_norm: Work,
    one: Work,
    /// The Scale layer after it, folded in: (γ, β) (see [`Layer::absorb_affine`]).
    affine: Option<(BlobRef, BlobRef)>,
    /// The in-place activation after it (or after its Scale), applied here.
    act: Option<Activation>,
    /// Whether the backward pass also runs that activation's (a ReLU after a folded-in Scale).
    act_backward: bool,
}

impl BatchNorm {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.batch_norm_param.unwrap_or_default();
        let maf = p.moving_average_fraction();
        if !(0.0..=1.0).contains(&maf) {
            bail!("batch_norm_param.moving_average_fraction must be in [0, 1], got {maf}");
        }
        if p.eps() < 0.0 {
            bail!("batch_norm_param.eps must not be negative, got {}", p.eps());
        }
        Ok(Box::new(BatchNorm {
            use_global_stats: p.use_global_stats,
            moving_average_fraction: maf,
            eps: p.eps(),
            global: false,
            blobs: vec![],
            channels: 0,
            dims: (0, 0, 0),
            mean: Work::default(),
            var: Work::default(),
            std: Work::default(),
            x_norm: Work::default(),
            one: Work::default(),
            affine: None,
            act: None,
            act_backward: false,
        }))
    }
}

impl Layer for BatchNorm {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 1), (1, 1))
    }

    fn setup(&mut self, cx: &Ctx, bottom: &[BlobRef], _top: &[BlobRef]) -> Result<()> {
        self.global = self.use_global_stats.unwrap_or(cx.phase == Phase::Test);
        let shape = bottom[0].shape();
        if shape.is_empty() {
            bail!("needs a bottom with at least one axis, got a scalar");
        }
        self.channels = if shape.len() == 1 { 1 } else { shape[1] };
        let c = self.channels;
        // Caffe starts all three at zero; a loaded caffemodel replaces them.
        self.blobs = vec![
            Blob::new_ref(cx.engine, &[c]),
            Blob::new_ref(cx.engine, &[c]),
            Blob::new_ref(cx.engine, &[1]),
        ];
        Ok(())
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let shape = bottom[0].shape();
        let c = if shape.len() == 1 { 1 } else { shape[1] };
        if c != self.channels {
            bail!(
                "bottom has {c} channels but the layer was set up for {}",
                self.channels
            );
        }
        let num = shape[0];
        let count = bottom[0].count();
        let spatial = count.checked_div(num * c).unwrap_or(0);
        self.dims = (num, c, spatial);
        top[0].reshape(cx.engine, &shape);
        let e = cx.engine;
        self.mean.get(e, c);
        self.var.get(e, c);
        self.std.get(e, c);
        self.x_norm.get(e, count);
        self.one.constant(e, 1, 1.0);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let (num, c, s) = self.dims;
        let count = num * c * s;
        if count == 0 {
            return Ok(());
        }
        let in_place = super::in_place(&bottom[0], &top[0]);
        let mean = self.mean.get(e, c);
        let var = self.var.get(e, c);
        if self.global {
            let stored = e.download(&self.blobs[2].data());
            let f = match stored.first() {
                Some(v) if *v != 0.0 => 1.0 / v,
                _ => 0.0,
            };
            e.axpby(f, &self.blobs[0].data(), 0.0, mean);
            e.axpby(f, &self.blobs[1].data(), 0.0, var);
        } else {
            e.bn_stats(num, c, s, &bottom[0].data(), mean, var);
            // Running sums, exactly as Caffe keeps them: the scale factor counts the decayed
            // number of batches so mean = blobs[0] / blobs[2].
            let maf = self.moving_average_fraction;
            let one = self.one.constant(e, 1, 1.0);
            e.axpby(1.0, one, maf, &mut self.blobs[2].data_mut());
            e.axpby(1.0, mean, maf, &mut self.blobs[0].data_mut());
            let m = count / c;
            let correction = if m > 1 {
                m as f32 / (m - 1) as f32
            } else {
                1.0
            };
            e.axpby(correction, var, maf, &mut self.blobs[1].data_mut());
        }
        let std = self.std.get(e, c);
        let x_norm = self.x_norm.get(e, count);
        let bottom_data = (!in_place).then(|| bottom[0].data());
        let affine = self.affine.as_ref().map(|(g, b)| (g.data(), b.data()));
        e.bn_normalize_affine(
            num,
            c,
            s,
            bottom_data.as_deref(),
            mean,
            var,
            self.eps,
            std,
            &mut top[0].data_mut(),
            x_norm,
            affine.as_ref().map(|(g, b)| (&**g, &**b)),
            self.act,
        );
        Ok(())
    }

    fn backward(
        &mut self,
        cx: &Ctx,
        top: &[BlobRef],
        pd: &[bool],
        bottom: &[BlobRef],
    ) -> Result<()> {
        if !pd[0] && self.affine.is_none() {
            return Ok(());
        }
        let e = cx.engine;
        let (num, c, s) = self.dims;
        if num * c * s == 0 {
            return Ok(());
        }
        let (Some(std), Some(y)) = (self.std.buf(), self.x_norm.buf()) else {
            bail!("backward ran before forward");
        };
        let in_place = super::in_place(&bottom[0], &top[0]);
        if let Some((gamma, beta)) = &self.affine {
            // The folded-in Scale's gradients, then (if asked) the bottom's; running in place,
            // the top's gradient is read from the bottom's.
            let (mut dg, mut db) = (gamma.diff_mut(), beta.diff_mut());
            let dz = (!in_place || !pd[0]).then(|| top[0].diff());
            let mut dx = pd[0].then(|| bottom[0].diff_mut());
            let beta_data = beta.data();
            let gate = match self.act {
                Some(Activation::Relu { negative_slope }) if self.act_backward => {
                    Some((&*beta_data, negative_slope))
                }
                _ => None,
            };
            e.bn_backward_affine(
                num,
                c,
                s,
                self.global,
                y,
                std,
                &gamma.data(),
                (&mut dg, &mut db),
                dz.as_deref(),
                dx.as_deref_mut(),
                gate,
            );
            return Ok(());
        }
        let dy = (!in_place).then(|| top[0].diff());
        e.bn_backward(
            num,
            c,
            s,
            self.global,
            y,
            dy.as_deref(),
            std,
            &mut bottom[0].diff_mut(),
        );
        Ok(())
    }

    fn graph_safe(&self) -> bool {
        // With global statistics the forward pass reads the stored count on the host.
        !self.global
    }

    fn absorb_affine(&mut self, gamma: BlobRef, beta: BlobRef) -> bool {
        if self.affine.is_some() || self.act.is_some() || gamma.count() != self.channels {
            return false;
        }
        self.affine = Some((gamma, beta));
        true
    }

    fn absorb_activation(&mut self, act: Activation) -> bool {
        if self.act.is_some() {
            return false;
        }
        self.act = Some(act);
        true
    }

    fn absorb_activation_backward(&mut self) -> bool {
        // The ReLU's input is recomputed from x_norm, γ and β inside the Scale's and
        // BatchNorm's backward kernels.
        let relu = matches!(self.act, Some(Activation::Relu { .. }));
        self.act_backward = relu && self.affine.is_some();
        self.act_backward
    }

    fn blobs(&mut self) -> &mut [BlobRef] {
        &mut self.blobs
    }
}
