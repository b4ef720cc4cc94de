//! CIFAR-10 end to end through the `crema` binary: all 60,000 JPEGs converted with
//! `--from-folders`, the mean image checked against a direct average of the decoded files, and
//! BVLC's own cifar10_quick trained on the CPU for 500 iterations to ≥ 45% test accuracy; then
//! `crema classify` on all 10,000 test JPEGs with that model agrees with OpenCV's dnn module
//! (`cv2.dnn.readNetFromCaffe`, same files and preprocessing) on top-1 for ≥ 99.5% of them, with
//! probabilities within 1e-4 (skipped, with the reason printed, when Python lacks cv2).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

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
        .is_ok_and(|s| s.success())
}

/// One image's line of `crema classify --json`: file, top-1 label, (class, prob) best first.
type Prediction = (String, String, Vec<(usize, f64)>);

fn parse_json(text: &str) -> Vec<Prediction> {
    let field = |l: &str, name: &str| -> String {
        let from = l.split(&format!("\"{name}\": \"")).nth(1).unwrap();
        from.split('"').next().unwrap().to_string()
    };
    text.lines()
        .filter(|l| l.trim_start().starts_with("{\"image\""))
        .map(|l| {
            let preds = l
                .split("{\"class\": ")
                .skip(1)
                .map(|p| {
                    let class = p.split(',').next().unwrap().parse().unwrap();
                    let prob = p.split("\"prob\": ").nth(1).unwrap();
                    let prob = prob.split('}').next().unwrap().parse().unwrap();
                    (class, prob)
                })
                .collect();
            (field(l, "image"), field(l, "label"), preds)
        })
        .collect()
}

/// `crema classify` on every test JPEG against OpenCV's dnn on the same files: BVLC's deploy net,
/// the crema-trained weights, the mean image subtracted pixel by pixel as in training, BGR, no scale.
fn classify_agrees_with_opencv(shared: &Path, d: &Path, test: &Path) {
    if !have_cv2() {
        println!(
            "skipping the OpenCV comparison: {} cannot import cv2 4.x (pip install 'opencv-python-headless<5' numpy)",
            python()
        );
        return;
    }
    let deploy = shared.join("caffe/examples/cifar10/cifar10_quick.prototxt");
    let weights = d.join("examples/cifar10/cifar10_quick_iter_500.caffemodel");
    let (deploy, weights) = (deploy.to_str().unwrap(), weights.to_str().unwrap());
    let start = Instant::now();
    let out = ok(
        d,
        &[
            "classify",
            "--model",
            deploy,
            "--weights",
            weights,
            "--mean",
            "mean.binaryproto",
            "--mean-mode",
            "image",
            "--labels",
            "labels.txt",
            "--top-k",
            "10",
            "--batch-size",
            "100",
            "--json",
            test.to_str().unwrap(),
        ],
    );
    let ours = parse_json(&out);
    assert_eq!(ours.len(), 10_000, "{}", &out[..out.len().min(2000)]);
    let crema_s = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let list = d.join("test_images.txt");
    let names: Vec<&str> = ours.iter().map(|(f, _, _)| f.as_str()).collect();
    std::fs::write(&list, names.join("\n")).unwrap();
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/opencv_classify.py"))
        .args([deploy, weights, "3", "32", "32", "1"])
        .arg(d.join("mean.binaryproto"))
        .arg(format!("@{}", list.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "OpenCV failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Vec<Vec<f64>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(theirs.len(), 10_000);
    let opencv_s = start.elapsed().as_secs_f64();

    let (mut same, mut right, mut worst) = (0, 0, 0f64);
    for ((file, label, preds), cv) in ours.iter().zip(&theirs) {
        assert_eq!((preds.len(), cv.len()), (10, 10), "{file}");
        let cv_top1 = (0..10).fold(0, |b, i| if cv[i] > cv[b] { i } else { b });
        same += usize::from(preds[0].0 == cv_top1);
        // The folder is the class: the top-1 label read back against it.
        right += usize::from(Path::new(file).parent().unwrap().ends_with(label));
        for (c, p) in preds {
            worst = worst.max((p - cv[*c]).abs());
        }
    }
    println!(
        "classify vs OpenCV dnn on 10,000 CIFAR-10 test JPEGs: top-1 agrees on {same}, \
         max |p_crema - p_opencv| = {worst:.2e}, crema's accuracy {:.2}% \
         (crema classify {crema_s:.1}s, OpenCV {opencv_s:.1}s)",
        right as f64 / 100.0
    );
    assert!(same >= 9_950, "top-1 agrees on only {same} of 10,000");
    assert!(worst <= 1e-4, "probabilities differ by up to {worst}");
    assert!(right >= 4_500, "classify's accuracy: {right} of 10,000");
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

    classify_agrees_with_opencv(&shared, d, &test);
}
