//! HDF5Data and HDF5Output (Caffe's HDF5 layers). They need the system HDF5 library, so they are
//! built only with the cargo feature `hdf5` (`cargo build --features hdf5`, with libhdf5-dev or
//! HDF5_DIR installed); without it both types exist and explain how to get them.

use super::Layer;
use crate::Result;
use crema_proto::caffe::LayerParameter;

#[cfg(not(feature = "hdf5"))]
fn without_feature(kind: &str) -> Result<Box<dyn Layer>> {
    crate::bail!(
        "{kind} needs crema built with HDF5 support: install the HDF5 library (e.g. libhdf5-dev) and rebuild with `cargo build --release --features hdf5`"
    )
}

/// HDF5Data: batches of rows from the datasets named like the tops, in the .h5 files listed in
/// `hdf5_data_param.source`, file after file (shuffled when `shuffle`).
pub fn create_data(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
    #[cfg(feature = "hdf5")]
    {
        imp::Hdf5Data::create(lp)
    }
    #[cfg(not(feature = "hdf5"))]
    {
        let _ = lp;
        without_feature("HDF5Data")
    }
}

/// HDF5Output: writes its two bottoms as the datasets "data" and "label" of
/// `hdf5_output_param.file_name` (the latest batch).
pub fn create_output(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
    #[cfg(feature = "hdf5")]
    {
        imp::Hdf5Output::create(lp)
    }
    #[cfg(not(feature = "hdf5"))]
    {
        let _ = lp;
        without_feature("HDF5Output")
    }
}

#[cfg(feature = "hdf5")]
mod imp {
    use super::super::{Ctx, Layer};
    use crate::blob::BlobRef;
    use crate::{bail, Error, Result};
    use crema_proto::caffe::LayerParameter;
    use rand::seq::SliceRandom;
    use std::path::{Path, PathBuf};

    fn h5err(what: &str, path: &Path, e: hdf5_metno::Error) -> Error {
        Error::msg(format!("{what} `{}`: {e}", path.display()))
    }

    /// One loaded file: per top, the dataset's shape and values.
    struct Loaded {
        sets: Vec<(Vec<usize>, Vec<f32>)>,
        rows: usize,
    }

    pub struct Hdf5Data {
        source: String,
        batch: usize,
        shuffle: bool,
        names: Vec<String>,
        files: Vec<PathBuf>,
        file_order: Vec<usize>,
        current_file: usize,
        loaded: Option<Loaded>,
        row_order: Vec<usize>,
        current_row: usize,
    }

    impl Hdf5Data {
        pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
            let p = lp.hdf5_data_param.clone().unwrap_or_default();
            if p.batch_size() == 0 {
                bail!("hdf5_data_param.batch_size must be positive");
            }
            if lp.top.is_empty() {
                bail!("needs at least one top; each top reads the dataset of its name");
            }
            Ok(Box::new(Hdf5Data {
                source: p.source().to_string(),
                batch: p.batch_size() as usize,
                shuffle: p.shuffle(),
                names: lp.top.clone(),
                files: vec![],
                file_order: vec![],
                current_file: 0,
                loaded: None,
                row_order: vec![],
                current_row: 0,
            }))
        }

        fn load(&mut self, file: usize) -> Result<()> {
            let path = &self.files[self.file_order[file]];
            let f = hdf5_metno::File::open(path)
                .map_err(|e| h5err("cannot open HDF5 file", path, e))?;
            let mut sets = vec![];
            for name in &self.names {
                let ds = f.dataset(name).map_err(|e| {
                    h5err(
                        &format!("no dataset `{name}` (named by the top) in"),
                        path,
                        e,
                    )
                })?;
                let shape = ds.shape();
                if shape.is_empty() {
                    bail!(
                        "dataset `{name}` of `{}` is a scalar; it needs rows",
                        path.display()
                    );
                }
                let values = ds.read_raw::<f32>().map_err(|e| {
                    h5err(
                        &format!("cannot read dataset `{name}` as floats from"),
                        path,
                        e,
                    )
                })?;
                sets.push((shape, values));
            }
            let rows = sets[0].0[0];
            if let Some((s, _)) = sets.iter().find(|(s, _)| s[0] != rows) {
                bail!(
                    "datasets of `{}` have different numbers of rows ({rows} and {})",
                    path.display(),
                    s[0]
                );
            }
            if rows == 0 {
                bail!("`{}` has no rows", path.display());
            }
            self.row_order = (0..rows).collect();
            if self.shuffle {
                crate::rng::with(|r| self.row_order.shuffle(r));
            }
            self.loaded = Some(Loaded { sets, rows });
            self.current_row = 0;
            Ok(())
        }

        fn next(&mut self) -> Result<()> {
            self.current_row += 1;
            let rows = self.loaded.as_ref().map_or(0, |l| l.rows);
            if self.current_row < rows {
                return Ok(());
            }
            if self.files.len() > 1 {
                self.current_file += 1;
                if self.current_file == self.files.len() {
                    self.current_file = 0;
                    if self.shuffle {
                        crate::rng::with(|r| self.file_order.shuffle(r));
                    }
                }
                self.load(self.current_file)
            } else {
                self.current_row = 0;
                if self.shuffle {
                    crate::rng::with(|r| self.row_order.shuffle(r));
                }
                Ok(())
            }
        }
    }

    impl Layer for Hdf5Data {
        fn arity(&self) -> ((usize, usize), (usize, usize)) {
            ((0, 0), (1, usize::MAX))
        }

        fn setup(&mut self, _cx: &Ctx, _bottom: &[BlobRef], _top: &[BlobRef]) -> Result<()> {
            let src = Path::new(&self.source);
            let list = std::fs::read_to_string(src)
                .map_err(|e| Error::io("hdf5_data_param.source", src, e))?;
            self.files = list
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(PathBuf::from)
                .collect();
            if self.files.is_empty() {
                bail!("hdf5_data_param.source `{}` lists no files", self.source);
            }
            self.file_order = (0..self.files.len()).collect();
            if self.shuffle {
                crate::rng::with(|r| self.file_order.shuffle(r));
            }
            self.current_file = 0;
            self.load(0)
        }

        fn reshape(&mut self, cx: &Ctx, _bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
            let Some(l) = &self.loaded else {
                bail!("no HDF5 file loaded")
            };
            for (t, (shape, _)) in top.iter().zip(&l.sets) {
                let mut s = shape.clone();
                s[0] = self.batch;
                t.reshape(cx.engine, &s);
            }
            Ok(())
        }

        fn forward(&mut self, cx: &Ctx, _bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
            let mut out: Vec<Vec<f32>> =
                top.iter().map(|t| Vec::with_capacity(t.count())).collect();
            for _ in 0..self.batch {
                let Some(l) = &self.loaded else {
                    bail!("no HDF5 file loaded")
                };
                let row = self.row_order[self.current_row];
                for (o, (shape, values)) in out.iter_mut().zip(&l.sets) {
                    let dim: usize = shape[1..].iter().product();
                    o.extend_from_slice(&values[row * dim..(row + 1) * dim]);
                }
                self.next()?;
            }
            for (t, o) in top.iter().zip(&out) {
                if o.len() != t.count() {
                    bail!(
                        "the datasets changed shape between files ({} values for a top of {})",
                        o.len(),
                        t.count()
                    );
                }
                t.set_data(cx.engine, o);
            }
            Ok(())
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

        fn skip_batches(&mut self, n: usize) -> Result<()> {
            for _ in 0..n * self.batch {
                self.next()?;
            }
            Ok(())
        }
    }

    pub struct Hdf5Output {
        file: PathBuf,
    }

    impl Hdf5Output {
        pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
            let p = lp.hdf5_output_param.clone().unwrap_or_default();
            if p.file_name().is_empty() {
                bail!("hdf5_output_param.file_name must be given");
            }
            Ok(Box::new(Hdf5Output {
                file: PathBuf::from(p.file_name()),
            }))
        }
    }

    impl Layer for Hdf5Output {
        fn arity(&self) -> ((usize, usize), (usize, usize)) {
            ((2, 2), (0, 0))
        }
        fn allow_force_backward(&self, _bottom: usize) -> bool {
            false
        }

        fn reshape(&mut self, _cx: &Ctx, _bottom: &[BlobRef], _top: &[BlobRef]) -> Result<()> {
            Ok(())
        }

        fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], _top: &[BlobRef]) -> Result<()> {
            let path = &self.file;
            let f = hdf5_metno::File::create(path)
                .map_err(|e| h5err("cannot create HDF5 file", path, e))?;
            for (name, b) in ["data", "label"].iter().zip(bottom) {
                let ds = f
                    .new_dataset::<f32>()
                    .shape(b.shape())
                    .create(*name)
                    .map_err(|e| h5err(&format!("cannot create dataset `{name}` in"), path, e))?;
                ds.write_raw(&b.data_to_vec(cx.engine))
                    .map_err(|e| h5err(&format!("cannot write dataset `{name}` to"), path, e))?;
            }
            Ok(())
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
    }
}
