//! `crema train`: Caffe's `caffe train`.

use super::common::{engine, gpu_count, gpu_ids, EngineArgs};
use crema::parallel::rendezvous::Launch;
use crema::solver::{NetChoices, SignalEffect, Signals, Solver};
use crema_proto::caffe::SolverParameter;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(clap::Args, Debug, Clone)]
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
    let launch = Launch::from_env()?;
    let devices = match &args.engine.gpu {
        Some(spec) => gpu_ids(spec, gpu_count)?,
        None => vec![],
    };
    if devices.len() > 1 || launch.is_some() {
        return parallel::run(args, param, devices, launch);
    }
    let wants_gpu = param.solver_mode() == crema_proto::caffe::solver_parameter::SolverMode::Gpu;
    let engine = engine(
        &args.engine,
        wants_gpu.then(|| param.device_id().max(0) as usize),
    )?;
    tracing::info!("Using {} engine", engine.name());
    let mut solver = Solver::new(param, Some(&args.solver), engine, &choices(args))?;
    prepare(args, &mut solver, install_signals(args)?)?;
    solver.solve(args.snapshot.as_deref())?;
    Ok(())
}

fn choices(args: &Args) -> NetChoices {
    NetChoices {
        stages: args.engine.stage.clone(),
        level: args.engine.level,
    }
}

/// Registers the SIGINT/SIGHUP flags the solver polls.
fn install_signals(args: &Args) -> Result<Signals, Box<dyn std::error::Error>> {
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
    Ok(signals)
}

/// Fine-tuning weights and signal flags: the same for one worker or many.
fn prepare(args: &Args, solver: &mut Solver, signals: Signals) -> crema::Result<()> {
    for w in &args.weights {
        tracing::info!("Finetuning from {}", w.display());
        solver.net.copy_trained_layers_from(w)?;
    }
    solver.set_signals(signals);
    Ok(())
}

/// Data-parallel training on several GPUs: one worker thread per GPU of this process, and
/// optionally several processes (CREMA_RANK, CREMA_WORLD_SIZE, CREMA_MASTER_ADDR), all joined in
/// one NCCL communicator.
#[cfg(feature = "nccl")]
mod parallel {
    use super::*;
    use crema::engine::cuda::nccl::{unique_id, NcclCollective};
    use crema::engine::cuda::CudaEngine;
    use crema::engine::Engine;
    use crema::parallel::{rendezvous, run_threads};
    use std::rc::Rc;

    pub fn run(
        args: &Args,
        param: SolverParameter,
        mut devices: Vec<usize>,
        launch: Option<Launch>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let launch = launch.unwrap_or(Launch {
            rank: 0,
            processes: 1,
            master: String::new(),
            timeout: std::time::Duration::ZERO,
        });
        if devices.is_empty() {
            // A multi-process launch without --gpu: one GPU per process, by rank on its host.
            let local = std::env::var("CREMA_LOCAL_RANK")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(launch.rank);
            devices = vec![local];
        }
        let prefix = |e: String| format!("training on GPUs {devices:?}: {e}");
        crema::engine::cuda::nccl::ensure_nccl().map_err(prefix)?;
        let workers = devices.len();
        let world = workers * launch.processes;
        if launch.processes > 1 {
            tracing::info!(
                "Process {} of {}: meeting the others at {}",
                launch.rank,
                launch.processes,
                launch.master
            );
        }
        let id = rendezvous::exchange(&launch, workers, || unique_id().map_err(crema::Error::msg))?;
        tracing::info!(
            "Training on {world} GPUs ({workers} in this process: {devices:?}): worker r takes items r, r+{world}, ... of the training data, so the effective batch is the net's batch x {world}"
        );
        let signals = install_signals(args)?;
        let args = Arc::new(args.clone());
        let param = Arc::new(param);
        let first_rank = launch.rank * workers;
        run_threads(workers, first_rank, world, move |shard| {
            let _quiet = (!shard.is_root()).then(crate::cli::log::quiet_thread);
            let args = &*args;
            let device = devices[shard.rank - first_rank];
            let engine = CudaEngine::with_options(device, args.engine.gpu_options())
                .map_err(|e| crema::Error::msg(format!("--gpu {device}: {e}")))?;
            let collective = NcclCollective::new(&engine, shard, &id).map_err(crema::Error::msg)?;
            let engine: Rc<dyn Engine> = Rc::new(engine);
            if shard.is_root() {
                tracing::info!("Using {} engine", engine.name());
            }
            let mut solver =
                Solver::new((*param).clone(), Some(&args.solver), engine, &choices(args))?;
            prepare(args, &mut solver, signals.clone())?;
            solver.set_collective(Box::new(collective))?;
            solver.solve(args.snapshot.as_deref())
        })?;
        Ok(())
    }
}

#[cfg(not(feature = "nccl"))]
mod parallel {
    use super::*;
    pub fn run(
        _args: &Args,
        _param: SolverParameter,
        devices: Vec<usize>,
        _launch: Option<Launch>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        Err(format!(
            "training on GPUs {devices:?} needs NCCL, and this build of crema has no NCCL support (rebuild with the default features)"
        )
        .into())
    }
}
