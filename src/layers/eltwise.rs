//! Eltwise: elementwise SUM (with coefficients), PROD or MAX of several bottoms.

use super::{Ctx, Layer};
use crate::blob::{Blob, BlobRef};
use crate::engine::{Activation, Buffer};
use crate::{bail, Result};
use crema_proto::caffe::eltwise_parameter::EltwiseOp;
use crema_proto::caffe::LayerParameter;
use std::cell::RefMut;

pub struct Eltwise {
    op: EltwiseOp,
    coeff: Vec<f32>,
    arg: Option<BlobRef>,
    /// The in-place activation after a SUM, applied here (see [`Layer::absorb_activation`]).
    act: Option<Activation>,
    /// Whether the backward pass also runs that activation's (a ReLU).
    act_backward: bool,
}

impl Eltwise {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.eltwise_param.clone().unwrap_or_default();
        if !p.coeff.is_empty() && p.operation() != EltwiseOp::Sum {
            bail!("eltwise_param.coeff applies only to operation SUM");
        }
        if !p.coeff.is_empty() && p.coeff.len() != lp.bottom.len() {
            bail!(
                "eltwise_param has {} coeff values for {} bottoms; give one per bottom",
                p.coeff.len(),
                lp.bottom.len()
            );
        }
        Ok(Box::new(Eltwise {
            op: p.operation(),
            coeff: p.coeff.clone(),
            arg: None,
            act: None,
            act_backward: false,
        }))
    }

    fn coeff(&self, i: usize) -> f32 {
        self.coeff.get(i).copied().unwrap_or(1.0)
    }
}

impl Layer for Eltwise {
    fn absorb_activation(&mut self, act: Activation) -> bool {
        // SUM's backward reads only the top's gradient.
        if self.op != EltwiseOp::Sum || self.act.is_some() {
            return false;
        }
        self.act = Some(act);
        true
    }
    fn absorb_activation_backward(&mut self) -> bool {
        // The ReLU's gradient mask comes from the top's data, in the same pass that hands the
        // gradient to the bottoms.
        self.act_backward = matches!(self.act, Some(Activation::Relu { .. }));
        self.act_backward
    }
    fn graph_safe(&self) -> bool {
        true
    }
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((2, usize::MAX), (1, 1))
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let s = bottom[0].shape();
        for b in &bottom[1..] {
            if b.shape() != s {
                bail!(
                    "all bottoms must have the same shape: {s:?} vs {:?}",
                    b.shape()
                );
            }
        }
        if bottom.iter().any(|b| super::in_place(b, &top[0])) {
            bail!("Eltwise cannot run in place; give it a top of its own");
        }
        top[0].reshape(cx.engine, &s);
        if self.op == EltwiseOp::Max {
            match &self.arg {
                Some(a) => a.reshape(cx.engine, &s),
                None => self.arg = Some(Blob::new_ref(cx.engine, &s)),
            }
        }
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let mut y = top[0].data_mut();
        match self.op {
            EltwiseOp::Sum => {
                let data: Vec<_> = bottom.iter().map(|b| b.data()).collect();
                let terms: Vec<(f32, &Buffer)> = data
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (self.coeff(i), &**d))
                    .collect();
                e.sum_terms(&terms, self.act, &mut y);
            }
            EltwiseOp::Prod => {
                e.axpby(1.0, &bottom[0].data(), 0.0, &mut y);
                for b in &bottom[1..] {
                    e.mul(None, &b.data(), &mut y);
                }
            }
            EltwiseOp::Max => {
                if let Some(arg) = &self.arg {
                    let mut a = arg.data_mut();
                    for (i, b) in bottom.iter().enumerate() {
                        e.max_accumulate(&b.data(), i, i == 0, &mut y, &mut a);
                    }
                }
            }
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
        let e = cx.engine;
        let distinct = bottom
            .iter()
            .enumerate()
            .all(|(i, b)| bottom[..i].iter().all(|o| !super::in_place(o, b)));
        if let (false, true, Some(act)) = (distinct, self.act_backward, self.act) {
            // A bottom given twice: the activation's backward pass on its own, in place.
            let y = top[0].data();
            e.act_backward(act, &y, &y, None, &mut top[0].diff_mut());
        }
        let dy = top[0].diff();
        if self.op == EltwiseOp::Sum && distinct {
            let y = self.act_backward.then(|| top[0].data());
            let gate = match (self.act, &y) {
                (Some(Activation::Relu { negative_slope }), Some(y)) => {
                    Some((negative_slope, &**y))
                }
                _ => None,
            };
            let mut dx: Vec<(f32, RefMut<Buffer>)> = bottom
                .iter()
                .enumerate()
                .filter(|(i, _)| pd[*i])
                .map(|(i, b)| (self.coeff(i), b.diff_mut()))
                .collect();
            let mut outs: Vec<(f32, &mut Buffer)> =
                dx.iter_mut().map(|(c, d)| (*c, &mut **d)).collect();
            e.sum_backward(&dy, gate, &mut outs);
            return Ok(());
        }
        for (i, b) in bottom.iter().enumerate() {
            if !pd[i] {
                continue;
            }
            let mut dx = b.diff_mut();
            match self.op {
                EltwiseOp::Sum => e.axpby(self.coeff(i), &dy, 0.0, &mut dx),
                EltwiseOp::Prod => {
                    // Product of the other bottoms, without dividing by this one (stable).
                    e.axpby(1.0, &dy, 0.0, &mut dx);
                    for (j, o) in bottom.iter().enumerate() {
                        if j != i {
                            e.mul(None, &o.data(), &mut dx);
                        }
                    }
                }
                EltwiseOp::Max => {
                    if let Some(arg) = &self.arg {
                        e.max_route_backward(&arg.data(), i, &dy, &mut dx);
                    }
                }
            }
        }
        Ok(())
    }
}
