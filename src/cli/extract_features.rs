//! `crema extract-features`: Caffe's extract_features tool.

use super::common::{engine, parse_phase, EngineArgs};
use crema::features::extract_features;
use crema::layers::Phase;
use crema::net::{net_from_file, State};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The net whose blobs to extract (its data layers feed it).
    #[arg(long)]
    pub model: PathBuf,
    /// Trained weights (.caffemodel).
    #[arg(long)]
    pub weights: PathBuf,
    /// Blobs to extract, comma separated (e.g. fc7,prob).
    #[arg(long, value_delimiter = ',', required = true)]
    pub blobs: Vec<String>,
    /// One new LMDB per blob, comma separated, in the same order.
    #[arg(long, value_delimiter = ',', required = true)]
    pub dbs: Vec<PathBuf>,
    /// Number of mini-batches to run.
    #[arg(long)]
    pub batches: usize,
    /// Phase to build the net for.
    #[arg(long, default_value = "TEST", value_parser = parse_phase)]
    pub phase: Phase,
    /// Replace existing databases.
    #[arg(long)]
    pub overwrite: bool,
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
    let mut net = net_from_file(&args.model, &state, engine)?;
    net.copy_trained_layers_from(&args.weights)?;
    tracing::info!("Extracting Features");
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(args.batches as u64);
        if let Ok(style) = ProgressStyle::with_template(
            "{elapsed_precise} [{wide_bar}] {pos}/{len} batches ({per_sec}, eta {eta})",
        ) {
            b.set_style(style);
        }
        b
    } else {
        ProgressBar::hidden()
    };
    let n = extract_features(
        &mut net,
        &args.blobs,
        &args.dbs,
        args.batches,
        args.overwrite,
        |i| bar.set_position(i as u64),
    )?;
    bar.finish_and_clear();
    for (b, d) in args.blobs.iter().zip(&args.dbs) {
        println!("{b}: {n} features -> {}", d.display());
    }
    tracing::info!("Successfully extracted the features!");
    Ok(())
}
