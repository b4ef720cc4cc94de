//! `crema inspect` on every net BVLC ships (../shared/caffe): each builds wherever crema knows all
//! its layer types, data layers stand in as inputs of their declared shapes, and the shapes and
//! parameter counts are Caffe's.

use std::path::{Path, PathBuf};
use std::process::Command;

fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if p.join("caffe/models").exists() {
        Some(p)
    } else {
        println!("skipping: ../shared/caffe is not present");
        None
    }
}

/// Runs `crema inspect` in `dir`; (success, stdout + stderr).
fn inspect(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_crema"))
        .arg("inspect")
        .args(args)
        .env("CREMA_LOG", "warn")
        .current_dir(dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The layer types of a net (after legacy upgrades) that crema does not build.
fn unsupported_types(path: &Path) -> Vec<String> {
    let net = crema_proto::read_net_text(path).unwrap();
    let net = crema::upgrade::upgrade_net(&net).unwrap();
    let known = crema::layers::layer_types();
    let mut out: Vec<String> = net
        .layer
        .iter()
        .map(|l| l.r#type().to_string())
        .filter(|t| {
            !known.contains(&t.as_str())
                && !crema::net::substitute::DATA_LAYER_TYPES.contains(&t.as_str())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Extra flags a net needs: the data shape of LMDBs that are not here, the stage of a TEST net.
fn extra_flags(file: &str, phase: &str) -> Vec<&'static str> {
    let mut v = vec![];
    if file.contains("cifar10") && file.contains("train_test") {
        v.extend(["--input-shape", "3,32,32"]);
    }
    if file.ends_with("lenet_train_test.prototxt") || file.ends_with("mnist_autoencoder.prototxt") {
        v.extend(["--input-shape", "1,28,28"]);
    }
    if file.ends_with("mnist_siamese_train_test.prototxt") {
        v.extend(["--input-shape", "2,28,28"]);
    }
    if file.ends_with("mnist_autoencoder.prototxt") && phase == "TEST" {
        v.extend(["--stage", "test-on-test"]);
    }
    v
}

fn nets(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            nets(&p, out);
        } else if p.extension().is_some_and(|x| x == "prototxt")
            && !p.to_string_lossy().contains("solver")
        {
            out.push(p);
        }
    }
}

#[test]
fn inspect_builds_every_bvlc_net_crema_has_the_layers_for() {
    let Some(shared) = shared() else { return };
    let caffe = shared.join("caffe");
    let mut files = vec![];
    nets(&caffe, &mut files);
    files.sort();
    assert!(files.len() >= 20, "{files:?}");
    let mut report = vec![];
    for f in &files {
        let rel = f
            .strip_prefix(&caffe)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let missing = unsupported_types(f);
        for phase in ["TRAIN", "TEST"] {
            let mut args = vec![rel.as_str(), "--phase", phase];
            args.extend(extra_flags(&rel, phase));
            let (ok, text) = inspect(&caffe, &args);
            if missing.is_empty() {
                assert!(ok, "crema inspect {args:?} failed:\n{text}");
                assert!(text.contains("learnable parameters: "), "{text}");
                report.push(format!("{rel} {phase}: ok"));
            } else {
                assert!(!ok, "{rel} uses {missing:?} yet inspect succeeded:\n{text}");
                assert!(
                    text.contains(&format!("unknown layer type `{}`", missing[0])),
                    "{rel}: {text}"
                );
                report.push(format!("{rel} {phase}: unsupported {missing:?}"));
            }
        }
    }
    println!("{}", report.join("\n"));
}

/// The cells of `layer`'s row in inspect's table after its `bottoms -> tops` cell: top shapes,
/// then params, MACs/image and activations.
fn row<'a>(text: &'a str, layer: &str) -> Vec<&'a str> {
    let cells = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&layer))
        .unwrap_or_else(|| panic!("no row for `{layer}`:\n{text}"));
    let arrow = cells.iter().position(|c| *c == "->").unwrap();
    cells[arrow + 2..].to_vec()
}

#[test]
fn caffenet_and_googlenet_shapes_match_caffe() {
    let Some(shared) = shared() else { return };
    let models = shared.join("caffe/models");
    // (net, layer, top shape of one image), as Caffe's log prints them.
    let expected = [
        ("bvlc_reference_caffenet", "conv1", "96x55x55"),
        ("bvlc_reference_caffenet", "pool1", "96x27x27"),
        ("bvlc_reference_caffenet", "conv2", "256x27x27"),
        ("bvlc_reference_caffenet", "pool2", "256x13x13"),
        ("bvlc_reference_caffenet", "conv3", "384x13x13"),
        ("bvlc_reference_caffenet", "conv5", "256x13x13"),
        ("bvlc_reference_caffenet", "pool5", "256x6x6"),
        ("bvlc_reference_caffenet", "fc6", "4096"),
        ("bvlc_reference_caffenet", "fc8", "1000"),
        ("bvlc_googlenet", "inception_3a/output", "256x28x28"),
        ("bvlc_googlenet", "inception_3b/output", "480x28x28"),
        ("bvlc_googlenet", "inception_4a/output", "512x14x14"),
        ("bvlc_googlenet", "inception_4e/output", "832x14x14"),
        ("bvlc_googlenet", "inception_5b/output", "1024x7x7"),
        ("bvlc_googlenet", "pool5/7x7_s1", "1024x1x1"),
    ];
    // Deploy nets take 10 images; train_val nets (data layers replaced) their TEST batch of 50.
    for (file, batch) in [("deploy.prototxt", 10), ("train_val.prototxt", 50)] {
        let mut outputs = std::collections::HashMap::new();
        for net in ["bvlc_reference_caffenet", "bvlc_googlenet"] {
            let (ok, text) = inspect(&models, &[&format!("{net}/{file}"), "--no-data"]);
            assert!(ok, "{text}");
            outputs.insert(net, text);
        }
        for (net, layer, shape) in expected {
            let cells = row(&outputs[net], layer);
            let want = format!("{batch}x{shape}");
            assert!(
                cells.contains(&want.as_str()),
                "{net}/{file} {layer}: want {want}, row {cells:?}"
            );
        }
        // Learnable parameters as in BVLC's released caffemodels; GoogLeNet's train_val adds the
        // two auxiliary classifiers (loss1, loss2: 3,188,840 + 3,190,888).
        let googlenet = if file == "deploy.prototxt" {
            "6,998,552"
        } else {
            "13,378,280"
        };
        for (net, params) in [
            ("bvlc_reference_caffenet", "60,965,224"),
            ("bvlc_googlenet", googlenet),
        ] {
            let want = format!("learnable parameters: {params} ");
            assert!(
                outputs[net].contains(&want),
                "{net}/{file}: want {want}\n{}",
                outputs[net]
            );
        }
    }
    // conv2 of CaffeNet has two groups: 256·27·27 outputs × 48·5·5 inputs each.
    let (_, text) = inspect(&models, &["bvlc_reference_caffenet/deploy.prototxt"]);
    assert_eq!(
        row(&text, "conv2")[..3],
        ["10x256x27x27", "307,456", "223,948,800"],
        "{text}"
    );
}

#[test]
fn zoo_lenet_parameter_count_equals_its_caffemodel() {
    let Some(shared) = shared() else { return };
    let zoo = shared.join("zoo/lenet");
    let (ok, text) = inspect(
        &zoo,
        &["lenet.prototxt", "--weights", "lenet_iter_10000.caffemodel"],
    );
    assert!(ok, "{text}");
    // 20·1·5·5+20 + 50·20·5·5+50 + 500·800+500 + 10·500+10
    assert!(text.contains("learnable parameters: 431,080 "), "{text}");
    assert!(
        text.contains("lenet_iter_10000.caffemodel: 431,080 values loaded"),
        "{text}"
    );
    assert_eq!(
        row(&text, "conv2")[..3],
        ["64x50x8x8", "25,050", "1,600,000"],
        "{text}"
    );
}

#[test]
fn a_data_layer_of_unknown_size_asks_for_input_shape() {
    let Some(shared) = shared() else { return };
    let (ok, text) = inspect(
        &shared.join("caffe"),
        &["examples/mnist/lenet_train_test.prototxt"],
    );
    assert!(!ok);
    assert!(text.contains("--input-shape 100,3,32,32"), "{text}");
    let (ok, text) = inspect(
        &shared.join("caffe"),
        &[
            "examples/mnist/lenet_train_test.prototxt",
            "--input-shape",
            "1,28,28",
        ],
    );
    assert!(ok, "{text}");
    assert_eq!(row(&text, "mnist")[..2], ["100x1x28x28", "100"], "{text}");
    assert_eq!(
        row(&text, "ip1")[..3],
        ["100x500", "400,500", "400,000"],
        "{text}"
    );
}
