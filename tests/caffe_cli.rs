//! `crema caffe VERB -flag value`: Caffe's command line, as existing scripts call it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn crema(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_crema"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = crema(dir, args);
    assert!(o.status.success(), "crema {args:?}:\n{}", text(&o));
    text(&o)
}

fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if p.join("data/mnist/t10k-images-idx3-ubyte.gz").exists() && p.join("zoo/lenet").exists() {
        Some(p)
    } else {
        println!("skipping: ../shared/data/mnist or ../shared/zoo/lenet is not present");
        None
    }
}

#[test]
fn caffe_verbs_and_single_dash_flags() {
    let Some(shared) = shared() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = shared.join("data/mnist");
    let (im, lb) = (
        m.join("t10k-images-idx3-ubyte.gz"),
        m.join("t10k-labels-idx1-ubyte.gz"),
    );
    let (im, lb) = (im.to_str().unwrap(), lb.to_str().unwrap());
    ok(
        d,
        &["convert-mnist", im, lb, "train_lmdb", "--count", "1000"],
    );
    ok(
        d,
        &[
            "convert-mnist",
            im,
            lb,
            "test_lmdb",
            "--start",
            "9000",
            "--count",
            "500",
        ],
    );
    let net =
        std::fs::read_to_string(shared.join("caffe/examples/mnist/lenet_train_test.prototxt"))
            .unwrap()
            .replace("examples/mnist/mnist_train_lmdb", "train_lmdb")
            .replace("examples/mnist/mnist_test_lmdb", "test_lmdb");
    std::fs::write(d.join("net.prototxt"), net).unwrap();
    let solver = "net: \"net.prototxt\"\ntest_iter: 1\ntest_interval: 10\nbase_lr: 0.01\nmomentum: 0.9\n\
                  lr_policy: \"fixed\"\ndisplay: 5\nmax_iter: 20\nsnapshot: 10\nsnapshot_prefix: \"lenet\"\n";
    std::fs::write(d.join("solver.prototxt"), solver).unwrap();

    // train, with Caffe's signal flags; snapshots at 10 and 20.
    let log = ok(
        d,
        &[
            "caffe",
            "train",
            "-solver",
            "solver.prototxt",
            "-sigint_effect",
            "stop",
            "-sighup_effect",
            "none",
        ],
    );
    assert!(log.contains("Optimization Done."), "{log}");
    for it in [10, 20] {
        assert!(
            d.join(format!("lenet_iter_{it}.caffemodel")).exists(),
            "{log}"
        );
    }
    // resume from a snapshot, fine-tune from weights (-flag=value form too).
    let log = ok(
        d,
        &[
            "caffe",
            "train",
            "-solver=solver.prototxt",
            "-snapshot",
            "lenet_iter_10.solverstate",
        ],
    );
    assert!(
        log.contains("Restoring previous solver status from lenet_iter_10.solverstate"),
        "{log}"
    );
    let zoo = shared.join("zoo/lenet/lenet_iter_10000.caffemodel");
    let zoo = zoo.to_str().unwrap();
    let log = ok(
        d,
        &[
            "caffe",
            "train",
            "-solver",
            "solver.prototxt",
            "-weights",
            zoo,
        ],
    );
    assert!(log.contains("Finetuning from"), "{log}");
    let both = crema(
        d,
        &[
            "caffe",
            "train",
            "-solver",
            "solver.prototxt",
            "-weights",
            zoo,
            "-snapshot",
            "lenet_iter_10.solverstate",
        ],
    );
    assert!(
        !both.status.success() && text(&both).contains("not both"),
        "{}",
        text(&both)
    );

    // test: the same numbers as `crema test`.
    let caffe = ok(
        d,
        &[
            "caffe",
            "test",
            "-model",
            "net.prototxt",
            "-weights",
            zoo,
            "-iterations",
            "5",
        ],
    );
    let ours = ok(
        d,
        &[
            "test",
            "--model",
            "net.prototxt",
            "--weights",
            zoo,
            "--iterations",
            "5",
        ],
    );
    let last = |s: &str| {
        s.lines()
            .filter(|l| l.starts_with("accuracy = ") || l.starts_with("loss = "))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(last(&caffe), last(&ours));
    assert_eq!(last(&caffe).len(), 2, "{caffe}");
    let no_weights = crema(d, &["caffe", "test", "-model", "net.prototxt"]);
    assert!(
        !no_weights.status.success() && text(&no_weights).contains("-weights"),
        "{}",
        text(&no_weights)
    );

    // time, with -phase and the flags a verb does not use reported.
    let t = ok(
        d,
        &[
            "caffe",
            "time",
            "-model",
            "net.prototxt",
            "-iterations",
            "2",
            "-phase",
            "TEST",
            "-solver",
            "x",
        ],
    );
    assert!(
        t.contains("Average Forward pass") && t.contains("-solver is not used"),
        "{t}"
    );

    // Unknown verbs and missing flags say what is wrong.
    let bad = crema(d, &["caffe", "trian", "-solver", "solver.prototxt"]);
    assert!(
        !bad.status.success() && text(&bad).contains("train"),
        "{}",
        text(&bad)
    );
    let bad = crema(d, &["caffe", "train"]);
    assert!(
        !bad.status.success() && text(&bad).contains("-solver"),
        "{}",
        text(&bad)
    );
}
