//! compute_image_mean against a plain per-pixel average, on real CIFAR-10 JPEGs.
mod common;

use crema_data_tools::{
    compute_image_mean, convert_imageset, decode_datum, load_mean, read_all, write_mean,
    ConvertOptions, DatumWriter,
};
use crema_proto::caffe::Datum;

/// A list of the first `per_class` images of each CIFAR-10 training class.
fn cifar_list(root: &std::path::Path, per_class: usize, out: &std::path::Path) {
    let mut classes: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    classes.sort();
    let mut list = String::new();
    for (label, class) in classes.iter().enumerate() {
        for i in 0..per_class {
            list += &format!("{class}/{i:04}.jpg {label}\n");
        }
    }
    std::fs::write(out, list).unwrap();
}

fn naive_mean(datums: &[Datum]) -> Vec<f64> {
    let mut sum = vec![0.0f64; datums[0].data().len()];
    for d in datums {
        for (s, &v) in sum.iter_mut().zip(d.data()) {
            *s += v as f64;
        }
    }
    sum.iter().map(|s| s / datums.len() as f64).collect()
}

#[test]
fn cifar_mean_matches_naive_for_raw_and_encoded() {
    let Some(root) = common::shared_data("cifar10/train") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("list.txt");
    cifar_list(&root, 20, &list);
    let raw_db = tmp.path().join("raw_lmdb");
    let opts = ConvertOptions {
        root: root.clone(),
        list: Some(list.clone()),
        out: raw_db.clone(),
        shuffle: true,
        check_size: true,
        ..Default::default()
    };
    let s = convert_imageset(&opts).unwrap();
    assert_eq!(
        (s.written, s.skipped, s.first_shape),
        (200, 0, Some([3, 32, 32]))
    );

    let datums: Vec<Datum> = read_all(&raw_db)
        .unwrap()
        .into_iter()
        .map(|x| x.1)
        .collect();
    let naive = naive_mean(&datums);
    let (blob, channel_means) = compute_image_mean(&raw_db, false).unwrap();
    assert_eq!(
        (blob.num, blob.channels, blob.height, blob.width),
        (Some(1), Some(3), Some(32), Some(32))
    );
    assert!(blob.shape.is_none());
    assert_eq!(blob.data.len(), 3072);
    for (m, n) in blob.data.iter().zip(&naive) {
        assert!((*m as f64 - n).abs() < 1e-4, "{m} vs {n}");
    }
    for (c, &m) in channel_means.iter().enumerate() {
        let n: f64 = naive[c * 1024..(c + 1) * 1024].iter().sum::<f64>() / 1024.0;
        assert!((m as f64 - n).abs() < 1e-3, "channel {c}: {m} vs {n}");
        assert!(m > 60.0 && m < 200.0, "implausible CIFAR channel mean {m}");
    }

    // Encoded storage decodes to the same pixels, so the same mean.
    let enc_db = tmp.path().join("enc_lmdb");
    let opts = ConvertOptions {
        encoded: true,
        out: enc_db.clone(),
        ..opts
    };
    convert_imageset(&opts).unwrap();
    let first = &read_all(&enc_db).unwrap()[0].1;
    assert!(first.encoded());
    assert_eq!(decode_datum(first, false, false).unwrap().channels(), 3);
    let (enc_blob, enc_means) = compute_image_mean(&enc_db, false).unwrap();
    assert_eq!(enc_blob, blob);
    assert_eq!(enc_means, channel_means);

    // Written and read back as a binaryproto.
    let mean_file = tmp.path().join("mean.binaryproto");
    write_mean(&mean_file, &blob).unwrap();
    let m = load_mean(&mean_file).unwrap();
    assert_eq!((m.channels, m.height, m.width), (3, 32, 32));
    assert_eq!(m.data, blob.data);
}

#[test]
fn float_data_and_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("float_lmdb");
    let mut w = DatumWriter::create(&db, false).unwrap();
    for i in 0..3 {
        let d = Datum {
            channels: Some(2),
            height: Some(1),
            width: Some(2),
            float_data: vec![i as f32, 1.0, 2.0 * i as f32, 0.5],
            ..Default::default()
        };
        w.put(&format!("{i:08}"), &d).unwrap();
    }
    w.finish().unwrap();
    let (blob, means) = compute_image_mean(&db, false).unwrap();
    assert_eq!(blob.data, vec![1.0, 1.0, 2.0, 0.5]);
    assert_eq!(means, vec![1.0, 1.25]);

    // A datum of another size is an error naming its key.
    let bad = tmp.path().join("bad_lmdb");
    let mut w = DatumWriter::create(&bad, false).unwrap();
    for (i, n) in [4usize, 4, 9].iter().enumerate() {
        let d = Datum {
            channels: Some(1),
            height: Some(1),
            width: Some(*n as i32),
            data: Some(vec![1; *n]),
            ..Default::default()
        };
        w.put(&format!("{i:08}_x"), &d).unwrap();
    }
    w.finish().unwrap();
    let err = compute_image_mean(&bad, false).unwrap_err().to_string();
    assert!(err.contains("00000002_x") && err.contains("1x1x9"), "{err}");

    let empty = tmp.path().join("empty_lmdb");
    DatumWriter::create(&empty, false)
        .unwrap()
        .finish()
        .unwrap();
    let err = compute_image_mean(&empty, false).unwrap_err().to_string();
    assert!(err.contains("empty"), "{err}");
}
