//! MNIST conversion of the real t10k files in the shared data folder.
mod common;

use crema_data_tools::{convert_mnist, read_all, DatumReader};

#[test]
fn t10k_converts_with_caffe_keys_and_slices() {
    let Some(dir) = common::shared_data("mnist") else {
        return;
    };
    let images = dir.join("t10k-images-idx3-ubyte.gz");
    let labels = dir.join("t10k-labels-idx1-ubyte.gz");
    let tmp = tempfile::tempdir().unwrap();

    let out = tmp.path().join("mnist_test_lmdb");
    assert_eq!(
        convert_mnist(&images, &labels, &out, 0, None, false).unwrap(),
        10_000
    );
    let mut reader = DatumReader::open(&out).unwrap();
    assert_eq!(reader.len(), 10_000);
    let (key, first) = reader.next_entry().unwrap();
    assert_eq!(key, "00000000");
    assert_eq!(first.label(), 7);
    assert_eq!(
        (first.channels(), first.height(), first.width()),
        (1, 28, 28)
    );
    assert_eq!(first.data().len(), 784);
    assert!(!first.encoded());
    // The well-known first test digit (a 7) has ink in its middle rows and a blank border.
    assert_eq!(first.data()[0], 0);
    assert!(first.data().iter().filter(|&&p| p > 128).count() > 50);
    let labels_seen: Vec<i32> = (0..4)
        .map(|_| reader.next_datum().unwrap().label())
        .collect();
    assert_eq!(labels_seen, [2, 1, 0, 4]);

    let slice = tmp.path().join("slice_lmdb");
    assert_eq!(
        convert_mnist(&images, &labels, &slice, 2, Some(3), false).unwrap(),
        3
    );
    let all = read_all(&slice).unwrap();
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["00000000", "00000001", "00000002"]);
    let got: Vec<i32> = all.iter().map(|(_, d)| d.label()).collect();
    assert_eq!(got, [1, 0, 4]);

    let tail = tmp.path().join("tail_lmdb");
    assert_eq!(
        convert_mnist(&images, &labels, &tail, 9_990, None, false).unwrap(),
        10
    );

    let err = convert_mnist(&images, &labels, &slice, 0, Some(1), false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--overwrite"), "{err}");
    let err = convert_mnist(&images, &labels, &tmp.path().join("y"), 10_001, None, false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--start 10001") && err.contains("10000 items"),
        "{err}"
    );
}
