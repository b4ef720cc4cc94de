//! CIFAR-10 end to end through the `crema` binary: all 60,000 JPEGs converted with
//! `--from-folders`, the mean image checked against a direct average of the decoded files, and
//! BVLC's own cifar10_quick trained on the CPU for 500 iterations to ≥ 45% test accuracy.

use std::path::{Path, PathBuf};
use std::process::Command;

fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let needed = [
        "data/cifar10/train/airplane",
        "data/cifar10/test/truck",
        "caffe/examples/cifar10/cifar10_quick_train_test.prototxt",
        "caffe/examples/cifar10/cifar10_quick_solver.prototxt",
    ];
    if needed.iter().all(|n| p.join(n).exists()) {
        Some(p)
    } else {
        println!(
            "skipping: ../shared/data/cifar10 or ../shared/caffe/examples/cifar10 is not present"
        );
        None
    }
}

/// Runs crema in `dir`; returns stdout + stderr, failing the test on a non-zero exit.
fn ok(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_crema"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run crema");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "crema {args:?} failed:\n{text}");
    text
}

/// The mean of every image under `root/<class>/`, each file decoded on its own by crema's
/// decoder (libjpeg, as OpenCV), summed in f64, in Caffe's layout (B, G, R planes of H×W).
fn direct_mean(root: &Path) -> Vec<f64> {
    use crema_data_tools::image_io::{decode, ColorMode};
    let mut sum = vec![0f64; 3 * 32 * 32];
    let mut n = 0usize;
    for class in std::fs::read_dir(root).unwrap() {
        for file in std::fs::read_dir(class.unwrap().path()).unwrap() {
            let path = file.unwrap().path();
            let img = decode(&std::fs::read(&path).unwrap(), ColorMode::Color, &path).unwrap();
            assert_eq!((img.channels, img.height, img.width), (3, 32, 32));
            // Image8 is interleaved H×W×C, already in BGR order.
            for (i, v) in img.data.iter().enumerate() {
                sum[(i % 3) * 1024 + i / 3] += *v as f64;
            }
            n += 1;
        }
    }
    assert_eq!(n, 50_000);
    sum.iter().map(|s| s / n as f64).collect()
}

fn test_accuracies(log: &str) -> Vec<f32> {
    log.lines()
        .filter_map(|l| l.split("Test net output #0: accuracy = ").nth(1))
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}

#[test]
fn cifar10_quick_converts_and_trains_from_image_folders() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cifar = shared.join("data/cifar10");
    let (train, test) = (cifar.join("train"), cifar.join("test"));

    let out = ok(
        d,
        &[
            "convert-imageset",
            "--from-folders",
            "--shuffle",
            train.to_str().unwrap(),
            "cifar10_train_lmdb",
        ],
    );
    assert!(
        out.contains("wrote 50000 images, 3x32x32") && out.contains("(0 skipped, 10 classes"),
        "{out}"
    );
    // The test set shuffled too, so that a few test batches cover every class.
    let out = ok(
        d,
        &[
            "convert-imageset",
            "--from-folders",
            "--shuffle",
            test.to_str().unwrap(),
            "cifar10_test_lmdb",
        ],
    );
    assert!(out.contains("wrote 10000 images, 3x32x32"), "{out}");
    let labels = std::fs::read_to_string(d.join("labels.txt")).unwrap();
    assert_eq!(labels.lines().next(), Some("airplane"));
    assert_eq!(labels.lines().count(), 10);

    let out = ok(
        d,
        &[
            "compute-image-mean",
            "cifar10_train_lmdb",
            "mean.binaryproto",
        ],
    );
    assert!(out.contains("3x32x32 mean of cifar10_train_lmdb"), "{out}");
    let mean = crema_data_tools::load_mean(&d.join("mean.binaryproto")).unwrap();
    assert_eq!((mean.channels, mean.height, mean.width), (3, 32, 32));
    let direct = direct_mean(&train);
    let worst = mean
        .data
        .iter()
        .zip(&direct)
        .map(|(m, d)| (*m as f64 - d).abs())
        .fold(0.0, f64::max);
    assert!(
        worst < 1e-4,
        "mean image differs from the direct mean by up to {worst}"
    );

    // BVLC's files, paths pointed at ours, 500 iterations on the CPU, tested on 2,000 images.
    let caffe = shared.join("caffe/examples/cifar10");
    let net = std::fs::read_to_string(caffe.join("cifar10_quick_train_test.prototxt"))
        .unwrap()
        .replace("examples/cifar10/mean.binaryproto", "mean.binaryproto")
        .replace("examples/cifar10/cifar10_train_lmdb", "cifar10_train_lmdb")
        .replace("examples/cifar10/cifar10_test_lmdb", "cifar10_test_lmdb");
    std::fs::create_dir_all(d.join("examples/cifar10")).unwrap();
    std::fs::write(
        d.join("examples/cifar10/cifar10_quick_train_test.prototxt"),
        net,
    )
    .unwrap();
    let solver = std::fs::read_to_string(caffe.join("cifar10_quick_solver.prototxt"))
        .unwrap()
        .replace("max_iter: 4000", "max_iter: 500")
        .replace("test_iter: 100", "test_iter: 20")
        .replace("solver_mode: GPU", "solver_mode: CPU\nrandom_seed: 1");
    assert!(
        solver.contains("max_iter: 500") && solver.contains("test_iter: 20"),
        "{solver}"
    );
    std::fs::write(d.join("solver.prototxt"), solver).unwrap();
    let log = ok(d, &["train", "--solver", "solver.prototxt"]);
    let acc = test_accuracies(&log);
    assert_eq!(acc.len(), 2, "tests at iterations 0 and 500:\n{log}");
    assert!(
        acc[1] >= 0.45,
        "test accuracy after 500 iterations: {acc:?}"
    );
    assert!(d
        .join("examples/cifar10/cifar10_quick_iter_500.caffemodel")
        .exists());
    let per_100: Vec<&str> = log.lines().filter(|l| l.contains("s/100 iters")).collect();
    println!(
        "cifar10_quick, 500 iterations: test accuracy {acc:?}\n{}",
        per_100.join("\n")
    );
}
