//! Gradient exchange between GPUs through NCCL (cudarc's bindings, the library loaded at run
//! time). NCCL works on a stream of its own, so averaging the gradients of the upper layers
//! overlaps the backward pass of the lower ones; the engine's stream waits for it only before the
//! update.

use super::CudaEngine;
use crate::engine::Buffer;
use crate::parallel::{Collective, Shard};
use crate::Result;
use cudarc::driver::{CudaSlice, CudaStream};
use cudarc::nccl::{group_end, group_start, Comm, Id, ReduceOp};
use std::cell::RefCell;
use std::sync::Arc;

pub use super::loader::ensure_nccl;

/// Bytes of an NCCL unique id (what rank 0 hands the other processes).
pub const ID_BYTES: usize = 128;

/// Checks that NCCL loads (see [`super::loader::ensure_nccl`]) and makes a new unique id: rank 0
/// does this once and gives the bytes to every worker.
pub fn unique_id() -> Result<Vec<u8>, String> {
    super::loader::ensure_nccl()?;
    let id = Id::new().map_err(|e| format!("ncclGetUniqueId: {e:?}"))?;
    Ok(id.internal().iter().map(|c| *c as u8).collect())
}

/// One GPU's end of an NCCL communicator.
pub struct NcclCollective {
    // Field order is drop order: the communicator goes before its stream's last users.
    comm: Comm,
    flag: RefCell<CudaSlice<f32>>,
    compute: Arc<CudaStream>,
    nccl: Arc<CudaStream>,
    shard: Shard,
}

fn nccl_err(what: &str, e: impl std::fmt::Debug) -> crate::Error {
    crate::Error::msg(format!("NCCL {what}: {e:?}"))
}

fn cuda_err(what: &str, e: impl std::fmt::Display) -> crate::Error {
    crate::Error::msg(format!("CUDA {what}: {e}"))
}

impl NcclCollective {
    /// Joins the communicator of `shard.count` workers named by `id` (every worker must call this
    /// at about the same time; it returns when all have joined).
    pub fn new(engine: &CudaEngine, shard: Shard, id: &[u8]) -> Result<Self, String> {
        super::loader::ensure_nccl()?;
        if id.len() != ID_BYTES {
            return Err(format!(
                "an NCCL id has {ID_BYTES} bytes, this one {}",
                id.len()
            ));
        }
        let mut raw = [0 as std::ffi::c_char; ID_BYTES];
        for (r, b) in raw.iter_mut().zip(id) {
            *r = *b as std::ffi::c_char;
        }
        let compute = engine.stream().clone();
        let ctx = compute.context().clone();
        let nccl = ctx
            .new_stream()
            .map_err(|e| format!("GPU {}: creating NCCL's stream: {e}", engine.ordinal()))?;
        let comm = Comm::from_rank(nccl.clone(), shard.rank, shard.count, Id::uninit(raw))
            .map_err(|e| {
                format!(
                    "ncclCommInitRank (rank {} of {} on GPU {}): {e:?}",
                    shard.rank,
                    shard.count,
                    engine.ordinal()
                )
            })?;
        let flag = nccl
            .alloc_zeros::<f32>(1)
            .map_err(|e| format!("GPU {}: {e}", engine.ordinal()))?;
        Ok(NcclCollective {
            comm,
            flag: RefCell::new(flag),
            compute,
            nccl,
            shard,
        })
    }

    /// One NCCL group of `op` over every non-empty buffer, queued on NCCL's stream after
    /// everything the engine has queued so far.
    fn grouped<E: std::fmt::Debug>(
        &self,
        bufs: &mut [&mut Buffer],
        what: &str,
        op: impl Fn(
            &Comm,
            &mut CudaSlice<f32>,
        ) -> std::result::Result<cudarc::nccl::result::NcclStatus, E>,
    ) -> Result<()> {
        self.after_compute()?;
        group_start().map_err(|e| nccl_err("group start", e))?;
        for b in bufs.iter_mut().filter(|b| !b.is_empty()) {
            op(&self.comm, slice(b)).map_err(|e| nccl_err(what, e))?;
        }
        group_end().map_err(|e| nccl_err("group end", e))?;
        Ok(())
    }

    /// NCCL's stream starts after everything the engine has queued so far.
    fn after_compute(&self) -> Result<()> {
        self.nccl
            .join(&self.compute)
            .map_err(|e| cuda_err("ordering NCCL after the engine", e))
    }
}

fn slice(b: &mut Buffer) -> &mut CudaSlice<f32> {
    match b {
        Buffer::Device(s) => s,
        Buffer::Host(_) => panic!("NCCL was handed a host buffer (engines were mixed)"),
    }
}

impl Collective for NcclCollective {
    fn shard(&self) -> Shard {
        self.shard
    }

    fn broadcast(&self, bufs: &mut [&mut Buffer]) -> Result<()> {
        self.grouped(bufs, "broadcast", |c, s| c.broadcast_in_place(s, 0))?;
        self.wait()
    }

    fn all_reduce_mean(&self, bufs: &mut [&mut Buffer]) -> Result<()> {
        self.grouped(bufs, "all-reduce", |c, s| {
            c.all_reduce_in_place(s, &ReduceOp::Avg)
        })
    }

    fn wait(&self) -> Result<()> {
        self.compute
            .join(&self.nccl)
            .map_err(|e| cuda_err("ordering the engine after NCCL", e))
    }

    fn max_u32(&self, value: u32) -> Result<u32> {
        let mut flag = self.flag.borrow_mut();
        self.nccl
            .memcpy_htod(&[value as f32], &mut *flag)
            .map_err(|e| cuda_err("copying a flag", e))?;
        self.comm
            .all_reduce_in_place(&mut *flag, &ReduceOp::Max)
            .map_err(|e| nccl_err("all-reduce", e))?;
        let v = self
            .nccl
            .clone_dtoh(&*flag)
            .map_err(|e| cuda_err("reading a flag", e))?;
        Ok(v[0] as u32)
    }
}
