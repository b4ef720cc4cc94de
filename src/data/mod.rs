//! Data feeding: the LMDB Data layer and the ImageData layer, both fed by one prefetch thread
//! running Caffe's transformer.

mod data_layer;
mod image_data;
mod prefetch;

pub use data_layer::DataLayer;
pub use image_data::ImageDataLayer;
