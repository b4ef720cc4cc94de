//! Dataset tools for crema: image folders and MNIST to LMDBs of Caffe `Datum`s, mean images,
//! and Caffe's data transformer (crop, mirror, mean subtraction, scale).
pub mod error;
pub mod image_io;
pub mod imageset;
pub mod lmdb;
pub mod mean;
pub mod mnist;
pub mod synth;
pub mod transform;

pub use error::{DataError, Result};
pub use image_io::decode_datum;
pub use imageset::{
    convert_imageset, load_image_datum, read_list_file, ConvertOptions, ConvertSummary,
};
pub use lmdb::{parse_datum, read_all, DatumLookup, DatumReader, DatumWriter};
pub use mean::{compute_image_mean, load_mean, write_mean, MeanImage};
pub use mnist::convert_mnist;
pub use transform::Transformer;
