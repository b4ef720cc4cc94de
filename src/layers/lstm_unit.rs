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
pub const GATES: usize = 4;

/// The work of one LSTM step, shared by LSTMUnit and the unrolled LSTM layer.
#[derive(Default)]
pub struct Cell {
    /// Activated gates i, f (masked by the flags), o, g.
    gates: [Work; GATES],
    tanh_c: Work,
    scratch: Work,
    dc: Work,
    dgate: Work,
}

impl Cell {
    /// c = f·c' + i·g and h = o·tanh(c) for N items of D units; keeps the gates for backward.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &mut self,
        e: &dyn Engine,
        (n, d): (usize, usize),
        c_prev: &Buffer,
        x: &Buffer,
        cont: &Buffer,
        c: &mut Buffer,
        h: &mut Buffer,
    ) {
        let [i, f, o, g] = &mut self.gates;
        let (i, f, o, g) = (
            i.get(e, n * d),
            f.get(e, n * d),
            o.get(e, n * d),
            g.get(e, n * d),
        );
        for (k, buf) in [&mut *i, &mut *f, &mut *o, &mut *g].into_iter().enumerate() {
            e.copy_blocks(n, d, x, k * d, GATES * d, buf, 0, d);
        }
        e.act_forward(Activation::Sigmoid, None, i);
        e.act_forward(Activation::Sigmoid, None, f);
        e.act_forward(Activation::Sigmoid, None, o);
        e.act_forward(Activation::TanH, None, g);
        // The forget gate is zero where a new sequence starts (flag 0).
        e.channel_scale(1, n, d, cont, None, f);
        e.mul(Some(f), c_prev, c);
        let ig = self.scratch.get(e, n * d);
        e.mul(Some(i), g, ig);
        e.axpby(1.0, ig, 1.0, c);
        let tc = self.tanh_c.get(e, n * d);
        e.act_forward(Activation::TanH, Some(c), tc);
        e.mul(Some(o), tc, h);
    }

    /// Gradients of the step that `forward` last ran, from the top diffs dC and dH: dc' and dX
    /// (each overwritten, where asked for).
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        e: &dyn Engine,
        (n, d): (usize, usize),
        c_prev: &Buffer,
        dc_top: &Buffer,
        dh_top: &Buffer,
        dc_prev: Option<&mut Buffer>,
        dx: Option<&mut Buffer>,
    ) -> Result<()> {
        let [Some(i), Some(f), Some(o), Some(g)] = self.gates.each_ref().map(|w| w.buf()) else {
            bail!("backward ran before forward");
        };
        let Some(tc) = self.tanh_c.buf() else {
            bail!("backward ran before forward")
        };
        let t = self.scratch.get(e, n * d);
        let dc = self.dc.get(e, n * d);
        // dc = dC + dH · o · (1 - tanh²c)
        e.mul(Some(dh_top), o, t);
        e.act_backward(Activation::TanH, tc, tc, Some(t), dc);
        e.axpby(1.0, dc_top, 1.0, dc);
        if let Some(dcp) = dc_prev {
            e.mul(Some(dc), f, dcp);
        }
        if let Some(dx) = dx {
            let dgate = self.dgate.get(e, n * d);
            let put = |k: usize, dgate: &Buffer, dx: &mut Buffer| {
                e.copy_blocks(n, d, dgate, 0, d, dx, k * d, GATES * d)
            };
            // input gate: dc · g · i(1 - i)
            e.mul(Some(dc), g, t);
            e.act_backward(Activation::Sigmoid, i, i, Some(t), dgate);
            put(0, dgate, dx);
            // forget gate: dc · c' · f(1 - f), zero where f was masked
            e.mul(Some(dc), c_prev, t);
            e.act_backward(Activation::Sigmoid, f, f, Some(t), dgate);
            put(1, dgate, dx);
            // output gate: dH · tanh c · o(1 - o)
            e.mul(Some(dh_top), tc, t);
            e.act_backward(Activation::Sigmoid, o, o, Some(t), dgate);
            put(2, dgate, dx);
            // candidate: dc · i · (1 - g²)
            e.mul(Some(dc), i, t);
            e.act_backward(Activation::TanH, g, g, Some(t), dgate);
            put(3, dgate, dx);
        }
        Ok(())
    }
}

pub struct LstmUnit {
    /// (items N, hidden size D)
    dims: (usize, usize),
    cell: Cell,
}

impl LstmUnit {
    pub fn create(_lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        Ok(Box::new(LstmUnit {
            dims: (0, 0),
            cell: Cell::default(),
        }))
    }
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
        let (c_prev, x, cont) = (bottom[0].data(), bottom[1].data(), bottom[2].data());
        let (mut c, mut h) = (top[0].data_mut(), top[1].data_mut());
        self.cell
            .forward(cx.engine, self.dims, &c_prev, &x, &cont, &mut c, &mut h);
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
        let (dc_top, dh_top) = (top[0].diff(), top[1].diff());
        let mut dcp = pd[0].then(|| bottom[0].diff_mut());
        let mut dx = pd[1].then(|| bottom[1].diff_mut());
        self.cell.backward(
            cx.engine,
            self.dims,
            &bottom[0].data(),
            &dc_top,
            &dh_top,
            dcp.as_deref_mut(),
            dx.as_deref_mut(),
        )
    }
}
