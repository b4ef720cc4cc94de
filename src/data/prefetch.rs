//! The prefetch thread both data layers use: it reads raw items in order, decodes them on all
//! cores, runs Caffe's transformer and queues whole batches, so forward() only copies.

use crate::blob::BlobRef;
use crate::layers::Ctx;
use crate::{bail, Result};
use crema_data_tools::Transformer;
use crema_proto::caffe::Datum;
use rayon::prelude::*;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, Instant};

/// One prefetched batch, already transformed, in host memory.
struct Batch {
    /// N × C × H × W, from the batch's first item (Caffe reshapes per batch, so a batch of one
    /// may change size from batch to batch).
    shape: [usize; 4],
    data: Vec<f32>,
    labels: Vec<f32>,
}

type BatchResult = std::result::Result<Batch, String>;

/// What a data layer's source hands the prefetch thread: the next raw item with a name for
/// error messages (an LMDB key or a file path).
pub type NextItem<T> = Box<dyn FnMut() -> std::result::Result<(String, T), String> + Send>;

/// How an item becomes a raw Datum; runs on the rayon pool, several items at once.
pub type DecodeItem<T> = Box<dyn Fn(T) -> std::result::Result<Datum, String> + Send + Sync>;

/// A data layer's end of the prefetch queue, with the time forward() spent waiting on it.
#[derive(Default)]
pub struct Feed {
    rx: Option<Receiver<BatchResult>>,
    /// Batch buffers handed back to the prefetch thread once copied to the engine: a fresh
    /// buffer of a big batch (158 MB for 256 CaffeNet crops) costs more to fault in than to fill.
    recycle: Option<SyncSender<Vec<f32>>>,
    waited: Duration,
    batches: usize,
}

impl Feed {
    /// (Re)starts the prefetch thread; the previous one ends at its next send.
    pub fn start<T: Send + 'static>(
        &mut self,
        thread_name: String,
        depth: usize,
        batch: usize,
        mut transformer: Transformer,
        mut next: NextItem<T>,
        decode: DecodeItem<T>,
    ) -> Result<()> {
        self.rx = None;
        // Decoding gets its own threads: on rayon's global pool the engine's operations would
        // queue behind decode jobs, and that wait would hide inside compute time.
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let pool_name = thread_name.clone();
        let pool = match rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(move |i| format!("{pool_name}-{i}"))
            .build()
        {
            Ok(p) => p,
            Err(e) => bail!("cannot start the decoding threads: {e}"),
        };
        let (tx, rx) = sync_channel(depth.max(1));
        let (recycle_tx, recycle_rx) = sync_channel::<Vec<f32>>(depth.max(1) + 1);
        let mut produce = move || -> BatchResult {
            let mut names = Vec::with_capacity(batch);
            let mut items = Vec::with_capacity(batch);
            for _ in 0..batch {
                let (name, item) = next()?;
                names.push(name);
                items.push(item);
            }
            // Decoding is the costly part: spread it over the cores.
            let datums: Vec<Datum> = pool.install(|| {
                items
                    .into_par_iter()
                    .map(&decode)
                    .collect::<std::result::Result<_, _>>()
            })?;
            let dims = |d: &Datum| {
                (
                    d.channels().max(0) as usize,
                    d.height().max(0) as usize,
                    d.width().max(0) as usize,
                )
            };
            let (c0, h0, w0) = dims(&datums[0]);
            let (c, h, w) = transformer.output_shape(c0, h0, w0);
            let item = c * h * w;
            // Every element is written below, so a recycled buffer needs no clearing.
            let mut data = match recycle_rx.try_recv() {
                Ok(v) if v.len() == batch * item => v,
                _ => vec![0.0f32; batch * item],
            };
            let mut labels = vec![0.0f32; batch];
            // The random crops and flips are drawn in item order, so a run is reproducible;
            // applying them (the costly part) is spread over the cores.
            let mut draws = Vec::with_capacity(batch);
            for (i, d) in datums.iter().enumerate() {
                if dims(d) != (c0, h0, w0) {
                    let (dc, dh, dw) = dims(d);
                    return Err(format!(
                        "`{}` is {dc}x{dh}x{dw} (CxHxW) but `{}`, first in the same batch, is {c0}x{h0}x{w0}; the items of a batch must have one size (resize them when converting, or set new_height/new_width)",
                        names[i], names[0]
                    ));
                }
                draws.push(
                    transformer
                        .draw(h0, w0)
                        .map_err(|e| format!("`{}`: {e}", names[i]))?,
                );
                labels[i] = d.label() as f32;
            }
            let t = &transformer;
            pool.install(|| {
                data.par_chunks_mut(item.max(1))
                    .zip(datums.par_iter())
                    .zip(draws.par_iter())
                    .zip(names.par_iter())
                    .try_for_each(|(((out, d), &(h_off, w_off, mirror)), name)| {
                        t.transform_at(d, out, h_off, w_off, mirror)
                            .map_err(|e| format!("`{name}`: {e}"))
                    })
            })?;
            Ok(Batch {
                shape: [batch, c, h, w],
                data,
                labels,
            })
        };
        let spawned = std::thread::Builder::new()
            .name(thread_name)
            .spawn(move || loop {
                let msg = produce();
                let failed = msg.is_err();
                if tx.send(msg).is_err() || failed {
                    return;
                }
            });
        if let Err(e) = spawned {
            bail!("cannot start the prefetch thread: {e}");
        }
        self.rx = Some(rx);
        self.recycle = Some(recycle_tx);
        Ok(())
    }

    /// Waits for the next batch and copies it into `top[0]` (data) and `top[1]` (labels),
    /// reshaping them to the batch; `source` names the input in error messages.
    pub fn forward(&mut self, cx: &Ctx, top: &[BlobRef], source: &str) -> Result<()> {
        let Some(rx) = &self.rx else {
            bail!("the data layer was not set up")
        };
        let start = Instant::now();
        let batch = match rx.recv() {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => bail!("reading `{source}`: {e}"),
            Err(_) => bail!("the prefetch thread for `{source}` stopped"),
        };
        self.waited += start.elapsed();
        self.batches += 1;
        top[0].reshape(cx.engine, &batch.shape);
        top[0].set_data(cx.engine, &batch.data);
        if let Some(t) = top.get(1) {
            t.reshape(cx.engine, &[batch.shape[0]]);
            t.set_data(cx.engine, &batch.labels);
        }
        if let Some(r) = &self.recycle {
            let _ = r.try_send(batch.data);
        }
        Ok(())
    }

    /// Total time forward() spent blocked on the prefetcher.
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// Batches served so far.
    pub fn batches(&self) -> usize {
        self.batches
    }
}
