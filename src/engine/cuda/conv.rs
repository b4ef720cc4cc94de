//! Convolutions with cuDNN: descriptors and algorithms chosen once per [`ConvGeom`] by timed search
//! (cudnnFind*, falling back to the cudnnGet*_v7 heuristics), with a workspace budget taken from
//! the device's free memory rather than a fixed size.

use super::graph_conv::Exec;
use crate::engine::ConvGeom;
use cudarc::cudnn::{result as dnn, sys};
use std::ffi::c_int;

/// A cuDNN handle bound to the engine's stream.
pub struct Handle(pub sys::cudnnHandle_t);

impl Handle {
    pub fn new(stream: sys::cudaStream_t) -> Result<Self, String> {
        let h = dnn::create_handle().map_err(|e| format!("cudnnCreate: {e}"))?;
        // SAFETY: `h` was just created; the stream belongs to the engine's live context.
        unsafe { dnn::set_stream(h, stream) }.map_err(|e| format!("cudnnSetStream: {e}"))?;
        Ok(Handle(h))
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle is destroyed once, here; errors at teardown are ignored.
        let _ = unsafe { dnn::destroy_handle(self.0) };
    }
}

struct Tensor(sys::cudnnTensorDescriptor_t);
struct Relu(sys::cudnnActivationDescriptor_t);

impl Relu {
    /// max(x, 0), NaN kept (as the ReLU kernel does).
    fn new() -> Result<Self, String> {
        let r = Relu(dnn::create_activation_descriptor().map_err(|e| e.to_string())?);
        // SAFETY: `r` is a fresh descriptor.
        ck(
            unsafe {
                dnn::set_activation_descriptor(
                    r.0,
                    sys::cudnnActivationMode_t::CUDNN_ACTIVATION_RELU,
                    sys::cudnnNanPropagation_t::CUDNN_PROPAGATE_NAN,
                    0.0,
                )
            },
            "cudnnSetActivationDescriptor",
        )?;
        Ok(r)
    }
}

impl Drop for Relu {
    fn drop(&mut self) {
        // SAFETY: created by create_activation_descriptor, destroyed once.
        let _ = unsafe { sys::cudnnDestroyActivationDescriptor(self.0) };
    }
}
struct Filter(sys::cudnnFilterDescriptor_t);
struct Conv(sys::cudnnConvolutionDescriptor_t);

impl Drop for Tensor {
    fn drop(&mut self) {
        // SAFETY: created by create_tensor_descriptor, destroyed once.
        let _ = unsafe { dnn::destroy_tensor_descriptor(self.0) };
    }
}
impl Drop for Filter {
    fn drop(&mut self) {
        // SAFETY: created by create_filter_descriptor, destroyed once.
        let _ = unsafe { dnn::destroy_filter_descriptor(self.0) };
    }
}
impl Drop for Conv {
    fn drop(&mut self) {
        // SAFETY: created by create_convolution_descriptor, destroyed once.
        let _ = unsafe { dnn::destroy_convolution_descriptor(self.0) };
    }
}

const F32: sys::cudnnDataType_t = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
const NCHW: sys::cudnnTensorFormat_t = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;

fn ck(r: Result<(), dnn::CudnnError>, what: &str) -> Result<(), String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn tensor(dims: [usize; 4]) -> Result<Tensor, String> {
    let t = Tensor(dnn::create_tensor_descriptor().map_err(|e| e.to_string())?);
    let d = dims.map(|v| v as c_int);
    // SAFETY: `t` is a fresh descriptor.
    ck(
        unsafe { dnn::set_tensor4d_descriptor(t.0, NCHW, F32, d) },
        "cudnnSetTensor4dDescriptor",
    )?;
    Ok(t)
}

fn conv_desc(g: &ConvGeom, math: sys::cudnnMathType_t) -> Result<Conv, String> {
    let c = Conv(dnn::create_convolution_descriptor().map_err(|e| e.to_string())?);
    let mode = sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
    // SAFETY: `c` is a fresh descriptor.
    unsafe {
        ck(
            dnn::set_convolution2d_descriptor(
                c.0,
                g.pad_h as c_int,
                g.pad_w as c_int,
                g.stride_h as c_int,
                g.stride_w as c_int,
                g.dilation_h as c_int,
                g.dilation_w as c_int,
                mode,
                F32,
            ),
            "cudnnSetConvolution2dDescriptor",
        )?;
        ck(
            dnn::set_convolution_group_count(c.0, g.group as c_int),
            "cudnnSetConvolutionGroupCount",
        )?;
        ck(
            dnn::set_convolution_math_type(c.0, math),
            "cudnnSetConvolutionMathType",
        )?;
    }
    Ok(c)
}

/// The common face of cuDNN's three perf-result structs.
trait Perf: Copy {
    type Algo: Copy + std::fmt::Debug;
    fn algo(&self) -> Self::Algo;
    fn ok(&self) -> bool;
    fn memory(&self) -> usize;
    fn math(&self) -> sys::cudnnMathType_t;
    fn deterministic(&self) -> bool;
}

macro_rules! perf {
    ($t:ty, $a:ty) => {
        impl Perf for $t {
            type Algo = $a;
            fn algo(&self) -> $a {
                self.algo
            }
            fn ok(&self) -> bool {
                self.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
            }
            fn memory(&self) -> usize {
                self.memory
            }
            fn math(&self) -> sys::cudnnMathType_t {
                self.mathType
            }
            fn deterministic(&self) -> bool {
                self.determinism == sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC
            }
        }
    };
}
perf!(
    sys::cudnnConvolutionFwdAlgoPerf_t,
    sys::cudnnConvolutionFwdAlgo_t
);
perf!(
    sys::cudnnConvolutionBwdDataAlgoPerf_t,
    sys::cudnnConvolutionBwdDataAlgo_t
);
perf!(
    sys::cudnnConvolutionBwdFilterAlgoPerf_t,
    sys::cudnnConvolutionBwdFilterAlgo_t
);

/// What an algorithm must satisfy.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Strict fp32: FMA math only, so no TF32 tensor-core rounding.
    pub strict: bool,
    /// Bit-for-bit repeatable runs: deterministic algorithms (no atomics), chosen by cuDNN's
    /// heuristics rather than by timing, so every run of the same net picks the same ones.
    pub deterministic: bool,
    /// Workspace budget in bytes.
    pub limit: usize,
}

/// The first usable result (results come fastest first): successful, within the workspace budget,
/// and as the policy asks.
fn pick<P: Perf>(results: &[P], policy: Policy) -> Option<P> {
    results.iter().copied().find(|p| {
        p.ok()
            && p.memory() <= policy.limit
            && (!policy.strict || p.math() == sys::cudnnMathType_t::CUDNN_FMA_MATH)
            && (!policy.deterministic || p.deterministic())
    })
}

/// One direction's choice: its descriptor (math type set to the algorithm's), algorithm, workspace.
pub struct Choice<A> {
    conv: Conv,
    pub algo: A,
    pub workspace: usize,
}

/// Everything cuDNN needs to run one convolution geometry.
pub struct ConvPlan {
    x: Tensor,
    y: Tensor,
    w: Filter,
    /// 1 × C_out × 1 × 1, and the ReLU, for [`ConvPlan::forward_bias_relu`].
    bias: Tensor,
    relu: Relu,
    /// False once cuDNN refused the fused call for this plan's forward algorithm.
    pub fused_ok: std::cell::Cell<bool>,
    pub fwd: Choice<sys::cudnnConvolutionFwdAlgo_t>,
    pub bwd_data: Choice<sys::cudnnConvolutionBwdDataAlgo_t>,
    pub bwd_filter: Choice<sys::cudnnConvolutionBwdFilterAlgo_t>,
    /// Graph-API plans that ran faster than the legacy choices when timed (see
    /// `CudaEngine::tune`); the legacy choice serves where a direction has none.
    pub faster: Faster,
}

/// Per direction, the graph-API plan to run instead of the legacy algorithm.
#[derive(Default)]
pub struct Faster {
    pub fwd: Option<Exec>,
    /// The forward with bias and ReLU runs the plain forward, then one bias+ReLU pass: timed,
    /// that was faster than cuDNN's fused legacy call.
    pub separate_bias_relu: bool,
    pub bwd_data: Option<Exec>,
    pub bwd_filter: Option<Exec>,
}

impl ConvPlan {
    /// Builds descriptors and picks the fastest algorithm of each direction that `policy` allows.
    pub fn new(h: &Handle, g: &ConvGeom, policy: Policy) -> Result<Self, String> {
        let strict = policy.strict;
        let x = tensor([g.num, g.in_channels, g.in_h, g.in_w])?;
        let y = tensor([g.num, g.out_channels, g.out_h(), g.out_w()])?;
        let w = Filter(dnn::create_filter_descriptor().map_err(|e| e.to_string())?);
        let wd = [
            g.out_channels,
            g.in_channels / g.group,
            g.kernel_h,
            g.kernel_w,
        ]
        .map(|v| v as c_int);
        // SAFETY: `w` is a fresh descriptor.
        ck(
            unsafe { dnn::set_filter4d_descriptor(w.0, F32, NCHW, wd) },
            "cudnnSetFilter4dDescriptor",
        )?;
        let math = if strict {
            sys::cudnnMathType_t::CUDNN_FMA_MATH
        } else {
            sys::cudnnMathType_t::CUDNN_DEFAULT_MATH
        };
        let hd = h.0;

        // ---- forward ----
        let c = conv_desc(g, math)?;
        const NF: usize = sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as usize;
        // SAFETY (all find/get calls below): descriptors are live and describe this geometry;
        // the result arrays hold `N` entries and cuDNN writes at most `returned` of them.
        let found = if policy.deterministic {
            vec![]
        } else {
            search::<sys::cudnnConvolutionFwdAlgoPerf_t, NF>(|n, r, p| unsafe {
                sys::cudnnFindConvolutionForwardAlgorithm(hd, x.0, w.0, c.0, y.0, n, r, p)
            })
        };
        let heur = || {
            search::<sys::cudnnConvolutionFwdAlgoPerf_t, NF>(|n, r, p| unsafe {
                sys::cudnnGetConvolutionForwardAlgorithm_v7(hd, x.0, w.0, c.0, y.0, n, r, p)
            })
        };
        let fwd = match pick(&found, policy).or_else(|| pick(&heur(), policy)) {
            Some(p) => finish(c, p.algo(), p.memory(), p.math())?,
            None => {
                let algo = sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
                let mut ws = 0usize;
                // SAFETY: as above; `ws` receives the size.
                ck(
                    unsafe {
                        sys::cudnnGetConvolutionForwardWorkspaceSize(
                            hd, x.0, w.0, c.0, y.0, algo, &mut ws,
                        )
                    }
                    .result(),
                    "cudnnGetConvolutionForwardWorkspaceSize",
                )?;
                Choice {
                    conv: c,
                    algo,
                    workspace: ws,
                }
            }
        };

        // ---- backward data ----
        let c = conv_desc(g, math)?;
        const ND: usize =
            sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT as usize;
        let found = if policy.deterministic {
            vec![]
        } else {
            search::<sys::cudnnConvolutionBwdDataAlgoPerf_t, ND>(|n, r, p| unsafe {
                sys::cudnnFindConvolutionBackwardDataAlgorithm(hd, w.0, y.0, c.0, x.0, n, r, p)
            })
        };
        let heur = || {
            search::<sys::cudnnConvolutionBwdDataAlgoPerf_t, ND>(|n, r, p| unsafe {
                sys::cudnnGetConvolutionBackwardDataAlgorithm_v7(hd, w.0, y.0, c.0, x.0, n, r, p)
            })
        };
        let bwd_data = match pick(&found, policy).or_else(|| pick(&heur(), policy)) {
            Some(p) => finish(c, p.algo(), p.memory(), p.math())?,
            None => {
                let algo = sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
                let mut ws = 0usize;
                // SAFETY: as above.
                ck(
                    unsafe {
                        sys::cudnnGetConvolutionBackwardDataWorkspaceSize(
                            hd, w.0, y.0, c.0, x.0, algo, &mut ws,
                        )
                    }
                    .result(),
                    "cudnnGetConvolutionBackwardDataWorkspaceSize",
                )?;
                Choice {
                    conv: c,
                    algo,
                    workspace: ws,
                }
            }
        };

        // ---- backward filter ----
        let c = conv_desc(g, math)?;
        const NW: usize =
            sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT as usize;
        let found = if policy.deterministic {
            vec![]
        } else {
            search::<sys::cudnnConvolutionBwdFilterAlgoPerf_t, NW>(|n, r, p| unsafe {
                sys::cudnnFindConvolutionBackwardFilterAlgorithm(hd, x.0, y.0, c.0, w.0, n, r, p)
            })
        };
        let heur = || {
            search::<sys::cudnnConvolutionBwdFilterAlgoPerf_t, NW>(|n, r, p| unsafe {
                sys::cudnnGetConvolutionBackwardFilterAlgorithm_v7(hd, x.0, y.0, c.0, w.0, n, r, p)
            })
        };
        let bwd_filter = match pick(&found, policy).or_else(|| pick(&heur(), policy)) {
            Some(p) => finish(c, p.algo(), p.memory(), p.math())?,
            None => {
                let algo =
                    sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1;
                let mut ws = 0usize;
                // SAFETY: as above.
                ck(
                    unsafe {
                        sys::cudnnGetConvolutionBackwardFilterWorkspaceSize(
                            hd, x.0, y.0, c.0, w.0, algo, &mut ws,
                        )
                    }
                    .result(),
                    "cudnnGetConvolutionBackwardFilterWorkspaceSize",
                )?;
                Choice {
                    conv: c,
                    algo,
                    workspace: ws,
                }
            }
        };
        Ok(ConvPlan {
            x,
            y,
            w,
            bias: tensor([1, g.out_channels, 1, 1])?,
            relu: Relu::new()?,
            fused_ok: std::cell::Cell::new(true),
            fwd,
            bwd_data,
            bwd_filter,
            faster: Faster::default(),
        })
    }

    /// A short description for the log.
    pub fn describe(&self) -> String {
        format!(
            "fwd {:?} ({} B), bwd-data {:?} ({} B), bwd-filter {:?} ({} B)",
            self.fwd.algo,
            self.fwd.workspace,
            self.bwd_data.algo,
            self.bwd_data.workspace,
            self.bwd_filter.algo,
            self.bwd_filter.workspace
        )
    }

    /// y = conv(x, w). Pointers are device addresses of f32 buffers matching the plan's geometry.
    pub fn forward(
        &self,
        h: &Handle,
        x: u64,
        w: u64,
        y: u64,
        ws: (u64, usize),
    ) -> Result<(), String> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: the caller passes live device buffers of the sizes this plan's descriptors state,
        // and a workspace of at least `self.fwd.workspace` bytes.
        let r = unsafe {
            dnn::convolution_forward(
                h.0,
                ptr(&alpha),
                self.x.0,
                x as *const _,
                self.w.0,
                w as *const _,
                self.fwd.conv.0,
                self.fwd.algo,
                ws.0 as *mut _,
                ws.1,
                ptr(&beta),
                self.y.0,
                y as *mut _,
            )
        };
        ck(r, "cudnnConvolutionForward")
    }

    /// y = max(conv(x, w) + bias, 0) in one cuDNN call, with the forward algorithm chosen for
    /// the plain convolution.
    pub fn forward_bias_relu(
        &self,
        h: &Handle,
        x: u64,
        w: u64,
        bias: u64,
        y: u64,
        ws: (u64, usize),
    ) -> Result<(), String> {
        let (alpha1, alpha2) = (1.0f32, 0.0f32);
        // SAFETY: as in `forward`; `bias` holds C_out floats; with alpha2 = 0 the z input (y
        // itself, same shape) is not read for its values.
        let r = unsafe {
            dnn::convolution_bias_activation_forward(
                h.0,
                ptr(&alpha1),
                self.x.0,
                x as *const _,
                self.w.0,
                w as *const _,
                self.fwd.conv.0,
                self.fwd.algo,
                ws.0 as *mut _,
                ws.1,
                ptr(&alpha2),
                self.y.0,
                y as *const _,
                self.bias.0,
                bias as *const _,
                self.relu.0,
                self.y.0,
                y as *mut _,
            )
        };
        ck(r, "cudnnConvolutionBiasActivationForward")
    }

    /// dx = conv_transpose(dy, w), overwriting dx.
    pub fn backward_data(
        &self,
        h: &Handle,
        dy: u64,
        w: u64,
        dx: u64,
        ws: (u64, usize),
    ) -> Result<(), String> {
        let (alpha, beta) = (1.0f32, 0.0f32);
        // SAFETY: as in `forward`.
        let r = unsafe {
            dnn::convolution_backward_data(
                h.0,
                ptr(&alpha),
                self.w.0,
                w as *const _,
                self.y.0,
                dy as *const _,
                self.bwd_data.conv.0,
                self.bwd_data.algo,
                ws.0 as *mut _,
                ws.1,
                ptr(&beta),
                self.x.0,
                dx as *mut _,
            )
        };
        ck(r, "cudnnConvolutionBackwardData")
    }

    /// dw += correlation of x and dy (beta = 1: parameter gradients accumulate).
    pub fn backward_filter(
        &self,
        h: &Handle,
        x: u64,
        dy: u64,
        dw: u64,
        ws: (u64, usize),
    ) -> Result<(), String> {
        let (alpha, beta) = (1.0f32, 1.0f32);
        // SAFETY: as in `forward`.
        let r = unsafe {
            dnn::convolution_backward_filter(
                h.0,
                ptr(&alpha),
                self.x.0,
                x as *const _,
                self.y.0,
                dy as *const _,
                self.bwd_filter.conv.0,
                self.bwd_filter.algo,
                ws.0 as *mut _,
                ws.1,
                ptr(&beta),
                self.w.0,
                dw as *mut _,
            )
        };
        ck(r, "cudnnConvolutionBackwardFilter")
    }
}

fn ptr(v: &f32) -> *const std::ffi::c_void {
    v as *const f32 as *const _
}

/// Runs a cuDNN find/get call into an array of `N` results and returns the ones it filled.
fn search<P: Perf, const N: usize>(
    call: impl FnOnce(c_int, *mut c_int, *mut P) -> sys::cudnnStatus_t,
) -> Vec<P> {
    // SAFETY: the perf structs are plain C data for which all-zero bytes are valid.
    let mut results: [P; N] = unsafe { std::mem::zeroed() };
    let mut returned: c_int = 0;
    let status = call(N as c_int, &mut returned, results.as_mut_ptr());
    if status != sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        return Vec::new();
    }
    results[..(returned.max(0) as usize).min(N)].to_vec()
}

/// Sets the descriptor's math type to the one the chosen algorithm was measured with.
fn finish<A>(
    c: Conv,
    algo: A,
    workspace: usize,
    math: sys::cudnnMathType_t,
) -> Result<Choice<A>, String> {
    // SAFETY: `c` is a live descriptor.
    ck(
        unsafe { dnn::set_convolution_math_type(c.0, math) },
        "cudnnSetConvolutionMathType",
    )?;
    Ok(Choice {
        conv: c,
        algo,
        workspace,
    })
}
