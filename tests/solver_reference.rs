//! Each solver's update against a hand computation of Caffe's rules (sgd_solver.cpp,
//! nesterov_solver.cpp, adagrad_solver.cpp, rmsprop_solver.cpp, adadelta_solver.cpp,
//! adam_solver.cpp) for 3 steps on a 2-parameter problem: y = w·x + b, EuclideanLoss to t.
//! The two parameters have different lr_mult and decay_mult, weight decay is on, and a step
//! lr_policy halves the rate before the third step, so every factor of Caffe's update shows.

use crema::engine::CpuEngine;
use crema::solver::{NetChoices, Solver};
use crema_proto::caffe::SolverParameter;
use std::rc::Rc;

const X: f64 = 1.5;
const T: f64 = 0.5;
const W0: f64 = 0.8;
const B0: f64 = -0.3;
/// (lr_mult, decay_mult) of w and b.
const MULT: [(f64, f64); 2] = [(1.0, 1.0), (2.0, 0.5)];
const WEIGHT_DECAY: f64 = 0.1;
/// lr_policy "step": the rate at iteration i is base_lr · GAMMA^(i / STEPSIZE).
const GAMMA: f64 = 0.5;
const STEPSIZE: i32 = 2;

/// DummyData x = 1.5 and t = 0.5 (one sample), an InnerProduct 1 -> 1 (w = 0.8, b = -0.3), and
/// EuclideanLoss 1/(2N)·(y - t)².
const NET: &str = r#"
  name: "two_params"
  layer {
    name: "data" type: "DummyData" top: "x" top: "t"
    dummy_data_param {
      shape { dim: 1 dim: 1 } shape { dim: 1 dim: 1 }
      data_filler { type: "constant" value: 1.5 } data_filler { type: "constant" value: 0.5 }
    }
  }
  layer {
    name: "ip" type: "InnerProduct" bottom: "x" top: "y"
    param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0.5 }
    inner_product_param {
      num_output: 1
      weight_filler { type: "constant" value: 0.8 }
      bias_filler { type: "constant" value: -0.3 }
    }
  }
  layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "t" top: "loss" }
"#;

/// A solver's settings: its prototxt lines and the numbers the reference needs.
struct Case {
    name: &'static str,
    text: &'static str,
    base_lr: f64,
    /// momentum (β1 for Adam).
    momentum: f64,
    /// momentum2 (Adam's β2).
    momentum2: f64,
    delta: f64,
    rms_decay: f64,
    l1: bool,
}

const CASES: [Case; 7] = [
    Case {
        name: "SGD",
        text: "type: \"SGD\" base_lr: 0.1 momentum: 0.9",
        base_lr: 0.1,
        momentum: 0.9,
        momentum2: 0.0,
        delta: 0.0,
        rms_decay: 0.0,
        l1: false,
    },
    Case {
        name: "SGD (L1)",
        text: "type: \"SGD\" base_lr: 0.1 momentum: 0.9 regularization_type: \"L1\"",
        base_lr: 0.1,
        momentum: 0.9,
        momentum2: 0.0,
        delta: 0.0,
        rms_decay: 0.0,
        l1: true,
    },
    Case {
        name: "Nesterov",
        text: "type: \"Nesterov\" base_lr: 0.1 momentum: 0.9",
        base_lr: 0.1,
        momentum: 0.9,
        momentum2: 0.0,
        delta: 0.0,
        rms_decay: 0.0,
        l1: false,
    },
    Case {
        name: "AdaGrad",
        text: "type: \"AdaGrad\" base_lr: 0.1 delta: 0.01",
        base_lr: 0.1,
        momentum: 0.0,
        momentum2: 0.0,
        delta: 0.01,
        rms_decay: 0.0,
        l1: false,
    },
    Case {
        name: "RMSProp",
        text: "type: \"RMSProp\" base_lr: 0.01 rms_decay: 0.9 delta: 0.001",
        base_lr: 0.01,
        momentum: 0.0,
        momentum2: 0.0,
        delta: 0.001,
        rms_decay: 0.9,
        l1: false,
    },
    Case {
        name: "AdaDelta",
        text: "type: \"AdaDelta\" base_lr: 1.0 momentum: 0.95 delta: 0.0001",
        base_lr: 1.0,
        momentum: 0.95,
        momentum2: 0.0,
        delta: 1e-4,
        rms_decay: 0.0,
        l1: false,
    },
    Case {
        name: "Adam",
        text: "type: \"Adam\" base_lr: 0.01 momentum: 0.9 momentum2: 0.999 delta: 1e-8",
        base_lr: 0.01,
        momentum: 0.9,
        momentum2: 0.999,
        delta: 1e-8,
        rms_decay: 0.0,
        l1: false,
    },
];

/// (w, b) after each of `steps` iterations, by Caffe's formulas in f64.
fn reference(c: &Case, steps: i32) -> Vec<[f64; 2]> {
    reference_with_rates(c, steps, |iter| c.base_lr * GAMMA.powi(iter / STEPSIZE))
}

/// As [`reference`], with the learning rate of each iteration given.
fn reference_with_rates(c: &Case, steps: i32, rate_at: impl Fn(i32) -> f64) -> Vec<[f64; 2]> {
    let mut p = [W0, B0];
    let (mut h, mut h2) = ([0.0f64; 2], [0.0f64; 2]);
    let mut out = vec![];
    for iter in 0..steps {
        let rate = rate_at(iter);
        // dLoss/dy for 1/(2N)·(y - t)² with N = 1, then through y = w·x + b.
        let r = p[0] * X + p[1] - T;
        let data_grad = [r * X, r];
        let mut next = p;
        for i in 0..2 {
            let (lr_mult, decay_mult) = MULT[i];
            // Regularize: L2 adds decay·w, L1 adds decay·sign(w).
            let decay = WEIGHT_DECAY * decay_mult;
            let g = data_grad[i] + decay * if c.l1 { p[i].signum() } else { p[i] };
            let lr = rate * lr_mult;
            let (m, d) = (c.momentum, c.delta);
            let update = match c.name {
                "SGD" | "SGD (L1)" => {
                    h[i] = m * h[i] + lr * g;
                    h[i]
                }
                "Nesterov" => {
                    let prev = h[i];
                    h[i] = m * h[i] + lr * g;
                    (1.0 + m) * h[i] - m * prev
                }
                "AdaGrad" => {
                    h[i] += g * g;
                    lr * g / (h[i].sqrt() + d)
                }
                "RMSProp" => {
                    h[i] = c.rms_decay * h[i] + (1.0 - c.rms_decay) * g * g;
                    lr * g / (h[i].sqrt() + d)
                }
                "AdaDelta" => {
                    h[i] = m * h[i] + (1.0 - m) * g * g;
                    let u = g * ((h2[i] + d) / (h[i] + d)).sqrt();
                    h2[i] = m * h2[i] + (1.0 - m) * u * u;
                    lr * u
                }
                "Adam" => {
                    let t = iter + 1;
                    let (b1, b2) = (c.momentum, c.momentum2);
                    h[i] = b1 * h[i] + (1.0 - b1) * g;
                    h2[i] = b2 * h2[i] + (1.0 - b2) * g * g;
                    let correction = (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t));
                    lr * correction * h[i] / (h2[i].sqrt() + d)
                }
                other => panic!("no reference for {other}"),
            };
            next[i] = p[i] - update;
        }
        p = next;
        out.push(p);
    }
    out
}

/// Runs crema's solver one iteration at a time; (w, b) after each.
fn crema_steps(name: &str, solver_text: &str, steps: i32) -> Vec<[f64; 2]> {
    crema_steps_of(name, solver_text, NET, steps)
}

fn crema_steps_of(name: &str, solver_text: &str, net: &str, steps: i32) -> Vec<[f64; 2]> {
    let text = format!(
        "{solver_text} weight_decay: {WEIGHT_DECAY} lr_policy: \"step\" gamma: {GAMMA} stepsize: {STEPSIZE} \
         max_iter: 100 display: 0 snapshot_after_train: false random_seed: 1 \
         net_param {{ {net} }}"
    );
    let param: SolverParameter =
        crema_proto::parse_text(&text, name, "caffe.SolverParameter").unwrap();
    let engine = Rc::new(CpuEngine::new());
    let mut solver = Solver::new(param, None, engine.clone(), &NetChoices::default()).unwrap();
    assert_eq!(solver.net.params().len(), 2, "{name}: w and b");
    let mut out = vec![];
    for _ in 0..steps {
        solver.step(1).unwrap();
        let v: Vec<f64> = solver
            .net
            .params()
            .iter()
            .map(|p| {
                let d = p.blob.data_to_vec(&*engine);
                assert_eq!(d.len(), 1);
                d[0] as f64
            })
            .collect();
        out.push([v[0], v[1]]);
    }
    out
}

#[test]
fn every_solver_matches_caffes_update_rules_for_three_steps() {
    let mut report = vec![];
    for c in &CASES {
        let want = reference(c, 3);
        let got = crema_steps(c.name, c.text, 3);
        assert_close(c.name, &got, &want);
        // The comparison means something only if both parameters moved well beyond the tolerance.
        let last = want[2];
        assert!(
            (last[0] - W0).abs() > 1e-3 * W0.abs() && (last[1] - B0).abs() > 1e-3 * B0.abs(),
            "{}: the parameters barely moved: {want:?}",
            c.name
        );
        report.push(format!("{}: {:?}", c.name, got));
    }
    println!("{}", report.join("\n"));
}

fn assert_close(name: &str, got: &[[f64; 2]], want: &[[f64; 2]]) {
    for (step, (g, w)) in got.iter().zip(want).enumerate() {
        for k in 0..2 {
            let rel = (g[k] - w[k]).abs() / w[k].abs();
            assert!(
                rel <= 1e-6,
                "{name} step {}: {} = {} but the reference gives {} (relative error {rel:e})\ncrema {got:?}\nwant  {want:?}",
                step + 1,
                ["w", "b"][k],
                g[k],
                w[k]
            );
        }
    }
}

/// crema's extensions: `min_lr` floors the policy's rate, then the first `warmup` iterations scale
/// it by (i + 1) / warmup. Step policy 0.1, 0.1, 0.05 -> floored 0.1, 0.1, 0.06 -> warmed up
/// 0.1/3, 0.2/3, 0.06.
#[test]
fn warmup_and_min_lr_set_the_rate_of_each_step() {
    let sgd = &CASES[0];
    let text = format!("{} warmup: 3 min_lr: 0.06", sgd.text);
    let got = crema_steps("SGD warmup", &text, 3);
    let rates = [0.1 / 3.0, 0.2 / 3.0, 0.06];
    let want = reference_with_rates(sgd, 3, |i| rates[i as usize]);
    assert_close("SGD with warmup and min_lr", &got, &want);
    assert_ne!(got, crema_steps("SGD", sgd.text, 3));
}

/// crema's net-level `precision` field parses, and the CPU engine (always fp32) ignores it.
#[test]
fn the_precision_field_leaves_cpu_training_alone() {
    let sgd = &CASES[0];
    for p in ["TF32", "STRICT_FP32"] {
        let net = format!("precision: {p} {NET}");
        assert_eq!(
            crema_steps_of("SGD", sgd.text, &net, 3),
            crema_steps("SGD", sgd.text, 3),
            "{p}"
        );
    }
}

/// The legacy `solver_type` enum selects the same rules as `type`.
#[test]
fn legacy_solver_type_gives_the_same_steps() {
    for (c, legacy) in CASES.iter().zip([
        "SGD", "SGD", "NESTEROV", "ADAGRAD", "RMSPROP", "ADADELTA", "ADAM",
    ]) {
        let by_type = crema_steps(c.name, c.text, 3);
        // Drop `type: "..."`, keep the rest.
        let rest = c.text.splitn(3, ' ').nth(2).unwrap();
        let legacy_text = format!("solver_type: {legacy} {rest}");
        assert_eq!(crema_steps(c.name, &legacy_text, 3), by_type, "{}", c.name);
    }
}
