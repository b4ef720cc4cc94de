//! Net: a layer graph built from a NetParameter with Caffe's semantics, run forward and backward.

mod filter;
mod split;
pub mod substitute;
mod summary;
pub mod weights;

pub use filter::{filter_net, layer_included, meets_rule, State};
pub use split::insert_splits;
pub use summary::{LayerSummary, NetSummary};

use crate::blob::{Blob, BlobRef};
use crate::engine::{Engine, Pending};
use crate::layers::{create_layer, Ctx, Layer, Phase};
use crate::solver::lr::fmt_g;
use crate::{bail, Error, Result};
use crema_proto::caffe::param_spec::DimCheckMode;
use crema_proto::caffe::{LayerParameter, NetParameter};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use tracing::info;

/// One layer in the net with its wiring.
pub struct LayerSlot {
    pub name: String,
    pub kind: String,
    pub param: LayerParameter,
    pub layer: Box<dyn Layer>,
    pub bottoms: Vec<usize>,
    pub tops: Vec<usize>,
    /// Loss weight per top (0 for non-loss tops).
    pub loss_weights: Vec<f32>,
    pub need_backward: bool,
    pub bottom_need_backward: Vec<bool>,
    /// The layer's learnable blobs after sharing (the same handles the layer holds).
    pub blobs: Vec<BlobRef>,
    /// Whether the layer that produces its input runs it (see [`Net::fuse`]).
    pub fused: Fused,
}

/// How much of a layer another one runs for it (see [`Net::fuse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fused {
    #[default]
    No,
    /// An in-place activation: its forward is skipped, its backward runs.
    Forward,
    /// An in-place layer the layer at `into` runs whole (a Scale folded into a BatchNorm, a ReLU
    /// whose backward pass runs in its producer's): neither of its passes runs on its own.
    Whole { into: usize },
}

/// A learnable parameter blob with its multipliers.
pub struct Param {
    pub blob: BlobRef,
    pub lr_mult: f32,
    pub decay_mult: f32,
    /// "layer.index" for logs.
    pub label: String,
}

/// A built network.
pub struct Net {
    pub name: String,
    pub phase: Phase,
    engine: Rc<dyn Engine>,
    layers: Vec<LayerSlot>,
    blobs: Vec<BlobRef>,
    blob_names: Vec<String>,
    outputs: Vec<usize>,
    params: Vec<Param>,
    /// Log per-layer mean |data| and |diff| after every pass (Caffe's debug_info).
    pub debug_info: bool,
}

impl Net {
    /// Builds a net for a state from a parsed NetParameter (filtering, splits, setup).
    pub fn new(param: &NetParameter, state: &State, engine: Rc<dyn Engine>) -> Result<Net> {
        let param = crate::upgrade::upgrade_net(param)?;
        let precision = param.precision;
        let state = state.merged_with(param.state.as_ref());
        let filtered = filter_net(&param, &state)?;
        let param = insert_splits(&filtered);
        let name = param.name().to_string();
        info!("Initializing net `{name}` for phase {}", state.phase.name());
        if let Some(p) = precision {
            let tf32 = p == crema_proto::caffe::net_parameter::Precision::Tf32 as i32;
            engine.set_tf32(tf32);
            info!(
                "precision: {} asked by the net; {} math on {}",
                if tf32 { "TF32" } else { "STRICT_FP32" },
                if engine.tf32() { "TF32" } else { "strict fp32" },
                engine.name()
            );
        }
        let mut net = Net {
            name,
            phase: state.phase,
            engine,
            layers: vec![],
            blobs: vec![],
            blob_names: vec![],
            outputs: vec![],
            params: vec![],
            debug_info: param.debug_info(),
        };
        net.build(&param, param.force_backward())?;
        Ok(net)
    }

    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            engine: &*self.engine,
            phase: self.phase,
        }
    }

    fn build(&mut self, param: &NetParameter, force_backward: bool) -> Result<()> {
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut available: Vec<usize> = vec![];
        let mut blob_need_backward: Vec<bool> = vec![];
        let mut param_owner: HashMap<String, (usize, usize)> = HashMap::new();
        let mut layer_names = HashSet::new();
        let mut memory = 0usize;
        // Create every layer first so a wrong type or parameter anywhere is reported before any
        // layer opens files or allocates memory.
        let mut created = vec![];
        for lp in &param.layer {
            created.push(create_layer(lp).map_err(|e| e.in_layer(lp.name(), lp.r#type()))?);
        }
        // Blobs some layer overwrites in place: a Split top among them gets data of its own.
        let written_in_place: HashSet<&str> = param
            .layer
            .iter()
            .flat_map(|l| l.top.iter().zip(&l.bottom).filter(|(t, b)| t == b))
            .map(|(t, _)| t.as_str())
            .collect();
        for ((li, lp), mut layer) in param.layer.iter().enumerate().zip(created) {
            let lname = lp.name().to_string();
            let kind = lp.r#type().to_string();
            if !layer_names.insert(lname.clone()) && !lname.is_empty() {
                // Caffe accepts this (BVLC's mnist_autoencoder has two layers named `loss`);
                // only weights matched by name become ambiguous.
                tracing::warn!("two layers are named `{lname}`; weights are matched by layer name, so give them distinct names");
            }
            info!("Creating layer {lname}");
            let wrap = |e: Error| e.in_layer(&lname, &kind);
            // Bottoms must exist already.
            let mut bottoms = vec![];
            for (j, b) in lp.bottom.iter().enumerate() {
                let Some(&id) = by_name.get(b) else {
                    let known: Vec<&str> = self.blob_names.iter().map(|s| s.as_str()).collect();
                    bail!(
                        "layer `{lname}` (type {kind}): bottom {j} `{b}` is not produced by any earlier layer; known blobs: {}",
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    );
                };
                info!("{lname} <- {b}");
                bottoms.push(id);
                available.retain(|x| *x != id);
            }
            // Tops: in-place when the name matches the bottom at the same position.
            let mut tops = vec![];
            for (j, t) in lp.top.iter().enumerate() {
                let inplace = lp.bottom.get(j) == Some(t);
                let id = if inplace {
                    by_name[t]
                } else {
                    if by_name.contains_key(t) && !lp.bottom.contains(t) {
                        bail!("layer `{lname}` (type {kind}): top `{t}` is produced by more than one layer; rename one of them");
                    }
                    let id = self.blobs.len();
                    let blob = match bottoms.first() {
                        Some(&b)
                            if layer.shares_bottom_data()
                                && !written_in_place.contains(t.as_str()) =>
                        {
                            Blob::sharing_data(&*self.engine, &self.blobs[b])
                        }
                        _ => Blob::new_ref(&*self.engine, &[]),
                    };
                    self.blobs.push(blob);
                    self.blob_names.push(t.clone());
                    blob_need_backward.push(false);
                    by_name.insert(t.clone(), id);
                    id
                };
                info!("{lname} -> {t}");
                tops.push(id);
                available.push(id);
            }
            let ((bmin, bmax), (tmin, tmax)) = layer.arity();
            if lp.bottom.len() < bmin || lp.bottom.len() > bmax {
                bail!(
                    "layer `{lname}` (type {kind}): takes {} bottoms, got {}",
                    arity_text(bmin, bmax),
                    lp.bottom.len()
                );
            }
            if lp.top.len() < tmin || lp.top.len() > tmax {
                bail!(
                    "layer `{lname}` (type {kind}): produces {} tops, got {}",
                    arity_text(tmin, tmax),
                    lp.top.len()
                );
            }
            let bb: Vec<BlobRef> = bottoms.iter().map(|i| self.blobs[*i].clone()).collect();
            let tb: Vec<BlobRef> = tops.iter().map(|i| self.blobs[*i].clone()).collect();
            info!("Setting up {lname}");
            {
                let cx = self.ctx();
                layer.setup(&cx, &bb, &tb).map_err(wrap)?;
                layer.reshape(&cx, &bb, &tb).map_err(wrap)?;
            }
            let mut loss_weights = vec![];
            for (j, t) in tb.iter().enumerate() {
                let w = match lp.loss_weight.get(j) {
                    Some(w) => *w,
                    None if layer.is_loss() && j == 0 => 1.0,
                    None => 0.0,
                };
                info!("Top shape: {}", t.shape_string());
                if w != 0.0 {
                    info!("    with loss weight {w}");
                }
                memory += t.count();
                loss_weights.push(w);
            }
            if lp.loss_weight.len() > lp.top.len() {
                bail!(
                    "layer `{lname}` (type {kind}): {} loss_weight values for {} tops",
                    lp.loss_weight.len(),
                    lp.top.len()
                );
            }
            // Parameters, sharing by name.
            let nblobs = layer.blobs().len();
            if lp.param.len() > nblobs {
                bail!(
                    "layer `{lname}` (type {kind}): {} param specs but the layer has {nblobs} learnable blobs",
                    lp.param.len()
                );
            }
            let mut need_backward = false;
            for k in 0..nblobs {
                let mut spec = lp.param.get(k).cloned().unwrap_or_default();
                if kind == "BatchNorm" {
                    // Its blobs are running statistics, not weights: Caffe never lets the solver
                    // touch them, whatever the prototxt says.
                    spec.lr_mult = Some(0.0);
                    spec.decay_mult = Some(0.0);
                }
                let pname = spec.name().to_string();
                if spec.lr_mult() != 0.0 {
                    need_backward = true;
                }
                if !pname.is_empty() {
                    if let Some(&(owner_layer, owner_k)) = param_owner.get(&pname) {
                        let owner_idx = self.param_index(owner_layer, owner_k);
                        let owner = self.params[owner_idx].blob.clone();
                        let mine = layer.blobs()[k].clone();
                        let same = match spec.share_mode() {
                            DimCheckMode::Strict => owner.shape() == mine.shape(),
                            DimCheckMode::Permissive => owner.count() == mine.count(),
                        };
                        if !same {
                            bail!(
                                "layer `{lname}`: shared param `{pname}` has shape {:?} here but {:?} in its owner `{}`; make the layers match or use share_mode: PERMISSIVE",
                                mine.shape(), owner.shape(), self.layers[owner_layer].name
                            );
                        }
                        layer.blobs()[k] = owner;
                        continue;
                    }
                    param_owner.insert(pname, (li, k));
                }
                self.params.push(Param {
                    blob: layer.blobs()[k].clone(),
                    lr_mult: spec.lr_mult(),
                    decay_mult: spec.decay_mult(),
                    label: format!("{lname}.{k}"),
                });
            }
            let bottom_need_backward: Vec<bool> = bottoms
                .iter()
                .enumerate()
                .map(|(j, b)| match lp.propagate_down.get(j) {
                    Some(p) => *p,
                    None => blob_need_backward[*b],
                })
                .collect();
            if lp.propagate_down.len() > bottoms.len() {
                bail!(
                    "layer `{lname}`: {} propagate_down values for {} bottoms",
                    lp.propagate_down.len(),
                    bottoms.len()
                );
            }
            need_backward |= bottom_need_backward.iter().any(|b| *b);
            for t in &tops {
                blob_need_backward[*t] = need_backward;
            }
            let blobs = layer.blobs().to_vec();
            self.layers.push(LayerSlot {
                blobs,
                name: lname,
                kind,
                param: lp.clone(),
                layer,
                bottoms,
                tops,
                loss_weights,
                need_backward,
                bottom_need_backward,
                fused: Fused::No,
            });
        }
        self.prune_backward(force_backward);
        self.fuse();
        for l in &self.layers {
            if l.need_backward {
                info!("{} needs backward computation.", l.name);
            } else {
                info!("{} does not need backward computation.", l.name);
            }
        }
        self.outputs = available;
        for o in &self.outputs {
            info!("This network produces output {}", self.blob_names[*o]);
        }
        info!("Memory required for data: {}", memory * 4);
        info!("Network initialization done.");
        Ok(())
    }

    /// Lets a layer run the in-place layers that follow it in its own passes, so they cost no
    /// pass over memory of their own: a Convolution, BatchNorm or Eltwise SUM applies the ReLU
    /// after it (and, where it can, the ReLU's backward pass in its own), and a BatchNorm the
    /// Scale after it (γ, β and their gradients), as Caffe's nets are written.
    /// Applies where the follower's bottom was last written by a layer with that one top and
    /// nothing in between reads it, so every layer still sees the values it would without
    /// fusion. `CREMA_FUSE=0` turns it off.
    fn fuse(&mut self) {
        if std::env::var("CREMA_FUSE").as_deref() == Ok("0") {
            return;
        }
        for i in 0..self.layers.len() {
            let l = &self.layers[i];
            let (affine, act) = (l.layer.fusable_affine(), l.layer.fusable_activation());
            if (affine.is_none() && act.is_none()) || l.bottoms.len() != 1 || l.tops != l.bottoms {
                continue;
            }
            let Some(j) = self.producer(i, l.bottoms[0]) else {
                continue;
            };
            // A layer that stops gradients (propagate_down: false) keeps its own backward.
            let stops = l.param.propagate_down.contains(&false);
            let affine = affine.filter(|_| !stops);
            let producer = &mut self.layers[j].layer;
            let fused = match (affine, act) {
                (Some((g, b)), _) => producer
                    .absorb_affine(g, b)
                    .then_some(Fused::Whole { into: j }),
                (None, Some(a)) if producer.absorb_activation(a) => {
                    if !stops && producer.absorb_activation_backward() {
                        Some(Fused::Whole { into: j })
                    } else {
                        Some(Fused::Forward)
                    }
                }
                (None, _) => None,
            };
            let Some(fused) = fused else { continue };
            if matches!(fused, Fused::Whole { .. }) {
                // The producer's backward now computes the follower's parameter gradients.
                let need = self.layers[i].need_backward;
                self.layers[j].need_backward |= need;
            }
            self.layers[i].fused = fused;
            info!("{} also runs {}", self.layers[j].name, self.layers[i].name);
        }
    }

    /// The layer whose backward pass computes layer `i`'s gradients: `i` itself, or the layer
    /// it is fused into whole.
    pub fn runs_backward_of(&self, i: usize) -> usize {
        match self.layers[i].fused {
            Fused::Whole { into } => into,
            _ => i,
        }
    }

    /// The layer that last wrote blob `b` before layer `i`, if `b` is its only top and no layer
    /// in between reads `b` (a layer fused whole into its producer counts as part of it).
    fn producer(&self, i: usize, b: usize) -> Option<usize> {
        let j = (0..i)
            .rev()
            .filter(|&j| !matches!(self.layers[j].fused, Fused::Whole { .. }))
            .find(|&j| self.layers[j].tops.contains(&b) || self.layers[j].bottoms.contains(&b))?;
        (self.layers[j].tops == [b]).then_some(j)
    }

    /// Index into `params` of layer `li`'s k-th owned blob.
    fn param_index(&self, li: usize, k: usize) -> usize {
        let label = format!("{}.{k}", self.layers[li].name);
        self.params
            .iter()
            .position(|p| p.label == label)
            .unwrap_or(0)
    }

    /// Caffe's backward pruning: layers whose tops never reach a loss skip backward.
    fn prune_backward(&mut self, force: bool) {
        let mut under_loss: HashSet<usize> = HashSet::new();
        for l in self.layers.iter_mut().rev() {
            let contributes = l.loss_weights.iter().any(|w| *w != 0.0)
                || l.tops.iter().any(|t| under_loss.contains(t));
            if !contributes {
                l.need_backward = false;
                l.bottom_need_backward.iter_mut().for_each(|b| *b = false);
            } else {
                under_loss.extend(l.bottoms.iter().copied());
            }
            if force {
                l.need_backward = true;
                for (j, b) in l.bottom_need_backward.iter_mut().enumerate() {
                    *b = *b || l.layer.allow_force_backward(j);
                }
            }
        }
    }

    /// Runs every layer forward; returns the weighted loss.
    pub fn forward(&mut self) -> Result<f32> {
        self.forward_range(0, self.layers.len())
    }

    /// Runs layers [start, end) forward; returns their weighted loss.
    pub fn forward_range(&mut self, start: usize, end: usize) -> Result<f32> {
        self.run_forward(start, end)?;
        Ok(settle_loss(self.pending_loss(start, end)))
    }

    /// The weighted loss tops of layers [start, end), on their way to the host: the loss is
    /// Σ weight × Σ values (see [`settle_loss`]).
    pub fn pending_loss(&self, start: usize, end: usize) -> PendingLoss {
        let mut out = Vec::new();
        for l in &self.layers[start..end] {
            for (&t, w) in l.tops.iter().zip(&l.loss_weights) {
                if *w != 0.0 {
                    out.push((self.engine.download_async(&self.blobs[t].data()), *w));
                }
            }
        }
        out
    }

    /// How an iteration splits for replay from an engine graph: `Some(inputs)` where
    /// `inputs[i]` marks the layers that run on their own before the graph each iteration
    /// (layers without bottoms that take no part in the backward pass: the data layers); every
    /// other layer must be [`Layer::graph_safe`]. None when a layer is not, or when the debug
    /// trace reads values between layers.
    pub fn graph_plan(&self) -> Option<Vec<bool>> {
        if self.debug_info {
            return None;
        }
        let inputs: Vec<bool> = self
            .layers
            .iter()
            .map(|l| l.bottoms.is_empty() && !l.need_backward && !l.layer.graph_safe())
            .collect();
        let rest_safe = self
            .layers
            .iter()
            .zip(&inputs)
            .all(|(l, input)| *input || l.layer.graph_safe());
        (rest_safe && inputs.iter().any(|i| !i)).then_some(inputs)
    }

    /// After a non-finite loss: the first layer that can say why, as "layer `name` (Type): why".
    pub fn diagnose(&self) -> Option<String> {
        let cx = self.ctx();
        self.layers.iter().find_map(|l| {
            l.layer
                .diagnose(&cx)
                .map(|why| format!("layer `{}` ({}): {why}", l.name, l.kind))
        })
    }

    /// Runs layers [start, end) forward without reading anything back.
    pub fn run_forward(&mut self, start: usize, end: usize) -> Result<()> {
        self.forward_layers(start..end)
    }

    /// Runs the given layers forward, in the order given, without reading anything back.
    pub fn forward_layers(&mut self, which: impl IntoIterator<Item = usize>) -> Result<()> {
        let engine = self.engine.clone();
        let cx = Ctx {
            engine: &*engine,
            phase: self.phase,
        };
        for li in which {
            let l = &mut self.layers[li];
            let bb: Vec<BlobRef> = l.bottoms.iter().map(|i| self.blobs[*i].clone()).collect();
            let tb: Vec<BlobRef> = l.tops.iter().map(|i| self.blobs[*i].clone()).collect();
            let wrap = |e: Error| e.in_layer(&l.name, &l.kind);
            l.layer.reshape(&cx, &bb, &tb).map_err(wrap)?;
            if l.fused == Fused::No {
                l.layer.forward(&cx, &bb, &tb).map_err(wrap)?;
            }
            if self.debug_info {
                for (t, &ti) in tb.iter().zip(&l.tops) {
                    let m = engine.asum(&t.data()) / t.count().max(1) as f32;
                    info!(
                        "    [Forward] Layer {}, top blob {} data: {}",
                        l.name,
                        self.blob_names[ti],
                        fmt_g(m)
                    );
                }
                for (k, p) in l.blobs.iter().enumerate() {
                    let m = engine.asum(&p.data()) / p.count().max(1) as f32;
                    info!(
                        "    [Forward] Layer {}, param blob {k} data: {}",
                        l.name,
                        fmt_g(m)
                    );
                }
            }
        }
        Ok(())
    }

    /// Runs the backward pass of every layer that needs one.
    pub fn backward(&mut self) -> Result<()> {
        for i in (0..self.layers.len()).rev() {
            self.backward_layer(i)?;
        }
        Ok(())
    }

    /// Runs one layer's backward pass (if it needs one), seeding loss tops with their weights.
    pub fn backward_layer(&mut self, i: usize) -> Result<()> {
        let engine = self.engine.clone();
        let cx = Ctx {
            engine: &*engine,
            phase: self.phase,
        };
        let l = &mut self.layers[i];
        if !l.need_backward || matches!(l.fused, Fused::Whole { .. }) {
            return Ok(());
        }
        let bb: Vec<BlobRef> = l.bottoms.iter().map(|i| self.blobs[*i].clone()).collect();
        let tb: Vec<BlobRef> = l.tops.iter().map(|i| self.blobs[*i].clone()).collect();
        for (t, w) in tb.iter().zip(&l.loss_weights) {
            if *w != 0.0 {
                engine.fill(*w, &mut t.diff_mut());
            }
        }
        let wrap = |e: Error| e.in_layer(&l.name, &l.kind);
        l.layer
            .backward(&cx, &tb, &l.bottom_need_backward, &bb)
            .map_err(wrap)?;
        if self.debug_info {
            for ((b, &bi), need) in bb.iter().zip(&l.bottoms).zip(&l.bottom_need_backward) {
                if *need {
                    let m = engine.asum(&b.diff()) / b.count().max(1) as f32;
                    info!(
                        "    [Backward] Layer {}, bottom blob {} diff: {}",
                        l.name,
                        self.blob_names[bi],
                        fmt_g(m)
                    );
                }
            }
            for (k, p) in l.blobs.iter().enumerate() {
                let m = engine.asum(&p.diff()) / p.count().max(1) as f32;
                info!(
                    "    [Backward] Layer {}, param blob {k} diff: {}",
                    l.name,
                    fmt_g(m)
                );
            }
        }
        Ok(())
    }

    /// Zeroes every learnable parameter's gradient.
    pub fn clear_param_diffs(&self) {
        let mut diffs: Vec<_> = self.params.iter().map(|p| p.blob.diff_mut()).collect();
        let mut bufs: Vec<&mut crate::engine::Buffer> =
            diffs.iter_mut().map(|d| &mut **d).collect();
        self.engine.fill_many(0.0, &mut bufs);
    }

    pub fn engine(&self) -> &Rc<dyn Engine> {
        &self.engine
    }
    pub fn layers(&self) -> &[LayerSlot] {
        &self.layers
    }
    pub fn layers_mut(&mut self) -> &mut [LayerSlot] {
        &mut self.layers
    }
    /// Learnable parameters (shared blobs appear once, under their owner).
    pub fn params(&self) -> &[Param] {
        &self.params
    }
    /// Blobs no layer consumes: the net's outputs, in creation order.
    pub fn output_names(&self) -> Vec<String> {
        self.outputs
            .iter()
            .map(|i| self.blob_names[*i].clone())
            .collect()
    }
    pub fn blob_names(&self) -> &[String] {
        &self.blob_names
    }
    /// A blob by name.
    pub fn blob(&self, name: &str) -> Option<BlobRef> {
        self.blob_names
            .iter()
            .position(|n| n == name)
            .map(|i| self.blobs[i].clone())
    }
    /// The blob at an index of `blob_names`.
    pub fn blob_at(&self, i: usize) -> BlobRef {
        self.blobs[i].clone()
    }
    /// Loss weights of the output blobs (0 for non-loss outputs), in `output_names` order.
    pub fn output_loss_weights(&self) -> Vec<f32> {
        self.outputs
            .iter()
            .map(|o| {
                self.layers
                    .iter()
                    .flat_map(|l| l.tops.iter().zip(&l.loss_weights))
                    .filter(|(t, _)| *t == o)
                    .map(|(_, w)| *w)
                    .next_back()
                    .unwrap_or(0.0)
            })
            .collect()
    }
    /// Parameters of a layer by name (shared blobs included).
    pub fn layer_blobs(&self, name: &str) -> Option<Vec<BlobRef>> {
        self.layers
            .iter()
            .find(|l| l.name == name)
            .map(|l| l.blobs.clone())
    }
}

impl Net {
    /// Makes this net's layers use the weights of `other`'s layers of the same name (no copy):
    /// how a test net follows the training net.
    pub fn share_trained_layers_with(&mut self, other: &Net) -> Result<()> {
        for l in self.layers.iter_mut() {
            if l.blobs.is_empty() {
                continue;
            }
            let Some(src) = other.layer_blobs(&l.name) else {
                continue;
            };
            if src.len() != l.blobs.len() {
                bail!(
                    "layer `{}` has {} weight blobs in the test net but {} in the training net",
                    l.name,
                    l.blobs.len(),
                    src.len()
                );
            }
            for (k, s) in src.iter().enumerate() {
                if s.shape() != l.blobs[k].shape() {
                    bail!(
                        "layer `{}` param {k} has shape {:?} in the test net but {:?} in the training net",
                        l.name,
                        l.blobs[k].shape(),
                        s.shape()
                    );
                }
                l.layer.blobs()[k] = s.clone();
                l.blobs[k] = s.clone();
            }
        }
        Ok(())
    }

    /// Tells data layers to skip `n` batches (resuming continues the same data stream).
    pub fn skip_data_batches(&mut self, n: usize) -> Result<()> {
        for l in self.layers.iter_mut() {
            let wrap = |e: Error| e.in_layer(&l.name, &l.kind);
            l.layer.skip_batches(n).map_err(wrap)?;
        }
        Ok(())
    }

    /// Total time this net's data layers have waited for input; None without data layers.
    pub fn data_wait(&self) -> Option<std::time::Duration> {
        self.layers
            .iter()
            .filter_map(|l| l.layer.data_wait())
            .reduce(|a, b| a + b)
    }
}

/// Loss tops on their way to the host, each with its loss weight (see [`Net::pending_loss`]).
pub type PendingLoss = Vec<(Pending, f32)>;

/// Waits for the values of [`Net::pending_loss`] and sums them with their weights.
pub fn settle_loss(pending: PendingLoss) -> f32 {
    pending
        .into_iter()
        .map(|(p, w)| w * p.wait().iter().sum::<f32>())
        .sum()
}

fn arity_text(min: usize, max: usize) -> String {
    match (min, max) {
        (a, b) if a == b => format!("exactly {a}"),
        (a, usize::MAX) => format!("at least {a}"),
        (a, b) => format!("{a} to {b}"),
    }
}

/// Reads a prototxt net and builds it.
pub fn net_from_file(path: &std::path::Path, state: &State, engine: Rc<dyn Engine>) -> Result<Net> {
    let param = crema_proto::read_net_text(path)?;
    Net::new(&param, state, engine)
}
