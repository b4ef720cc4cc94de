//! Issue 3's acceptance check: an LMDB written by Python (py-lmdb, with Datums serialized by
//! Google's protobuf runtime from Caffe's schema) feeds crema's Data layer through a real net.
//! The Python Datum class is built from the `message Datum` block of proto/caffe.proto, so the
//! two sides share one schema. Skipped, with a reason, where python3 or its `lmdb` or
//! `google.protobuf` modules are missing (the encoded-PNG part also needs `cv2` and `numpy`);
//! `CREMA_PYTHON` picks the interpreter.

use crema::engine::CpuEngine;
use crema::layers::Phase;
use crema::net::{Net, State};
use crema_proto::caffe::NetParameter;
use std::path::Path;
use std::process::Command;
use std::rc::Rc;

/// Datums in the raw LMDB; three batches of `BATCH`.
const N: usize = 12;
/// Datums in the encoded LMDB, so its second batch wraps mid-batch.
const N_ENCODED: usize = 6;
const BATCH: usize = 4;
const C: usize = 3;
const H: usize = 5;
const W: usize = 7;
const SCALE: f32 = 0.5;
const MEAN: [f32; C] = [10.0, 20.0, 30.0];

/// Pixel (c, y, x) of datum `i`: every datum, channel and position differs.
fn pixel(i: usize, c: usize, y: usize, x: usize) -> u8 {
    ((37 * i + 80 * c + 9 * y + 2 * x + 1) % 256) as u8
}

/// Datum `i`'s label: distinct, and not its key index.
fn label(i: usize) -> i32 {
    ((5 * i + 2) % 13) as i32
}

/// The Python half: the same `pixel` and `label`, keys as Caffe's convert_imageset writes them
/// (`%08d_` and the file name), and a Datum class built from `FIELDS` (Caffe's schema).
const PY_COMMON: &str = r#"
import sys, lmdb
from google.protobuf import descriptor_pb2, descriptor_pool
N, C, H, W = int(sys.argv[2]), 3, 5, 7
def pixel(i, c, y, x): return (37 * i + 80 * c + 9 * y + 2 * x + 1) % 256
def label(i): return (5 * i + 2) % 13
def key(i): return ("%08d_class%d/img %02d.png" % (i, i % 3, i)).encode()
# Insertion order is not key order: the Data layer must follow the keys.
order = [(7 * i + 5) % N for i in range(N)]
F = descriptor_pb2.FieldDescriptorProto
fdp = descriptor_pb2.FileDescriptorProto(name="caffe_datum.proto", package="caffe", syntax="proto2")
m = fdp.message_type.add(name="Datum")
for name, num, typ, rep in FIELDS:
    m.field.add(name=name, number=num, type=getattr(F, typ),
                label=F.LABEL_REPEATED if rep else F.LABEL_OPTIONAL)
pool = descriptor_pool.DescriptorPool()
pool.Add(fdp)
desc = pool.FindMessageTypeByName("caffe.Datum")
try:
    from google.protobuf.message_factory import GetMessageClass
    Datum = GetMessageClass(desc)
except ImportError:
    from google.protobuf import message_factory
    Datum = message_factory.MessageFactory(pool).GetPrototype(desc)
env = lmdb.open(sys.argv[1], map_size=1 << 24)
"#;

const PY_WRITE_RAW: &str = r#"
with env.begin(write=True) as txn:
    for i in order:
        data = bytes(pixel(i, c, y, x) for c in range(C) for y in range(H) for x in range(W))
        d = Datum(channels=C, height=H, width=W, data=data, label=label(i), encoded=False)
        txn.put(key(i), d.SerializeToString())
env.close()
"#;

const PY_WRITE_PNG: &str = r#"
import cv2, numpy as np
with env.begin(write=True) as txn:
    for i in order:
        # OpenCV images are H x W x C in BGR order, the order Caffe's datums keep.
        img = np.array([[[pixel(i, c, y, x) for c in range(C)] for x in range(W)] for y in range(H)],
                       dtype=np.uint8)
        ok, png = cv2.imencode(".png", img)
        assert ok
        d = Datum(data=png.tobytes(), label=label(i), encoded=True)
        txn.put(key(i), d.SerializeToString())
env.close()
"#;

/// The `(name, number, FieldDescriptorProto type, repeated)` fields of `message Datum` in
/// proto/caffe.proto, as a Python list literal.
fn datum_fields_from_schema() -> String {
    let proto =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("proto/caffe.proto"))
            .unwrap();
    let start = proto
        .find("message Datum {")
        .expect("caffe.proto has Datum");
    let body = &proto[start..start + proto[start..].find('}').unwrap()];
    let mut fields = Vec::new();
    for line in body.lines().skip(1) {
        let line = line.split("//").next().unwrap().trim();
        if line.is_empty() {
            continue;
        }
        // e.g. `optional bool encoded = 7 [default = false];`
        let t: Vec<&str> = line.split_whitespace().collect();
        assert!(
            t.len() >= 5 && t[3] == "=",
            "unexpected Datum field: {line}"
        );
        let ty = match t[1] {
            "int32" => "TYPE_INT32",
            "bytes" => "TYPE_BYTES",
            "float" => "TYPE_FLOAT",
            "bool" => "TYPE_BOOL",
            other => panic!("Datum field type {other} not mapped"),
        };
        let num = t[4].trim_end_matches(';');
        let rep = if t[0] == "repeated" { "True" } else { "False" };
        fields.push(format!("(\"{}\", {num}, \"{ty}\", {rep})", t[2]));
    }
    assert_eq!(fields.len(), 7, "Datum has 7 fields in Caffe's schema");
    format!("FIELDS = [{}]\n", fields.join(", "))
}

/// The interpreter, if it imports `modules`; otherwise prints why and returns None.
fn python(modules: &str, what: &str) -> Option<String> {
    let exe = std::env::var("CREMA_PYTHON").unwrap_or_else(|_| "python3".into());
    match Command::new(&exe)
        .args(["-c", &format!("import {modules}")])
        .output()
    {
        Ok(o) if o.status.success() => Some(exe),
        Ok(o) => {
            eprintln!(
                "skipping {what}: {exe} cannot import {modules} ({})",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            None
        }
        Err(e) => {
            eprintln!("skipping {what}: cannot run {exe}: {e}");
            None
        }
    }
}

fn write_lmdb(exe: &str, body: &str, db: &Path, n: usize) {
    let script = format!("{}{PY_COMMON}{body}", datum_fields_from_schema());
    let out = Command::new(exe)
        .arg("-c")
        .arg(script)
        .arg(db)
        .arg(n.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn data_net(db: &Path) -> Net {
    let text = format!(
        r#"name: "py_lmdb"
layer {{ name: "d" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ scale: {SCALE} mean_value: {} mean_value: {} mean_value: {} }}
  data_param {{ source: "{}" backend: LMDB batch_size: {BATCH} }} }}"#,
        MEAN[0],
        MEAN[1],
        MEAN[2],
        db.display()
    );
    let p: NetParameter = crema_proto::parse_text(&text, "test", "caffe.NetParameter").unwrap();
    Net::new(&p, &State::phase(Phase::Train), Rc::new(CpuEngine::new())).unwrap()
}

/// What one batch must hold: datums `first..first + BATCH` (mod `n`), C×H×W, as Caffe's
/// DataTransformer gives them: (pixel - mean[c]) * scale.
fn expected(first: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut data = Vec::new();
    let mut labels = Vec::new();
    for b in 0..BATCH {
        let i = (first + b) % n;
        for (c, mean) in MEAN.iter().enumerate() {
            for y in 0..H {
                for x in 0..W {
                    data.push((pixel(i, c, y, x) as f32 - mean) * SCALE);
                }
            }
        }
        labels.push(label(i) as f32);
    }
    (data, labels)
}

/// Runs forward passes and checks each batch against the datums in key order, wrapping.
fn check_batches(db: &Path, n: usize, passes: usize) {
    let mut net = data_net(db);
    for pass in 0..passes {
        net.forward().unwrap();
        let e = net.engine().clone();
        let data = net.blob("data").unwrap();
        let labels = net.blob("label").unwrap();
        assert_eq!(data.shape(), [BATCH, C, H, W], "pass {pass}");
        assert_eq!(labels.shape(), [BATCH], "pass {pass}");
        let (want_data, want_labels) = expected(pass * BATCH, n);
        assert_eq!(labels.data_to_vec(&*e), want_labels, "labels, pass {pass}");
        assert!(
            data.data_to_vec(&*e) == want_data,
            "data of pass {pass} differs from datums {}..{} (mod {n})",
            pass * BATCH,
            pass * BATCH + BATCH
        );
    }
}

#[test]
fn python_written_raw_lmdb_feeds_the_data_layer() {
    let Some(py) = python("lmdb, google.protobuf", "the Python-written LMDB test") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("py raw lmdb");
    write_lmdb(&py, PY_WRITE_RAW, &db, N);
    // Three passes read all twelve datums in key order; the fourth and fifth wrap to the start.
    check_batches(&db, N, 5);
}

#[test]
fn python_written_encoded_png_lmdb_feeds_the_data_layer() {
    let Some(py) = python(
        "lmdb, google.protobuf, cv2, numpy",
        "the Python-written encoded (PNG) LMDB test",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("py png lmdb");
    write_lmdb(&py, PY_WRITE_PNG, &db, N_ENCODED);
    // Six datums, batches of four: the second batch wraps mid-batch (4, 5, 0, 1), as Caffe's does.
    check_batches(&db, N_ENCODED, 4);
}
