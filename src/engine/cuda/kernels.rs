//! crema's own CUDA kernels (kernels/*.cu): compiled by NVRTC once per process, loaded once per
//! device, launched by name.

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, LaunchConfig, PushKernelArg,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// The kernel sources, in the order NVRTC sees them (common.cuh first).
const SOURCES: [&str; 7] = [
    include_str!("../../../kernels/common.cuh"),
    include_str!("../../../kernels/elementwise.cu"),
    include_str!("../../../kernels/activation.cu"),
    include_str!("../../../kernels/pool.cu"),
    include_str!("../../../kernels/lrn.cu"),
    include_str!("../../../kernels/softmax.cu"),
    include_str!("../../../kernels/channel.cu"),
];

/// Threads per block for every launch (the reduction kernels assume exactly this).
pub const BLOCK: u32 = 256;

/// A kernel argument: device pointers travel as u64.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    U64(u64),
    I32(i32),
    F32(f32),
    F64(f64),
}

/// The PTX of all kernels, compiled on first use and shared by every device of the process.
fn ptx() -> Result<Ptx, String> {
    static PTX: OnceLock<Result<Ptx, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        let src = SOURCES.join("\n");
        // No FMA contraction: the CPU engine rounds every product, and the GPU results are
        // checked against it.
        let opts = CompileOptions {
            fmad: Some(false),
            name: Some("crema_kernels.cu".into()),
            ..Default::default()
        };
        compile_ptx_with_opts(src, opts).map_err(|e| match e {
            CompileError::CompileError { log, .. } => {
                format!(
                    "NVRTC could not compile kernels/*.cu:\n{}",
                    log.to_string_lossy()
                )
            }
            other => format!("NVRTC could not compile kernels/*.cu: {other:?}"),
        })
    })
    .clone()
}

/// The loaded module of one device and the functions looked up so far.
pub struct Kernels {
    module: Arc<CudaModule>,
    functions: RefCell<HashMap<&'static str, CudaFunction>>,
}

impl Kernels {
    pub fn load(ctx: &Arc<CudaContext>) -> Result<Self, String> {
        let module = ctx
            .load_module(ptx()?)
            .map_err(|e| format!("loading the kernels' PTX: {e}"))?;
        Ok(Kernels {
            module,
            functions: RefCell::new(HashMap::new()),
        })
    }

    fn function(&self, name: &'static str) -> CudaFunction {
        if let Some(f) = self.functions.borrow().get(name) {
            return f.clone();
        }
        let f = self
            .module
            .load_function(name)
            .unwrap_or_else(|e| panic!("kernel `{name}` missing from kernels/*.cu: {e}"));
        self.functions.borrow_mut().insert(name, f.clone());
        f
    }

    /// Launches `name` on `stream` with `grid` blocks of [`BLOCK`] threads.
    pub fn launch(&self, stream: &Arc<CudaStream>, name: &'static str, grid: u32, args: &[Arg]) {
        if grid == 0 {
            return;
        }
        let f = self.function(name);
        let mut b = stream.launch_builder(&f);
        for a in args {
            match a {
                Arg::U64(v) => b.arg(v),
                Arg::I32(v) => b.arg(v),
                Arg::F32(v) => b.arg(v),
                Arg::F64(v) => b.arg(v),
            };
        }
        let cfg = LaunchConfig {
            grid_dim: (grid, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: every kernel's parameter list is (u64 | int | float)*, matched by the callers in
        // engine::cuda, and each pointer argument comes from a live device buffer of that engine
        // with at least as many elements as the counts passed alongside it.
        if let Err(e) = unsafe { b.launch(cfg) } {
            panic!("CUDA kernel `{name}` failed to launch: {e}");
        }
    }
}

/// Blocks for a grid-stride loop over `n` elements.
pub fn grid_for(n: usize) -> u32 {
    n.div_ceil(BLOCK as usize).min(1 << 20) as u32
}
