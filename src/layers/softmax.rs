//! Softmax and SoftmaxWithLoss (multinomial logistic loss of the softmax).

use super::{canonical_axis, count, normalization, with_diff_in_out, Ctx, Layer};
use crate::blob::{Blob, BlobRef};
use crate::{bail, Result};
use crema_proto::caffe::loss_parameter::NormalizationMode;
use crema_proto::caffe::{LayerParameter, LossParameter};

/// (outer, channels, inner) around a softmax axis.
fn split_axis(shape: &[usize], axis: i32) -> Result<(usize, usize, usize, usize)> {
    let a = canonical_axis(axis, shape.len(), "softmax_param")?;
    Ok((
        count(shape, 0, a),
        shape[a],
        count(shape, a + 1, shape.len()),
        a,
    ))
}

pub struct Softmax {
    axis: i32,
    dims: (usize, usize, usize),
}

impl Softmax {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let axis = lp.softmax_param.as_ref().map(|p| p.axis()).unwrap_or(1);
        Ok(Box::new(Softmax {
            axis,
            dims: (0, 0, 0),
        }))
    }
}

impl Layer for Softmax {
    fn graph_safe(&self) -> bool {
        true
    }
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 1), (1, 1))
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let s = bottom[0].shape();
        let (o, c, i, _) = split_axis(&s, self.axis)?;
        self.dims = (o, c, i);
        top[0].reshape(cx.engine, &s);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let (o, c, i) = self.dims;
        if super::in_place(&bottom[0], &top[0]) {
            // The kernel reads every input of a row before writing it, so stage a copy.
            let x = top[0].data().clone();
            cx.engine
                .softmax_forward(o, c, i, &x, &mut top[0].data_mut());
        } else {
            cx.engine
                .softmax_forward(o, c, i, &bottom[0].data(), &mut top[0].data_mut());
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
        let (o, c, i) = self.dims;
        let y = top[0].data();
        with_diff_in_out(&top[0], &bottom[0], |dy, dx| {
            cx.engine.softmax_backward(o, c, i, &y, dy, dx)
        });
        Ok(())
    }
}

pub struct SoftmaxWithLoss {
    axis: i32,
    loss: LossParameter,
    prob: Option<BlobRef>,
    /// Divisor and count of out-of-range labels, kept with the engine while recording a graph
    /// (see [`Engine::softmax_loss_total`]).
    stats: Option<BlobRef>,
    dims: (usize, usize, usize),
    norm: f32,
}

impl SoftmaxWithLoss {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let axis = lp.softmax_param.as_ref().map(|p| p.axis()).unwrap_or(1);
        let loss = lp.loss_param.unwrap_or_default();
        Ok(Box::new(SoftmaxWithLoss {
            axis,
            loss,
            prob: None,
            stats: None,
            dims: (0, 0, 0),
            norm: 1.0,
        }))
    }

    fn ignore(&self) -> Option<i32> {
        self.loss.ignore_label
    }
}

impl Layer for SoftmaxWithLoss {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((2, 2), (1, 2))
    }
    fn is_loss(&self) -> bool {
        true
    }
    fn allow_force_backward(&self, bottom: usize) -> bool {
        bottom != 1
    }
    fn graph_safe(&self) -> bool {
        true
    }
    fn diagnose(&self, cx: &Ctx) -> Option<String> {
        let stats = self.stats.as_ref()?.data_to_vec(cx.engine);
        let bad = stats.get(1).copied().unwrap_or(0.0);
        (bad > 0.0).then(|| {
            format!(
                "labels outside [0, {}) in its input; check the data's labels or num_output",
                self.dims.1
            )
        })
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let s = bottom[0].shape();
        let (o, c, i, a) = split_axis(&s, self.axis)?;
        if bottom[1].count() != o * i {
            bail!(
                "number of labels ({}) must equal outer × inner of the predictions ({o} × {i}) for shape {s:?} on axis {a}; labels shape {:?}",
                bottom[1].count(),
                bottom[1].shape()
            );
        }
        self.dims = (o, c, i);
        if self.stats.is_none() {
            self.stats = Some(Blob::new_ref(cx.engine, &[2]));
        }
        top[0].reshape(cx.engine, &[]);
        match &self.prob {
            Some(p) => p.reshape(cx.engine, &s),
            None => self.prob = Some(Blob::new_ref(cx.engine, &s)),
        }
        if let Some(t) = top.get(1) {
            t.reshape(cx.engine, &s);
        }
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let (o, c, i) = self.dims;
        let e = cx.engine;
        let Some(prob) = &self.prob else {
            return Ok(());
        };
        e.softmax_forward(o, c, i, &bottom[0].data(), &mut prob.data_mut());
        let labels = bottom[1].data();
        let mode = normalization::mode(&self.loss, NormalizationMode::Valid);
        if e.recording() {
            let Some(stats) = self.stats.clone() else {
                return Ok(());
            };
            e.softmax_loss_total(
                self.dims,
                &prob.data(),
                &labels,
                self.ignore(),
                normalization::divisor(mode, o, i, 0),
                mode == NormalizationMode::Valid,
                &mut top[0].data_mut(),
                &mut stats.data_mut(),
            );
            if let Some(t) = top.get(1) {
                e.axpby(1.0, &prob.data(), 0.0, &mut t.data_mut());
            }
            return Ok(());
        }
        if self.ignore().is_none() {
            // Labels outside [0, C) would index past the class axis; Caffe CHECK-fails here.
            let l = e.download(&labels);
            if let Some(bad) = l.iter().find(|v| **v < 0.0 || **v as usize >= c) {
                bail!("label {bad} is outside [0, {c}); check the data's labels or num_output");
            }
        }
        let (loss, valid) = e.softmax_loss(o, c, i, &prob.data(), &labels, self.ignore());
        self.norm = normalization::divisor(mode, o, i, valid);
        e.upload(&[loss / self.norm], &mut top[0].data_mut());
        if let Some(t) = top.get(1) {
            e.axpby(1.0, &prob.data(), 0.0, &mut t.data_mut());
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
        if pd.get(1).copied().unwrap_or(false) {
            bail!("cannot backpropagate to the labels; set propagate_down: false for them");
        }
        if !pd[0] {
            return Ok(());
        }
        let (o, c, i) = self.dims;
        let e = cx.engine;
        let Some(prob) = &self.prob else {
            return Ok(());
        };
        if e.recording() {
            let Some(stats) = &self.stats else {
                bail!("internal: a recorded backward pass without its recorded forward pass");
            };
            e.softmax_loss_backward_total(
                self.dims,
                &prob.data(),
                &bottom[1].data(),
                self.ignore(),
                &top[0].diff(),
                &stats.data(),
                &mut bottom[0].diff_mut(),
            );
            return Ok(());
        }
        let w = e.download(&top[0].diff())[0];
        e.softmax_loss_backward(
            o,
            c,
            i,
            &prob.data(),
            &bottom[1].data(),
            self.ignore(),
            w / self.norm,
            &mut bottom[0].diff_mut(),
        );
        Ok(())
    }
}
