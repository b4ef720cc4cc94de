//! Elementwise "neuron" layers (ReLU, Sigmoid, TanH, ELU, ...) and Dropout; all may run in place.

use super::{with_diff_in_out, with_in_out, Ctx, Layer, Phase};
use crate::blob::{Blob, BlobRef};
use crate::engine::Activation;
use crate::{bail, Result};
use crema_proto::caffe::LayerParameter;

/// Any layer that applies one [`Activation`] elementwise.
pub struct Neuron {
    f: Activation,
    /// The input, kept when running in place for an activation whose gradient needs it.
    saved: Option<BlobRef>,
}

/// Whether the gradient can be computed from the output alone, so running in place needs no copy.
fn grad_from_output(f: Activation) -> bool {
    match f {
        Activation::Relu { negative_slope } => negative_slope >= 0.0,
        Activation::Elu { alpha } => alpha >= 0.0,
        Activation::Sigmoid
        | Activation::TanH
        | Activation::Exp { .. }
        | Activation::Threshold { .. } => true,
        _ => false,
    }
}

impl Neuron {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let f = match lp.r#type() {
            "ReLU" => Activation::Relu {
                negative_slope: lp
                    .relu_param
                    .as_ref()
                    .map(|p| p.negative_slope())
                    .unwrap_or(0.0),
            },
            "Sigmoid" => Activation::Sigmoid,
            "TanH" => Activation::TanH,
            "ELU" => Activation::Elu {
                alpha: lp.elu_param.as_ref().map(|p| p.alpha()).unwrap_or(1.0),
            },
            "AbsVal" => Activation::AbsVal,
            "BNLL" => Activation::Bnll,
            "Power" => {
                let p = lp.power_param.unwrap_or_default();
                Activation::Power {
                    power: p.power(),
                    scale: p.scale(),
                    shift: p.shift(),
                }
            }
            "Exp" => {
                let p = lp.exp_param.unwrap_or_default();
                if p.base() != -1.0 && p.base() <= 0.0 {
                    bail!(
                        "exp_param.base must be positive or -1 (for e), got {}",
                        p.base()
                    );
                }
                Activation::Exp {
                    base: p.base(),
                    scale: p.scale(),
                    shift: p.shift(),
                }
            }
            "Log" => {
                let p = lp.log_param.unwrap_or_default();
                if p.base() != -1.0 && p.base() <= 0.0 {
                    bail!(
                        "log_param.base must be positive or -1 (for e), got {}",
                        p.base()
                    );
                }
                Activation::Log {
                    base: p.base(),
                    scale: p.scale(),
                    shift: p.shift(),
                }
            }
            "Clip" => {
                let p = lp.clip_param.unwrap_or_default();
                if p.min > p.max {
                    bail!("clip_param.min ({}) must not exceed max ({})", p.min, p.max);
                }
                Activation::Clip {
                    min: p.min,
                    max: p.max,
                }
            }
            "Swish" => Activation::Swish {
                beta: lp.swish_param.as_ref().map(|p| p.beta()).unwrap_or(1.0),
            },
            "Threshold" => Activation::Threshold {
                threshold: lp
                    .threshold_param
                    .as_ref()
                    .map(|p| p.threshold())
                    .unwrap_or(0.0),
            },
            other => bail!("`{other}` is not an elementwise layer"),
        };
        Ok(Box::new(Neuron { f, saved: None }))
    }
}

impl Layer for Neuron {
    fn graph_safe(&self) -> bool {
        true
    }
    fn fusable_activation(&self) -> Option<Activation> {
        // Its backward then needs only the output, so skipping its forward loses nothing.
        grad_from_output(self.f).then_some(self.f)
    }
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 1), (1, 1))
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        top[0].reshape(cx.engine, &bottom[0].shape());
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        if super::in_place(&bottom[0], &top[0]) && !grad_from_output(self.f) {
            // The gradient needs the input, which running in place overwrites: keep a copy.
            let saved = self
                .saved
                .get_or_insert_with(|| Blob::new_ref(cx.engine, &[]));
            saved.reshape(cx.engine, &bottom[0].shape());
            let n = bottom[0].count();
            cx.engine
                .copy_blocks(1, n, &bottom[0].data(), 0, 0, &mut saved.data_mut(), 0, 0);
        }
        with_in_out(&bottom[0], &top[0], |x, y| {
            cx.engine.act_forward(self.f, x, y)
        });
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
        if super::in_place(&bottom[0], &top[0]) {
            // Only the top's data survives in place: activations whose gradient it determines
            // (ReLU keeps the sign) use it as x; the others use the input saved by forward.
            let y = top[0].data();
            match (&self.saved, grad_from_output(self.f)) {
                (Some(x), false) => {
                    cx.engine
                        .act_backward(self.f, &x.data(), &y, None, &mut bottom[0].diff_mut())
                }
                _ => cx
                    .engine
                    .act_backward(self.f, &y, &y, None, &mut bottom[0].diff_mut()),
            }
        } else {
            let (x, y) = (bottom[0].data(), top[0].data());
            with_diff_in_out(&top[0], &bottom[0], |dy, dx| {
                cx.engine.act_backward(self.f, &x, &y, dy, dx)
            });
        }
        Ok(())
    }
}

/// Dropout: in TRAIN zeroes inputs with probability `ratio` and scales the rest by 1/(1-ratio);
/// identity in TEST.
pub struct Dropout {
    ratio: f32,
    mask: Option<BlobRef>,
}

impl Dropout {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let ratio = lp
            .dropout_param
            .as_ref()
            .map(|p| p.dropout_ratio())
            .unwrap_or(0.5);
        if !(0.0..1.0).contains(&ratio) {
            bail!("dropout_ratio must be in [0, 1), got {ratio}");
        }
        Ok(Box::new(Dropout { ratio, mask: None }))
    }
}

impl Layer for Dropout {
    fn graph_safe(&self) -> bool {
        // The engine keeps its draw count where its kernels advance it (on the GPU, on the device).
        true
    }
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 1), (1, 1))
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let shape = bottom[0].shape();
        top[0].reshape(cx.engine, &shape);
        match &self.mask {
            Some(m) => m.reshape(cx.engine, &shape),
            None => self.mask = Some(Blob::new_ref(cx.engine, &shape)),
        }
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let train = cx.phase == Phase::Train;
        with_in_out(&bottom[0], &top[0], |x, y| match (train, &self.mask, x) {
            (true, Some(m), x) => cx
                .engine
                .dropout_forward(self.ratio, x, y, &mut m.data_mut()),
            (false, _, Some(x)) => cx.engine.axpby(1.0, x, 0.0, y),
            _ => {}
        });
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
        let train = cx.phase == Phase::Train;
        with_diff_in_out(&top[0], &bottom[0], |dy, dx| {
            match (train, &self.mask, dy) {
                (true, Some(m), dy) => cx.engine.mul(dy, &m.data(), dx),
                (false, _, Some(dy)) => cx.engine.axpby(1.0, dy, 0.0, dx),
                _ => {}
            }
        });
        Ok(())
    }
}
