//! Legacy Caffe files: V1 nets (text and binary), the consolidated V1 solver with test stages,
//! and `crema upgrade-net` / `upgrade-solver`.

use crema_proto::caffe::v1_layer_parameter::LayerType;
use crema_proto::caffe::{NetParameter, V1LayerParameter};
use std::path::{Path, PathBuf};
use std::process::Command;

fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if p.join("data/mnist/t10k-images-idx3-ubyte.gz").exists() {
        Some(p)
    } else {
        println!("skipping: ../shared/data/mnist is not present");
        None
    }
}

fn crema(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_crema"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "crema {args:?} failed:\n{text}");
    text
}

#[test]
fn consolidated_v1_solver_trains_with_test_stages() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = shared.join("data/mnist");
    let (im, lb) = (
        m.join("t10k-images-idx3-ubyte.gz"),
        m.join("t10k-labels-idx1-ubyte.gz"),
    );
    std::fs::create_dir_all(d.join("examples/mnist")).unwrap();
    for (db, start) in [
        ("examples/mnist/mnist_train_lmdb", "0"),
        ("examples/mnist/mnist_test_lmdb", "8000"),
    ] {
        crema(
            d,
            &[
                "convert-mnist",
                im.to_str().unwrap(),
                lb.to_str().unwrap(),
                db,
                "--start",
                start,
                "--count",
                "2000",
            ],
        );
    }
    let solver = std::fs::read_to_string(
        shared.join("caffe/examples/mnist/lenet_consolidated_solver.prototxt"),
    )
    .unwrap()
    .replace("max_iter: 10000", "max_iter: 100")
    .replace("test_iter: 600", "test_iter: 5")
    .replace("test_iter: 100", "test_iter: 5")
    .replace("test_interval: 500", "test_interval: 100");
    std::fs::write(d.join("solver.prototxt"), solver).unwrap();
    let log = crema(d, &["train", "--solver", "solver.prototxt"]);
    assert!(log.contains("Upgrading V1 net"), "{log}");
    // Two test nets (test-on-test-set, test-on-train-set) run at iteration 100.
    assert!(
        log.contains("Iteration 100, Testing net (#0)")
            && log.contains("Iteration 100, Testing net (#1)"),
        "{log}"
    );

    // upgrade-solver writes the embedded V1 net as it was given (solvers keep nets as data) and
    // the result still parses and trains.
    crema(
        d,
        &[
            "upgrade-solver",
            "solver.prototxt",
            "upgraded_solver.prototxt",
        ],
    );
    let text = std::fs::read_to_string(d.join("upgraded_solver.prototxt")).unwrap();
    assert!(text.contains("test_state"), "{text}");
}

/// The zoo LeNet weights rewritten as a V1 (`layers`) caffemodel.
fn v1_caffemodel(shared: &Path) -> NetParameter {
    let zoo: NetParameter = crema_proto::read_binary(
        &shared.join("zoo/lenet/lenet_iter_10000.caffemodel"),
        "caffe.NetParameter",
    )
    .unwrap();
    let mut v1 = NetParameter {
        name: zoo.name.clone(),
        ..Default::default()
    };
    for l in &zoo.layer {
        let t = match l.r#type() {
            "Convolution" => LayerType::Convolution,
            "InnerProduct" => LayerType::InnerProduct,
            "Pooling" => LayerType::Pooling,
            "ReLU" => LayerType::Relu,
            "Data" => LayerType::Data,
            "SoftmaxWithLoss" => LayerType::SoftmaxLoss,
            "Softmax" => LayerType::Softmax,
            "Accuracy" => LayerType::Accuracy,
            _ => LayerType::None,
        };
        let mut v = V1LayerParameter {
            name: l.name.clone(),
            bottom: l.bottom.clone(),
            top: l.top.clone(),
            blobs: l.blobs.clone(),
            ..Default::default()
        };
        v.set_type(t);
        v1.layers.push(v);
    }
    v1
}

#[test]
fn v1_caffemodel_upgrades_and_scores_the_same() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    crema_proto::write_binary_atomic(&d.join("v1.caffemodel"), &v1_caffemodel(&shared)).unwrap();
    let m = shared.join("data/mnist");
    let (im, lb) = (
        m.join("t10k-images-idx3-ubyte.gz"),
        m.join("t10k-labels-idx1-ubyte.gz"),
    );
    crema(
        d,
        &[
            "convert-mnist",
            im.to_str().unwrap(),
            lb.to_str().unwrap(),
            "db",
            "--count",
            "1000",
        ],
    );
    let net =
        std::fs::read_to_string(shared.join("caffe/examples/mnist/lenet_train_test.prototxt"))
            .unwrap()
            .replace("examples/mnist/mnist_train_lmdb", "db")
            .replace("examples/mnist/mnist_test_lmdb", "db");
    std::fs::write(d.join("net.prototxt"), net).unwrap();
    // Loaded directly (V1 weights are matched by layer name) and after upgrade-net.
    let direct = crema(
        d,
        &[
            "test",
            "--model",
            "net.prototxt",
            "--weights",
            "v1.caffemodel",
            "--iterations",
            "10",
        ],
    );
    crema(d, &["upgrade-net", "v1.caffemodel", "v2.caffemodel"]);
    let up: NetParameter =
        crema_proto::read_binary(&d.join("v2.caffemodel"), "caffe.NetParameter").unwrap();
    assert!(up.layers.is_empty() && up.layer.len() >= 4);
    let upgraded = crema(
        d,
        &[
            "test",
            "--model",
            "net.prototxt",
            "--weights",
            "v2.caffemodel",
            "--iterations",
            "10",
        ],
    );
    let acc = |log: &str| {
        log.lines()
            .find(|l| l.starts_with("accuracy = "))
            .map(|s| s.to_string())
    };
    assert_eq!(acc(&direct), acc(&upgraded));
    let a: f32 = acc(&direct).unwrap()["accuracy = ".len()..]
        .parse()
        .unwrap();
    assert!(a > 0.98, "zoo LeNet through V1 weights: {a}");
}

#[test]
fn v1_text_net_upgrades_to_current_layers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("v1.prototxt"),
        r#"name: "old" input: "data" input_dim: 1 input_dim: 1 input_dim: 8 input_dim: 8
layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2
  convolution_param { num_output: 4 kernel_size: 3 } }
layers { name: "relu" type: RELU bottom: "conv" top: "conv" }
"#,
    )
    .unwrap();
    crema(d, &["upgrade-net", "v1.prototxt", "v2.prototxt"]);
    let up = crema_proto::read_net_text(&d.join("v2.prototxt")).unwrap();
    let types: Vec<&str> = up.layer.iter().map(|l| l.r#type()).collect();
    assert_eq!(types, ["Input", "Convolution", "ReLU"]);
    assert_eq!(up.layer[1].param[1].lr_mult(), 2.0);
    // The upgraded net runs.
    crema(d, &["time", "--model", "v2.prototxt", "--iterations", "1"]);
}
