//! The ImageNet reference nets in `models/` (caffenet, vgg16, googlenet, resnet50): each deploy
//! and train_val net builds, its shapes and parameter counts are the published ones, its solver
//! points at its own train_val, and ResNet-50 (the one with layer types no other net here has)
//! trains a step.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `crema <args>` in the repository root; (success, stdout + stderr).
fn crema(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_crema"))
        .args(args)
        .env("CREMA_LOG", "warn")
        .current_dir(root())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The cells of `layer`'s row in inspect's table after its `bottoms -> tops` cell: top shapes,
/// then params, MACs/image and activations. (Lines before the table, such as the note on a data
/// layer standing in as an Input, have no arrow.)
fn row<'a>(text: &'a str, layer: &str) -> Vec<&'a str> {
    let cells = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cells| cells.first() == Some(&layer) && cells.contains(&"->"))
        .unwrap_or_else(|| panic!("no row for `{layer}`:\n{text}"));
    let arrow = cells.iter().position(|c| *c == "->").unwrap();
    cells[arrow + 2..].to_vec()
}

struct Model {
    name: &'static str,
    /// Learnable parameters `crema inspect` prints for deploy.prototxt and for train_val.prototxt.
    deploy_params: &'static str,
    train_val_params: &'static str,
    /// The batch of the TRAIN Data layer.
    train_batch: usize,
    /// (layer, top shape of one image) as Caffe computes them.
    shapes: &'static [(&'static str, &'static str)],
}

const MODELS: &[Model] = &[
    Model {
        name: "caffenet",
        deploy_params: "60,965,224",
        train_val_params: "60,965,224",
        train_batch: 256,
        shapes: &[
            ("conv1", "96x55x55"),
            ("pool1", "96x27x27"),
            ("conv2", "256x27x27"),
            ("pool2", "256x13x13"),
            ("conv5", "256x13x13"),
            ("pool5", "256x6x6"),
            ("fc6", "4096"),
            ("fc7", "4096"),
            ("fc8", "1000"),
        ],
    },
    Model {
        name: "vgg16",
        // 138,357,544: the VGG-16 (configuration D) count.
        deploy_params: "138,357,544",
        train_val_params: "138,357,544",
        train_batch: 64,
        shapes: &[
            ("conv1_2", "64x224x224"),
            ("pool1", "64x112x112"),
            ("conv3_3", "256x56x56"),
            ("conv5_3", "512x14x14"),
            ("pool5", "512x7x7"),
            ("fc6", "4096"),
            ("fc8", "1000"),
        ],
    },
    Model {
        name: "googlenet",
        // train_val adds the two auxiliary classifiers (3,188,840 + 3,190,888).
        deploy_params: "6,998,552",
        train_val_params: "13,378,280",
        train_batch: 32,
        shapes: &[
            ("conv1/7x7_s2", "64x112x112"),
            ("inception_3a/output", "256x28x28"),
            ("inception_4e/output", "832x14x14"),
            ("inception_5b/output", "1024x7x7"),
            ("pool5/7x7_s1", "1024x1x1"),
            ("loss3/classifier", "1000"),
        ],
    },
    Model {
        name: "resnet50",
        // 25,557,096 learned (the usual 25,557,032 plus conv1's 64 biases, as in KaimingHe's
        // prototxt) + 53,173 BatchNorm statistics (2 x 26,560 channels + 53 scale factors), which
        // are blobs of the net but have lr_mult 0.
        deploy_params: "25,610,269",
        train_val_params: "25,610,269",
        train_batch: 64,
        shapes: &[
            ("conv1", "64x112x112"),
            ("pool1", "64x56x56"),
            ("res2c", "256x56x56"),
            ("res3a_branch1", "512x28x28"),
            ("res3d", "512x28x28"),
            ("res4f", "1024x14x14"),
            ("res5c", "2048x7x7"),
            ("pool5", "2048x1x1"),
            ("fc1000", "1000"),
        ],
    },
];

fn check(m: &Model) {
    let dir = format!("models/{}", m.name);
    let deploy = format!("{dir}/deploy.prototxt");
    let (ok, text) = crema(&["inspect", &deploy]);
    assert!(ok, "crema inspect {deploy}:\n{text}");
    assert!(
        text.contains(&format!("learnable parameters: {} ", m.deploy_params)),
        "{deploy}: want {} learnable parameters\n{text}",
        m.deploy_params
    );
    for (layer, shape) in m.shapes {
        let cells = row(&text, layer);
        assert_eq!(
            cells[0],
            format!("1x{shape}"),
            "{deploy} {layer}: {cells:?}"
        );
    }
    // The deploy net ends in a 1,000-way softmax.
    assert_eq!(row(&text, "prob")[0], "1x1000", "{deploy}");

    let train_val = format!("{dir}/train_val.prototxt");
    for (phase, batch) in [("TRAIN", m.train_batch), ("TEST", 50)] {
        let (ok, text) = crema(&["inspect", "--no-data", "--phase", phase, &train_val]);
        assert!(ok, "crema inspect --phase {phase} {train_val}:\n{text}");
        assert!(
            text.contains(&format!("learnable parameters: {} ", m.train_val_params)),
            "{train_val} {phase}: want {} learnable parameters\n{text}",
            m.train_val_params
        );
        assert_eq!(
            row(&text, "data")[..2],
            [
                format!(
                    "{batch}x3x{0}x{0}",
                    if m.name == "caffenet" { 227 } else { 224 }
                ),
                batch.to_string()
            ],
            "{train_val} {phase}"
        );
    }
    // The Data layers read the ImageNet LMDBs made once under models/caffenet/.
    let net = std::fs::read_to_string(root().join(&train_val)).unwrap();
    for lmdb in [
        "models/caffenet/ilsvrc12_train_lmdb",
        "models/caffenet/ilsvrc12_val_lmdb",
    ] {
        assert!(
            net.contains(&format!("source: \"{lmdb}\"")),
            "{train_val}: no {lmdb}"
        );
    }

    // The solver trains this folder's train_val and snapshots into the folder.
    let solver = crema_proto::read_solver_text(&root().join(&dir).join("solver.prototxt")).unwrap();
    assert_eq!(solver.net(), train_val);
    assert!(
        solver.snapshot_prefix().starts_with(&format!("{dir}/")),
        "{}",
        solver.snapshot_prefix()
    );
    assert!(root().join(&dir).join("readme.md").exists());
}

#[test]
fn caffenet_builds_with_caffes_shapes() {
    check(&MODELS[0]);
}

#[test]
fn vgg16_builds_with_caffes_shapes() {
    check(&MODELS[1]);
}

#[test]
fn googlenet_builds_with_caffes_shapes() {
    check(&MODELS[2]);
}

#[test]
fn resnet50_builds_with_caffes_shapes() {
    check(&MODELS[3]);
}

/// Training steps of ResNet-50 at batch 1 on synthetic data: its BatchNorm (in TRAIN mode), Scale
/// and Eltwise layers forward and backward in a real net. (The layer types of the other three
/// have gradient checks of their own, and a step of CaffeNet or VGG-16 is slow in a debug build.)
#[test]
fn a_resnet50_training_step_runs() {
    let path = "models/resnet50/deploy.prototxt";
    let arg = format!("{path}:1");
    let (ok, text) = crema(&["bench", "--iterations", "1", &arg]);
    assert!(ok, "crema bench {arg}:\n{text}");
    // The table's row: net, batch, forward ms, train step ms, ... (cells split by spaces or `|`).
    let cells: Vec<&str> = text
        .lines()
        .map(|l| {
            l.split(|c: char| c == '|' || c.is_whitespace())
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        })
        .find(|c| c.first() == Some(&path))
        .unwrap_or_else(|| panic!("no row for {path}:\n{text}"));
    assert_eq!(cells[1], "1", "{cells:?}");
    for ms in &cells[2..4] {
        let v: f64 = ms.parse().unwrap_or_else(|_| panic!("{cells:?}"));
        assert!(v.is_finite() && v > 0.0, "{cells:?}");
    }
}
