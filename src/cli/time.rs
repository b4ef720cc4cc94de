//! `crema time`: per-layer forward/backward timings (Caffe's `caffe time`).

use super::common::{engine, parse_phase, EngineArgs};
use crema::layers::Phase;
use crema::net::substitute::{replace_data_layers, DataOverrides};
use crema::net::{Net, State};
use std::path::PathBuf;
use std::time::Instant;
use tracing::info;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The net definition to time.
    #[arg(long)]
    pub model: PathBuf,
    /// Number of forward-backward iterations to average over.
    #[arg(long, default_value_t = 50)]
    pub iterations: usize,
    /// Phase to build the net for.
    #[arg(long, default_value = "TRAIN", value_parser = parse_phase)]
    pub phase: Phase,
    /// Optional weights to load first.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Time the forward pass only.
    #[arg(long)]
    pub forward_only: bool,
    /// Batch size to time at, replacing the net's own (Input shapes and data layers' batch_size).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Feed synthetic data even where the data layers' sources exist (sources that are absent
    /// are always replaced by synthetic inputs of the declared shape, with a warning).
    #[arg(long)]
    pub synthetic: bool,
    /// Shape of the synthetic data of replaced data layers: N,C,H,W (or C,H,W with N from the
    /// layer), for data layers that do not declare their image size.
    #[arg(long, value_delimiter = ',')]
    pub input_shape: Vec<usize>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let engine = engine(&args.engine, None)?;
    let state = State {
        phase: args.phase,
        level: args.engine.level,
        stages: args.engine.stage.clone(),
    };
    let param = crema_proto::read_net_text(&args.model)?;
    let overrides = DataOverrides {
        all: args.synthetic,
        input_shape: (!args.input_shape.is_empty()).then(|| args.input_shape.clone()),
    };
    let (mut param, replaced) = match replace_data_layers(&param, &state, &overrides) {
        Ok(r) => r,
        Err(e) => {
            // A fault in the net itself (an unknown layer type, a bad parameter) is the more
            // useful message; only when the net builds is the missing data shape the problem.
            Net::new(&param, &state, engine.clone())?;
            return Err(e.into());
        }
    };
    for r in &replaced {
        tracing::warn!(
            "timing with synthetic data: {} layer `{}` becomes an Input of shape {:?}{}",
            r.kind,
            r.layer,
            r.shapes,
            if r.notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", r.notes.join("; "))
            }
        );
    }
    if let Some(b) = args.batch {
        for l in param.layer.iter_mut().filter(|l| l.r#type() == "Input") {
            for s in l
                .input_param
                .get_or_insert_with(Default::default)
                .shape
                .iter_mut()
            {
                if let Some(d) = s.dim.first_mut() {
                    *d = b as i64;
                }
            }
        }
    }
    // A deploy net has no loss, so its backward pass would do nothing: time it as it trains,
    // with a softmax loss against synthetic labels in place of the final Softmax.
    let has_loss = param
        .layer
        .iter()
        .any(|l| l.r#type().ends_with("Loss") || l.loss_weight.iter().any(|w| *w != 0.0));
    // Only a classifier (ending in Softmax) has an obvious loss; anything else is timed as it is,
    // as Caffe times it (its backward pass then does no work).
    let ends_in_softmax = param.layer.last().is_some_and(|l| l.r#type() == "Softmax");
    let deploy = !has_loss && ends_in_softmax && !args.forward_only && replaced.is_empty();
    if deploy {
        let batch = args.batch.unwrap_or(1);
        let b = param
            .layer
            .iter()
            .find(|l| l.r#type() == "Input")
            .and_then(|l| l.input_param.as_ref())
            .and_then(|p| p.shape.first())
            .and_then(|s| s.dim.first())
            .map(|d| *d as usize)
            .unwrap_or(batch);
        param = super::bench::trainable_from_deploy(&param, b)
            .map_err(|e| format!("{}: {e}", args.model.display()))?;
        tracing::info!(
            "no loss layer: timing the deploy net with SoftmaxWithLoss on synthetic labels"
        );
    }
    let mut net = Net::new(&param, &state, engine.clone())?;
    if deploy || !replaced.is_empty() {
        let classes = net
            .layers()
            .last()
            .and_then(|l| l.bottoms.first())
            .map(|&i| {
                let b = net.blob_at(i);
                b.count() / b.dim(0).max(1)
            })
            .unwrap_or(1)
            .max(1);
        super::bench::feed(&net, &*engine, if deploy { classes } else { 1 });
    }
    if let Some(w) = &args.weights {
        net.copy_trained_layers_from(w)?;
    }
    let n = net.layers().len();
    info!("Performing Forward");
    net.forward()?;
    if !args.forward_only {
        info!("Performing Backward");
        net.backward()?;
    }
    let iters = args.iterations.max(1);
    let mut fwd = vec![0f64; n];
    let mut bwd = vec![0f64; n];
    let mut total_f = 0f64;
    let mut total_b = 0f64;
    let t_all = Instant::now();
    for it in 0..iters {
        let t = Instant::now();
        for (i, f) in fwd.iter_mut().enumerate() {
            let s = Instant::now();
            net.forward_range(i, i + 1)?;
            engine.synchronize(); // a GPU engine queues work: time its completion
            *f += s.elapsed().as_secs_f64() * 1e3;
        }
        total_f += t.elapsed().as_secs_f64() * 1e3;
        if !args.forward_only {
            let t = Instant::now();
            for i in (0..n).rev() {
                let s = Instant::now();
                net.backward_layer(i)?;
                engine.synchronize();
                bwd[i] += s.elapsed().as_secs_f64() * 1e3;
            }
            total_b += t.elapsed().as_secs_f64() * 1e3;
        }
        info!(
            "Iteration: {} forward-backward time: {:.3} ms.",
            it + 1,
            t.elapsed().as_secs_f64() * 1e3
        );
    }
    let k = iters as f64;
    info!("Average time per layer: ");
    println!(
        "{:<24} {:<16} {:>12} {:>12}",
        "layer", "type", "forward ms", "backward ms"
    );
    for (i, l) in net.layers().iter().enumerate() {
        info!("{:>12}\tforward: {:.5} ms.", l.name, fwd[i] / k);
        if !args.forward_only {
            info!("{:>12}\tbackward: {:.5} ms.", l.name, bwd[i] / k);
        }
        println!(
            "{:<24} {:<16} {:>12.4} {:>12.4}",
            l.name,
            l.kind,
            fwd[i] / k,
            bwd[i] / k
        );
    }
    let msg_f = format!("Average Forward pass: {:.4} ms.", total_f / k);
    let msg_b = format!("Average Backward pass: {:.4} ms.", total_b / k);
    let msg_fb = format!(
        "Average Forward-Backward: {:.4} ms.",
        (total_f + total_b) / k
    );
    for m in [&msg_f, &msg_b, &msg_fb] {
        info!("{m}");
        println!("{m}");
    }
    info!("Total Time: {:.3} ms.", t_all.elapsed().as_secs_f64() * 1e3);
    info!("*** Benchmark ends ***");
    Ok(())
}
