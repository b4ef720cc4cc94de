//! Pieces shared by the subcommands: engine choice, net state flags.

use crema::engine::{CpuEngine, Engine};
use crema::layers::Phase;
use std::rc::Rc;

/// Flags that pick the engine and the net state, shared by train/test/time.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct EngineArgs {
    /// GPU ids to use (`0`, `0,1` or `all`); without a GPU engine crema runs on the CPU.
    #[arg(long)]
    pub gpu: Option<String>,
    /// Net stages to include (repeatable, or comma separated), as Caffe's -stage.
    #[arg(long, value_delimiter = ',')]
    pub stage: Vec<String>,
    /// Net level, as Caffe's -level.
    #[arg(long, default_value_t = 0)]
    pub level: i32,
    /// Let the GPU's convolutions and gemms use TF32 tensor cores (about 10 significant bits in
    /// the products) instead of Caffe's strict fp32; also `CREMA_TF32=1`.
    #[arg(long)]
    pub tf32: bool,
    /// Make GPU runs repeatable bit for bit: only deterministic cuDNN algorithms, chosen without
    /// timing them (often slower); also `CREMA_DETERMINISTIC=1`.
    #[arg(long)]
    pub deterministic: bool,
}

impl EngineArgs {
    /// The GPU engine's options these flags ask for.
    #[cfg(feature = "cuda")]
    pub fn gpu_options(&self) -> crema::engine::cuda::GpuOptions {
        crema::engine::cuda::GpuOptions {
            tf32: self.tf32,
            deterministic: self.deterministic,
        }
    }
}

/// The engine to run on. `--gpu N` picks the CUDA engine on device N and is an error when that
/// cannot be had; the solver's `solver_mode: GPU` (`solver_device`, its `device_id`) falls back to
/// the CPU with a warning, as a prototxt written for another machine should still run.
pub fn engine(args: &EngineArgs, solver_device: Option<usize>) -> Result<Rc<dyn Engine>, String> {
    if let Some(spec) = &args.gpu {
        let id = parse_gpu(spec)?;
        return cuda_engine(id, args).map_err(|e| format!("--gpu {spec}: {e}"));
    }
    if let Some(id) = solver_device {
        match cuda_engine(id, args) {
            Ok(e) => return Ok(e),
            Err(e) => tracing::warn!(
                "solver_mode: GPU asks for GPU {id}, but {e}; running on the CPU ({} threads)",
                rayon::current_num_threads()
            ),
        }
    }
    Ok(Rc::new(CpuEngine::new()))
}

/// The device of `--gpu` for commands that run on one GPU: `N`, the first of `N,M,...`, or
/// `all` = 0.
fn parse_gpu(spec: &str) -> Result<usize, String> {
    let ids = gpu_ids(spec, || Ok(1))?;
    if ids.len() > 1 {
        tracing::warn!(
            "--gpu {spec}: this command runs on one GPU; using GPU {}",
            ids[0]
        );
    }
    Ok(ids[0])
}

/// Number of CUDA devices (an error naming what is missing where there is no GPU engine).
#[cfg(feature = "cuda")]
pub fn gpu_count() -> Result<usize, String> {
    crema::engine::cuda::device_count()
}

#[cfg(not(feature = "cuda"))]
pub fn gpu_count() -> Result<usize, String> {
    Err("this build of crema has no GPU engine".into())
}

/// The devices `--gpu` names: `N`, `N,M,...` or `all` (every device `count` reports).
pub fn gpu_ids(
    spec: &str,
    count: impl FnOnce() -> Result<usize, String>,
) -> Result<Vec<usize>, String> {
    if spec.trim().eq_ignore_ascii_case("all") {
        let n = count().map_err(|e| format!("--gpu all: {e}"))?;
        if n == 0 {
            return Err("--gpu all: this machine has no CUDA device".into());
        }
        return Ok((0..n).collect());
    }
    let mut ids = Vec::new();
    for part in spec.split(',').map(str::trim) {
        let id = part.parse::<usize>().map_err(|_| {
            format!("--gpu `{spec}`: `{part}` is not a GPU id; give e.g. `0`, `0,1` or `all`")
        })?;
        if ids.contains(&id) {
            return Err(format!("--gpu `{spec}` names GPU {id} twice"));
        }
        ids.push(id);
    }
    Ok(ids)
}

#[cfg(feature = "cuda")]
fn cuda_engine(id: usize, args: &EngineArgs) -> Result<Rc<dyn Engine>, String> {
    let e = crema::engine::cuda::CudaEngine::with_options(id, args.gpu_options())?;
    Ok(Rc::new(e))
}

#[cfg(not(feature = "cuda"))]
fn cuda_engine(_id: usize, _args: &EngineArgs) -> Result<Rc<dyn Engine>, String> {
    Err("this build of crema has no GPU engine (it was built without the `cuda` feature; rebuild with \
         `cargo build --release --features cuda`)"
        .to_string())
}

/// Parses a phase name as Caffe's -phase flag does.
pub fn parse_phase(s: &str) -> Result<Phase, String> {
    match s.to_ascii_uppercase().as_str() {
        "TRAIN" => Ok(Phase::Train),
        "TEST" => Ok(Phase::Test),
        _ => Err(format!("`{s}` is not a phase; use TRAIN or TEST")),
    }
}
