//! Data feeding: the LMDB Data layer with a prefetch thread running Caffe's transformer.

use crate::blob::BlobRef;
use crate::layers::{Ctx, Layer, Phase};
use crate::{bail, Error, Result};
use crema_data_tools::{decode_datum, DatumReader, Transformer};
use crema_proto::caffe::data_parameter::Db;
use crema_proto::caffe::{DataParameter, LayerParameter, TransformationParameter};
use rayon::prelude::*;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::{Duration, Instant};

/// One prefetched batch, already transformed, in host memory.
struct Batch {
    data: Vec<f32>,
    labels: Vec<f32>,
}

type BatchResult = std::result::Result<Batch, String>;

/// Caffe's Data layer: reads Datums from an LMDB in key order, wrapping around.
pub struct DataLayer {
    name: String,
    p: DataParameter,
    transform: TransformationParameter,
    train: bool,
    /// Per-item (channels, height, width) after transformation.
    item: (usize, usize, usize),
    rx: Option<Receiver<BatchResult>>,
    waited: Duration,
    batches: usize,
}

impl DataLayer {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.data_param.clone().unwrap_or_default();
        if p.backend() != Db::Lmdb {
            bail!("data_param.backend LEVELDB is not supported; convert the data to LMDB (backend: LMDB)");
        }
        if p.source().is_empty() {
            bail!("data_param.source is empty; set it to the LMDB directory");
        }
        if p.batch_size() == 0 {
            bail!("data_param.batch_size must be positive");
        }
        Ok(Box::new(DataLayer {
            name: lp.name().to_string(),
            p,
            transform: lp.transform_param.clone().unwrap_or_default(),
            train: true,
            item: (0, 0, 0),
            rx: None,
            waited: Duration::ZERO,
            batches: 0,
        }))
    }

    /// Total time forward() spent blocked on the prefetcher, and how many batches it served.
    pub fn wait_stats(&self) -> (Duration, usize) {
        (self.waited, self.batches)
    }

    fn open(&self) -> Result<DatumReader> {
        let source = PathBuf::from(self.p.source());
        DatumReader::open(&source).map_err(|e| Error::msg(format!("data_param.source: {e}")))
    }

    /// Starts the prefetch thread after skipping `skip` items.
    fn start(&mut self, skip: usize) -> Result<()> {
        // Dropping the old receiver ends the old thread at its next send.
        self.rx = None;
        let mut reader = self.open()?;
        reader.skip(skip)?;
        let mut transformer = Transformer::new(&self.transform, self.train, crate::rng::next_seed())?;
        let batch = self.p.batch_size() as usize;
        let (c, h, w) = self.item;
        let item = c * h * w;
        let (tx, rx) = sync_channel(self.p.prefetch().max(1) as usize);
        let (force_color, force_gray) = (self.transform.force_color(), self.transform.force_gray());
        let mut produce = move || -> BatchResult {
            let mut datums = Vec::with_capacity(batch);
            for _ in 0..batch {
                datums.push(reader.next_datum().map_err(|e| e.to_string())?);
            }
            // Decoding (for encoded datums) is the costly part: spread it over the cores.
            let decoded: Vec<_> = datums
                .into_par_iter()
                .map(|d| if d.encoded() { decode_datum(&d, force_color, force_gray) } else { Ok(d) })
                .collect::<crema_data_tools::Result<_>>()
                .map_err(|e| e.to_string())?;
            let mut data = vec![0.0f32; batch * item];
            let mut labels = vec![0.0f32; batch];
            for (i, d) in decoded.iter().enumerate() {
                let (dc, dh, dw) =
                    transformer.output_shape(d.channels() as usize, d.height() as usize, d.width() as usize);
                if (dc, dh, dw) != (c, h, w) {
                    return Err(format!(
                        "an item has shape {}x{}x{} but the first had {c}x{h}x{w} after transformation; all items must have one size (resize them when converting)",
                        d.channels(), d.height(), d.width()
                    ));
                }
                transformer
                    .transform(d, &mut data[i * item..(i + 1) * item])
                    .map_err(|e| e.to_string())?;
                labels[i] = d.label() as f32;
            }
            Ok(Batch { data, labels })
        };
        let spawned = std::thread::Builder::new()
            .name(format!("prefetch-{}", self.name))
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
        Ok(())
    }
}

impl Layer for DataLayer {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((0, 0), (1, 2))
    }

    fn setup(&mut self, cx: &Ctx, _bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        self.train = cx.phase == Phase::Train;
        let tp = &self.transform;
        // The first datum fixes the blob shapes.
        let first = decode_datum(&self.open()?.next_datum()?, tp.force_color(), tp.force_gray())?;
        let probe = Transformer::new(tp, self.train, 0)?;
        self.item = probe.output_shape(first.channels() as usize, first.height() as usize, first.width() as usize);
        let (c, h, w) = self.item;
        let batch = self.p.batch_size() as usize;
        top[0].reshape(cx.engine, &[batch, c, h, w]);
        if let Some(t) = top.get(1) {
            t.reshape(cx.engine, &[batch]);
        }
        let skip = if self.p.rand_skip() > 0 {
            crate::rng::with(|g| rand::Rng::gen_range(g, 0..=self.p.rand_skip())) as usize
        } else {
            0
        };
        self.start(skip)
    }

    fn skip_batches(&mut self, n: usize) -> Result<()> {
        self.start(n * self.p.batch_size() as usize)
    }

    fn reshape(&mut self, _cx: &Ctx, _bottom: &[BlobRef], _top: &[BlobRef]) -> Result<()> {
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, _bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let Some(rx) = &self.rx else { bail!("the data layer was not set up") };
        let start = Instant::now();
        let batch = match rx.recv() {
            Ok(Ok(b)) => b,
            Ok(Err(e)) => bail!("reading `{}`: {e}", self.p.source()),
            Err(_) => bail!("the prefetch thread for `{}` stopped", self.p.source()),
        };
        self.waited += start.elapsed();
        self.batches += 1;
        top[0].set_data(cx.engine, &batch.data);
        if let Some(t) = top.get(1) {
            t.set_data(cx.engine, &batch.labels);
        }
        Ok(())
    }

    fn backward(&mut self, _cx: &Ctx, _top: &[BlobRef], _pd: &[bool], _bottom: &[BlobRef]) -> Result<()> {
        Ok(())
    }
}
