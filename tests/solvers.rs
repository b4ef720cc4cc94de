//! Each of BVLC's LeNet solver files (Adam, RMSProp, AdaDelta, multistep SGD) and a Nesterov and
//! AdaGrad variant train LeNet on the CPU with a falling loss, and their solverstates resume.

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

/// The training losses printed at each display.
fn losses(log: &str) -> Vec<f32> {
    log.lines()
        .filter(|l| l.contains("Iteration ") && l.contains(" iters), loss = "))
        .filter_map(|l| l.rsplit("loss = ").next()?.trim().parse().ok())
        .collect()
}

/// A work directory with BVLC's LeNet net reading 2,000 MNIST images.
fn workdir(shared: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
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
    std::fs::create_dir_all(d.join("examples/mnist")).unwrap();
    let net =
        std::fs::read_to_string(shared.join("caffe/examples/mnist/lenet_train_test.prototxt"))
            .unwrap()
            .replace("examples/mnist/mnist_train_lmdb", "mnist_lmdb")
            .replace("examples/mnist/mnist_test_lmdb", "mnist_lmdb");
    std::fs::write(d.join("examples/mnist/lenet_train_test.prototxt"), net).unwrap();
    dir
}

/// Runs a BVLC solver file (shortened to `iters`) and returns the log.
fn train(shared: &Path, d: &Path, solver_text: &str, iters: u32) -> String {
    let text = solver_text
        .replace("max_iter: 10000", &format!("max_iter: {iters}"))
        .replace("test_interval: 500", "test_interval: 0")
        .replace("display: 100", "display: 50")
        + "\nrandom_seed: 7\n";
    let _ = shared;
    std::fs::write(d.join("solver.prototxt"), text).unwrap();
    crema(d, &["train", "--solver", "solver.prototxt"])
}

fn check_falls(name: &str, log: &str) {
    let l = losses(log);
    assert!(l.len() >= 4, "{name}: too few loss lines:\n{log}");
    let (first, last) = (l[0], *l.last().unwrap());
    assert!(
        last.is_finite() && last < 0.5 * first,
        "{name}: loss did not fall enough: {l:?}"
    );
}

#[test]
fn bvlc_lenet_solvers_train_with_falling_loss() {
    let Some(shared) = shared() else { return };
    let dir = workdir(&shared);
    let d = dir.path();
    for f in [
        "lenet_solver_adam",
        "lenet_solver_rmsprop",
        "lenet_adadelta_solver",
        "lenet_multistep_solver",
    ] {
        let text =
            std::fs::read_to_string(shared.join(format!("caffe/examples/mnist/{f}.prototxt")))
                .unwrap();
        let log = train(&shared, d, &text, 200);
        check_falls(f, &log);
    }
    // Nesterov and AdaGrad (BVLC uses them for the autoencoder; here on LeNet), also via the
    // legacy solver_type enum.
    let base =
        std::fs::read_to_string(shared.join("caffe/examples/mnist/lenet_solver.prototxt")).unwrap();
    let nesterov = base.replace("solver_mode: GPU", "solver_mode: CPU\ntype: \"Nesterov\"");
    check_falls("nesterov", &train(&shared, d, &nesterov, 200));
    let adagrad = base
        .replace("momentum: 0.9", "solver_type: ADAGRAD")
        .replace("lr_policy: \"inv\"", "lr_policy: \"fixed\"");
    check_falls("adagrad", &train(&shared, d, &adagrad, 200));
}

#[test]
fn adam_resumes_with_both_histories() {
    let Some(shared) = shared() else { return };
    let dir = workdir(&shared);
    let d = dir.path();
    let text =
        std::fs::read_to_string(shared.join("caffe/examples/mnist/lenet_solver_adam.prototxt"))
            .unwrap()
            .replace("snapshot: 5000", "snapshot: 50");
    let full = train(&shared, d, &text, 150);
    // LeNet has 8 parameter blobs; Adam keeps two histories for each.
    let state: crema_proto::caffe::SolverState = crema_proto::read_binary(
        &d.join("examples/mnist/lenet_iter_50.solverstate"),
        "caffe.SolverState",
    )
    .unwrap();
    assert_eq!(state.history.len(), 16);
    assert_eq!(state.iter, Some(50));
    let resumed = {
        let t = text
            .replace("max_iter: 10000", "max_iter: 150")
            .replace("test_interval: 500", "test_interval: 0")
            .replace("display: 100", "display: 50")
            + "\nrandom_seed: 7\n";
        std::fs::write(d.join("resume.prototxt"), t).unwrap();
        crema(
            d,
            &[
                "train",
                "--solver",
                "resume.prototxt",
                "--snapshot",
                "examples/mnist/lenet_iter_50.solverstate",
            ],
        )
    };
    let at = |log: &str, it: u32| -> String {
        let key = format!("Iteration {it} (");
        log.lines()
            .find(|l| l.contains(&key))
            .and_then(|l| l.rsplit("loss = ").next())
            .unwrap_or("")
            .to_string()
    };
    assert_eq!(
        at(&full, 100),
        at(&resumed, 100),
        "Adam resumed off its trajectory"
    );
}
