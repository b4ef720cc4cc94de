//! LMDBs written here read in Python (py-lmdb + Google's protobuf runtime) and the reverse.
//! Skipped, with a reason, where those modules are missing; `CREMA_PYTHON` picks the interpreter.
use std::path::Path;
use std::process::Command;

use crema_data_tools::{read_all, DatumReader, DatumWriter};
use crema_proto::caffe::Datum;

/// Builds caffe.Datum from a hand-written descriptor, so Python needs no generated code.
const PY_DATUM: &str = r#"
import sys, lmdb
from google.protobuf import descriptor_pb2, descriptor_pool
F = descriptor_pb2.FieldDescriptorProto
fdp = descriptor_pb2.FileDescriptorProto(name="datum.proto", package="caffe", syntax="proto2")
m = fdp.message_type.add(name="Datum")
for name, num, typ, rep in [("channels", 1, F.TYPE_INT32, False), ("height", 2, F.TYPE_INT32, False),
                            ("width", 3, F.TYPE_INT32, False), ("data", 4, F.TYPE_BYTES, False),
                            ("label", 5, F.TYPE_INT32, False), ("float_data", 6, F.TYPE_FLOAT, True),
                            ("encoded", 7, F.TYPE_BOOL, False)]:
    m.field.add(name=name, number=num, type=typ, label=F.LABEL_REPEATED if rep else F.LABEL_OPTIONAL)
pool = descriptor_pool.DescriptorPool()
pool.Add(fdp)
desc = pool.FindMessageTypeByName("caffe.Datum")
try:
    from google.protobuf.message_factory import GetMessageClass
    Datum = GetMessageClass(desc)
except ImportError:
    from google.protobuf import message_factory
    Datum = message_factory.MessageFactory(pool).GetPrototype(desc)
"#;

const PY_READ: &str = r#"
env = lmdb.open(sys.argv[1], readonly=True, lock=False)
with env.begin() as txn:
    for key, value in txn.cursor():
        d = Datum()
        d.ParseFromString(value)
        same = d.SerializeToString() == value
        print(key.decode(), d.label, d.channels, d.height, d.width, sum(d.data), len(d.float_data),
              int(d.encoded), int(same))
"#;

const PY_WRITE: &str = r#"
env = lmdb.open(sys.argv[1], map_size=1 << 24)
with env.begin(write=True) as txn:
    for i in range(300):
        d = Datum(channels=3, height=4, width=5, label=i % 7, data=bytes((i + k) % 256 for k in range(60)))
        txn.put(("%08d_py/%d.png" % (i, i)).encode(), d.SerializeToString())
    f = Datum(channels=1, height=1, width=3, label=-1, float_data=[0.5, -1.25, 3.0])
    txn.put(b"99999999_float", f.SerializeToString())
env.close()
"#;

fn python() -> Option<String> {
    let exe = std::env::var("CREMA_PYTHON").unwrap_or_else(|_| "python3".into());
    match Command::new(&exe)
        .args(["-c", "import lmdb, google.protobuf"])
        .output()
    {
        Ok(o) if o.status.success() => Some(exe),
        Ok(_) => {
            eprintln!(
                "skipping: {exe} lacks the lmdb or protobuf module (pip install lmdb protobuf)"
            );
            None
        }
        Err(e) => {
            eprintln!("skipping: cannot run {exe}: {e}");
            None
        }
    }
}

fn run_py(exe: &str, body: &str, db: &Path) -> String {
    let out = Command::new(exe)
        .arg("-c")
        .arg(format!("{PY_DATUM}{body}"))
        .arg(db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn crema_writes_python_reads() {
    let Some(py) = python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("crema_lmdb");
    let mut w = DatumWriter::create(&db, false).unwrap();
    for i in 0..1500u32 {
        let d = Datum {
            channels: Some(3),
            height: Some(2),
            width: Some(2),
            data: Some((0..12).map(|k| ((i + k) % 256) as u8).collect()),
            label: Some((i % 10) as i32),
            encoded: Some(false),
            ..Default::default()
        };
        w.put(&format!("{i:08}_dir/file {i}.jpg"), &d).unwrap();
    }
    let f = Datum {
        channels: Some(1),
        height: Some(1),
        width: Some(2),
        float_data: vec![1.5, -2.0],
        label: Some(3),
        ..Default::default()
    };
    w.put("zz_float", &f).unwrap();
    w.finish().unwrap();

    let text = run_py(&py, PY_READ, &db);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1501);
    let sum7: u32 = (0..12).map(|k| (7 + k) % 256).sum();
    assert_eq!(
        lines[7],
        format!("00000007_dir/file 7.jpg 7 3 2 2 {sum7} 0 0 1")
    );
    assert_eq!(lines[1500], "zz_float 3 1 1 2 0 2 0 1");
    // Every value re-serializes byte for byte in Google's implementation.
    assert!(lines.iter().all(|l| l.ends_with(" 1")));
}

#[test]
fn python_writes_crema_reads() {
    let Some(py) = python() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("py_lmdb");
    run_py(&py, PY_WRITE, &db);
    let all = read_all(&db).unwrap();
    assert_eq!(all.len(), 301);
    let (key, d) = &all[123];
    assert_eq!(key, "00000123_py/123.png");
    assert_eq!(
        (d.channels(), d.height(), d.width(), d.label()),
        (3, 4, 5, 123 % 7)
    );
    let expected: Vec<u8> = (0..60).map(|k| ((123 + k) % 256) as u8).collect();
    assert_eq!(d.data(), expected.as_slice());
    assert_eq!(all[300].1.float_data, vec![0.5, -1.25, 3.0]);
    assert_eq!(all[300].1.label(), -1);
    let mut r = DatumReader::open(&db).unwrap();
    r.skip(300).unwrap();
    assert_eq!(r.next_datum().unwrap().float_data.len(), 3);
    assert_eq!(r.next_entry().unwrap().0, "00000000_py/0.png");
}
