//! A Convolution, BatchNorm or Eltwise SUM applies the in-place activation after it in its own
//! forward pass (the net skips the activation layer's forward) and, for a ReLU, in its backward
//! pass too; a BatchNorm runs the in-place Scale after it (both passes): the loss and every
//! gradient must be what the same net gives with those layers written out of place, where
//! nothing is fused.

use crema::engine::{CpuEngine, Engine};
use crema::layers::Phase;
use crema::net::{Net, State};
use crema_proto::caffe::NetParameter;
use std::rc::Rc;

/// The test net (no bias right before a BatchNorm, which cancels it: its gradient would be
/// rounding noise); `in_place` writes each activation and Scale over its bottom (as Caffe nets
/// do), else into a blob of its own.
fn net_text(in_place: bool) -> String {
    let layer = |name: &str, kind: &str, bottom: &str, extra: &str| {
        let top = if in_place {
            bottom.to_string()
        } else {
            format!("{name}_out")
        };
        (
            format!(
                r#"layer {{ name: "{name}" type: "{kind}" bottom: "{bottom}" top: "{top}" {extra} }}"#
            ),
            top,
        )
    };
    let act = |name: &str, kind: &str, bottom: &str| layer(name, kind, bottom, "");
    let scale = |name: &str, bottom: &str| {
        layer(
            name,
            "Scale",
            bottom,
            r#"scale_param { bias_term: true filler { type: "uniform" min: 0.5 max: 1.5 }
                bias_filler { type: "uniform" min: -0.5 max: 0.5 } }"#,
        )
    };
    let (relu1, a1) = act("relu1", "ReLU", "conv1");
    let (relu2, a2) = act("relu2", "ReLU", "pool2");
    let (sig3, a3) = act("sig3", "Sigmoid", "conv3");
    let (relu4, a4) = act("relu4", "ReLU", "conv4");
    let (scale5, a5) = scale("scale5", "bn5");
    let (relu5, a5) = act("relu5", "ReLU", &a5);
    let (scale6, a6) = scale("scale6", "conv6");
    let (relu6, a6) = act("relu6", "ReLU", &a6);
    let (relu7, a7) = act("relu7", "ReLU", "sum7");
    format!(
        r#"name: "fusion"
layer {{ name: "in" type: "Input" top: "data" top: "label"
  input_param {{ shape {{ dim: 4 dim: 3 dim: 9 dim: 9 }} shape {{ dim: 4 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 6 kernel_size: 3 pad: 1
    weight_filler {{ type: "gaussian" std: 0.3 }} bias_filler {{ type: "uniform" min: -0.5 max: 0.5 }} }} }}
{relu1}
layer {{ name: "conv2" type: "Convolution" bottom: "{a1}" top: "conv2"
  convolution_param {{ num_output: 5 kernel_size: 3 weight_filler {{ type: "gaussian" std: 0.3 }}
    bias_filler {{ type: "uniform" min: -0.5 max: 0.5 }} }} }}
layer {{ name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 1 }} }}
{relu2}
layer {{ name: "conv3" type: "Convolution" bottom: "{a2}" top: "conv3"
  convolution_param {{ num_output: 4 kernel_size: 3 bias_term: false weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
{sig3}
layer {{ name: "conv4" type: "Convolution" bottom: "{a3}" top: "conv4"
  convolution_param {{ num_output: 4 kernel_size: 1 bias_term: false weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
{relu4}
layer {{ name: "bn5" type: "BatchNorm" bottom: "{a4}" top: "bn5" }}
{scale5}
{relu5}
layer {{ name: "conv6" type: "Convolution" bottom: "{a5}" top: "conv6"
  convolution_param {{ num_output: 4 kernel_size: 1 bias_term: false weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "bn6" type: "BatchNorm" bottom: "conv6" top: "conv6" }}
{scale6}
{relu6}
layer {{ name: "sum7" type: "Eltwise" bottom: "{a6}" bottom: "{a5}" top: "sum7"
  eltwise_param {{ operation: SUM coeff: 1 coeff: -0.5 }} }}
{relu7}
layer {{ name: "ip" type: "InnerProduct" bottom: "{a7}" top: "ip"
  inner_product_param {{ num_output: 3 weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
"#
    )
}

/// Loss, input gradient and every parameter gradient after one forward and backward pass, from
/// weights drawn with a fixed seed.
fn pass(in_place: bool, engine: Rc<dyn Engine>) -> (Net, Vec<Vec<f32>>) {
    let p: NetParameter =
        crema_proto::parse_text(&net_text(in_place), "test", "caffe.NetParameter").unwrap();
    crema::rng::seed(5);
    let mut param = p.clone();
    param.force_backward = Some(true);
    let mut net = Net::new(&param, &State::phase(Phase::Train), engine.clone()).unwrap();
    let data: Vec<f32> = (0..4 * 3 * 81)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    net.blob("data").unwrap().set_data(&*engine, &data);
    net.blob("label")
        .unwrap()
        .set_data(&*engine, &[0.0, 2.0, 1.0, 2.0]);
    let loss = net.forward().unwrap();
    net.clear_param_diffs();
    net.backward().unwrap();
    let mut out = vec![vec![loss], net.blob("data").unwrap().diff_to_vec(&*engine)];
    for prm in net.params() {
        out.push(prm.blob.diff_to_vec(&*engine));
    }
    (net, out)
}

fn absorbed(net: &Net) -> Vec<&str> {
    net.layers()
        .iter()
        .filter(|l| l.fused != crema::net::Fused::No)
        .map(|l| l.name.as_str())
        .collect()
}

/// Compares the fused and unfused passes on `engine`, exactly or within `tol` (relative).
pub fn compare(engine: Rc<dyn Engine>, tol: f32) {
    let (fused, a) = pass(true, engine.clone());
    let (plain, b) = pass(false, engine);
    // relu2 follows a pooling layer, which does not take activations.
    assert_eq!(
        absorbed(&fused),
        ["relu1", "sig3", "relu4", "scale5", "relu5", "scale6", "relu6", "relu7"]
    );
    assert!(absorbed(&plain).is_empty());
    // Every ReLU's backward pass runs in its producer's; the Sigmoid's runs on its own.
    let forward_only: Vec<&str> = fused
        .layers()
        .iter()
        .filter(|l| l.fused == crema::net::Fused::Forward)
        .map(|l| l.name.as_str())
        .collect();
    assert_eq!(forward_only, ["sig3"]);
    assert!(a[0][0].is_finite() && a[0][0] > 0.0, "loss {}", a[0][0]);
    assert!(
        a[1].iter().any(|v| *v != 0.0),
        "no gradient reached the input"
    );
    // Relative to each output's largest value: near-cancelling BatchNorm gradients differ in
    // their last bits when the engine folds γ in after summing instead of before.
    let mut failed = vec![];
    for (k, (x, y)) in a.iter().zip(&b).enumerate() {
        assert_eq!(x.len(), y.len());
        let big = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let floor = (big * 1e-2).max(1e-30);
        let (mut worst, mut at) = (0f32, 0);
        for (i, (u, v)) in x.iter().zip(y).enumerate() {
            let err = (u - v).abs() / u.abs().max(v.abs()).max(floor);
            if err > worst || err.is_nan() {
                (worst, at) = (err, i);
            }
        }
        println!("output {k}: max |value| {big:.3e}, worst relative difference {worst:.2e}");
        if worst.is_nan() || worst > tol {
            failed.push(format!(
                "output {k} (0 loss, 1 input gradient, then parameter gradients), element {at}: fused {}, unfused {}",
                x[at], y[at]
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("; "));
}

#[test]
fn fused_activations_change_nothing_on_the_cpu() {
    compare(Rc::new(CpuEngine::new()), 0.0);
}

/// A fused net's caffemodel holds every layer's blobs under the layer's own name, so a net that
/// fuses nothing reads it unchanged (and the other way round).
#[test]
fn fused_nets_write_and_read_the_same_caffemodel() {
    let engine: Rc<dyn Engine> = Rc::new(CpuEngine::new());
    let (fused, _) = pass(true, engine.clone());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fused.caffemodel");
    fused.save_caffemodel(&path).unwrap();
    let (mut plain, _) = pass(false, engine.clone());
    for p in plain.params() {
        let n = p.blob.count();
        p.blob.set_data(&*engine, &vec![0.5; n]);
    }
    plain.copy_trained_layers_from(&path).unwrap();
    for (a, b) in fused.params().iter().zip(plain.params()) {
        assert_eq!(a.label, b.label);
        assert_eq!(
            a.blob.data_to_vec(&*engine),
            b.blob.data_to_vec(&*engine),
            "{}",
            a.label
        );
    }
    let names: Vec<&str> = fused.params().iter().map(|p| p.label.as_str()).collect();
    assert!(
        names.contains(&"scale5.0") && names.contains(&"bn6.2"),
        "{names:?}"
    );
}

#[cfg(feature = "cuda")]
#[test]
fn fused_activations_change_nothing_on_the_gpu() {
    match crema::engine::cuda::CudaEngine::new(0) {
        Ok(g) => compare(Rc::new(g), 1e-4),
        Err(e) => {
            assert!(
                std::env::var("CREMA_REQUIRE_GPU").as_deref() != Ok("1"),
                "CREMA_REQUIRE_GPU=1 but the CUDA engine cannot start: {e}"
            );
            println!("skipping: no usable GPU: {e}");
        }
    }
}
