//! The Engine trait: every numeric operation a layer or solver needs, implemented once per backend.
//!
//! Layers describe *what* to compute with these operations; the CPU engine implements them with
//! im2col + gemm + rayon, a GPU engine with cuDNN/cuBLAS/kernels. No layer is written twice.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

pub use cpu::CpuEngine;

/// Memory owned by an engine. The CPU engine keeps host vectors, the CUDA engine device memory.
#[derive(Debug, Clone)]
pub enum Buffer {
    Host(Vec<f32>),
    #[cfg(feature = "cuda")]
    Device(cudarc::driver::CudaSlice<f32>),
}

impl Buffer {
    /// Number of f32 elements.
    pub fn len(&self) -> usize {
        match self {
            Buffer::Host(v) => v.len(),
            #[cfg(feature = "cuda")]
            Buffer::Device(d) => d.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Host view; only valid for buffers of the CPU engine (an internal invariant).
    pub fn host(&self) -> &[f32] {
        match self {
            Buffer::Host(v) => v,
            #[cfg(feature = "cuda")]
            Buffer::Device(_) => {
                panic!("the CPU engine was handed a CUDA buffer (engines were mixed)")
            }
        }
    }
    /// Mutable host view; only valid for buffers of the CPU engine.
    pub fn host_mut(&mut self) -> &mut [f32] {
        match self {
            Buffer::Host(v) => v,
            #[cfg(feature = "cuda")]
            Buffer::Device(_) => {
                panic!("the CPU engine was handed a CUDA buffer (engines were mixed)")
            }
        }
    }
}

/// Values on their way to the host (see [`Engine::download_async`]).
pub enum Pending {
    Ready(Vec<f32>),
    Later(Box<dyn FnOnce() -> Vec<f32>>),
}

impl Pending {
    /// Waits for the copy and returns the values.
    pub fn wait(self) -> Vec<f32> {
        match self {
            Pending::Ready(v) => v,
            Pending::Later(f) => f(),
        }
    }
}

/// Crops the prefetcher copied as bytes (cropped and mirrored, not yet converted), for
/// [`Engine::finish_bytes`] to turn into (byte - mean) × scale: a quarter of the bytes a float
/// batch would move to the device.
pub struct ByteBatch<'a> {
    /// N × C × H × W of the crops, and of the floats they become.
    pub shape: [usize; 4],
    /// Height and width of the uncropped items (the mean image's).
    pub source: (usize, usize),
    pub bytes: &'a [u8],
    /// Per item: the crop's row offset, column offset, and 1 if it was mirrored.
    pub places: &'a [[i32; 3]],
    pub scale: f32,
}

/// A recorded sequence of engine operations that can be run again as one launch
/// (see [`Engine::begin_graph`]); its content belongs to the engine that recorded it.
pub struct Graph(pub Box<dyn std::any::Any>);

/// Geometry of a 2-D convolution over an N×C×H×W input (Caffe's conventions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvGeom {
    pub num: usize,
    pub in_channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_channels: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub pad_h: usize,
    pub pad_w: usize,
    pub dilation_h: usize,
    pub dilation_w: usize,
    pub group: usize,
}

impl ConvGeom {
    /// Output height, Caffe's rule: (H + 2p - (d(k-1)+1)) / s + 1, rounded down.
    pub fn out_h(&self) -> usize {
        let ext = self.dilation_h * (self.kernel_h - 1) + 1;
        (self.in_h + 2 * self.pad_h).saturating_sub(ext) / self.stride_h + 1
    }
    /// Output width.
    pub fn out_w(&self) -> usize {
        let ext = self.dilation_w * (self.kernel_w - 1) + 1;
        (self.in_w + 2 * self.pad_w).saturating_sub(ext) / self.stride_w + 1
    }
    /// Elements of the filter tensor: Cout × Cin/g × kh × kw.
    pub fn weight_count(&self) -> usize {
        self.out_channels * self.in_channels / self.group * self.kernel_h * self.kernel_w
    }
}

/// Pooling method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolMethod {
    Max,
    Ave,
}

/// Geometry of 2-D pooling, with Caffe's ceil-mode output size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolGeom {
    pub num: usize,
    pub channels: usize,
    pub in_h: usize,
    pub in_w: usize,
    pub out_h: usize,
    pub out_w: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub pad_h: usize,
    pub pad_w: usize,
}

/// LRN settings (Caffe's LRNParameter).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrnParams {
    pub num: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub local_size: usize,
    pub alpha: f32,
    pub beta: f32,
    pub k: f32,
    pub across_channels: bool,
}

/// Elementwise activation functions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// max(x, 0) + slope * min(x, 0)
    Relu {
        negative_slope: f32,
    },
    Sigmoid,
    TanH,
    /// x > 0 ? x : alpha (e^x - 1)
    Elu {
        alpha: f32,
    },
    AbsVal,
    /// log(1 + e^x)
    Bnll,
    /// (shift + scale x)^power
    Power {
        power: f32,
        scale: f32,
        shift: f32,
    },
    /// base^(shift + scale x) with base e when `base` < 0
    Exp {
        base: f32,
        scale: f32,
        shift: f32,
    },
    /// log_base(shift + scale x)
    Log {
        base: f32,
        scale: f32,
        shift: f32,
    },
    Clip {
        min: f32,
        max: f32,
    },
    /// x * sigmoid(beta x)
    Swish {
        beta: f32,
    },
    /// x > threshold ? 1 : 0 (no gradient)
    Threshold {
        threshold: f32,
    },
}

/// One parameter of a fused SGD step ([`Engine::sgd_update_many`]).
pub struct SgdParam<'a> {
    pub data: &'a mut Buffer,
    pub diff: &'a mut Buffer,
    pub history: &'a mut Buffer,
    pub lr_mult: f32,
    pub decay_mult: f32,
}

/// The settings shared by all parameters of a fused SGD step.
#[derive(Debug, Clone, Copy)]
pub struct SgdStep {
    pub rate: f32,
    pub momentum: f32,
    pub weight_decay: f32,
    /// L1 regularisation (else L2).
    pub l1: bool,
    /// Gradient scale applied first (1/iter_size).
    pub scale: f32,
}

/// Operations a layer or solver may ask of the engine. Buffers carry the engine's own memory.
///
/// Gradient outputs for parameters accumulate (`+=`), as Caffe's do, so `iter_size` and shared
/// weights sum naturally; gradient outputs for bottoms overwrite.
pub trait Engine {
    /// A short name for logs ("CPU", "CUDA:0").
    fn name(&self) -> String;
    /// Waits until every queued operation has finished (for timing); synchronous engines need not.
    fn synchronize(&self) {}
    /// Whether convolutions and gemms may use TF32 tensor cores (else strict fp32, Caffe's math).
    fn tf32(&self) -> bool {
        false
    }
    /// A net asks for TF32 (`true`) or strict fp32 math (its `precision` field); engines without
    /// TF32 ignore it, and a TF32 setting forced from the command line stays.
    fn set_tf32(&self, _on: bool) {}

    // ---- memory ----
    /// A zero-filled buffer of `n` elements.
    fn alloc(&self, n: usize) -> Buffer;
    /// Host copy of a buffer.
    fn download(&self, buf: &Buffer) -> Vec<f32>;
    /// Overwrites `dst[..src.len()]` with host values.
    fn upload(&self, src: &[f32], dst: &mut Buffer);
    /// Starts copying a buffer to the host and returns without waiting for queued work;
    /// [`Pending::wait`] gives the values. Synchronous engines copy at once.
    fn download_async(&self, buf: &Buffer) -> Pending {
        Pending::Ready(self.download(buf))
    }
    /// Fills every element with `value`.
    fn fill(&self, value: f32, dst: &mut Buffer);
    /// Writes `batch` as floats into `dst` as Caffe's transformer computes them: (byte - mean) ×
    /// scale, the mean read from `mean_image` (C × source H × W) at the byte's uncropped place
    /// (row offset + y, column offset + x, or + W - 1 - x if mirrored), or from `channel_means`
    /// (one per channel); with neither, byte × scale.
    fn finish_bytes(
        &self,
        batch: &ByteBatch<'_>,
        mean_image: Option<&Buffer>,
        channel_means: Option<&Buffer>,
        dst: &mut Buffer,
    );
    /// Copies `n_blocks` blocks of `block` elements: src[src_off + i*src_stride ..] to
    /// dst[dst_off + i*dst_stride ..]. Covers plain copies, Concat and Slice.
    #[allow(clippy::too_many_arguments)]
    fn copy_blocks(
        &self,
        n_blocks: usize,
        block: usize,
        src: &Buffer,
        src_off: usize,
        src_stride: usize,
        dst: &mut Buffer,
        dst_off: usize,
        dst_stride: usize,
    );
    /// Same as `copy_blocks` but accumulates into `dst` (`dst += src`).
    #[allow(clippy::too_many_arguments)]
    fn add_blocks(
        &self,
        n_blocks: usize,
        block: usize,
        src: &Buffer,
        src_off: usize,
        src_stride: usize,
        dst: &mut Buffer,
        dst_off: usize,
        dst_stride: usize,
    );

    // ---- BLAS-like ----
    /// C = alpha op(A) op(B) + beta C, row-major, with element offsets into each buffer.
    /// op(A) is m×k, op(B) is k×n.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        trans_a: bool,
        trans_b: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: (&Buffer, usize),
        b: (&Buffer, usize),
        beta: f32,
        c: (&mut Buffer, usize),
    );
    /// y = alpha x + beta y
    fn axpby(&self, alpha: f32, x: &Buffer, beta: f32, y: &mut Buffer);
    /// y = act(Σ cᵢ·xᵢ) over `terms` (cᵢ, xᵢ), at least one; the default adds them with
    /// [`Engine::axpby`] and then applies `act`.
    fn sum_terms(&self, terms: &[(f32, &Buffer)], act: Option<Activation>, y: &mut Buffer) {
        composed::sum_terms(self, terms, act, y)
    }
    /// y = alpha y
    fn scale(&self, alpha: f32, y: &mut Buffer);
    /// y = a * b elementwise; `a` None means y itself.
    fn mul(&self, a: Option<&Buffer>, b: &Buffer, y: &mut Buffer);
    /// y = a / b elementwise; `a` None means y itself.
    fn div(&self, a: Option<&Buffer>, b: &Buffer, y: &mut Buffer);
    /// y += alpha * sign(x)
    fn add_sign(&self, alpha: f32, x: &Buffer, y: &mut Buffer);
    /// Σ x·y
    fn dot(&self, x: &Buffer, y: &Buffer) -> f32;
    /// Σ |x|
    fn asum(&self, x: &Buffer) -> f32;
    /// Σ x²
    fn sumsq(&self, x: &Buffer) -> f32;
    /// Sum over the middle axis: y[o, i] (+)= Σ_c x[o, c, i] (alpha-scaled), shape outer×ch×inner.
    #[allow(clippy::too_many_arguments)]
    fn sum_axis(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        alpha: f32,
        x: &Buffer,
        beta: f32,
        y: &mut Buffer,
    );

    // ---- convolution ----
    /// y = conv(x, w)
    fn conv_forward(&self, g: &ConvGeom, x: &Buffer, w: &Buffer, y: &mut Buffer);
    /// y = act(conv(x, w) + bias), each part optional: a convolution with its bias and the
    /// activation of the layer after it. The default runs the three steps one after another; an
    /// engine may do them in one call.
    fn conv_forward_fused(
        &self,
        g: &ConvGeom,
        x: &Buffer,
        w: &Buffer,
        bias: Option<&Buffer>,
        act: Option<Activation>,
        y: &mut Buffer,
    ) {
        composed::conv_forward_fused(self, g, x, w, bias, act, y)
    }
    /// dx = conv_transpose(dy, w)
    fn conv_backward_data(&self, g: &ConvGeom, dy: &Buffer, w: &Buffer, dx: &mut Buffer);
    /// dw += correlation of x and dy
    fn conv_backward_filter(&self, g: &ConvGeom, x: &Buffer, dy: &Buffer, dw: &mut Buffer);
    /// y[n, c, i] += b[c] over an outer×ch×inner layout.
    fn bias_forward(&self, outer: usize, ch: usize, inner: usize, b: &Buffer, y: &mut Buffer);
    /// db[c] += Σ_{n,i} dy[n, c, i]
    fn bias_backward(&self, outer: usize, ch: usize, inner: usize, dy: &Buffer, db: &mut Buffer);

    // ---- pooling, normalisation ----
    fn pool_forward(&self, g: &PoolGeom, method: PoolMethod, x: &Buffer, y: &mut Buffer);
    fn pool_backward(
        &self,
        g: &PoolGeom,
        method: PoolMethod,
        x: &Buffer,
        y: &Buffer,
        dy: &Buffer,
        dx: &mut Buffer,
    );
    /// y = LRN(x); `scale` receives Caffe's per-element scale for the backward pass.
    fn lrn_forward(&self, p: &LrnParams, x: &Buffer, y: &mut Buffer, scale: &mut Buffer);
    #[allow(clippy::too_many_arguments)]
    fn lrn_backward(
        &self,
        p: &LrnParams,
        x: &Buffer,
        y: &Buffer,
        scale: &Buffer,
        dy: &Buffer,
        dx: &mut Buffer,
    );

    // ---- activations ----
    /// y = f(x); `x` None means in place on y.
    fn act_forward(&self, f: Activation, x: Option<&Buffer>, y: &mut Buffer);
    /// The backward pass of a ReLU (`slope` its negative_slope) that ran in place on `y`, fused
    /// with the bias gradient of the layer before it: dy ×= (y > 0 ? 1 : slope) in place, then,
    /// with `db`, db[c] += Σ dy[n, c, i] over an outer×ch×inner layout.
    #[allow(clippy::too_many_arguments)]
    fn relu_backward_bias(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        slope: f32,
        y: &Buffer,
        dy: &mut Buffer,
        db: Option<&mut Buffer>,
    ) {
        composed::relu_backward_bias(self, outer, ch, inner, slope, y, dy, db)
    }
    /// The backward pass of y = Σ cᵢ·xᵢ (Eltwise SUM): dxᵢ = cᵢ·dy for every (cᵢ, dxᵢ) in
    /// `outs`; with `gate` = (slope, y), dy first goes through the backward pass of a ReLU that
    /// ran in place on the sum's output y.
    fn sum_backward(
        &self,
        dy: &Buffer,
        gate: Option<(f32, &Buffer)>,
        outs: &mut [(f32, &mut Buffer)],
    ) {
        let gated;
        let g = match gate {
            Some((slope, y)) => {
                let mut t = self.alloc(dy.len());
                let relu = Activation::Relu {
                    negative_slope: slope,
                };
                self.act_backward(relu, y, y, Some(dy), &mut t);
                gated = t;
                &gated
            }
            None => dy,
        };
        for (c, dx) in outs.iter_mut() {
            self.axpby(*c, g, 0.0, dx);
        }
    }
    /// dx = f'(·) dy, where `x` is the bottom data and `y` the top data (the same buffer when the
    /// layer runs in place); `dy` None means dx holds dy (in place).
    fn act_backward(
        &self,
        f: Activation,
        x: &Buffer,
        y: &Buffer,
        dy: Option<&Buffer>,
        dx: &mut Buffer,
    );

    // ---- softmax and losses ----
    /// Softmax over the middle axis of outer×ch×inner.
    fn softmax_forward(&self, outer: usize, ch: usize, inner: usize, x: &Buffer, y: &mut Buffer);
    /// dx = y ⊙ (dy - Σ_c dy y); `dy` None means in place.
    #[allow(clippy::too_many_arguments)]
    fn softmax_backward(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        y: &Buffer,
        dy: Option<&Buffer>,
        dx: &mut Buffer,
    );
    /// Σ -log(max(prob[label], FLT_MIN)) over outer×inner positions whose label is not ignored;
    /// returns (loss sum, number of counted positions).
    fn softmax_loss(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        prob: &Buffer,
        labels: &Buffer,
        ignore_label: Option<i32>,
    ) -> (f32, usize);
    /// dx = scale (prob - onehot(label)), zero at ignored positions.
    #[allow(clippy::too_many_arguments)]
    fn softmax_loss_backward(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        prob: &Buffer,
        labels: &Buffer,
        ignore_label: Option<i32>,
        scale: f32,
        dx: &mut Buffer,
    );

    /// As [`Engine::softmax_loss`], but the result stays with the engine: `top[0]` = loss sum /
    /// divisor, `stats[0]` = the divisor (`fixed_divisor`, or the number of counted positions
    /// (at least 1) when `by_valid`); `stats[1]` counts up the labels outside [0, ch) when no
    /// label is ignored, and the loss is NaN when there are any. Nothing waits for the host, so the call
    /// may be recorded in a graph.
    #[allow(clippy::too_many_arguments)]
    fn softmax_loss_total(
        &self,
        dims: (usize, usize, usize),
        prob: &Buffer,
        labels: &Buffer,
        ignore_label: Option<i32>,
        fixed_divisor: f32,
        by_valid: bool,
        top: &mut Buffer,
        stats: &mut Buffer,
    ) {
        let (outer, ch, inner) = dims;
        let bad = if ignore_label.is_none() {
            let l = self.download(labels);
            l.iter().filter(|v| **v < 0.0 || **v as usize >= ch).count()
        } else {
            0
        };
        let (loss, valid) = self.softmax_loss(outer, ch, inner, prob, labels, ignore_label);
        let norm = if by_valid {
            (valid as f32).max(1.0)
        } else {
            fixed_divisor
        };
        let value = if bad > 0 { f32::NAN } else { loss / norm };
        self.upload(&[value], top);
        let seen = self.download(stats).get(1).copied().unwrap_or(0.0);
        self.upload(&[norm, seen + bad as f32], stats);
    }
    /// As [`Engine::softmax_loss_backward`] with scale = `dtop[0] / stats[0]` read where they
    /// lie (see [`Engine::softmax_loss_total`]).
    #[allow(clippy::too_many_arguments)]
    fn softmax_loss_backward_total(
        &self,
        dims: (usize, usize, usize),
        prob: &Buffer,
        labels: &Buffer,
        ignore_label: Option<i32>,
        dtop: &Buffer,
        stats: &Buffer,
        dx: &mut Buffer,
    ) {
        let (outer, ch, inner) = dims;
        let scale = self.download(dtop)[0] / self.download(stats)[0];
        self.softmax_loss_backward(outer, ch, inner, prob, labels, ignore_label, scale, dx);
    }

    // ---- graphs ----
    /// Starts recording this engine's operations into a graph instead of running them; false
    /// when the engine cannot. Between this and [`Engine::end_graph`] nothing may wait for the
    /// host (no download, no host-side result).
    fn begin_graph(&self) -> bool {
        false
    }
    /// Ends a recording started by [`Engine::begin_graph`]: the graph, ready to launch.
    fn end_graph(&self) -> Result<Graph, String> {
        Err("this engine does not record graphs".into())
    }
    /// How many buffers [`Engine::alloc`] has made so far: a net whose iteration allocates
    /// cannot be replayed from a graph.
    fn allocations(&self) -> u64 {
        0
    }
    /// Whether operations are being recorded into a graph right now (layers then keep results
    /// with the engine instead of reading them on the host).
    fn recording(&self) -> bool {
        false
    }
    /// Queues one run of a recorded graph.
    fn launch_graph(&self, _graph: &Graph) {}
    /// Changes whenever memory a recorded graph may use (scratch space, tables) is replaced:
    /// a graph recorded under another value must be recorded again.
    fn graph_epoch(&self) -> u64 {
        0
    }

    // ---- randomness ----
    /// Fills `mask` with 1/(1-ratio) where a uniform draw exceeds `ratio`, else 0, then y = x ⊙ mask.
    fn dropout_forward(&self, ratio: f32, x: Option<&Buffer>, y: &mut Buffer, mask: &mut Buffer);
    /// Reseeds the engine's random generator (solver `random_seed`).
    fn seed(&self, seed: u64);

    // ---- eltwise max ----
    /// y = max(y, x) elementwise, recording `index` in `arg` where x wins (`first`: y = x, arg = index).
    fn max_accumulate(
        &self,
        x: &Buffer,
        index: usize,
        first: bool,
        y: &mut Buffer,
        arg: &mut Buffer,
    );
    /// dx = dy where arg == index, else 0.
    fn max_route_backward(&self, arg: &Buffer, index: usize, dy: &Buffer, dx: &mut Buffer);

    // ---- solver updates ----
    /// SGD with momentum (Caffe): h = momentum h + lr g; w -= h. `g` already regularised.
    fn sgd_update(&self, lr: f32, momentum: f32, g: &Buffer, h: &mut Buffer, w: &mut Buffer);
    /// The whole of Caffe's SGD step for many parameters in one pass, where the engine has a
    /// fused form (false: it has none, and the solver goes parameter by parameter). For each:
    /// g = diff · `s.scale` (1/iter_size), plus `weight_decay·decay_mult` · w (or · sign(w) when
    /// `s.l1`); diff = g; h = momentum·h + rate·lr_mult·g; w −= h.
    fn sgd_update_many(&self, _params: &mut [SgdParam<'_>], _s: SgdStep) -> bool {
        false
    }
    /// Sets every element of several buffers to `value` (one launch on a GPU).
    fn fill_many(&self, value: f32, bufs: &mut [&mut Buffer]) {
        for b in bufs.iter_mut() {
            self.fill(value, b);
        }
    }

    /// One step of an adaptive rule (Caffe's exact formulas, see [`UpdateRule`]). `h2` is the
    /// second history that AdaDelta and Adam keep. The default runs on the host: correct on any
    /// engine, and an engine may override it with a fused kernel.
    fn solver_update(
        &self,
        rule: UpdateRule,
        lr: f32,
        g: &Buffer,
        h: &mut Buffer,
        h2: Option<&mut Buffer>,
        w: &mut Buffer,
    ) {
        let gv = self.download(g);
        let mut hv = self.download(h);
        let mut h2v = h2.as_ref().map(|b| self.download(b));
        let mut wv = self.download(w);
        rule.apply_host(lr, &gv, &mut hv, h2v.as_deref_mut(), &mut wv);
        self.upload(&hv, h);
        if let (Some(b), Some(v)) = (h2, h2v) {
            self.upload(&v, b);
        }
        self.upload(&wv, w);
    }

    // ---- broadcasting, sampling and losses (defaults that any engine runs; CPU overrides some) ----
    /// y[o, c, i] = x[o, c, i] · s[c] over outer×ch×inner; `x` None means in place on y.
    /// The default broadcasts `s` with `bias_forward` into a temporary and multiplies, so it stays
    /// on the device of any engine; an engine may override it with one fused pass.
    #[allow(clippy::too_many_arguments)]
    fn channel_scale(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        s: &Buffer,
        x: Option<&Buffer>,
        y: &mut Buffer,
    ) {
        composed::channel_scale(self, outer, ch, inner, s, x, y)
    }

    /// y[o, c, i] = x[o, c, i] · s[c] + b[c] (no b: no shift; `x` None: in place on y).
    #[allow(clippy::too_many_arguments)]
    fn channel_affine(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        s: &Buffer,
        b: Option<&Buffer>,
        x: Option<&Buffer>,
        y: &mut Buffer,
    ) {
        composed::channel_affine(self, outer, ch, inner, s, b, x, y)
    }

    /// out[c] += Σ over (o, i) of a[o, c, i] · b[o, c, i] (a per-channel scale's gradient).
    fn channel_dot(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        a: &Buffer,
        b: &Buffer,
        out: &mut Buffer,
    ) {
        composed::channel_dot(self, outer, ch, inner, a, b, out)
    }

    /// Fills `dst` with uniform draws from [0, 1). The default draws from the crate's seeded
    /// generator on the host.
    fn rng_uniform(&self, dst: &mut Buffer) {
        use rand::Rng;
        let v: Vec<f32> = crate::rng::with(|r| (0..dst.len()).map(|_| r.gen::<f32>()).collect());
        self.upload(&v, dst);
    }

    /// Caffe's stochastic pooling in TRAIN: in each window (no padding) takes the first element
    /// where the running sum reaches `rand`·Σx (one uniform draw per output), writes its value to
    /// `y` and its index within the plane to `idx`.
    fn pool_stochastic_train(
        &self,
        g: &PoolGeom,
        x: &Buffer,
        rand: &Buffer,
        y: &mut Buffer,
        idx: &mut Buffer,
    ) {
        let (xv, rv) = (self.download(x), self.download(rand));
        let mut yv = vec![0.0; g.num * g.channels * g.out_h * g.out_w];
        let mut iv = yv.clone();
        pool_stochastic_host(g, &xv, Some(&rv), &mut yv, Some(&mut iv));
        self.upload(&yv, y);
        self.upload(&iv, idx);
    }

    /// Caffe's stochastic pooling in TEST: y = Σx² / Σx over each window (0 where Σx is 0).
    fn pool_stochastic_test(&self, g: &PoolGeom, x: &Buffer, y: &mut Buffer) {
        let xv = self.download(x);
        let mut yv = vec![0.0; g.num * g.channels * g.out_h * g.out_w];
        pool_stochastic_host(g, &xv, None, &mut yv, None);
        self.upload(&yv, y);
    }

    /// Stochastic pooling backward: dx = 0 except dx[idx] += dy for each output.
    fn pool_stochastic_backward(&self, g: &PoolGeom, idx: &Buffer, dy: &Buffer, dx: &mut Buffer) {
        let (iv, dyv) = (self.download(idx), self.download(dy));
        let plane_in = g.in_h * g.in_w;
        let plane_out = g.out_h * g.out_w;
        let mut dxv = vec![0.0; g.num * g.channels * plane_in];
        for p in 0..g.num * g.channels {
            for j in 0..plane_out {
                let k = p * plane_out + j;
                dxv[p * plane_in + iv[k] as usize] += dyv[k];
            }
        }
        self.upload(&dxv, dx);
    }

    /// Caffe's stable sigmoid cross-entropy summed over the elements whose target (cast to an
    /// integer) is not `ignore`: -Σ [x (t - [x≥0]) - log(1 + e^(x - 2x[x≥0]))]; returns the sum and
    /// the number of elements counted.
    fn sigmoid_cross_entropy(&self, x: &Buffer, t: &Buffer, ignore: Option<i32>) -> (f32, usize) {
        let (xv, tv) = (self.download(x), self.download(t));
        let mut loss = 0.0f64;
        let mut valid = 0;
        for (x, t) in xv.iter().zip(&tv) {
            if Some(*t as i32) == ignore {
                continue;
            }
            let pos = if *x >= 0.0 { 1.0 } else { 0.0 };
            loss -= (x * (t - pos) - (1.0 + (x - 2.0 * x * pos).exp()).ln()) as f64;
            valid += 1;
        }
        (loss as f32, valid)
    }

    /// dx = scale (sigmoid(x) - t), zero where the target is ignored.
    fn sigmoid_cross_entropy_backward(
        &self,
        x: &Buffer,
        t: &Buffer,
        ignore: Option<i32>,
        scale: f32,
        dx: &mut Buffer,
    ) {
        let (xv, tv) = (self.download(x), self.download(t));
        let d: Vec<f32> = xv
            .iter()
            .zip(&tv)
            .map(|(x, t)| {
                if Some(*t as i32) == ignore {
                    0.0
                } else {
                    scale * (1.0 / (1.0 + (-x).exp()) - t)
                }
            })
            .collect();
        self.upload(&d, dx);
    }

    // ---- batch normalisation (BatchNorm's passes; the defaults run on the host) ----
    /// Per-channel statistics of x (outer×ch×inner): mean[c] and the biased variance var[c].
    fn bn_stats(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        x: &Buffer,
        mean: &mut Buffer,
        var: &mut Buffer,
    ) {
        composed::bn_stats(self, outer, ch, inner, x, mean, var)
    }

    /// std[c] = sqrt(var[c] + eps), then y = (x - mean[c]) / std[c] (`x` None: in place on y),
    /// with a copy of y in `x_norm`.
    #[allow(clippy::too_many_arguments)]
    fn bn_normalize(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        x: Option<&Buffer>,
        mean: &Buffer,
        var: &Buffer,
        eps: f32,
        std: &mut Buffer,
        y: &mut Buffer,
        x_norm: &mut Buffer,
    ) {
        composed::bn_normalize(self, outer, ch, inner, x, mean, var, eps, std, y, x_norm)
    }

    /// dx = (dy - mean(dy) - y·mean(dy·y)) / std[c], the means taken over all axes but the
    /// channel; with `global` statistics (constants), dx = dy / std[c]. `dy` None: it is dx.
    #[allow(clippy::too_many_arguments)]
    fn bn_backward(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        global: bool,
        y: &Buffer,
        dy: Option<&Buffer>,
        std: &Buffer,
        dx: &mut Buffer,
    ) {
        composed::bn_backward(self, outer, ch, inner, global, y, dy, std, dx)
    }

    /// BatchNorm with what follows it folded in: [`Engine::bn_normalize`], then y = y·γ[c] +
    /// β[c] for `affine` = (γ, β) (the Scale layer after it), then `act` on y. x_norm keeps
    /// the normalised values, which the backward pass needs.
    #[allow(clippy::too_many_arguments)]
    fn bn_normalize_affine(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        x: Option<&Buffer>,
        mean: &Buffer,
        var: &Buffer,
        eps: f32,
        std: &mut Buffer,
        y: &mut Buffer,
        x_norm: &mut Buffer,
        affine: Option<(&Buffer, &Buffer)>,
        act: Option<Activation>,
    ) {
        composed::bn_normalize_affine(
            self, outer, ch, inner, x, mean, var, eps, std, y, x_norm, affine, act,
        )
    }

    /// The backward pass of [`Engine::bn_normalize_affine`] with γ = `gamma`, given dz, the
    /// gradient of its output: dγ += Σ x_norm·dz and dβ += Σ dz per channel, then, if `dx` is
    /// given, dx = the [`Engine::bn_backward`] of γ[c]·dz. `dz` None: it is in `dx`. With `gate`
    /// = (β, slope), a ReLU ran on the output and its backward pass is applied to dz first: dz
    /// ×= slope where γ[c]·x_norm + β[c] ≤ 0 (dz itself is left as it is).
    #[allow(clippy::too_many_arguments)]
    fn bn_backward_affine(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        global: bool,
        x_norm: &Buffer,
        std: &Buffer,
        gamma: &Buffer,
        grads: (&mut Buffer, &mut Buffer),
        dz: Option<&Buffer>,
        dx: Option<&mut Buffer>,
        gate: Option<(&Buffer, f32)>,
    ) {
        composed::bn_backward_affine(
            self, outer, ch, inner, global, x_norm, std, gamma, grads, dz, dx, gate,
        )
    }
}

/// The per-channel operations built from an engine's basic ones (or, for BatchNorm, on the host):
/// the [`Engine`] defaults, and the path any engine can fall back to for tensors its own kernels
/// do not take.
pub(crate) mod composed {
    use super::{bn, Activation, Buffer, ConvGeom, Engine};

    pub fn sum_terms<E: Engine + ?Sized>(
        e: &E,
        terms: &[(f32, &Buffer)],
        act: Option<Activation>,
        y: &mut Buffer,
    ) {
        for (i, (c, x)) in terms.iter().enumerate() {
            e.axpby(*c, x, if i == 0 { 0.0 } else { 1.0 }, y);
        }
        if let Some(f) = act {
            e.act_forward(f, None, y);
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn relu_backward_bias<E: Engine + ?Sized>(
        e: &E,
        outer: usize,
        ch: usize,
        inner: usize,
        slope: f32,
        y: &Buffer,
        dy: &mut Buffer,
        db: Option<&mut Buffer>,
    ) {
        let relu = Activation::Relu {
            negative_slope: slope,
        };
        e.act_backward(relu, y, y, None, dy);
        if let Some(db) = db {
            e.bias_backward(outer, ch, inner, dy, db);
        }
    }

    pub fn conv_forward_fused<E: Engine + ?Sized>(
        e: &E,
        g: &ConvGeom,
        x: &Buffer,
        w: &Buffer,
        bias: Option<&Buffer>,
        act: Option<Activation>,
        y: &mut Buffer,
    ) {
        e.conv_forward(g, x, w, y);
        if let Some(b) = bias {
            e.bias_forward(g.num, g.out_channels, g.out_h() * g.out_w(), b, y);
        }
        if let Some(f) = act {
            e.act_forward(f, None, y);
        }
    }

    pub fn channel_scale<E: Engine + ?Sized>(
        e: &E,
        outer: usize,
        ch: usize,
        inner: usize,
        s: &Buffer,
        x: Option<&Buffer>,
        y: &mut Buffer,
    ) {
        let mut t = e.alloc(outer * ch * inner);
        e.bias_forward(outer, ch, inner, s, &mut t);
        e.mul(x, &t, y);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn channel_affine<E: Engine + ?Sized>(
        e: &E,
        outer: usize,
        ch: usize,
        inner: usize,
        s: &Buffer,
        b: Option<&Buffer>,
        x: Option<&Buffer>,
        y: &mut Buffer,
    ) {
        e.channel_scale(outer, ch, inner, s, x, y);
        if let Some(b) = b {
            e.bias_forward(outer, ch, inner, b, y);
        }
    }

    pub fn channel_dot<E: Engine + ?Sized>(
        e: &E,
        outer: usize,
        ch: usize,
        inner: usize,
        a: &Buffer,
        b: &Buffer,
        out: &mut Buffer,
    ) {
        let mut t = e.alloc(outer * ch * inner);
        e.mul(Some(a), b, &mut t);
        e.bias_backward(outer, ch, inner, &t, out);
    }

    pub fn bn_stats<E: Engine + ?Sized>(
        e: &E,
        outer: usize,
        ch: usize,
        inner: usize,
        x: &Buffer,
        mean: &mut Buffer,
        var: &mut Buffer,
    ) {
        let (m, v) = bn::stats(outer, ch, inner, &e.download(x));
        e.upload(&m, mean);
        e.upload(&v, var);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn bn_normalize<E: Engine + ?Sized>(
        e: &E,
        outer: usize,
        ch: usize,
        inner: usize,
        x: Option<&Buffer>,
        mean: &Buffer,
        var: &Buffer,
        eps: f32,
        std: &mut Buffer,
        y: &mut Buffer,
        x_norm: &mut Buffer,
    ) {
        let mut yv = e.download(x.unwrap_or(y));
        let mut sv = vec![0.0; ch];
        let (m, v) = (e.download(mean), e.download(var));
        bn::normalize(outer, ch, inner, &m, &v, eps, &mut sv, &mut yv);
        e.upload(&sv, std);
        e.upload(&yv, y);
        e.upload(&yv, x_norm);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn bn_backward<E: Engine + ?Sized>(
        e: &E,
        outer: usize,
        ch: usize,
        inner: usize,
        global: bool,
        y: &Buffer,
        dy: Option<&Buffer>,
        std: &Buffer,
        dx: &mut Buffer,
    ) {
        let mut g = e.download(dy.unwrap_or(dx));
        let (yv, sv) = (e.download(y), e.download(std));
        bn::backward(outer, ch, inner, global, &yv, &sv, &mut g);
        e.upload(&g, dx);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn bn_normalize_affine<E: Engine + ?Sized>(
        e: &E,
        outer: usize,
        ch: usize,
        inner: usize,
        x: Option<&Buffer>,
        mean: &Buffer,
        var: &Buffer,
        eps: f32,
        std: &mut Buffer,
        y: &mut Buffer,
        x_norm: &mut Buffer,
        affine: Option<(&Buffer, &Buffer)>,
        act: Option<Activation>,
    ) {
        e.bn_normalize(outer, ch, inner, x, mean, var, eps, std, y, x_norm);
        if let Some((g, b)) = affine {
            e.channel_affine(outer, ch, inner, g, Some(b), None, y);
        }
        if let Some(f) = act {
            e.act_forward(f, None, y);
        }
    }

    /// The Scale layer's backward steps, then BatchNorm's, as the two layers run them.
    #[allow(clippy::too_many_arguments)]
    pub fn bn_backward_affine<E: Engine + ?Sized>(
        e: &E,
        outer: usize,
        ch: usize,
        inner: usize,
        global: bool,
        x_norm: &Buffer,
        std: &Buffer,
        gamma: &Buffer,
        (dgamma, dbeta): (&mut Buffer, &mut Buffer),
        dz: Option<&Buffer>,
        dx: Option<&mut Buffer>,
        gate: Option<(&Buffer, f32)>,
    ) {
        // The ReLU's backward pass on a copy of dz, its input recomputed from x_norm.
        let gated;
        let dz = match (gate, dz.or(dx.as_deref())) {
            (Some((beta, slope)), Some(g)) => {
                let mut z = e.alloc(g.len());
                e.channel_affine(outer, ch, inner, gamma, Some(beta), Some(x_norm), &mut z);
                let mut t = e.alloc(g.len());
                let relu = Activation::Relu {
                    negative_slope: slope,
                };
                e.act_backward(relu, &z, &z, Some(g), &mut t);
                gated = t;
                Some(&gated)
            }
            _ => dz,
        };
        let Some(dx) = dx else {
            if let Some(dz) = dz {
                e.bias_backward(outer, ch, inner, dz, dbeta);
                e.channel_dot(outer, ch, inner, x_norm, dz, dgamma);
            }
            return;
        };
        {
            let dzv: &Buffer = dz.unwrap_or(dx);
            e.bias_backward(outer, ch, inner, dzv, dbeta);
            e.channel_dot(outer, ch, inner, x_norm, dzv, dgamma);
        }
        e.channel_scale(outer, ch, inner, gamma, dz, dx);
        e.bn_backward(outer, ch, inner, global, x_norm, None, std, dx);
    }
}

/// BatchNorm's arithmetic on host slices: sums in f64, one channel per task.
pub(crate) mod bn {
    use rayon::prelude::*;

    /// Σ over the elements of channel c of f(k), for every c, in f64.
    fn per_channel(
        outer: usize,
        ch: usize,
        inner: usize,
        f: impl Fn(usize) -> f64 + Sync,
    ) -> Vec<f64> {
        (0..ch)
            .into_par_iter()
            .map(|c| {
                let mut s = 0.0;
                for o in 0..outer {
                    let base = (o * ch + c) * inner;
                    for k in base..base + inner {
                        s += f(k);
                    }
                }
                s
            })
            .collect()
    }

    pub fn stats(outer: usize, ch: usize, inner: usize, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let m = (outer * inner).max(1) as f64;
        let mean: Vec<f64> = per_channel(outer, ch, inner, |k| x[k] as f64)
            .into_iter()
            .map(|s| s / m)
            .collect();
        let var = per_channel(outer, ch, inner, |k| {
            let d = x[k] as f64 - mean[(k / inner) % ch];
            d * d
        });
        (
            mean.iter().map(|v| *v as f32).collect(),
            var.iter().map(|v| (v / m) as f32).collect(),
        )
    }

    #[allow(clippy::too_many_arguments)]
    pub fn normalize(
        _outer: usize,
        ch: usize,
        inner: usize,
        mean: &[f32],
        var: &[f32],
        eps: f32,
        std: &mut [f32],
        y: &mut [f32],
    ) {
        for c in 0..ch {
            std[c] = (var[c] + eps).sqrt();
        }
        if inner == 0 {
            return;
        }
        let std = &*std;
        y.par_chunks_mut(inner).enumerate().for_each(|(r, row)| {
            let c = r % ch;
            row.iter_mut().for_each(|v| *v = (*v - mean[c]) / std[c]);
        });
    }

    /// `g` holds dy on entry and dx on return.
    pub fn backward(
        outer: usize,
        ch: usize,
        inner: usize,
        global: bool,
        y: &[f32],
        std: &[f32],
        g: &mut [f32],
    ) {
        if inner == 0 {
            return;
        }
        let (mdy, mdyy) = if global {
            (vec![0.0; ch], vec![0.0; ch])
        } else {
            let m = (outer * inner).max(1) as f64;
            let gr = &*g;
            let a = per_channel(outer, ch, inner, |k| gr[k] as f64);
            let b = per_channel(outer, ch, inner, |k| gr[k] as f64 * y[k] as f64);
            (
                a.iter().map(|v| (v / m) as f32).collect(),
                b.iter().map(|v| (v / m) as f32).collect(),
            )
        };
        g.par_chunks_mut(inner)
            .zip(y.par_chunks(inner))
            .enumerate()
            .for_each(|(r, (row, yr))| {
                let c = r % ch;
                row.iter_mut()
                    .zip(yr)
                    .for_each(|(v, yv)| *v = (*v - mdy[c] - yv * mdyy[c]) / std[c]);
            });
    }
}

/// Stochastic pooling on host slices: sampling with `rand` (TRAIN) or the weighted average (TEST).
fn pool_stochastic_host(
    g: &PoolGeom,
    x: &[f32],
    rand: Option<&[f32]>,
    y: &mut [f32],
    mut idx: Option<&mut [f32]>,
) {
    let plane_in = g.in_h * g.in_w;
    let plane_out = g.out_h * g.out_w;
    for p in 0..g.num * g.channels {
        let xp = &x[p * plane_in..(p + 1) * plane_in];
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                let k = p * plane_out + oy * g.out_w + ox;
                let (hs, ws) = (oy * g.stride_h, ox * g.stride_w);
                let (he, we) = ((hs + g.kernel_h).min(g.in_h), (ws + g.kernel_w).min(g.in_w));
                let window = || (hs..he).flat_map(move |h| (ws..we).map(move |w| h * g.in_w + w));
                match (rand, idx.as_deref_mut()) {
                    (Some(r), Some(iv)) => {
                        let total: f32 = window().map(|i| xp[i]).sum();
                        let thres = r[k] * total;
                        let mut cum = 0.0;
                        // The last element if rounding keeps the running sum below the threshold.
                        let mut pick = (he - 1) * g.in_w + we - 1;
                        for i in window() {
                            cum += xp[i];
                            if cum >= thres {
                                pick = i;
                                break;
                            }
                        }
                        y[k] = xp[pick];
                        iv[k] = pick as f32;
                    }
                    _ => {
                        // Caffe starts the sum at FLT_MIN so an all-zero window gives 0.
                        let (mut s, mut s2) = (f32::MIN_POSITIVE, 0.0f32);
                        for i in window() {
                            s += xp[i];
                            s2 += xp[i] * xp[i];
                        }
                        y[k] = s2 / s;
                    }
                }
            }
        }
    }
}

/// Caffe's update rules beyond plain SGD, with their hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum UpdateRule {
    /// v' = m v + lr g; w -= (1 + m) v' - m v
    Nesterov { momentum: f32 },
    /// h += g²; w -= lr g / (√h + δ)
    AdaGrad { delta: f32 },
    /// h = d h + (1 - d) g²; w -= lr g / (√h + δ)
    RmsProp { decay: f32, delta: f32 },
    /// h = m h + (1-m) g²; u = g √((h2 + δ)/(h + δ)); h2 = m h2 + (1-m) u²; w -= lr u
    AdaDelta { momentum: f32, delta: f32 },
    /// Adam at step `t` (1-based) with bias correction √(1-β2ᵗ)/(1-β1ᵗ).
    Adam {
        beta1: f32,
        beta2: f32,
        delta: f32,
        t: i32,
    },
}

impl UpdateRule {
    /// Whether the rule keeps a second history blob per parameter.
    pub fn needs_second_history(&self) -> bool {
        matches!(self, UpdateRule::AdaDelta { .. } | UpdateRule::Adam { .. })
    }

    /// Applies the rule to host slices.
    pub fn apply_host(
        &self,
        lr: f32,
        g: &[f32],
        h: &mut [f32],
        h2: Option<&mut [f32]>,
        w: &mut [f32],
    ) {
        match *self {
            UpdateRule::Nesterov { momentum } => {
                for i in 0..w.len() {
                    let prev = h[i];
                    h[i] = momentum * h[i] + lr * g[i];
                    w[i] -= (1.0 + momentum) * h[i] - momentum * prev;
                }
            }
            UpdateRule::AdaGrad { delta } => {
                for i in 0..w.len() {
                    h[i] += g[i] * g[i];
                    w[i] -= lr * g[i] / (h[i].sqrt() + delta);
                }
            }
            UpdateRule::RmsProp { decay, delta } => {
                for i in 0..w.len() {
                    h[i] = decay * h[i] + (1.0 - decay) * g[i] * g[i];
                    w[i] -= lr * g[i] / (h[i].sqrt() + delta);
                }
            }
            UpdateRule::AdaDelta { momentum, delta } => {
                let Some(h2) = h2 else { return };
                for i in 0..w.len() {
                    h[i] = momentum * h[i] + (1.0 - momentum) * g[i] * g[i];
                    let u = g[i] * ((h2[i] + delta) / (h[i] + delta)).sqrt();
                    h2[i] = momentum * h2[i] + (1.0 - momentum) * u * u;
                    w[i] -= lr * u;
                }
            }
            UpdateRule::Adam {
                beta1,
                beta2,
                delta,
                t,
            } => {
                let Some(v) = h2 else { return };
                let correction = (1.0 - beta2.powi(t)).sqrt() / (1.0 - beta1.powi(t));
                for i in 0..w.len() {
                    h[i] = beta1 * h[i] + (1.0 - beta1) * g[i];
                    v[i] = beta2 * v[i] + (1.0 - beta2) * g[i] * g[i];
                    w[i] -= lr * correction * h[i] / (v[i].sqrt() + delta);
                }
            }
        }
    }
}
