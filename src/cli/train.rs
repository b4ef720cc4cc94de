//! `crema train`: Caffe's `caffe train`.

use super::common::{engine, EngineArgs};
use crema::solver::{NetChoices, SignalEffect, Signals, Solver};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The solver definition (solver.prototxt).
    #[arg(long)]
    pub solver: PathBuf,
    /// Pretrained weights to fine-tune from (comma separated .caffemodel files, matched by layer name).
    #[arg(long, value_delimiter = ',')]
    pub weights: Vec<PathBuf>,
    /// A .solverstate to resume training from.
    #[arg(long)]
    pub snapshot: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
    /// What SIGINT does: stop (snapshot, then stop), snapshot, or none.
    #[arg(long, default_value = "stop")]
    pub sigint_effect: SignalEffect,
    /// What SIGHUP does: snapshot, stop, or none.
    #[arg(long, default_value = "snapshot")]
    pub sighup_effect: SignalEffect,
}

pub fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if !args.weights.is_empty() && args.snapshot.is_some() {
        return Err("give either --weights (fine-tune) or --snapshot (resume), not both".into());
    }
    let param = crema_proto::read_solver_text(&args.solver)?;
    let wants_gpu = param.solver_mode() == crema_proto::caffe::solver_parameter::SolverMode::Gpu;
    let engine = engine(
        &args.engine,
        wants_gpu.then(|| param.device_id().max(0) as usize),
    )?;
    tracing::info!("Using {} engine", engine.name());
    let choices = NetChoices {
        stages: args.engine.stage.clone(),
        level: args.engine.level,
    };
    let mut solver = Solver::new(param, Some(&args.solver), engine, &choices)?;
    for w in &args.weights {
        tracing::info!("Finetuning from {}", w.display());
        solver.net.copy_trained_layers_from(w)?;
    }
    let signals = Signals {
        sigint: Arc::new(AtomicBool::new(false)),
        sighup: Arc::new(AtomicBool::new(false)),
        sigint_effect: Some(args.sigint_effect),
        sighup_effect: Some(args.sighup_effect),
    };
    if args.sigint_effect != SignalEffect::None {
        signal_hook::flag::register(signal_hook::consts::SIGINT, signals.sigint.clone())?;
    }
    if args.sighup_effect != SignalEffect::None {
        signal_hook::flag::register(signal_hook::consts::SIGHUP, signals.sighup.clone())?;
    }
    solver.set_signals(signals);
    solver.solve(args.snapshot.as_deref())?;
    Ok(())
}
