//! Caffe's ImageData layer: images named by a `path label` list file, decoded (and resized) on
//! the fly by the prefetch thread, optionally reshuffled every epoch.

use super::prefetch::Feed;
use crate::blob::BlobRef;
use crate::layers::{Ctx, Layer, Phase};
use crate::{bail, Error, Result};
use crema_data_tools::{load_image_datum, read_list_file, Transformer};
use crema_proto::caffe::{ImageDataParameter, LayerParameter, TransformationParameter};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Batches Caffe's prefetcher keeps ready.
const PREFETCH_DEPTH: usize = 4;

/// Where the layer is in its list: the order of the current epoch and the next position.
#[derive(Clone)]
struct ListCursor {
    lines: Arc<Vec<(String, i32)>>,
    order: Vec<usize>,
    pos: usize,
    /// Present with `shuffle`: reorders the list at the start of every epoch.
    rng: Option<StdRng>,
}

impl ListCursor {
    /// The next `(file, label)`, wrapping (and reshuffling) at the end of the list.
    fn next(&mut self) -> (String, i32) {
        if self.pos >= self.order.len() {
            tracing::debug!("Restarting data prefetching from start.");
            self.pos = 0;
            if let Some(rng) = &mut self.rng {
                self.order.shuffle(rng);
            }
        }
        let (file, label) = &self.lines[self.order[self.pos]];
        self.pos += 1;
        (file.clone(), *label)
    }
}

/// Caffe's ImageData layer (image_data_param: source, root_folder, batch_size, shuffle,
/// new_height/new_width, is_color, rand_skip; transform_param as for Data).
pub struct ImageDataLayer {
    name: String,
    p: ImageDataParameter,
    transform: TransformationParameter,
    train: bool,
    feed: Feed,
    /// The cursor as it stood after setup (shuffled, rand_skip applied): resuming replays from it.
    start_cursor: Option<ListCursor>,
}

impl ImageDataLayer {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.image_data_param.clone().unwrap_or_default();
        if p.source().is_empty() {
            bail!("image_data_param.source is empty; set it to a list file of `path label` lines");
        }
        if p.batch_size() == 0 {
            bail!("image_data_param.batch_size must be positive");
        }
        if (p.new_height() > 0) != (p.new_width() > 0) {
            bail!(
                "image_data_param: new_height ({}) and new_width ({}) must be set together (both 0 keeps each image's size)",
                p.new_height(),
                p.new_width()
            );
        }
        Ok(Box::new(ImageDataLayer {
            name: lp.name().to_string(),
            p,
            transform: lp.transform_param.clone().unwrap_or_default(),
            train: true,
            feed: Feed::default(),
            start_cursor: None,
        }))
    }

    /// The file a list entry names: root_folder prepended as Caffe does (plain concatenation),
    /// with the `/` Caffe users must otherwise remember added when root_folder is a folder.
    fn image_path(root: &str, file: &str) -> PathBuf {
        if !root.is_empty() && !root.ends_with('/') && std::path::Path::new(root).is_dir() {
            PathBuf::from(format!("{root}/{file}"))
        } else {
            PathBuf::from(format!("{root}{file}"))
        }
    }

    /// The worker whose share of the list this layer reads (see [`crate::parallel`]): training
    /// nets read every n-th image from their rank on; test nets (one worker) read them all.
    fn shard(&self) -> crate::parallel::Shard {
        if self.train {
            crate::parallel::shard()
        } else {
            crate::parallel::Shard::default()
        }
    }

    /// Starts the prefetch thread reading this worker's images from `cursor`.
    fn start(&mut self, mut cursor: ListCursor) -> Result<()> {
        let shard = self.shard();
        for _ in 0..shard.rank {
            cursor.next();
        }
        let transformer = Transformer::new(&self.transform, self.train, crate::rng::next_seed())?;
        let (h, w, color) = (self.p.new_height(), self.p.new_width(), self.p.is_color());
        let root = self.p.root_folder().to_string();
        self.feed.start(
            format!("prefetch-{}", self.name),
            PREFETCH_DEPTH,
            self.p.batch_size() as usize,
            transformer,
            Box::new(move || {
                let (file, label) = cursor.next();
                for _ in 1..shard.count {
                    cursor.next();
                }
                let path = Self::image_path(&root, &file);
                Ok((path.display().to_string(), (path, label)))
            }),
            Box::new(move |(path, label)| {
                load_image_datum(&path, label, h, w, color).map_err(|e| e.to_string())
            }),
        )
    }
}

impl Layer for ImageDataLayer {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((0, 0), (1, 2))
    }

    fn setup(&mut self, cx: &Ctx, _bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        self.train = cx.phase == Phase::Train;
        let source = self.p.source();
        let lines = read_list_file(std::path::Path::new(source))
            .map_err(|e| Error::msg(format!("image_data_param.source: {e}")))?;
        if lines.is_empty() {
            bail!("image_data_param.source `{source}` lists no images");
        }
        tracing::info!("A total of {} images.", lines.len());
        let mut cursor = ListCursor {
            order: (0..lines.len()).collect(),
            lines: Arc::new(lines),
            pos: 0,
            rng: None,
        };
        if self.p.shuffle() {
            tracing::info!("Shuffling data");
            // Workers sharing the list must share its order: they shuffle with one fixed seed
            // (their own generators differ by rank).
            let seed = if self.shard().count > 1 {
                0x5eed_1157 ^ cursor.order.len() as u64
            } else {
                crate::rng::next_seed()
            };
            let mut rng = StdRng::seed_from_u64(seed);
            cursor.order.shuffle(&mut rng);
            cursor.rng = Some(rng);
        }
        if self.p.rand_skip() > 0 {
            let skip =
                crate::rng::with(|g| rand::Rng::gen_range(g, 0..self.p.rand_skip())) as usize;
            tracing::info!("Skipping first {skip} data points.");
            if skip >= cursor.order.len() {
                bail!(
                    "image_data_param.rand_skip {} may skip past the {} images of `{source}`; lower it",
                    self.p.rand_skip(),
                    cursor.order.len()
                );
            }
            cursor.pos = skip;
        }
        // The first image gives the blobs their first shape (each batch may reshape them).
        let (file, label) = cursor.clone().next();
        let path = Self::image_path(self.p.root_folder(), &file);
        let first = load_image_datum(
            &path,
            label,
            self.p.new_height(),
            self.p.new_width(),
            self.p.is_color(),
        )
        .map_err(|e| Error::msg(format!("image_data_param (source `{source}`): {e}")))?;
        let probe = Transformer::new(&self.transform, self.train, 0)?;
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
        self.start_cursor = Some(cursor.clone());
        self.start(cursor)
    }

    fn skip_batches(&mut self, n: usize) -> Result<()> {
        let Some(mut cursor) = self.start_cursor.clone() else {
            bail!("the data layer was not set up");
        };
        for _ in 0..n * self.p.batch_size() as usize * self.shard().count {
            cursor.next();
        }
        self.start(cursor)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cursor(n: usize, seed: Option<u64>) -> ListCursor {
        ListCursor {
            lines: Arc::new((0..n).map(|i| (format!("{i}.png"), i as i32)).collect()),
            order: (0..n).collect(),
            pos: 0,
            rng: seed.map(StdRng::seed_from_u64),
        }
    }

    #[test]
    fn cursor_wraps_and_reshuffles_each_epoch() {
        let mut plain = cursor(3, None);
        let labels: Vec<i32> = (0..7).map(|_| plain.next().1).collect();
        assert_eq!(labels, [0, 1, 2, 0, 1, 2, 0]);
        let mut shuffled = cursor(50, Some(3));
        let epoch = |c: &mut ListCursor| -> Vec<i32> { (0..50).map(|_| c.next().1).collect() };
        let (first, second) = (epoch(&mut shuffled), epoch(&mut shuffled));
        // The first epoch is in list order here (setup shuffles before the first read); the
        // second is a permutation of it, and a different one.
        let mut sorted = second.clone();
        sorted.sort();
        assert_eq!(sorted, first);
        assert_ne!(first, second);
    }

    #[test]
    fn root_folder_is_prepended_as_in_caffe() {
        let dir = std::env::temp_dir();
        let root = dir.to_string_lossy().trim_end_matches('/').to_string();
        assert_eq!(
            ImageDataLayer::image_path(&root, "a.png"),
            PathBuf::from(format!("{root}/a.png"))
        );
        assert_eq!(
            ImageDataLayer::image_path(&format!("{root}/"), "a.png"),
            PathBuf::from(format!("{root}/a.png"))
        );
        assert_eq!(
            ImageDataLayer::image_path("", "x/a.png"),
            PathBuf::from("x/a.png")
        );
        assert_eq!(
            ImageDataLayer::image_path("/no/such/img_", "a.png"),
            PathBuf::from("/no/such/img_a.png")
        );
    }
}
