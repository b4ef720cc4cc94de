//! `crema caffe VERB -flag value ...`: Caffe's `caffe` command line (train, test, time,
//! device_query) with its single-dash flags, so existing scripts work by swapping the binary name.
//!
//! As with Caffe's gflags, every flag is accepted with every verb; flags a verb does not use are
//! reported and ignored.

use super::common::{parse_phase, EngineArgs};
use crema::solver::SignalEffect;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// train, test, time or device_query.
    #[arg(value_parser = ["train", "test", "time", "device_query", "device-query"])]
    pub verb: String,
    /// The solver definition (train).
    #[arg(long)]
    pub solver: Option<PathBuf>,
    /// The model definition (test, time).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Pretrained weights: comma separated .caffemodel files (train: fine-tune; test: score).
    #[arg(long, value_delimiter = ',')]
    pub weights: Vec<PathBuf>,
    /// A .solverstate to resume training from (train).
    #[arg(long)]
    pub snapshot: Option<PathBuf>,
    /// Number of iterations (test, time).
    #[arg(long, default_value_t = 50)]
    pub iterations: usize,
    /// GPU ids: `0`, `0,1` or `all`.
    #[arg(long)]
    pub gpu: Option<String>,
    /// Network phase (TRAIN or TEST); test defaults to TEST, time to TRAIN.
    #[arg(long, value_parser = parse_phase)]
    pub phase: Option<crema::layers::Phase>,
    /// Network stages, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub stage: Vec<String>,
    /// Network level.
    #[arg(long, default_value_t = 0)]
    pub level: i32,
    /// What SIGINT does during training: stop, snapshot or none.
    #[arg(long, default_value = "stop")]
    pub sigint_effect: SignalEffect,
    /// What SIGHUP does during training: snapshot, stop or none.
    #[arg(long, default_value = "snapshot")]
    pub sighup_effect: SignalEffect,
}

/// Warns about flags given that `verb` does not use.
fn ignored(verb: &str, flags: &[(&str, bool)]) {
    for (name, given) in flags {
        if *given {
            tracing::warn!("caffe {verb}: -{name} is not used by this action; ignoring it");
        }
    }
}

pub fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let engine = EngineArgs {
        gpu: args.gpu.clone(),
        stage: args.stage.clone(),
        level: args.level,
        tf32: false,
        deterministic: false,
    };
    match args.verb.as_str() {
        "train" => {
            let solver = args
                .solver
                .clone()
                .ok_or("caffe train: need a solver definition to train (-solver)")?;
            ignored(
                "train",
                &[
                    ("model", args.model.is_some()),
                    ("phase", args.phase.is_some()),
                ],
            );
            super::train::run(&super::train::Args {
                solver,
                weights: args.weights.clone(),
                snapshot: args.snapshot.clone(),
                engine,
                sigint_effect: args.sigint_effect,
                sighup_effect: args.sighup_effect,
            })
        }
        "test" => {
            let model = args
                .model
                .clone()
                .ok_or("caffe test: need a model definition to score (-model)")?;
            let weights = match args.weights.as_slice() {
                [] => return Err("caffe test: need model weights to score (-weights)".into()),
                [w] => w.clone(),
                _ => return Err("caffe test: give one -weights file".into()),
            };
            ignored(
                "test",
                &[
                    ("solver", args.solver.is_some()),
                    ("snapshot", args.snapshot.is_some()),
                ],
            );
            super::test::run(&super::test::Args {
                model,
                weights: Some(weights),
                iterations: args.iterations,
                phase: args.phase.unwrap_or(crema::layers::Phase::Test),
                engine,
            })
        }
        "time" => {
            let model = args
                .model
                .clone()
                .ok_or("caffe time: need a model definition to time (-model)")?;
            ignored(
                "time",
                &[
                    ("solver", args.solver.is_some()),
                    ("snapshot", args.snapshot.is_some()),
                ],
            );
            super::time::run(&super::time::Args {
                model,
                iterations: args.iterations,
                phase: args.phase.unwrap_or(crema::layers::Phase::Train),
                weights: args.weights.first().cloned(),
                forward_only: false,
                batch: None,
                synthetic: false,
                input_shape: vec![],
                engine,
            })
        }
        _ => super::device_query::run(&super::device_query::Args {}),
    }
}
