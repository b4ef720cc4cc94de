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
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The standard nets and the batch sizes their reference solvers use.
const DEFAULT_NETS: &[(&str, usize)] = &[
    ("models/lenet/deploy.prototxt", 64),
    ("models/cifar10_quick/deploy.prototxt", 100),
    ("models/cifar10_full/deploy.prototxt", 100),
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
fn feed(net: &Net, engine: &dyn Engine, classes: usize) {
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
}

fn bench_one(
    path: &Path,
    batch: usize,
    iters: usize,
    engine: Rc<dyn Engine>,
) -> Result<Row, Box<dyn std::error::Error>> {
    let deploy = crema_proto::read_net_text(path)?;
    let train =
        trainable_from_deploy(&deploy, batch).map_err(|e| format!("{}: {e}", path.display()))?;
    let solver_param = SolverParameter {
        net_param: Some(train.clone()),
        base_lr: Some(0.001),
        momentum: Some(0.9),
        lr_policy: Some("fixed".into()),
        max_iter: Some(i32::MAX),
        snapshot_after_train: Some(false),
        ..Default::default()
    };
    let mut solver = Solver::new(solver_param, None, engine.clone(), &NetChoices::default())?;
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
    solver.step(2)?;
    let t = Instant::now();
    solver.step(iters as i32)?;
    let step_ms = t.elapsed().as_secs_f64() * 1e3 / iters as f64;
    let mut fwd_net = Net::new(&train, &State::phase(Phase::Test), engine.clone())?;
    fwd_net.share_trained_layers_with(&solver.net)?;
    feed(&fwd_net, &*engine, classes);
    fwd_net.forward()?;
    let t = Instant::now();
    for _ in 0..iters {
        fwd_net.forward()?;
    }
    let fwd_ms = t.elapsed().as_secs_f64() * 1e3 / iters as f64;
    Ok(Row {
        name: path.display().to_string(),
        batch,
        fwd_ms,
        step_ms,
    })
}

pub fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let nets: Vec<(PathBuf, usize)> = if args.nets.is_empty() {
        DEFAULT_NETS
            .iter()
            .filter(|(p, _)| Path::new(p).exists())
            .map(|(p, b)| (PathBuf::from(p), *b))
            .collect()
    } else {
        args.nets
            .iter()
            .map(|s| match s.rsplit_once(':') {
                Some((p, b)) if b.parse::<usize>().is_ok() => {
                    Ok((PathBuf::from(p), b.parse().unwrap_or(1)))
                }
                _ => Ok((PathBuf::from(s), 1)),
            })
            .collect::<Result<_, String>>()?
    };
    if nets.is_empty() {
        return Err(
            "no nets to time: run from the repository root or name deploy prototxts".into(),
        );
    }
    let engine = engine(&args.engine, None)?;
    let threads = rayon::current_num_threads();
    println!(
        "{:<40} {:>6} {:>12} {:>14} {:>12}   engine {} ({} threads), {} iterations",
        "net",
        "batch",
        "forward ms",
        "train step ms",
        "images/s",
        engine.name(),
        threads,
        args.iterations
    );
    for (path, batch) in nets {
        let r = bench_one(&path, batch, args.iterations.max(1), engine.clone())?;
        println!(
            "{:<40} {:>6} {:>12.2} {:>14.2} {:>12.0}",
            r.name,
            r.batch,
            r.fwd_ms,
            r.step_ms,
            r.batch as f64 / (r.step_ms / 1e3)
        );
    }
    Ok(())
}
