//! convert_imageset over real PNG/JPEG/BMP files written to a temporary folder.
mod common;

use std::path::{Path, PathBuf};

use crema_data_tools::{
    convert_imageset, decode_datum, load_image_datum, read_all, ConvertOptions, DataError,
};

/// root/cat/{a.png, b.jpg, broken.jpg, notes.txt}, root/dog/{c.png (grey), d.bmp}
fn class_folders(dir: &Path) -> PathBuf {
    let root = dir.join("images");
    std::fs::create_dir_all(root.join("cat")).unwrap();
    std::fs::create_dir_all(root.join("dog")).unwrap();
    common::rgb_image(8, 6, 1)
        .save(root.join("cat/a.png"))
        .unwrap();
    let mut jpg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 100)
        .encode_image(&common::rgb_image(8, 6, 2))
        .unwrap();
    std::fs::write(root.join("cat/b.jpg"), jpg).unwrap();
    std::fs::write(
        root.join("cat/broken.jpg"),
        b"\xff\xd8\xff\xe0 this is not a jpeg",
    )
    .unwrap();
    std::fs::write(root.join("cat/notes.txt"), b"not an image").unwrap();
    common::gray_image(8, 6, 5)
        .save(root.join("dog/c.png"))
        .unwrap();
    common::rgb_image(8, 6, 3)
        .save(root.join("dog/d.bmp"))
        .unwrap();
    root
}

fn options(root: &Path, list: Option<PathBuf>, out: PathBuf) -> ConvertOptions {
    ConvertOptions {
        root: root.to_path_buf(),
        list,
        out,
        ..Default::default()
    }
}

#[test]
fn from_folders_raw_colour_skips_corrupt_and_writes_labels() {
    let dir = tempfile::tempdir().unwrap();
    let root = class_folders(dir.path());
    let out = dir.path().join("dbs/train_lmdb");
    let opts = ConvertOptions {
        from_folders: true,
        ..options(&root, None, out.clone())
    };
    let summary = convert_imageset(&opts).unwrap();
    assert_eq!(summary.written, 4);
    assert_eq!(summary.skipped, 1);
    assert_eq!(summary.skipped_files, vec![root.join("cat/broken.jpg")]);
    assert_eq!(summary.first_shape, Some([3, 6, 8]));
    assert_eq!(summary.classes, 2);
    let labels = dir.path().join("dbs/labels.txt");
    assert_eq!(summary.labels_file.as_deref(), Some(labels.as_path()));
    assert_eq!(std::fs::read_to_string(&labels).unwrap(), "cat\ndog\n");

    let all = read_all(&out).unwrap();
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    // The skipped image keeps its index (2), as Caffe's line_id does.
    assert_eq!(
        keys,
        [
            "00000000_cat/a.png",
            "00000001_cat/b.jpg",
            "00000003_dog/c.png",
            "00000004_dog/d.bmp"
        ]
    );
    let labels: Vec<i32> = all.iter().map(|(_, d)| d.label()).collect();
    assert_eq!(labels, [0, 0, 1, 1]);

    let a = &all[0].1;
    assert_eq!(
        (a.channels(), a.height(), a.width(), a.encoded()),
        (3, 6, 8, false)
    );
    let hw = 48;
    // Planar BGR: B = 200 - 1 everywhere, G = y*10, R = x*10 + 1.
    assert_eq!(a.data()[0], 199);
    assert_eq!(a.data()[hw + 8], 10); // G at (y=1, x=0)
    assert_eq!(a.data()[2 * hw + 1], 11); // R at (y=0, x=1)
                                          // Grey PNG is replicated into three equal planes.
    let c = all[2].1.data();
    assert_eq!(&c[..hw], &c[hw..2 * hw]);
    assert_eq!(c[9], (7 + 3 + 5) as u8);
    // The JPEG decodes close to what was drawn (quality 100).
    let b = all[1].1.data();
    let expected_r = (0..hw).map(|i| ((i % 8) * 10 + 2) as i32);
    let worst = expected_r
        .zip(&b[2 * hw..])
        .map(|(e, &g)| (e - g as i32).abs())
        .max()
        .unwrap();
    assert!(worst <= 6, "JPEG red plane off by {worst}");

    // Running again over an existing DB is refused, with the fix in the message.
    let err = convert_imageset(&opts).unwrap_err();
    assert!(matches!(err, DataError::DbExists { .. }));
    assert!(err.to_string().contains("--overwrite"), "{err}");
    let again = ConvertOptions {
        overwrite: true,
        ..opts
    };
    assert_eq!(convert_imageset(&again).unwrap().written, 4);
}

#[test]
fn list_file_gray_resized_with_check_size() {
    let dir = tempfile::tempdir().unwrap();
    let root = class_folders(dir.path());
    common::rgb_image(13, 9, 4)
        .save(root.join("cat/big.png"))
        .unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "cat/a.png 3\ncat/big.png 4\ndog/c.png 5\n").unwrap();
    let out = dir.path().join("gray_lmdb");
    let opts = ConvertOptions {
        gray: true,
        resize_height: 4,
        resize_width: 5,
        check_size: true,
        ..options(&root, Some(list), out.clone())
    };
    let s = convert_imageset(&opts).unwrap();
    assert_eq!(
        (s.written, s.skipped, s.first_shape),
        (3, 0, Some([1, 4, 5]))
    );
    let all = read_all(&out).unwrap();
    for (_, d) in &all {
        assert_eq!(
            (d.channels(), d.height(), d.width(), d.data().len()),
            (1, 4, 5, 20)
        );
    }
    assert_eq!(all[1].1.label(), 4);
    // The ImageData layer's loader gives the same Datum as the converter.
    let direct = load_image_datum(&root.join("cat/big.png"), 4, 4, 5, false).unwrap();
    assert_eq!(direct, all[1].1);
    // A uniform colour stays exactly that colour through resize and grey conversion.
    let flat = image::ImageBuffer::from_pixel(7, 3, image::Rgb([255u8, 0, 0]));
    flat.save(root.join("red.png")).unwrap();
    let red = load_image_datum(&root.join("red.png"), 0, 4, 5, false).unwrap();
    assert!(red.data().iter().all(|&v| v == 76), "{:?}", red.data());
}

#[test]
fn check_size_names_the_offending_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = class_folders(dir.path());
    common::rgb_image(5, 5, 0)
        .save(root.join("cat/small.png"))
        .unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "cat/a.png 0\ncat/small.png 0\n").unwrap();
    let out = dir.path().join("mixed_lmdb");
    let opts = ConvertOptions {
        check_size: true,
        ..options(&root, Some(list.clone()), out.clone())
    };
    let err = convert_imageset(&opts).unwrap_err().to_string();
    assert!(
        err.contains("small.png") && err.contains("3x5x5") && err.contains("3x6x8"),
        "{err}"
    );
    // The half-written DB is gone, so the fixed command can simply run again.
    assert!(!out.exists());
    let opts = ConvertOptions {
        check_size: false,
        ..opts
    };
    assert_eq!(convert_imageset(&opts).unwrap().written, 2);
}

#[test]
fn clear_errors_for_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let root = class_folders(dir.path());
    let out = dir.path().join("x_lmdb");

    let missing = dir.path().join("no_such_root");
    let err = convert_imageset(&ConvertOptions {
        from_folders: true,
        ..options(&missing, None, out.clone())
    })
    .unwrap_err();
    assert!(matches!(err, DataError::RootMissing { .. }));
    assert!(err.to_string().contains("no_such_root"), "{err}");

    let list = dir.path().join("train.txt");
    std::fs::write(&list, "cat/a.png 0\ncat/b.jpg\n").unwrap();
    let err = convert_imageset(&options(&root, Some(list.clone()), out.clone()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train.txt:2") && err.contains("no label"),
        "{err}"
    );

    std::fs::write(&list, "cat/a.png 0\ncat/b.jpg dog\n").unwrap();
    let err = convert_imageset(&options(&root, Some(list.clone()), out.clone()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train.txt:2") && err.contains("not an integer"),
        "{err}"
    );

    let err = convert_imageset(&options(&root, None, out.clone()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--from-folders"), "{err}");

    std::fs::write(&list, "cat/broken.jpg 0\nnope.png 1\n").unwrap();
    let err = convert_imageset(&options(&root, Some(list.clone()), out.clone()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("none of the 2"), "{err}");

    let err = convert_imageset(&ConvertOptions {
        encoded: true,
        encode_type: "gif".into(),
        ..options(&root, Some(list), out.clone())
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("gif"), "{err}");
    assert!(!out.exists());
}

#[test]
fn encoded_keeps_file_bytes_or_reencodes() {
    let dir = tempfile::tempdir().unwrap();
    let root = class_folders(dir.path());
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "cat/a.png 1\ncat/b.jpg 2\ndog/c.png 3\n").unwrap();

    let raw_out = dir.path().join("raw_lmdb");
    convert_imageset(&options(&root, Some(list.clone()), raw_out.clone())).unwrap();
    let raw = read_all(&raw_out).unwrap();

    let enc_out = dir.path().join("enc_lmdb");
    let opts = ConvertOptions {
        encoded: true,
        ..options(&root, Some(list.clone()), enc_out.clone())
    };
    let s = convert_imageset(&opts).unwrap();
    assert_eq!(s.written, 3);
    let enc = read_all(&enc_out).unwrap();
    // Unchanged files are stored byte for byte, label set, encoded flag set.
    assert_eq!(
        enc[0].1.data(),
        std::fs::read(root.join("cat/a.png")).unwrap()
    );
    assert_eq!(
        enc[1].1.data(),
        std::fs::read(root.join("cat/b.jpg")).unwrap()
    );
    assert!(enc.iter().all(|(_, d)| d.encoded()));
    assert_eq!(enc[1].1.label(), 2);
    // Forced colour decoding gives exactly the raw conversion (same decoder).
    for ((_, e), (_, r)) in enc.iter().zip(&raw) {
        assert_eq!(&decode_datum(e, true, false).unwrap(), r);
    }
    // Native decoding keeps the grey PNG at one channel.
    assert_eq!(decode_datum(&enc[2].1, false, false).unwrap().channels(), 1);

    // Resizing re-encodes, in the requested type.
    let jpg_out = dir.path().join("jpg_lmdb");
    let opts = ConvertOptions {
        encoded: true,
        encode_type: "jpg".into(),
        resize_height: 10,
        resize_width: 12,
        ..options(&root, Some(list.clone()), jpg_out.clone())
    };
    convert_imageset(&opts).unwrap();
    let jpg = read_all(&jpg_out).unwrap();
    for (_, d) in &jpg {
        assert_eq!(&d.data()[..2], &[0xff, 0xd8]);
        let decoded = decode_datum(d, true, false).unwrap();
        assert_eq!(
            (decoded.channels(), decoded.height(), decoded.width()),
            (3, 10, 12)
        );
    }

    // Grey of a colour file is re-encoded so that it decodes to one channel by itself.
    let gray_out = dir.path().join("gray_enc_lmdb");
    let opts = ConvertOptions {
        encoded: true,
        gray: true,
        ..options(&root, Some(list), gray_out.clone())
    };
    convert_imageset(&opts).unwrap();
    let gray = read_all(&gray_out).unwrap();
    assert_ne!(
        gray[0].1.data(),
        std::fs::read(root.join("cat/a.png")).unwrap()
    );
    assert_eq!(
        decode_datum(&gray[0].1, false, false).unwrap().channels(),
        1
    );
    // The grey PNG was already grey: kept as is.
    assert_eq!(
        gray[2].1.data(),
        std::fs::read(root.join("dog/c.png")).unwrap()
    );
}

#[test]
fn shuffle_is_seeded_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("many");
    std::fs::create_dir_all(&root).unwrap();
    let mut list = String::new();
    for i in 0..40u8 {
        common::gray_image(4, 4, i)
            .save(root.join(format!("{i}.png")))
            .unwrap();
        list += &format!("{i}.png {i}\n");
    }
    let list_path = dir.path().join("list.txt");
    std::fs::write(&list_path, list).unwrap();
    let run = |name: &str, seed: u64| {
        let out = dir.path().join(name);
        let opts = ConvertOptions {
            shuffle: true,
            seed,
            ..options(&root, Some(list_path.clone()), out.clone())
        };
        convert_imageset(&opts).unwrap();
        read_all(&out)
            .unwrap()
            .into_iter()
            .map(|(k, d)| (k, d.label()))
            .collect::<Vec<_>>()
    };
    let a = run("a", 5);
    assert_eq!(a, run("b", 5));
    assert_ne!(a, run("c", 6));
    let mut labels: Vec<i32> = a.iter().map(|x| x.1).collect();
    assert_ne!(labels, (0..40).collect::<Vec<_>>());
    labels.sort();
    assert_eq!(labels, (0..40).collect::<Vec<_>>());
    for (k, label) in &a {
        assert!(k.ends_with(&format!("_{label}.png")), "{k}");
    }
}
