//! The CUDA engine against the CPU engine: every Engine operation and every layer type on random
//! inputs, and LeNet trained on both. Without the `cuda` feature or without a GPU the tests print
//! why they skip and pass; with `CREMA_REQUIRE_GPU=1` they fail instead.
//!
//! Closeness: for each element, |cpu - gpu| / max(|cpu|, |gpu|, 1% of the tensor's largest
//! magnitude) must stay within the stated tolerance: 1e-4 for our kernels and cuBLAS, 1e-3 where
//! cuDNN convolutions are involved (its FFT/Winograd algorithms round differently from im2col +
//! gemm; strict fp32 still, no TF32). The floor keeps values that cancel to ~0 from dividing by ~0.

fn require_gpu() -> bool {
    std::env::var("CREMA_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

#[cfg(not(feature = "cuda"))]
#[test]
fn gpu_tests_need_the_cuda_feature() {
    assert!(
        !require_gpu(),
        "CREMA_REQUIRE_GPU=1 but this test binary was built without the `cuda` feature"
    );
    println!("skipping the GPU-vs-CPU tests: crema was built without the `cuda` feature");
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::require_gpu;
    use crema::blob::{Blob, BlobRef};
    use crema::engine::cuda::CudaEngine;
    use crema::engine::{
        Activation, Buffer, ConvGeom, CpuEngine, Engine, LrnParams, PoolGeom, PoolMethod,
    };
    use crema::layers::{create_layer, Ctx, Phase};
    use crema_proto::caffe::LayerParameter;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// SplitMix64, so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
            (0..n)
                .map(|_| lo + (hi - lo) * ((self.next() >> 40) as f32 / (1u64 << 24) as f32))
                .collect()
        }
        fn labels(&mut self, n: usize, classes: usize) -> Vec<f32> {
            (0..n)
                .map(|_| (self.next() % classes as u64) as f32)
                .collect()
        }
    }

    /// The CUDA engine on GPU 0, or None (with the reason printed) when there is none.
    fn gpu() -> Option<CudaEngine> {
        match CudaEngine::new(0) {
            Ok(g) => Some(g),
            Err(e) => {
                assert!(
                    !require_gpu(),
                    "CREMA_REQUIRE_GPU=1 but the CUDA engine cannot start: {e}"
                );
                println!("skipping: no usable GPU: {e}");
                None
            }
        }
    }

    fn assert_close(what: &str, cpu: &[f32], gpu: &[f32], tol: f32) {
        assert_eq!(cpu.len(), gpu.len(), "{what}: lengths differ");
        let big = cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
        let floor = (big * 1e-2).max(1e-30);
        let mut worst = (0f32, 0usize);
        for (i, (a, b)) in cpu.iter().zip(gpu).enumerate() {
            let err = if a == b {
                0.0
            } else {
                (a - b).abs() / a.abs().max(b.abs()).max(floor)
            };
            assert!(!err.is_nan(), "{what}: element {i}: cpu {a}, gpu {b}");
            if err > worst.0 {
                worst = (err, i);
            }
        }
        let i = worst.1;
        println!(
            "{what:<48} n={:<8} max|cpu|={big:<9.2e} worst relative error {:.2e}",
            cpu.len(),
            worst.0
        );
        assert!(
            worst.0 <= tol,
            "{what}: element {i}: cpu {}, gpu {}: relative error {:.3e} > {tol:e}",
            cpu.get(i).copied().unwrap_or(0.0),
            gpu.get(i).copied().unwrap_or(0.0),
            worst.0
        );
    }

    /// The same host values in both engines' memory.
    struct Pair {
        c: CpuEngine,
        g: CudaEngine,
    }

    impl Pair {
        fn new() -> Option<Pair> {
            Some(Pair {
                c: CpuEngine::new(),
                g: gpu()?,
            })
        }
        fn bufs(&self, v: &[f32]) -> (Buffer, Buffer) {
            let mut a = self.c.alloc(v.len());
            self.c.upload(v, &mut a);
            let mut b = self.g.alloc(v.len());
            self.g.upload(v, &mut b);
            (a, b)
        }
        fn check(&self, what: &str, b: &(Buffer, Buffer), tol: f32) {
            assert_close(what, &self.c.download(&b.0), &self.g.download(&b.1), tol);
        }
    }

    const TOL: f32 = 1e-4;
    const CONV_TOL: f32 = 1e-3;

    #[test]
    fn memory_copies_and_blas1() {
        let Some(p) = Pair::new() else { return };
        let mut r = Rng(1);
        let xv = r.vec(1000, -2.0, 2.0);
        let yv = r.vec(1000, -2.0, 2.0);
        let x = p.bufs(&xv);
        // upload/download round trip is exact
        assert_eq!(p.g.download(&x.1), xv);

        let mut y = p.bufs(&yv);
        p.c.fill(0.75, &mut y.0);
        p.g.fill(0.75, &mut y.1);
        p.check("fill", &y, 0.0);

        for (name, acc) in [("copy_blocks strided", false), ("add_blocks strided", true)] {
            let mut y = p.bufs(&yv);
            if acc {
                p.c.add_blocks(7, 30, &x.0, 5, 100, &mut y.0, 3, 120);
                p.g.add_blocks(7, 30, &x.1, 5, 100, &mut y.1, 3, 120);
            } else {
                p.c.copy_blocks(7, 30, &x.0, 5, 100, &mut y.0, 3, 120);
                p.g.copy_blocks(7, 30, &x.1, 5, 100, &mut y.1, 3, 120);
            }
            p.check(name, &y, 0.0);
        }
        let mut y = p.bufs(&yv);
        p.c.copy_blocks(1, 400, &x.0, 100, 0, &mut y.0, 500, 0);
        p.g.copy_blocks(1, 400, &x.1, 100, 0, &mut y.1, 500, 0);
        p.check("copy_blocks contiguous", &y, 0.0);

        for (alpha, beta) in [(1.5f32, 0.0f32), (-0.5, 2.0)] {
            let mut y = p.bufs(&yv);
            p.c.axpby(alpha, &x.0, beta, &mut y.0);
            p.g.axpby(alpha, &x.1, beta, &mut y.1);
            p.check(&format!("axpby {alpha} {beta}"), &y, TOL);
        }
        let mut y = p.bufs(&yv);
        p.c.scale(-3.0, &mut y.0);
        p.g.scale(-3.0, &mut y.1);
        p.check("scale", &y, TOL);

        let bv: Vec<f32> = r.vec(1000, 0.5, 2.0);
        let b = p.bufs(&bv);
        let mut y = p.bufs(&yv);
        p.c.mul(Some(&x.0), &b.0, &mut y.0);
        p.g.mul(Some(&x.1), &b.1, &mut y.1);
        p.check("mul", &y, TOL);
        p.c.mul(None, &b.0, &mut y.0);
        p.g.mul(None, &b.1, &mut y.1);
        p.check("mul in place", &y, TOL);
        p.c.div(Some(&x.0), &b.0, &mut y.0);
        p.g.div(Some(&x.1), &b.1, &mut y.1);
        p.check("div", &y, TOL);
        p.c.div(None, &b.0, &mut y.0);
        p.g.div(None, &b.1, &mut y.1);
        p.check("div in place", &y, TOL);
        let mut xs = xv.clone();
        xs[3] = 0.0;
        let xz = p.bufs(&xs);
        p.c.add_sign(0.25, &xz.0, &mut y.0);
        p.g.add_sign(0.25, &xz.1, &mut y.1);
        p.check("add_sign", &y, TOL);

        let big = r.vec(1 << 20, -1.0, 1.0);
        let bb = p.bufs(&big);
        let yb = p.bufs(&r.vec(1 << 20, -1.0, 1.0));
        for (name, c, g) in [
            ("dot", p.c.dot(&bb.0, &yb.0), p.g.dot(&bb.1, &yb.1)),
            ("asum", p.c.asum(&bb.0), p.g.asum(&bb.1)),
            ("sumsq", p.c.sumsq(&bb.0), p.g.sumsq(&bb.1)),
        ] {
            assert_close(name, &[c], &[g], TOL);
        }

        let (o, ch, inner) = (6, 7, 25);
        let xa = p.bufs(&r.vec(o * ch * inner, -1.0, 1.0));
        for beta in [0.0f32, 0.5] {
            let mut y = p.bufs(&r.vec(o * inner, -1.0, 1.0));
            p.c.sum_axis(o, ch, inner, 2.0, &xa.0, beta, &mut y.0);
            p.g.sum_axis(o, ch, inner, 2.0, &xa.1, beta, &mut y.1);
            p.check(&format!("sum_axis beta {beta}"), &y, TOL);
        }
        let bias = p.bufs(&r.vec(ch, -1.0, 1.0));
        let mut y = p.bufs(&r.vec(o * ch * inner, -1.0, 1.0));
        p.c.bias_forward(o, ch, inner, &bias.0, &mut y.0);
        p.g.bias_forward(o, ch, inner, &bias.1, &mut y.1);
        p.check("bias_forward", &y, TOL);
        let mut db = p.bufs(&r.vec(ch, -1.0, 1.0));
        p.c.bias_backward(o, ch, inner, &xa.0, &mut db.0);
        p.g.bias_backward(o, ch, inner, &xa.1, &mut db.1);
        p.check("bias_backward (accumulates)", &db, TOL);

        // eltwise max and its routing
        let x2 = p.bufs(&r.vec(1000, -2.0, 2.0));
        let mut ym = p.bufs(&vec![0.0; 1000]);
        let mut arg = p.bufs(&vec![0.0; 1000]);
        for (k, xb) in [&x, &x2].into_iter().enumerate() {
            p.c.max_accumulate(&xb.0, k, k == 0, &mut ym.0, &mut arg.0);
            p.g.max_accumulate(&xb.1, k, k == 0, &mut ym.1, &mut arg.1);
        }
        p.check("max_accumulate values", &ym, 0.0);
        p.check("max_accumulate argmax", &arg, 0.0);
        let mut dx = p.bufs(&vec![9.0; 1000]);
        p.c.max_route_backward(&arg.0, 1, &x.0, &mut dx.0);
        p.g.max_route_backward(&arg.1, 1, &x.1, &mut dx.1);
        p.check("max_route_backward", &dx, 0.0);

        let g = p.bufs(&r.vec(1000, -1.0, 1.0));
        let mut h = p.bufs(&r.vec(1000, -1.0, 1.0));
        let mut w = p.bufs(&r.vec(1000, -1.0, 1.0));
        p.c.sgd_update(0.01, 0.9, &g.0, &mut h.0, &mut w.0);
        p.g.sgd_update(0.01, 0.9, &g.1, &mut h.1, &mut w.1);
        p.check("sgd_update history", &h, TOL);
        p.check("sgd_update weights", &w, TOL);
    }

    /// The GPU's fused SGD step over several parameters (one launch) against the CPU engine's
    /// per-parameter path (scale, decay, momentum update), for L2 and L1 decay and iter_size 2;
    /// and the fused fill that clears the gradients.
    #[test]
    fn fused_sgd_step_matches_the_per_parameter_path() {
        use crema::engine::{SgdParam, SgdStep};
        let Some(p) = Pair::new() else { return };
        let mut r = Rng(7);
        let sizes = [3usize, 1000, 1, 4097];
        let mults = [(1.0f32, 1.0f32), (2.0, 0.0), (0.0, 1.0), (1.5, 0.5)];
        for (l1, scale) in [(false, 1.0f32), (true, 0.5)] {
            let mk = |r: &mut Rng| -> Vec<_> {
                sizes
                    .iter()
                    .map(|&n| p.bufs(&r.vec(n, -1.0, 1.0)))
                    .collect()
            };
            let (mut w, mut g, mut h) = (mk(&mut r), mk(&mut r), mk(&mut r));
            let step = SgdStep {
                rate: 0.01,
                momentum: 0.9,
                weight_decay: 5e-4,
                l1,
                scale,
            };
            // CPU: Caffe's per-parameter order, as the solver runs it where no fused form exists.
            for k in 0..sizes.len() {
                let (lr_mult, decay_mult) = mults[k];
                if scale != 1.0 {
                    p.c.scale(scale, &mut g[k].0);
                }
                let decay = step.weight_decay * decay_mult;
                if decay != 0.0 {
                    if l1 {
                        p.c.add_sign(decay, &w[k].0, &mut g[k].0);
                    } else {
                        p.c.axpby(decay, &w[k].0, 1.0, &mut g[k].0);
                    }
                }
                p.c.sgd_update(
                    step.rate * lr_mult,
                    step.momentum,
                    &g[k].0,
                    &mut h[k].0,
                    &mut w[k].0,
                );
            }
            let mut params: Vec<SgdParam> = w
                .iter_mut()
                .zip(g.iter_mut())
                .zip(h.iter_mut())
                .zip(mults)
                .map(|(((w, g), h), (lr_mult, decay_mult))| SgdParam {
                    data: &mut w.1,
                    diff: &mut g.1,
                    history: &mut h.1,
                    lr_mult,
                    decay_mult,
                })
                .collect();
            assert!(
                p.g.sgd_update_many(&mut params, step),
                "the CUDA engine has a fused SGD step"
            );
            for k in 0..sizes.len() {
                p.check(&format!("fused sgd (l1 {l1}) data {k}"), &w[k], TOL);
                p.check(&format!("fused sgd (l1 {l1}) diff {k}"), &g[k], TOL);
                p.check(&format!("fused sgd (l1 {l1}) history {k}"), &h[k], TOL);
            }
            let mut bufs: Vec<&mut crema::engine::Buffer> =
                g.iter_mut().map(|b| &mut b.1).collect();
            p.g.fill_many(0.0, &mut bufs);
            for b in &g {
                assert!(p.g.download(&b.1).iter().all(|v| *v == 0.0), "fill_many");
            }
        }
    }

    #[test]
    fn gemm_all_transposes_with_offsets() {
        let Some(p) = Pair::new() else { return };
        let mut r = Rng(2);
        let (m, n, k) = (37, 53, 129);
        let a = p.bufs(&r.vec(m * k + 5, -1.0, 1.0));
        let b = p.bufs(&r.vec(k * n + 3, -1.0, 1.0));
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            for (alpha, beta) in [(1.0f32, 0.0f32), (0.5, 1.5)] {
                let mut c = p.bufs(&r.vec(m * n + 7, -1.0, 1.0));
                p.c.gemm(
                    ta,
                    tb,
                    m,
                    n,
                    k,
                    alpha,
                    (&a.0, 5),
                    (&b.0, 3),
                    beta,
                    (&mut c.0, 7),
                );
                p.g.gemm(
                    ta,
                    tb,
                    m,
                    n,
                    k,
                    alpha,
                    (&a.1, 5),
                    (&b.1, 3),
                    beta,
                    (&mut c.1, 7),
                );
                p.check(
                    &format!("gemm ta={ta} tb={tb} alpha={alpha} beta={beta}"),
                    &c,
                    TOL,
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn conv_geom(
        num: usize,
        cin: usize,
        h: usize,
        w: usize,
        cout: usize,
        k: usize,
        s: usize,
        pad: usize,
        dil: usize,
        group: usize,
    ) -> ConvGeom {
        ConvGeom {
            num,
            in_channels: cin,
            in_h: h,
            in_w: w,
            out_channels: cout,
            kernel_h: k,
            kernel_w: k,
            stride_h: s,
            stride_w: s,
            pad_h: pad,
            pad_w: pad,
            dilation_h: dil,
            dilation_w: dil,
            group,
        }
    }

    #[test]
    fn convolutions_match_im2col() {
        let Some(p) = Pair::new() else { return };
        let mut r = Rng(3);
        let geoms = [
            ("lenet conv1", conv_geom(8, 1, 28, 28, 20, 5, 1, 0, 1, 1)),
            ("lenet conv2", conv_geom(8, 20, 12, 12, 50, 5, 1, 0, 1, 1)),
            (
                "3x3 stride 2 pad 1",
                conv_geom(4, 16, 15, 17, 24, 3, 2, 1, 1, 1),
            ),
            (
                "groups 2, dilation 2",
                conv_geom(3, 8, 13, 13, 12, 3, 1, 2, 2, 2),
            ),
            ("1x1 pointwise", conv_geom(4, 32, 7, 7, 16, 1, 1, 0, 1, 1)),
            (
                "11x11 stride 4",
                conv_geom(2, 3, 67, 67, 16, 11, 4, 0, 1, 1),
            ),
            ("depthwise", conv_geom(2, 8, 9, 9, 8, 3, 1, 1, 1, 8)),
        ];
        for (name, g) in geoms {
            let nx = g.num * g.in_channels * g.in_h * g.in_w;
            let ny = g.num * g.out_channels * g.out_h() * g.out_w();
            let x = p.bufs(&r.vec(nx, -1.0, 1.0));
            let w = p.bufs(&r.vec(g.weight_count(), -0.5, 0.5));
            let mut y = p.bufs(&vec![0.0; ny]);
            p.c.conv_forward(&g, &x.0, &w.0, &mut y.0);
            p.g.conv_forward(&g, &x.1, &w.1, &mut y.1);
            p.check(&format!("conv forward {name}"), &y, CONV_TOL);
            let dy = p.bufs(&r.vec(ny, -1.0, 1.0));
            let mut dx = p.bufs(&vec![3.0; nx]);
            p.c.conv_backward_data(&g, &dy.0, &w.0, &mut dx.0);
            p.g.conv_backward_data(&g, &dy.1, &w.1, &mut dx.1);
            p.check(&format!("conv backward data {name}"), &dx, CONV_TOL);
            let mut dw = p.bufs(&r.vec(g.weight_count(), -0.5, 0.5));
            p.c.conv_backward_filter(&g, &x.0, &dy.0, &mut dw.0);
            p.g.conv_backward_filter(&g, &x.1, &dy.1, &mut dw.1);
            p.check(
                &format!("conv backward filter (accumulates) {name}"),
                &dw,
                CONV_TOL,
            );
        }
    }

    /// Caffe's pooled size: ceil, then drop a last window that starts inside the padding.
    fn pool_geom(
        num: usize,
        ch: usize,
        h: usize,
        w: usize,
        k: usize,
        s: usize,
        pad: usize,
    ) -> PoolGeom {
        let out = |i: usize| {
            let mut o = (i + 2 * pad - k).div_ceil(s) + 1;
            if pad > 0 && (o - 1) * s >= i + pad {
                o -= 1;
            }
            o
        };
        PoolGeom {
            num,
            channels: ch,
            in_h: h,
            in_w: w,
            out_h: out(h),
            out_w: out(w),
            kernel_h: k,
            kernel_w: k,
            stride_h: s,
            stride_w: s,
            pad_h: pad,
            pad_w: pad,
        }
    }

    #[test]
    fn pooling_matches_caffe_windows() {
        let Some(p) = Pair::new() else { return };
        let mut r = Rng(4);
        let geoms = [
            ("2x2 s2", pool_geom(4, 5, 24, 24, 2, 2, 0)),
            ("3x3 s2 ceil", pool_geom(3, 4, 13, 14, 3, 2, 0)),
            ("3x3 s2 pad 1", pool_geom(3, 4, 15, 15, 3, 2, 1)),
            ("3x3 s1 pad 1", pool_geom(2, 3, 8, 9, 3, 1, 1)),
            ("global 7x7", pool_geom(2, 6, 7, 7, 7, 1, 0)),
        ];
        for (name, g) in geoms {
            let nx = g.num * g.channels * g.in_h * g.in_w;
            let ny = g.num * g.channels * g.out_h * g.out_w;
            // Ties on purpose in half the planes (rounded values), so "first maximum" matters.
            let mut xv = r.vec(nx, -1.0, 1.0);
            for v in xv.iter_mut().take(nx / 2) {
                *v = (*v * 2.0).round();
            }
            let x = p.bufs(&xv);
            for method in [PoolMethod::Max, PoolMethod::Ave] {
                let mut y = p.bufs(&vec![0.0; ny]);
                p.c.pool_forward(&g, method, &x.0, &mut y.0);
                p.g.pool_forward(&g, method, &x.1, &mut y.1);
                p.check(&format!("pool forward {method:?} {name}"), &y, TOL);
                let dy = p.bufs(&r.vec(ny, -1.0, 1.0));
                let mut dx = p.bufs(&vec![5.0; nx]);
                p.c.pool_backward(&g, method, &x.0, &y.0, &dy.0, &mut dx.0);
                p.g.pool_backward(&g, method, &x.1, &y.1, &dy.1, &mut dx.1);
                p.check(&format!("pool backward {method:?} {name}"), &dx, TOL);
            }
        }
    }

    #[test]
    fn lrn_both_regions() {
        let Some(p) = Pair::new() else { return };
        let mut r = Rng(5);
        for across in [true, false] {
            for size in [3usize, 5] {
                let lp = LrnParams {
                    num: 3,
                    channels: 7,
                    height: 6,
                    width: 5,
                    local_size: size,
                    alpha: 0.5,
                    beta: 0.75,
                    k: 1.5,
                    across_channels: across,
                };
                let n = 3 * 7 * 6 * 5;
                let x = p.bufs(&r.vec(n, -2.0, 2.0));
                let mut y = p.bufs(&vec![0.0; n]);
                let mut s = p.bufs(&vec![0.0; n]);
                p.c.lrn_forward(&lp, &x.0, &mut y.0, &mut s.0);
                p.g.lrn_forward(&lp, &x.1, &mut y.1, &mut s.1);
                let what = format!("lrn across={across} size={size}");
                p.check(&format!("{what} forward"), &y, TOL);
                p.check(&format!("{what} scale"), &s, TOL);
                let dy = p.bufs(&r.vec(n, -1.0, 1.0));
                let mut dx = p.bufs(&vec![0.0; n]);
                p.c.lrn_backward(&lp, &x.0, &y.0, &s.0, &dy.0, &mut dx.0);
                p.g.lrn_backward(&lp, &x.1, &y.1, &s.1, &dy.1, &mut dx.1);
                p.check(&format!("{what} backward"), &dx, TOL);
            }
        }
    }

    #[test]
    fn activations_forward_and_backward() {
        let Some(p) = Pair::new() else { return };
        let mut r = Rng(6);
        let acts = [
            Activation::Relu {
                negative_slope: 0.0,
            },
            Activation::Relu {
                negative_slope: 0.1,
            },
            Activation::Sigmoid,
            Activation::TanH,
            Activation::Elu { alpha: 0.5 },
            Activation::AbsVal,
            Activation::Bnll,
            Activation::Power {
                power: 2.0,
                scale: 0.5,
                shift: 3.0,
            },
            Activation::Power {
                power: 0.5,
                scale: 0.5,
                shift: 2.0,
            },
            Activation::Exp {
                base: -1.0,
                scale: 0.5,
                shift: 0.2,
            },
            Activation::Exp {
                base: 2.0,
                scale: 1.5,
                shift: -0.5,
            },
            Activation::Log {
                base: -1.0,
                scale: 1.0,
                shift: 2.5,
            },
            Activation::Log {
                base: 10.0,
                scale: 2.0,
                shift: 5.0,
            },
            Activation::Clip {
                min: -0.5,
                max: 0.5,
            },
            Activation::Swish { beta: 1.0 },
            Activation::Swish { beta: 2.0 },
            Activation::Threshold { threshold: 0.2 },
        ];
        let n = 4096;
        let xv = r.vec(n, -2.0, 2.0);
        let x = p.bufs(&xv);
        for a in acts {
            let mut y = p.bufs(&vec![0.0; n]);
            p.c.act_forward(a, Some(&x.0), &mut y.0);
            p.g.act_forward(a, Some(&x.1), &mut y.1);
            p.check(&format!("{a:?} forward"), &y, TOL);
            let mut yi = p.bufs(&xv);
            p.c.act_forward(a, None, &mut yi.0);
            p.g.act_forward(a, None, &mut yi.1);
            p.check(&format!("{a:?} forward in place"), &yi, TOL);
            let dyv = r.vec(n, -1.0, 1.0);
            let dy = p.bufs(&dyv);
            let mut dx = p.bufs(&vec![0.0; n]);
            p.c.act_backward(a, &x.0, &y.0, Some(&dy.0), &mut dx.0);
            p.g.act_backward(a, &x.1, &y.1, Some(&dy.1), &mut dx.1);
            p.check(&format!("{a:?} backward"), &dx, TOL);
            let mut dxi = p.bufs(&dyv);
            p.c.act_backward(a, &x.0, &y.0, None, &mut dxi.0);
            p.g.act_backward(a, &x.1, &y.1, None, &mut dxi.1);
            p.check(&format!("{a:?} backward in place"), &dxi, TOL);
        }
    }

    #[test]
    fn softmax_and_its_loss() {
        let Some(p) = Pair::new() else { return };
        let mut r = Rng(7);
        for (o, ch, inner) in [(16usize, 10usize, 1usize), (3, 5, 12), (2, 1000, 1)] {
            let n = o * ch * inner;
            let x = p.bufs(&r.vec(n, -5.0, 5.0));
            let mut y = p.bufs(&vec![0.0; n]);
            p.c.softmax_forward(o, ch, inner, &x.0, &mut y.0);
            p.g.softmax_forward(o, ch, inner, &x.1, &mut y.1);
            let what = format!("softmax {o}x{ch}x{inner}");
            p.check(&format!("{what} forward"), &y, TOL);
            let dyv = r.vec(n, -1.0, 1.0);
            let dy = p.bufs(&dyv);
            let mut dx = p.bufs(&vec![0.0; n]);
            p.c.softmax_backward(o, ch, inner, &y.0, Some(&dy.0), &mut dx.0);
            p.g.softmax_backward(o, ch, inner, &y.1, Some(&dy.1), &mut dx.1);
            p.check(&format!("{what} backward"), &dx, TOL);
            let mut dxi = p.bufs(&dyv);
            p.c.softmax_backward(o, ch, inner, &y.0, None, &mut dxi.0);
            p.g.softmax_backward(o, ch, inner, &y.1, None, &mut dxi.1);
            p.check(&format!("{what} backward in place"), &dxi, TOL);
            let mut lv = r.labels(o * inner, ch);
            lv[0] = 255.0;
            let labels = p.bufs(&lv);
            for ignore in [None, Some(255)] {
                let (lc, cc) = p.c.softmax_loss(o, ch, inner, &y.0, &labels.0, ignore);
                let (lg, cg) = p.g.softmax_loss(o, ch, inner, &y.1, &labels.1, ignore);
                assert_eq!(cc, cg, "{what}: counted positions");
                assert_close(&format!("{what} loss ignore={ignore:?}"), &[lc], &[lg], TOL);
                let mut d = p.bufs(&vec![0.0; n]);
                p.c.softmax_loss_backward(o, ch, inner, &y.0, &labels.0, ignore, 0.25, &mut d.0);
                p.g.softmax_loss_backward(o, ch, inner, &y.1, &labels.1, ignore, 0.25, &mut d.1);
                p.check(&format!("{what} loss backward ignore={ignore:?}"), &d, TOL);
            }
        }
    }

    #[test]
    fn dropout_is_seeded_and_has_the_right_rate() {
        let Some(p) = Pair::new() else { return };
        let n = 1 << 20;
        let xv = Rng(8).vec(n, 0.5, 1.5);
        let x = p.g.alloc(n);
        let mut xb = x.clone();
        p.g.upload(&xv, &mut xb);
        let run = |seed: u64| {
            p.g.seed(seed);
            let mut y = p.g.alloc(n);
            let mut m = p.g.alloc(n);
            p.g.dropout_forward(0.3, Some(&xb), &mut y, &mut m);
            (p.g.download(&y), p.g.download(&m))
        };
        let (y1, m1) = run(42);
        let (_, m2) = run(42);
        let (_, m3) = run(43);
        assert_eq!(m1, m2, "the same seed gives the same mask");
        assert_ne!(m1, m3, "another seed gives another mask");
        let scale = 1.0 / 0.7f32;
        assert!(
            m1.iter().all(|v| *v == 0.0 || *v == scale),
            "mask values are 0 or 1/(1-ratio)"
        );
        let dropped = m1.iter().filter(|v| **v == 0.0).count() as f64 / n as f64;
        println!("dropout ratio 0.3: dropped {dropped:.4}");
        assert!((dropped - 0.3).abs() < 0.005, "dropped fraction {dropped}");
        for i in 0..n {
            assert_eq!(y1[i], xv[i] * m1[i], "y = x * mask at {i}");
        }
    }

    // ---------------------------------------------------------------------------------------
    // Every layer type through create_layer
    // ---------------------------------------------------------------------------------------

    struct LayerRun {
        tops: Vec<Vec<f32>>,
        bottom_diffs: Vec<Vec<f32>>,
        param_diffs: Vec<Vec<f32>>,
        /// Parameter values after the passes (BatchNorm's running statistics change in forward).
        param_data: Vec<Vec<f32>>,
    }

    /// Sets up `text` on `e` with the bottoms, copies in `params` (the CPU run's initial weights),
    /// runs forward, backward with deterministic top diffs, and returns everything on the host.
    fn run_layer(
        e: &dyn Engine,
        text: &str,
        phase: Phase,
        bottoms: &[(Vec<usize>, Vec<f32>)],
        n_tops: usize,
        pd: &[bool],
        params: Option<&[Vec<f32>]>,
    ) -> (LayerRun, Vec<Vec<f32>>) {
        // Name every bottom and top, as a net would: some layers check their counts at creation.
        let in_place = text.ends_with("IN_PLACE");
        let mut full = text.trim_end_matches("IN_PLACE").to_string();
        for i in 0..bottoms.len() {
            full.push_str(&format!(" bottom: \"b{i}\""));
        }
        for i in 0..n_tops {
            full.push_str(&format!(" top: \"t{i}\""));
        }
        let lp: LayerParameter =
            crema_proto::parse_text(&full, "gpu_vs_cpu", "caffe.LayerParameter")
                .unwrap_or_else(|err| panic!("bad test prototxt `{text}`: {err}"));
        let mut layer = create_layer(&lp).unwrap_or_else(|err| panic!("create `{text}`: {err}"));
        let text = text.trim_end_matches("IN_PLACE");
        let bs: Vec<BlobRef> = bottoms
            .iter()
            .map(|(s, v)| {
                let b = Blob::new_ref(e, s);
                b.set_data(e, v);
                b
            })
            .collect();
        // A text ending in "IN_PLACE" runs the layer with its top on its bottom, as ResNet's
        // BatchNorm and Scale layers run.
        let ts: Vec<BlobRef> = if in_place {
            bs.clone()
        } else {
            (0..n_tops).map(|_| Blob::new_ref(e, &[])).collect()
        };
        let cx = Ctx { engine: e, phase };
        layer
            .setup(&cx, &bs, &ts)
            .unwrap_or_else(|err| panic!("setup `{text}`: {err}"));
        layer
            .reshape(&cx, &bs, &ts)
            .unwrap_or_else(|err| panic!("reshape `{text}`: {err}"));
        if let Some(params) = params {
            for (b, v) in layer.blobs().iter().zip(params) {
                b.set_data(e, v);
            }
        }
        let initial: Vec<Vec<f32>> = layer.blobs().iter().map(|b| b.data_to_vec(e)).collect();
        layer
            .forward(&cx, &bs, &ts)
            .unwrap_or_else(|err| panic!("forward `{text}`: {err}"));
        let tops: Vec<Vec<f32>> = ts.iter().map(|t| t.data_to_vec(e)).collect();
        let mut r = Rng(99);
        for t in &ts {
            let n = t.count();
            let v = if n == 1 {
                vec![1.0]
            } else {
                r.vec(n, -1.0, 1.0)
            };
            t.set_diff(e, &v);
        }
        let mut bottom_diffs = Vec::new();
        if pd.iter().any(|p| *p) {
            layer
                .backward(&cx, &ts, pd, &bs)
                .unwrap_or_else(|err| panic!("backward `{text}`: {err}"));
            bottom_diffs = bs
                .iter()
                .zip(pd)
                .filter(|(_, p)| **p)
                .map(|(b, _)| b.diff_to_vec(e))
                .collect();
        }
        let param_diffs = layer.blobs().iter().map(|b| b.diff_to_vec(e)).collect();
        let param_data = layer.blobs().iter().map(|b| b.data_to_vec(e)).collect();
        (
            LayerRun {
                tops,
                bottom_diffs,
                param_diffs,
                param_data,
            },
            initial,
        )
    }

    fn check_layer(
        p: &Pair,
        text: &str,
        phase: Phase,
        bottoms: &[(Vec<usize>, Vec<f32>)],
        n_tops: usize,
        pd: &[bool],
        tol: f32,
    ) {
        let (c, init) = run_layer(&p.c, text, phase, bottoms, n_tops, pd, None);
        let (g, _) = run_layer(&p.g, text, phase, bottoms, n_tops, pd, Some(&init));
        let name = text
            .split("type: ")
            .nth(1)
            .and_then(|s| s.split('"').nth(1))
            .unwrap_or(text);
        let detail = text
            .split_once('{')
            .map(|(_, d)| d.trim_end_matches('}').trim())
            .unwrap_or("");
        let what = format!("{name} {}", &detail[..detail.len().min(30)]);
        for (i, (a, b)) in c.tops.iter().zip(&g.tops).enumerate() {
            assert_close(&format!("{what} top{i}"), a, b, tol);
        }
        for (i, (a, b)) in c.bottom_diffs.iter().zip(&g.bottom_diffs).enumerate() {
            assert_close(&format!("{what} bottom diff {i}"), a, b, tol);
        }
        for (i, (a, b)) in c.param_diffs.iter().zip(&g.param_diffs).enumerate() {
            assert_close(&format!("{what} param diff {i}"), a, b, tol);
        }
        for (i, (a, b)) in c.param_data.iter().zip(&g.param_data).enumerate() {
            assert_close(&format!("{what} param data {i}"), a, b, tol);
        }
    }

    #[test]
    fn every_layer_type_matches() {
        let Some(p) = Pair::new() else { return };
        let mut r = Rng(10);
        let img = vec![4usize, 6, 9, 9];
        let n_img: usize = img.iter().product();
        let x = r.vec(n_img, -1.0, 1.0);
        let one = |x: &Vec<f32>| vec![(img.clone(), x.clone())];
        let train = Phase::Train;

        let conv = [
            "num_output: 8 kernel_size: 3",
            "num_output: 8 kernel_size: 3 stride: 2 pad: 1",
            "num_output: 6 kernel_size: 3 group: 2 dilation: 2 pad: 2",
            "num_output: 5 kernel_size: 1 bias_term: false",
        ];
        for c in conv {
            let text = format!(
                r#"name: "c" type: "Convolution" convolution_param {{ {c} weight_filler {{ type: "gaussian" std: 0.1 }} bias_filler {{ type: "uniform" min: -0.5 max: 0.5 }} }}"#
            );
            check_layer(&p, &text, train, &one(&x), 1, &[true], CONV_TOL);
        }
        check_layer(
            &p,
            r#"name: "ip" type: "InnerProduct" inner_product_param { num_output: 10 weight_filler { type: "xavier" } bias_filler { type: "uniform" min: -0.5 max: 0.5 } }"#,
            train,
            &one(&x),
            1,
            &[true],
            TOL,
        );
        check_layer(
            &p,
            r#"name: "ip" type: "InnerProduct" inner_product_param { num_output: 7 transpose: true weight_filler { type: "xavier" } }"#,
            train,
            &one(&x),
            1,
            &[true],
            TOL,
        );
        for pool in [
            "pool: MAX kernel_size: 3 stride: 2",
            "pool: AVE kernel_size: 3 stride: 2 pad: 1",
            "pool: MAX kernel_size: 2 stride: 2 pad: 1",
            "pool: AVE global_pooling: true",
        ] {
            let text = format!(r#"name: "p" type: "Pooling" pooling_param {{ {pool} }}"#);
            check_layer(&p, &text, train, &one(&x), 1, &[true], TOL);
        }
        for lrn in [
            "local_size: 5 alpha: 0.1 beta: 0.75",
            "local_size: 3 alpha: 0.2 beta: 0.75 norm_region: WITHIN_CHANNEL",
        ] {
            let text = format!(r#"name: "n" type: "LRN" lrn_param {{ {lrn} }}"#);
            check_layer(&p, &text, train, &one(&x), 1, &[true], TOL);
        }
        let pos: Vec<f32> = x.iter().map(|v| v.abs() + 0.5).collect();
        for (text, input) in [
            (r#"name: "r" type: "ReLU""#, &x),
            (
                r#"name: "r" type: "ReLU" relu_param { negative_slope: 0.1 }"#,
                &x,
            ),
            (r#"name: "s" type: "Sigmoid""#, &x),
            (r#"name: "t" type: "TanH""#, &x),
            (r#"name: "e" type: "ELU" elu_param { alpha: 0.5 }"#, &x),
            (r#"name: "a" type: "AbsVal""#, &x),
            (r#"name: "b" type: "BNLL""#, &x),
            (
                r#"name: "p" type: "Power" power_param { power: 2 scale: 0.7 shift: 0.3 }"#,
                &x,
            ),
            (
                r#"name: "e" type: "Exp" exp_param { base: 2 scale: 0.5 shift: 0.1 }"#,
                &x,
            ),
            (
                r#"name: "l" type: "Log" log_param { scale: 2 shift: 0.5 }"#,
                &pos,
            ),
            (
                r#"name: "c" type: "Clip" clip_param { min: -0.5 max: 0.5 }"#,
                &x,
            ),
            (r#"name: "s" type: "Swish" swish_param { beta: 2 }"#, &x),
            (
                r#"name: "t" type: "Threshold" threshold_param { threshold: 0.1 }"#,
                &x,
            ),
            (
                r#"name: "d" type: "Dropout" dropout_param { dropout_ratio: 0.5 }"#,
                &x,
            ),
            (r#"name: "f" type: "Flatten""#, &x),
            (
                r#"name: "r" type: "Reshape" reshape_param { shape { dim: 0 dim: -1 dim: 3 } }"#,
                &x,
            ),
            (r#"name: "s" type: "Softmax""#, &x),
        ] {
            // Dropout in TEST is the identity on both engines (its TRAIN mask is checked above).
            let phase = if text.contains("Dropout") {
                Phase::Test
            } else {
                train
            };
            check_layer(&p, text, phase, &one(input), 1, &[true], TOL);
        }
        // BatchNorm and Scale (ResNet's pair): per-channel reductions split over several blocks
        // on the GPU, so also a tensor with many elements per channel.
        let big = vec![8usize, 3, 40, 40];
        let xb: Vec<f32> = r.vec(big.iter().product(), -2.0, 3.0);
        for (shape, input) in [(&img, &x), (&big, &xb)] {
            let inp = vec![(shape.clone(), input.clone())];
            for (text, phase) in [
                (r#"name: "bn" type: "BatchNorm""#, train),
                (
                    r#"name: "bn" type: "BatchNorm" batch_norm_param { eps: 0.001 moving_average_fraction: 0.9 }"#,
                    train,
                ),
                (r#"name: "bn" type: "BatchNorm""#, Phase::Test),
                (
                    r#"name: "sc" type: "Scale" scale_param { bias_term: true filler { type: "uniform" min: 0.5 max: 2 } bias_filler { type: "uniform" min: -1 max: 1 } }"#,
                    train,
                ),
                (
                    r#"name: "b" type: "Bias" bias_param { filler { type: "uniform" min: -1 max: 1 } }"#,
                    train,
                ),
                (r#"name: "bn" type: "BatchNorm"IN_PLACE"#, train),
                (
                    r#"name: "sc" type: "Scale" scale_param { bias_term: true filler { type: "uniform" min: 0.5 max: 2 } }IN_PLACE"#,
                    train,
                ),
            ] {
                check_layer(&p, text, phase, &inp, 1, &[true], TOL);
            }
        }
        let x2 = r.vec(n_img, -1.0, 1.0);
        let two = vec![(img.clone(), x.clone()), (img.clone(), x2.clone())];
        for op in [
            "operation: SUM coeff: 0.5 coeff: -2",
            "operation: PROD",
            "operation: MAX",
        ] {
            let text = format!(r#"name: "e" type: "Eltwise" eltwise_param {{ {op} }}"#);
            check_layer(&p, &text, train, &two, 1, &[true, true], TOL);
        }
        check_layer(
            &p,
            r#"name: "c" type: "Concat" concat_param { axis: 1 }"#,
            train,
            &two,
            1,
            &[true, true],
            TOL,
        );
        check_layer(
            &p,
            r#"name: "s" type: "Slice" slice_param { axis: 1 slice_point: 2 slice_point: 5 }"#,
            train,
            &one(&x),
            3,
            &[true],
            TOL,
        );
        check_layer(
            &p,
            r#"name: "s" type: "Split""#,
            train,
            &one(&x),
            2,
            &[true],
            TOL,
        );
        check_layer(
            &p,
            r#"name: "l" type: "EuclideanLoss""#,
            train,
            &two,
            1,
            &[true, true],
            TOL,
        );

        let logits = r.vec(80, -3.0, 3.0);
        let labels = r.labels(8, 10);
        let cls = vec![(vec![8usize, 10], logits), (vec![8], labels)];
        check_layer(
            &p,
            r#"name: "l" type: "SoftmaxWithLoss""#,
            train,
            &cls,
            1,
            &[true, false],
            TOL,
        );
        check_layer(
            &p,
            r#"name: "l" type: "SoftmaxWithLoss" loss_param { ignore_label: 3 normalization: VALID }"#,
            train,
            &cls,
            2,
            &[true, false],
            TOL,
        );
        check_layer(
            &p,
            r#"name: "a" type: "Accuracy" accuracy_param { top_k: 3 }"#,
            Phase::Test,
            &cls,
            1,
            &[false, false],
            TOL,
        );
        // Spatial softmax loss: softmax over channels at every pixel.
        let sp = vec![
            (img.clone(), x.clone()),
            (vec![4, 1, 9, 9], r.labels(4 * 81, 6)),
        ];
        check_layer(
            &p,
            r#"name: "l" type: "SoftmaxWithLoss""#,
            train,
            &sp,
            1,
            &[true, false],
            TOL,
        );
    }

    // ---------------------------------------------------------------------------------------
    // End to end: LeNet on MNIST, CPU and GPU
    // ---------------------------------------------------------------------------------------

    fn crema_bin() -> PathBuf {
        std::env::var_os("CREMA_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_crema")))
    }

    /// Where MNIST and BVLC's LeNet files are: $CREMA_SHARED, else ../shared.
    fn shared() -> Option<PathBuf> {
        let p = std::env::var_os("CREMA_SHARED")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared"));
        let needed = [
            "data/mnist/t10k-images-idx3-ubyte.gz",
            "caffe/examples/mnist/lenet_train_test.prototxt",
        ];
        if needed.iter().all(|f| p.join(f).exists()) {
            Some(p)
        } else {
            assert!(
                !require_gpu(),
                "CREMA_REQUIRE_GPU=1 but MNIST/LeNet files are not under {} (set CREMA_SHARED)",
                p.display()
            );
            println!("skipping: MNIST/LeNet files not under {}", p.display());
            None
        }
    }

    fn crema(dir: &Path, args: &[&str]) -> String {
        let out = Command::new(crema_bin())
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run crema");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "crema {args:?} failed:\n{text}");
        text
    }

    fn last_value(log: &str, pattern: &str) -> Option<f32> {
        log.lines()
            .rev()
            .filter_map(|l| l.split(pattern).nth(1))
            .find_map(|v| v.split_whitespace().next()?.parse().ok())
    }

    /// A net's `precision` field switches the engine's math; `--tf32` (forced) is not undone.
    #[test]
    fn the_nets_precision_field_chooses_the_math() {
        use crema::net::{Net, State};
        let Some(g) = gpu() else { return };
        let g: std::rc::Rc<dyn Engine> = std::rc::Rc::new(g);
        let net = |precision: &str| {
            let text = format!(
                "name: \"p\" {precision}\nlayer {{ name: \"x\" type: \"Input\" top: \"x\" input_param {{ shape {{ dim: 2 dim: 3 }} }} }}\n\
                 layer {{ name: \"ip\" type: \"InnerProduct\" bottom: \"x\" top: \"y\" inner_product_param {{ num_output: 2 }} }}"
            );
            let p = crema_proto::parse_text(&text, "p.prototxt", "caffe.NetParameter").unwrap();
            Net::new(&p, &State::phase(Phase::Test), g.clone()).unwrap();
        };
        assert!(!g.tf32(), "strict fp32 by default");
        net("precision: TF32");
        assert!(g.tf32());
        net("");
        assert!(g.tf32(), "a net without the field leaves the math as it is");
        net("precision: STRICT_FP32");
        assert!(!g.tf32());
        let forced = CudaEngine::with_tf32(0, true).unwrap();
        forced.set_tf32(false);
        assert!(forced.tf32(), "--tf32 wins over a net's STRICT_FP32");
    }

    /// `crema train --solver solver.prototxt --gpu 0 EXTRA` in `dir` with CREMA_CUDA_GRAPH set to
    /// `graph`: (whether it succeeded, its log).
    fn train_on_gpu(dir: &Path, graph: &str, extra: &[&str]) -> (bool, String) {
        let out = Command::new(crema_bin())
            .args(["train", "--solver", "solver.prototxt", "--gpu", "0"])
            .args(extra)
            .env("CREMA_CUDA_GRAPH", graph)
            .current_dir(dir)
            .output()
            .expect("run crema");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    }

    /// [`train_on_gpu`] that must succeed; its log.
    fn trained_on_gpu(dir: &Path, graph: &str, extra: &[&str]) -> String {
        let (ok, text) = train_on_gpu(dir, graph, extra);
        assert!(ok, "crema train failed:\n{text}");
        text
    }

    /// A temporary folder with MNIST LMDBs (images 0-7,999 to train, 8,000-9,999 to test) and
    /// BVLC's LeNet net reading them as `net.prototxt`.
    fn lenet_workdir(shared: &Path) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let m = shared.join("data/mnist");
        let (images, labels) = (
            m.join("t10k-images-idx3-ubyte.gz"),
            m.join("t10k-labels-idx1-ubyte.gz"),
        );
        for (name, start, count) in [("train_lmdb", "0", "8000"), ("test_lmdb", "8000", "2000")] {
            let (i, l) = (images.to_str().unwrap(), labels.to_str().unwrap());
            crema(
                d,
                &[
                    "convert-mnist",
                    i,
                    l,
                    name,
                    "--start",
                    start,
                    "--count",
                    count,
                ],
            );
        }
        let net =
            std::fs::read_to_string(shared.join("caffe/examples/mnist/lenet_train_test.prototxt"))
                .unwrap()
                .replace("examples/mnist/mnist_train_lmdb", "train_lmdb")
                .replace("examples/mnist/mnist_test_lmdb", "test_lmdb");
        std::fs::write(d.join("net.prototxt"), net).unwrap();
        dir
    }

    /// Replaying the training passes from a CUDA graph changes no number: the same losses at
    /// every display and the same test accuracy as running each operation on its own.
    #[test]
    fn lenet_replayed_from_a_graph_trains_as_without() {
        replayed_trains_as_eager(|net| net);
    }

    /// With Dropout in the net: a replayed step draws new masks, the same ones as eager steps.
    #[test]
    fn dropout_replayed_from_a_graph_draws_as_without() {
        replayed_trains_as_eager(|net| {
            let at = net.find("layer {\n  name: \"ip2\"").expect("LeNet has ip2");
            let drop = "layer {\n  name: \"drop1\"\n  type: \"Dropout\"\n  bottom: \"ip1\"\n  \
                        top: \"ip1\"\n  dropout_param { dropout_ratio: 0.5 }\n}\n";
            format!("{}{drop}{}", &net[..at], &net[at..])
        });
    }

    /// Trains BVLC's LeNet, as `edit` changes it, for 300 iterations eagerly and replayed, and
    /// checks that every displayed loss, test accuracy and learning rate agree.
    fn replayed_trains_as_eager(edit: impl Fn(String) -> String) {
        if gpu().is_none() {
            return;
        }
        let Some(shared) = shared() else { return };
        let dir = lenet_workdir(&shared);
        let d = dir.path();
        let net = std::fs::read_to_string(d.join("net.prototxt")).unwrap();
        std::fs::write(d.join("net.prototxt"), edit(net)).unwrap();
        let solver = "net: \"net.prototxt\"\ntest_iter: 20\ntest_interval: 150\nbase_lr: 0.01\nmomentum: 0.9\n\
                      weight_decay: 0.0005\nlr_policy: \"inv\"\ngamma: 0.0001\npower: 0.75\ndisplay: 10\n\
                      max_iter: 300\nsnapshot: 0\nsnapshot_prefix: \"lenet\"\nrandom_seed: 1\n";
        std::fs::write(d.join("solver.prototxt"), solver).unwrap();
        let run = |graph: &str| trained_on_gpu(d, graph, &["--deterministic"]);
        let (eager, replayed) = (run("0"), run("1"));
        assert!(
            replayed.contains("recorded into a CUDA graph"),
            "no graph was recorded:\n{replayed}"
        );
        assert!(!eager.contains("recorded into a CUDA graph"));
        let values = |log: &str, pattern: &str| -> Vec<f32> {
            log.lines()
                .filter_map(|l| l.split(pattern).nth(1))
                .filter_map(|v| v.split_whitespace().next()?.parse().ok())
                .collect()
        };
        for pattern in ["), loss = ", "accuracy = ", "Iteration 290, lr = "] {
            let (a, b) = (values(&eager, pattern), values(&replayed, pattern));
            assert!(
                !a.is_empty() && a.len() == b.len(),
                "{pattern}: {a:?} vs {b:?}"
            );
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                    "{pattern}: eager {a:?}\nreplayed {b:?}"
                );
            }
        }
    }

    /// A label outside the class range that first appears while the passes are replayed from a
    /// graph (no host check runs then) stops training with the loss layer named and the cause,
    /// as the ordinary path does.
    #[test]
    fn a_bad_label_during_replay_is_named() {
        if gpu().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // 40 grey 8×8 images: the first 24 (six batches of 4) labelled 0-9, the rest 12.
        let mut list = String::new();
        for k in 0..40u32 {
            let img = image::GrayImage::from_fn(8, 8, |x, y| {
                image::Luma([((x * 31 + y * 7 + k * 13) % 256) as u8])
            });
            let path = d.join(format!("i{k}.png"));
            img.save(&path).unwrap();
            let label = if k < 24 { k % 10 } else { 12 };
            list.push_str(&format!("{} {label}\n", path.display()));
        }
        std::fs::write(d.join("list.txt"), list).unwrap();
        let net = "layer { name: \"data\" type: \"ImageData\" top: \"data\" top: \"label\"\n\
                   image_data_param { source: \"list.txt\" batch_size: 4 is_color: false } }\n\
                   layer { name: \"ip\" type: \"InnerProduct\" bottom: \"data\" top: \"ip\"\n\
                   inner_product_param { num_output: 10 weight_filler { type: \"xavier\" } } }\n\
                   layer { name: \"loss\" type: \"SoftmaxWithLoss\" bottom: \"ip\" bottom: \"label\" top: \"loss\" }\n";
        std::fs::write(d.join("net.prototxt"), net).unwrap();
        let solver = "net: \"net.prototxt\"\nbase_lr: 0.01\nlr_policy: \"fixed\"\nmax_iter: 20\n\
                      display: 0\nsnapshot: 0\nsnapshot_prefix: \"x\"\n";
        std::fs::write(d.join("solver.prototxt"), solver).unwrap();
        let run = |graph: &str| {
            let (ok, text) = train_on_gpu(d, graph, &[]);
            assert!(!ok, "training on label 12 of 10 classes succeeded");
            text
        };
        let replayed = run("1");
        assert!(
            replayed.contains("recorded into a CUDA graph"),
            "{replayed}"
        );
        assert!(
            replayed
                .contains("at iteration 6: layer `loss` (SoftmaxWithLoss): labels outside [0, 10)"),
            "{replayed}"
        );
        assert!(!replayed.contains("panicked"), "{replayed}");
        let eager = run("0");
        assert!(eager.contains("label 12 is outside [0, 10)"), "{eager}");
    }

    /// Batches whose shape changes mid-run (ImageData without resizing) are not replayed from a
    /// graph recorded for another shape: the losses match the run without graphs.
    #[test]
    fn a_batch_of_another_shape_is_not_replayed_from_a_stale_graph() {
        if gpu().is_none() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Batches of 4: batches 0-5 of 8×8 images, 6-9 of 12×12, then 8×8 again.
        let mut list = String::new();
        for k in 0..64u32 {
            let side = if (24..40).contains(&k) { 12 } else { 8 };
            let img = image::GrayImage::from_fn(side, side, |x, y| {
                image::Luma([((x * 29 + y * 11 + k * 17) % 256) as u8])
            });
            let path = d.join(format!("i{k}.png"));
            img.save(&path).unwrap();
            list.push_str(&format!("{} {}\n", path.display(), k % 10));
        }
        std::fs::write(d.join("list.txt"), list).unwrap();
        let net = "layer { name: \"data\" type: \"ImageData\" top: \"data\" top: \"label\"\n\
                   transform_param { scale: 0.00390625 }\n\
                   image_data_param { source: \"list.txt\" batch_size: 4 is_color: false } }\n\
                   layer { name: \"conv\" type: \"Convolution\" bottom: \"data\" top: \"conv\"\n\
                   convolution_param { num_output: 16 kernel_size: 3 weight_filler { type: \"xavier\" } } }\n\
                   layer { name: \"pool\" type: \"Pooling\" bottom: \"conv\" top: \"pool\"\n\
                   pooling_param { pool: AVE global_pooling: true } }\n\
                   layer { name: \"ip\" type: \"InnerProduct\" bottom: \"pool\" top: \"ip\"\n\
                   inner_product_param { num_output: 10 weight_filler { type: \"xavier\" } } }\n\
                   layer { name: \"loss\" type: \"SoftmaxWithLoss\" bottom: \"ip\" bottom: \"label\" top: \"loss\" }\n";
        std::fs::write(d.join("net.prototxt"), net).unwrap();
        let solver = "net: \"net.prototxt\"\nbase_lr: 0.1\nmomentum: 0.9\nlr_policy: \"fixed\"\n\
                      max_iter: 30\ndisplay: 1\nsnapshot: 0\nsnapshot_prefix: \"x\"\nrandom_seed: 1\n";
        std::fs::write(d.join("solver.prototxt"), solver).unwrap();
        let run = |graph: &str| trained_on_gpu(d, graph, &["--deterministic"]);
        let (eager, replayed) = (run("0"), run("1"));
        assert!(
            replayed.contains("recorded into a CUDA graph"),
            "{replayed}"
        );
        let losses = |log: &str| -> Vec<String> {
            log.lines()
                .filter_map(|l| l.split("), loss = ").nth(1).map(str::to_string))
                .collect()
        };
        let (a, b) = (losses(&eager), losses(&replayed));
        assert_eq!(a.len(), 30, "{eager}");
        assert_eq!(a, b, "losses without and with graphs differ");
    }

    #[test]
    fn lenet_trains_alike_on_cpu_and_gpu() {
        if gpu().is_none() {
            return;
        }
        let Some(shared) = shared() else { return };
        let dir = lenet_workdir(&shared);
        let d = dir.path();
        let solver = "net: \"net.prototxt\"\ntest_iter: 20\ntest_interval: 200\nbase_lr: 0.01\nmomentum: 0.9\n\
                      weight_decay: 0.0005\nlr_policy: \"inv\"\ngamma: 0.0001\npower: 0.75\ndisplay: 50\n\
                      max_iter: 200\nsnapshot: 0\nsnapshot_prefix: \"lenet\"\nrandom_seed: 1\nsolver_mode: CPU\n";
        std::fs::write(d.join("solver.prototxt"), solver).unwrap();
        let t = std::time::Instant::now();
        let cpu = crema(d, &["train", "--solver", "solver.prototxt"]);
        let cpu_s = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let gpu_log = crema(d, &["train", "--solver", "solver.prototxt", "--gpu", "0"]);
        let gpu_s = t.elapsed().as_secs_f64();
        assert!(
            gpu_log.contains("CUDA:0"),
            "the GPU run did not use the CUDA engine:\n{gpu_log}"
        );
        let loss = |log: &str| last_value(log, "Iteration 150 (").and(last_value(log, ", loss = "));
        let acc = |log: &str| last_value(log, "Test net output #0: accuracy = ");
        let (lc, lg) = (
            loss(&cpu).expect("cpu loss"),
            loss(&gpu_log).expect("gpu loss"),
        );
        let (ac, ag) = (
            acc(&cpu).expect("cpu accuracy"),
            acc(&gpu_log).expect("gpu accuracy"),
        );
        println!("LeNet 200 iterations: CPU loss {lc} accuracy {ac} ({cpu_s:.1} s), GPU loss {lg} accuracy {ag} ({gpu_s:.1} s)");
        assert!(
            (lc - lg).abs() <= 0.02 + 0.1 * lc,
            "loss CPU {lc} vs GPU {lg}"
        );
        assert!((ac - ag).abs() <= 0.01, "accuracy CPU {ac} vs GPU {ag}");
        assert!(ag >= 0.9, "GPU accuracy after 200 iterations: {ag}");
    }
}

/// Where the CUDA libraries cannot be loaded, `--gpu 0` is one clear line and a non-zero exit,
/// never a panic. (On a machine with a working GPU there is nothing to check.)
#[cfg(feature = "cuda")]
#[test]
fn without_cuda_libraries_gpu_flag_fails_with_one_line() {
    if crema::engine::cuda::device_count().is_ok_and(|n| n > 0) {
        println!("skipping: this machine has a usable GPU");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("net.prototxt"),
        "name: \"n\"\nlayer { name: \"x\" type: \"Input\" top: \"x\" input_param { shape { dim: 1 dim: 2 } } }\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("solver.prototxt"),
        "net: \"net.prototxt\"\nbase_lr: 0.01\nmax_iter: 1\n",
    )
    .unwrap();
    for args in [
        &["time", "--model", "net.prototxt", "--gpu", "0"][..],
        &["device-query"][..],
        &["train", "--solver", "solver.prototxt", "--gpu", "0,1"][..],
        &["train", "--solver", "solver.prototxt", "--gpu", "all"][..],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_crema"))
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded without a GPU");
        assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
        let last = err.lines().last().unwrap_or("");
        assert!(
            last.starts_with("error: ") && (last.contains("cannot load") || last.contains("GPU")),
            "{args:?}: expected one error line naming what is missing, got:\n{err}"
        );
    }
}
