//! Caffe's Data layer: Datums from an LMDB in key order, wrapping around, prefetched.

use super::prefetch::Feed;
use crate::blob::BlobRef;
use crate::layers::{Ctx, Layer, Phase};
use crate::{bail, Error, Result};
use crema_data_tools::{decode_datum, DatumReader, Transformer};
use crema_proto::caffe::data_parameter::Db;
use crema_proto::caffe::{DataParameter, LayerParameter, TransformationParameter};
use std::path::PathBuf;
use std::time::Duration;

/// Caffe's Data layer: reads Datums from an LMDB in key order, wrapping around.
pub struct DataLayer {
    name: String,
    p: DataParameter,
    transform: TransformationParameter,
    train: bool,
    feed: Feed,
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
            feed: Feed::default(),
        }))
    }

    /// Total time forward() spent blocked on the prefetcher, and how many batches it served.
    pub fn wait_stats(&self) -> (Duration, usize) {
        (self.feed.waited(), self.feed.batches())
    }

    fn open(&self) -> Result<DatumReader> {
        let source = PathBuf::from(self.p.source());
        DatumReader::open(&source).map_err(|e| Error::msg(format!("data_param.source: {e}")))
    }

    /// Starts the prefetch thread after skipping `skip` of this worker's items. When training
    /// data-parallel, worker `r` of `n` reads items r, r + n, r + 2n, ... (Caffe's sharding); test
    /// nets run on one worker and read everything.
    fn start(&mut self, skip: usize) -> Result<()> {
        let mut reader = self.open()?;
        let shard = if self.train {
            crate::parallel::shard()
        } else {
            crate::parallel::Shard::default()
        };
        reader.skip(skip * shard.count + shard.rank)?;
        // The other workers' items are passed over in the LMDB without being copied.
        reader.set_stride(shard.count);
        let transformer = Transformer::new(&self.transform, self.train, crate::rng::next_seed())?;
        let (force_color, force_gray) = (self.transform.force_color(), self.transform.force_gray());
        // The reading thread only lists keys; the decoding threads copy each value out of the
        // LMDB as they parse it, several at once.
        let lookup = reader.keys_only();
        self.feed.start(
            format!("prefetch-{}", self.name),
            self.p.prefetch() as usize,
            self.p.batch_size() as usize,
            transformer,
            Box::new(move || {
                let key = reader.next_key().map_err(|e| e.to_string())?;
                Ok((String::from_utf8_lossy(&key).into_owned(), key))
            }),
            Box::new(move |key: Vec<u8>| {
                let d = lookup
                    .get(&key)
                    .map_err(|e| format!("key `{}`: {e}", String::from_utf8_lossy(&key)))?;
                if d.encoded() {
                    decode_datum(&d, force_color, force_gray).map_err(|e| e.to_string())
                } else {
                    Ok(d)
                }
            }),
        )
    }
}

impl Layer for DataLayer {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((0, 0), (1, 2))
    }

    fn setup(&mut self, cx: &Ctx, _bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        self.train = cx.phase == Phase::Train;
        let tp = &self.transform;
        // The first datum gives the blobs their first shape (each batch may reshape them).
        let first = decode_datum(
            &self.open()?.next_datum()?,
            tp.force_color(),
            tp.force_gray(),
        )?;
        let probe = Transformer::new(tp, self.train, 0)?;
        let (c, h, w) = probe.output_shape(
            first.channels() as usize,
            first.height() as usize,
            first.width() as usize,
        );
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
        self.feed.forward(cx, top, self.p.source())
    }

    fn backward(
        &mut self,
        _cx: &Ctx,
        _top: &[BlobRef],
        _pd: &[bool],
        _bottom: &[BlobRef],
    ) -> Result<()> {
        Ok(())
    }

    fn data_wait(&self) -> Option<Duration> {
        Some(self.feed.waited())
    }
}
