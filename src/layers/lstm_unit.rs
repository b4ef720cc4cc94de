//! LSTMUnit: one step of an LSTM cell. From the previous cell state c' (1×N×D), the gate inputs
//! X (1×N×4D: input, forget, output, candidate) and the sequence-continuation flags (1×N), gives
//! c = f·c' + i·g and h = o·tanh(c), where the forget gate is 0 where a sequence starts.

use super::work::Work;
use super::{Ctx, Layer};
use crate::blob::BlobRef;
use crate::engine::{Activation, Buffer, Engine};
use crate::{bail, Result};
use crema_proto::caffe::LayerParameter;

/// The four gates, each N×D, in Caffe's order inside X.
const GATES: usize = 4;

pub struct LstmUnit {
    /// (items N, hidden size D)
    dims: (usize, usize),
    /// Activated gates i, f (masked by the flags), o, g.
    gates: [Work; GATES],
    tanh_c: Work,
    scratch: Work,
    /// Gradient of the cell state through c and h.
    dc: Work,
}

impl LstmUnit {
    pub fn create(_lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        Ok(Box::new(LstmUnit {
            dims: (0, 0),
            gates: Default::default(),
            tanh_c: Work::default(),
            scratch: Work::default(),
            dc: Work::default(),
        }))
    }
}

/// Copies gate `k` of X (N×4D) to or from an N×D buffer.
fn gate_copy(e: &dyn Engine, n: usize, d: usize, k: usize, x: &Buffer, g: &mut Buffer) {
    e.copy_blocks(n, d, x, k * d, GATES * d, g, 0, d);
}

impl Layer for LstmUnit {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((3, 3), (2, 2))
    }
    fn allow_force_backward(&self, bottom: usize) -> bool {
        bottom < 2
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let (c, x, cont) = (bottom[0].shape(), bottom[1].shape(), bottom[2].shape());
        if c.len() != 3 || c[0] != 1 {
            bail!("the previous cell state must be 1×N×D, got {c:?}");
        }
        let (n, d) = (c[1], c[2]);
        if x != [1, n, GATES * d] {
            bail!(
                "the gate inputs must be 1×{n}×{} (4 × the cell size), got {x:?}",
                GATES * d
            );
        }
        if cont != [1, n] {
            bail!("the sequence flags must be 1×{n}, got {cont:?}");
        }
        self.dims = (n, d);
        top[0].reshape(cx.engine, &c);
        top[1].reshape(cx.engine, &c);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let (n, d) = self.dims;
        let x = bottom[1].data();
        let [i, f, o, g] = &mut self.gates;
        let (i, f, o, g) = (
            i.get(e, n * d),
            f.get(e, n * d),
            o.get(e, n * d),
            g.get(e, n * d),
        );
        for (k, buf) in [&mut *i, &mut *f, &mut *o, &mut *g].into_iter().enumerate() {
            gate_copy(e, n, d, k, &x, buf);
        }
        e.act_forward(Activation::Sigmoid, None, i);
        e.act_forward(Activation::Sigmoid, None, f);
        e.act_forward(Activation::Sigmoid, None, o);
        e.act_forward(Activation::TanH, None, g);
        // The forget gate is zero where a new sequence starts (flag 0).
        e.channel_scale(1, n, d, &bottom[2].data(), None, f);
        let mut c = top[0].data_mut();
        e.mul(Some(f), &bottom[0].data(), &mut c);
        let ig = self.scratch.get(e, n * d);
        e.mul(Some(i), g, ig);
        e.axpby(1.0, ig, 1.0, &mut c);
        let tc = self.tanh_c.get(e, n * d);
        e.act_forward(Activation::TanH, Some(&*c), tc);
        e.mul(Some(o), tc, &mut top[1].data_mut());
        Ok(())
    }

    fn backward(
        &mut self,
        cx: &Ctx,
        top: &[BlobRef],
        pd: &[bool],
        bottom: &[BlobRef],
    ) -> Result<()> {
        if pd[2] {
            bail!("cannot backpropagate to the sequence flags; set propagate_down: false for them");
        }
        let e = cx.engine;
        let (n, d) = self.dims;
        let [Some(i), Some(f), Some(o), Some(g)] = self.gates.each_ref().map(|w| w.buf()) else {
            bail!("backward ran before forward");
        };
        let Some(tc) = self.tanh_c.buf() else {
            bail!("backward ran before forward")
        };
        let t = self.scratch.get(e, n * d);
        let dc = self.dc.get(e, n * d);
        // dc = dC + dH · o · (1 - tanh²c)
        e.mul(Some(&*top[1].diff()), o, t);
        e.act_backward(Activation::TanH, tc, tc, Some(t), dc);
        e.axpby(1.0, &top[0].diff(), 1.0, dc);
        if pd[0] {
            e.mul(Some(dc), f, &mut bottom[0].diff_mut());
        }
        if pd[1] {
            let mut dx = bottom[1].diff_mut();
            let mut dgate = e.alloc(n * d);
            // input gate: dc · g · i(1 - i)
            e.mul(Some(dc), g, t);
            e.act_backward(Activation::Sigmoid, i, i, Some(t), &mut dgate);
            e.copy_blocks(n, d, &dgate, 0, d, &mut dx, 0, GATES * d);
            // forget gate: dc · c' · f(1 - f), zero where f was masked
            e.mul(Some(dc), &bottom[0].data(), t);
            e.act_backward(Activation::Sigmoid, f, f, Some(t), &mut dgate);
            e.copy_blocks(n, d, &dgate, 0, d, &mut dx, d, GATES * d);
            // output gate: dH · tanh c · o(1 - o)
            e.mul(Some(&*top[1].diff()), tc, t);
            e.act_backward(Activation::Sigmoid, o, o, Some(t), &mut dgate);
            e.copy_blocks(n, d, &dgate, 0, d, &mut dx, 2 * d, GATES * d);
            // candidate: dc · i · (1 - g²)
            e.mul(Some(dc), i, t);
            e.act_backward(Activation::TanH, g, g, Some(t), &mut dgate);
            e.copy_blocks(n, d, &dgate, 0, d, &mut dx, 3 * d, GATES * d);
        }
        Ok(())
    }
}
