//! `crema classify` end to end: BVLC's LeNet (../shared/zoo/lenet) names MNIST test digits written
//! as PNG files, and its probabilities match OpenCV's dnn module on the same preprocessing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if p.join("data/mnist/t10k-images-idx3-ubyte.gz").exists()
        && p.join("zoo/lenet/lenet_iter_10000.caffemodel").exists()
    {
        Some(p)
    } else {
        println!("skipping: ../shared/data/mnist or ../shared/zoo/lenet is not present");
        None
    }
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut raw = vec![];
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()),
        &mut raw,
    )
    .unwrap();
    raw
}

/// Writes MNIST test images [0, n) as `dir/NNNN.png`, enlarged to `size`×`size` when it is not 28
/// (nearest neighbour, so classify has to resize them back); returns the files and their labels.
fn mnist_pngs(shared: &Path, dir: &Path, n: usize, size: u32) -> (Vec<String>, Vec<usize>) {
    let images = gunzip(&shared.join("data/mnist/t10k-images-idx3-ubyte.gz"));
    let labels = gunzip(&shared.join("data/mnist/t10k-labels-idx1-ubyte.gz"));
    let mut files = vec![];
    for i in 0..n {
        let px = &images[16 + i * 784..16 + (i + 1) * 784];
        let img = image::GrayImage::from_fn(size, size, |x, y| {
            image::Luma([px[(y * 28 / size * 28 + x * 28 / size) as usize]])
        });
        let f = dir.join(format!("{i:04}.png"));
        img.save(&f).unwrap();
        files.push(f.to_str().unwrap().to_string());
    }
    (
        files,
        labels[8..8 + n].iter().map(|l| *l as usize).collect(),
    )
}

fn classify(shared: &Path, extra: &[&str]) -> String {
    let zoo = shared.join("zoo/lenet");
    let mut args = vec![
        "classify".to_string(),
        "--model".into(),
        zoo.join("lenet.prototxt").to_str().unwrap().into(),
        "--weights".into(),
        zoo.join("lenet_iter_10000.caffemodel")
            .to_str()
            .unwrap()
            .into(),
        "--scale".into(),
        "0.00390625".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let out = Command::new(env!("CARGO_BIN_EXE_crema"))
        .args(&args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "crema {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// (file, class -> prob) from `--json` output.
fn parse_json(text: &str) -> Vec<(String, Vec<(usize, f64)>)> {
    text.lines()
        .filter(|l| l.trim_start().starts_with("{\"image\""))
        .map(|l| {
            let file = l
                .split("\"image\": \"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_string();
            let preds = l
                .split("{\"class\": ")
                .skip(1)
                .map(|p| {
                    let class = p.split(',').next().unwrap().parse().unwrap();
                    let prob = p
                        .split("\"prob\": ")
                        .nth(1)
                        .unwrap()
                        .split('}')
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap();
                    (class, prob)
                })
                .collect();
            (file, preds)
        })
        .collect()
}

#[test]
fn zoo_lenet_names_mnist_digits() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (files, labels) = mnist_pngs(&shared, dir.path(), 50, 28);
    // The folder form, in batches of 16, with Caffe's text output.
    let out = classify(
        &shared,
        &["--batch-size", "16", dir.path().to_str().unwrap()],
    );
    let mut right = 0;
    let blocks: Vec<&str> = out.split("---------- Prediction for ").skip(1).collect();
    assert_eq!(blocks.len(), 50, "{out}");
    for (block, (file, label)) in blocks.iter().zip(files.iter().zip(&labels)) {
        let mut lines = block.lines();
        assert_eq!(lines.next().unwrap(), format!("{file} ----------"));
        let best: Vec<&str> = lines.take(5).collect();
        assert_eq!(best.len(), 5, "top 5 expected:\n{block}");
        let top1 = best[0].split(" - ").nth(1).unwrap().trim_matches('"');
        right += usize::from(top1 == label.to_string());
    }
    assert!(right >= 49, "{right}/50 right:\n{out}");
    // Labels from a file, Caffe's line format.
    let labels_file = dir.path().join("labels.txt");
    std::fs::write(
        &labels_file,
        (0..10).map(|d| format!("digit {d}\n")).collect::<String>(),
    )
    .unwrap();
    let out = classify(
        &shared,
        &[
            "--labels",
            labels_file.to_str().unwrap(),
            "--top-k",
            "1",
            &files[0],
        ],
    );
    let line = out.lines().nth(1).unwrap();
    let (prob, label) = line.split_once(" - ").unwrap();
    assert_eq!(label, format!("\"digit {}\"", labels[0]), "{out}");
    assert!(prob.parse::<f32>().unwrap() > 0.9, "{out}");
}

#[test]
fn classify_matches_opencv_dnn_on_the_same_preprocessing() {
    let Some(shared) = shared() else { return };
    let python = std::env::var("CREMA_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let have_cv2 = Command::new(&python)
        .args([
            "-c",
            "import cv2, numpy; assert int(cv2.__version__.split('.')[0]) == 4",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !have_cv2 {
        println!("skipping: {python} cannot import cv2 4.x (pip install 'opencv-python-headless<5' numpy)");
        return;
    }
    // 28×28 files go to the net as they are: the probabilities must agree to 1e-4. 36×36 files are
    // resized to 28×28 by both sides, with the same pixels.
    for (size, mean, bound) in [(28, "0", 1e-4), (28, "33", 1e-4), (36, "0", 1e-4)] {
        let dir = tempfile::tempdir().unwrap();
        let (files, _) = mnist_pngs(&shared, dir.path(), 200, size);
        let zoo = shared.join("zoo/lenet");
        let mut args: Vec<&str> = vec!["--json", "--top-k", "10", "--mean-value", mean];
        args.extend(files.iter().map(|s| s.as_str()));
        let ours = parse_json(&classify(&shared, &args));
        assert_eq!(ours.len(), files.len());
        let out = Command::new(&python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/opencv_classify.py"))
            .args([
                zoo.join("lenet.prototxt").to_str().unwrap(),
                zoo.join("lenet_iter_10000.caffemodel").to_str().unwrap(),
            ])
            .args(["1", "28", "28", "0.00390625", mean])
            .args(&files)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let theirs: Vec<Vec<f64>> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split(' ').map(|v| v.parse().unwrap()).collect())
            .collect();
        let mut worst = 0f64;
        for ((file, preds), cv) in ours.iter().zip(&theirs) {
            let cv_top1 = (0..10).fold(0, |b, i| if cv[i] > cv[b] { i } else { b });
            assert_eq!(
                preds[0].0, cv_top1,
                "{file}: crema {preds:?} vs OpenCV {cv:?}"
            );
            for (c, p) in preds {
                worst = worst.max((p - cv[*c]).abs());
            }
        }
        println!("{size}x{size}, mean {mean}: 200 images, top-1 agree, max |p_crema - p_opencv| = {worst:.2e}");
        assert!(
            worst < bound,
            "{size}x{size}: probabilities differ by {worst}"
        );
    }
}

#[test]
fn jpeg_pixels_equal_opencv_imread() {
    let Some(shared) = shared() else { return };
    let python = std::env::var("CREMA_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let have_cv2 = Command::new(&python)
        .args([
            "-c",
            "import cv2, numpy; assert int(cv2.__version__.split('.')[0]) == 4",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !have_cv2 {
        println!("skipping: {python} cannot import cv2 4.x (pip install 'opencv-python-headless<5' numpy)");
        return;
    }
    use crema_data_tools::image_io::{decode, resize_bilinear, ColorMode};
    // BVLC's example photos (colour, and a grey JPEG) and CIFAR-10 test JPEGs (4:2:0 colour).
    let mut files: Vec<PathBuf> = ["cat.jpg", "cat_gray.jpg", "fish-bike.jpg"]
        .iter()
        .map(|f| shared.join("data/images").join(f))
        .collect();
    let cifar = shared.join("data/cifar10/test/cat");
    if let Ok(rd) = std::fs::read_dir(&cifar) {
        let mut c: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).collect();
        c.sort();
        files.extend(c.into_iter().take(100));
    }
    let dir = tempfile::tempdir().unwrap();
    // Decoding alone, then decoding and resizing down, up, and by an exact half.
    let cases = [
        (ColorMode::Color, "color", None),
        (ColorMode::Gray, "gray", None),
        (ColorMode::Color, "color", Some((227, 227))),
        (ColorMode::Gray, "gray", Some((28, 28))),
        (ColorMode::Color, "color", Some((45, 71))),
        (ColorMode::Color, "color", Some((16, 16))),
    ];
    for (mode, name, size) in cases {
        let mut raw = vec![];
        for f in &files {
            let img = decode(&std::fs::read(f).unwrap(), mode, f).unwrap();
            let img = match size {
                Some((h, w)) => resize_bilinear(&img, h, w),
                None => img,
            };
            raw.extend(img.data);
        }
        let raw_path = dir.path().join(format!("{name}.raw"));
        std::fs::write(&raw_path, raw).unwrap();
        let arg = match size {
            Some((h, w)) => format!("{name}:{h}x{w}"),
            None => name.to_string(),
        };
        let out = Command::new(&python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/opencv_imread.py"))
            .arg(&raw_path)
            .arg(&arg)
            .args(&files)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        println!(
            "{arg}: {} files, differing values and largest difference: {}",
            files.len(),
            text.trim()
        );
        assert_eq!(
            text.trim(),
            "0 0",
            "{arg}: crema's pixels differ from OpenCV's"
        );
    }
}
