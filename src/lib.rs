//! crema: a Caffe-compatible deep-learning trainer.
