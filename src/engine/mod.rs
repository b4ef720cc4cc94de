//! The Engine trait: every numeric operation a layer or solver needs, implemented once per backend.
//!
//! Layers describe *what* to compute with these operations; the CPU engine implements them with
//! im2col + gemm + rayon, a GPU engine with cuDNN/cuBLAS/kernels. No layer is written twice.

pub mod cpu;

pub use cpu::CpuEngine;

/// Memory owned by an engine. The CPU engine keeps host vectors.
#[derive(Debug, Clone)]
pub enum Buffer {
    Host(Vec<f32>),
}

impl Buffer {
    /// Number of f32 elements.
    pub fn len(&self) -> usize {
        match self {
            Buffer::Host(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Host view; only valid for buffers of the CPU engine (an internal invariant).
    pub fn host(&self) -> &[f32] {
        match self {
            Buffer::Host(v) => v,
        }
    }
    /// Mutable host view; only valid for buffers of the CPU engine.
    pub fn host_mut(&mut self) -> &mut [f32] {
        match self {
            Buffer::Host(v) => v,
        }
    }
}

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
    Relu { negative_slope: f32 },
    Sigmoid,
    TanH,
    /// x > 0 ? x : alpha (e^x - 1)
    Elu { alpha: f32 },
    AbsVal,
    /// log(1 + e^x)
    Bnll,
    /// (shift + scale x)^power
    Power { power: f32, scale: f32, shift: f32 },
    /// base^(shift + scale x) with base e when `base` < 0
    Exp { base: f32, scale: f32, shift: f32 },
    /// log_base(shift + scale x)
    Log { base: f32, scale: f32, shift: f32 },
    Clip { min: f32, max: f32 },
    /// x * sigmoid(beta x)
    Swish { beta: f32 },
    /// x > threshold ? 1 : 0 (no gradient)
    Threshold { threshold: f32 },
}

/// Operations a layer or solver may ask of the engine. Buffers carry the engine's own memory.
///
/// Gradient outputs for parameters accumulate (`+=`), as Caffe's do, so `iter_size` and shared
/// weights sum naturally; gradient outputs for bottoms overwrite.
pub trait Engine {
    /// A short name for logs ("CPU", "CUDA:0").
    fn name(&self) -> String;

    // ---- memory ----
    /// A zero-filled buffer of `n` elements.
    fn alloc(&self, n: usize) -> Buffer;
    /// Host copy of a buffer.
    fn download(&self, buf: &Buffer) -> Vec<f32>;
    /// Overwrites `dst[..src.len()]` with host values.
    fn upload(&self, src: &[f32], dst: &mut Buffer);
    /// Fills every element with `value`.
    fn fill(&self, value: f32, dst: &mut Buffer);
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

    // ---- randomness ----
    /// Fills `mask` with 1/(1-ratio) where a uniform draw exceeds `ratio`, else 0, then y = x ⊙ mask.
    fn dropout_forward(&self, ratio: f32, x: Option<&Buffer>, y: &mut Buffer, mask: &mut Buffer);
    /// Reseeds the engine's random generator (solver `random_seed`).
    fn seed(&self, seed: u64);

    // ---- eltwise max ----
    /// y = max(y, x) elementwise, recording `index` in `arg` where x wins (`first`: y = x, arg = index).
    fn max_accumulate(&self, x: &Buffer, index: usize, first: bool, y: &mut Buffer, arg: &mut Buffer);
    /// dx = dy where arg == index, else 0.
    fn max_route_backward(&self, arg: &Buffer, index: usize, dy: &Buffer, dx: &mut Buffer);

    // ---- solver updates ----
    /// SGD with momentum (Caffe): h = momentum h + lr g; w -= h. `g` already regularised.
    fn sgd_update(&self, lr: f32, momentum: f32, g: &Buffer, h: &mut Buffer, w: &mut Buffer);
}
