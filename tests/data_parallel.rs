//! Data-parallel training on the CPU engine (threads exchanging gradients through host memory):
//! two workers with batch 8 each follow the same trajectory as one worker with batch 16, because
//! worker r reads items r, r+2, ... of the LMDB (Caffe's sharding), rank 0's weights are
//! broadcast at the start, and the averaged gradient equals the gradient of the whole batch.
//! The GPU path (NCCL) runs the same solver code; tests/gpu_vs_cpu.rs covers it on a GPU machine.

use crema::engine::CpuEngine;
use crema::parallel::{run_threads, HostGroup};
use crema::solver::{NetChoices, Solver};
use crema_data_tools::DatumWriter;
use crema_proto::caffe::Datum;
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

/// 96 random 1×8×8 images with labels 0..9.
fn write_lmdb(path: &Path) {
    let mut w = DatumWriter::create(path, false).unwrap();
    let mut state = 12345u64;
    for i in 0..96 {
        let pixels: Vec<u8> = (0..64)
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (state >> 56) as u8
            })
            .collect();
        let d = Datum {
            channels: Some(1),
            height: Some(8),
            width: Some(8),
            data: Some(pixels),
            label: Some(i % 10),
            ..Default::default()
        };
        w.put(&format!("{i:08}"), &d).unwrap();
    }
    w.finish().unwrap();
}

fn solver_text(lmdb: &Path, batch: usize, prefix: &Path) -> String {
    solver_text_with(lmdb, batch, prefix, "")
}

/// `solver_text` with `extra` layers between the convolution and its ReLU (acting on `conv` in
/// place).
fn solver_text_with(lmdb: &Path, batch: usize, prefix: &Path, extra: &str) -> String {
    format!(
        r#"
net_param {{
  name: "tiny"
  layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
    data_param {{ source: "{src}" batch_size: {batch} backend: LMDB }} transform_param {{ scale: 0.00390625 }} }}
  layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
    data_param {{ source: "{src}" batch_size: 16 backend: LMDB }} transform_param {{ scale: 0.00390625 }} }}
  layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
    convolution_param {{ num_output: 4 kernel_size: 3 weight_filler {{ type: "xavier" }} }} }}
  {extra}
  layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
  layer {{ name: "pool" type: "Pooling" bottom: "conv" top: "pool"
    pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
  layer {{ name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
    inner_product_param {{ num_output: 10 weight_filler {{ type: "gaussian" std: 0.1 }} }} }}
  layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }}
  layer {{ name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc"
    include {{ phase: TEST }} }}
}}
base_lr: 0.1 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed"
max_iter: 7 display: 0 random_seed: 7
test_iter: 2 test_interval: 3
snapshot: 0 snapshot_after_train: true snapshot_prefix: "{prefix}"
"#,
        src = lmdb.display(),
        prefix = prefix.display()
    )
}

fn solver(text: &str) -> Solver {
    let param = crema_proto::parse_text(text, "test.prototxt", "caffe.SolverParameter").unwrap();
    Solver::new(
        param,
        None,
        Rc::new(CpuEngine::new()),
        &NetChoices::default(),
    )
    .unwrap()
}

fn weights(s: &Solver) -> Vec<Vec<f32>> {
    let e = CpuEngine::new();
    s.net
        .params()
        .iter()
        .map(|p| p.blob.data_to_vec(&e))
        .collect()
}

#[test]
fn two_workers_with_half_batches_follow_the_single_worker_trajectory() {
    let dir = tempfile::tempdir().unwrap();
    let lmdb = dir.path().join("lmdb");
    write_lmdb(&lmdb);

    let mut single = solver(&solver_text(&lmdb, 16, &dir.path().join("single")));
    single.solve(None).unwrap();
    let expected = weights(&single);

    let text = solver_text(&lmdb, 8, &dir.path().join("dp"));
    let groups = Arc::new(Mutex::new(
        HostGroup::new(2).into_iter().map(Some).collect::<Vec<_>>(),
    ));
    let results = run_threads(2, 0, 2, move |shard| {
        let mut s = solver(&text);
        let g = groups.lock().unwrap()[shard.rank].take().unwrap();
        s.set_collective(Box::new(g))?;
        let tests = s.test_nets().len();
        s.solve(None)?;
        Ok((weights(&s), tests, s.last_test.clone()))
    })
    .unwrap();

    let (w0, tests0, scores0) = &results[0];
    let (w1, tests1, scores1) = &results[1];
    assert_eq!(w0, w1, "the replicas drifted apart");
    assert_eq!((*tests0, *tests1), (1, 0), "only rank 0 builds test nets");
    assert!(!scores0.is_empty() && scores1.is_empty());
    let mut worst = 0.0f32;
    for (a, b) in w0.iter().flatten().zip(expected.iter().flatten()) {
        worst = worst.max((a - b).abs());
    }
    assert!(worst < 1e-5, "2 workers x 8 differ from 1 x 16 by {worst}");
    // Only rank 0 snapshots.
    assert!(dir.path().join("dp_iter_7.caffemodel").exists());
    assert!(dir.path().join("single_iter_7.caffemodel").exists());
}

/// A BatchNorm runs the Scale after it (its backward computes the Scale's gradients): the
/// workers must still average those gradients once they are final, or the replicas drift apart.
#[test]
fn two_workers_average_the_gradients_of_a_scale_fused_into_batchnorm() {
    let dir = tempfile::tempdir().unwrap();
    let lmdb = dir.path().join("lmdb");
    write_lmdb(&lmdb);
    let bn = r#"layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
  layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }"#;
    let text = solver_text_with(&lmdb, 8, &dir.path().join("dp"), bn);
    let groups = Arc::new(Mutex::new(
        HostGroup::new(2).into_iter().map(Some).collect::<Vec<_>>(),
    ));
    let results = run_threads(2, 0, 2, move |shard| {
        let mut s = solver(&text);
        let fused: Vec<String> = s
            .net
            .layers()
            .iter()
            .filter(|l| l.fused != crema::net::Fused::No)
            .map(|l| l.name.clone())
            .collect();
        let g = groups.lock().unwrap()[shard.rank].take().unwrap();
        s.set_collective(Box::new(g))?;
        // Each layer's gradients averaged as soon as they are final, not all at the end.
        s.set_reduce_bucket(1);
        s.solve(None)?;
        // The learned weights; BatchNorm's statistics stay each worker's own, as in Caffe.
        let learned: Vec<Vec<f32>> = weights(&s)
            .into_iter()
            .zip(s.net.params())
            .filter(|(_, p)| p.lr_mult != 0.0)
            .map(|(w, _)| w)
            .collect();
        Ok((learned, fused))
    })
    .unwrap();
    assert_eq!(
        results[0].1,
        ["scale", "relu"],
        "the net did not fuse as expected"
    );
    assert_eq!(
        results[0].0.len(),
        6,
        "conv, scale and ip weights and biases"
    );
    assert_eq!(results[0].0, results[1].0, "the replicas drifted apart");
}

/// Runs `solver_text` on two CPU workers; `before` may adjust each worker's solver (signals).
fn two_workers(
    text: String,
    resume: Option<std::path::PathBuf>,
    before: impl Fn(&mut Solver) + Send + Sync + 'static,
) -> Vec<(Vec<Vec<f32>>, i32)> {
    let groups = Arc::new(Mutex::new(
        HostGroup::new(2).into_iter().map(Some).collect::<Vec<_>>(),
    ));
    run_threads(2, 0, 2, move |shard| {
        let mut s = solver(&text);
        let g = groups.lock().unwrap()[shard.rank].take().unwrap();
        s.set_collective(Box::new(g))?;
        before(&mut s);
        s.solve(resume.as_deref())?;
        Ok((weights(&s), s.iter()))
    })
    .unwrap()
}

/// A data-parallel run resumed from its iteration-4 snapshot ends where the uninterrupted run
/// does: every worker restores the same state and skips its own share of the consumed data.
#[test]
fn two_workers_resume_from_a_snapshot_on_the_same_trajectory() {
    let dir = tempfile::tempdir().unwrap();
    let lmdb = dir.path().join("lmdb");
    write_lmdb(&lmdb);
    let text = solver_text(&lmdb, 8, &dir.path().join("dp")).replace(
        "snapshot: 0 snapshot_after_train: true",
        "snapshot: 4 snapshot_after_train: false",
    );
    let whole = two_workers(text.clone(), None, |_| {});
    let state = dir.path().join("dp_iter_4.solverstate");
    assert!(state.exists());
    let resumed = two_workers(text, Some(state), |_| {});
    assert_eq!(resumed[0].1, 7);
    assert_eq!(resumed[0].0, resumed[1].0);
    let worst = whole[0]
        .0
        .iter()
        .flatten()
        .zip(resumed[0].0.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-6, "the resumed run differs by {worst}");
}

/// SIGINT reaching one worker stops both after the same iteration (they agree every step), and
/// rank 0 snapshots there.
#[test]
fn a_stop_signal_on_one_worker_stops_every_worker_at_the_same_iteration() {
    use crema::solver::{SignalEffect, Signals};
    use std::sync::atomic::AtomicBool;
    let dir = tempfile::tempdir().unwrap();
    let lmdb = dir.path().join("lmdb");
    write_lmdb(&lmdb);
    let text = solver_text(&lmdb, 8, &dir.path().join("sig"));
    let ends = two_workers(text, None, |s| {
        let raised = s.shard().rank == 1;
        s.set_signals(Signals {
            sigint: Arc::new(AtomicBool::new(raised)),
            sighup: Arc::new(AtomicBool::new(false)),
            sigint_effect: Some(SignalEffect::Stop),
            sighup_effect: Some(SignalEffect::Snapshot),
        });
    });
    assert_eq!(
        (ends[0].1, ends[1].1),
        (1, 1),
        "both stop after the first iteration"
    );
    assert_eq!(ends[0].0, ends[1].0);
    assert!(dir.path().join("sig_iter_1.caffemodel").exists());
}

#[test]
fn a_worker_must_join_with_the_rank_it_was_built_as() {
    let dir = tempfile::tempdir().unwrap();
    let lmdb = dir.path().join("lmdb");
    write_lmdb(&lmdb);
    let mut s = solver(&solver_text(&lmdb, 8, &dir.path().join("x")));
    let mut groups = HostGroup::new(2);
    let e = s.set_collective(Box::new(groups.remove(1))).unwrap_err();
    assert!(e.to_string().contains("built as worker 0 of 1"), "{e}");
}

/// Whether the multi-GPU tests run here: they need the `nccl` build and two GPUs. Without them
/// they print why and pass, unless `CREMA_REQUIRE_GPUS=2` asks for them to fail instead.
#[cfg(feature = "nccl")]
fn two_gpus() -> bool {
    let require = std::env::var("CREMA_REQUIRE_GPUS").is_ok_and(|v| v == "2");
    match crema::engine::cuda::device_count() {
        Ok(n) if n >= 2 => true,
        found => {
            let why = match found {
                Ok(n) => format!("{n} GPU(s)"),
                Err(e) => e,
            };
            assert!(!require, "CREMA_REQUIRE_GPUS=2 but this machine has {why}");
            println!("skipping the multi-GPU tests: they need 2 GPUs, found {why}");
            false
        }
    }
}

/// The same comparison on two GPUs through NCCL: rank 0's weights equal rank 1's exactly (they
/// apply the same averaged gradient) and follow one GPU with the whole batch to rounding.
#[cfg(feature = "nccl")]
#[test]
fn two_gpus_with_half_batches_follow_one_gpu() {
    use crema::engine::cuda::nccl::{unique_id, NcclCollective};
    use crema::engine::cuda::CudaEngine;
    if !two_gpus() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lmdb = dir.path().join("lmdb");
    write_lmdb(&lmdb);
    let gpu_solver = |text: &str, engine: Rc<CudaEngine>| {
        let param =
            crema_proto::parse_text(text, "test.prototxt", "caffe.SolverParameter").unwrap();
        Solver::new(param, None, engine, &NetChoices::default())
    };
    let engine = Rc::new(CudaEngine::new(0).unwrap());
    let mut single = gpu_solver(&solver_text(&lmdb, 16, &dir.path().join("one")), engine).unwrap();
    single.solve(None).unwrap();
    let expected = weights_on(&single);

    let text = solver_text(&lmdb, 8, &dir.path().join("two"));
    let id = unique_id().unwrap();
    let results = run_threads(2, 0, 2, move |shard| {
        let engine = CudaEngine::new(shard.rank).map_err(crema::Error::msg)?;
        let c = NcclCollective::new(&engine, shard, &id).map_err(crema::Error::msg)?;
        let mut s = gpu_solver(&text, Rc::new(engine))?;
        s.set_collective(Box::new(c))?;
        s.solve(None)?;
        Ok(weights_on(&s))
    })
    .unwrap();
    assert_eq!(results[0], results[1], "the GPU replicas drifted apart");
    let worst = results[0]
        .iter()
        .flatten()
        .zip(expected.iter().flatten())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-4, "2 GPUs x 8 differ from 1 GPU x 16 by {worst}");
    println!("2 GPUs x 8 vs 1 GPU x 16 after 7 iterations: max |dw| = {worst:.2e}");
}

/// Host copies of a solver's weights, whatever its engine.
#[cfg(feature = "nccl")]
fn weights_on(s: &Solver) -> Vec<Vec<f32>> {
    let e = s.net.engine().clone();
    s.net
        .params()
        .iter()
        .map(|p| p.blob.data_to_vec(&*e))
        .collect()
}

/// `crema train` launched as two processes (CREMA_RANK / CREMA_WORLD_SIZE / CREMA_MASTER_ADDR,
/// one GPU each) logs the same losses, digit for digit, as one process driving both GPUs.
#[cfg(feature = "nccl")]
#[test]
fn two_processes_give_the_loss_curve_of_one_process_on_two_gpus() {
    use std::process::{Command, Stdio};
    if !two_gpus() {
        return;
    }
    let bin = std::env::var("CREMA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_crema").into());
    let dir = tempfile::tempdir().unwrap();
    let lmdb = dir.path().join("lmdb");
    write_lmdb(&lmdb);
    let text = solver_text(&lmdb, 8, &dir.path().join("snap"))
        .replace("max_iter: 7 display: 0", "max_iter: 60 display: 10");
    let solver = dir.path().join("solver.prototxt");
    std::fs::write(&solver, text).unwrap();
    let losses = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("Iteration") && l.contains("loss = "))
            .map(|l| l.rsplit("loss = ").next().unwrap().to_string())
            .collect()
    };
    // --deterministic: cuDNN's algorithms are otherwise chosen by timing them, which may pick
    // different ones (rounding differently) in different runs.
    let one = Command::new(&bin)
        .args([
            "train",
            "--solver",
            solver.to_str().unwrap(),
            "--gpu",
            "0,1",
            "--deterministic",
        ])
        .output()
        .unwrap();
    let one_log = String::from_utf8_lossy(&one.stderr).to_string();
    assert!(one.status.success(), "{one_log}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let spawn = |rank: &str, gpu: &str| {
        Command::new(&bin)
            .args([
                "train",
                "--solver",
                solver.to_str().unwrap(),
                "--gpu",
                gpu,
                "--deterministic",
            ])
            .env("CREMA_WORLD_SIZE", "2")
            .env("CREMA_RANK", rank)
            .env("CREMA_MASTER_ADDR", "127.0.0.1")
            .env("CREMA_MASTER_PORT", &port)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (r1, r0) = (spawn("1", "1"), spawn("0", "0"));
    let (o0, o1) = (
        r0.wait_with_output().unwrap(),
        r1.wait_with_output().unwrap(),
    );
    let log0 = String::from_utf8_lossy(&o0.stderr).to_string();
    let log1 = String::from_utf8_lossy(&o1.stderr).to_string();
    assert!(
        o0.status.success() && o1.status.success(),
        "{log0}\n---\n{log1}"
    );
    let (a, b) = (losses(&one_log), losses(&log0));
    println!("one process: {a:?}\ntwo processes: {b:?}");
    assert_eq!(a.len(), 7, "{one_log}");
    assert_eq!(a, b, "the loss curves differ");
    assert!(
        losses(&log1).is_empty(),
        "rank 1 should not log training lines"
    );
}
