//! `crema extract-features` writes Caffe's feature LMDBs: float Datums under %010d keys, equal to
//! the blobs of a forward pass of the same net.

use crema::engine::CpuEngine;
use crema::layers::Phase;
use crema::net::{net_from_file, State};
use std::path::Path;
use std::process::Command;
use std::rc::Rc;

#[test]
fn zoo_lenet_features_match_a_forward_pass() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    if !shared.join("data/mnist/t10k-images-idx3-ubyte.gz").exists()
        || !shared.join("zoo/lenet").exists()
    {
        println!("skipping: ../shared/data/mnist or ../shared/zoo/lenet is not present");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
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
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let m = shared.join("data/mnist");
    let (images, labels) = (
        m.join("t10k-images-idx3-ubyte.gz"),
        m.join("t10k-labels-idx1-ubyte.gz"),
    );
    run(&[
        "convert-mnist",
        images.to_str().unwrap(),
        labels.to_str().unwrap(),
        "test_lmdb",
        "--count",
        "300",
    ]);
    // BVLC's LeNet train/test net: its TEST phase reads 100 images a batch, scaled by 1/256.
    let net =
        std::fs::read_to_string(shared.join("caffe/examples/mnist/lenet_train_test.prototxt"))
            .unwrap()
            .replace(
                "examples/mnist/mnist_test_lmdb",
                d.join("test_lmdb").to_str().unwrap(),
            )
            .replace(
                "examples/mnist/mnist_train_lmdb",
                d.join("test_lmdb").to_str().unwrap(),
            );
    std::fs::write(d.join("net.prototxt"), net).unwrap();
    let weights = shared.join("zoo/lenet/lenet_iter_10000.caffemodel");
    let w = weights.to_str().unwrap();
    let out = run(&[
        "extract-features",
        "-model",
        "net.prototxt",
        "-weights",
        w,
        "-blobs",
        "ip2,pool2",
        "-dbs",
        "ip2_lmdb,pool2_lmdb",
        "-batches",
        "3",
    ]);
    assert!(out.contains("ip2: 300 features -> ip2_lmdb"), "{out}");

    // The same three batches through the library.
    let engine = Rc::new(CpuEngine::new());
    let mut net = net_from_file(
        &d.join("net.prototxt"),
        &State::phase(Phase::Test),
        engine.clone(),
    )
    .unwrap();
    net.copy_trained_layers_from(&weights).unwrap();
    let mut ip2 = vec![];
    let mut pool2 = vec![];
    for _ in 0..3 {
        net.forward().unwrap();
        ip2.extend(net.blob("ip2").unwrap().data_to_vec(&*engine));
        pool2.extend(net.blob("pool2").unwrap().data_to_vec(&*engine));
    }
    for (db, values, (c, h, w)) in [
        ("ip2_lmdb", &ip2, (10, 1, 1)),
        ("pool2_lmdb", &pool2, (50, 4, 4)),
    ] {
        let entries = crema_data_tools::read_all(&d.join(db)).unwrap();
        assert_eq!(entries.len(), 300);
        let dim = c * h * w;
        for (i, (key, datum)) in entries.iter().enumerate() {
            assert_eq!(key, &format!("{i:010}"));
            assert_eq!(
                (datum.channels(), datum.height(), datum.width()),
                (c as i32, h as i32, w as i32)
            );
            assert!(datum.data().is_empty());
            assert_eq!(
                datum.float_data,
                values[i * dim..(i + 1) * dim],
                "{db} item {i}"
            );
        }
    }
    // Predictions read from the features are the digits (LeNet gets these 300 nearly all right).
    let raw_labels = {
        let mut v = vec![];
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(std::fs::File::open(&labels).unwrap()),
            &mut v,
        )
        .unwrap();
        v
    };
    let right = ip2
        .chunks(10)
        .zip(&raw_labels[8..308])
        .filter(|(s, l)| {
            s.iter()
                .enumerate()
                .fold(0, |b, (i, v)| if *v > s[b] { i } else { b })
                == **l as usize
        })
        .count();
    assert!(right >= 297, "{right}/300");
}
