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
}

/// The engine to run on. The CUDA engine is not built yet: a GPU request falls back to the CPU
/// with a warning rather than failing.
pub fn engine(args: &EngineArgs, solver_wants_gpu: bool) -> Rc<dyn Engine> {
    if args.gpu.is_some() || solver_wants_gpu {
        tracing::warn!(
            "this build of crema has no GPU engine yet; running on the CPU ({} threads)",
            rayon::current_num_threads()
        );
    }
    Rc::new(CpuEngine::new())
}

/// Parses a phase name as Caffe's -phase flag does.
pub fn parse_phase(s: &str) -> Result<Phase, String> {
    match s.to_ascii_uppercase().as_str() {
        "TRAIN" => Ok(Phase::Train),
        "TEST" => Ok(Phase::Test),
        _ => Err(format!("`{s}` is not a phase; use TRAIN or TEST")),
    }
}
