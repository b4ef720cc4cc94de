//! The top shapes `crema inspect` reports for every net BVLC ships (../shared/caffe), against a
//! table worked out by hand from the prototxts with Caffe's rules:
//!
//! * Convolution: out = floor((in + 2·pad − kernel) / stride) + 1
//! * Pooling: out = ceil((in + 2·pad − kernel) / stride) + 1, minus one when pad > 0 and the last
//!   window would start at or past in + pad (Caffe's clip)
//! * InnerProduct: N × num_output; losses and Accuracy: scalars
//!
//! The spatial chains, worked once:
//!
//! * MNIST 28: conv k5 → 24, pool k2 s2 → ceil(22/2)+1 = 12, conv k5 → 8, pool → ceil(6/2)+1 = 4
//! * CIFAR 32: conv k5 p2 → 32, pool k3 s2 → ceil(29/2)+1 = 16, conv → 16, pool → ceil(13/2)+1
//!   = 8, conv → 8, pool → ceil(5/2)+1 = 4
//! * AlexNet/CaffeNet 227: conv1 k11 s4 → floor(216/4)+1 = 55, pool k3 s2 → ceil(52/2)+1 = 27,
//!   conv2 k5 p2 → 27, pool → ceil(24/2)+1 = 13, conv3-5 k3 p1 → 13, pool5 → ceil(10/2)+1 = 6
//! * GoogLeNet 224: conv1 k7 s2 p3 → floor(223/2)+1 = 112, pool k3 s2 → ceil(109/2)+1 = 56,
//!   conv2 → 56, pool → ceil(53/2)+1 = 28; inception pools k3 s1 p1 keep the size (no clip:
//!   (28−1)·1 < 28+1); pool3 → ceil(25/2)+1 = 14, pool4 → ceil(11/2)+1 = 7, pool5 k7 s1 → 1;
//!   the auxiliary AVE pools k5 s3 on 14 → ceil(9/3)+1 = 4.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if p.join("caffe/models").exists() && p.join("caffe/examples").exists() {
        Some(p)
    } else {
        println!("skipping: ../shared/caffe is not present");
        None
    }
}

/// One net file in one phase, with the shapes of its tops for ONE image (the batch is
/// prepended): "" is a per-image scalar such as a label (shape `N`), "scalar" a 0-axis blob.
struct Case {
    file: &'static str,
    phase: &'static str,
    flags: &'static [&'static str],
    batch: usize,
    shapes: Vec<(String, String)>,
    /// Whether `shapes` names every top of the net (else only the key blobs).
    complete: bool,
}

/// (top, per-image shape) rows.
type Table = &'static [(&'static str, &'static str)];

fn owned(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(b, s)| (b.to_string(), s.to_string()))
        .collect()
}

const LENET: &[(&str, &str)] = &[
    ("conv1", "20x24x24"),
    ("pool1", "20x12x12"),
    ("conv2", "50x8x8"),
    ("pool2", "50x4x4"),
    ("ip1", "500"),
    ("ip2", "10"),
];

/// The siamese twin of LeNet: the same chain with `_p` names, and a 2-d feature.
const SIAMESE_P: &[(&str, &str)] = &[
    ("conv1_p", "20x24x24"),
    ("pool1_p", "20x12x12"),
    ("conv2_p", "50x8x8"),
    ("pool2_p", "50x4x4"),
    ("ip1_p", "500"),
    ("ip2_p", "10"),
    ("feat_p", "2"),
];

const AUTOENCODER: &[(&str, &str)] = &[
    ("data", "1x28x28"),
    ("flatdata", "784"),
    ("encode1", "1000"),
    ("encode1neuron", "1000"),
    ("encode2", "500"),
    ("encode2neuron", "500"),
    ("encode3", "250"),
    ("encode3neuron", "250"),
    ("encode4", "30"),
    ("decode4", "250"),
    ("decode4neuron", "250"),
    ("decode3", "500"),
    ("decode3neuron", "500"),
    ("decode2", "1000"),
    ("decode2neuron", "1000"),
    ("decode1", "784"),
    ("decode1neuron", "784"),
    ("cross_entropy_loss", "scalar"),
    ("l2_error", "scalar"),
];

/// conv1 → pool1 → conv2 → pool2 → conv3 → pool3, shared by every CIFAR-10 net.
const CIFAR_TRUNK: &[(&str, &str)] = &[
    ("data", "3x32x32"),
    ("conv1", "32x32x32"),
    ("pool1", "32x16x16"),
    ("conv2", "32x16x16"),
    ("pool2", "32x8x8"),
    ("conv3", "64x8x8"),
    ("pool3", "64x4x4"),
];

/// AlexNet's order (LRN before pooling) from conv1 to fc7.
const ALEXNET: &[(&str, &str)] = &[
    ("data", "3x227x227"),
    ("conv1", "96x55x55"),
    ("norm1", "96x55x55"),
    ("pool1", "96x27x27"),
    ("conv2", "256x27x27"),
    ("norm2", "256x27x27"),
    ("pool2", "256x13x13"),
    ("conv3", "384x13x13"),
    ("conv4", "384x13x13"),
    ("conv5", "256x13x13"),
    ("pool5", "256x6x6"),
    ("fc6", "4096"),
    ("fc7", "4096"),
];

/// CaffeNet's order (pooling before LRN), shared by R-CNN and Flickr style, conv1 to fc7.
const CAFFENET: &[(&str, &str)] = &[
    ("data", "3x227x227"),
    ("conv1", "96x55x55"),
    ("pool1", "96x27x27"),
    ("norm1", "96x27x27"),
    ("conv2", "256x27x27"),
    ("pool2", "256x13x13"),
    ("norm2", "256x13x13"),
    ("conv3", "384x13x13"),
    ("conv4", "384x13x13"),
    ("conv5", "256x13x13"),
    ("pool5", "256x6x6"),
    ("fc6", "4096"),
    ("fc7", "4096"),
];

/// GoogLeNet before the first inception module.
const GOOGLENET_STEM: &[(&str, &str)] = &[
    ("data", "3x224x224"),
    ("conv1/7x7_s2", "64x112x112"),
    ("pool1/3x3_s2", "64x56x56"),
    ("pool1/norm1", "64x56x56"),
    ("conv2/3x3_reduce", "64x56x56"),
    ("conv2/3x3", "192x56x56"),
    ("conv2/norm2", "192x56x56"),
    ("pool2/3x3_s2", "192x28x28"),
    ("pool3/3x3_s2", "480x14x14"),
    ("pool4/3x3_s2", "832x7x7"),
    ("pool5/7x7_s1", "1024x1x1"),
    ("loss3/classifier", "1000"),
];

/// Each inception module: (name, input channels, size, [1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5,
/// pool_proj] num_output, output channels = 1x1 + 3x3 + 5x5 + pool_proj).
const INCEPTION: [(&str, usize, usize, [usize; 6], usize); 9] = [
    ("inception_3a", 192, 28, [64, 96, 128, 16, 32, 32], 256),
    ("inception_3b", 256, 28, [128, 128, 192, 32, 96, 64], 480),
    ("inception_4a", 480, 14, [192, 96, 208, 16, 48, 64], 512),
    ("inception_4b", 512, 14, [160, 112, 224, 24, 64, 64], 512),
    ("inception_4c", 512, 14, [128, 128, 256, 24, 64, 64], 512),
    ("inception_4d", 512, 14, [112, 144, 288, 32, 64, 64], 528),
    ("inception_4e", 528, 14, [256, 160, 320, 32, 128, 128], 832),
    ("inception_5a", 832, 7, [256, 160, 320, 32, 128, 128], 832),
    ("inception_5b", 832, 7, [384, 192, 384, 48, 128, 128], 1024),
];

/// The auxiliary classifiers of GoogLeNet's train_val (on inception_4a and inception_4d).
const GOOGLENET_AUX: &[(&str, &str)] = &[
    ("loss1/ave_pool", "512x4x4"),
    ("loss1/conv", "128x4x4"),
    ("loss1/fc", "1024"),
    ("loss1/classifier", "1000"),
    ("loss1/loss1", "scalar"),
    ("loss2/ave_pool", "528x4x4"),
    ("loss2/conv", "128x4x4"),
    ("loss2/fc", "1024"),
    ("loss2/classifier", "1000"),
    ("loss2/loss2", "scalar"),
    ("loss3/loss3", "scalar"),
];

fn googlenet_inceptions() -> Vec<(String, String)> {
    let mut v = vec![];
    for (m, in_c, hw, c, out) in INCEPTION {
        // The table must add up: the Concat stacks 1x1, 3x3, 5x5 and pool_proj.
        assert_eq!(
            c[0] + c[2] + c[4] + c[5],
            out,
            "{m}: the table does not add up"
        );
        for (branch, ch) in [
            ("1x1", c[0]),
            ("3x3_reduce", c[1]),
            ("3x3", c[2]),
            ("5x5_reduce", c[3]),
            ("5x5", c[4]),
            ("pool", in_c),
            ("pool_proj", c[5]),
            ("output", out),
        ] {
            v.push((format!("{m}/{branch}"), format!("{ch}x{hw}x{hw}")));
        }
    }
    v
}

fn cases() -> Vec<Case> {
    let cat = |parts: &[&[(&str, &str)]]| -> Vec<(String, String)> {
        parts.iter().flat_map(|p| owned(p)).collect()
    };
    let mnist = &["--input-shape", "1,28,28"][..];
    let cifar = &["--input-shape", "3,32,32"][..];
    let siamese = &["--input-shape", "2,28,28"][..];
    let mut v = vec![];
    // MNIST
    v.push(Case {
        file: "examples/mnist/lenet.prototxt",
        phase: "TEST",
        flags: &[],
        batch: 64,
        shapes: cat(&[&[("data", "1x28x28")], LENET, &[("prob", "10")]]),
        complete: true,
    });
    for (phase, batch) in [("TRAIN", 64), ("TEST", 100)] {
        let mut shapes = cat(&[
            &[("data", "1x28x28"), ("label", "")],
            LENET,
            &[("loss", "scalar")],
        ]);
        if phase == "TEST" {
            shapes.push(("accuracy".into(), "scalar".into()));
        }
        v.push(Case {
            file: "examples/mnist/lenet_train_test.prototxt",
            phase,
            flags: mnist,
            batch,
            shapes,
            complete: true,
        });
    }
    v.push(Case {
        file: "examples/mnist/mnist_autoencoder.prototxt",
        phase: "TRAIN",
        flags: mnist,
        batch: 100,
        shapes: owned(AUTOENCODER),
        complete: true,
    });
    v.push(Case {
        file: "examples/mnist/mnist_autoencoder.prototxt",
        phase: "TEST",
        flags: &["--input-shape", "1,28,28", "--stage", "test-on-test"],
        batch: 100,
        shapes: owned(AUTOENCODER),
        complete: true,
    });
    // Siamese
    v.push(Case {
        file: "examples/siamese/mnist_siamese.prototxt",
        phase: "TEST",
        flags: &[],
        batch: 10000,
        shapes: cat(&[&[("data", "1x28x28")], LENET, &[("feat", "2")]]),
        complete: true,
    });
    for (phase, batch) in [("TRAIN", 64), ("TEST", 100)] {
        v.push(Case {
            file: "examples/siamese/mnist_siamese_train_test.prototxt",
            phase,
            flags: siamese,
            batch,
            shapes: cat(&[
                &[
                    ("pair_data", "2x28x28"),
                    ("sim", ""),
                    ("data", "1x28x28"),
                    ("data_p", "1x28x28"),
                ],
                LENET,
                &[("feat", "2")],
                SIAMESE_P,
                &[("loss", "scalar")],
            ]),
            complete: true,
        });
    }
    // CIFAR-10
    v.push(Case {
        file: "examples/cifar10/cifar10_quick.prototxt",
        phase: "TEST",
        flags: &[],
        batch: 1,
        shapes: cat(&[CIFAR_TRUNK, &[("ip1", "64"), ("ip2", "10"), ("prob", "10")]]),
        complete: true,
    });
    v.push(Case {
        file: "examples/cifar10/cifar10_full.prototxt",
        phase: "TEST",
        flags: &[],
        batch: 1,
        shapes: cat(&[
            CIFAR_TRUNK,
            &[
                ("norm1", "32x16x16"),
                ("norm2", "32x8x8"),
                ("ip1", "10"),
                ("prob", "10"),
            ],
        ]),
        complete: true,
    });
    // (file, TRAIN batch, TEST batch, tops beyond the trunk)
    let train_test: [(&str, usize, usize, Table); 4] = [
        (
            "examples/cifar10/cifar10_quick_train_test.prototxt",
            100,
            100,
            &[("ip1", "64"), ("ip2", "10")],
        ),
        (
            "examples/cifar10/cifar10_full_train_test.prototxt",
            100,
            100,
            &[("norm1", "32x16x16"), ("norm2", "32x8x8"), ("ip1", "10")],
        ),
        (
            "examples/cifar10/cifar10_full_sigmoid_train_test.prototxt",
            111,
            1000,
            &[
                ("Sigmoid1", "32x16x16"),
                ("Sigmoid2", "32x16x16"),
                ("Sigmoid3", "64x8x8"),
                ("ip1", "10"),
            ],
        ),
        (
            "examples/cifar10/cifar10_full_sigmoid_train_test_bn.prototxt",
            100,
            1000,
            &[
                ("bn1", "32x16x16"),
                ("Sigmoid1", "32x16x16"),
                ("bn2", "32x16x16"),
                ("Sigmoid2", "32x16x16"),
                ("bn3", "64x8x8"),
                ("Sigmoid3", "64x8x8"),
                ("ip1", "10"),
            ],
        ),
    ];
    for (file, train_batch, test_batch, extra) in train_test {
        for (phase, batch) in [("TRAIN", train_batch), ("TEST", test_batch)] {
            let mut shapes = cat(&[CIFAR_TRUNK, extra, &[("label", ""), ("loss", "scalar")]]);
            if phase == "TEST" {
                shapes.push(("accuracy".into(), "scalar".into()));
            }
            v.push(Case {
                file,
                phase,
                flags: cifar,
                batch,
                shapes,
                complete: true,
            });
        }
    }
    // ImageNet models: deploy nets take 10 images; train_val nets are checked in their TEST phase
    // (batch 50; Flickr style's ImageData also 50), data layers standing in as inputs.
    let test_tail = &[("label", ""), ("accuracy", "scalar"), ("loss", "scalar")][..];
    v.push(Case {
        file: "models/bvlc_alexnet/deploy.prototxt",
        phase: "TEST",
        flags: &[],
        batch: 10,
        shapes: cat(&[ALEXNET, &[("fc8", "1000"), ("prob", "1000")]]),
        complete: true,
    });
    v.push(Case {
        file: "models/bvlc_alexnet/train_val.prototxt",
        phase: "TEST",
        flags: &["--no-data"],
        batch: 50,
        shapes: cat(&[ALEXNET, &[("fc8", "1000")], test_tail]),
        complete: true,
    });
    v.push(Case {
        file: "models/bvlc_reference_caffenet/deploy.prototxt",
        phase: "TEST",
        flags: &[],
        batch: 10,
        shapes: cat(&[CAFFENET, &[("fc8", "1000"), ("prob", "1000")]]),
        complete: true,
    });
    v.push(Case {
        file: "models/bvlc_reference_caffenet/train_val.prototxt",
        phase: "TEST",
        flags: &["--no-data"],
        batch: 50,
        shapes: cat(&[CAFFENET, &[("fc8", "1000")], test_tail]),
        complete: true,
    });
    // The AlexNet/CaffeNet training batch: 256.
    v.push(Case {
        file: "models/bvlc_reference_caffenet/train_val.prototxt",
        phase: "TRAIN",
        flags: &["--no-data"],
        batch: 256,
        shapes: cat(&[
            CAFFENET,
            &[("fc8", "1000"), ("label", ""), ("loss", "scalar")],
        ]),
        complete: true,
    });
    v.push(Case {
        file: "models/bvlc_reference_rcnn_ilsvrc13/deploy.prototxt",
        phase: "TEST",
        flags: &[],
        batch: 10,
        shapes: cat(&[CAFFENET, &[("fc-rcnn", "200")]]),
        complete: true,
    });
    v.push(Case {
        file: "models/finetune_flickr_style/deploy.prototxt",
        phase: "TEST",
        flags: &[],
        batch: 10,
        shapes: cat(&[CAFFENET, &[("fc8_flickr", "20"), ("prob", "20")]]),
        complete: true,
    });
    v.push(Case {
        file: "models/finetune_flickr_style/train_val.prototxt",
        phase: "TEST",
        flags: &["--no-data"],
        batch: 50,
        shapes: cat(&[CAFFENET, &[("fc8_flickr", "20")], test_tail]),
        complete: true,
    });
    // GoogLeNet
    let mut deploy = cat(&[GOOGLENET_STEM, &[("prob", "1000")]]);
    deploy.extend(googlenet_inceptions());
    v.push(Case {
        file: "models/bvlc_googlenet/deploy.prototxt",
        phase: "TEST",
        flags: &[],
        batch: 10,
        shapes: deploy,
        complete: true,
    });
    for (phase, batch) in [("TRAIN", 32), ("TEST", 50)] {
        let mut shapes = cat(&[GOOGLENET_STEM, GOOGLENET_AUX, &[("label", "")]]);
        shapes.extend(googlenet_inceptions());
        if phase == "TEST" {
            for k in 1..=3 {
                for top in ["top-1", "top-5"] {
                    shapes.push((format!("loss{k}/{top}"), "scalar".into()));
                }
            }
        }
        v.push(Case {
            file: "models/bvlc_googlenet/train_val.prototxt",
            phase,
            flags: &["--no-data"],
            batch,
            shapes,
            complete: true,
        });
    }
    v
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

/// Top blob → shape, from inspect's rows (`layer type bottoms -> tops shapes...`). A later
/// (in-place) layer overwrites an earlier shape of the same blob.
fn top_shapes(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.split_whitespace().collect();
        let Some(arrow) = cells.iter().position(|c| *c == "->") else {
            continue;
        };
        if cells.first() == Some(&"layer") || arrow + 1 >= cells.len() {
            continue; // the header
        }
        let tops = cells[arrow + 1];
        assert!(
            !tops.contains("more"),
            "a layer with more tops than inspect lists: {line}"
        );
        for (i, top) in tops.split(',').enumerate() {
            let shape = cells
                .get(arrow + 2 + i)
                .unwrap_or_else(|| panic!("no shape for `{top}` in: {line}"));
            out.insert(top.to_string(), shape.to_string());
        }
    }
    out
}

/// Every net (not solver) prototxt under `dir`, relative to it.
fn net_files(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            net_files(root, &p, out);
        } else if p.extension().is_some_and(|x| x == "prototxt")
            && !p.file_name().unwrap().to_string_lossy().contains("solver")
        {
            out.insert(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

#[test]
fn every_bvlc_net_has_caffes_top_shapes() {
    let Some(shared) = shared() else { return };
    let caffe = shared.join("caffe");
    let cases = cases();
    // The table covers every net BVLC ships: a new file in ../shared/caffe needs a row here.
    let mut files = BTreeSet::new();
    net_files(&caffe, &caffe, &mut files);
    let covered: BTreeSet<String> = cases.iter().map(|c| c.file.to_string()).collect();
    assert_eq!(
        files, covered,
        "nets without a shape table (or table rows without a file)"
    );
    assert_eq!(files.len(), 20, "{files:?}");

    let mut checked = 0;
    for c in &cases {
        let mut args = vec![c.file, "--phase", c.phase];
        args.extend(c.flags);
        let (ok, text) = inspect(&caffe, &args);
        assert!(ok, "crema inspect {args:?} failed:\n{text}");
        let got = top_shapes(&text);
        let mut wrong = vec![];
        for (blob, per_image) in &c.shapes {
            let want = match per_image.as_str() {
                "scalar" => "scalar".to_string(),
                "" => c.batch.to_string(),
                s => format!("{}x{s}", c.batch),
            };
            match got.get(blob) {
                Some(g) if *g == want => checked += 1,
                Some(g) => wrong.push(format!("{blob}: crema {g}, Caffe {want}")),
                None => wrong.push(format!("{blob}: missing (Caffe {want})")),
            }
        }
        assert!(
            wrong.is_empty(),
            "{} {}: {}\n{text}",
            c.file,
            c.phase,
            wrong.join("; ")
        );
        if c.complete {
            let listed: BTreeSet<&str> = c.shapes.iter().map(|(b, _)| b.as_str()).collect();
            let extra: Vec<&String> = got
                .keys()
                .filter(|k| !listed.contains(k.as_str()))
                .collect();
            assert!(
                extra.is_empty(),
                "{} {}: tops missing from the table: {extra:?}",
                c.file,
                c.phase
            );
        }
    }
    println!(
        "{checked} top shapes checked in {} net/phase cases",
        cases.len()
    );
}

#[test]
fn the_parser_reads_multi_top_rows() {
    let text = "\
layer  type   bottoms -> tops    top shapes   params
-----------------------------------------------
pair   Input   -> pair,sim       4x2x28x28 4       -
slice  Slice  pair -> a,b        4x1x28x28 4x1x28x28  -
loss   ContrastiveLoss a,+2 more -> loss  scalar  -
";
    let m = top_shapes(text);
    assert_eq!(m["pair"], "4x2x28x28");
    assert_eq!(m["sim"], "4");
    assert_eq!(m["b"], "4x1x28x28");
    assert_eq!(m["loss"], "scalar");
    assert_eq!(m.len(), 5);
}
