//! `crema test`: score a trained model over N batches (Caffe's `caffe test`).

use super::common::{engine, parse_phase, EngineArgs};
use crema::layers::Phase;
use crema::net::{net_from_file, State};
use crema::solver::lr::fmt_g;
use std::path::PathBuf;
use tracing::info;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The net definition (train_val.prototxt); its TEST-phase layers are used.
    #[arg(long)]
    pub model: PathBuf,
    /// Trained weights (.caffemodel).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Number of batches to run.
    #[arg(long, default_value_t = 50)]
    pub iterations: usize,
    /// The phase to build the net for.
    #[arg(long, default_value = "TEST", value_parser = parse_phase)]
    pub phase: Phase,
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
    let mut net = net_from_file(&args.model, &state, engine.clone())?;
    match &args.weights {
        Some(w) => net.copy_trained_layers_from(w)?,
        None => tracing::warn!("no --weights given: testing the randomly initialised net"),
    }
    info!("Running for {} iterations.", args.iterations);
    let names = net.output_names();
    let weights = net.output_loss_weights();
    let mut scores: Vec<Vec<f64>> = vec![vec![]; names.len()];
    let mut loss = 0.0f64;
    for i in 0..args.iterations {
        loss += net.forward()? as f64;
        for (k, n) in names.iter().enumerate() {
            let v = net
                .blob(n)
                .map(|b| b.data_to_vec(&*engine))
                .unwrap_or_default();
            if scores[k].len() < v.len() {
                scores[k].resize(v.len(), 0.0);
            }
            for (j, x) in v.iter().enumerate() {
                scores[k][j] += *x as f64;
                info!("Batch {i}, {n} = {}", fmt_g(*x));
            }
        }
    }
    let iters = args.iterations.max(1) as f64;
    info!("Loss: {}", fmt_g((loss / iters) as f32));
    for (k, n) in names.iter().enumerate() {
        for s in &scores[k] {
            let mean = (*s / iters) as f32;
            let w = weights[k];
            let msg = if w != 0.0 {
                format!(" (* {} = {} loss)", fmt_g(w), fmt_g(w * mean))
            } else {
                String::new()
            };
            info!("{n} = {}{msg}", fmt_g(mean));
            println!("{n} = {}{msg}", fmt_g(mean));
        }
    }
    Ok(())
}
