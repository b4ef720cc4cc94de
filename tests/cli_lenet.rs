//! End to end through the `crema` binary on BVLC's own LeNet files and the real MNIST test set:
//! the zoo model scores Caffe's 99.14%, training reaches ≥ 97%, and resuming retraces the run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if p.join("data/mnist/t10k-images-idx3-ubyte.gz").exists() {
        Some(p)
    } else {
        println!("skipping: ../shared/data/mnist is not present");
        None
    }
}

fn crema(dir: &Path, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_crema"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run crema");
    out
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = crema(dir, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "crema {args:?} failed:\n{text}");
    text
}

/// An LMDB of MNIST test images [start, start + count).
fn mnist_lmdb(shared: &Path, dir: &Path, name: &str, start: usize, count: usize) {
    let m = shared.join("data/mnist");
    let images = m.join("t10k-images-idx3-ubyte.gz");
    let labels = m.join("t10k-labels-idx1-ubyte.gz");
    ok(
        dir,
        &[
            "convert-mnist",
            images.to_str().unwrap(),
            labels.to_str().unwrap(),
            name,
            "--start",
            &start.to_string(),
            "--count",
            &count.to_string(),
        ],
    );
}

/// BVLC's lenet_train_test.prototxt with its LMDB paths pointed at ours.
fn lenet_net(shared: &Path, train_db: &str, test_db: &str) -> String {
    std::fs::read_to_string(shared.join("caffe/examples/mnist/lenet_train_test.prototxt"))
        .unwrap()
        .replace("examples/mnist/mnist_train_lmdb", train_db)
        .replace("examples/mnist/mnist_test_lmdb", test_db)
}

#[test]
fn zoo_lenet_scores_caffes_accuracy() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    mnist_lmdb(&shared, dir.path(), "mnist_test_lmdb", 0, 10_000);
    std::fs::write(
        dir.path().join("lenet.prototxt"),
        lenet_net(&shared, "mnist_test_lmdb", "mnist_test_lmdb"),
    )
    .unwrap();
    let weights = shared.join("zoo/lenet/lenet_iter_10000.caffemodel");
    let out = ok(
        dir.path(),
        &[
            "test",
            "--model",
            "lenet.prototxt",
            "--weights",
            weights.to_str().unwrap(),
            "--iterations",
            "100",
        ],
    );
    // The figure Caffe and OpenCV's dnn give for this model on the 10,000 test images.
    assert!(out.lines().any(|l| l == "accuracy = 0.9914"), "{out}");
}

fn loss_at(log: &str, iter: u32) -> Option<String> {
    let prefix = format!("Iteration {iter} (");
    log.lines()
        .find(|l| l.contains(&prefix))
        .and_then(|l| l.rsplit("loss = ").next())
        .map(|s| s.trim().to_string())
}

fn test_accuracies(log: &str) -> Vec<f32> {
    log.lines()
        .filter_map(|l| l.split("Test net output #0: accuracy = ").nth(1))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

#[test]
fn lenet_trains_on_the_cpu_and_resumes_on_the_same_trajectory() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    mnist_lmdb(&shared, d, "train_lmdb", 0, 8000);
    mnist_lmdb(&shared, d, "test_lmdb", 8000, 2000);
    std::fs::create_dir_all(d.join("examples/mnist")).unwrap();
    std::fs::write(
        d.join("examples/mnist/lenet_train_test.prototxt"),
        lenet_net(&shared, "train_lmdb", "test_lmdb"),
    )
    .unwrap();
    // BVLC's solver, unchanged but for a shorter run and 2,000 test images (20 × 100).
    let solver = std::fs::read_to_string(shared.join("caffe/examples/mnist/lenet_solver.prototxt"))
        .unwrap()
        .replace("max_iter: 10000", "max_iter: 1500")
        .replace("snapshot: 5000", "snapshot: 500")
        .replace("test_iter: 100", "test_iter: 20");
    std::fs::write(d.join("solver.prototxt"), &solver).unwrap();
    let full = ok(d, &["train", "--solver", "solver.prototxt"]);
    assert!(
        full.contains("solver_mode") || full.contains("no GPU engine"),
        "GPU request not reported:\n{full}"
    );
    let acc = test_accuracies(&full);
    assert_eq!(acc.len(), 4, "tests at 0, 500, 1000, 1500:\n{full}");
    assert!(acc[3] >= 0.97, "accuracy after 1,500 iterations: {acc:?}");
    for it in [500, 1000, 1500] {
        assert!(d
            .join(format!("examples/mnist/lenet_iter_{it}.caffemodel"))
            .exists());
        assert!(d
            .join(format!("examples/mnist/lenet_iter_{it}.solverstate"))
            .exists());
    }
    // Resume from iteration 500 and stop at 1000: the loss there must match the uninterrupted run.
    std::fs::write(
        d.join("solver_resume.prototxt"),
        solver.replace("max_iter: 1500", "max_iter: 1000"),
    )
    .unwrap();
    let resumed = ok(
        d,
        &[
            "train",
            "--solver",
            "solver_resume.prototxt",
            "--snapshot",
            "examples/mnist/lenet_iter_500.solverstate",
        ],
    );
    let a = loss_at(&full, 900).expect("loss at 900 in the full run");
    let b = loss_at(&resumed, 900).expect("loss at 900 in the resumed run");
    assert_eq!(a, b, "loss at iteration 900 differs after resuming");
    let tail = |log: &str| -> String {
        log.lines()
            .rfind(|l| l.contains("Iteration 1000, Testing") || l.contains("Test net output"))
            .unwrap_or("")
            .to_string()
    };
    let fa = test_accuracies(&full)[2];
    let fb = *test_accuracies(&resumed).last().unwrap();
    assert_eq!(fa, fb, "test accuracy at 1000 differs: {}", tail(&resumed));
}

#[test]
fn bad_inputs_give_one_line_errors() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A misspelled field: file, line, column and the closest valid name.
    let net = lenet_net(&shared, "nowhere_lmdb", "nowhere_lmdb")
        .replace("num_output: 20", "num_ouput: 20");
    std::fs::write(d.join("typo.prototxt"), net).unwrap();
    let out = crema(
        d,
        &["test", "--model", "typo.prototxt", "--iterations", "1"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default()
        .to_string();
    assert!(
        line.contains("typo.prototxt:") && line.contains("did you mean `num_output`"),
        "{err}"
    );
    // A missing LMDB names the path and the field that asked for it.
    let net = lenet_net(&shared, "nowhere_lmdb", "nowhere_lmdb");
    std::fs::write(d.join("nodb.prototxt"), net).unwrap();
    let out = crema(
        d,
        &["test", "--model", "nodb.prototxt", "--iterations", "1"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("nowhere_lmdb") && err.contains("data_param.source"),
        "{err}"
    );
    // An unknown layer type suggests the closest known one.
    let net = lenet_net(&shared, "nowhere_lmdb", "nowhere_lmdb").replace("\"ReLU\"", "\"Relu\"");
    std::fs::write(d.join("type.prototxt"), net).unwrap();
    let out = crema(
        d,
        &["time", "--model", "type.prototxt", "--iterations", "1"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown layer type `Relu`") && err.contains("did you mean `ReLU`"),
        "{err}"
    );
    // No panics anywhere.
    assert!(!err.contains("panicked"), "{err}");
}

/// `crema time` on a deploy classifier at another batch size: it is timed as it trains (a softmax
/// loss against synthetic labels), so the backward pass does real work; a train_val net whose
/// LMDBs are absent runs on synthetic inputs of the declared shape.
#[test]
fn time_runs_deploy_nets_and_absent_data_at_any_batch() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let deploy = root.join("models/lenet/deploy.prototxt");
    let out = ok(
        dir.path(),
        &[
            "time",
            "--model",
            deploy.to_str().unwrap(),
            "--batch",
            "3",
            "--iterations",
            "1",
        ],
    );
    assert!(out.contains("bench_loss"), "{out}");
    let conv1 = out.lines().find(|l| l.starts_with("conv1 ")).unwrap_or("");
    let backward: f64 = conv1
        .split_whitespace()
        .last()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(backward > 0.0, "conv1 has no backward time: {out}");
    let train_val = root.join("models/lenet/train_val.prototxt");
    let out = crema(
        dir.path(),
        &[
            "time",
            "--model",
            train_val.to_str().unwrap(),
            "--batch",
            "2",
            "--input-shape",
            "1,28,28",
            "--iterations",
            "1",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // The prototxt's LMDB paths are relative to the working directory, a fresh one here.
    assert!(err.contains("timing with synthetic data"), "{err}");
}
