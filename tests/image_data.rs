//! The ImageData layer through a real net: list parsing, root_folder, BGR C×H×W values,
//! resizing, grey, wrap-around, per-epoch shuffling, per-batch shapes and error messages.

use crema::engine::CpuEngine;
use crema::layers::Phase;
use crema::net::{Net, State};
use crema_proto::caffe::NetParameter;
use std::path::Path;
use std::rc::Rc;

/// Writes a `w`×`h` RGB PNG whose pixel (x, y) is (r, g, b) = (k, 10 + x, 20 + y).
fn png(path: &Path, k: u8, w: u32, h: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([k, 10 + x as u8, 20 + y as u8]));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    img.save(path).unwrap();
}

fn net(text: &str, phase: Phase) -> crema::Result<Net> {
    let p: NetParameter = crema_proto::parse_text(text, "test", "caffe.NetParameter").unwrap();
    Net::new(&p, &State::phase(phase), Rc::new(CpuEngine::new()))
}

fn image_data_net(list: &Path, root: &str, extra: &str, transform: &str) -> String {
    format!(
        r#"name: "t"
layer {{ name: "d" type: "ImageData" top: "data" top: "label"
  transform_param {{ {transform} }}
  image_data_param {{ source: "{}" root_folder: "{root}" {extra} }} }}"#,
        list.display()
    )
}

fn forward(n: &mut Net) -> (Vec<usize>, Vec<f32>, Vec<f32>) {
    n.forward().unwrap();
    let e = n.engine().clone();
    let d = n.blob("data").unwrap();
    let l = n.blob("label").unwrap();
    (d.shape(), d.data_to_vec(&*e), l.data_to_vec(&*e))
}

/// Six 3-wide, 2-high images in a folder with a space in its name, labels 5 - k.
fn dataset(dir: &Path) -> std::path::PathBuf {
    let mut list = String::new();
    for k in 0..6u8 {
        png(&dir.join(format!("my imgs/{k}.png")), k, 3, 2);
        list.push_str(&format!("my imgs/{k}.png {}\n", 5 - k));
    }
    let path = dir.join("list.txt");
    std::fs::write(&path, list).unwrap();
    path
}

#[test]
fn reads_bgr_chw_in_list_order_and_wraps() {
    let dir = tempfile::tempdir().unwrap();
    let list = dataset(dir.path());
    let root = dir.path().display().to_string(); // no trailing '/': crema adds it
    let mut n = net(
        &image_data_net(&list, &root, "batch_size: 4", "scale: 0.5"),
        Phase::Train,
    )
    .unwrap();
    let (shape, data, labels) = forward(&mut n);
    assert_eq!(shape, [4, 3, 2, 3]);
    assert_eq!(labels, [5.0, 4.0, 3.0, 2.0]);
    // Item 1: channel 0 is blue (20 + y), channel 1 green (10 + x), channel 2 red (k = 1); × 0.5.
    let item = &data[18..36];
    assert_eq!(&item[..6], &[10.0, 10.0, 10.0, 10.5, 10.5, 10.5]);
    assert_eq!(&item[6..12], &[5.0, 5.5, 6.0, 5.0, 5.5, 6.0]);
    assert_eq!(&item[12..], &[0.5; 6]);
    // The second batch wraps around the six images.
    let (_, _, labels) = forward(&mut n);
    assert_eq!(labels, [1.0, 0.0, 5.0, 4.0]);
    assert!(n.data_wait().is_some());
}

/// Data-parallel workers share the list: worker r of 2 reads images r, r+2, ... in training
/// (with `shuffle`, one order shared by both, so together they see each image once per epoch);
/// test nets run on one worker and read every image.
#[test]
fn training_workers_read_their_share_of_the_list() {
    let dir = tempfile::tempdir().unwrap();
    let list = dataset(dir.path());
    let root = dir.path().display().to_string();
    let labels_of = |rank: usize, extra: &'static str, phase: Phase| {
        let text = image_data_net(&list, &root, extra, "");
        std::thread::spawn(move || {
            crema::parallel::set_shard(crema::parallel::Shard { rank, count: 2 });
            let mut n = net(&text, phase).unwrap();
            let (_, _, a) = forward(&mut n);
            let (_, _, b) = forward(&mut n);
            [a, b].concat()
        })
        .join()
        .unwrap()
    };
    // Labels are 5 - k for image k.
    assert_eq!(
        labels_of(0, "batch_size: 2", Phase::Train),
        [5.0, 3.0, 1.0, 5.0]
    );
    assert_eq!(
        labels_of(1, "batch_size: 2", Phase::Train),
        [4.0, 2.0, 0.0, 4.0]
    );
    assert_eq!(
        labels_of(1, "batch_size: 2", Phase::Test),
        [5.0, 4.0, 3.0, 2.0]
    );
    let first_epoch =
        |rank| labels_of(rank, "batch_size: 3 shuffle: true", Phase::Train)[..3].to_vec();
    let mut both = [first_epoch(0), first_epoch(1)].concat();
    both.sort_by(f32::total_cmp);
    assert_eq!(both, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
}

#[test]
fn resizes_reads_grey_and_applies_the_transform() {
    let dir = tempfile::tempdir().unwrap();
    let list = dataset(dir.path());
    let root = format!("{}/", dir.path().display());
    let text = image_data_net(
        &list,
        &root,
        "batch_size: 2 new_height: 4 new_width: 5 is_color: false",
        "crop_size: 3",
    );
    let mut n = net(&text, Phase::Test).unwrap();
    let (shape, data, _) = forward(&mut n);
    assert_eq!(shape, [2, 1, 3, 3]);
    assert!(data.iter().all(|v| *v > 0.0 && *v < 255.0), "{data:?}");
}

#[test]
fn shuffles_every_epoch_with_the_seed() {
    let dir = tempfile::tempdir().unwrap();
    let list = dataset(dir.path());
    let root = dir.path().display().to_string();
    let text = image_data_net(&list, &root, "batch_size: 3 shuffle: true", "");
    let epochs = |seed: u64| -> Vec<Vec<f32>> {
        crema::rng::seed(seed);
        let mut n = net(&text, Phase::Train).unwrap();
        (0..4)
            .map(|_| {
                let mut epoch = forward(&mut n).2;
                epoch.extend(forward(&mut n).2);
                epoch
            })
            .collect()
    };
    let a = epochs(7);
    for e in &a {
        let mut sorted = e.clone();
        sorted.sort_by(f32::total_cmp);
        assert_eq!(
            sorted,
            [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
            "an epoch is a permutation: {a:?}"
        );
    }
    assert!(
        a.windows(2).any(|w| w[0] != w[1]),
        "reshuffled each epoch: {a:?}"
    );
    assert_ne!(
        a[0],
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],
        "shuffled before the first epoch"
    );
    assert_eq!(a, epochs(7), "the same seed gives the same order");
}

#[test]
fn batches_of_one_may_change_size_larger_ones_may_not() {
    let dir = tempfile::tempdir().unwrap();
    png(&dir.path().join("a.png"), 1, 3, 2);
    png(&dir.path().join("b.png"), 2, 5, 4);
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "a.png 0\nb.png 1\n").unwrap();
    let root = dir.path().display().to_string();
    let mut n = net(
        &image_data_net(&list, &root, "batch_size: 1", ""),
        Phase::Train,
    )
    .unwrap();
    assert_eq!(forward(&mut n).0, [1, 3, 2, 3]);
    assert_eq!(forward(&mut n).0, [1, 3, 4, 5]);
    let mut n = net(
        &image_data_net(&list, &root, "batch_size: 2", ""),
        Phase::Train,
    )
    .unwrap();
    let err = n.forward().unwrap_err().to_string();
    assert!(
        err.contains("b.png") && err.contains("a.png") && err.contains("3x4x5"),
        "{err}"
    );
}

#[test]
fn bad_lists_and_missing_images_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    png(&dir.path().join("a.png"), 1, 3, 2);
    let list = dir.path().join("list.txt");
    let err_of = |list_text: &str, extra: &str| -> String {
        std::fs::write(&list, list_text).unwrap();
        let text = image_data_net(&list, &root, extra, "");
        match net(&text, Phase::Train) {
            Err(e) => e.to_string(),
            Ok(mut n) => n
                .forward()
                .map(|_| "no error".to_string())
                .unwrap_or_else(|e| e.to_string()),
        }
    };
    let e = err_of("a.png\n", "");
    assert!(e.contains("list.txt:1") && e.contains("no label"), "{e}");
    let e = err_of("a.png cat\n", "");
    assert!(e.contains("not an integer"), "{e}");
    let e = err_of("missing.png 0\n", "");
    assert!(
        e.contains("missing.png") && e.contains("image_data_param"),
        "{e}"
    );
    let e = err_of("a.png 0\nmissing.png 1\n", "batch_size: 2");
    assert!(e.contains("missing.png"), "{e}");
    let e = err_of("", "");
    assert!(e.contains("lists no images"), "{e}");
    let e = err_of("a.png 0\n", "new_height: 4");
    assert!(e.contains("new_height") && e.contains("new_width"), "{e}");
    std::fs::remove_file(&list).unwrap();
    let e = err_of_missing_list(&list, &root);
    assert!(
        e.contains("image_data_param.source") && e.contains("list.txt"),
        "{e}"
    );
}

fn err_of_missing_list(list: &Path, root: &str) -> String {
    match net(&image_data_net(list, root, "", ""), Phase::Train) {
        Err(e) => e.to_string(),
        Ok(_) => "no error".into(),
    }
}

/// `crema train` on an ImageData net that decodes large PNGs for a tiny model: the data is the
/// bottleneck, and the log must say so at each display.
#[test]
fn train_logs_the_time_spent_waiting_for_data() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut list = String::new();
    for k in 0..40u8 {
        // Noise compresses badly, so each file takes a while to decode.
        let mut state = (k as u32).wrapping_mul(2_654_435_761) | 1;
        let img = image::RgbImage::from_fn(768, 768, |_, _| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            image::Rgb([state as u8, (state >> 8) as u8, (state >> 16) as u8])
        });
        img.save(d.join(format!("{k}.png"))).unwrap();
        list.push_str(&format!("{k}.png {}\n", k % 2));
    }
    std::fs::write(d.join("list.txt"), list).unwrap();
    std::fs::write(
        d.join("net.prototxt"),
        r#"name: "starved"
layer { name: "d" type: "ImageData" top: "data" top: "label"
  transform_param { scale: 0.00390625 }
  image_data_param { source: "list.txt" batch_size: 20 new_height: 4 new_width: 4 shuffle: true } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"#,
    )
    .unwrap();
    std::fs::write(
        d.join("solver.prototxt"),
        "net: \"net.prototxt\"\nbase_lr: 0.01\nlr_policy: \"fixed\"\ndisplay: 5\nmax_iter: 20\nsolver_mode: CPU\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_crema"))
        .args(["train", "--solver", "solver.prototxt"])
        .current_dir(d)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let waits: Vec<&str> = log.lines().filter(|l| l.contains("Data wait: ")).collect();
    // Iteration 0 may find its batch already prefetched during setup; the later displays
    // cannot, since decoding 20 large PNGs takes far longer than the tiny model's step.
    assert!(
        waits.iter().any(|l| l.contains("over the last 5 iters")),
        "expected a data-wait line for the displays after iteration 0:\n{log}"
    );
}
