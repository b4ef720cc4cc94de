//! Data-parallel training: several workers (one per GPU, in one process or several), each with its
//! own replica of the net and its own share of the data, kept in step by averaging gradients.
//!
//! Caffe's rules are kept: item `i` of a training source goes to worker `i mod N`; rank 0 owns the
//! weights at the start (they are broadcast), runs the test nets, logs and snapshots; every rank
//! applies the same averaged gradient, so the replicas stay identical without further copies.
//!
//! The worker's identity is per thread, as Caffe's `solver_rank` is: [`set_shard`] before building
//! a solver, and data layers read [`shard`] when they start.

pub mod rendezvous;

use crate::engine::Buffer;
use crate::Result;
use std::cell::Cell;
use std::sync::{Arc, Condvar, Mutex};

/// This worker's place among the workers: rank `rank` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub rank: usize,
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { rank: 0, count: 1 }
    }
}

impl Shard {
    /// Rank 0 tests, logs and snapshots (Caffe's root solver).
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }
}

thread_local! {
    static SHARD: Cell<Shard> = Cell::new(Shard::default());
}

/// Makes this thread the worker `shard` (set before building its solver).
pub fn set_shard(shard: Shard) {
    SHARD.with(|s| s.set(shard));
}

/// This thread's worker (rank 0 of 1 unless [`set_shard`] said otherwise).
pub fn shard() -> Shard {
    SHARD.with(|s| s.get())
}

/// How the workers talk: the few collective operations data-parallel training needs. Buffers are
/// the engine's own; operations on the GPU are queued and may finish after the call returns.
pub trait Collective {
    /// This worker's rank and the number of workers.
    fn shard(&self) -> Shard;
    /// Overwrites each buffer with rank 0's values.
    fn broadcast(&self, bufs: &mut [&mut Buffer]) -> Result<()>;
    /// Starts replacing each buffer by its mean over the workers. The engine's later work must not
    /// read the buffers before [`Collective::wait`].
    fn all_reduce_mean(&self, bufs: &mut [&mut Buffer]) -> Result<()>;
    /// Orders the engine's later work after every reduction started so far.
    fn wait(&self) -> Result<()>;
    /// The largest of every worker's `value`; returns when all workers have given theirs. Used to
    /// agree on stopping (one worker's SIGINT stops all at the same iteration).
    fn max_u32(&self, value: u32) -> Result<u32>;
}

/// State the threads of a [`HostGroup`] share: one slot per rank and a generation counter that
/// makes each exchange a barrier.
struct Exchange {
    slots: Vec<Option<Vec<f32>>>,
    arrived: usize,
    generation: u64,
    result: Arc<Vec<f32>>,
}

/// A collective among threads of one process over host buffers: what the CPU engine's workers use
/// (tests run data-parallel training with it on machines without GPUs). Results are computed in
/// rank order, so every rank gets bit-identical values.
pub struct HostGroup {
    shard: Shard,
    shared: Arc<(Mutex<Exchange>, Condvar)>,
}

impl HostGroup {
    /// One endpoint per worker, for `count` threads.
    pub fn new(count: usize) -> Vec<HostGroup> {
        let shared = Arc::new((
            Mutex::new(Exchange {
                slots: vec![None; count],
                arrived: 0,
                generation: 0,
                result: Arc::new(Vec::new()),
            }),
            Condvar::new(),
        ));
        (0..count)
            .map(|rank| HostGroup {
                shard: Shard { rank, count },
                shared: shared.clone(),
            })
            .collect()
    }

    /// Every rank hands in `mine`; `combine` turns the slots (in rank order) into the result all
    /// ranks receive.
    fn exchange(
        &self,
        mine: Vec<f32>,
        combine: impl FnOnce(&[Option<Vec<f32>>]) -> Vec<f32>,
    ) -> Result<Arc<Vec<f32>>> {
        let (lock, cv) = &*self.shared;
        let poisoned = |_| crate::Error::msg("a worker thread failed during a gradient exchange");
        let mut ex = lock.lock().map_err(poisoned)?;
        let generation = ex.generation;
        ex.slots[self.shard.rank] = Some(mine);
        ex.arrived += 1;
        if ex.arrived == self.shard.count {
            let result = combine(&ex.slots);
            ex.result = Arc::new(result);
            ex.slots.iter_mut().for_each(|s| *s = None);
            ex.arrived = 0;
            ex.generation += 1;
            cv.notify_all();
            return Ok(ex.result.clone());
        }
        while ex.generation == generation {
            ex = cv.wait(ex).map_err(poisoned)?;
        }
        Ok(ex.result.clone())
    }

    /// The values of several (host) buffers, end to end.
    fn gather(bufs: &[&mut Buffer]) -> Vec<f32> {
        bufs.iter().flat_map(|b| b.host().iter().copied()).collect()
    }

    fn scatter(values: &[f32], bufs: &mut [&mut Buffer]) {
        let mut at = 0;
        for b in bufs.iter_mut() {
            let dst = b.host_mut();
            dst.copy_from_slice(&values[at..at + dst.len()]);
            at += dst.len();
        }
    }
}

impl Collective for HostGroup {
    fn shard(&self) -> Shard {
        self.shard
    }

    fn broadcast(&self, bufs: &mut [&mut Buffer]) -> Result<()> {
        let mine = Self::gather(bufs);
        let all = self.exchange(mine, |slots| slots[0].clone().unwrap_or_default())?;
        Self::scatter(&all, bufs);
        Ok(())
    }

    fn all_reduce_mean(&self, bufs: &mut [&mut Buffer]) -> Result<()> {
        let mine = Self::gather(bufs);
        let n = self.shard.count as f32;
        let all = self.exchange(mine, |slots| {
            let mut sum = vec![0.0f32; slots[0].as_ref().map_or(0, Vec::len)];
            for s in slots.iter().flatten() {
                for (a, b) in sum.iter_mut().zip(s) {
                    *a += b;
                }
            }
            sum.iter_mut().for_each(|v| *v /= n);
            sum
        })?;
        Self::scatter(&all, bufs);
        Ok(())
    }

    fn wait(&self) -> Result<()> {
        Ok(())
    }

    fn max_u32(&self, value: u32) -> Result<u32> {
        let all = self.exchange(vec![value as f32], |slots| {
            vec![slots.iter().flatten().map(|s| s[0]).fold(0.0f32, f32::max)]
        })?;
        Ok(all[0] as u32)
    }
}

/// Runs `work(shard)` on `count` threads, one per worker, each with its [`Shard`] set, and returns
/// their results in rank order. A worker that fails while the others wait for it in a collective
/// would leave them waiting for ever, so the first error ends the process's wait: it is returned
/// at once (the other threads are left to the process's exit).
pub fn run_threads<T: Send + 'static>(
    count: usize,
    first_rank: usize,
    world: usize,
    work: impl Fn(Shard) -> Result<T> + Send + Sync + 'static,
) -> Result<Vec<T>> {
    let work = Arc::new(work);
    let (tx, rx) = std::sync::mpsc::channel();
    for local in 0..count {
        let shard = Shard {
            rank: first_rank + local,
            count: world,
        };
        let (work, tx) = (work.clone(), tx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("worker-{}", shard.rank))
            .spawn(move || {
                set_shard(shard);
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(shard)))
                    .unwrap_or_else(|p| {
                        let what = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_else(|| "unknown panic".into());
                        Err(crate::Error::msg(format!(
                            "worker {} failed: {what}",
                            shard.rank
                        )))
                    });
                let _ = tx.send((local, r));
            });
        if let Err(e) = spawned {
            crate::bail!("cannot start worker thread {local}: {e}");
        }
    }
    drop(tx);
    let mut results: Vec<Option<T>> = (0..count).map(|_| None).collect();
    for _ in 0..count {
        match rx.recv() {
            Ok((local, Ok(v))) => results[local] = Some(v),
            Ok((local, Err(e))) => {
                let rank = first_rank + local;
                return Err(if count > 1 || world > 1 {
                    crate::Error::msg(format!("worker {rank}: {e}"))
                } else {
                    e
                });
            }
            Err(_) => crate::bail!("a worker thread ended without a result"),
        }
    }
    Ok(results.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_group_averages_and_broadcasts_in_rank_order() {
        let groups = HostGroup::new(3);
        let handles: Vec<_> = groups
            .into_iter()
            .map(|g| {
                std::thread::spawn(move || {
                    let r = g.shard().rank as f32;
                    let mut a = Buffer::Host(vec![r, 10.0 * r]);
                    let mut b = Buffer::Host(vec![1.0 + r]);
                    g.all_reduce_mean(&mut [&mut a, &mut b]).unwrap();
                    let mut c = Buffer::Host(vec![r + 5.0; 2]);
                    g.broadcast(&mut [&mut c]).unwrap();
                    let m = g.max_u32(g.shard().rank as u32 * 2).unwrap();
                    (a.host().to_vec(), b.host().to_vec(), c.host().to_vec(), m)
                })
            })
            .collect();
        for h in handles {
            let (a, b, c, m) = h.join().unwrap();
            assert_eq!(a, vec![1.0, 10.0]);
            assert_eq!(b, vec![2.0]);
            assert_eq!(c, vec![5.0, 5.0]);
            assert_eq!(m, 4);
        }
    }

    #[test]
    fn run_threads_returns_in_rank_order_and_reports_the_failing_rank() {
        let r = run_threads(3, 0, 3, |s| Ok(s.rank * 10)).unwrap();
        assert_eq!(r, vec![0, 10, 20]);
        let e = run_threads(2, 4, 6, |s| {
            if s.rank == 5 {
                crate::bail!("no data")
            }
            Ok(())
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "worker 5: no data");
        assert_eq!(shard(), Shard::default());
    }
}
