//! Shared helpers of the layer tests: a seeded generator, a rig that drives one layer on the CPU
//! engine, and a Caffe-style finite-difference gradient checker.

#![allow(dead_code)]

pub use crema::blob::{Blob, BlobRef};
pub use crema::engine::CpuEngine;
pub use crema::layers::{create_layer, Ctx, Layer, Phase};
pub use crema_proto::caffe::LayerParameter;

// ---------------------------------------------------------------------------------------------
// Deterministic random numbers
// ---------------------------------------------------------------------------------------------

/// SplitMix64: tiny, seeded, and the same on every platform, so a failure reproduces.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }

    pub fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(lo, hi)).collect()
    }

    /// Uniform values at least `margin` from every kink (Caffe's `kink` / `kink_range`), so a
    /// finite-difference step never straddles a point where the derivative jumps.
    pub fn away_from(
        &mut self,
        n: usize,
        lo: f32,
        hi: f32,
        kinks: &[f32],
        margin: f32,
    ) -> Vec<f32> {
        (0..n)
            .map(|_| loop {
                let v = self.uniform(lo, hi);
                if kinks.iter().all(|k| (v - k).abs() > margin) {
                    break v;
                }
            })
            .collect()
    }

    /// `n` distinct values `gap` apart in random order: a maximum can neither tie nor change
    /// hands under a step smaller than gap / 2.
    pub fn distinct(&mut self, n: usize, gap: f32) -> Vec<f32> {
        let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * gap).collect();
        for i in (1..n).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
        v
    }

    /// Integer class labels in [0, classes).
    pub fn labels(&mut self, n: usize, classes: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (self.next_u64() % classes as u64) as f32)
            .collect()
    }
}

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

// ---------------------------------------------------------------------------------------------
// Driving one layer
// ---------------------------------------------------------------------------------------------

pub fn layer_param(text: &str) -> LayerParameter {
    crema_proto::parse_text::<LayerParameter>(text, "gradient_check", "caffe.LayerParameter")
        .unwrap_or_else(|e| panic!("bad test prototxt `{text}`: {e}"))
}

pub fn make_layer(text: &str) -> Box<dyn Layer> {
    create_layer(&layer_param(text)).unwrap_or_else(|err| panic!("create `{text}`: {err}"))
}

/// A layer wired to its own bottoms and tops on a fresh CPU engine, set up and reshaped.
pub struct Rig {
    pub e: CpuEngine,
    pub phase: Phase,
    pub layer: Box<dyn Layer>,
    pub bottoms: Vec<BlobRef>,
    pub tops: Vec<BlobRef>,
}

impl Rig {
    pub fn new(text: &str, phase: Phase, bottoms: &[(Vec<usize>, Vec<f32>)], n_tops: usize) -> Rig {
        Self::with_layer(make_layer(text), phase, bottoms, n_tops)
    }

    pub fn with_layer(
        layer: Box<dyn Layer>,
        phase: Phase,
        bottoms: &[(Vec<usize>, Vec<f32>)],
        n_tops: usize,
    ) -> Rig {
        let e = CpuEngine::new();
        let bottoms: Vec<BlobRef> = bottoms
            .iter()
            .map(|(shape, values)| {
                assert_eq!(numel(shape), values.len(), "test bug: bottom {shape:?}");
                let b = Blob::new_ref(&e, shape);
                b.set_data(&e, values);
                b
            })
            .collect();
        let tops: Vec<BlobRef> = (0..n_tops).map(|_| Blob::new_ref(&e, &[])).collect();
        Self::wire(e, layer, phase, bottoms, tops)
    }

    /// Wires the layer to the given blobs (a top may be a bottom: in place).
    pub fn wire(
        e: CpuEngine,
        mut layer: Box<dyn Layer>,
        phase: Phase,
        bottoms: Vec<BlobRef>,
        tops: Vec<BlobRef>,
    ) -> Rig {
        {
            let cx = Ctx { engine: &e, phase };
            layer
                .setup(&cx, &bottoms, &tops)
                .unwrap_or_else(|err| panic!("setup: {err}"));
            layer
                .reshape(&cx, &bottoms, &tops)
                .unwrap_or_else(|err| panic!("reshape: {err}"));
        }
        Rig {
            e,
            phase,
            layer,
            bottoms,
            tops,
        }
    }

    pub fn forward(&mut self) {
        let cx = Ctx {
            engine: &self.e,
            phase: self.phase,
        };
        self.layer
            .forward(&cx, &self.bottoms, &self.tops)
            .unwrap_or_else(|err| panic!("forward: {err}"));
    }

    pub fn backward(&mut self, propagate_down: &[bool]) {
        let cx = Ctx {
            engine: &self.e,
            phase: self.phase,
        };
        self.layer
            .backward(&cx, &self.tops, propagate_down, &self.bottoms)
            .unwrap_or_else(|err| panic!("backward: {err}"));
    }

    pub fn params(&mut self) -> Vec<BlobRef> {
        self.layer.blobs().to_vec()
    }

    pub fn top(&self, i: usize) -> Vec<f32> {
        self.tops[i].data_to_vec(&self.e)
    }

    pub fn top_shape(&self, i: usize) -> Vec<usize> {
        self.tops[i].shape()
    }
}

/// |a - b| within `rel` of the larger magnitude (at least 1), elementwise, with a located message.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let scale = g.abs().max(w.abs()).max(1.0);
        assert!(
            (g - w).abs() <= rel * scale,
            "{what}: element {i} is {g}, expected {w}\n got:  {got:?}\n want: {want:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The gradient checker
// ---------------------------------------------------------------------------------------------

/// Bottom diffs are pre-filled with this so a backward that forgets (or accumulates into) an
/// element shows up as a mismatch: bottom diffs must be overwritten.
pub const SENTINEL: f32 = 1234.5;

/// A finite-difference check of one layer configuration.
///
/// The objective is L = Σ_top Σ_i w_i · top_i with fixed random weights w (so each top diff is w;
/// for a loss layer L is the loss times a random loss weight). The analytic gradient of L with
/// respect to every propagated bottom and every learnable blob comes from one backward; each
/// element is then compared with the central difference (L(x+h) - L(x-h)) / 2h, passing when
/// |analytic - numeric| <= threshold · max(|analytic|, |numeric|, floor).
pub struct Check {
    pub text: String,
    pub phase: Phase,
    pub bottoms: Vec<(Vec<usize>, Vec<f32>)>,
    pub propagate: Vec<bool>,
    pub n_tops: usize,
    /// Reseeds the engine before every forward so a random layer draws the same mask each time.
    pub reseed: Option<u64>,
    /// Builds the layer instead of `text` (the checker's own tests).
    pub custom: Option<fn() -> Box<dyn Layer>>,
    pub step: f32,
    pub threshold: f64,
    pub floor: f64,
    pub seed: u64,
    /// Values for the learnable blobs instead of random ones (e.g. a positive variance).
    pub param_values: Option<Vec<Vec<f32>>>,
    /// Whether learnable blobs are checked (not for statistics the layer keeps, as BatchNorm's).
    pub check_params: bool,
}

impl Check {
    pub fn new(text: &str) -> Check {
        Check {
            text: text.to_string(),
            phase: Phase::Train,
            bottoms: vec![],
            propagate: vec![],
            n_tops: 1,
            reseed: None,
            custom: None,
            step: 1e-2,
            threshold: 1e-2,
            floor: 0.1,
            seed: 0x0c0ffee,
            param_values: None,
            check_params: true,
        }
    }

    /// A bottom whose gradient is checked.
    pub fn bottom(mut self, shape: &[usize], values: Vec<f32>) -> Self {
        self.bottoms.push((shape.to_vec(), values));
        self.propagate.push(true);
        self
    }

    /// A bottom that gets no gradient (labels).
    pub fn label(mut self, shape: &[usize], values: Vec<f32>) -> Self {
        self.bottoms.push((shape.to_vec(), values));
        self.propagate.push(false);
        self
    }

    pub fn tops(mut self, n: usize) -> Self {
        self.n_tops = n;
        self
    }

    pub fn phase(mut self, phase: Phase) -> Self {
        self.phase = phase;
        self
    }

    pub fn reseed(mut self, seed: u64) -> Self {
        self.reseed = Some(seed);
        self
    }

    pub fn custom(mut self, make: fn() -> Box<dyn Layer>) -> Self {
        self.custom = Some(make);
        self
    }

    /// Gives the learnable blobs these values (one vector per blob) instead of random ones.
    pub fn params(mut self, values: Vec<Vec<f32>>) -> Self {
        self.param_values = Some(values);
        self
    }

    /// Leaves the learnable blobs out of the check (they are state, not parameters).
    pub fn skip_params(mut self) -> Self {
        self.check_params = false;
        self
    }

    /// Finite-difference step and relative threshold.
    pub fn tolerance(mut self, step: f32, threshold: f64) -> Self {
        self.step = step;
        self.threshold = threshold;
        self
    }

    pub fn objective(&self, rig: &mut Rig, weights: &[Vec<f32>]) -> f64 {
        if let Some(s) = self.reseed {
            crema::engine::Engine::seed(&rig.e, s);
        }
        rig.forward();
        rig.tops
            .iter()
            .zip(weights)
            .map(|(t, w)| {
                t.data_to_vec(&rig.e)
                    .iter()
                    .zip(w)
                    .map(|(y, w)| *y as f64 * *w as f64)
                    .sum::<f64>()
            })
            .sum()
    }

    pub fn run(self) {
        let layer = match self.custom {
            Some(make) => make(),
            None => make_layer(&self.text),
        };
        let mut rig = Rig::with_layer(layer, self.phase, &self.bottoms, self.n_tops);
        let e = CpuEngine::new(); // only for host copies; all buffers are host vectors
        let mut rng = Rng::new(self.seed);
        // Fixed, seeded parameters instead of the fillers' draws, so a failure reproduces.
        let params = rig.params();
        for (k, p) in params.iter().enumerate() {
            match self.param_values.as_ref().and_then(|v| v.get(k)) {
                Some(v) => p.set_data(&e, v),
                None => p.set_data(&e, &rng.vec(p.count(), -0.5, 0.5)),
            }
        }
        let weights: Vec<Vec<f32>> = rig
            .tops
            .iter()
            .map(|t| rng.vec(t.count(), -1.0, 1.0))
            .collect();

        // Analytic gradients.
        self.objective(&mut rig, &weights);
        for (t, w) in rig.tops.iter().zip(&weights) {
            t.set_diff(&e, w);
        }
        for p in &params {
            p.set_diff(&e, &vec![0.0; p.count()]);
        }
        for (b, pd) in rig.bottoms.iter().zip(&self.propagate) {
            if *pd {
                b.set_diff(&e, &vec![SENTINEL; b.count()]);
            }
        }
        rig.backward(&self.propagate);
        let mut targets: Vec<(String, BlobRef, Vec<f32>)> = vec![];
        for (i, b) in rig.bottoms.iter().enumerate() {
            if self.propagate[i] {
                targets.push((format!("bottom {i}"), b.clone(), b.diff_to_vec(&e)));
            }
        }
        if self.check_params {
            for (k, p) in params.iter().enumerate() {
                targets.push((format!("param {k}"), p.clone(), p.diff_to_vec(&e)));
            }
        }
        assert!(!targets.is_empty(), "test bug: nothing to check");

        // Caffe's contract: another backward adds to parameter diffs and overwrites bottom diffs.
        rig.backward(&self.propagate);
        for (name, b, first) in &targets {
            let factor = if name.starts_with("param") { 2.0 } else { 1.0 };
            let want: Vec<f32> = first.iter().map(|v| v * factor).collect();
            assert_close(
                &format!("{}: {name} diff after a second backward", self.text),
                &b.diff_to_vec(&e),
                &want,
                1e-5,
            );
        }

        // Numeric gradients, element by element.
        let mut failures = vec![];
        let mut checked = 0;
        for (name, b, analytic) in &targets {
            let base = b.data_to_vec(&e);
            let mut biggest = 0f64;
            for j in 0..base.len() {
                let mut v = base.clone();
                v[j] = base[j] + self.step;
                let xp = v[j] as f64;
                b.set_data(&e, &v);
                let lp = self.objective(&mut rig, &weights);
                v[j] = base[j] - self.step;
                let xm = v[j] as f64;
                b.set_data(&e, &v);
                let lm = self.objective(&mut rig, &weights);
                // Divide by the step the f32 values really took.
                let numeric = (lp - lm) / (xp - xm);
                let a = analytic[j] as f64;
                let scale = a.abs().max(numeric.abs()).max(self.floor);
                if (a - numeric).abs() > self.threshold * scale || a.is_nan() {
                    failures.push(format!(
                        "  {name}[{j}] (x = {}): analytic {a:.6}, numeric {numeric:.6}",
                        base[j]
                    ));
                }
                biggest = biggest.max(numeric.abs());
                checked += 1;
            }
            b.set_data(&e, &base);
            if biggest < 1e-4 {
                failures.push(format!(
                    "  {name}: every numeric gradient is ~0, so the check proves nothing"
                ));
            }
        }
        assert!(
            failures.is_empty(),
            "gradient check of `{}` failed at {} of {checked} elements:\n{}",
            self.text,
            failures.len(),
            failures
                .iter()
                .take(16)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
