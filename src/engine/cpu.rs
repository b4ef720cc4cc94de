//! The CPU engine: im2col + matrixmultiply's sgemm, with rayon across the batch.

use super::{
    Activation, Buffer, ByteBatch, ConvGeom, Engine, LrnParams, PoolGeom, PoolMethod, UpdateRule,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use std::sync::Mutex;

/// Runs everything on the host's cores.
pub struct CpuEngine {
    rng: Mutex<StdRng>,
}

impl Default for CpuEngine {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuEngine {
    pub fn new() -> Self {
        CpuEngine {
            rng: Mutex::new(StdRng::seed_from_u64(0x5eed)),
        }
    }
}

/// Row-major sgemm on slices: C = alpha op(A) op(B) + beta C, single-threaded (callers
/// parallelise across the batch).
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) {
    sgemm_with(
        trans_a,
        trans_b,
        m,
        n,
        k,
        alpha,
        a,
        b,
        beta,
        c,
        gemm::Parallelism::None,
    )
}

/// Same as [`sgemm`], spreading one large product over the rayon pool.
#[allow(clippy::too_many_arguments)]
pub fn sgemm_parallel(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) {
    // Below ~1 MFLOP the fork/join costs more than it saves.
    let par = if m * n * k >= 1 << 19 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    sgemm_with(trans_a, trans_b, m, n, k, alpha, a, b, beta, c, par)
}

#[allow(clippy::too_many_arguments)]
fn sgemm_with(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "gemm operand too small"
    );
    // (row stride, column stride) of each operand as stored row-major.
    let (a_rs, a_cs) = if trans_a {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (b_rs, b_cs) = if trans_b {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    // SAFETY: the assert above guarantees every index the kernel touches lies inside the slices,
    // and `c` is borrowed mutably so nothing aliases it.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            beta != 0.0,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            beta,
            alpha,
            false,
            false,
            false,
            par,
        );
    }
}

/// Unrolls one image (C×H×W) into columns (C·kh·kw rows of oh·ow), Caffe's layout. Row `r`
/// starts at `col[r * ld + off]`, so several images can sit side by side in one matrix.
fn im2col(g: &ConvGeom, x: &[f32], col: &mut [f32], ld: usize, off: usize) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (h, w) = (g.in_h as isize, g.in_w as isize);
    let mut row = 0;
    for c in 0..g.in_channels {
        let xc = &x[c * g.in_h * g.in_w..];
        for ki in 0..g.kernel_h {
            for kj in 0..g.kernel_w {
                let dst = &mut col[row * ld + off..row * ld + off + oh * ow];
                for oy in 0..oh {
                    let iy = (oy * g.stride_h + ki * g.dilation_h) as isize - g.pad_h as isize;
                    let d = &mut dst[oy * ow..(oy + 1) * ow];
                    if iy < 0 || iy >= h {
                        d.fill(0.0);
                        continue;
                    }
                    let src = &xc[iy as usize * g.in_w..];
                    if g.stride_w == 1 && g.dilation_w == 1 {
                        // Contiguous run: copy the in-bounds span, zero the padding.
                        let x0 = kj as isize - g.pad_w as isize;
                        for (ox, v) in d.iter_mut().enumerate() {
                            let ix = x0 + ox as isize;
                            *v = if ix >= 0 && ix < w {
                                src[ix as usize]
                            } else {
                                0.0
                            };
                        }
                    } else {
                        for (ox, v) in d.iter_mut().enumerate() {
                            let ix =
                                (ox * g.stride_w + kj * g.dilation_w) as isize - g.pad_w as isize;
                            *v = if ix >= 0 && ix < w {
                                src[ix as usize]
                            } else {
                                0.0
                            };
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// Folds columns back into an image, summing overlaps (the adjoint of im2col). `x` must be zeroed.
fn col2im(g: &ConvGeom, col: &[f32], x: &mut [f32], ld: usize, off: usize) {
    let (oh, ow) = (g.out_h(), g.out_w());
    let (h, w) = (g.in_h as isize, g.in_w as isize);
    let mut row = 0;
    for c in 0..g.in_channels {
        let xc = &mut x[c * g.in_h * g.in_w..(c + 1) * g.in_h * g.in_w];
        for ki in 0..g.kernel_h {
            for kj in 0..g.kernel_w {
                let src = &col[row * ld + off..row * ld + off + oh * ow];
                for oy in 0..oh {
                    let iy = (oy * g.stride_h + ki * g.dilation_h) as isize - g.pad_h as isize;
                    if iy < 0 || iy >= h {
                        continue;
                    }
                    let dst = &mut xc[iy as usize * g.in_w..(iy as usize + 1) * g.in_w];
                    for ox in 0..ow {
                        let ix = (ox * g.stride_w + kj * g.dilation_w) as isize - g.pad_w as isize;
                        if ix >= 0 && ix < w {
                            dst[ix as usize] += src[oy * ow + ox];
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// Images per gemm: enough columns (≈512) for the gemm kernel to run efficiently, bounded so
/// the column buffer stays near 8 MB.
fn images_per_gemm(g: &ConvGeom) -> usize {
    let p = (g.out_h() * g.out_w()).max(1);
    let rows = g.in_channels * g.kernel_h * g.kernel_w;
    let mut b = 512usize.div_ceil(p).clamp(1, g.num.max(1));
    while b > 1 && rows * b * p > 1 << 21 {
        b /= 2;
    }
    b
}

/// Gathers images [n0, n0+nb) of an N×C×P tensor into a C × (nb·P) matrix.
fn gather_cols(src: &[f32], c: usize, p: usize, n0: usize, nb: usize, dst: &mut [f32]) {
    for b in 0..nb {
        let img = &src[(n0 + b) * c * p..(n0 + b + 1) * c * p];
        for ch in 0..c {
            dst[ch * nb * p + b * p..ch * nb * p + (b + 1) * p]
                .copy_from_slice(&img[ch * p..(ch + 1) * p]);
        }
    }
}

/// Scatters a C × (nb·P) matrix back into nb images of C×P.
fn scatter_cols(src: &[f32], c: usize, p: usize, nb: usize, dst: &mut [f32]) {
    for b in 0..nb {
        for ch in 0..c {
            dst[b * c * p + ch * p..b * c * p + (ch + 1) * p]
                .copy_from_slice(&src[ch * nb * p + b * p..ch * nb * p + (b + 1) * p]);
        }
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Caffe's pooling window for output (py, px): (hstart, hend, wstart, wend, pool_size).
fn pool_window(
    g: &PoolGeom,
    method: PoolMethod,
    py: usize,
    px: usize,
) -> (usize, usize, usize, usize, usize) {
    let hs = (py * g.stride_h) as isize - g.pad_h as isize;
    let ws = (px * g.stride_w) as isize - g.pad_w as isize;
    let (h, w) = (g.in_h as isize, g.in_w as isize);
    let mut he = hs + g.kernel_h as isize;
    let mut we = ws + g.kernel_w as isize;
    let mut size = 0;
    if method == PoolMethod::Ave {
        he = he.min(h + g.pad_h as isize);
        we = we.min(w + g.pad_w as isize);
        size = ((he - hs) * (we - ws)) as usize;
    }
    let (hs, ws) = (hs.max(0), ws.max(0));
    let (he, we) = (he.min(h), we.min(w));
    (
        hs as usize,
        he.max(hs) as usize,
        ws as usize,
        we.max(ws) as usize,
        size,
    )
}

/// Index of the first maximum inside a pooling window of one plane (Caffe's strict `>`).
fn window_argmax(
    x: &[f32],
    width: usize,
    hs: usize,
    he: usize,
    ws: usize,
    we: usize,
) -> Option<usize> {
    let mut best = f32::MIN;
    let mut arg = None;
    for y in hs..he {
        for xx in ws..we {
            let i = y * width + xx;
            if arg.is_none() || x[i] > best {
                best = x[i];
                arg = Some(i);
            }
        }
    }
    arg
}

impl Engine for CpuEngine {
    fn name(&self) -> String {
        "CPU".to_string()
    }

    fn alloc(&self, n: usize) -> Buffer {
        Buffer::Host(vec![0.0; n])
    }

    fn download(&self, buf: &Buffer) -> Vec<f32> {
        buf.host().to_vec()
    }

    fn upload(&self, src: &[f32], dst: &mut Buffer) {
        dst.host_mut()[..src.len()].copy_from_slice(src);
    }

    fn fill(&self, value: f32, dst: &mut Buffer) {
        dst.host_mut().fill(value);
    }

    fn finish_bytes(
        &self,
        batch: &ByteBatch<'_>,
        mean_image: Option<&Buffer>,
        channel_means: Option<&Buffer>,
        dst: &mut Buffer,
    ) {
        let (mi, cm) = (
            mean_image.map(|b| b.host()),
            channel_means.map(|b| b.host()),
        );
        let [_, c, h, w] = batch.shape;
        let (sh, sw) = batch.source;
        let n = batch.bytes.len();
        // One output row at a time: its item, channel and mean row are worked out once.
        dst.host_mut()[..n]
            .par_chunks_mut(w.max(1))
            .zip(batch.bytes.par_chunks(w.max(1)))
            .enumerate()
            .for_each(|(r, (out, px))| {
                let (y, ch, item) = (r % h, r / h % c, r / (h * c));
                let [h_off, w_off, mirror] = batch.places[item].map(|p| p as usize);
                let s = batch.scale;
                match (mi, cm) {
                    (Some(m), _) => {
                        let row = &m[(ch * sh + h_off + y) * sw + w_off..][..w];
                        for (x, (o, &p)) in out.iter_mut().zip(px).enumerate() {
                            let mx = if mirror == 1 { row[w - 1 - x] } else { row[x] };
                            *o = (p as f32 - mx) * s;
                        }
                    }
                    (None, Some(m)) => {
                        for (o, &p) in out.iter_mut().zip(px) {
                            *o = (p as f32 - m[ch]) * s;
                        }
                    }
                    (None, None) => {
                        for (o, &p) in out.iter_mut().zip(px) {
                            *o = p as f32 * s;
                        }
                    }
                }
            });
    }

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
    ) {
        let (s, d) = (src.host(), dst.host_mut());
        for i in 0..n_blocks {
            let so = src_off + i * src_stride;
            let do_ = dst_off + i * dst_stride;
            d[do_..do_ + block].copy_from_slice(&s[so..so + block]);
        }
    }

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
    ) {
        let (s, d) = (src.host(), dst.host_mut());
        for i in 0..n_blocks {
            let so = src_off + i * src_stride;
            let do_ = dst_off + i * dst_stride;
            for (a, b) in d[do_..do_ + block].iter_mut().zip(&s[so..so + block]) {
                *a += b;
            }
        }
    }

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
    ) {
        sgemm_parallel(
            trans_a,
            trans_b,
            m,
            n,
            k,
            alpha,
            &a.0.host()[a.1..],
            &b.0.host()[b.1..],
            beta,
            &mut c.0.host_mut()[c.1..],
        );
    }

    fn axpby(&self, alpha: f32, x: &Buffer, beta: f32, y: &mut Buffer) {
        let x = x.host();
        if beta == 0.0 {
            y.host_mut()
                .iter_mut()
                .zip(x)
                .for_each(|(y, x)| *y = alpha * x);
        } else {
            y.host_mut()
                .iter_mut()
                .zip(x)
                .for_each(|(y, x)| *y = alpha * x + beta * *y);
        }
    }

    fn scale(&self, alpha: f32, y: &mut Buffer) {
        y.host_mut().iter_mut().for_each(|v| *v *= alpha);
    }

    fn mul(&self, a: Option<&Buffer>, b: &Buffer, y: &mut Buffer) {
        let b = b.host();
        match a {
            Some(a) => {
                let a = a.host();
                for (i, v) in y.host_mut().iter_mut().enumerate() {
                    *v = a[i] * b[i];
                }
            }
            None => y.host_mut().iter_mut().zip(b).for_each(|(v, b)| *v *= b),
        }
    }

    fn div(&self, a: Option<&Buffer>, b: &Buffer, y: &mut Buffer) {
        let b = b.host();
        match a {
            Some(a) => {
                let a = a.host();
                for (i, v) in y.host_mut().iter_mut().enumerate() {
                    *v = a[i] / b[i];
                }
            }
            None => y.host_mut().iter_mut().zip(b).for_each(|(v, b)| *v /= b),
        }
    }

    fn add_sign(&self, alpha: f32, x: &Buffer, y: &mut Buffer) {
        for (v, x) in y.host_mut().iter_mut().zip(x.host()) {
            let s = if *x > 0.0 {
                1.0
            } else if *x < 0.0 {
                -1.0
            } else {
                0.0
            };
            *v += alpha * s;
        }
    }

    fn dot(&self, x: &Buffer, y: &Buffer) -> f32 {
        x.host()
            .iter()
            .zip(y.host())
            .map(|(a, b)| (*a as f64) * (*b as f64))
            .sum::<f64>() as f32
    }

    fn asum(&self, x: &Buffer) -> f32 {
        x.host().iter().map(|a| a.abs() as f64).sum::<f64>() as f32
    }

    fn sumsq(&self, x: &Buffer) -> f32 {
        x.host()
            .iter()
            .map(|a| (*a as f64) * (*a as f64))
            .sum::<f64>() as f32
    }

    fn sum_axis(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        alpha: f32,
        x: &Buffer,
        beta: f32,
        y: &mut Buffer,
    ) {
        let (x, y) = (x.host(), y.host_mut());
        for o in 0..outer {
            for i in 0..inner {
                let mut s = 0.0f32;
                for c in 0..ch {
                    s += x[(o * ch + c) * inner + i];
                }
                let d = &mut y[o * inner + i];
                *d = alpha * s + if beta == 0.0 { 0.0 } else { beta * *d };
            }
        }
    }

    fn conv_forward(&self, g: &ConvGeom, x: &Buffer, w: &Buffer, y: &mut Buffer) {
        let p = g.out_h() * g.out_w();
        let in_img = g.in_channels * g.in_h * g.in_w;
        let out_img = g.out_channels * p;
        let kdim = g.in_channels / g.group * g.kernel_h * g.kernel_w;
        let cog = g.out_channels / g.group;
        let (x, w) = (x.host(), w.host());
        let bsz = images_per_gemm(g);
        y.host_mut()[..g.num * out_img]
            .par_chunks_mut(bsz * out_img)
            .enumerate()
            .for_each_init(
                || (Vec::new(), Vec::new()),
                |(col, out), (ci, yc)| {
                    let n0 = ci * bsz;
                    let nb = yc.len() / out_img;
                    let ld = nb * p;
                    col.resize(kdim * g.group * ld, 0.0);
                    out.resize(g.out_channels * ld, 0.0);
                    for b in 0..nb {
                        im2col(
                            g,
                            &x[(n0 + b) * in_img..(n0 + b + 1) * in_img],
                            col,
                            ld,
                            b * p,
                        );
                    }
                    for gi in 0..g.group {
                        sgemm(
                            false,
                            false,
                            cog,
                            ld,
                            kdim,
                            1.0,
                            &w[gi * cog * kdim..],
                            &col[gi * kdim * ld..],
                            0.0,
                            &mut out[gi * cog * ld..],
                        );
                    }
                    scatter_cols(out, g.out_channels, p, nb, yc);
                },
            );
    }

    fn conv_backward_data(&self, g: &ConvGeom, dy: &Buffer, w: &Buffer, dx: &mut Buffer) {
        let p = g.out_h() * g.out_w();
        let in_img = g.in_channels * g.in_h * g.in_w;
        let kdim = g.in_channels / g.group * g.kernel_h * g.kernel_w;
        let cog = g.out_channels / g.group;
        let (dy, w) = (dy.host(), w.host());
        let bsz = images_per_gemm(g);
        dx.host_mut()[..g.num * in_img]
            .par_chunks_mut(bsz * in_img)
            .enumerate()
            .for_each_init(
                || (Vec::new(), Vec::new()),
                |(col, dyc), (ci, dxc)| {
                    let n0 = ci * bsz;
                    let nb = dxc.len() / in_img;
                    let ld = nb * p;
                    col.resize(kdim * g.group * ld, 0.0);
                    dyc.resize(g.out_channels * ld, 0.0);
                    gather_cols(dy, g.out_channels, p, n0, nb, dyc);
                    for gi in 0..g.group {
                        sgemm(
                            true,
                            false,
                            kdim,
                            ld,
                            cog,
                            1.0,
                            &w[gi * cog * kdim..],
                            &dyc[gi * cog * ld..],
                            0.0,
                            &mut col[gi * kdim * ld..],
                        );
                    }
                    dxc.fill(0.0);
                    for b in 0..nb {
                        col2im(g, col, &mut dxc[b * in_img..(b + 1) * in_img], ld, b * p);
                    }
                },
            );
    }

    fn conv_backward_filter(&self, g: &ConvGeom, x: &Buffer, dy: &Buffer, dw: &mut Buffer) {
        let p = g.out_h() * g.out_w();
        let in_img = g.in_channels * g.in_h * g.in_w;
        let kdim = g.in_channels / g.group * g.kernel_h * g.kernel_w;
        let cog = g.out_channels / g.group;
        let wc = g.weight_count();
        let (x, dy) = (x.host(), dy.host());
        let bsz = images_per_gemm(g);
        // Fixed chunks (independent of the thread count) summed in order keep the result
        // bit-identical from run to run, so a resumed training run retraces the original.
        let chunks = g.num.clamp(1, 8);
        let partials: Vec<Vec<f32>> = (0..chunks)
            .into_par_iter()
            .map(|ci| {
                let mut acc = vec![0.0f32; wc];
                let (mut col, mut dyc) = (Vec::new(), Vec::new());
                let (start, end) = (ci * g.num / chunks, (ci + 1) * g.num / chunks);
                let mut n0 = start;
                while n0 < end {
                    let nb = bsz.min(end - n0);
                    let ld = nb * p;
                    col.resize(kdim * g.group * ld, 0.0);
                    dyc.resize(g.out_channels * ld, 0.0);
                    for b in 0..nb {
                        im2col(
                            g,
                            &x[(n0 + b) * in_img..(n0 + b + 1) * in_img],
                            &mut col,
                            ld,
                            b * p,
                        );
                    }
                    gather_cols(dy, g.out_channels, p, n0, nb, &mut dyc);
                    for gi in 0..g.group {
                        sgemm(
                            false,
                            true,
                            cog,
                            kdim,
                            ld,
                            1.0,
                            &dyc[gi * cog * ld..],
                            &col[gi * kdim * ld..],
                            1.0,
                            &mut acc[gi * cog * kdim..],
                        );
                    }
                    n0 += nb;
                }
                acc
            })
            .collect();
        let d = dw.host_mut();
        for part in &partials {
            d.iter_mut().zip(part).for_each(|(a, b)| *a += b);
        }
    }

    fn bias_forward(&self, outer: usize, ch: usize, inner: usize, b: &Buffer, y: &mut Buffer) {
        let b = b.host();
        y.host_mut()[..outer * ch * inner]
            .par_chunks_mut(ch * inner)
            .for_each(|yo| {
                for (c, bc) in b.iter().enumerate().take(ch) {
                    yo[c * inner..(c + 1) * inner]
                        .iter_mut()
                        .for_each(|v| *v += bc);
                }
            });
    }

    fn bias_backward(&self, outer: usize, ch: usize, inner: usize, dy: &Buffer, db: &mut Buffer) {
        let (dy, db) = (dy.host(), db.host_mut());
        for o in 0..outer {
            for (c, d) in db.iter_mut().enumerate().take(ch) {
                let s: f32 = dy[(o * ch + c) * inner..(o * ch + c + 1) * inner]
                    .iter()
                    .sum();
                *d += s;
            }
        }
    }

    fn pool_forward(&self, g: &PoolGeom, method: PoolMethod, x: &Buffer, y: &mut Buffer) {
        let (ip, op) = (g.in_h * g.in_w, g.out_h * g.out_w);
        let x = x.host();
        y.host_mut()[..g.num * g.channels * op]
            .par_chunks_mut(op)
            .enumerate()
            .for_each(|(plane, yp)| {
                let xp = &x[plane * ip..(plane + 1) * ip];
                for py in 0..g.out_h {
                    for px in 0..g.out_w {
                        let (hs, he, ws, we, size) = pool_window(g, method, py, px);
                        yp[py * g.out_w + px] = match method {
                            PoolMethod::Max => window_argmax(xp, g.in_w, hs, he, ws, we)
                                .map(|i| xp[i])
                                .unwrap_or(f32::MIN),
                            PoolMethod::Ave => {
                                let mut s = 0.0;
                                for yy in hs..he {
                                    s += xp[yy * g.in_w + ws..yy * g.in_w + we].iter().sum::<f32>();
                                }
                                s / size as f32
                            }
                        };
                    }
                }
            });
    }

    fn pool_backward(
        &self,
        g: &PoolGeom,
        method: PoolMethod,
        x: &Buffer,
        _y: &Buffer,
        dy: &Buffer,
        dx: &mut Buffer,
    ) {
        let (ip, op) = (g.in_h * g.in_w, g.out_h * g.out_w);
        let (x, dy) = (x.host(), dy.host());
        dx.host_mut()[..g.num * g.channels * ip]
            .par_chunks_mut(ip)
            .enumerate()
            .for_each(|(plane, dxp)| {
                dxp.fill(0.0);
                // Only MAX reads x; AVE callers (WITHIN_CHANNEL LRN) may pass an empty buffer.
                let xp = x.get(plane * ip..(plane + 1) * ip).unwrap_or(&[]);
                let dyp = &dy[plane * op..(plane + 1) * op];
                for py in 0..g.out_h {
                    for px in 0..g.out_w {
                        let (hs, he, ws, we, size) = pool_window(g, method, py, px);
                        let d = dyp[py * g.out_w + px];
                        match method {
                            PoolMethod::Max => {
                                if let Some(i) = window_argmax(xp, g.in_w, hs, he, ws, we) {
                                    dxp[i] += d;
                                }
                            }
                            PoolMethod::Ave => {
                                let v = d / size as f32;
                                for yy in hs..he {
                                    dxp[yy * g.in_w + ws..yy * g.in_w + we]
                                        .iter_mut()
                                        .for_each(|t| *t += v);
                                }
                            }
                        }
                    }
                }
            });
    }

    fn lrn_forward(&self, p: &LrnParams, x: &Buffer, y: &mut Buffer, scale: &mut Buffer) {
        let (x, y, s) = (x.host(), y.host_mut(), scale.host_mut());
        let plane = p.height * p.width;
        let img = p.channels * plane;
        let n = p.num * img;
        if p.across_channels {
            let pre = (p.local_size - 1) / 2;
            let post = p.local_size - pre - 1;
            let a = p.alpha / p.local_size as f32;
            s[..n].par_chunks_mut(img).enumerate().for_each(|(i, sn)| {
                let xn = &x[i * img..(i + 1) * img];
                for c in 0..p.channels {
                    let lo = c.saturating_sub(pre);
                    let hi = (c + post).min(p.channels - 1);
                    for j in 0..plane {
                        let mut acc = 0.0;
                        for cc in lo..=hi {
                            let v = xn[cc * plane + j];
                            acc += v * v;
                        }
                        sn[c * plane + j] = p.k + a * acc;
                    }
                }
            });
        } else {
            // Caffe builds WITHIN_CHANNEL from an AVE pool of x² padded by (size-1)/2, then
            // (1 + alpha·avg)^-beta; the pool divisor counts padding, clipped at H+pad.
            let g = within_pool(p);
            let sq: Vec<f32> = x[..n].iter().map(|v| v * v).collect();
            let mut avg = Buffer::Host(vec![0.0; n]);
            self.pool_forward(&g, PoolMethod::Ave, &Buffer::Host(sq), &mut avg);
            for (sv, av) in s[..n].iter_mut().zip(avg.host()) {
                *sv = 1.0 + p.alpha * av;
            }
        }
        for i in 0..n {
            y[i] = x[i] * s[i].powf(-p.beta);
        }
    }

    fn lrn_backward(
        &self,
        p: &LrnParams,
        x: &Buffer,
        y: &Buffer,
        scale: &Buffer,
        dy: &Buffer,
        dx: &mut Buffer,
    ) {
        let (x, y, s, dy, dx) = (x.host(), y.host(), scale.host(), dy.host(), dx.host_mut());
        let plane = p.height * p.width;
        let img = p.channels * plane;
        let n = p.num * img;
        // ratio = dy·y/scale is the common factor of the cross terms.
        let ratio: Vec<f32> = (0..n).map(|i| dy[i] * y[i] / s[i]).collect();
        if p.across_channels {
            let pre = (p.local_size - 1) / 2;
            let post = p.local_size - pre - 1;
            let cache = 2.0 * p.alpha * p.beta / p.local_size as f32;
            dx[..n]
                .par_chunks_mut(img)
                .enumerate()
                .for_each(|(i, dxn)| {
                    let o = i * img;
                    for c in 0..p.channels {
                        // outputs c' whose window holds c: c' in [c - post, c + pre]
                        let lo = c.saturating_sub(post);
                        let hi = (c + pre).min(p.channels - 1);
                        for j in 0..plane {
                            let mut acc = 0.0;
                            for cc in lo..=hi {
                                acc += ratio[o + cc * plane + j];
                            }
                            let k = o + c * plane + j;
                            dxn[c * plane + j] = dy[k] * s[k].powf(-p.beta) - cache * x[k] * acc;
                        }
                    }
                });
        } else {
            let g = within_pool(p);
            // d/d(avg) of y = x (1 + alpha avg)^-beta is -beta alpha x (1+alpha avg)^-beta-1;
            // routed back through the average pool and then d(x²)/dx = 2x.
            let davg: Vec<f32> = (0..n).map(|i| -p.beta * p.alpha * ratio[i]).collect();
            let mut dsq = Buffer::Host(vec![0.0; n]);
            let dummy = Buffer::Host(Vec::new());
            self.pool_backward(
                &g,
                PoolMethod::Ave,
                &dummy,
                &dummy,
                &Buffer::Host(davg),
                &mut dsq,
            );
            for i in 0..n {
                dx[i] = dy[i] * s[i].powf(-p.beta) + 2.0 * x[i] * dsq.host()[i];
            }
        }
    }

    fn act_forward(&self, f: Activation, x: Option<&Buffer>, y: &mut Buffer) {
        let y = y.host_mut();
        let apply = |v: f32| -> f32 {
            match f {
                Activation::Relu { negative_slope } => {
                    if v > 0.0 {
                        v
                    } else {
                        v * negative_slope
                    }
                }
                Activation::Sigmoid => sigmoid(v),
                Activation::TanH => v.tanh(),
                Activation::Elu { alpha } => {
                    if v > 0.0 {
                        v
                    } else {
                        alpha * (v.exp() - 1.0)
                    }
                }
                Activation::AbsVal => v.abs(),
                Activation::Bnll => {
                    if v > 0.0 {
                        v + (-v).exp().ln_1p()
                    } else {
                        v.exp().ln_1p()
                    }
                }
                Activation::Power {
                    power,
                    scale,
                    shift,
                } => (shift + scale * v).powf(power),
                Activation::Exp { base, scale, shift } => {
                    let lb = if base < 0.0 { 1.0 } else { base.ln() };
                    (lb * (shift + scale * v)).exp()
                }
                Activation::Log { base, scale, shift } => {
                    let lb = if base < 0.0 { 1.0 } else { base.ln() };
                    (shift + scale * v).ln() / lb
                }
                Activation::Clip { min, max } => v.max(min).min(max),
                Activation::Swish { beta } => v * sigmoid(beta * v),
                Activation::Threshold { threshold } => {
                    if v > threshold {
                        1.0
                    } else {
                        0.0
                    }
                }
            }
        };
        match x {
            Some(x) => y
                .par_iter_mut()
                .with_min_len(1 << 14)
                .zip(x.host().par_iter())
                .for_each(|(y, x)| *y = apply(*x)),
            None => y
                .par_iter_mut()
                .with_min_len(1 << 14)
                .for_each(|y| *y = apply(*y)),
        }
    }

    fn act_backward(
        &self,
        f: Activation,
        x: &Buffer,
        y: &Buffer,
        dy: Option<&Buffer>,
        dx: &mut Buffer,
    ) {
        let (x, y) = (x.host(), y.host());
        let grad = |x: f32, y: f32| -> f32 {
            match f {
                Activation::Relu { negative_slope } => {
                    if x > 0.0 {
                        1.0
                    } else {
                        negative_slope
                    }
                }
                Activation::Sigmoid => y * (1.0 - y),
                Activation::TanH => 1.0 - y * y,
                Activation::Elu { alpha } => {
                    if x > 0.0 {
                        1.0
                    } else {
                        y + alpha
                    }
                }
                Activation::AbsVal => {
                    if x > 0.0 {
                        1.0
                    } else if x < 0.0 {
                        -1.0
                    } else {
                        0.0
                    }
                }
                Activation::Bnll => {
                    let e = x.min(50.0).exp();
                    e / (e + 1.0)
                }
                Activation::Power {
                    power,
                    scale,
                    shift,
                } => {
                    if power == 0.0 || scale == 0.0 {
                        0.0
                    } else {
                        power * scale * (shift + scale * x).powf(power - 1.0)
                    }
                }
                Activation::Exp { base, scale, .. } => {
                    let lb = if base < 0.0 { 1.0 } else { base.ln() };
                    y * lb * scale
                }
                Activation::Log { base, scale, shift } => {
                    let lb = if base < 0.0 { 1.0 } else { base.ln() };
                    scale / ((shift + scale * x) * lb)
                }
                Activation::Clip { min, max } => {
                    if x >= min && x <= max {
                        1.0
                    } else {
                        0.0
                    }
                }
                Activation::Swish { beta } => {
                    let s = sigmoid(beta * x);
                    beta * y + s * (1.0 - beta * y)
                }
                Activation::Threshold { .. } => 0.0,
            }
        };
        let dxs = dx.host_mut();
        match dy {
            Some(dy) => {
                let dy = dy.host();
                dxs.par_iter_mut()
                    .enumerate()
                    .for_each(|(i, d)| *d = dy[i] * grad(x[i], y[i]));
            }
            None => dxs
                .par_iter_mut()
                .enumerate()
                .for_each(|(i, d)| *d *= grad(x[i], y[i])),
        }
    }

    fn softmax_forward(&self, outer: usize, ch: usize, inner: usize, x: &Buffer, y: &mut Buffer) {
        let x = x.host();
        y.host_mut()[..outer * ch * inner]
            .par_chunks_mut(ch * inner)
            .enumerate()
            .for_each(|(o, yo)| {
                let xo = &x[o * ch * inner..(o + 1) * ch * inner];
                for i in 0..inner {
                    let mut m = f32::MIN;
                    for c in 0..ch {
                        m = m.max(xo[c * inner + i]);
                    }
                    let mut s = 0.0;
                    for c in 0..ch {
                        let e = (xo[c * inner + i] - m).exp();
                        yo[c * inner + i] = e;
                        s += e;
                    }
                    for c in 0..ch {
                        yo[c * inner + i] /= s;
                    }
                }
            });
    }

    fn softmax_backward(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        y: &Buffer,
        dy: Option<&Buffer>,
        dx: &mut Buffer,
    ) {
        let y = y.host();
        let dy = dy.map(|d| d.host());
        let dx = dx.host_mut();
        let mut g = vec![0.0f32; ch];
        for o in 0..outer {
            for i in 0..inner {
                let idx = |c: usize| (o * ch + c) * inner + i;
                for (c, gc) in g.iter_mut().enumerate() {
                    *gc = dy.map(|d| d[idx(c)]).unwrap_or(dx[idx(c)]);
                }
                let dotp: f32 = (0..ch).map(|c| g[c] * y[idx(c)]).sum();
                for c in 0..ch {
                    dx[idx(c)] = (g[c] - dotp) * y[idx(c)];
                }
            }
        }
    }

    fn softmax_loss(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        prob: &Buffer,
        labels: &Buffer,
        ignore_label: Option<i32>,
    ) -> (f32, usize) {
        let (p, l) = (prob.host(), labels.host());
        let mut loss = 0.0f64;
        let mut count = 0;
        for o in 0..outer {
            for i in 0..inner {
                let label = l[o * inner + i] as i32;
                if Some(label) == ignore_label {
                    continue;
                }
                let c = (label.max(0) as usize).min(ch - 1);
                loss -= (p[(o * ch + c) * inner + i].max(f32::MIN_POSITIVE) as f64).ln();
                count += 1;
            }
        }
        (loss as f32, count)
    }

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
    ) {
        let (p, l, dx) = (prob.host(), labels.host(), dx.host_mut());
        for o in 0..outer {
            for i in 0..inner {
                let label = l[o * inner + i] as i32;
                let ignored = Some(label) == ignore_label;
                for c in 0..ch {
                    let k = (o * ch + c) * inner + i;
                    dx[k] = if ignored {
                        0.0
                    } else {
                        let t = if c as i32 == label { 1.0 } else { 0.0 };
                        scale * (p[k] - t)
                    };
                }
            }
        }
    }

    fn dropout_forward(&self, ratio: f32, x: Option<&Buffer>, y: &mut Buffer, mask: &mut Buffer) {
        let scale = 1.0 / (1.0 - ratio);
        {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            for m in mask.host_mut().iter_mut() {
                *m = if rng.gen::<f32>() > ratio { scale } else { 0.0 };
            }
        }
        self.mul(x, mask, y);
    }

    fn seed(&self, seed: u64) {
        *self.rng.lock().unwrap_or_else(|e| e.into_inner()) = StdRng::seed_from_u64(seed);
    }

    fn max_accumulate(
        &self,
        x: &Buffer,
        index: usize,
        first: bool,
        y: &mut Buffer,
        arg: &mut Buffer,
    ) {
        let (x, y, a) = (x.host(), y.host_mut(), arg.host_mut());
        for i in 0..y.len() {
            if first || x[i] > y[i] {
                y[i] = x[i];
                a[i] = index as f32;
            }
        }
    }

    fn max_route_backward(&self, arg: &Buffer, index: usize, dy: &Buffer, dx: &mut Buffer) {
        let (a, dy, dx) = (arg.host(), dy.host(), dx.host_mut());
        for i in 0..dx.len() {
            dx[i] = if a[i] as usize == index { dy[i] } else { 0.0 };
        }
    }

    fn solver_update(
        &self,
        rule: UpdateRule,
        lr: f32,
        g: &Buffer,
        h: &mut Buffer,
        h2: Option<&mut Buffer>,
        w: &mut Buffer,
    ) {
        rule.apply_host(
            lr,
            g.host(),
            h.host_mut(),
            h2.map(|b| b.host_mut()),
            w.host_mut(),
        );
    }

    fn sgd_update(&self, lr: f32, momentum: f32, g: &Buffer, h: &mut Buffer, w: &mut Buffer) {
        let (g, h, w) = (g.host(), h.host_mut(), w.host_mut());
        for i in 0..w.len() {
            h[i] = momentum * h[i] + lr * g[i];
            w[i] -= h[i];
        }
    }

    fn bn_stats(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        x: &Buffer,
        mean: &mut Buffer,
        var: &mut Buffer,
    ) {
        let n = outer * ch * inner;
        let (m, v) = super::bn::stats(outer, ch, inner, &x.host()[..n]);
        mean.host_mut()[..ch].copy_from_slice(&m);
        var.host_mut()[..ch].copy_from_slice(&v);
    }

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
        let n = outer * ch * inner;
        let y = &mut y.host_mut()[..n];
        if let Some(x) = x {
            y.copy_from_slice(&x.host()[..n]);
        }
        super::bn::normalize(
            outer,
            ch,
            inner,
            mean.host(),
            var.host(),
            eps,
            &mut std.host_mut()[..ch],
            y,
        );
        x_norm.host_mut()[..n].copy_from_slice(y);
    }

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
        let n = outer * ch * inner;
        let g = &mut dx.host_mut()[..n];
        if let Some(dy) = dy {
            g.copy_from_slice(&dy.host()[..n]);
        }
        super::bn::backward(outer, ch, inner, global, &y.host()[..n], std.host(), g);
    }

    fn channel_scale(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        s: &Buffer,
        x: Option<&Buffer>,
        y: &mut Buffer,
    ) {
        let s = s.host();
        let n = outer * ch * inner;
        if inner == 0 || n == 0 {
            return;
        }
        let y = &mut y.host_mut()[..n];
        match x {
            Some(x) => {
                let x = &x.host()[..n];
                y.par_chunks_mut(inner)
                    .with_min_len(64)
                    .zip(x.par_chunks(inner))
                    .enumerate()
                    .for_each(|(r, (yr, xr))| {
                        let f = s[r % ch];
                        yr.iter_mut().zip(xr).for_each(|(y, x)| *y = x * f);
                    });
            }
            None => y
                .par_chunks_mut(inner)
                .with_min_len(64)
                .enumerate()
                .for_each(|(r, yr)| {
                    let f = s[r % ch];
                    yr.iter_mut().for_each(|y| *y *= f);
                }),
        }
    }

    fn rng_uniform(&self, dst: &mut Buffer) {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        for v in dst.host_mut().iter_mut() {
            *v = rng.gen::<f32>();
        }
    }
}

/// The average-pooling geometry Caffe uses inside WITHIN_CHANNEL LRN.
fn within_pool(p: &LrnParams) -> PoolGeom {
    let pad = (p.local_size - 1) / 2;
    PoolGeom {
        num: p.num,
        channels: p.channels,
        in_h: p.height,
        in_w: p.width,
        out_h: p.height,
        out_w: p.width,
        kernel_h: p.local_size,
        kernel_w: p.local_size,
        stride_h: 1,
        stride_w: 1,
        pad_h: pad,
        pad_w: pad,
    }
}
