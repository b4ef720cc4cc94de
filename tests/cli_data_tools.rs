//! convert-imageset and compute-image-mean through the binary on bad inputs: each gives a
//! one-line error naming what is wrong and a non-zero exit, never a panic; unreadable images are
//! skipped and counted; Caffe's single-dash flags work.

use std::path::Path;
use std::process::Command;

/// Runs crema in `dir`: (success, stdout, stderr).
fn crema(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_crema"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run crema");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        !stderr.contains("panicked"),
        "crema {args:?} panicked:\n{stderr}"
    );
    (out.status.success(), stdout, stderr)
}

/// The `error: ...` line of a failed run.
fn error_line(dir: &Path, args: &[&str]) -> String {
    let (ok, out, err) = crema(dir, args);
    assert!(!ok, "crema {args:?} should fail:\n{out}\n{err}");
    err.lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line:\n{err}"))
        .to_string()
}

/// `root/cat/{a,b}.png` and `root/dog/c.jpg`, 8×6 pixels.
fn folders(root: &Path) {
    for (class, name) in [("cat", "a.png"), ("cat", "b.png"), ("dog", "c.jpg")] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        image::RgbImage::from_pixel(8, 6, image::Rgb([10, 20, 30]))
            .save(root.join(class).join(name))
            .unwrap();
    }
}

#[test]
fn bad_lists_and_folders_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    folders(&d.join("imgs"));
    let e = error_line(
        d,
        &["convert-imageset", "--from-folders", "no_such_root/", "db"],
    );
    assert!(e.contains("no_such_root"), "{e}");
    std::fs::write(d.join("list.txt"), "cat/a.png 0\ncat/b.png\n").unwrap();
    let e = error_line(d, &["convert-imageset", "imgs/", "list.txt", "db"]);
    assert!(e.contains("list.txt:2") && e.contains("no label"), "{e}");
    std::fs::write(d.join("list.txt"), "cat/a.png 0\ndog/c.jpg dog\n").unwrap();
    let e = error_line(d, &["convert-imageset", "imgs/", "list.txt", "db"]);
    assert!(
        e.contains("list.txt:2") && e.contains("\"dog\" is not an integer"),
        "{e}"
    );
    let e = error_line(
        d,
        &["compute-image-mean", "no_such_lmdb", "mean.binaryproto"],
    );
    assert!(
        e.contains("no_such_lmdb") && e.contains("does not exist"),
        "{e}"
    );
    assert!(
        !d.join("db").exists(),
        "a failed conversion must not leave a database behind"
    );
}

#[test]
fn a_corrupt_image_is_skipped_and_counted_mixed_sizes_fail_with_check_size() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    folders(&d.join("imgs"));
    let good = std::fs::read(d.join("imgs/dog/c.jpg")).unwrap();
    std::fs::write(d.join("imgs/dog/broken.jpg"), &good[..good.len() / 3]).unwrap();
    let (ok, out, err) = crema(d, &["convert-imageset", "--from-folders", "imgs/", "db"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("wrote 3 images, 3x6x8") && out.contains("(1 skipped, 2 classes"),
        "{out}"
    );
    assert!(
        err.contains("broken.jpg"),
        "the skipped file is named in a warning:\n{err}"
    );

    image::RgbImage::from_pixel(5, 5, image::Rgb([1, 2, 3]))
        .save(d.join("imgs/dog/small.png"))
        .unwrap();
    let e = error_line(
        d,
        &[
            "convert-imageset",
            "--from-folders",
            "--check-size",
            "--overwrite",
            "imgs/",
            "db2",
        ],
    );
    assert!(
        e.contains("small.png") && e.contains("3x5x5") && e.contains("3x6x8"),
        "{e}"
    );
    // Without --check-size the sizes may differ, as in Caffe.
    let (ok, out, err) = crema(d, &["convert-imageset", "--from-folders", "imgs/", "db3"]);
    assert!(ok && out.contains("wrote 4 images"), "{out}\n{err}");
}

#[test]
fn an_existing_database_is_refused_unless_overwrite() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    folders(&d.join("imgs"));
    let (ok, out, err) = crema(d, &["convert-imageset", "--from-folders", "imgs/", "db"]);
    assert!(ok, "{out}\n{err}");
    let e = error_line(d, &["convert-imageset", "--from-folders", "imgs/", "db"]);
    assert!(
        e.contains("db") && e.contains("already exists") && e.contains("--overwrite"),
        "{e}"
    );
    // The refused run left the database as it was.
    let (ok, out, _) = crema(d, &["compute-image-mean", "db"]);
    assert!(ok && out.contains("3x6x8 mean of db"), "{out}");
    // Caffe's spelling of the flags, as old scripts write them.
    let (ok, out, err) = crema(
        d,
        &[
            "convert-imageset",
            "-from_folders",
            "-overwrite",
            "-resize_height=4",
            "-resize_width=4",
            "imgs/",
            "db",
        ],
    );
    assert!(ok && out.contains("wrote 3 images, 3x4x4"), "{out}\n{err}");
}
