//! crema: a Caffe-compatible deep-learning trainer.
//!
//! Prototxt nets are parsed into a layer graph ([`net::Net`]) whose layers compute through an
//! [`engine::Engine`]; [`solver::Solver`] trains them and writes Caffe-format snapshots.

pub mod blob;
pub mod classify;
pub mod curves;
pub mod data;
pub mod engine;
pub mod error;
pub mod features;
pub mod filler;
pub mod layers;
pub mod net;
pub mod parallel;
pub mod rng;
pub mod solver;
pub mod training_log;
pub mod upgrade;

pub use error::{Error, Result};
