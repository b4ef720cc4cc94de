//! RNN and LSTM: Caffe's recurrent layers over T×N sequences, unrolled in time here rather than
//! through an internal net, with the same learnable blobs in the same order (so caffemodels
//! interoperate) and backpropagation through time.
//!
//! Bottoms: x (T×N×...), cont (T×N: 0 where a sequence starts), optionally x_static (N×...), and
//! with expose_hidden the initial state h0 (1×N×H), plus c0 for LSTM. Tops: the outputs (T×N×H),
//! and with expose_hidden the final state hT (and cT).
//!
//! LSTM: gates_t = W_xc x_t + b_c (+ W_xc_static x_static) + W_hc (cont_t · h_{t-1}), then an
//! LSTMUnit step; blobs W_xc, b_c, [W_xc_static], W_hc; the output is h.
//! RNN: h_t = tanh(W_xh x_t + b_h (+ W_xh_static x_static) + W_hh (cont_t · h_{t-1})),
//! o_t = tanh(W_ho h_t + b_o); blobs W_xh, b_h, [W_xh_static], W_hh, W_ho, b_o.

use super::lstm_unit::{Cell, GATES};
use super::{Ctx, Layer};
use crate::blob::{Blob, BlobRef};
use crate::engine::{Activation, Buffer, Engine};
use crate::filler::fill;
use crate::{bail, Result};
use crema_proto::caffe::{LayerParameter, RecurrentParameter};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Rnn,
    Lstm,
}

/// Sizes of one pass: steps T, items N, input I, static input, hidden H, gate width G.
#[derive(Clone, Copy, Default)]
struct Dims {
    t: usize,
    n: usize,
    i: usize,
    is: usize,
    h: usize,
    g: usize,
}

/// Work memory of one pass.
struct Bufs {
    /// Gate pre-activations of every step (T×N×G).
    pre: Buffer,
    /// Hidden states h_0..h_T and (LSTM) cell states c_0..c_T, each (T+1)×N×H.
    hs: Buffer,
    cs: Buffer,
    dhs: Buffer,
    dcs: Buffer,
    dpre: Buffer,
    /// One step: cont_t, cont_t · h_{t-1}, and N×H / N×G scratch.
    cont_t: Buffer,
    hc: Buffer,
    a: Buffer,
    b: Buffer,
    c: Buffer,
    d: Buffer,
    gx: Buffer,
    /// The static input's contribution (N×G).
    stat: Buffer,
}

impl Bufs {
    fn new(e: &dyn Engine, d: Dims) -> Bufs {
        let (nh, ng) = (d.n * d.h, d.n * d.g);
        let states = (d.t + 1) * nh;
        Bufs {
            pre: e.alloc(d.t * ng),
            hs: e.alloc(states),
            cs: e.alloc(states),
            dhs: e.alloc(states),
            dcs: e.alloc(states),
            dpre: e.alloc(d.t * ng),
            cont_t: e.alloc(d.n),
            hc: e.alloc(nh),
            a: e.alloc(nh),
            b: e.alloc(nh),
            c: e.alloc(nh),
            d: e.alloc(nh),
            gx: e.alloc(ng),
            stat: e.alloc(ng),
        }
    }
}

pub struct Recurrent {
    kind: Kind,
    p: RecurrentParameter,
    static_input: bool,
    blobs: Vec<BlobRef>,
    dims: Dims,
    bufs: Option<Bufs>,
    cell: Cell,
}

/// Copies `n` values at `off` of `src` to the start of `dst`.
fn take(e: &dyn Engine, n: usize, src: &Buffer, off: usize, dst: &mut Buffer) {
    e.copy_blocks(1, n, src, off, 0, dst, 0, 0);
}

/// Copies the first `n` values of `src` to `off` in `dst`.
fn put(e: &dyn Engine, n: usize, src: &Buffer, dst: &mut Buffer, off: usize) {
    e.copy_blocks(1, n, src, 0, 0, dst, off, 0);
}

/// hc = cont_t · h_t-slot of `hs` (the state entering step t), with cont_t in `cont_t`.
fn masked_state(
    e: &dyn Engine,
    d: Dims,
    cont: &Buffer,
    hs: &Buffer,
    t: usize,
    cont_t: &mut Buffer,
    hc: &mut Buffer,
) {
    take(e, d.n, cont, t * d.n, cont_t);
    take(e, d.n * d.h, hs, t * d.n * d.h, hc);
    e.channel_scale(1, d.n, d.h, cont_t, None, hc);
}

impl Recurrent {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let kind = if lp.r#type() == "LSTM" {
            Kind::Lstm
        } else {
            Kind::Rnn
        };
        let p = lp.recurrent_param.clone().unwrap_or_default();
        if p.num_output() == 0 {
            bail!("recurrent_param.num_output must be positive");
        }
        Ok(Box::new(Recurrent {
            kind,
            p,
            static_input: false,
            blobs: vec![],
            dims: Dims::default(),
            bufs: None,
            cell: Cell::default(),
        }))
    }

    /// Recurrent states: h (and c for LSTM).
    fn n_states(&self) -> usize {
        match self.kind {
            Kind::Rnn => 1,
            Kind::Lstm => 2,
        }
    }

    /// Index of W_hh / W_hc in `blobs`.
    fn w_h(&self) -> usize {
        2 + usize::from(self.static_input)
    }

    /// Bottom index of the first exposed initial state.
    fn first_state_bottom(&self) -> usize {
        2 + usize::from(self.static_input)
    }

    fn exposed(&self) -> bool {
        self.p.expose_hidden()
    }
}

impl Layer for Recurrent {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        let s = self.n_states();
        if self.exposed() {
            ((2 + s, 3 + s), (1 + s, 1 + s))
        } else {
            ((2, 3), (1, 1))
        }
    }
    fn allow_force_backward(&self, bottom: usize) -> bool {
        bottom != 1
    }

    fn setup(&mut self, cx: &Ctx, bottom: &[BlobRef], _top: &[BlobRef]) -> Result<()> {
        let states = if self.exposed() { self.n_states() } else { 0 };
        self.static_input = bottom.len() > 2 + states;
        let x = bottom[0].shape();
        if x.len() < 2 {
            bail!("the input must be T×N×..., got shape {x:?}");
        }
        let h = self.p.num_output() as usize;
        let g = if self.kind == Kind::Lstm {
            GATES * h
        } else {
            h
        };
        let i = bottom[0].count_range(2, x.len());
        let wf = self.p.weight_filler.clone().unwrap_or_default();
        let bf = self.p.bias_filler.clone().unwrap_or_default();
        let e = cx.engine;
        let make = |shape: &[usize], f: &crema_proto::caffe::FillerParameter| -> Result<BlobRef> {
            let b = Blob::new_ref(e, shape);
            b.set_data(e, &fill(f, shape)?);
            Ok(b)
        };
        let mut blobs = vec![make(&[g, i], &wf)?, make(&[g], &bf)?];
        if self.static_input {
            let s = bottom[2].shape();
            let is = bottom[2].count_range(1, s.len());
            blobs.push(make(&[g, is], &wf)?);
        }
        blobs.push(make(&[g, h], &wf)?);
        if self.kind == Kind::Rnn {
            blobs.push(make(&[h, h], &wf)?);
            blobs.push(make(&[h], &bf)?);
        }
        self.blobs = blobs;
        Ok(())
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let x = bottom[0].shape();
        let (t, n) = (x[0], x[1]);
        let h = self.p.num_output() as usize;
        let i = bottom[0].count_range(2, x.len());
        if i != self.blobs[0].dim(1) {
            bail!(
                "the input has {i} values per step and item but the layer was set up for {}",
                self.blobs[0].dim(1)
            );
        }
        if bottom[1].shape() != [t, n] {
            bail!(
                "the sequence flags must be T×N = {t}×{n}, got {:?}",
                bottom[1].shape()
            );
        }
        let is = if self.static_input {
            let s = bottom[2].shape();
            if s.first() != Some(&n) {
                bail!("the static input must be N×... with N = {n}, got {s:?}");
            }
            bottom[2].count_range(1, s.len())
        } else {
            0
        };
        if self.exposed() {
            for k in 0..self.n_states() {
                let s = bottom[self.first_state_bottom() + k].shape();
                if s != [1, n, h] {
                    bail!("initial state {k} must be 1×{n}×{h}, got {s:?}");
                }
            }
        }
        let g = if self.kind == Kind::Lstm {
            GATES * h
        } else {
            h
        };
        let d = Dims { t, n, i, is, h, g };
        let e = cx.engine;
        top[0].reshape(e, &[t, n, h]);
        for tp in top.iter().skip(1) {
            tp.reshape(e, &[1, n, h]);
        }
        let same = self.bufs.is_some() && self.dims.t == t && self.dims.n == n;
        self.dims = d;
        if !same {
            self.bufs = Some(Bufs::new(e, d));
        }
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let d = self.dims;
        let (tn, nh, ng) = (d.t * d.n, d.n * d.h, d.n * d.g);
        let w_h = self.w_h();
        let first_state = self.first_state_bottom();
        let (exposed, kind, static_input) = (self.exposed(), self.kind, self.static_input);
        let Some(b) = self.bufs.as_mut() else {
            bail!("forward ran before reshape")
        };
        let bl = &self.blobs;
        // Input contributions of every step at once: W_x x + b (+ W_static x_static).
        e.gemm(
            false,
            true,
            tn,
            d.g,
            d.i,
            1.0,
            (&bottom[0].data(), 0),
            (&bl[0].data(), 0),
            0.0,
            (&mut b.pre, 0),
        );
        e.bias_forward(tn, d.g, 1, &bl[1].data(), &mut b.pre);
        if static_input {
            e.gemm(
                false,
                true,
                d.n,
                d.g,
                d.is,
                1.0,
                (&bottom[2].data(), 0),
                (&bl[2].data(), 0),
                0.0,
                (&mut b.stat, 0),
            );
            e.add_blocks(d.t, ng, &b.stat, 0, 0, &mut b.pre, 0, ng);
        }
        // Initial states.
        if exposed {
            put(e, nh, &bottom[first_state].data(), &mut b.hs, 0);
            if kind == Kind::Lstm {
                put(e, nh, &bottom[first_state + 1].data(), &mut b.cs, 0);
            }
        } else {
            let z = e.alloc(nh);
            put(e, nh, &z, &mut b.hs, 0);
            put(e, nh, &z, &mut b.cs, 0);
        }
        let cont = bottom[1].data();
        for t in 0..d.t {
            masked_state(e, d, &cont, &b.hs, t, &mut b.cont_t, &mut b.hc);
            e.gemm(
                false,
                true,
                d.n,
                d.g,
                d.h,
                1.0,
                (&b.hc, 0),
                (&bl[w_h].data(), 0),
                1.0,
                (&mut b.pre, t * ng),
            );
            match kind {
                Kind::Lstm => {
                    take(e, nh, &b.cs, t * nh, &mut b.a);
                    take(e, ng, &b.pre, t * ng, &mut b.gx);
                    self.cell
                        .forward(e, (d.n, d.h), &b.a, &b.gx, &b.cont_t, &mut b.c, &mut b.d);
                    put(e, nh, &b.c, &mut b.cs, (t + 1) * nh);
                    put(e, nh, &b.d, &mut b.hs, (t + 1) * nh);
                }
                Kind::Rnn => {
                    take(e, ng, &b.pre, t * ng, &mut b.a);
                    e.act_forward(Activation::TanH, None, &mut b.a);
                    put(e, nh, &b.a, &mut b.hs, (t + 1) * nh);
                }
            }
        }
        let mut y = top[0].data_mut();
        match kind {
            Kind::Lstm => e.copy_blocks(1, d.t * nh, &b.hs, nh, 0, &mut y, 0, 0),
            Kind::Rnn => {
                // o = tanh(W_ho h + b_o) for every step at once.
                e.gemm(
                    false,
                    true,
                    tn,
                    d.h,
                    d.h,
                    1.0,
                    (&b.hs, nh),
                    (&bl[w_h + 1].data(), 0),
                    0.0,
                    (&mut y, 0),
                );
                e.bias_forward(tn, d.h, 1, &bl[w_h + 2].data(), &mut y);
                e.act_forward(Activation::TanH, None, &mut y);
            }
        }
        if exposed {
            take(e, nh, &b.hs, d.t * nh, &mut top[1].data_mut());
            if kind == Kind::Lstm {
                take(e, nh, &b.cs, d.t * nh, &mut top[2].data_mut());
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
        if pd[1] {
            bail!("cannot backpropagate to the sequence flags; set propagate_down: false for them");
        }
        let e = cx.engine;
        let d = self.dims;
        let (tn, nh, ng) = (d.t * d.n, d.n * d.h, d.n * d.g);
        let w_h = self.w_h();
        let first_state = self.first_state_bottom();
        let (exposed, kind, static_input) = (self.exposed(), self.kind, self.static_input);
        let Some(b) = self.bufs.as_mut() else {
            bail!("backward ran before forward")
        };
        let bl = &self.blobs;
        // Gradients reaching the hidden states from the outputs.
        e.fill(0.0, &mut b.dhs);
        e.fill(0.0, &mut b.dcs);
        match kind {
            Kind::Lstm => e.copy_blocks(1, d.t * nh, &top[0].diff(), 0, 0, &mut b.dhs, nh, 0),
            Kind::Rnn => {
                let mut dout = e.alloc(tn * d.h);
                let (y, dy) = (top[0].data(), top[0].diff());
                e.act_backward(Activation::TanH, &y, &y, Some(&*dy), &mut dout);
                e.gemm(
                    true,
                    false,
                    d.h,
                    d.h,
                    tn,
                    1.0,
                    (&dout, 0),
                    (&b.hs, nh),
                    1.0,
                    (&mut bl[w_h + 1].diff_mut(), 0),
                );
                e.bias_backward(tn, d.h, 1, &dout, &mut bl[w_h + 2].diff_mut());
                e.gemm(
                    false,
                    false,
                    tn,
                    d.h,
                    d.h,
                    1.0,
                    (&dout, 0),
                    (&bl[w_h + 1].data(), 0),
                    0.0,
                    (&mut b.dhs, nh),
                );
            }
        }
        if exposed {
            e.add_blocks(1, nh, &top[1].diff(), 0, 0, &mut b.dhs, d.t * nh, 0);
            if kind == Kind::Lstm {
                e.add_blocks(1, nh, &top[2].diff(), 0, 0, &mut b.dcs, d.t * nh, 0);
            }
        }
        let cont = bottom[1].data();
        for t in (0..d.t).rev() {
            masked_state(e, d, &cont, &b.hs, t, &mut b.cont_t, &mut b.hc);
            match kind {
                Kind::Lstm => {
                    // Rerun the step to restore the cell's gates, then its backward.
                    take(e, nh, &b.cs, t * nh, &mut b.a);
                    take(e, ng, &b.pre, t * ng, &mut b.gx);
                    self.cell
                        .forward(e, (d.n, d.h), &b.a, &b.gx, &b.cont_t, &mut b.c, &mut b.d);
                    take(e, nh, &b.dcs, (t + 1) * nh, &mut b.c);
                    take(e, nh, &b.dhs, (t + 1) * nh, &mut b.d);
                    self.cell.backward(
                        e,
                        (d.n, d.h),
                        &b.a,
                        &b.c,
                        &b.d,
                        Some(&mut b.b),
                        Some(&mut b.gx),
                    )?;
                    put(e, nh, &b.b, &mut b.dcs, t * nh);
                    put(e, ng, &b.gx, &mut b.dpre, t * ng);
                }
                Kind::Rnn => {
                    take(e, nh, &b.hs, (t + 1) * nh, &mut b.a);
                    take(e, nh, &b.dhs, (t + 1) * nh, &mut b.b);
                    e.act_backward(Activation::TanH, &b.a, &b.a, Some(&b.b), &mut b.gx);
                    put(e, ng, &b.gx, &mut b.dpre, t * ng);
                }
            }
            // Through W_h into the previous state, masked by cont_t as in forward.
            e.gemm(
                true,
                false,
                d.g,
                d.h,
                d.n,
                1.0,
                (&b.dpre, t * ng),
                (&b.hc, 0),
                1.0,
                (&mut bl[w_h].diff_mut(), 0),
            );
            e.gemm(
                false,
                false,
                d.n,
                d.h,
                d.g,
                1.0,
                (&b.dpre, t * ng),
                (&bl[w_h].data(), 0),
                0.0,
                (&mut b.a, 0),
            );
            e.channel_scale(1, d.n, d.h, &b.cont_t, None, &mut b.a);
            e.add_blocks(1, nh, &b.a, 0, 0, &mut b.dhs, t * nh, 0);
        }
        // The input weights over all steps at once.
        e.gemm(
            true,
            false,
            d.g,
            d.i,
            tn,
            1.0,
            (&b.dpre, 0),
            (&bottom[0].data(), 0),
            1.0,
            (&mut bl[0].diff_mut(), 0),
        );
        e.bias_backward(tn, d.g, 1, &b.dpre, &mut bl[1].diff_mut());
        if pd[0] {
            e.gemm(
                false,
                false,
                tn,
                d.i,
                d.g,
                1.0,
                (&b.dpre, 0),
                (&bl[0].data(), 0),
                0.0,
                (&mut bottom[0].diff_mut(), 0),
            );
        }
        if static_input {
            // Σ_t of the step gradients (one block at a time: a stride-0 target could race).
            e.fill(0.0, &mut b.stat);
            for t in 0..d.t {
                e.add_blocks(1, ng, &b.dpre, t * ng, 0, &mut b.stat, 0, 0);
            }
            e.gemm(
                true,
                false,
                d.g,
                d.is,
                d.n,
                1.0,
                (&b.stat, 0),
                (&bottom[2].data(), 0),
                1.0,
                (&mut bl[2].diff_mut(), 0),
            );
            if pd[2] {
                e.gemm(
                    false,
                    false,
                    d.n,
                    d.is,
                    d.g,
                    1.0,
                    (&b.stat, 0),
                    (&bl[2].data(), 0),
                    0.0,
                    (&mut bottom[2].diff_mut(), 0),
                );
            }
        }
        if exposed {
            if pd[first_state] {
                take(e, nh, &b.dhs, 0, &mut bottom[first_state].diff_mut());
            }
            if kind == Kind::Lstm && pd[first_state + 1] {
                take(e, nh, &b.dcs, 0, &mut bottom[first_state + 1].diff_mut());
            }
        }
        Ok(())
    }

    fn blobs(&mut self) -> &mut [BlobRef] {
        &mut self.blobs
    }
}
