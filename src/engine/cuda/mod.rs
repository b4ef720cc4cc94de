//! The CUDA engine: cuDNN convolutions, cuBLAS gemm, and crema's NVRTC kernels (kernels/*.cu) for
//! everything else. Buffers live on one device; host copies happen only in upload/download.
//!
//! Math is strict fp32 by default (cuBLAS without TF32, cuDNN restricted to FMA algorithms), so
//! results match the CPU engine to rounding; `CREMA_TF32=1` allows TF32 tensor cores.
//! The [`Engine`] trait is infallible, so a CUDA failure in the middle of an operation panics with
//! a message naming the operation; everything that can be checked up front (libraries, device,
//! kernel compilation) is checked in [`CudaEngine::new`] and returned as an error.

mod conv;
mod graph_conv;
mod kernels;
mod loader;
#[cfg(feature = "nccl")]
pub mod nccl;

use super::{
    composed, Activation, Buffer, ByteBatch, ConvGeom, Engine, Graph, LrnParams, Pending, PoolGeom,
    PoolMethod, SgdParam, SgdStep,
};
use conv::ConvPlan;
use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::driver::{
    CudaContext, CudaEvent, CudaGraph, CudaSlice, CudaStream, DevicePtr, PinnedHostSlice,
};
use kernels::{grid_for, Arg, Kernels};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

pub use loader::ensure_libraries;

/// A page-locked host buffer and the event that marks its copy done.
type PinnedCopy = (PinnedHostSlice<f32>, CudaEvent);

/// Runs every operation on one NVIDIA GPU.
pub struct CudaEngine {
    // Field order is drop order: device memory and descriptors before the handles and context.
    /// Algorithms chosen per geometry and math (strict fp32 or not).
    plans: RefCell<HashMap<(ConvGeom, bool), Rc<ConvPlan>>>,
    workspace: RefCell<Option<CudaSlice<u8>>>,
    /// Device copies of [`CudaEngine::launch_many`]'s tables, by content.
    tables: RefCell<HashMap<Vec<u64>, CudaSlice<u64>>>,
    /// Device copies of the last [`Engine::finish_bytes`] batch (its bytes, its crop places),
    /// kept to be overwritten by the next.
    staged: RefCell<Option<(CudaSlice<u8>, CudaSlice<i32>)>>,
    /// Page-locked host buffers for [`Engine::download_async`], reused.
    pinned: Rc<RefCell<Vec<PinnedCopy>>>,
    /// Bumped when the workspace or a table is replaced (see [`Engine::graph_epoch`]).
    epoch: Cell<u64>,
    recording: Cell<bool>,
    allocations: Cell<u64>,
    kernels: Kernels,
    dnn: conv::Handle,
    blas: CudaBlas,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    ordinal: usize,
    /// Strict fp32 (Caffe's math) or TF32, as last chosen; see [`Engine::set_tf32`].
    strict_fp32: Cell<bool>,
    /// TF32 asked for by the command line or CREMA_TF32: a net's STRICT_FP32 does not undo it.
    forced_tf32: bool,
    deterministic: bool,
    /// Blocks of 256 threads the GPU holds at once (multiprocessors × 8).
    resident_blocks: u32,
    /// Time cuDNN's graph-API plans against the legacy algorithms (`CREMA_CUDNN_GRAPH=0`: no).
    graph_api: bool,
    seed: Cell<u64>,
    /// How many random numbers the dropout kernels have drawn since seeding: a device counter,
    /// read and advanced by kernels, so that replaying a recorded step keeps drawing anew.
    draws: RefCell<CudaSlice<u64>>,
}

/// How a [`CudaEngine`] computes.
#[derive(Debug, Clone, Copy, Default)]
pub struct GpuOptions {
    /// Let convolutions and gemms use TF32 tensor cores (else strict fp32, Caffe's math).
    pub tf32: bool,
    /// Bit-for-bit repeatable runs: only deterministic cuDNN algorithms, chosen by cuDNN's
    /// heuristics instead of by timing (which varies from run to run). Often slower.
    pub deterministic: bool,
}

/// What `crema device-query` prints about one GPU.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub total_mem: usize,
    pub free_mem: usize,
    pub compute_capability: (i32, i32),
    pub multiprocessors: i32,
}

/// Library versions, as (major, minor, patch).
#[derive(Debug, Clone)]
pub struct Versions {
    pub driver: (i32, i32),
    pub cudnn: (usize, usize, usize),
    pub cublas: (i32, i32, i32),
    pub nvrtc: (i32, i32),
}

/// Number of CUDA devices, after checking that the libraries load.
pub fn device_count() -> Result<usize, String> {
    ensure_libraries()?;
    CudaContext::device_count()
        .map(|n| n.max(0) as usize)
        .map_err(|e| format!("the CUDA driver reports no usable GPU: {e}"))
}

/// Describes every GPU and the library versions (for `crema device-query`).
pub fn query() -> Result<(Versions, Vec<DeviceInfo>), String> {
    let n = device_count()?;
    let mut infos = Vec::new();
    for i in 0..n {
        let ctx = CudaContext::new(i).map_err(|e| format!("opening GPU {i}: {e}"))?;
        let (free_mem, total_mem) = ctx.mem_get_info().map_err(|e| e.to_string())?;
        let sm = cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
        infos.push(DeviceInfo {
            ordinal: i,
            name: ctx.name().map_err(|e| e.to_string())?,
            total_mem,
            free_mem,
            compute_capability: ctx.compute_capability().map_err(|e| e.to_string())?,
            multiprocessors: ctx.attribute(sm).unwrap_or(0),
        });
    }
    let mut drv = 0;
    // SAFETY: the driver library is loaded (ensure_libraries) and `drv` is a valid out-pointer.
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut drv) };
    let cudnn = cudarc::cudnn::result::get_version();
    let (mut nv_major, mut nv_minor) = (0, 0);
    // SAFETY: NVRTC is loaded; out-pointers are valid.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut nv_major, &mut nv_minor) };
    let cublas = if n > 0 {
        let ctx = CudaContext::new(0).map_err(|e| e.to_string())?;
        let blas = CudaBlas::new(ctx.default_stream()).map_err(|e| format!("cublasCreate: {e}"))?;
        let mut v = 0;
        // SAFETY: `blas` holds a live handle; `v` is a valid out-pointer.
        unsafe { blas_sys::cublasGetVersion_v2(*blas.handle(), &mut v) };
        (v / 10000, (v % 10000) / 100, v % 100)
    } else {
        (0, 0, 0)
    };
    let versions = Versions {
        driver: (drv / 1000, (drv % 1000) / 10),
        cudnn: (cudnn / 10000, (cudnn % 10000) / 100, cudnn % 100),
        cublas,
        nvrtc: (nv_major, nv_minor),
    };
    Ok((versions, infos))
}

/// Buffers come from the device's stream-ordered pool (cuMemAllocAsync). By default the pool hands
/// freed memory back to the driver at every synchronisation, so the scratch buffers of the next
/// iteration are mapped afresh each time; keeping it makes those allocations nearly free. Best
/// effort: without the attribute allocations only cost more.
fn keep_freed_memory(ctx: &CudaContext) {
    use cudarc::driver::sys;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    let mut keep: u64 = u64::MAX;
    // SAFETY: the context's device is valid; `pool` and `keep` are valid for the calls.
    unsafe {
        if sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) == sys::CUresult::CUDA_SUCCESS
        {
            let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
            let r = sys::cuMemPoolSetAttribute(pool, attr, &mut keep as *mut u64 as *mut _);
            if r != sys::CUresult::CUDA_SUCCESS {
                tracing::debug!("cannot keep freed device memory in the pool: {r:?}");
            }
        }
    }
}

/// Strict fp32 gemms, or TF32 tensor-core gemms.
fn set_blas_math(blas: &CudaBlas, strict: bool) -> Result<(), String> {
    let mode = if strict {
        blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH
    } else {
        blas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
    };
    // SAFETY: `blas` holds a live handle.
    unsafe { blas_sys::cublasSetMathMode(*blas.handle(), mode) }
        .result()
        .map_err(|e| format!("cublasSetMathMode: {e}"))
}

/// The (kind, p0, p1, p2) an activation passes to kernels/activation.cu.
fn act_code(f: Activation) -> (i32, f32, f32, f32) {
    match f {
        Activation::Relu { negative_slope } => (0, negative_slope, 0.0, 0.0),
        Activation::Sigmoid => (1, 0.0, 0.0, 0.0),
        Activation::TanH => (2, 0.0, 0.0, 0.0),
        Activation::Elu { alpha } => (3, alpha, 0.0, 0.0),
        Activation::AbsVal => (4, 0.0, 0.0, 0.0),
        Activation::Bnll => (5, 0.0, 0.0, 0.0),
        Activation::Power {
            power,
            scale,
            shift,
        } => (6, power, scale, shift),
        Activation::Exp { base, scale, shift } => (7, base, scale, shift),
        Activation::Log { base, scale, shift } => (8, base, scale, shift),
        Activation::Clip { min, max } => (9, min, max, 0.0),
        Activation::Swish { beta } => (10, beta, 0.0, 0.0),
        Activation::Threshold { threshold } => (11, threshold, 0.0, 0.0),
    }
}

fn dev(b: &Buffer) -> &CudaSlice<f32> {
    match b {
        Buffer::Device(s) => s,
        Buffer::Host(_) => panic!("the CUDA engine was handed a host buffer (engines were mixed)"),
    }
}

fn u(v: usize) -> Arg {
    Arg::U64(v as u64)
}
fn i(v: usize) -> Arg {
    Arg::I32(v as i32)
}
fn f(v: f32) -> Arg {
    Arg::F32(v)
}

/// Wall time of consecutive phases, for a one-line log.
struct Lap {
    last: std::time::Instant,
    phases: Vec<(&'static str, f64)>,
}

impl Lap {
    fn new() -> Self {
        Lap {
            last: std::time::Instant::now(),
            phases: Vec::new(),
        }
    }

    /// Ends the phase `name` now.
    fn mark(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        let ms = (now - self.last).as_secs_f64() * 1e3;
        self.phases.push((name, ms));
        self.last = now;
    }

    fn report(&self) -> String {
        let total: f64 = self.phases.iter().map(|p| p.1).sum();
        let parts: Vec<String> = self
            .phases
            .iter()
            .map(|(n, ms)| format!("{n} {ms:.0}"))
            .collect();
        format!("{total:.0} ms ({})", parts.join(", "))
    }
}

impl CudaEngine {
    /// Opens GPU `ordinal`: checks the libraries, creates the context, cuBLAS and cuDNN handles on
    /// one stream, and loads the kernels (compiling them on the process's first engine).
    pub fn new(ordinal: usize) -> Result<Self, String> {
        Self::with_tf32(ordinal, false)
    }

    /// As [`CudaEngine::new`], with TF32 tensor-core math when `tf32` (or `CREMA_TF32=1`) asks for
    /// it; otherwise convolutions and gemms stay in strict fp32.
    pub fn with_tf32(ordinal: usize, tf32: bool) -> Result<Self, String> {
        Self::with_options(
            ordinal,
            GpuOptions {
                tf32,
                deterministic: false,
            },
        )
    }

    /// As [`CudaEngine::new`], with the math `options` choose (each also switched on by its
    /// environment variable, `CREMA_TF32=1` and `CREMA_DETERMINISTIC=1`).
    pub fn with_options(ordinal: usize, options: GpuOptions) -> Result<Self, String> {
        let tf32 = options.tf32;
        let env_on = |k: &str| std::env::var(k).is_ok_and(|v| v == "1");
        let deterministic = options.deterministic || env_on("CREMA_DETERMINISTIC");
        // Start-up phases, logged at debug level: on a fresh machine they can cost seconds.
        let mut lap = Lap::new();
        let n = device_count()?;
        lap.mark("libraries");
        if ordinal >= n {
            return Err(format!(
                "GPU {ordinal} does not exist: this machine has {n} CUDA device(s)"
            ));
        }
        kernels::prepare(ordinal);
        let ctx = CudaContext::new(ordinal).map_err(|e| format!("opening GPU {ordinal}: {e}"))?;
        lap.mark("context");
        // SAFETY: the engine uses a single stream, so cudarc's cross-stream event tracking is
        // unnecessary; every buffer is created after this call.
        unsafe { ctx.disable_event_tracking() };
        // A stream of its own rather than the legacy default stream, which cannot be recorded
        // into a CUDA graph.
        let stream = ctx
            .new_stream()
            .map_err(|e| format!("GPU {ordinal}: creating a stream: {e}"))?;
        keep_freed_memory(&ctx);
        let forced_tf32 = tf32 || env_on("CREMA_TF32");
        let blas = CudaBlas::new(stream.clone()).map_err(|e| format!("cublasCreate: {e}"))?;
        set_blas_math(&blas, !forced_tf32)?;
        lap.mark("cuBLAS");
        let dnn = conv::Handle::new(stream.cu_stream() as _)?;
        lap.mark("cuDNN");
        let kernels = Kernels::load(&ctx)?;
        lap.mark("kernels");
        tracing::debug!("GPU {ordinal} opened: {}", lap.report());
        let sm = cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT;
        let resident_blocks = (ctx.attribute(sm).unwrap_or(0).max(1) as u32) * 8;
        let draws = stream
            .alloc_zeros::<u64>(1)
            .map_err(|e| format!("CUDA: allocating the random draw counter: {e}"))?;
        Ok(CudaEngine {
            plans: RefCell::new(HashMap::new()),
            workspace: RefCell::new(None),
            tables: RefCell::new(HashMap::new()),
            staged: RefCell::new(None),
            pinned: Rc::new(RefCell::new(Vec::new())),
            epoch: Cell::new(0),
            recording: Cell::new(false),
            allocations: Cell::new(0),
            kernels,
            dnn,
            blas,
            stream,
            ctx,
            ordinal,
            strict_fp32: Cell::new(!forced_tf32),
            forced_tf32,
            deterministic,
            resident_blocks,
            graph_api: std::env::var("CREMA_CUDNN_GRAPH").map_or(true, |v| v != "0"),
            seed: Cell::new(0x5eed),
            draws: RefCell::new(draws),
        })
    }

    /// The stream every operation of this engine runs on, in order.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// The GPU's index.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Launches a kernel over the concatenation of several tensors described by `table` (see
    /// kernels/elementwise.cu). The table is uploaded once and kept: the solver passes the same
    /// parameters every iteration, so later calls find it cached.
    fn launch_many<const K: usize>(
        &self,
        name: &'static str,
        total: usize,
        table: Vec<[u64; 5]>,
        args: impl FnOnce(u64) -> [Arg; K],
    ) {
        if total == 0 || table.is_empty() {
            return;
        }
        let flat: Vec<u64> = table.into_iter().flatten().collect();
        let mut tables = self.tables.borrow_mut();
        if !tables.contains_key(&flat) {
            if tables.len() >= 64 {
                tables.clear(); // a net rebuilt many times: keep the cache small
                self.epoch.set(self.epoch.get() + 1);
            }
            let dev = self
                .stream
                .clone_htod(&flat)
                .unwrap_or_else(|e| panic!("CUDA {name}: uploading its table: {e}"));
            tables.insert(flat.clone(), dev);
        }
        let (ptr, _s) = tables[&flat].device_ptr(&self.stream);
        self.launch(name, total, &args(ptr));
    }

    /// Device address of a buffer's first element.
    fn p(&self, b: &Buffer) -> u64 {
        let (ptr, _sync) = dev(b).device_ptr(&self.stream);
        ptr
    }

    fn launch(&self, name: &'static str, n: usize, args: &[Arg]) {
        if n > 0 {
            self.kernels.launch(&self.stream, name, grid_for(n), args);
        }
    }

    /// As [`CudaEngine::launch`], with no more blocks than the GPU holds at once, each thread
    /// looping over many elements: for kernels whose blocks first set up shared state (pool.cu's
    /// divisors), which one block per 256 elements would repeat hundreds of thousands of times.
    fn launch_resident(&self, name: &'static str, n: usize, args: &[Arg]) {
        if n > 0 {
            let grid = grid_for(n).min(self.resident_blocks);
            self.kernels.launch(&self.stream, name, grid, args);
        }
    }

    fn bind(&self) {
        if let Err(e) = self.ctx.bind_to_thread() {
            panic!(
                "CUDA: cannot make GPU {} current on this thread: {e}",
                self.ordinal
            );
        }
    }

    /// Σ over x (and y) in double, as the CPU engine sums: mode 0 dot, 1 asum, 2 sumsq.
    fn reduce(&self, mode: i32, x: &Buffer, y: &Buffer, n: usize) -> f32 {
        if n == 0 {
            return 0.0;
        }
        let blocks = grid_for(n).min(1024) as usize;
        // reduce_f64 writes one partial per block.
        let partials: CudaSlice<f64> = self.uninit(blocks, "partial sums");
        let (pp, _s) = partials.device_ptr(&self.stream);
        let args = [
            u(n),
            Arg::I32(mode),
            Arg::U64(self.p(x)),
            Arg::U64(self.p(y)),
            Arg::U64(pp),
        ];
        self.kernels
            .launch(&self.stream, "reduce_f64", blocks as u32, &args);
        let host = self
            .stream
            .clone_dtoh(&partials)
            .unwrap_or_else(|e| panic!("CUDA reduction: copying partial sums: {e}"));
        host.iter().sum::<f64>() as f32
    }

    /// The cached plan of a convolution geometry, choosing algorithms on first use.
    fn plan(&self, g: &ConvGeom) -> Rc<ConvPlan> {
        let key = (*g, self.strict_fp32.get());
        if let Some(p) = self.plans.borrow().get(&key) {
            return p.clone();
        }
        self.bind();
        // Budget: half of what is free now, at most 4 GiB, shared by all directions.
        let free = self.ctx.mem_get_info().map(|(f, _)| f).unwrap_or(0);
        let limit = (free / 2).min(4 << 30);
        let policy = conv::Policy {
            strict: self.strict_fp32.get(),
            deterministic: self.deterministic,
            limit,
        };
        let mut plan = ConvPlan::new(&self.dnn, g, policy)
            .unwrap_or_else(|e| panic!("cuDNN: planning convolution {g:?}: {e}"));
        tracing::debug!("cuDNN algorithms for {g:?}: {}", plan.describe());
        // A deterministic run keeps cuDNN's fixed heuristic choice (timings vary run to run).
        if !self.deterministic && self.graph_api {
            plan.faster = self.tune(g, &plan, policy);
        }
        let plan = Rc::new(plan);
        self.plans.borrow_mut().insert(key, plan.clone());
        plan
    }

    /// Runs a direction's graph-API plan, if it has one, on (x, w, y) (gradients standing in for
    /// their tensors); false when the legacy path must run instead.
    fn run_faster(
        &self,
        g: &ConvGeom,
        e: &Option<graph_conv::Exec>,
        ptrs: (u64, u64, u64),
    ) -> bool {
        let Some(e) = e else { return false };
        let ws = self.workspace(e.workspace);
        self.bind();
        match e.run(&self.dnn, ptrs, ws) {
            Ok(()) => true,
            Err(err) => {
                tracing::debug!("cuDNN graph plan for {g:?}: {err}; running the legacy algorithm");
                false
            }
        }
    }

    /// Times each direction's legacy choice against the graph API's best-ranked plans on
    /// scratch buffers of `g`'s shapes (one warm-up run, then the mean of three between CUDA
    /// events) and keeps a graph plan where it ran faster. Anything that fails (memory for the
    /// scratch buffers, a plan refusing to run) leaves that direction to the legacy choice.
    fn tune(&self, g: &ConvGeom, plan: &ConvPlan, policy: conv::Policy) -> conv::Faster {
        use graph_conv::{candidates, Dir};
        let mut faster = conv::Faster::default();
        let sizes = [
            g.num * g.in_channels * g.in_h * g.in_w,
            g.out_channels * (g.in_channels / g.group) * g.kernel_h * g.kernel_w,
            g.num * g.out_channels * g.out_h() * g.out_w(),
            g.out_channels,
        ];
        let bufs: Option<Vec<CudaSlice<f32>>> = sizes
            .iter()
            .map(|&n| self.stream.alloc_zeros::<f32>(n.max(1)).ok())
            .collect();
        let Some(bufs) = bufs else { return faster };
        let mut lists = [Dir::Forward, Dir::BackwardData, Dir::BackwardFilter].map(|d| {
            candidates(&self.dnn, g, d, policy, 8).unwrap_or_else(|e| {
                tracing::debug!("cuDNN graph API, {d:?} of {g:?}: {e}");
                Vec::new()
            })
        });
        let need = lists
            .iter()
            .flatten()
            .map(|e| e.workspace)
            .chain([
                plan.fwd.workspace,
                plan.bwd_data.workspace,
                plan.bwd_filter.workspace,
            ])
            .max()
            .unwrap_or(0);
        // SAFETY: workspace memory, which cuDNN does not expect initialised.
        let Ok(scratch) = (unsafe { self.stream.alloc::<u8>(need.max(1)) }) else {
            return faster;
        };
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let (Ok(start), Ok(end)) = (self.ctx.new_event(flags), self.ctx.new_event(flags)) else {
            return faster;
        };
        let guards: Vec<_> = bufs.iter().map(|b| b.device_ptr(&self.stream)).collect();
        let [x, w, y, b] = [0, 1, 2, 3].map(|i| guards[i].0);
        let (ws_ptr, _ws_guard) = scratch.device_ptr(&self.stream);
        let ws = (ws_ptr, need);
        self.bind();
        let time = |f: &dyn Fn() -> Result<(), String>| -> Option<f32> {
            f().ok()?;
            start.record(&self.stream).ok()?;
            for _ in 0..3 {
                f().ok()?;
            }
            end.record(&self.stream).ok()?;
            start.elapsed_ms(&end).ok().map(|t| t / 3.0)
        };
        let h = &self.dnn;
        let legacy = [
            time(&|| plan.forward(h, x, w, y, ws)),
            time(&|| plan.backward_data(h, y, w, x, ws)),
            time(&|| plan.backward_filter(h, x, y, w, ws)),
        ];
        let mut report = Vec::new();
        let mut best_fwd = None;
        for (i, list) in lists.iter_mut().enumerate() {
            let timed = list
                .drain(..)
                .filter_map(|e| time(&|| e.run(h, (x, w, y), ws)).map(|t| (t, e)))
                .min_by(|a, b| a.0.total_cmp(&b.0));
            let base = legacy[i].unwrap_or(f32::INFINITY);
            report.push(match &timed {
                Some((t, e)) => format!("engine {} {t:.3} ms vs legacy {base:.3} ms", e.engine),
                None => format!("no graph plan, legacy {base:.3} ms"),
            });
            // A 2% margin keeps timing noise from swapping equals.
            if let Some((t, e)) = timed.filter(|(t, _)| *t < 0.98 * base) {
                match i {
                    0 => {
                        best_fwd = Some(t);
                        faster.fwd = Some(e);
                    }
                    1 => faster.bwd_data = Some(e),
                    _ => faster.bwd_filter = Some(e),
                }
            }
        }
        // With bias and ReLU: the plain forward chosen above plus one bias+ReLU pass, against
        // cuDNN's fused legacy call (which is often the slower).
        let plain = best_fwd.or(legacy[0]).unwrap_or(f32::INFINITY);
        let (outer, ch, inner) = (g.num, g.out_channels, g.out_h() * g.out_w());
        let pass = time(&|| {
            self.bias_act_pass(outer, ch, inner, b, true, y);
            Ok(())
        });
        let fused = time(&|| plan.forward_bias_relu(h, x, w, b, y, ws));
        faster.separate_bias_relu =
            plain + pass.unwrap_or(f32::INFINITY) < fused.unwrap_or(f32::INFINITY);
        report.push(format!(
            "bias+ReLU pass {:.3} ms, legacy fused {:.3} ms",
            pass.unwrap_or(f32::NAN),
            fused.unwrap_or(f32::NAN)
        ));
        tracing::debug!(
            "cuDNN graph API for {g:?}: fwd {}; bwd-data {}; bwd-filter {}",
            report[0],
            report[1],
            report[2..].join("; ")
        );
        faster
    }

    /// y += b per channel, then max(y, 0) when `relu` (NaN kept): one pass over y.
    fn bias_act_pass(&self, outer: usize, ch: usize, inner: usize, b: u64, relu: bool, y: u64) {
        let args = [
            u(outer),
            u(ch),
            u(inner),
            Arg::U64(b),
            Arg::I32(relu as i32),
            Arg::U64(y),
        ];
        self.launch("bias_fwd_f32", outer * ch * inner, &args);
    }

    /// A workspace of at least `bytes`, grown on demand and kept: (address, size).
    fn workspace(&self, bytes: usize) -> (u64, usize) {
        if bytes == 0 {
            return (0, 0);
        }
        let mut ws = self.workspace.borrow_mut();
        if ws.as_ref().is_none_or(|w| w.len() < bytes) {
            if ws.is_some() {
                self.epoch.set(self.epoch.get() + 1);
            }
            *ws = None;
            let w = self
                .stream
                .alloc_zeros::<u8>(bytes)
                .unwrap_or_else(|e| self.oom("cuDNN workspace", bytes, e));
            *ws = Some(w);
        }
        let w = ws.as_ref().expect("workspace was just allocated");
        let (ptr, _s) = w.device_ptr(&self.stream);
        (ptr, w.len())
    }

    /// The arguments every softmax-loss kernel starts with.
    fn loss_args(
        &self,
        (outer, ch, inner): (usize, usize, usize),
        prob: &Buffer,
        labels: &Buffer,
        ignore_label: Option<i32>,
    ) -> Vec<Arg> {
        vec![
            u(outer),
            u(ch),
            u(inner),
            Arg::U64(self.p(prob)),
            Arg::U64(self.p(labels)),
            Arg::I32(ignore_label.is_some() as i32),
            Arg::I32(ignore_label.unwrap_or(0)),
        ]
    }

    /// The softmax loss's gradient with its scale given (`scale`, 0, 0) or read on the device as
    /// dtop[0] / stats[0] (_, dtop, stats).
    fn loss_backward(
        &self,
        dims: (usize, usize, usize),
        prob: &Buffer,
        labels: &Buffer,
        ignore_label: Option<i32>,
        (scale, dtop, stats): (f32, u64, u64),
        dx: &mut Buffer,
    ) {
        let mut args = self.loss_args(dims, prob, labels, ignore_label);
        args.extend([
            f(scale),
            Arg::U64(dtop),
            Arg::U64(stats),
            Arg::U64(self.p(dx)),
        ]);
        self.launch("softmax_loss_bwd_f32", dims.0 * dims.1 * dims.2, &args);
    }

    fn oom(&self, what: &str, bytes: usize, e: impl std::fmt::Display) -> ! {
        let (free, total) = self.ctx.mem_get_info().unwrap_or((0, 0));
        panic!(
            "GPU {} out of memory allocating {what}: asked for {:.1} MiB, {:.1} MiB free of {:.1} MiB ({e}); \
             use a smaller batch_size and raise iter_size to keep the effective batch",
            self.ordinal,
            bytes as f64 / 1048576.0,
            free as f64 / 1048576.0,
            total as f64 / 1048576.0
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn blocks(
        &self,
        n_blocks: usize,
        block: usize,
        src: &Buffer,
        src_off: usize,
        src_stride: usize,
        dst: &Buffer,
        dst_off: usize,
        dst_stride: usize,
        acc: bool,
    ) {
        let n = n_blocks * block;
        if n == 0 {
            return;
        }
        let contiguous = n_blocks == 1 || (src_stride == block && dst_stride == block);
        if !acc && contiguous {
            self.bind();
            let (s, d) = (
                self.p(src) + 4 * src_off as u64,
                self.p(dst) + 4 * dst_off as u64,
            );
            // SAFETY: both ranges lie inside live device buffers (the layer computed the offsets
            // from the blobs' shapes, as for the CPU engine, which bounds-checks them).
            unsafe {
                cudarc::driver::result::memcpy_dtod_async(d, s, 4 * n, self.stream.cu_stream())
            }
            .unwrap_or_else(|e| panic!("CUDA copy of {n} floats: {e}"));
            return;
        }
        let args = [
            u(n_blocks),
            u(block),
            Arg::U64(self.p(src)),
            u(src_off),
            u(src_stride),
            Arg::U64(self.p(dst)),
            u(dst_off),
            u(dst_stride),
            Arg::I32(acc as i32),
        ];
        self.launch("copy_blocks_f32", n, &args);
    }

    fn pool_args(g: &PoolGeom, method: PoolMethod) -> [Arg; 12] {
        [
            u(g.num * g.channels),
            i(g.in_h),
            i(g.in_w),
            i(g.out_h),
            i(g.out_w),
            i(g.kernel_h),
            i(g.kernel_w),
            i(g.stride_h),
            i(g.stride_w),
            i(g.pad_h),
            i(g.pad_w),
            Arg::I32((method == PoolMethod::Ave) as i32),
        ]
    }

    /// Device memory for a kernel to fill, not cleared first (a memset per scratch buffer is
    /// a launch per use, and inside a replayed step a graph node): every element must be
    /// written before it is read. Freed in stream order when dropped.
    fn uninit<T: cudarc::driver::DeviceRepr>(&self, n: usize, what: &str) -> CudaSlice<T> {
        // SAFETY: the callers' kernels write every element before any is read (each says so).
        unsafe { self.stream.alloc::<T>(n.max(1)) }
            .unwrap_or_else(|e| self.oom(what, n * std::mem::size_of::<T>(), e))
    }

    /// A float scratch buffer of [`CudaEngine::uninit`] memory.
    fn scratch(&self, n: usize) -> Buffer {
        Buffer::Device(self.uninit(n, "scratch space"))
    }

    /// Whether a tensor of `n` elements fits the 32-bit index arithmetic of kernels/channel.cu.
    fn small(n: usize) -> bool {
        n < (1 << 31)
    }

    /// Per-channel sums over outer×ch×inner (kernels/channel.cu): `mode` 0 Σa, 1 Σa and Σa², 2 Σa
    /// and Σa·b; then chan_finish's `op` writes the channels' results at device addresses o1 (and
    /// o2), and op 4 its gradients at `grads`. Several blocks per channel, so even a few
    /// channels of many elements fill the GPU.
    #[allow(clippy::too_many_arguments)]
    fn channel_reduce(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        mode: i32,
        a: &Buffer,
        b: Option<&Buffer>,
        op: i32,
        o1: u64,
        o2: u64,
        grads: (u64, u64),
    ) {
        let none = ChanGate::NONE;
        self.channel_reduce_gated(outer, ch, inner, mode, a, b, op, o1, o2, grads, none);
    }

    /// [`CudaEngine::channel_reduce`] with a ReLU's backward pass applied to `a` first where
    /// `gate` says so.
    #[allow(clippy::too_many_arguments)]
    fn channel_reduce_gated(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        mode: i32,
        a: &Buffer,
        b: Option<&Buffer>,
        op: i32,
        o1: u64,
        o2: u64,
        grads: (u64, u64),
        gate: ChanGate,
    ) {
        let m = outer * inner;
        if m == 0 || ch == 0 {
            return;
        }
        let (pa, pb) = (self.p(a), self.p(b.unwrap_or(a)));
        let pair = ["chan_partial_f64", "chan_partial4_f64"];
        // A vector of chan_partial stays within one channel's run.
        let (name, w) = variant(pair, inner.is_multiple_of(4), &[pa, pb, gate.z, gate.out]);
        // About four blocks per multiprocessor in all, at least 1,024 elements per block (with
        // float4 loads, 1,056 and 2,112 blocks in all timed the same on ResNet-50).
        let splits = (528usize.div_ceil(ch)).min(m.div_ceil(1024)).max(1);
        let blocks = ch * splits;
        // chan_partial writes both partials of every block.
        let part: CudaSlice<f64> = self.uninit(2 * blocks, "per-channel partial sums");
        let (pp, _s) = part.device_ptr(&self.stream);
        let args = [
            i(outer),
            i(ch),
            i(inner / w),
            i(splits),
            Arg::I32(mode),
            Arg::U64(pa),
            Arg::U64(pb),
            Arg::U64(pp),
            Arg::U64(gate.z),
            Arg::U64(gate.g),
            Arg::U64(gate.b),
            f(gate.slope),
            Arg::U64(gate.out),
        ];
        self.kernels
            .launch(&self.stream, name, blocks as u32, &args);
        let args = [
            u(ch),
            u(splits),
            Arg::I32(op),
            Arg::F64(1.0 / m as f64),
            Arg::U64(pp),
            Arg::U64(o1),
            Arg::U64(o2),
            Arg::U64(grads.0),
            Arg::U64(grads.1),
        ];
        self.launch("chan_finish_f64", ch, &args);
    }
}

/// Of a kernel of kernels/channel.cu with a scalar and a float4 variant (`[scalar, vector]`), the
/// one to launch and the floats each of its threads takes at a time: the float4 one where the
/// tensor splits into the vectors that kernel needs (`fits`) and every address given is 16-byte
/// aligned (0 stands for an absent pointer).
fn variant(pair: [&'static str; 2], fits: bool, ptrs: &[u64]) -> (&'static str, usize) {
    if fits && ptrs.iter().all(|p| p % 16 == 0) {
        (pair[1], 4)
    } else {
        (pair[0], 1)
    }
}

/// Whether BatchNorm's elementwise kernels can take n floats four at a time: a vector then spans
/// at most two channels (inner ≥ 4), which they handle.
fn bn_fits(n: usize, inner: usize) -> bool {
    n.is_multiple_of(4) && inner >= 4
}

/// BatchNorm's kernels, scalar and float4 (see [`variant`]).
const BN_NORM: [&str; 2] = ["bn_norm_f32", "bn_norm4_f32"];
const BN_BWD: [&str; 2] = ["bn_bwd_f32", "bn_bwd4_f32"];

/// A ReLU's backward pass folded into a per-channel reduction (see `chan_partial`): device
/// addresses of the ReLU's input z (or of x with z = x·g[c] + b[c] when `g` is set) and of where the
/// gated values go; all zero for none.
#[derive(Clone, Copy)]
struct ChanGate {
    z: u64,
    g: u64,
    b: u64,
    slope: f32,
    out: u64,
}

impl ChanGate {
    const NONE: ChanGate = ChanGate {
        z: 0,
        g: 0,
        b: 0,
        slope: 0.0,
        out: 0,
    };
}

impl Engine for CudaEngine {
    fn name(&self) -> String {
        format!("CUDA:{}", self.ordinal)
    }

    fn alloc(&self, n: usize) -> Buffer {
        self.allocations.set(self.allocations.get() + 1);
        let r = if n == 0 {
            self.stream.null()
        } else {
            self.stream.alloc_zeros::<f32>(n)
        };
        Buffer::Device(r.unwrap_or_else(|e| self.oom("a blob", n * 4, e)))
    }

    fn download(&self, buf: &Buffer) -> Vec<f32> {
        let s = dev(buf);
        if s.is_empty() {
            return Vec::new();
        }
        self.stream
            .clone_dtoh(s)
            .unwrap_or_else(|e| panic!("CUDA download of {} floats: {e}", s.len()))
    }

    fn download_async(&self, buf: &Buffer) -> Pending {
        let s = dev(buf);
        let n = s.len();
        if n == 0 {
            return Pending::Ready(Vec::new());
        }
        let reused = {
            let mut pool = self.pinned.borrow_mut();
            // Same length: the copy fills the whole host buffer.
            pool.iter()
                .position(|(p, _)| p.len() == n)
                .map(|i| pool.swap_remove(i))
        };
        let (mut host, done) = match reused {
            Some(h) => h,
            None => {
                // SAFETY: the memory is written by the copy below before it is read.
                let host =
                    unsafe { self.ctx.alloc_pinned_with_flags::<f32>(n, 0) }.unwrap_or_else(|e| {
                        panic!("CUDA: page-locking {n} floats of host memory: {e}")
                    });
                let done = self
                    .ctx
                    .new_event(None)
                    .unwrap_or_else(|e| panic!("CUDA: creating an event: {e}"));
                (host, done)
            }
        };
        self.stream
            .memcpy_dtoh(s, &mut host)
            .unwrap_or_else(|e| panic!("CUDA download of {n} floats: {e}"));
        // Our own event: cudarc records the buffer's only while it tracks events, which the
        // engine turns off.
        done.record(&self.stream)
            .unwrap_or_else(|e| panic!("CUDA download of {n} floats: {e}"));
        let pool = self.pinned.clone();
        Pending::Later(Box::new(move || {
            done.synchronize()
                .unwrap_or_else(|e| panic!("CUDA download of {n} floats: {e}"));
            let v = host
                .as_slice()
                .unwrap_or_else(|e| panic!("CUDA download of {n} floats: {e}"))
                .to_vec();
            let mut pool = pool.borrow_mut();
            if pool.len() < 32 {
                pool.push((host, done));
            }
            v
        }))
    }

    fn upload(&self, src: &[f32], dst: &mut Buffer) {
        if src.is_empty() {
            return;
        }
        let Buffer::Device(d) = dst else {
            panic!("the CUDA engine was handed a host buffer")
        };
        assert!(
            src.len() <= d.len(),
            "upload of {} values into a buffer of {}",
            src.len(),
            d.len()
        );
        let mut view = d.slice_mut(..src.len());
        self.stream
            .memcpy_htod(src, &mut view)
            .unwrap_or_else(|e| panic!("CUDA upload of {} floats: {e}", src.len()));
    }

    fn finish_bytes(
        &self,
        batch: &ByteBatch<'_>,
        mean_image: Option<&Buffer>,
        channel_means: Option<&Buffer>,
        dst: &mut Buffer,
    ) {
        let n = batch.bytes.len();
        if n == 0 {
            return;
        }
        let places: Vec<i32> = batch.places.iter().flatten().copied().collect();
        let mut staged = self.staged.borrow_mut();
        let fits = matches!(&*staged, Some((b, p)) if b.len() >= n && p.len() >= places.len());
        if !fits {
            let fresh = self
                .stream
                .alloc_zeros::<u8>(n)
                .and_then(|b| Ok((b, self.stream.alloc_zeros::<i32>(places.len().max(1))?)))
                .unwrap_or_else(|e| self.oom("a batch of bytes", n, e));
            *staged = Some(fresh);
        }
        let Some((bytes, place)) = staged.as_mut() else {
            unreachable!("staged just above")
        };
        // From pageable memory the copy returns once the driver has staged the bytes, so the
        // prefetcher may reuse its buffer straight away.
        self.stream
            .memcpy_htod(batch.bytes, &mut bytes.slice_mut(..n))
            .and_then(|_| {
                self.stream
                    .memcpy_htod(&places, &mut place.slice_mut(..places.len()))
            })
            .unwrap_or_else(|e| panic!("CUDA upload of a batch of {n} bytes: {e}"));
        let [_, c, h, w] = batch.shape;
        let (bp, _s1) = bytes.device_ptr(&self.stream);
        let (pp, _s2) = place.device_ptr(&self.stream);
        let opt = |b: Option<&Buffer>| Arg::U64(b.map_or(0, |b| self.p(b)));
        self.launch(
            "finish_bytes_f32",
            n,
            &[
                u(n),
                Arg::I32(c as i32),
                Arg::I32(h as i32),
                Arg::I32(w as i32),
                Arg::I32(batch.source.0 as i32),
                Arg::I32(batch.source.1 as i32),
                Arg::U64(bp),
                Arg::U64(pp),
                opt(mean_image),
                opt(channel_means),
                f(batch.scale),
                Arg::U64(self.p(dst)),
            ],
        );
    }

    fn sum_terms(&self, terms: &[(f32, &Buffer)], act: Option<Activation>, y: &mut Buffer) {
        let relu = match act {
            None => false,
            Some(Activation::Relu {
                negative_slope: 0.0,
            }) => true,
            Some(_) => return composed::sum_terms(self, terms, act, y),
        };
        match terms {
            // One pass for a ResNet shortcut sum and its ReLU.
            [(c0, a), (c1, b)] => {
                let n = y.len();
                let args = [
                    u(n),
                    f(*c0),
                    Arg::U64(self.p(a)),
                    f(*c1),
                    Arg::U64(self.p(b)),
                    Arg::I32(relu as i32),
                    Arg::U64(self.p(y)),
                ];
                self.launch("sum2_f32", n, &args);
            }
            _ => composed::sum_terms(self, terms, act, y),
        }
    }

    fn fill(&self, value: f32, dst: &mut Buffer) {
        let n = dst.len();
        self.launch("fill_f32", n, &[u(n), f(value), Arg::U64(self.p(dst))]);
    }

    fn copy_blocks(
        &self,
        n_blocks: usize,
        block: usize,
        src: &Buffer,
        src_off: usize,
        src_stride: usize,
        dst: &mut Buffer,
        dst_off: usize,
        dst_stride: usize,
    ) {
        self.blocks(
            n_blocks, block, src, src_off, src_stride, dst, dst_off, dst_stride, false,
        );
    }

    fn add_blocks(
        &self,
        n_blocks: usize,
        block: usize,
        src: &Buffer,
        src_off: usize,
        src_stride: usize,
        dst: &mut Buffer,
        dst_off: usize,
        dst_stride: usize,
    ) {
        self.blocks(
            n_blocks, block, src, src_off, src_stride, dst, dst_off, dst_stride, true,
        );
    }

    fn gemm(
        &self,
        trans_a: bool,
        trans_b: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: (&Buffer, usize),
        b: (&Buffer, usize),
        beta: f32,
        c: (&mut Buffer, usize),
    ) {
        if m == 0 || n == 0 {
            return;
        }
        assert!(
            a.0.len() >= a.1 + m * k && b.0.len() >= b.1 + k * n && c.0.len() >= c.1 + m * n,
            "gemm operand too small"
        );
        self.bind();
        // Row-major C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ: swap the operands.
        let op = |t: bool| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let lda = if trans_a { m } else { k };
        let ldb = if trans_b { k } else { n };
        let pa = (self.p(a.0) + 4 * a.1 as u64) as *const f32;
        let pb = (self.p(b.0) + 4 * b.1 as u64) as *const f32;
        let pc = (self.p(c.0) + 4 * c.1 as u64) as *mut f32;
        // SAFETY: the assert above bounds every matrix inside its live device buffer; alpha and
        // beta are host scalars (cuBLAS's default pointer mode).
        let r = unsafe {
            blas_sys::cublasSgemm_v2(
                *self.blas.handle(),
                op(trans_b),
                op(trans_a),
                n as i32,
                m as i32,
                k as i32,
                &alpha,
                pb,
                ldb.max(1) as i32,
                pa,
                lda.max(1) as i32,
                &beta,
                pc,
                n as i32,
            )
        };
        r.result()
            .unwrap_or_else(|e| panic!("cuBLAS sgemm {m}x{n}x{k}: {e}"));
    }

    fn axpby(&self, alpha: f32, x: &Buffer, beta: f32, y: &mut Buffer) {
        let n = x.len().min(y.len());
        self.launch(
            "axpby_f32",
            n,
            &[
                u(n),
                f(alpha),
                Arg::U64(self.p(x)),
                f(beta),
                Arg::U64(self.p(y)),
            ],
        );
    }

    fn scale(&self, alpha: f32, y: &mut Buffer) {
        let n = y.len();
        self.launch("scale_f32", n, &[u(n), f(alpha), Arg::U64(self.p(y))]);
    }

    fn mul(&self, a: Option<&Buffer>, b: &Buffer, y: &mut Buffer) {
        let n = y.len();
        let pa = self.p(a.unwrap_or(y));
        self.launch(
            "mul_f32",
            n,
            &[u(n), Arg::U64(pa), Arg::U64(self.p(b)), Arg::U64(self.p(y))],
        );
    }

    fn div(&self, a: Option<&Buffer>, b: &Buffer, y: &mut Buffer) {
        let n = y.len();
        let pa = self.p(a.unwrap_or(y));
        self.launch(
            "div_f32",
            n,
            &[u(n), Arg::U64(pa), Arg::U64(self.p(b)), Arg::U64(self.p(y))],
        );
    }

    fn add_sign(&self, alpha: f32, x: &Buffer, y: &mut Buffer) {
        let n = x.len().min(y.len());
        self.launch(
            "add_sign_f32",
            n,
            &[u(n), f(alpha), Arg::U64(self.p(x)), Arg::U64(self.p(y))],
        );
    }

    fn dot(&self, x: &Buffer, y: &Buffer) -> f32 {
        self.reduce(0, x, y, x.len().min(y.len()))
    }

    fn asum(&self, x: &Buffer) -> f32 {
        self.reduce(1, x, x, x.len())
    }

    fn sumsq(&self, x: &Buffer) -> f32 {
        self.reduce(2, x, x, x.len())
    }

    fn sum_axis(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        alpha: f32,
        x: &Buffer,
        beta: f32,
        y: &mut Buffer,
    ) {
        let args = [
            u(outer),
            u(ch),
            u(inner),
            f(alpha),
            Arg::U64(self.p(x)),
            f(beta),
            Arg::U64(self.p(y)),
        ];
        self.launch("sum_axis_f32", outer * inner, &args);
    }

    fn conv_forward(&self, g: &ConvGeom, x: &Buffer, w: &Buffer, y: &mut Buffer) {
        if g.num == 0 {
            return;
        }
        let plan = self.plan(g);
        let (px, pw, py) = (self.p(x), self.p(w), self.p(y));
        if self.run_faster(g, &plan.faster.fwd, (px, pw, py)) {
            return;
        }
        let ws = self.workspace(plan.fwd.workspace);
        self.bind();
        plan.forward(&self.dnn, px, pw, py, ws)
            .unwrap_or_else(|e| panic!("cuDNN convolution forward {g:?}: {e}"));
    }

    fn conv_forward_fused(
        &self,
        g: &ConvGeom,
        x: &Buffer,
        w: &Buffer,
        bias: Option<&Buffer>,
        act: Option<Activation>,
        y: &mut Buffer,
    ) {
        let relu =
            matches!(act, Some(Activation::Relu { negative_slope }) if negative_slope == 0.0);
        if let (Some(b), true, false) = (bias, relu, g.num == 0) {
            let plan = self.plan(g);
            if plan.faster.separate_bias_relu {
                self.conv_forward(g, x, w, y);
                let inner = g.out_h() * g.out_w();
                self.bias_act_pass(g.num, g.out_channels, inner, self.p(b), true, self.p(y));
                return;
            }
            if plan.fused_ok.get() {
                let ws = self.workspace(plan.fwd.workspace);
                self.bind();
                match plan.forward_bias_relu(
                    &self.dnn,
                    self.p(x),
                    self.p(w),
                    self.p(b),
                    self.p(y),
                    ws,
                ) {
                    Ok(()) => return,
                    Err(e) => {
                        // Not every algorithm takes the fused call: run the steps separately.
                        tracing::debug!("{g:?}: {e}; bias and ReLU run as passes of their own");
                        plan.fused_ok.set(false);
                    }
                }
            }
        }
        composed::conv_forward_fused(self, g, x, w, bias, act, y)
    }

    fn conv_backward_data(&self, g: &ConvGeom, dy: &Buffer, w: &Buffer, dx: &mut Buffer) {
        if g.num == 0 {
            return;
        }
        let plan = self.plan(g);
        let (pdy, pw, pdx) = (self.p(dy), self.p(w), self.p(dx));
        if self.run_faster(g, &plan.faster.bwd_data, (pdx, pw, pdy)) {
            return;
        }
        let ws = self.workspace(plan.bwd_data.workspace);
        self.bind();
        plan.backward_data(&self.dnn, pdy, pw, pdx, ws)
            .unwrap_or_else(|e| panic!("cuDNN convolution backward-data {g:?}: {e}"));
    }

    fn conv_backward_filter(&self, g: &ConvGeom, x: &Buffer, dy: &Buffer, dw: &mut Buffer) {
        if g.num == 0 {
            return;
        }
        let plan = self.plan(g);
        let (px, pdy, pdw) = (self.p(x), self.p(dy), self.p(dw));
        if self.run_faster(g, &plan.faster.bwd_filter, (px, pdw, pdy)) {
            return;
        }
        let ws = self.workspace(plan.bwd_filter.workspace);
        self.bind();
        plan.backward_filter(&self.dnn, px, pdy, pdw, ws)
            .unwrap_or_else(|e| panic!("cuDNN convolution backward-filter {g:?}: {e}"));
    }

    fn bias_forward(&self, outer: usize, ch: usize, inner: usize, b: &Buffer, y: &mut Buffer) {
        self.bias_act_pass(outer, ch, inner, self.p(b), false, self.p(y));
    }

    fn bias_backward(&self, outer: usize, ch: usize, inner: usize, dy: &Buffer, db: &mut Buffer) {
        if outer * inner == 0 || ch == 0 {
            return;
        }
        if Self::small(outer * ch * inner) {
            let pdb = self.p(db);
            self.channel_reduce(outer, ch, inner, 0, dy, None, 0, pdb, pdb, (0, 0));
            return;
        }
        let args = [
            u(outer),
            u(ch),
            u(inner),
            Arg::U64(self.p(dy)),
            Arg::U64(self.p(db)),
        ];
        // One block per channel.
        self.kernels
            .launch(&self.stream, "bias_bwd_f32", ch as u32, &args);
    }

    fn bn_stats(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        x: &Buffer,
        mean: &mut Buffer,
        var: &mut Buffer,
    ) {
        if !Self::small(outer * ch * inner) {
            return composed::bn_stats(self, outer, ch, inner, x, mean, var);
        }
        let (pm, pv) = (self.p(mean), self.p(var));
        self.channel_reduce(outer, ch, inner, 1, x, None, 1, pm, pv, (0, 0));
    }

    fn bn_normalize(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        x: Option<&Buffer>,
        mean: &Buffer,
        var: &Buffer,
        eps: f32,
        std: &mut Buffer,
        y: &mut Buffer,
        x_norm: &mut Buffer,
    ) {
        let n = outer * ch * inner;
        if !Self::small(n) {
            return composed::bn_normalize(
                self, outer, ch, inner, x, mean, var, eps, std, y, x_norm,
            );
        }
        // The same kernels with nothing folded in (which, for a tensor this size, never falls
        // back to this method).
        self.bn_normalize_affine(
            outer, ch, inner, x, mean, var, eps, std, y, x_norm, None, None,
        );
    }

    fn bn_backward(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        global: bool,
        y: &Buffer,
        dy: Option<&Buffer>,
        std: &Buffer,
        dx: &mut Buffer,
    ) {
        let n = outer * ch * inner;
        if !Self::small(n) {
            return composed::bn_backward(self, outer, ch, inner, global, y, dy, std, dx);
        }
        let pdy = self.p(dy.unwrap_or(dx));
        let means = self.scratch(2 * ch);
        let (pm, pmm) = (self.p(&means), self.p(&means) + 4 * ch as u64);
        if !global {
            let g = dy.unwrap_or(dx);
            self.channel_reduce(outer, ch, inner, 2, g, Some(y), 2, pm, pmm, (0, 0));
        }
        let (py, pdx) = (self.p(y), self.p(dx));
        let (name, w) = variant(BN_BWD, bn_fits(n, inner), &[py, pdy, pdx]);
        let args = [
            i(n / w),
            i(ch),
            i(inner),
            Arg::I32(global as i32),
            Arg::U64(py),
            Arg::U64(pdy),
            Arg::U64(pm),
            Arg::U64(pmm),
            Arg::U64(self.p(std)),
            Arg::U64(pdx),
            Arg::U64(0),
            Arg::U64(0),
            f(0.0),
            Arg::I32(0),
        ];
        self.launch(name, n / w, &args);
    }

    fn bn_normalize_affine(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        x: Option<&Buffer>,
        mean: &Buffer,
        var: &Buffer,
        eps: f32,
        std: &mut Buffer,
        y: &mut Buffer,
        x_norm: &mut Buffer,
        affine: Option<(&Buffer, &Buffer)>,
        act: Option<Activation>,
    ) {
        let n = outer * ch * inner;
        let relu =
            matches!(act, Some(Activation::Relu { negative_slope }) if negative_slope == 0.0);
        if !Self::small(n) || (act.is_some() && !relu) {
            return composed::bn_normalize_affine(
                self, outer, ch, inner, x, mean, var, eps, std, y, x_norm, affine, act,
            );
        }
        self.launch(
            "bn_std_f32",
            ch,
            &[u(ch), Arg::U64(self.p(var)), f(eps), Arg::U64(self.p(std))],
        );
        let (pg, pb) = affine.map_or((0, 0), |(g, b)| (self.p(g), self.p(b)));
        let (px, py, pn) = (self.p(x.unwrap_or(y)), self.p(y), self.p(x_norm));
        let (name, w) = variant(BN_NORM, bn_fits(n, inner), &[px, py, pn]);
        let args = [
            i(n / w),
            i(ch),
            i(inner),
            Arg::U64(px),
            Arg::U64(self.p(mean)),
            Arg::U64(self.p(std)),
            Arg::U64(py),
            Arg::U64(pn),
            Arg::U64(pg),
            Arg::U64(pb),
            Arg::I32(relu as i32),
        ];
        self.launch(name, n / w, &args);
    }

    fn bn_backward_affine(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        global: bool,
        x_norm: &Buffer,
        std: &Buffer,
        gamma: &Buffer,
        grads: (&mut Buffer, &mut Buffer),
        dz: Option<&Buffer>,
        dx: Option<&mut Buffer>,
        gate: Option<(&Buffer, f32)>,
    ) {
        let n = outer * ch * inner;
        if !Self::small(n) || (dz.is_none() && dx.is_none()) {
            return composed::bn_backward_affine(
                self, outer, ch, inner, global, x_norm, std, gamma, grads, dz, dx, gate,
            );
        }
        // A folded-in ReLU gates dz where γ·x_norm + β ≤ 0, in both passes that read it.
        let (pbeta, slope) = gate.map_or((0, 0.0), |(b, s)| (self.p(b), s));
        let chan_gate = match gate {
            Some(_) => ChanGate {
                z: self.p(x_norm),
                g: self.p(gamma),
                b: pbeta,
                slope,
                out: 0,
            },
            None => ChanGate::NONE,
        };
        // One reduction gives the means BatchNorm needs and both parameter gradients.
        let means = self.scratch(2 * ch);
        let (pm, pmm) = (self.p(&means), self.p(&means) + 4 * ch as u64);
        let pg = (self.p(grads.0), self.p(grads.1));
        let pdz = {
            let Some(dzv) = dz.or(dx.as_deref()) else {
                unreachable!("handled above")
            };
            self.channel_reduce_gated(
                outer,
                ch,
                inner,
                2,
                dzv,
                Some(x_norm),
                4,
                pm,
                pmm,
                pg,
                chan_gate,
            );
            self.p(dzv)
        };
        if let Some(dx) = dx {
            let (pn, pdx) = (self.p(x_norm), self.p(dx));
            let (name, w) = variant(BN_BWD, bn_fits(n, inner), &[pn, pdz, pdx]);
            let args = [
                i(n / w),
                i(ch),
                i(inner),
                Arg::I32(global as i32),
                Arg::U64(pn),
                Arg::U64(pdz),
                Arg::U64(pm),
                Arg::U64(pmm),
                Arg::U64(self.p(std)),
                Arg::U64(pdx),
                Arg::U64(self.p(gamma)),
                Arg::U64(pbeta),
                f(slope),
                Arg::I32(gate.is_some() as i32),
            ];
            self.launch(name, n / w, &args);
        }
    }

    fn channel_affine(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        s: &Buffer,
        b: Option<&Buffer>,
        x: Option<&Buffer>,
        y: &mut Buffer,
    ) {
        let n = outer * ch * inner;
        if !Self::small(n) {
            return composed::channel_affine(self, outer, ch, inner, s, b, x, y);
        }
        let px = self.p(x.unwrap_or(y));
        let args = [
            i(n),
            i(ch),
            i(inner),
            Arg::U64(self.p(s)),
            Arg::U64(b.map(|b| self.p(b)).unwrap_or(0)),
            Arg::U64(px),
            Arg::U64(self.p(y)),
        ];
        self.launch("chan_affine_f32", n, &args);
    }

    fn channel_dot(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        a: &Buffer,
        b: &Buffer,
        out: &mut Buffer,
    ) {
        if !Self::small(outer * ch * inner) {
            return composed::channel_dot(self, outer, ch, inner, a, b, out);
        }
        let po = self.p(out);
        self.channel_reduce(outer, ch, inner, 2, a, Some(b), 3, po, po, (0, 0));
    }

    fn channel_scale(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        s: &Buffer,
        x: Option<&Buffer>,
        y: &mut Buffer,
    ) {
        let n = outer * ch * inner;
        if !Self::small(n) {
            return composed::channel_scale(self, outer, ch, inner, s, x, y);
        }
        let px = self.p(x.unwrap_or(y));
        let args = [
            i(n),
            i(ch),
            i(inner),
            Arg::U64(self.p(s)),
            Arg::U64(px),
            Arg::U64(self.p(y)),
        ];
        self.launch("chan_scale_f32", n, &args);
    }

    fn pool_forward(&self, g: &PoolGeom, method: PoolMethod, x: &Buffer, y: &mut Buffer) {
        let mut args = Self::pool_args(g, method).to_vec();
        args.push(Arg::U64(self.p(x)));
        args.push(Arg::U64(self.p(y)));
        self.launch_resident(
            "pool_fwd_f32",
            g.num * g.channels * g.out_h * g.out_w,
            &args,
        );
    }

    fn pool_backward(
        &self,
        g: &PoolGeom,
        method: PoolMethod,
        x: &Buffer,
        _y: &Buffer,
        dy: &Buffer,
        dx: &mut Buffer,
    ) {
        let inputs = g.num * g.channels * g.in_h * g.in_w;
        if method == PoolMethod::Max {
            // Record each window's winner once, instead of every input re-scanning the windows
            // that cover it.
            let outputs = g.num * g.channels * g.out_h * g.out_w;
            // pool_argmax_i32 writes every output's winner.
            let arg: CudaSlice<i32> = self.uninit(outputs, "max-pooling winners");
            let (pa, _s) = arg.device_ptr(&self.stream);
            let mut args = Self::pool_args(g, method)[..11].to_vec();
            args.push(Arg::U64(self.p(x)));
            args.push(Arg::U64(pa));
            self.launch_resident("pool_argmax_i32", outputs, &args);
            let mut args = Self::pool_args(g, method)[..11].to_vec();
            args.push(Arg::U64(pa));
            args.push(Arg::U64(self.p(dy)));
            args.push(Arg::U64(self.p(dx)));
            self.launch_resident("pool_bwd_max_f32", inputs, &args);
            return;
        }
        let mut args = Self::pool_args(g, method).to_vec();
        // AVE never reads x (WITHIN_CHANNEL LRN passes an empty buffer).
        args.push(Arg::U64(self.p(x)));
        args.push(Arg::U64(self.p(dy)));
        args.push(Arg::U64(self.p(dx)));
        self.launch_resident("pool_bwd_f32", inputs, &args);
    }

    fn lrn_forward(&self, p: &LrnParams, x: &Buffer, y: &mut Buffer, scale: &mut Buffer) {
        let plane = p.height * p.width;
        let n = p.num * p.channels * plane;
        let (px, py, ps) = (
            Arg::U64(self.p(x)),
            Arg::U64(self.p(y)),
            Arg::U64(self.p(scale)),
        );
        if p.across_channels {
            let pre = (p.local_size - 1) / 2;
            let post = p.local_size - pre - 1;
            let a = p.alpha / p.local_size as f32;
            let args = [
                u(n),
                i(p.channels),
                u(plane),
                i(pre),
                i(post),
                f(a),
                f(p.beta),
                f(p.k),
                px,
                py,
                ps,
            ];
            self.launch("lrn_cross_fwd_f32", n, &args);
        } else {
            let args = [
                u(n),
                i(p.height),
                i(p.width),
                i(p.local_size),
                f(p.alpha),
                f(p.beta),
                px,
                py,
                ps,
            ];
            self.launch("lrn_within_fwd_f32", n, &args);
        }
    }

    fn lrn_backward(
        &self,
        p: &LrnParams,
        x: &Buffer,
        y: &Buffer,
        scale: &Buffer,
        dy: &Buffer,
        dx: &mut Buffer,
    ) {
        let plane = p.height * p.width;
        let n = p.num * p.channels * plane;
        let (px, py, ps, pdy, pdx) = (
            Arg::U64(self.p(x)),
            Arg::U64(self.p(y)),
            Arg::U64(self.p(scale)),
            Arg::U64(self.p(dy)),
            Arg::U64(self.p(dx)),
        );
        if p.across_channels {
            let pre = (p.local_size - 1) / 2;
            let post = p.local_size - pre - 1;
            let cache = 2.0 * p.alpha * p.beta / p.local_size as f32;
            let args = [
                u(n),
                i(p.channels),
                u(plane),
                i(pre),
                i(post),
                f(cache),
                f(p.beta),
                px,
                py,
                ps,
                pdy,
                pdx,
            ];
            self.launch("lrn_cross_bwd_f32", n, &args);
        } else {
            let davg = self.scratch(n);
            let dsq = self.scratch(n);
            let pd = Arg::U64(self.p(&davg));
            self.launch(
                "lrn_within_davg_f32",
                n,
                &[u(n), f(p.alpha), f(p.beta), py, ps, pdy, pd],
            );
            let pad = (p.local_size - 1) / 2;
            let g = PoolGeom {
                num: p.num,
                channels: p.channels,
                in_h: p.height,
                in_w: p.width,
                out_h: p.height,
                out_w: p.width,
                kernel_h: p.local_size,
                kernel_w: p.local_size,
                stride_h: 1,
                stride_w: 1,
                pad_h: pad,
                pad_w: pad,
            };
            let mut args = Self::pool_args(&g, PoolMethod::Ave).to_vec();
            args.extend([px, pd, Arg::U64(self.p(&dsq))]);
            self.launch_resident("pool_bwd_f32", n, &args);
            self.launch(
                "lrn_within_dx_f32",
                n,
                &[u(n), f(p.beta), px, ps, pdy, Arg::U64(self.p(&dsq)), pdx],
            );
        }
    }

    fn act_forward(&self, a: Activation, x: Option<&Buffer>, y: &mut Buffer) {
        let (kind, p0, p1, p2) = act_code(a);
        let n = x.map_or(y.len(), |x| x.len().min(y.len()));
        let px = self.p(x.unwrap_or(y));
        let args = [
            u(n),
            Arg::I32(kind),
            f(p0),
            f(p1),
            f(p2),
            Arg::U64(px),
            Arg::U64(self.p(y)),
        ];
        self.launch("act_fwd_f32", n, &args);
    }

    fn act_backward(
        &self,
        a: Activation,
        x: &Buffer,
        y: &Buffer,
        dy: Option<&Buffer>,
        dx: &mut Buffer,
    ) {
        let (kind, p0, p1, p2) = act_code(a);
        let n = dx.len();
        let pdy = self.p(dy.unwrap_or(dx));
        let args = [
            u(n),
            Arg::I32(kind),
            f(p0),
            f(p1),
            f(p2),
            Arg::U64(self.p(x)),
            Arg::U64(self.p(y)),
            Arg::U64(pdy),
            Arg::U64(self.p(dx)),
        ];
        self.launch("act_bwd_f32", n, &args);
    }

    fn relu_backward_bias(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        slope: f32,
        y: &Buffer,
        dy: &mut Buffer,
        db: Option<&mut Buffer>,
    ) {
        let n = outer * ch * inner;
        match db {
            // One pass gates dy in place and sums it per channel.
            Some(db) if Self::small(n) && n > 0 => {
                let (pdb, pdy) = (self.p(db), self.p(dy));
                let gate = ChanGate {
                    z: self.p(y),
                    g: 0,
                    b: 0,
                    slope,
                    out: pdy,
                };
                self.channel_reduce_gated(outer, ch, inner, 0, dy, None, 0, pdb, pdb, (0, 0), gate);
            }
            db => composed::relu_backward_bias(self, outer, ch, inner, slope, y, dy, db),
        }
    }

    fn sum_backward(
        &self,
        dy: &Buffer,
        gate: Option<(f32, &Buffer)>,
        outs: &mut [(f32, &mut Buffer)],
    ) {
        let n = dy.len();
        let (slope, py) = gate.map_or((0.0, 0), |(s, y)| (s, self.p(y)));
        // Two bottoms per pass over dy (and y).
        for pair in outs.chunks_mut(2) {
            let (c1, p1) = match pair.get(1) {
                Some((c, d)) => (*c, self.p(d)),
                None => (0.0, 0),
            };
            let args = [
                u(n),
                Arg::U64(self.p(dy)),
                Arg::U64(py),
                f(slope),
                f(pair[0].0),
                Arg::U64(self.p(pair[0].1)),
                f(c1),
                Arg::U64(p1),
            ];
            self.launch("sum_bwd2_f32", n, &args);
        }
    }

    fn softmax_forward(&self, outer: usize, ch: usize, inner: usize, x: &Buffer, y: &mut Buffer) {
        let args = [
            u(outer),
            u(ch),
            u(inner),
            Arg::U64(self.p(x)),
            Arg::U64(self.p(y)),
        ];
        self.launch("softmax_fwd_f32", outer * inner, &args);
    }

    fn softmax_backward(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        y: &Buffer,
        dy: Option<&Buffer>,
        dx: &mut Buffer,
    ) {
        let pdy = self.p(dy.unwrap_or(dx));
        let args = [
            u(outer),
            u(ch),
            u(inner),
            Arg::U64(self.p(y)),
            Arg::U64(pdy),
            Arg::U64(self.p(dx)),
        ];
        self.launch("softmax_bwd_f32", outer * inner, &args);
    }

    fn softmax_loss(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        prob: &Buffer,
        labels: &Buffer,
        ignore_label: Option<i32>,
    ) -> (f32, usize) {
        let n = outer * inner;
        if n == 0 {
            return (0.0, 0);
        }
        let out: CudaSlice<f64> = self
            .stream
            .alloc_zeros(2 * n)
            .unwrap_or_else(|e| self.oom("softmax loss terms", 16 * n, e));
        let (po, _s) = out.device_ptr(&self.stream);
        let mut args = self.loss_args((outer, ch, inner), prob, labels, ignore_label);
        args.push(Arg::U64(po));
        self.launch("softmax_loss_f32", n, &args);
        let host = self
            .stream
            .clone_dtoh(&out)
            .unwrap_or_else(|e| panic!("CUDA softmax loss download: {e}"));
        let loss: f64 = host.iter().step_by(2).sum();
        let count: f64 = host.iter().skip(1).step_by(2).sum();
        (loss as f32, count as usize)
    }

    fn softmax_loss_backward(
        &self,
        outer: usize,
        ch: usize,
        inner: usize,
        prob: &Buffer,
        labels: &Buffer,
        ignore_label: Option<i32>,
        scale: f32,
        dx: &mut Buffer,
    ) {
        let dims = (outer, ch, inner);
        self.loss_backward(dims, prob, labels, ignore_label, (scale, 0, 0), dx);
    }

    fn softmax_loss_total(
        &self,
        dims: (usize, usize, usize),
        prob: &Buffer,
        labels: &Buffer,
        ignore_label: Option<i32>,
        fixed_divisor: f32,
        by_valid: bool,
        top: &mut Buffer,
        stats: &mut Buffer,
    ) {
        let mut args = self.loss_args(dims, prob, labels, ignore_label);
        args.extend([
            f(fixed_divisor),
            Arg::I32(by_valid as i32),
            Arg::U64(self.p(top)),
            Arg::U64(self.p(stats)),
        ]);
        // One block: the sum and the divisor in a single launch.
        self.kernels
            .launch(&self.stream, "softmax_loss_total_f32", 1, &args);
    }

    fn softmax_loss_backward_total(
        &self,
        dims: (usize, usize, usize),
        prob: &Buffer,
        labels: &Buffer,
        ignore_label: Option<i32>,
        dtop: &Buffer,
        stats: &Buffer,
        dx: &mut Buffer,
    ) {
        let scale_at = (0.0, self.p(dtop), self.p(stats));
        self.loss_backward(dims, prob, labels, ignore_label, scale_at, dx);
    }

    fn begin_graph(&self) -> bool {
        self.bind();
        let mode = cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL;
        match self.stream.begin_capture(mode) {
            Ok(()) => {
                self.recording.set(true);
                true
            }
            Err(e) => {
                tracing::debug!("GPU {}: cannot record a CUDA graph: {e}", self.ordinal);
                false
            }
        }
    }

    fn end_graph(&self) -> Result<Graph, String> {
        // Scratch memory the graph allocates is freed by its next launch at the latest.
        let flags = cudarc::driver::sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH;
        self.recording.set(false);
        let graph = self
            .stream
            .end_capture(flags)
            .map_err(|e| format!("GPU {}: recording a CUDA graph: {e}", self.ordinal))?
            .ok_or_else(|| format!("GPU {}: the recorded CUDA graph is empty", self.ordinal))?;
        graph
            .upload()
            .map_err(|e| format!("GPU {}: uploading a CUDA graph: {e}", self.ordinal))?;
        Ok(Graph(Box::new(graph)))
    }

    fn launch_graph(&self, graph: &Graph) {
        let g = graph
            .0
            .downcast_ref::<CudaGraph>()
            .expect("a graph recorded by another engine");
        g.launch()
            .unwrap_or_else(|e| panic!("CUDA graph launch on GPU {}: {e}", self.ordinal));
    }

    fn graph_epoch(&self) -> u64 {
        self.epoch.get()
    }

    fn recording(&self) -> bool {
        self.recording.get()
    }

    fn allocations(&self) -> u64 {
        self.allocations.get()
    }

    fn dropout_forward(&self, ratio: f32, x: Option<&Buffer>, y: &mut Buffer, mask: &mut Buffer) {
        let n = mask.len().min(y.len());
        if n == 0 {
            return;
        }
        let scale = 1.0 / (1.0 - ratio);
        let counter = self.draws.borrow();
        let (draws, _s) = counter.device_ptr(&self.stream);
        let px = self.p(x.unwrap_or(y));
        let args = [
            u(n),
            f(ratio),
            f(scale),
            Arg::U64(self.seed.get()),
            Arg::U64(draws),
            Arg::U64(px),
            Arg::U64(self.p(y)),
            Arg::U64(self.p(mask)),
        ];
        self.launch("dropout_f32", n, &args);
        // The count moves on in a kernel of its own, so a replayed graph draws new masks too.
        self.kernels
            .launch(&self.stream, "advance_u64", 1, &[Arg::U64(draws), u(n)]);
    }

    fn seed(&self, seed: u64) {
        self.seed.set(seed);
        self.stream
            .memset_zeros(&mut *self.draws.borrow_mut())
            .unwrap_or_else(|e| panic!("CUDA: resetting the random draw count: {e}"));
        // A recorded graph holds the old seed.
        self.epoch.set(self.epoch.get() + 1);
    }

    fn max_accumulate(
        &self,
        x: &Buffer,
        index: usize,
        first: bool,
        y: &mut Buffer,
        arg: &mut Buffer,
    ) {
        let n = y.len();
        let args = [
            u(n),
            Arg::U64(self.p(x)),
            f(index as f32),
            Arg::I32(first as i32),
            Arg::U64(self.p(y)),
            Arg::U64(self.p(arg)),
        ];
        self.launch("max_accumulate_f32", n, &args);
    }

    fn max_route_backward(&self, arg: &Buffer, index: usize, dy: &Buffer, dx: &mut Buffer) {
        let n = dx.len();
        let args = [
            u(n),
            Arg::U64(self.p(arg)),
            u(index),
            Arg::U64(self.p(dy)),
            Arg::U64(self.p(dx)),
        ];
        self.launch("max_route_bwd_f32", n, &args);
    }

    fn sgd_update(&self, lr: f32, momentum: f32, g: &Buffer, h: &mut Buffer, w: &mut Buffer) {
        let n = w.len();
        let args = [
            u(n),
            f(lr),
            f(momentum),
            Arg::U64(self.p(g)),
            Arg::U64(self.p(h)),
            Arg::U64(self.p(w)),
        ];
        self.launch("sgd_update_f32", n, &args);
    }

    fn sgd_update_many(&self, params: &mut [SgdParam<'_>], s: SgdStep) -> bool {
        let table: Vec<[u64; 5]> = {
            let mut start = 0u64;
            params
                .iter()
                .map(|p| {
                    let e = [
                        self.p(p.data),
                        self.p(p.diff),
                        self.p(p.history),
                        start,
                        p.lr_mult.to_bits() as u64 | (p.decay_mult.to_bits() as u64) << 32,
                    ];
                    start += p.data.len() as u64;
                    e
                })
                .collect()
        };
        let total: usize = params.iter().map(|p| p.data.len()).sum();
        let args = |t: u64| {
            [
                u(total),
                Arg::U64(t),
                Arg::I32(params.len() as i32),
                f(s.rate),
                f(s.momentum),
                f(s.weight_decay),
                Arg::I32(s.l1 as i32),
                f(s.scale),
            ]
        };
        self.launch_many("sgd_many_f32", total, table, args);
        true
    }

    fn fill_many(&self, value: f32, bufs: &mut [&mut Buffer]) {
        let mut start = 0u64;
        let table: Vec<[u64; 5]> = bufs
            .iter()
            .map(|b| {
                let e = [self.p(b), 0, 0, start, 0];
                start += b.len() as u64;
                e
            })
            .collect();
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let count = bufs.len() as i32;
        self.launch_many("fill_many_f32", total, table, |t| {
            [u(total), Arg::U64(t), Arg::I32(count), f(value)]
        });
    }

    fn tf32(&self) -> bool {
        !self.strict_fp32.get()
    }

    fn set_tf32(&self, on: bool) {
        let strict = !(on || self.forced_tf32);
        if strict == self.strict_fp32.get() {
            return;
        }
        self.bind();
        set_blas_math(&self.blas, strict)
            .unwrap_or_else(|e| panic!("CUDA on GPU {}: {e}", self.ordinal));
        self.strict_fp32.set(strict);
    }

    fn synchronize(&self) {
        self.stream
            .synchronize()
            .unwrap_or_else(|e| panic!("CUDA stream synchronize on GPU {}: {e}", self.ordinal));
    }
}
