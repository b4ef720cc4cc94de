//! BVLC's siamese (ContrastiveLoss, weights shared by param name), MNIST autoencoder
//! (SigmoidCrossEntropyLoss + EuclideanLoss) and cifar10_full_sigmoid_train_test_bn (BatchNorm)
//! examples train on the CPU through `crema train` with their own net and solver files, only
//! paths, iteration counts and display intervals changed, and their loss falls.

use std::path::{Path, PathBuf};
use std::process::Command;

fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let needed = [
        "data/mnist/t10k-images-idx3-ubyte.gz",
        "data/cifar10/train/airplane",
        "caffe/examples/siamese",
    ];
    if needed.iter().all(|n| p.join(n).exists()) {
        Some(p)
    } else {
        println!("skipping: ../shared/data or ../shared/caffe is not present");
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

/// The training losses printed at each display.
fn losses(log: &str) -> Vec<f32> {
    log.lines()
        .filter(|l| l.contains("Iteration ") && l.contains(" iters), loss = "))
        .filter_map(|l| l.rsplit("loss = ").next()?.trim().parse().ok())
        .collect()
}

/// Asserts that the mean of the last third of the displayed losses is below `ratio` times the
/// mean of the first third; returns both means.
fn check_falls(name: &str, log: &str, ratio: f32) -> (f32, f32) {
    let l = losses(log);
    assert!(l.len() >= 6, "{name}: too few loss lines:\n{log}");
    let k = l.len() / 3;
    let mean = |s: &[f32]| s.iter().sum::<f32>() / s.len() as f32;
    let (first, last) = (mean(&l[..k]), mean(&l[l.len() - k..]));
    assert!(
        l.iter().all(|v| v.is_finite()) && last < ratio * first,
        "{name}: loss did not fall below {ratio} of its start: first {first}, last {last}, all {l:?}"
    );
    println!(
        "{name}: mean loss {first} -> {last} over {} displays",
        l.len()
    );
    (first, last)
}

/// A BVLC file with its text replacements applied; each must match (a file that changed upstream
/// fails loudly instead of silently training something else).
fn edited(shared: &Path, rel: &str, edits: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(shared.join("caffe").join(rel)).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "{rel} no longer contains `{from}`");
        text = text.replace(from, to);
    }
    text
}

/// BVLC's solvers seed from the clock; a fixed seed makes each run the same.
const SEED: &str = "\nrandom_seed: 1\n";

/// Writes `text` to `dir/rel`, creating folders.
fn put(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// Caffe's convert_mnist_siamese_data: `pairs` datums of two random digits stacked as 2 channels,
/// label 1 when they are the same digit, keys `%08d`. Returns the number of similar pairs.
fn write_pair_lmdb(shared: &Path, db: &Path, pairs: usize) -> usize {
    use crema_data_tools::mnist::{read_images, read_labels};
    use crema_proto::caffe::Datum;
    use rand::{Rng, SeedableRng};
    let m = shared.join("data/mnist");
    let images = read_images(&m.join("t10k-images-idx3-ubyte.gz")).unwrap();
    let labels = read_labels(&m.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let size = images.rows * images.cols;
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut w = crema_data_tools::DatumWriter::create(db, true).unwrap();
    let mut similar = 0;
    for k in 0..pairs {
        let (i, j) = (rng.gen_range(0..2000), rng.gen_range(0..2000));
        let mut data = images.pixels[i * size..(i + 1) * size].to_vec();
        data.extend_from_slice(&images.pixels[j * size..(j + 1) * size]);
        let same = labels[i] == labels[j];
        similar += same as usize;
        let datum = Datum {
            channels: Some(2),
            height: Some(images.rows as i32),
            width: Some(images.cols as i32),
            data: Some(data),
            label: Some(same as i32),
            ..Default::default()
        };
        w.put(&format!("{k:08}"), &datum).unwrap();
    }
    w.finish().unwrap();
    similar
}

#[test]
fn siamese_trains_with_contrastive_loss_and_shared_weights() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let similar = write_pair_lmdb(&shared, &d.join("pairs_lmdb"), 1000);
    // Random pairs, as Caffe draws them: about one in ten is the same digit.
    assert!((50..200).contains(&similar), "{similar} similar pairs");
    // BVLC's net reads LevelDBs (the default backend); crema reads LMDBs.
    let db = "    source: \"pairs_lmdb\"\n    backend: LMDB";
    put(
        d,
        "examples/siamese/mnist_siamese_train_test.prototxt",
        &edited(
            &shared,
            "examples/siamese/mnist_siamese_train_test.prototxt",
            &[
                (
                    "    source: \"examples/siamese/mnist_siamese_train_leveldb\"",
                    db,
                ),
                (
                    "    source: \"examples/siamese/mnist_siamese_test_leveldb\"",
                    db,
                ),
            ],
        ),
    );
    put(
        d,
        "solver.prototxt",
        &(edited(
            &shared,
            "examples/siamese/mnist_siamese_solver.prototxt",
            &[
                ("max_iter: 50000", "max_iter: 100"),
                ("test_interval: 500", "test_interval: 0"),
                ("display: 100", "display: 10"),
                ("snapshot: 5000", "snapshot: 0"),
            ],
        ) + SEED),
    );
    let log = crema(d, &["train", "--solver", "solver.prototxt"]);
    check_falls("siamese", &log, 0.7);
    // The towers share conv1_w, conv1_b, ... by param name: after training, each `_p` layer of
    // the snapshot holds exactly its twin's values.
    let model: crema_proto::caffe::NetParameter = crema_proto::read_binary(
        &d.join("examples/siamese/mnist_siamese_iter_100.caffemodel"),
        "caffe.NetParameter",
    )
    .unwrap();
    let blobs = |name: &str| -> Vec<Vec<f32>> {
        let l = model.layer.iter().find(|l| l.name() == name).unwrap();
        l.blobs
            .iter()
            .map(crema::net::weights::proto_data)
            .collect()
    };
    for layer in ["conv1", "conv2", "ip1", "ip2", "feat"] {
        let (a, b) = (blobs(layer), blobs(&format!("{layer}_p")));
        assert_eq!(a.len(), 2, "{layer}");
        assert!(a == b, "{layer} and {layer}_p differ after training");
    }
}

/// An MNIST LMDB of 2,000 digits at `dir/mnist_lmdb`.
fn mnist_lmdb(shared: &Path, d: &Path) {
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
            "mnist_lmdb",
            "--count",
            "2000",
        ],
    );
}

#[test]
fn mnist_autoencoder_trains_with_each_of_its_solvers() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mnist_lmdb(&shared, d);
    let net = "examples/mnist/mnist_autoencoder.prototxt";
    put(
        d,
        net,
        &edited(
            &shared,
            net,
            &[
                ("examples/mnist/mnist_train_lmdb", "mnist_lmdb"),
                ("examples/mnist/mnist_test_lmdb", "mnist_lmdb"),
            ],
        ),
    );
    // 80 iterations each keep the test under a minute on two cores in a debug build.
    for solver in [
        "mnist_autoencoder_solver",
        "mnist_autoencoder_solver_nesterov",
        "mnist_autoencoder_solver_adagrad",
        "mnist_autoencoder_solver_adadelta",
    ] {
        let text = edited(
            &shared,
            &format!("examples/mnist/{solver}.prototxt"),
            &[
                ("max_iter: 65000", "max_iter: 80"),
                ("test_interval: 500", "test_interval: 0"),
                ("display: 100", "display: 8"),
                (
                    "snapshot: 10000",
                    "snapshot: 0\nsnapshot_after_train: false",
                ),
            ],
        );
        put(d, "solver.prototxt", &(text + SEED));
        let log = crema(d, &["train", "--solver", "solver.prototxt"]);
        // Both losses are shown; only the cross-entropy counts (l2_error has loss_weight 0).
        assert!(
            log.contains("Train net output #0: cross_entropy_loss = "),
            "{log}"
        );
        assert!(log.contains("Train net output #1: l2_error = "), "{log}");
        check_falls(solver, &log, 0.8);
    }
}

#[test]
fn cifar10_full_sigmoid_bn_trains_with_batchnorm() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 40 images of each class, as a Caffe list file.
    let root = shared.join("data/cifar10/train");
    let mut classes: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    classes.sort();
    assert_eq!(classes.len(), 10);
    let mut list = String::new();
    for (label, class) in classes.iter().enumerate() {
        let mut files: Vec<String> = std::fs::read_dir(root.join(class))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        for f in files.iter().take(40) {
            list.push_str(&format!("{class}/{f} {label}\n"));
        }
    }
    std::fs::write(d.join("list.txt"), list).unwrap();
    let root_arg = format!("{}/", root.display());
    let out = crema(
        d,
        &[
            "convert-imageset",
            "--shuffle",
            &root_arg,
            "list.txt",
            "cifar_lmdb",
        ],
    );
    assert!(out.contains("wrote 400 images, 3x32x32"), "{out}");
    crema(d, &["compute-image-mean", "cifar_lmdb", "mean.binaryproto"]);
    let net = "examples/cifar10/cifar10_full_sigmoid_train_test_bn.prototxt";
    put(
        d,
        net,
        &edited(
            &shared,
            net,
            &[
                ("examples/cifar10/mean.binaryproto", "mean.binaryproto"),
                ("examples/cifar10/cifar10_train_lmdb", "cifar_lmdb"),
                ("examples/cifar10/cifar10_test_lmdb", "cifar_lmdb"),
            ],
        ),
    );
    put(
        d,
        "solver.prototxt",
        &(edited(
            &shared,
            "examples/cifar10/cifar10_full_sigmoid_solver_bn.prototxt",
            // A debug build runs this net at ~0.4 s per iteration on two cores: 60 iterations, at
            // 10x BVLC's base_lr so that the fall is clear in so few.
            &[
                ("base_lr: 0.001", "base_lr: 0.01"),
                ("max_iter: 60000", "max_iter: 60"),
                ("test_interval: 1000", "test_interval: 0"),
                ("display: 100", "display: 5"),
                (
                    "snapshot: 10000",
                    "snapshot: 0\nsnapshot_after_train: false",
                ),
            ],
        ) + SEED),
    );
    let log = crema(d, &["train", "--solver", "solver.prototxt"]);
    check_falls("cifar10_full_sigmoid_bn", &log, 0.9);
}
