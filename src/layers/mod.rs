//! Layers: one file per layer family; the registry maps a prototxt `type` to a constructor.
//!
//! A layer computes only through [`Engine`] operations, so it runs on every engine unchanged.

use crate::blob::BlobRef;
use crate::engine::{Activation, Buffer, Engine};
use crate::{bail, Result};
use crema_proto::caffe::LayerParameter;
use std::rc::Rc;

mod accuracy;
mod argmax;
mod batch_norm;
mod contrastive_loss;
mod conv;
mod crop;
mod deconv;
mod eltwise;
mod embed;
mod hdf5;
mod hinge_loss;
mod im2col;
mod inner_product;
mod input;
mod logistic_loss;
mod loss;
mod lrn;
mod lstm_unit;
mod mvn;
mod neuron;
mod normalization;
mod parameter;
mod pooling;
mod prelu;
mod recurrent;
mod reduction;
mod rows;
mod scale;
mod shape;
mod sigmoid_loss;
mod softmax;
mod spp;
mod tile;
mod work;

/// Training or testing, as in Caffe's `Phase`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Train,
    Test,
}

impl Phase {
    /// Caffe's name for the phase.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Train => "TRAIN",
            Phase::Test => "TEST",
        }
    }
}

/// What a layer sees of its surroundings while it runs.
pub struct Ctx<'a> {
    pub engine: &'a dyn Engine,
    pub phase: Phase,
}

/// One computation step of a net.
pub trait Layer {
    /// One-time setup with the bottoms' first shapes: checks parameters, creates learnable blobs.
    fn setup(&mut self, _cx: &Ctx, _bottom: &[BlobRef], _top: &[BlobRef]) -> Result<()> {
        Ok(())
    }
    /// Sets the tops' shapes from the bottoms' shapes.
    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()>;
    /// Computes the tops from the bottoms.
    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()>;
    /// Computes bottom diffs (where `propagate_down`) and accumulates parameter diffs.
    fn backward(
        &mut self,
        cx: &Ctx,
        top: &[BlobRef],
        propagate_down: &[bool],
        bottom: &[BlobRef],
    ) -> Result<()>;
    /// The learnable blobs (weights, biases); the net may replace entries to share them.
    fn blobs(&mut self) -> &mut [BlobRef] {
        &mut []
    }
    /// Loss layers give their first top a default loss_weight of 1.
    fn is_loss(&self) -> bool {
        false
    }
    /// Whether force_backward may request a gradient for this bottom (not for labels).
    fn allow_force_backward(&self, _bottom: usize) -> bool {
        true
    }
    /// Data layers skip `n` batches of their input (used when resuming); others ignore it.
    fn skip_batches(&mut self, _n: usize) -> Result<()> {
        Ok(())
    }
    /// Allowed (min, max) numbers of bottoms and tops, checked by the net.
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((0, usize::MAX), (0, usize::MAX))
    }
    /// Data layers: total time forward() has waited for input so far (a starving net shows here).
    fn data_wait(&self) -> Option<std::time::Duration> {
        None
    }
    /// Whether forward and backward may be recorded into an engine graph and replayed: they
    /// then neither wait for the host nor change anything the host keeps between iterations
    /// (no random draws counted on the host, no host-side counters) once shapes are set. Opt-in.
    fn graph_safe(&self) -> bool {
        false
    }
    /// A per-channel affine layer (Scale with a learned factor and bias) that may run whole
    /// as part of the layer producing its input: its (factor, bias) blobs.
    fn fusable_affine(&self) -> Option<(BlobRef, BlobRef)> {
        None
    }
    /// Asks this layer to apply y = y·γ[c] + β[c] to its only top at the end of its forward
    /// pass, for an in-place affine layer right after it whose forward and backward the net
    /// then skips: this layer's backward computes γ's and β's gradients as well. True if it
    /// will.
    fn absorb_affine(&mut self, _gamma: BlobRef, _beta: BlobRef) -> bool {
        false
    }
    /// An elementwise layer that may run as part of the layer producing its input: its
    /// activation, if applying it to that layer's output is all its forward pass does.
    fn fusable_activation(&self) -> Option<Activation> {
        None
    }
    /// Asks this layer to apply `act` to its only top at the end of its forward pass, for an
    /// in-place activation layer right after it whose forward the net then skips (its backward
    /// still runs). A layer accepts only if its backward pass does not read its top's data.
    /// True if it will.
    fn absorb_activation(&mut self, _act: Activation) -> bool {
        false
    }
    /// Whether the tops may hold the very data of the first bottom (Split): the net then
    /// creates them so, unless some layer later writes one of them in place, and the layer's
    /// forward pass leaves them as they are. Gradients stay separate.
    fn shares_bottom_data(&self) -> bool {
        false
    }
    /// Asks a layer that applies an absorbed activation (see [`Layer::absorb_activation`]) to
    /// run that activation's backward pass as part of its own, so the net skips it: the
    /// gradient that reaches this layer's top is then the activation's output gradient. True if
    /// it will.
    fn absorb_activation_backward(&mut self) -> bool {
        false
    }
    /// After a non-finite loss: what this layer saw that explains it, if anything (a layer
    /// running inside a graph cannot stop the run at the moment it sees bad input).
    fn diagnose(&self, _cx: &Ctx) -> Option<String> {
        None
    }
}

type Constructor = fn(&LayerParameter) -> Result<Box<dyn Layer>>;

/// Every layer type crema knows, by the `type` string Caffe uses.
fn registry() -> &'static [(&'static str, Constructor)] {
    &[
        ("Accuracy", accuracy::Accuracy::create),
        ("AbsVal", neuron::Neuron::create),
        ("ArgMax", argmax::ArgMax::create),
        ("BNLL", neuron::Neuron::create),
        ("BatchNorm", batch_norm::BatchNorm::create),
        ("BatchReindex", rows::BatchReindex::create),
        ("Bias", scale::Bias::create),
        ("Clip", neuron::Neuron::create),
        ("Concat", shape::Concat::create),
        ("ContrastiveLoss", contrastive_loss::ContrastiveLoss::create),
        ("Convolution", conv::Convolution::create),
        ("Crop", crop::Crop::create),
        ("Data", crate::data::DataLayer::create),
        ("Deconvolution", deconv::Deconvolution::create),
        ("Dropout", neuron::Dropout::create),
        ("DummyData", input::DummyData::create),
        ("ELU", neuron::Neuron::create),
        ("Eltwise", eltwise::Eltwise::create),
        ("Embed", embed::Embed::create),
        ("EuclideanLoss", loss::EuclideanLoss::create),
        ("Exp", neuron::Neuron::create),
        ("Filter", rows::Filter::create),
        ("Flatten", shape::Flatten::create),
        ("HDF5Data", hdf5::create_data),
        ("HDF5Output", hdf5::create_output),
        ("HingeLoss", hinge_loss::HingeLoss::create),
        ("Im2col", im2col::Im2col::create),
        ("ImageData", crate::data::ImageDataLayer::create),
        ("InfogainLoss", logistic_loss::InfogainLoss::create),
        ("InnerProduct", inner_product::InnerProduct::create),
        ("Input", input::Input::create),
        ("LRN", lrn::Lrn::create),
        ("LSTM", recurrent::Recurrent::create),
        ("LSTMUnit", lstm_unit::LstmUnit::create),
        ("Log", neuron::Neuron::create),
        ("MVN", mvn::Mvn::create),
        (
            "MultinomialLogisticLoss",
            logistic_loss::MultinomialLogisticLoss::create,
        ),
        ("Parameter", parameter::Parameter::create),
        ("Pooling", pooling::Pooling::create),
        ("PReLU", prelu::PRelu::create),
        ("Power", neuron::Neuron::create),
        ("RNN", recurrent::Recurrent::create),
        ("Reduction", reduction::Reduction::create),
        ("ReLU", neuron::Neuron::create),
        ("Reshape", shape::Reshape::create),
        ("SPP", spp::Spp::create),
        ("Scale", scale::Scale::create),
        ("Sigmoid", neuron::Neuron::create),
        (
            "SigmoidCrossEntropyLoss",
            sigmoid_loss::SigmoidCrossEntropyLoss::create,
        ),
        ("Silence", shape::Silence::create),
        ("Slice", shape::Slice::create),
        ("Softmax", softmax::Softmax::create),
        ("SoftmaxWithLoss", softmax::SoftmaxWithLoss::create),
        ("Split", shape::Split::create),
        ("Swish", neuron::Neuron::create),
        ("TanH", neuron::Neuron::create),
        ("Threshold", neuron::Neuron::create),
        ("Tile", tile::Tile::create),
    ]
}

/// Names of every registered layer type.
pub fn layer_types() -> Vec<&'static str> {
    registry().iter().map(|(n, _)| *n).collect()
}

/// Builds the layer for a LayerParameter, or explains which types exist.
pub fn create_layer(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
    let ty = lp.r#type();
    if let Some((_, ctor)) = registry().iter().find(|(n, _)| *n == ty) {
        return ctor(lp);
    }
    let names = layer_types();
    let closest = names
        .iter()
        .map(|n| (levenshtein(&n.to_lowercase(), &ty.to_lowercase()), *n))
        .min();
    let hint = match closest {
        Some((d, n)) if d <= 3 => format!("did you mean `{n}`? "),
        _ => String::new(),
    };
    bail!(
        "unknown layer type `{ty}`; {hint}known types: {}",
        names.join(", ")
    )
}

/// Edit distance, for "did you mean" suggestions.
pub fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// True when a layer runs in place (its top is its bottom).
pub fn in_place(bottom: &BlobRef, top: &BlobRef) -> bool {
    Rc::ptr_eq(bottom, top)
}

/// Calls `f(x, y)` with the bottom's data as `x` (None when in place) and the top's data as `y`.
pub fn with_in_out<R>(
    bottom: &BlobRef,
    top: &BlobRef,
    f: impl FnOnce(Option<&Buffer>, &mut Buffer) -> R,
) -> R {
    if in_place(bottom, top) {
        f(None, &mut top.data_mut())
    } else {
        f(Some(&bottom.data()), &mut top.data_mut())
    }
}

/// Calls `f(dy, dx)` with the top's diff as `dy` (None when in place) and the bottom's diff as `dx`.
pub fn with_diff_in_out<R>(
    top: &BlobRef,
    bottom: &BlobRef,
    f: impl FnOnce(Option<&Buffer>, &mut Buffer) -> R,
) -> R {
    if in_place(bottom, top) {
        f(None, &mut bottom.diff_mut())
    } else {
        f(Some(&top.diff()), &mut bottom.diff_mut())
    }
}

/// Resolves a possibly negative axis index against `num_axes` (Caffe's CanonicalAxisIndex).
pub fn canonical_axis(axis: i32, num_axes: usize, what: &str) -> Result<usize> {
    let n = num_axes as i32;
    if axis < -n || axis >= n.max(1) {
        bail!("{what} axis {axis} is out of range for a blob with {num_axes} axes");
    }
    Ok(if axis < 0 {
        (axis + n) as usize
    } else {
        axis as usize
    })
}

/// Product of shape[start..end].
pub fn count(shape: &[usize], start: usize, end: usize) -> usize {
    shape[start.min(shape.len())..end.min(shape.len())]
        .iter()
        .product()
}
