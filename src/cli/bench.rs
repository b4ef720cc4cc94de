//! `crema bench`: training-step and forward-pass milliseconds of deploy nets on synthetic data,
//! printed as a table (the benchmark behind the models' readme figures).

use super::common::{engine, EngineArgs};
use crema::engine::Engine;
use crema::layers::Phase;
use crema::net::{Net, State};
use crema::solver::{NetChoices, Solver};
use crema_proto::caffe::{
    BlobShape, InputParameter, LayerParameter, NetParameter, SolverParameter,
};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Deploy nets to time, each as PATH or PATH:BATCH (default: every models/*/deploy.prototxt
    /// with the batch size its solver trains with).
    #[arg(value_name = "DEPLOY[:BATCH]")]
    pub nets: Vec<String>,
    /// Timed iterations per net (after two warm-up iterations).
    #[arg(long, default_value_t = 20)]
    pub iterations: usize,
    /// PyTorch reference timings to compare against: the JSON lines printed by
    /// ../shared/gpu/torch_anchor.py, run on the same machine (ideally in the same session).
    #[arg(long, value_name = "JSONL")]
    pub torch: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The standard nets and the batch sizes their reference solvers use (the last column: whether
/// the CPU timing runs them by default; the big ImageNet nets are GPU-only by default).
const DEFAULT_NETS: &[(&str, usize, bool)] = &[
    ("models/lenet/deploy.prototxt", 64, true),
    ("models/cifar10_quick/deploy.prototxt", 100, true),
    ("models/cifar10_full/deploy.prototxt", 100, true),
    ("models/caffenet/deploy.prototxt", 256, false),
    ("models/vgg16/deploy.prototxt", 64, false),
    ("models/resnet50/deploy.prototxt", 64, false),
    ("models/googlenet/deploy.prototxt", 128, false),
];

/// Turns a deploy net into a trainable one on synthetic data: the Input layer gets the batch
/// size, the final Softmax is replaced by SoftmaxWithLoss against an Input `label` blob.
pub fn trainable_from_deploy(deploy: &NetParameter, batch: usize) -> Result<NetParameter, String> {
    let mut net = crema::upgrade::upgrade_net(deploy).map_err(|e| e.to_string())?;
    let input = net
        .layer
        .iter_mut()
        .find(|l| l.r#type() == "Input")
        .ok_or("the deploy net has no Input layer (or input: fields) to feed")?;
    let p = input.input_param.get_or_insert_with(Default::default);
    for s in p.shape.iter_mut() {
        if let Some(d) = s.dim.first_mut() {
            *d = batch as i64;
        }
    }
    let last = net.layer.last().cloned().ok_or("the net has no layers")?;
    let logits = if last.r#type() == "Softmax" {
        net.layer.pop();
        last.bottom
            .first()
            .cloned()
            .ok_or("the final Softmax has no bottom")?
    } else {
        last.top
            .first()
            .cloned()
            .ok_or("the last layer has no top")?
    };
    net.layer.push(LayerParameter {
        name: Some("bench_label".into()),
        r#type: Some("Input".into()),
        top: vec!["bench_label".into()],
        input_param: Some(InputParameter {
            shape: vec![BlobShape {
                dim: vec![batch as i64],
            }],
        }),
        ..Default::default()
    });
    net.layer.push(LayerParameter {
        name: Some("bench_loss".into()),
        r#type: Some("SoftmaxWithLoss".into()),
        bottom: vec![logits, "bench_label".into()],
        top: vec!["bench_loss".into()],
        ..Default::default()
    });
    Ok(net)
}

/// Fills every Input top with values in [0, 1) (labels with valid class indexes).
pub fn feed(net: &Net, engine: &dyn Engine, classes: usize) {
    for (i, name) in net.blob_names().iter().enumerate() {
        let is_input = net
            .layers()
            .iter()
            .any(|l| l.kind == "Input" && l.tops.contains(&i));
        if !is_input {
            continue;
        }
        let b = net.blob_at(i);
        let v: Vec<f32> = if name == "bench_label" {
            (0..b.count()).map(|k| (k % classes) as f32).collect()
        } else {
            (0..b.count())
                .map(|k| ((k * 7919) % 1000) as f32 / 1000.0)
                .collect()
        };
        b.set_data(engine, &v);
    }
}

struct Row {
    name: String,
    batch: usize,
    fwd_ms: f64,
    step_ms: f64,
    /// Multiply-add FLOPs of one training step (see [`train_flops`]).
    flops: f64,
}

/// FLOPs of one training step of `net`, counted as PyTorch's FlopCounterMode counts them: two per
/// multiply-add of every Convolution, Deconvolution and InnerProduct; forward once, backward twice
/// (data and filter gradients), except that a layer whose input needs no gradient skips the data
/// gradient. Everything else (pooling, activations, the update) is not counted.
fn train_flops(net: &Net) -> f64 {
    let mut total = 0.0;
    for l in net.layers() {
        if !matches!(
            l.kind.as_str(),
            "Convolution" | "Deconvolution" | "InnerProduct"
        ) {
            continue;
        }
        let (Some(w), Some(&top), Some(&bottom)) =
            (l.blobs.first(), l.tops.first(), l.bottoms.first())
        else {
            continue;
        };
        let per_row = w.count() as f64 / w.dim(0).max(1) as f64;
        // Deconvolution multiplies every input element by a filter column; the others produce
        // every output element from one filter row.
        let outputs = if l.kind == "Deconvolution" {
            net.blob_at(bottom).count()
        } else {
            net.blob_at(top).count()
        } as f64;
        let fwd = 2.0 * outputs * per_row;
        let passes = if l.bottom_need_backward.first().copied().unwrap_or(false) {
            3.0
        } else {
            2.0
        };
        total += fwd * passes;
    }
    total
}

/// A solver training the deploy net at `path` on synthetic data (fed), with its trainable net.
fn synthetic_solver(
    path: &Path,
    batch: usize,
    engine: Rc<dyn Engine>,
) -> crema::Result<(Solver, NetParameter, usize)> {
    let deploy = crema_proto::read_net_text(path)?;
    let train = trainable_from_deploy(&deploy, batch)
        .map_err(|e| crema::Error::msg(format!("{}: {e}", path.display())))?;
    let solver_param = SolverParameter {
        net_param: Some(train.clone()),
        base_lr: Some(0.001),
        momentum: Some(0.9),
        weight_decay: Some(5e-4),
        lr_policy: Some("fixed".into()),
        max_iter: Some(i32::MAX),
        snapshot_after_train: Some(false),
        ..Default::default()
    };
    let solver = Solver::new(solver_param, None, engine.clone(), &NetChoices::default())?;
    let classes = {
        let logits = &train.layer[train.layer.len() - 1].bottom[0];
        solver
            .net
            .blob(logits)
            .map(|b| b.count() / batch.max(1))
            .unwrap_or(1)
            .max(1)
    };
    feed(&solver.net, &*engine, classes);
    Ok((solver, train, classes))
}

fn bench_one(
    path: &Path,
    batch: usize,
    iters: usize,
    engine: Rc<dyn Engine>,
) -> Result<Row, Box<dyn std::error::Error>> {
    let (mut solver, train, classes) = synthetic_solver(path, batch, engine.clone())?;
    solver.step(3)?;
    engine.synchronize();
    let t = Instant::now();
    solver.step(iters as i32)?;
    engine.synchronize();
    let step_ms = t.elapsed().as_secs_f64() * 1e3 / iters as f64;
    let flops = train_flops(&solver.net);
    let mut fwd_net = Net::new(&train, &State::phase(Phase::Test), engine.clone())?;
    fwd_net.share_trained_layers_with(&solver.net)?;
    feed(&fwd_net, &*engine, classes);
    fwd_net.forward()?;
    engine.synchronize();
    let t = Instant::now();
    for _ in 0..iters {
        fwd_net.forward()?;
    }
    engine.synchronize();
    let fwd_ms = t.elapsed().as_secs_f64() * 1e3 / iters as f64;
    Ok(Row {
        name: path.display().to_string(),
        batch,
        fwd_ms,
        step_ms,
        flops,
    })
}

/// The nets to time with their batch sizes: the named ones, else the standard ones (the big ones
/// only on a GPU).
fn nets_to_time(args: &Args, on_gpu: bool) -> Result<Vec<(PathBuf, usize)>, String> {
    let nets: Vec<(PathBuf, usize)> = if args.nets.is_empty() {
        DEFAULT_NETS
            .iter()
            .filter(|(p, _, cpu)| Path::new(p).exists() && (on_gpu || *cpu))
            .map(|(p, b, _)| (PathBuf::from(p), *b))
            .collect()
    } else {
        args.nets
            .iter()
            .map(|s| match s.rsplit_once(':') {
                Some((p, b)) if b.parse::<usize>().is_ok() => {
                    (PathBuf::from(p), b.parse().unwrap_or(1))
                }
                _ => (PathBuf::from(s), 1),
            })
            .collect()
    };
    if nets.is_empty() {
        return Err(
            "no nets to time: run from the repository root or name deploy prototxts".into(),
        );
    }
    Ok(nets)
}

/// PyTorch's rows from torch_anchor.py: (case, batch, ms per step).
fn read_torch(path: &Path) -> Result<Vec<(String, usize, f64)>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| l.trim_start().starts_with('{')) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(case), Some(batch), Some(ms)) = (
            v["case"].as_str(),
            v["batch"].as_u64(),
            v["ms_per_step"].as_f64(),
        ) {
            rows.push((case.to_string(), batch as usize, ms));
        }
    }
    Ok(rows)
}

/// The PyTorch case to compare a models/ net with: (eager ms, CUDA-graph ms) at the same batch.
/// The folder name is the net's name in torch_anchor.py; where PyTorch was timed in both
/// precisions (CaffeNet), the one matching crema's is taken.
fn torch_match(
    torch: &[(String, usize, f64)],
    path: &Path,
    batch: usize,
    tf32: bool,
) -> (Option<f64>, Option<f64>) {
    let model = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let find = |mode: &str| {
        let cases: Vec<&(String, usize, f64)> = torch
            .iter()
            .filter(|(c, b, _)| {
                *b == batch
                    && c.split(' ').next() == Some(model)
                    && c.contains(mode)
                    && !c.contains("amp")
            })
            .collect();
        cases
            .iter()
            .find(|(c, _, _)| c.contains("strict") != tf32)
            .or(cases.first())
            .map(|r| r.2)
    };
    (find("eager"), find("cudagraph"))
}

pub fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let devices = match &args.engine.gpu {
        Some(spec) => super::common::gpu_ids(spec, super::common::gpu_count)?,
        None => vec![],
    };
    if devices.len() > 1 {
        let nets = nets_to_time(args, true)?;
        return scaling::run(args, &devices, &nets);
    }
    let engine = engine(&args.engine, None)?;
    let on_gpu = engine.name().starts_with("CUDA");
    let nets = nets_to_time(args, on_gpu)?;
    let torch = match &args.torch {
        Some(p) => read_torch(p)?,
        None => Vec::new(),
    };
    let tf32 = engine.tf32();
    let threads = rayon::current_num_threads();
    println!(
        "engine {} ({} host threads), {} math, {} timed iterations per net, synthetic data on the device",
        engine.name(),
        threads,
        if tf32 { "TF32" } else { "strict fp32" },
        args.iterations
    );
    let mut header = format!(
        "| {:<38} | {:>5} | {:>10} | {:>13} | {:>9} | {:>8} |",
        "net", "batch", "forward ms", "train step ms", "images/s", "TFLOP/s"
    );
    if !torch.is_empty() {
        header.push_str(" torch eager ms | crema/eager | torch graph ms | crema/graph |");
    }
    println!("{header}");
    println!(
        "{}",
        header
            .chars()
            .map(|c| if c == '|' { '|' } else { '-' })
            .collect::<String>()
    );
    for (path, batch) in nets {
        let r = bench_one(&path, batch, args.iterations.max(1), engine.clone())?;
        let mut line = format!(
            "| {:<38} | {:>5} | {:>10.3} | {:>13.3} | {:>9.0} | {:>8.2} |",
            r.name,
            r.batch,
            r.fwd_ms,
            r.step_ms,
            r.batch as f64 / (r.step_ms / 1e3),
            r.flops / (r.step_ms / 1e3) / 1e12
        );
        if !torch.is_empty() {
            let (eager, graph) = torch_match(&torch, &path, batch, tf32);
            let cell = |t: Option<f64>| match t {
                Some(t) => (format!("{t:.3}"), format!("{:.2}", r.step_ms / t)),
                None => ("-".into(), "-".into()),
            };
            let (e, er) = cell(eager);
            let (g, gr) = cell(graph);
            line.push_str(&format!(" {e:>14} | {er:>11} | {g:>14} | {gr:>11} |"));
        }
        println!("{line}");
    }
    Ok(())
}

/// `crema bench --gpu 0,1,...`: data-parallel scaling. Each net trains on synthetic data with the
/// same batch per GPU on 1, 2, 4, ... of the listed GPUs (one worker thread per GPU, gradients
/// averaged by NCCL as `crema train --gpu` does), and the table gives images/s and the speedup
/// over one GPU.
#[cfg(feature = "nccl")]
mod scaling {
    use super::*;
    use crema::engine::cuda::nccl::{ensure_nccl, unique_id, NcclCollective};
    use crema::engine::cuda::CudaEngine;
    use crema::parallel::run_threads;

    pub fn run(
        args: &Args,
        devices: &[usize],
        nets: &[(PathBuf, usize)],
    ) -> Result<(), Box<dyn std::error::Error>> {
        ensure_nccl()?;
        let tf32 = args.engine.tf32 || std::env::var("CREMA_TF32").is_ok_and(|v| v == "1");
        let mut counts: Vec<usize> = (0..)
            .map(|k| 1usize << k)
            .take_while(|n| *n < devices.len())
            .collect();
        counts.push(devices.len());
        println!(
            "data-parallel scaling on GPUs {devices:?}, {} math, {} timed iterations, synthetic data on the devices, same batch per GPU",
            if tf32 { "TF32" } else { "strict fp32" },
            args.iterations
        );
        let header = format!(
            "| {:<38} | {:>9} | {:>4} | {:>13} | {:>9} | {:>7} | {:>10} |",
            "net", "batch/GPU", "GPUs", "train step ms", "images/s", "speedup", "efficiency"
        );
        println!("{header}");
        println!(
            "{}",
            header
                .chars()
                .map(|c| if c == '|' { '|' } else { '-' })
                .collect::<String>()
        );
        for (path, batch) in nets {
            let mut base = None;
            for &n in &counts {
                let options = args.engine.gpu_options();
                let ms =
                    time_workers(path, *batch, args.iterations.max(1), &devices[..n], options)?;
                let images = (n * batch) as f64 / (ms / 1e3);
                let one = *base.get_or_insert(images);
                println!(
                    "| {:<38} | {:>9} | {:>4} | {:>13.3} | {:>9.0} | {:>6.2}x | {:>9.1}% |",
                    path.display(),
                    batch,
                    n,
                    ms,
                    images,
                    images / one,
                    100.0 * images / one / n as f64
                );
            }
        }
        Ok(())
    }

    /// Milliseconds per training step of `devices.len()` workers in step (the slowest worker's).
    fn time_workers(
        path: &Path,
        batch: usize,
        iters: usize,
        devices: &[usize],
        options: crema::engine::cuda::GpuOptions,
    ) -> Result<f64, Box<dyn std::error::Error>> {
        let n = devices.len();
        let id = if n > 1 { unique_id()? } else { vec![] };
        let (path, devices) = (path.to_path_buf(), devices.to_vec());
        let times = run_threads(n, 0, n, move |shard| {
            let _quiet = (!shard.is_root()).then(crate::cli::log::quiet_thread);
            let err = |e: String| crema::Error::msg(format!("GPU {}: {e}", devices[shard.rank]));
            let engine = CudaEngine::with_options(devices[shard.rank], options).map_err(err)?;
            let collective = if n > 1 {
                Some(NcclCollective::new(&engine, shard, &id).map_err(err)?)
            } else {
                None
            };
            let engine: Rc<dyn Engine> = Rc::new(engine);
            let (mut solver, _, _) = synthetic_solver(&path, batch, engine.clone())?;
            if let Some(c) = collective {
                solver.set_collective(Box::new(c))?;
            }
            solver.step(3)?;
            engine.synchronize();
            let t = Instant::now();
            solver.step(iters as i32)?;
            engine.synchronize();
            Ok(t.elapsed().as_secs_f64() * 1e3 / iters as f64)
        })?;
        Ok(times.into_iter().fold(0.0, f64::max))
    }
}

#[cfg(not(feature = "nccl"))]
mod scaling {
    use super::*;
    pub fn run(
        _args: &Args,
        devices: &[usize],
        _nets: &[(PathBuf, usize)],
    ) -> Result<(), Box<dyn std::error::Error>> {
        Err(format!(
            "timing GPUs {devices:?} together needs NCCL, and this build of crema has none"
        )
        .into())
    }
}
