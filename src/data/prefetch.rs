//! The prefetch thread both data layers use: it reads raw items in order, decodes them on all
//! cores, crops and mirrors them and queues whole batches. Raw uint8 items travel as bytes and
//! the engine finishes them ((byte - mean) × scale) in its own memory, so a GPU receives a
//! quarter of the bytes; float items are transformed completely on the host.

use crate::blob::BlobRef;
use crate::engine::{Buffer, ByteBatch, Engine};
use crate::layers::Ctx;
use crate::{bail, Result};
use crema_data_tools::Transformer;
use crema_proto::caffe::Datum;
use rayon::prelude::*;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::time::{Duration, Instant};

/// One prefetched batch in host memory.
struct Batch {
    /// N × C × H × W, from the batch's first item (Caffe reshapes per batch, so a batch of one
    /// may change size from batch to batch).
    shape: [usize; 4],
    pixels: Pixels,
    labels: Vec<f32>,
}

/// A batch's values: transformed floats, or crops as bytes for the engine to finish.
enum Pixels {
    Floats(Vec<f32>),
    Bytes {
        bytes: Vec<u8>,
        /// Per item: crop row offset, column offset, 1 if mirrored.
        places: Vec<[i32; 3]>,
        /// Height and width of the uncropped items.
        source: (usize, usize),
        /// `mean_value` per channel (empty without).
        channel_means: Vec<f32>,
    },
}

impl Pixels {
    fn len(&self) -> usize {
        match self {
            Pixels::Floats(v) => v.len(),
            Pixels::Bytes { bytes, .. } => bytes.len(),
        }
    }
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
    recycle: Option<SyncSender<Pixels>>,
    /// The transformer's mean image (C × H × W of the uncropped items), and its copy in the
    /// engine's memory once a byte batch needed it.
    mean_image: Option<Vec<f32>>,
    mean_on_engine: Option<Buffer>,
    /// The engine's copy of the last batch's per-channel means, and the values it holds.
    channel_means_on_engine: Option<(Vec<f32>, Buffer)>,
    /// The transformer's `scale`.
    scale: f32,
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
        self.mean_image = transformer.mean_image().map(|m| m.data.clone());
        self.scale = transformer.scale();
        self.mean_on_engine = None;
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
        let (recycle_tx, recycle_rx) = sync_channel::<Pixels>(depth.max(1) + 1);
        let mut spread = Spread::default();
        let mut produce = move || -> BatchResult {
            let t0 = Instant::now();
            let mut names = Vec::with_capacity(batch);
            let mut items = Vec::with_capacity(batch);
            for _ in 0..batch {
                let (name, item) = next()?;
                names.push(name);
                items.push(item);
            }
            let read = t0.elapsed();
            let serial = spread.serial();
            // Decoding is the costly part: spread it over the cores, unless handing a batch to
            // the pool costs more than its work (small raw items: MNIST, CIFAR).
            let datums: Vec<Datum> = if serial {
                items
                    .into_iter()
                    .map(&decode)
                    .collect::<std::result::Result<_, _>>()
            } else {
                pool.install(|| {
                    items
                        .into_par_iter()
                        .map(&decode)
                        .collect::<std::result::Result<_, _>>()
                })
            }?;
            let t1 = Instant::now();
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
            // Every element is written below, so a recycled buffer needs no clearing.
            let spare = recycle_rx
                .try_recv()
                .ok()
                .filter(|p| p.len() == batch * item);
            let raw = datums.iter().all(|d| !d.encoded() && !d.data().is_empty());
            let items = Items {
                datums: &datums,
                draws: &draws,
                names: &names,
                item,
            };
            let on = (!serial).then_some(&pool);
            let pixels = if raw {
                let mut bytes = match spare {
                    Some(Pixels::Bytes { bytes, .. }) => bytes,
                    _ => vec![0u8; batch * item],
                };
                items.fill(on, &mut bytes, |out, d, (h_off, w_off, mirror)| {
                    t.crop_bytes_at(d, out, h_off, w_off, mirror).map(|_| ())
                })?;
                Pixels::Bytes {
                    bytes,
                    places: draws
                        .iter()
                        .map(|&(h, w, m)| [h as i32, w as i32, m as i32])
                        .collect(),
                    source: (h0, w0),
                    channel_means: t.channel_means(c0).map_err(|e| e.to_string())?,
                }
            } else {
                let mut data = match spare {
                    Some(Pixels::Floats(v)) => v,
                    _ => vec![0.0f32; batch * item],
                };
                items.fill(on, &mut data, |out, d, (h_off, w_off, mirror)| {
                    t.transform_at(d, out, h_off, w_off, mirror)
                })?;
                Pixels::Floats(data)
            };
            spread.record(serial, t0.elapsed() - read);
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            tracing::debug!(
                "prefetched {batch} items in {:.1} ms ({}): {:.1} reading, {:.1} decoding, {:.1} transforming",
                ms(t0.elapsed()),
                if serial { "one thread" } else { "all cores" },
                ms(read),
                ms(t1 - t0 - read),
                ms(t1.elapsed())
            );
            Ok(Batch {
                shape: [batch, c, h, w],
                pixels,
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
        match &batch.pixels {
            Pixels::Floats(v) => top[0].set_data(cx.engine, v),
            Pixels::Bytes {
                bytes,
                places,
                source,
                channel_means,
            } => {
                let scale = self.scale;
                let (mean_image, channel_means) = self.means_on(cx.engine, channel_means);
                let finish = ByteBatch {
                    shape: batch.shape,
                    source: *source,
                    bytes,
                    places,
                    scale,
                };
                cx.engine
                    .finish_bytes(&finish, mean_image, channel_means, &mut top[0].data_mut());
            }
        }
        if let Some(t) = top.get(1) {
            t.reshape(cx.engine, &[batch.shape[0]]);
            t.set_data(cx.engine, &batch.labels);
        }
        if let Some(r) = &self.recycle {
            let _ = r.try_send(batch.pixels);
        }
        Ok(())
    }

    /// The mean image and the per-channel means (`values`) in the engine's memory, copied there
    /// the first time they are needed.
    fn means_on(
        &mut self,
        engine: &dyn Engine,
        values: &[f32],
    ) -> (Option<&Buffer>, Option<&Buffer>) {
        if let Some(m) = &self.mean_image {
            if self.mean_on_engine.is_none() {
                let mut b = engine.alloc(m.len());
                engine.upload(m, &mut b);
                self.mean_on_engine = Some(b);
            }
            return (self.mean_on_engine.as_ref(), None);
        }
        if values.is_empty() {
            return (None, None);
        }
        if self
            .channel_means_on_engine
            .as_ref()
            .map(|(v, _)| v.as_slice())
            != Some(values)
        {
            let mut b = engine.alloc(values.len());
            engine.upload(values, &mut b);
            self.channel_means_on_engine = Some((values.to_vec(), b));
        }
        (None, self.channel_means_on_engine.as_ref().map(|(_, b)| b))
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

/// Whether a batch is decoded and transformed on the prefetch thread alone or on all cores. Waking
/// the pool costs a few hundred microseconds, more than all the work of a batch of small raw items
/// (64 MNIST digits), yet a tiny share of a batch of JPEGs or 227×227 crops. So one thread is
/// tried only where all cores take under [`Spread::SMALL`] a batch: the first batches then
/// alternate between the two ways, the one with the lower running mean is taken, and the other
/// is tried again now and then in case the items change.
#[derive(Default)]
struct Spread {
    /// Running mean (decode + transform) in seconds per way: [all cores, one thread].
    mean: [f64; 2],
    tries: [usize; 2],
    batches: usize,
}

impl Spread {
    /// Batches each way before choosing.
    const PROBE: usize = 4;
    /// Batches between two tries of the way not taken.
    const RETRY: usize = 100;
    /// Seconds per batch on all cores above which one thread is not worth a try.
    const SMALL: f64 = 2e-3;

    fn serial(&mut self) -> bool {
        self.batches += 1;
        if self.tries[0] < Self::PROBE || self.mean[0] > Self::SMALL {
            return false;
        }
        if self.tries[1] < Self::PROBE {
            return true;
        }
        let faster_serial = self.mean[1] < self.mean[0];
        faster_serial != self.batches.is_multiple_of(Self::RETRY)
    }

    fn record(&mut self, serial: bool, took: Duration) {
        let k = serial as usize;
        let t = took.as_secs_f64();
        self.tries[k] += 1;
        // A plain mean while probing, then an exponential one that follows changes.
        let weight = (1.0 / self.tries[k] as f64).max(0.2);
        self.mean[k] += weight * (t - self.mean[k]);
    }
}

/// An item's crop row and column offsets and whether it is mirrored.
type Draw = (usize, usize, bool);

/// One batch's decoded items with their crop and flip draws and names (for errors), each to be
/// written into its `item`-long slice of a batch buffer.
struct Items<'a> {
    datums: &'a [Datum],
    draws: &'a [Draw],
    names: &'a [String],
    item: usize,
}

impl Items<'_> {
    /// Runs `f(slice, datum, draw)` for every item, on `pool` if given, else on this thread.
    fn fill<E: Send>(
        &self,
        pool: Option<&rayon::ThreadPool>,
        out: &mut [E],
        f: impl Fn(&mut [E], &Datum, Draw) -> crema_data_tools::Result<()> + Sync,
    ) -> std::result::Result<(), String> {
        type One<'a, E> = ((&'a mut [E], &'a Datum), (&'a Draw, &'a String));
        let one = |((out, d), (&draw, name)): One<E>| {
            f(out, d, draw).map_err(|e| format!("`{name}`: {e}"))
        };
        let n = self.item.max(1);
        match pool {
            Some(pool) => pool.install(|| {
                out.par_chunks_mut(n)
                    .zip(self.datums.par_iter())
                    .zip(self.draws.par_iter().zip(self.names.par_iter()))
                    .try_for_each(one)
            }),
            None => out
                .chunks_mut(n)
                .zip(self.datums.iter())
                .zip(self.draws.iter().zip(self.names.iter()))
                .try_for_each(one),
        }
    }
}
