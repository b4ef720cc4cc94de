//! BatchNorm: normalises every channel to zero mean and unit variance, with the batch's statistics
//! in TRAIN and the running ones in TEST, keeping Caffe's three blobs (mean sum, variance sum and
//! the scale factor both are divided by).

use super::work::Work;
use super::{Ctx, Layer, Phase};
use crate::blob::{Blob, BlobRef};
use crate::engine::{Activation, Buffer};
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
    /// The variance, then (after forward) the standard deviation sqrt(var + eps).
    std: Work,
    /// Per-channel scratch.
    sums: Work,
    /// The standard deviation broadcast to the bottom's shape (Caffe's temp_).
    std_full: Work,
    /// The normalised output, kept for backward because later in-place layers overwrite the top.
    x_norm: Work,
    /// Scratch of the bottom's size: the squares in forward, a copy of the top diff in backward.
    scratch: Work,
    one: Work,
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
            std: Work::default(),
            sums: Work::default(),
            std_full: Work::default(),
            x_norm: Work::default(),
            scratch: Work::default(),
            one: Work::default(),
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
        self.std.get(e, c);
        self.sums.get(e, c);
        self.std_full.get(e, count);
        self.x_norm.get(e, count);
        self.scratch.get(e, count);
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
        if !super::in_place(&bottom[0], &top[0]) {
            e.copy_blocks(
                1,
                count,
                &bottom[0].data(),
                0,
                0,
                &mut top[0].data_mut(),
                0,
                0,
            );
        }
        let mut y = top[0].data_mut();
        let mean = self.mean.get(e, c);
        let std = self.std.get(e, c);
        let sums = self.sums.get(e, c);
        if self.global {
            let stored = e.download(&self.blobs[2].data());
            let f = match stored.first() {
                Some(v) if *v != 0.0 => 1.0 / v,
                _ => 0.0,
            };
            e.axpby(f, &self.blobs[0].data(), 0.0, mean);
            e.axpby(f, &self.blobs[1].data(), 0.0, std);
        } else {
            e.fill(0.0, mean);
            e.bias_backward(num, c, s, &y, mean);
            e.scale(1.0 / (num * s) as f32, mean);
        }
        // y = x - mean
        e.axpby(-1.0, mean, 0.0, sums);
        e.bias_forward(num, c, s, sums, &mut y);
        if !self.global {
            let sq = self.scratch.get(e, count);
            e.mul(Some(&*y), &y, sq);
            e.fill(0.0, std);
            e.bias_backward(num, c, s, sq, std);
            e.scale(1.0 / (num * s) as f32, std);
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
            e.axpby(correction, std, maf, &mut self.blobs[1].data_mut());
        }
        // std = sqrt(var + eps), broadcast, and y /= std
        e.act_forward(
            Activation::Power {
                power: 0.5,
                scale: 1.0,
                shift: self.eps,
            },
            None,
            std,
        );
        let std_full = self.std_full.get(e, count);
        e.fill(0.0, std_full);
        e.bias_forward(num, c, s, std, std_full);
        e.div(None, std_full, &mut y);
        let x_norm = self.x_norm.get(e, count);
        e.copy_blocks(1, count, &y, 0, 0, x_norm, 0, 0);
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
        let (num, c, s) = self.dims;
        let count = num * c * s;
        if count == 0 {
            return Ok(());
        }
        let (Some(std_full), Some(y)) = (self.std_full.buf(), self.x_norm.buf()) else {
            bail!("backward ran before forward");
        };
        // With the layer in place the top diff is the bottom diff; keep a copy of dy.
        let dy = self.scratch.get(e, count);
        e.copy_blocks(1, count, &top[0].diff(), 0, 0, dy, 0, 0);
        let dy: &Buffer = dy;
        let mut dx = bottom[0].diff_mut();
        if self.global {
            // The statistics are constants here, so the layer is a per-channel affine map.
            e.div(Some(dy), std_full, &mut dx);
            return Ok(());
        }
        // dx = (dy - mean(dy) - y · mean(dy · y)) / std, means over all axes but the channel.
        let sums = self.sums.get(e, c);
        e.mul(Some(y), dy, &mut dx);
        e.fill(0.0, sums);
        e.bias_backward(num, c, s, &dx, sums);
        e.fill(0.0, &mut dx);
        e.bias_forward(num, c, s, sums, &mut dx);
        e.mul(None, y, &mut dx);
        e.fill(0.0, sums);
        e.bias_backward(num, c, s, dy, sums);
        e.bias_forward(num, c, s, sums, &mut dx);
        e.axpby(1.0, dy, -1.0 / (num * s) as f32, &mut dx);
        e.div(None, std_full, &mut dx);
        Ok(())
    }

    fn blobs(&mut self) -> &mut [BlobRef] {
        &mut self.blobs
    }
}
