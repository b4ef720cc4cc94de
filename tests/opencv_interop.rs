//! A caffemodel written by crema loads in OpenCV's dnn module (`cv2.dnn.readNetFromCaffe`) and
//! gives the same top-1 as crema on 2,000 MNIST test images. Skips when Python lacks cv2.

use crema::engine::CpuEngine;
use crema::layers::Phase;
use crema::net::{net_from_file, State};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;

fn python() -> String {
    std::env::var("CREMA_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn have_cv2() -> bool {
    Command::new(python())
        .args([
            "-c",
            "import cv2, numpy; assert int(cv2.__version__.split('.')[0]) == 4",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn crema_caffemodel_loads_in_opencv_with_the_same_top1() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared");
    if !shared.join("data/mnist").exists() {
        println!("skipping: ../shared/data/mnist is not present");
        return;
    }
    if !have_cv2() {
        println!(
            "skipping: {} cannot import cv2 4.x (pip install 'opencv-python-headless<5' numpy)",
            python()
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let images = shared.join("data/mnist/t10k-images-idx3-ubyte.gz");
    let labels = shared.join("data/mnist/t10k-labels-idx1-ubyte.gz");
    let bin = env!("CARGO_BIN_EXE_crema");
    let run = |args: &[&str]| {
        let out = Command::new(bin)
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "crema {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (im, lb) = (images.to_str().unwrap(), labels.to_str().unwrap());
    run(&[
        "convert-mnist",
        im,
        lb,
        "models/lenet/mnist_train_lmdb",
        "--count",
        "8000",
    ]);
    run(&[
        "convert-mnist",
        im,
        lb,
        "models/lenet/mnist_test_lmdb",
        "--start",
        "8000",
    ]);
    for f in ["train_val.prototxt", "deploy.prototxt"] {
        std::fs::copy(
            root.join("models/lenet").join(f),
            d.join("models/lenet").join(f),
        )
        .unwrap();
    }
    let solver = std::fs::read_to_string(root.join("models/lenet/solver.prototxt"))
        .unwrap()
        .replace("max_iter: 2000", "max_iter: 300")
        .replace("test_interval: 500", "test_interval: 0");
    std::fs::write(d.join("solver.prototxt"), solver).unwrap();
    run(&["train", "--solver", "solver.prototxt"]);
    let weights: PathBuf = d.join("models/lenet/lenet_iter_300.caffemodel");
    assert!(weights.exists());

    // crema's own predictions with the deploy net, one batch of 2,000.
    let deploy = d.join("models/lenet/deploy.prototxt");
    let text = std::fs::read_to_string(&deploy)
        .unwrap()
        .replace("dim: 1 dim: 1 dim: 28", "dim: 2000 dim: 1 dim: 28");
    std::fs::write(&deploy, text).unwrap();
    let engine = Rc::new(CpuEngine::new());
    let mut net = net_from_file(&deploy, &State::phase(Phase::Test), engine.clone()).unwrap();
    net.copy_trained_layers_from(&weights).unwrap();
    let mut raw = vec![];
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(&images).unwrap()),
        &mut raw,
    )
    .unwrap();
    let input: Vec<f32> = raw[16 + 8000 * 784..16 + 10_000 * 784]
        .iter()
        .map(|p| *p as f32 * 0.00390625)
        .collect();
    net.blob("data").unwrap().set_data(&*engine, &input);
    net.forward().unwrap();
    let prob = net.blob("prob").unwrap().data_to_vec(&*engine);
    let ours: Vec<usize> = prob
        .chunks(10)
        .map(|p| {
            p.iter()
                .enumerate()
                .fold(0, |b, (i, v)| if *v > p[b] { i } else { b })
        })
        .collect();

    let out = Command::new(python())
        .arg(root.join("tests/interop/opencv_top1.py"))
        .args([
            deploy.to_str().unwrap(),
            weights.to_str().unwrap(),
            im,
            "8000",
            "2000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "OpenCV failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<usize> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(theirs.len(), 2000);
    let same = ours.iter().zip(&theirs).filter(|(a, b)| a == b).count();
    assert_eq!(
        same, 2000,
        "OpenCV agrees with crema on {same} of 2000 images"
    );
}
