//! `crema parse-log` and `crema plot` on a log in Caffe's own format (its glog lines, written out
//! here) and on a real log of `crema train`.

use std::path::Path;
use std::process::Command;

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
    assert!(out.status.success(), "crema {args:?}:\n{text}");
    text
}

/// A LeNet run as BVLC Caffe logs it (solver.cpp / sgd_solver.cpp line formats), crossing midnight.
const CAFFE_LOG: &str = "\
Log file created at: 2016/09/03 22:10:41
I0903 22:10:41.110651 12345 caffe.cpp:217] Using GPUs 0
I0903 22:10:41.300000 12345 solver.cpp:48] Initializing solver from parameters:
test_iter: 100
base_lr: 0.01
I0903 22:10:41.900000 12345 net.cpp:283] Network initialization done.
I0903 22:10:42.000000 12345 solver.cpp:317] Solving LeNet
I0903 22:10:42.000010 12345 solver.cpp:318] Learning Rate Policy: inv
I0903 22:10:42.100000 12345 solver.cpp:404] Iteration 0, Testing net (#0)
I0903 22:10:43.500000 12345 solver.cpp:471]     Test net output #0: accuracy = 0.0894
I0903 22:10:43.500010 12345 solver.cpp:471]     Test net output #1: loss = 2.38127 (* 1 = 2.38127 loss)
I0903 22:10:43.600000 12345 solver.cpp:218] Iteration 0 (-1.4013e-45 iter/s, 1.6s/100 iters), loss = 2.35
I0903 22:10:43.600010 12345 solver.cpp:237]     Train net output #0: loss = 2.35 (* 1 = 2.35 loss)
I0903 22:10:43.600020 12345 sgd_solver.cpp:105] Iteration 0, lr = 0.01
I0903 22:10:45.600000 12345 solver.cpp:218] Iteration 100 (50 iter/s, 2s/100 iters), loss = 0.25
I0903 22:10:45.600010 12345 solver.cpp:237]     Train net output #0: loss = 0.25 (* 1 = 0.25 loss)
I0903 22:10:45.600020 12345 sgd_solver.cpp:105] Iteration 100, lr = 0.00992565
I0903 22:10:47.600000 12345 solver.cpp:404] Iteration 200, Testing net (#0)
I0903 22:10:48.000000 12345 solver.cpp:471]     Test net output #0: accuracy = 0.9712
I0903 22:10:48.000010 12345 solver.cpp:471]     Test net output #1: loss = 0.0912 (* 1 = 0.0912 loss)
I0903 22:10:48.100000 12345 solver.cpp:218] Iteration 200 (50 iter/s, 2s/100 iters), loss = 0.12
I0903 22:10:48.100010 12345 solver.cpp:237]     Train net output #0: loss = 0.12 (* 1 = 0.12 loss)
I0903 22:10:48.100020 12345 sgd_solver.cpp:105] Iteration 200, lr = 0.00985258
some line a script printed without a glog prefix: Iteration 300
I0904 00:00:02.000000 12345 solver.cpp:218] Iteration 300 (0.01 iter/s, 6554s/100 iters), loss = 0.00007
I0904 00:00:02.000010 12345 solver.cpp:237]     Train net output #0: loss = 7e-05 (* 1 = 7e-05 loss)
I0904 00:00:02.000020 12345 sgd_solver.cpp:105] Iteration 300, lr = 1e-05
I0904 00:00:03.000000 12345 solver.cpp:447] Snapshotting to binary proto file lenet_iter_300.caffemodel
I0904 00:00:03.500000 12345 solver.cpp:322] Optimization Done.
";

#[test]
fn caffe_log_gives_parse_log_py_tables() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("caffe.log"), CAFFE_LOG).unwrap();
    crema(d, &["parse-log", "caffe.log", "csv"]);
    // parse_log.py's rules: a row takes the lr of the last `lr =` line before it, the first row's
    // (NaN) lr is the second's, seconds count from the `Solving` line, `\r\n` line ends.
    let train = std::fs::read_to_string(d.join("csv/caffe.log.train")).unwrap();
    assert_eq!(
        train,
        "NumIters,Seconds,LearningRate,loss\r\n\
         0.0,1.60001,0.01,2.35\r\n\
         100.0,3.60001,0.01,0.25\r\n\
         200.0,6.10001,0.00992565,0.12\r\n\
         300.0,6560.00001,0.00985258,7e-05\r\n"
    );
    let test = std::fs::read_to_string(d.join("csv/caffe.log.test")).unwrap();
    assert_eq!(
        test,
        "NumIters,Seconds,LearningRate,accuracy,loss\r\n\
         0.0,1.5,0.00992565,0.0894,2.38127\r\n\
         200.0,6.0,0.00992565,0.9712,0.0912\r\n"
    );
    // The default output folder is the current one, as parse_log.py's.
    crema(d, &["parse-log", "caffe.log"]);
    assert_eq!(
        std::fs::read_to_string(d.join("caffe.log.train")).unwrap(),
        train
    );
    check_plot(d, "caffe.log", 3);
}

/// Plots `log` and checks the PNG: its size, and pixels of the train-loss and test colours.
fn check_plot(dir: &Path, log: &str, panels: usize) {
    let out = crema(
        dir,
        &[
            "plot",
            log,
            "curves.png",
            "--width",
            "900",
            "--height",
            "750",
        ],
    );
    assert!(out.contains("curves.png: "), "{out}");
    let img = image::open(dir.join("curves.png")).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (900, 750));
    let count = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
    // Series colours: train loss (blue), test outputs (red, green), the learning rate (grey).
    for (name, c) in [
        ("train loss", [31, 119, 180]),
        ("test", [214, 39, 40]),
        ("lr", [80, 80, 80]),
    ] {
        assert!(count(c) > 200, "{name}: {} pixels of {c:?}", count(c));
    }
    // Text drawn: dark pixels in each panel's title band (the embedded font rendered).
    let band = 750 / panels as u32;
    for p in 0..panels as u32 {
        let dark = (0..900)
            .flat_map(|x| (p * band + 30..p * band + 60).map(move |y| (x, y)))
            .filter(|(x, y)| img.get_pixel(*x, (*y).min(749)).0.iter().all(|v| *v < 100))
            .count();
        assert!(dark > 30, "panel {p} has no title text");
    }
}

#[test]
fn crema_training_log_parses_and_plots() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if !shared.join("data/mnist/t10k-images-idx3-ubyte.gz").exists() {
        println!("skipping: ../shared/data/mnist is not present");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = shared.join("data/mnist");
    let (im, lb) = (
        m.join("t10k-images-idx3-ubyte.gz"),
        m.join("t10k-labels-idx1-ubyte.gz"),
    );
    let (im, lb) = (im.to_str().unwrap(), lb.to_str().unwrap());
    crema(
        d,
        &["convert-mnist", im, lb, "train_lmdb", "--count", "2000"],
    );
    crema(
        d,
        &["convert-mnist", im, lb, "test_lmdb", "--start", "9000"],
    );
    let net =
        std::fs::read_to_string(shared.join("caffe/examples/mnist/lenet_train_test.prototxt"))
            .unwrap()
            .replace("examples/mnist/mnist_train_lmdb", "train_lmdb")
            .replace("examples/mnist/mnist_test_lmdb", "test_lmdb");
    std::fs::write(d.join("net.prototxt"), net).unwrap();
    let solver = "net: \"net.prototxt\"\ntest_iter: 2\ntest_interval: 50\nbase_lr: 0.01\nmomentum: 0.9\n\
                  weight_decay: 0.0005\nlr_policy: \"inv\"\ngamma: 0.0001\npower: 0.75\ndisplay: 10\nmax_iter: 100\n\
                  snapshot_prefix: \"lenet\"\n";
    std::fs::write(d.join("solver.prototxt"), solver).unwrap();
    let log = crema(d, &["train", "--solver", "solver.prototxt"]);
    std::fs::write(d.join("train.log"), &log).unwrap();
    crema(d, &["parse-log", "train.log"]);
    let train = std::fs::read_to_string(d.join("train.log.train")).unwrap();
    let test = std::fs::read_to_string(d.join("train.log.test")).unwrap();
    let rows = |t: &str| {
        t.lines()
            .skip(1)
            .map(|l| l.split(',').map(String::from).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        train.lines().next(),
        Some("NumIters,Seconds,LearningRate,loss"),
        "{train}"
    );
    assert_eq!(
        test.lines().next(),
        Some("NumIters,Seconds,LearningRate,accuracy,loss"),
        "{test}"
    );
    let (tr, te) = (rows(&train), rows(&test));
    let iters: Vec<&str> = tr.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(
        iters,
        ["0.0", "10.0", "20.0", "30.0", "40.0", "50.0", "60.0", "70.0", "80.0", "90.0"],
        "{train}"
    );
    assert_eq!(
        te.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(),
        ["0.0", "50.0", "100.0"],
        "{test}"
    );
    // Losses fall, accuracy rises, seconds grow, lr follows the inv policy from 0.01.
    let f = |s: &str| s.parse::<f64>().unwrap();
    assert!(f(&tr[9][3]) < f(&tr[0][3]) / 2.0, "{train}");
    assert!(f(&te[2][3]) > 0.7 && f(&te[0][3]) < 0.3, "{test}");
    assert!(tr.windows(2).all(|w| f(&w[1][1]) >= f(&w[0][1])), "{train}");
    assert_eq!(tr[1][2], "0.01");
    assert!(
        (f(&tr[9][2]) - 0.01 * (1.0f64 + 0.0001 * 80.0).powf(-0.75)).abs() < 1e-8,
        "{train}"
    );
    check_plot(d, "train.log", 3);
}
