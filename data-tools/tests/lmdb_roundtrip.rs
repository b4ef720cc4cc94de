//! A real LMDB written and read back through the public API, moved across threads.
use crema_data_tools::{read_all, DatumReader, DatumWriter};
use crema_proto::caffe::Datum;

#[test]
fn round_trip_in_key_order_across_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("rt_lmdb");
    let mut w = DatumWriter::create(&db, false).unwrap();
    // Put out of order: LMDB returns key order.
    for i in (0..2500).rev() {
        let d = Datum {
            channels: Some(3),
            height: Some(2),
            width: Some(2),
            data: Some((0..12).map(|k| (i * 7 + k) as u8).collect()),
            label: Some(i % 10),
            encoded: Some(false),
            ..Default::default()
        };
        w.put(&format!("{i:08}_img{i}.jpg"), &d).unwrap();
    }
    assert_eq!(w.len(), 2500);
    assert_eq!(w.finish().unwrap(), 2500);
    assert!(db.join("data.mdb").is_file() && db.join("lock.mdb").is_file());

    let all = read_all(&db).unwrap();
    assert_eq!(all.len(), 2500);
    assert_eq!(all[1234].0, "00001234_img1234.jpg");
    assert_eq!(all[1234].1.label(), 4);
    assert_eq!(all[1234].1.data()[1], (1234 * 7 + 1) as u8);

    let reader = DatumReader::open(&db).unwrap();
    let handle = std::thread::spawn(move || {
        let mut reader = reader;
        let mut labels = Vec::new();
        for _ in 0..2600 {
            labels.push(reader.next_datum().unwrap().label());
        }
        labels
    });
    let labels = handle.join().unwrap();
    assert_eq!(labels[2499], 9);
    assert_eq!(&labels[2500..2503], &[0, 1, 2]);
}
