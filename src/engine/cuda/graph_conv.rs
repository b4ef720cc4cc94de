//! Convolutions through cuDNN's graph (backend) API: one operation graph per geometry and
//! direction, the engine configurations cuDNN's heuristics rank first, each finalised into an
//! execution plan that the engine times against the legacy API's choice (see `CudaEngine::plan`).
//!
//! The legacy `cudnnFind*` calls reach only the handful of algorithms the old API names; the graph
//! API lists every engine cuDNN has for the operation, which on Hopper includes faster kernels.
//! Tensors are NCHW, packed, f32; the three tensors of every direction carry the same ids
//! (x = 1, w = 2, y = 3, their gradients standing in for them), so one variant-pack layout serves.

use super::conv::{Handle, Policy};
use crate::engine::ConvGeom;
use cudarc::cudnn::sys;
use std::cell::RefCell;
use std::ffi::c_void;

type Attr = sys::cudnnBackendAttributeName_t;
type Ty = sys::cudnnBackendAttributeType_t;
type Kind = sys::cudnnBackendDescriptorType_t;

/// Byte alignment promised for every tensor; `Exec::run` checks the addresses it is given.
const ALIGN: u64 = 16;

/// A backend descriptor, destroyed when dropped.
struct Desc(sys::cudnnBackendDescriptor_t);

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by cudnnBackendCreateDescriptor, destroyed once, here.
        let _ = unsafe { sys::cudnnBackendDestroyDescriptor(self.0) };
    }
}

fn ck(s: sys::cudnnStatus_t, what: &str) -> Result<(), String> {
    if s == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(format!("{what}: {s:?}"))
    }
}

impl Desc {
    fn new(kind: Kind) -> Result<Self, String> {
        let mut d = std::ptr::null_mut();
        // SAFETY: `d` receives a fresh descriptor.
        ck(
            unsafe { sys::cudnnBackendCreateDescriptor(kind, &mut d) },
            "cudnnBackendCreateDescriptor",
        )?;
        Ok(Desc(d))
    }

    /// Sets an attribute to `vals` (their C layout must be what `ty` names).
    fn set<T>(&self, name: Attr, ty: Ty, vals: &[T]) -> Result<&Self, String> {
        // SAFETY: `vals` holds `len` elements of the type `ty` names, alive for the call.
        ck(
            unsafe {
                sys::cudnnBackendSetAttribute(
                    self.0,
                    name,
                    ty,
                    vals.len() as i64,
                    vals.as_ptr() as *const c_void,
                )
            },
            "cudnnBackendSetAttribute",
        )?;
        Ok(self)
    }

    fn set_i64(&self, name: Attr, vals: &[i64]) -> Result<&Self, String> {
        self.set(name, Ty::CUDNN_TYPE_INT64, vals)
    }

    fn set_desc(&self, name: Attr, d: &[&Desc]) -> Result<&Self, String> {
        let raw: Vec<sys::cudnnBackendDescriptor_t> = d.iter().map(|d| d.0).collect();
        self.set(name, Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR, &raw)
    }

    fn finalize(self) -> Result<Self, String> {
        // SAFETY: a live descriptor with its required attributes set.
        ck(
            unsafe { sys::cudnnBackendFinalize(self.0) },
            "cudnnBackendFinalize",
        )?;
        Ok(self)
    }

    /// Reads an attribute into `out` (elements of the type `ty` names) and returns how many
    /// elements cuDNN has; an empty `out` only asks for that count.
    fn get_into<T>(&self, name: Attr, ty: Ty, out: &mut [T]) -> Result<usize, String> {
        let mut n = 0i64;
        let ptr = if out.is_empty() {
            std::ptr::null_mut()
        } else {
            out.as_mut_ptr() as *mut c_void
        };
        // SAFETY: `out` holds `len` elements of the type `ty` names (or is null with a count of
        // zero); cuDNN writes at most that many.
        ck(
            unsafe {
                sys::cudnnBackendGetAttribute(self.0, name, ty, out.len() as i64, &mut n, ptr)
            },
            &format!("cudnnBackendGetAttribute({name:?})"),
        )?;
        Ok(n.max(0) as usize)
    }

    /// Reads up to `N` elements of an attribute.
    fn get<T: Copy + Default, const N: usize>(&self, name: Attr, ty: Ty) -> Result<Vec<T>, String> {
        let mut out = [T::default(); N];
        let n = self.get_into(name, ty, &mut out)?;
        Ok(out[..n.min(N)].to_vec())
    }
}

/// Which of a convolution's three computations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Forward,
    BackwardData,
    BackwardFilter,
}

/// A finalised execution plan: one engine configuration for one geometry and direction.
pub struct Exec {
    plan: Desc,
    pub workspace: usize,
    /// cuDNN's global index of the engine, for the log.
    pub engine: i64,
    /// Variant packs already built, by (x, w, y, workspace) address: a net's buffers do not move
    /// between steps, so each call after the first only looks its pack up.
    packs: RefCell<Vec<([u64; 4], Desc)>>,
}

impl Exec {
    /// Runs the plan on device buffers (x, w, y: for the backward directions, the gradients
    /// stand in for the tensors they belong to) with `ws` of at least `self.workspace` bytes.
    /// Errs, touching nothing, when an address is not aligned as the plan was promised.
    pub fn run(
        &self,
        h: &Handle,
        (x, w, y): (u64, u64, u64),
        ws: (u64, usize),
    ) -> Result<(), String> {
        if [x, w, y].iter().any(|p| p % ALIGN != 0) {
            return Err(format!("a tensor address is not {ALIGN}-byte aligned"));
        }
        let key = [x, w, y, ws.0];
        let mut packs = self.packs.borrow_mut();
        let at = match packs.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                let pack = Desc::new(Kind::CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR)?;
                let ptrs = [x, w, y].map(|p| p as *mut c_void);
                pack.set_i64(Attr::CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, &[1, 2, 3])?
                    .set(
                        Attr::CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
                        Ty::CUDNN_TYPE_VOID_PTR,
                        &ptrs,
                    )?
                    .set(
                        Attr::CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
                        Ty::CUDNN_TYPE_VOID_PTR,
                        &[ws.0 as *mut c_void],
                    )?;
                let pack = pack.finalize()?;
                if packs.len() >= 8 {
                    packs.remove(0);
                }
                packs.push((key, pack));
                packs.len() - 1
            }
        };
        // SAFETY: the plan and pack are finalised; the pack's addresses are live device buffers
        // of the plan's geometry (the caller's contract) and the workspace is large enough.
        ck(
            unsafe { sys::cudnnBackendExecute(h.0, self.plan.0, packs[at].1 .0) },
            "cudnnBackendExecute",
        )
    }
}

fn tensor(id: i64, dims: [usize; 4]) -> Result<Desc, String> {
    let d = dims.map(|v| v as i64);
    let strides = [d[1] * d[2] * d[3], d[2] * d[3], d[3], 1];
    let t = Desc::new(Kind::CUDNN_BACKEND_TENSOR_DESCRIPTOR)?;
    t.set(
        Attr::CUDNN_ATTR_TENSOR_DATA_TYPE,
        Ty::CUDNN_TYPE_DATA_TYPE,
        &[sys::cudnnDataType_t::CUDNN_DATA_FLOAT],
    )?
    .set_i64(Attr::CUDNN_ATTR_TENSOR_DIMENSIONS, &d)?
    .set_i64(Attr::CUDNN_ATTR_TENSOR_STRIDES, &strides)?
    .set_i64(Attr::CUDNN_ATTR_TENSOR_UNIQUE_ID, &[id])?
    .set_i64(Attr::CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, &[ALIGN as i64])?;
    t.finalize()
}

/// The operation graph of one direction of `g`.
fn op_graph(h: &Handle, g: &ConvGeom, dir: Dir) -> Result<Desc, String> {
    // Groups are implied by the filter's input channels (C / group).
    let x = tensor(1, [g.num, g.in_channels, g.in_h, g.in_w])?;
    let w = tensor(
        2,
        [
            g.out_channels,
            g.in_channels / g.group,
            g.kernel_h,
            g.kernel_w,
        ],
    )?;
    let y = tensor(3, [g.num, g.out_channels, g.out_h(), g.out_w()])?;
    let conv = Desc::new(Kind::CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR)?;
    let pads = [g.pad_h as i64, g.pad_w as i64];
    conv.set(
        Attr::CUDNN_ATTR_CONVOLUTION_COMP_TYPE,
        Ty::CUDNN_TYPE_DATA_TYPE,
        &[sys::cudnnDataType_t::CUDNN_DATA_FLOAT],
    )?
    .set(
        Attr::CUDNN_ATTR_CONVOLUTION_CONV_MODE,
        Ty::CUDNN_TYPE_CONVOLUTION_MODE,
        &[sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION],
    )?
    .set_i64(Attr::CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, &[2])?
    .set_i64(
        Attr::CUDNN_ATTR_CONVOLUTION_DILATIONS,
        &[g.dilation_h as i64, g.dilation_w as i64],
    )?
    .set_i64(
        Attr::CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES,
        &[g.stride_h as i64, g.stride_w as i64],
    )?
    .set_i64(Attr::CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, &pads)?
    .set_i64(Attr::CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, &pads)?;
    let conv = conv.finalize()?;
    // Parameter gradients accumulate (beta = 1), as in the legacy path; the others overwrite.
    let (kind, [ax, aw, ay, ac, aa, ab], beta) = match dir {
        Dir::Forward => (
            Kind::CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR,
            [
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA,
            ],
            0.0f32,
        ),
        Dir::BackwardData => (
            Kind::CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR,
            [
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA,
            ],
            0.0,
        ),
        Dir::BackwardFilter => (
            Kind::CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR,
            [
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA,
                Attr::CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA,
            ],
            1.0,
        ),
    };
    let op = Desc::new(kind)?;
    op.set_desc(ax, &[&x])?
        .set_desc(aw, &[&w])?
        .set_desc(ay, &[&y])?
        .set_desc(ac, &[&conv])?
        .set(aa, Ty::CUDNN_TYPE_FLOAT, &[1.0f32])?
        .set(ab, Ty::CUDNN_TYPE_FLOAT, &[beta])?;
    let op = op.finalize()?;
    let graph = Desc::new(Kind::CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR)?;
    graph
        .set_desc(Attr::CUDNN_ATTR_OPERATIONGRAPH_OPS, &[&op])?
        .set(
            Attr::CUDNN_ATTR_OPERATIONGRAPH_HANDLE,
            Ty::CUDNN_TYPE_HANDLE,
            &[h.0],
        )?;
    graph.finalize()
}

/// The engine configurations cuDNN's heuristics (`mode`) rank for `graph`, best first.
fn ranked(graph: &Desc, mode: sys::cudnnBackendHeurMode_t) -> Result<Vec<Desc>, String> {
    let heur = Desc::new(Kind::CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR)?;
    heur.set_desc(Attr::CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, &[graph])?
        .set(
            Attr::CUDNN_ATTR_ENGINEHEUR_MODE,
            Ty::CUDNN_TYPE_HEUR_MODE,
            &[mode],
        )?;
    let heur = heur.finalize()?;
    let results = Attr::CUDNN_ATTR_ENGINEHEUR_RESULTS;
    let count = heur.get_into::<sys::cudnnBackendDescriptor_t>(
        results,
        Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR,
        &mut [],
    )?;
    // cuDNN fills engine-config descriptors created beforehand.
    let cfgs = (0..count)
        .map(|_| Desc::new(Kind::CUDNN_BACKEND_ENGINECFG_DESCRIPTOR))
        .collect::<Result<Vec<_>, _>>()?;
    let mut raw: Vec<sys::cudnnBackendDescriptor_t> = cfgs.iter().map(|d| d.0).collect();
    let got = heur.get_into(results, Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR, &mut raw)?;
    let mut cfgs = cfgs;
    cfgs.truncate(got);
    Ok(cfgs)
}

/// The engine of a configuration: (global index, numerical notes).
fn engine_of(cfg: &Desc) -> Result<(i64, Vec<sys::cudnnBackendNumericalNote_t>), String> {
    use sys::cudnnBackendNumericalNote_t as Note;
    let engine = Desc::new(Kind::CUDNN_BACKEND_ENGINE_DESCRIPTOR)?;
    // cuDNN fills the engine descriptor created here.
    cfg.get_into(
        Attr::CUDNN_ATTR_ENGINECFG_ENGINE,
        Ty::CUDNN_TYPE_BACKEND_DESCRIPTOR,
        &mut [engine.0],
    )?;
    let index = engine
        .get::<i64, 1>(Attr::CUDNN_ATTR_ENGINE_GLOBAL_INDEX, Ty::CUDNN_TYPE_INT64)?
        .first()
        .copied()
        .unwrap_or(-1);
    const N: usize = Note::CUDNN_NUMERICAL_NOTE_TYPE_COUNT as usize;
    let mut notes = [Note::CUDNN_NUMERICAL_NOTE_TYPE_COUNT; N];
    let n = engine.get_into(
        Attr::CUDNN_ATTR_ENGINE_NUMERICAL_NOTE,
        Ty::CUDNN_TYPE_NUMERICAL_NOTE,
        &mut notes,
    )?;
    Ok((index, notes[..n.min(N)].to_vec()))
}

/// Up to `max` execution plans for one direction of `g` that `policy` allows, in cuDNN's order:
/// no tensor-core (TF32) engines in strict fp32, none that converts inputs down to half precision,
/// none over the workspace budget. Engines that fail to finalise are skipped.
pub fn candidates(
    h: &Handle,
    g: &ConvGeom,
    dir: Dir,
    policy: Policy,
    max: usize,
) -> Result<Vec<Exec>, String> {
    use sys::cudnnBackendNumericalNote_t as Note;
    let graph = op_graph(h, g, dir)?;
    let mut cfgs = ranked(&graph, sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_A)?;
    cfgs.extend(
        ranked(
            &graph,
            sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_FALLBACK,
        )
        .unwrap_or_default(),
    );
    let mut out: Vec<Exec> = Vec::new();
    for cfg in cfgs {
        if out.len() >= max {
            break;
        }
        let Ok((engine, notes)) = engine_of(&cfg) else {
            continue;
        };
        if out.iter().any(|e| e.engine == engine)
            || notes.contains(&Note::CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS)
            || (policy.strict && notes.contains(&Note::CUDNN_NUMERICAL_NOTE_TENSOR_CORE))
            || (policy.deterministic
                && notes.contains(&Note::CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC))
        {
            continue;
        }
        let built = (|| {
            let plan = Desc::new(Kind::CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR)?;
            plan.set(
                Attr::CUDNN_ATTR_EXECUTION_PLAN_HANDLE,
                Ty::CUDNN_TYPE_HANDLE,
                &[h.0],
            )?
            .set_desc(Attr::CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, &[&cfg])?;
            let plan = plan.finalize()?;
            let ws = plan
                .get::<i64, 1>(
                    Attr::CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                    Ty::CUDNN_TYPE_INT64,
                )?
                .first()
                .copied()
                .unwrap_or(0);
            Ok::<_, String>((plan, ws.max(0) as usize))
        })();
        let Ok((plan, workspace)) = built else {
            continue;
        };
        if workspace > policy.limit {
            continue;
        }
        out.push(Exec {
            plan,
            workspace,
            engine,
            packs: RefCell::new(Vec::new()),
        });
    }
    Ok(out)
}
