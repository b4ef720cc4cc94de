//! The Data layer's transform through a real net and LMDB: crops of raw uint8 datums travel as
//! bytes and the engine subtracts the mean and scales them; the result must be exactly what
//! Caffe's transformer (crema_data_tools::Transformer, all on the host) gives for the same crop
//! and flip. Datums of float values take the host path and must agree with it as well.

use crema::engine::{CpuEngine, Engine};
use crema::layers::Phase;
use crema::net::{Net, State};
use crema_data_tools::{write_mean, DatumWriter, Transformer};
use crema_proto::caffe::{BlobProto, Datum, NetParameter, TransformationParameter};
use std::collections::HashSet;
use std::path::Path;
use std::rc::Rc;

const ITEMS: usize = 10;
const BATCH: usize = 4;
const SIDE: usize = 8;
const CROP: usize = 5;

/// A linear congruential stream, so every run writes the same data.
fn stream(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s >> 33
    }
}

/// `ITEMS` 3×8×8 datums, raw bytes or (with `float`) the same values as float_data.
fn datums(float: bool) -> Vec<Datum> {
    let mut next = stream(7);
    (0..ITEMS)
        .map(|i| {
            let px: Vec<u8> = (0..3 * SIDE * SIDE).map(|_| next() as u8).collect();
            Datum {
                channels: Some(3),
                height: Some(SIDE as i32),
                width: Some(SIDE as i32),
                label: Some(i as i32),
                float_data: if float {
                    px.iter().map(|&v| v as f32 + 0.25).collect()
                } else {
                    Vec::new()
                },
                data: if float { None } else { Some(px) },
                ..Default::default()
            }
        })
        .collect()
}

fn write_lmdb(path: &Path, items: &[Datum]) {
    let mut w = DatumWriter::create(path, false).unwrap();
    for (i, d) in items.iter().enumerate() {
        w.put(&format!("{i:08}"), d).unwrap();
    }
    w.finish().unwrap();
}

/// Runs `batches` forward passes of a TRAIN Data layer with `transform` and checks every item
/// against the host transformer at one of the crops and flips it may have drawn; returns the
/// placements seen.
fn check(
    db: &Path,
    items: &[Datum],
    transform: &str,
    engine: Rc<dyn Engine>,
    batches: usize,
) -> HashSet<(usize, usize, bool)> {
    let text = format!(
        r#"name: "t"
layer {{ name: "d" type: "Data" top: "data" top: "label"
  transform_param {{ {transform} }}
  data_param {{ source: "{}" backend: LMDB batch_size: {BATCH} }} }}"#,
        db.display()
    );
    let p: NetParameter = crema_proto::parse_text(&text, "test", "caffe.NetParameter").unwrap();
    let tp: TransformationParameter = p.layer[0].transform_param.clone().unwrap();
    let host = Transformer::new(&tp, true, 0).unwrap();
    let mut net = Net::new(&p, &State::phase(Phase::Train), engine.clone()).unwrap();
    let mut seen = HashSet::new();
    for b in 0..batches {
        net.forward().unwrap();
        let data = net.blob("data").unwrap().data_to_vec(&*engine);
        let per = data.len() / BATCH;
        for k in 0..BATCH {
            let item = (b * BATCH + k) % ITEMS;
            let got = &data[k * per..(k + 1) * per];
            let mut want = vec![0f32; per];
            let place = (0..=SIDE - CROP)
                .flat_map(|h| (0..=SIDE - CROP).flat_map(move |w| [(h, w, false), (h, w, true)]))
                .find(|&(h, w, m)| {
                    host.transform_at(&items[item], &mut want, h, w, m).unwrap();
                    want == got
                });
            let Some(place) = place else {
                panic!("batch {b}, item {k} (datum {item}) matches no crop and flip: {got:?}")
            };
            seen.insert(place);
        }
    }
    seen
}

fn mean_file(dir: &Path) -> String {
    let mut next = stream(11);
    let path = dir.join("mean.binaryproto");
    let blob = BlobProto {
        num: Some(1),
        channels: Some(3),
        height: Some(SIDE as i32),
        width: Some(SIDE as i32),
        data: (0..3 * SIDE * SIDE)
            .map(|_| (next() % 25600) as f32 / 100.0)
            .collect(),
        ..Default::default()
    };
    write_mean(&path, &blob).unwrap();
    path.display().to_string()
}

/// The transforms every engine must finish exactly as the host does.
fn transforms(dir: &Path) -> [String; 3] {
    [
        format!(
            "crop_size: {CROP} mirror: true scale: 0.5 mean_file: \"{}\"",
            mean_file(dir)
        ),
        format!("crop_size: {CROP} mirror: true scale: 0.25 mean_value: 100 mean_value: 50 mean_value: 3"),
        format!("crop_size: {CROP} mirror: true"),
    ]
}

/// Runs every transform over raw and float datums on `engine`.
pub fn check_engine(engine: Rc<dyn Engine>) {
    let dir = tempfile::tempdir().unwrap();
    for float in [false, true] {
        let items = datums(float);
        let db = dir.path().join(format!("db_{float}"));
        write_lmdb(&db, &items);
        for t in transforms(dir.path()) {
            let seen = check(&db, &items, &t, engine.clone(), 6);
            // 24 draws from 32 placements: a fixed crop or no mirroring would show here.
            assert!(seen.len() >= 8, "{t}: only {seen:?}");
            assert!(seen.iter().any(|p| p.2) && seen.iter().any(|p| !p.2));
        }
    }
}

#[test]
fn crops_finished_by_the_cpu_engine_match_the_host_transformer() {
    check_engine(Rc::new(CpuEngine::new()));
}

#[cfg(feature = "cuda")]
#[test]
fn crops_finished_by_the_gpu_match_the_host_transformer() {
    match crema::engine::cuda::CudaEngine::new(0) {
        Ok(g) => check_engine(Rc::new(g)),
        Err(e) => {
            assert!(
                std::env::var("CREMA_REQUIRE_GPU").as_deref() != Ok("1"),
                "CREMA_REQUIRE_GPU=1 but the CUDA engine cannot start: {e}"
            );
            println!("skipping: no usable GPU: {e}");
        }
    }
}
