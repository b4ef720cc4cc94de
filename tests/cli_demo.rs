//! `crema demo` on a fresh folder: it draws its data, runs the whole workflow and reaches an
//! accuracy far above chance; the commands it prints work on what it wrote.

use std::path::Path;
use std::process::Command;

fn crema(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_crema"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run crema");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_runs_the_workflow_and_learns_the_digits() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let (ok, out, err) = crema(cwd, &["demo", "--dir", "work", "--quick"]);
    assert!(ok, "crema demo failed:\n{out}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    // Each step prints the command that repeats it.
    for c in [
        "$ crema convert-imageset --from-folders --shuffle --overwrite work/images/train/ work/train_lmdb",
        "$ crema compute-image-mean work/train_lmdb work/mean.binaryproto",
        "$ crema train --solver work/solver.prototxt",
        "$ crema test --model work/train_val.prototxt --weights work/demo_iter_200.caffemodel --iterations 10",
    ] {
        assert!(out.contains(c), "missing `{c}` in:\n{out}");
    }
    // The solver's Caffe-style progress is shown, the nets' setup chatter is not.
    assert!(
        err.contains("Iteration 100 (") && !err.contains("Setting up conv1"),
        "{err}"
    );
    let line = out
        .lines()
        .find(|l| l.starts_with("Final test accuracy: "))
        .unwrap_or_else(|| panic!("no final accuracy line:\n{out}"));
    let pct: f32 = line["Final test accuracy: ".len()..]
        .split('%')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unreadable: {line}"));
    assert!(pct >= 80.0, "10 classes, chance is 10%: {line}");
    let right = out.lines().filter(|l| l.ends_with(" - right")).count();
    assert!(
        right >= 3,
        "most of the five classified images should be right:\n{out}"
    );

    // The printed test command, run by hand, scores what the demo reported.
    let (ok, test_out, test_err) = crema(
        cwd,
        &[
            "test",
            "--model",
            "work/train_val.prototxt",
            "--weights",
            "work/demo_iter_200.caffemodel",
            "--iterations",
            "10",
        ],
    );
    assert!(ok, "{test_out}\n{test_err}");
    let reported = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("accuracy = "))
        .unwrap_or_default();
    let reported: f32 = reported
        .split(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0);
    let by_hand: f32 = test_out
        .lines()
        .find_map(|l| l.strip_prefix("accuracy = "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(-2.0);
    assert!(
        (reported - by_hand).abs() < 1e-4,
        "demo said {reported}, crema test says {by_hand}"
    );
}

#[test]
fn demo_refuses_a_work_folder_it_cannot_create() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a_file");
    std::fs::write(&file, "not a folder").unwrap();
    let (ok, out, err) = crema(tmp.path(), &["demo", "--dir", "a_file/work", "--quick"]);
    assert!(!ok, "{out}");
    assert!(
        err.contains("error:") && err.contains("a_file/work") && !err.contains("panicked"),
        "{err}"
    );
}
