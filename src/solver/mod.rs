//! The solver: Caffe's training loop (test, forward/backward, update, display, snapshot).

mod graph;
pub mod lr;

use crate::blob::BlobRef;
use crate::engine::{Buffer, Engine, SgdParam, SgdStep, UpdateRule};
use crate::layers::Phase;
use crate::net::{settle_loss, Net, PendingLoss, State};
use crate::parallel::{Collective, Shard};
use crate::{bail, Error, Result};
use crema_proto::caffe::{NetParameter, SolverParameter, SolverState};
use lr::{fmt_g, Schedule};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tracing::info;

/// What a signal asks the solver to do (Caffe's `-sigint_effect` / `-sighup_effect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalEffect {
    Stop,
    Snapshot,
    None,
}

impl std::str::FromStr for SignalEffect {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "stop" => Ok(SignalEffect::Stop),
            "snapshot" => Ok(SignalEffect::Snapshot),
            "none" => Ok(SignalEffect::None),
            _ => Err(format!(
                "`{s}` is not a signal effect; use stop, snapshot or none"
            )),
        }
    }
}

/// Flags raised by signal handlers, polled once per iteration.
#[derive(Default, Clone)]
pub struct Signals {
    pub sigint: Arc<AtomicBool>,
    pub sighup: Arc<AtomicBool>,
    pub sigint_effect: Option<SignalEffect>,
    pub sighup_effect: Option<SignalEffect>,
}

/// Extra choices the command line makes about the nets.
#[derive(Debug, Clone, Default)]
pub struct NetChoices {
    pub stages: Vec<String>,
    pub level: i32,
}

/// The update rule of a solver `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Sgd,
    Nesterov,
    AdaGrad,
    RmsProp,
    AdaDelta,
    Adam,
}

impl Rule {
    /// The rule named by `type` (or the legacy `solver_type` enum), checked as Caffe does.
    pub fn from_solver(p: &SolverParameter) -> Result<Rule> {
        const NAMES: [&str; 6] = ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"];
        let from_legacy = match p.solver_type {
            Some(v) => match NAMES.get(v as usize) {
                Some(n) => Some(*n),
                None => bail!("solver_type {v} is not a solver; use type: \"SGD\" (or Nesterov, AdaGrad, RMSProp, AdaDelta, Adam)"),
            },
            None => None,
        };
        let name = match (p.r#type.as_deref(), from_legacy) {
            (Some(t), Some(l)) if t != l => {
                bail!("the solver says type: \"{t}\" but the legacy solver_type says {l}; remove solver_type")
            }
            (Some(t), _) => t,
            (None, Some(l)) => l,
            (None, None) => "SGD",
        };
        let rule = match name {
            "SGD" => Rule::Sgd,
            "Nesterov" => Rule::Nesterov,
            "AdaGrad" => Rule::AdaGrad,
            "RMSProp" => Rule::RmsProp,
            "AdaDelta" => Rule::AdaDelta,
            "Adam" => Rule::Adam,
            other => {
                let best = NAMES.iter().min_by_key(|n| {
                    crate::layers::levenshtein(&n.to_lowercase(), &other.to_lowercase())
                });
                bail!(
                    "unknown solver type \"{other}\"{}; use one of {}",
                    best.map(|b| format!(" (did you mean \"{b}\"?)"))
                        .unwrap_or_default(),
                    NAMES.join(", ")
                )
            }
        };
        if matches!(rule, Rule::AdaGrad | Rule::RmsProp) && p.momentum() != 0.0 {
            bail!(
                "momentum must be 0 with the {name} solver (got {}); remove momentum",
                p.momentum()
            );
        }
        Ok(rule)
    }

    /// The engine rule for this solver at iteration `iter` (None for plain SGD).
    fn update(self, p: &SolverParameter, iter: i32) -> Option<UpdateRule> {
        match self {
            Rule::Sgd => None,
            Rule::Nesterov => Some(UpdateRule::Nesterov {
                momentum: p.momentum(),
            }),
            Rule::AdaGrad => Some(UpdateRule::AdaGrad { delta: p.delta() }),
            Rule::RmsProp => Some(UpdateRule::RmsProp {
                decay: p.rms_decay(),
                delta: p.delta(),
            }),
            Rule::AdaDelta => Some(UpdateRule::AdaDelta {
                momentum: p.momentum(),
                delta: p.delta(),
            }),
            Rule::Adam => Some(UpdateRule::Adam {
                beta1: p.momentum(),
                beta2: p.momentum2(),
                delta: p.delta(),
                t: iter + 1,
            }),
        }
    }

    fn histories(self) -> usize {
        if matches!(self, Rule::AdaDelta | Rule::Adam) {
            2
        } else {
            1
        }
    }
}

/// Caffe's solver: owns the train net and the test nets that share its weights.
pub struct Solver {
    pub param: SolverParameter,
    engine: Rc<dyn Engine>,
    pub net: Net,
    test_nets: Vec<Net>,
    iter: i32,
    current_step: i32,
    history: Vec<Buffer>,
    losses: VecDeque<f32>,
    smoothed_loss: f32,
    policy: Schedule,
    rule: Rule,
    snapshot_prefix: String,
    signals: Option<Signals>,
    /// Last test scores, by test net: (output name, mean value).
    pub last_test: Vec<Vec<(String, f32)>>,
    /// This worker's rank among data-parallel workers (rank 0 of 1 alone).
    shard: Shard,
    /// How gradients are averaged with the other workers; None when training alone.
    collective: Option<Box<dyn Collective>>,
    /// Whether the other workers hold rank 0's weights (set by the first step after a change).
    synced: bool,
    /// By layer: the parameters whose gradients are final once that layer has run backward.
    ready_after: Vec<Vec<usize>>,
    /// Values per gradient bucket (see [`BUCKET_VALUES`]).
    bucket_values: usize,
    /// The training passes replayed from an engine graph.
    graph: graph::StepGraph,
    /// A replayed iteration whose loss is still on its way to the host: (iteration, losses of
    /// its iter_size passes).
    unsettled: Option<(i32, Vec<PendingLoss>)>,
}

/// Gradients are averaged in buckets of at least this many values: each layer's gradients join
/// the bucket as soon as its backward pass has made them, and a full bucket is sent while the
/// layers below are still computing (Caffe's layer_wise_reduce, with small layers grouped).
const BUCKET_VALUES: usize = 1 << 20;

/// Finds a file named in a solver: as given (relative to the working directory, like Caffe),
/// else relative to the solver file's directory.
fn resolve(path: &str, solver_dir: Option<&Path>, field: &str) -> Result<PathBuf> {
    let p = PathBuf::from(path);
    if p.exists() {
        return Ok(p);
    }
    if let Some(d) = solver_dir {
        let alt = d.join(&p);
        if p.is_relative() && alt.exists() {
            return Ok(alt);
        }
        bail!(
            "solver field `{field}`: `{path}` not found (looked in the working directory and in `{}`)",
            d.display()
        );
    }
    bail!("solver field `{field}`: `{path}` not found")
}

impl Solver {
    /// Reads a solver prototxt and builds its nets.
    pub fn from_file(path: &Path, engine: Rc<dyn Engine>, choices: &NetChoices) -> Result<Solver> {
        let param = crema_proto::read_solver_text(path)?;
        Solver::new(param, Some(path), engine, choices)
    }

    /// Builds the train and test nets of a SolverParameter.
    pub fn new(
        param: SolverParameter,
        solver_path: Option<&Path>,
        engine: Rc<dyn Engine>,
        choices: &NetChoices,
    ) -> Result<Solver> {
        let rule = Rule::from_solver(&param)?;
        let policy = Schedule::from_solver(&param)?;
        let shard = crate::parallel::shard();
        if param.random_seed() >= 0 {
            // Each worker draws its own dropout masks and crops, as in Caffe (seed + rank); the
            // weights it draws are replaced by rank 0's at the first step.
            let seed = param.random_seed() as u64 + shard.rank as u64;
            crate::rng::seed(seed);
            engine.seed(seed);
        }
        let dir = solver_path.and_then(|p| p.parent()).map(|d| {
            if d.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                d.to_path_buf()
            }
        });
        let load = |path: &str, field: &str| -> Result<NetParameter> {
            let p = resolve(path, dir.as_deref(), field)?;
            Ok(crema_proto::read_net_text(&p)?)
        };
        // The training net: exactly one of net, net_param, train_net, train_net_param.
        let sources = [
            param.net.is_some(),
            param.net_param.is_some(),
            param.train_net.is_some(),
            param.train_net_param.is_some(),
        ];
        let generic: Option<NetParameter> = if let Some(n) = &param.net_param {
            Some(n.clone())
        } else if let Some(n) = &param.net {
            Some(load(n, "net")?)
        } else {
            None
        };
        let train_param = match (&param.train_net_param, &param.train_net, &generic) {
            _ if sources.iter().filter(|s| **s).count() > 1 => {
                bail!("the solver names more than one training net (net, net_param, train_net, train_net_param); keep one")
            }
            (Some(n), _, _) => n.clone(),
            (None, Some(f), _) => load(f, "train_net")?,
            (None, None, Some(g)) => g.clone(),
            _ => bail!("the solver names no net; add `net: \"path/to/train_val.prototxt\"`"),
        };
        let mut train_state = State::phase(Phase::Train);
        if let Some(ts) = &param.train_state {
            train_state = State {
                phase: Phase::Train,
                level: ts.level(),
                stages: ts.stage.clone(),
            };
        }
        train_state.level += choices.level;
        train_state.stages.extend(choices.stages.iter().cloned());
        info!("Creating training net");
        let mut net = Net::new(&train_param, &train_state, engine.clone())?;
        net.debug_info |= param.debug_info();
        // Test nets: explicit ones first, then instances of the generic net for the remaining test_iter entries.
        let mut test_params: Vec<NetParameter> = param.test_net_param.clone();
        for f in &param.test_net {
            test_params.push(load(f, "test_net")?);
        }
        if let Some(g) = &generic {
            while test_params.len() < param.test_iter.len() {
                test_params.push(g.clone());
            }
        }
        if test_params.len() != param.test_iter.len() {
            bail!(
                "the solver has {} test nets but {} test_iter values; give one test_iter per test net",
                test_params.len(),
                param.test_iter.len()
            );
        }
        if !test_params.is_empty() && param.test_interval() <= 0 {
            // Caffe tolerates this; the test nets are then simply never run.
            info!("test_interval is 0: test nets will not be run during training");
        }
        let mut test_nets = vec![];
        // Only rank 0 tests (Caffe's root solver): the other workers build no test nets.
        for (i, tp) in test_params.iter().enumerate().filter(|_| shard.is_root()) {
            let mut st = State::phase(Phase::Test);
            if let Some(ts) = param.test_state.get(i) {
                st = State {
                    phase: Phase::Test,
                    level: ts.level(),
                    stages: ts.stage.clone(),
                };
            }
            st.level += choices.level;
            st.stages.extend(choices.stages.iter().cloned());
            info!("Creating test net (#{i}) specified by the solver");
            let mut tn = Net::new(tp, &st, engine.clone())?;
            tn.share_trained_layers_with(&net)?;
            test_nets.push(tn);
        }
        // Caffe's layout: one history blob per parameter, then a second set for AdaDelta/Adam.
        let history = (0..rule.histories())
            .flat_map(|_| net.params().iter().map(|p| engine.alloc(p.blob.count())))
            .collect();
        let snapshot_prefix = match &param.snapshot_prefix {
            Some(p) if !p.is_empty() => p.clone(),
            _ => solver_path
                .map(|p| p.with_extension("").display().to_string())
                .unwrap_or_else(|| "crema".to_string()),
        };
        if param.snapshot() > 0 || param.snapshot_after_train() {
            let parent = Path::new(&snapshot_prefix)
                .parent()
                .filter(|d| !d.as_os_str().is_empty());
            if let Some(d) = parent {
                if !d.is_dir() {
                    bail!(
                        "snapshot_prefix `{snapshot_prefix}`: directory `{}` does not exist; create it or change snapshot_prefix",
                        d.display()
                    );
                }
            }
        }
        Ok(Solver {
            param,
            engine,
            net,
            test_nets,
            iter: 0,
            current_step: 0,
            history,
            losses: VecDeque::new(),
            smoothed_loss: 0.0,
            policy,
            rule,
            snapshot_prefix,
            signals: None,
            last_test: vec![],
            shard,
            collective: None,
            synced: true,
            ready_after: vec![],
            bucket_values: BUCKET_VALUES,
            graph: graph::StepGraph::new(),
            unsettled: None,
        })
    }

    /// Trains data-parallel with other workers through `c` (this solver must have been built on
    /// the thread whose [`crate::parallel::set_shard`] gave it the same rank).
    pub fn set_collective(&mut self, c: Box<dyn Collective>) -> Result<()> {
        // Gradients are exchanged between layers' backward passes, outside any graph.
        self.graph.disable();
        if c.shard() != self.shard {
            bail!(
                "the solver was built as worker {} of {} but joins the workers as {} of {}",
                self.shard.rank,
                self.shard.count,
                c.shard().rank,
                c.shard().count
            );
        }
        // A parameter's gradient is final after the backward pass of the lowest layer using it
        // (for a layer fused whole into the one before it, that one's); the net's structure is
        // fixed, so this is worked out once.
        let layers = self.net.layers();
        let mut ready: Vec<Vec<usize>> = vec![vec![]; layers.len()];
        for (pi, p) in self.net.params().iter().enumerate() {
            if p.lr_mult == 0.0 {
                continue; // never updated: nothing to average
            }
            let first_user = (0..layers.len())
                .filter(|&i| layers[i].blobs.iter().any(|b| Rc::ptr_eq(b, &p.blob)))
                .map(|i| self.net.runs_backward_of(i))
                .min()
                .unwrap_or(0);
            ready[first_user].push(pi);
        }
        self.ready_after = ready;
        self.collective = Some(c);
        self.synced = false;
        Ok(())
    }

    /// This worker's rank among the data-parallel workers.
    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// Gives every worker rank 0's weights (and solver history, so a resumed run continues the
    /// same trajectory on every rank).
    fn sync_weights(&mut self) -> Result<()> {
        let Some(c) = &self.collective else {
            return Ok(());
        };
        let mut data: Vec<_> = self
            .net
            .params()
            .iter()
            .map(|p| p.blob.data_mut())
            .collect();
        let mut bufs: Vec<&mut Buffer> = data.iter_mut().map(|d| &mut **d).collect();
        bufs.extend(self.history.iter_mut());
        c.broadcast(&mut bufs)?;
        self.synced = true;
        Ok(())
    }

    /// The backward pass, averaging each gradient with the other workers as soon as it is final.
    fn backward_and_reduce(&mut self) -> Result<()> {
        let Some(c) = &self.collective else {
            return self.net.backward();
        };
        let ready = &self.ready_after;
        let n_layers = self.net.layers().len();
        let mut pending: Vec<usize> = vec![];
        let mut pending_values = 0;
        for i in (0..n_layers).rev() {
            self.net.backward_layer(i)?;
            for &pi in &ready[i] {
                pending.push(pi);
                pending_values += self.net.params()[pi].blob.count();
            }
            if !pending.is_empty() && (pending_values >= self.bucket_values || i == 0) {
                let params = self.net.params();
                let mut diffs: Vec<_> =
                    pending.iter().map(|&k| params[k].blob.diff_mut()).collect();
                let mut bufs: Vec<&mut Buffer> = diffs.iter_mut().map(|d| &mut **d).collect();
                c.all_reduce_mean(&mut bufs)?;
                pending.clear();
                pending_values = 0;
            }
        }
        c.wait()
    }

    /// Averages gradients across workers in buckets of at least `values` values instead of
    /// about a million (smaller buckets start sooner and overlap more of the backward pass).
    pub fn set_reduce_bucket(&mut self, values: usize) {
        self.bucket_values = values.max(1);
    }

    /// Installs signal flags to poll during training.
    pub fn set_signals(&mut self, s: Signals) {
        self.signals = Some(s);
    }

    /// The current iteration.
    pub fn iter(&self) -> i32 {
        self.iter
    }

    /// The smoothed training loss of the last iteration.
    pub fn smoothed_loss(&self) -> f32 {
        self.smoothed_loss
    }

    /// The test nets.
    pub fn test_nets(&mut self) -> &mut [Net] {
        &mut self.test_nets
    }

    /// Trains to max_iter (from a solverstate if given), testing and snapshotting as configured.
    pub fn solve(&mut self, resume: Option<&Path>) -> Result<()> {
        info!("Solving {}", self.net.name);
        info!("Learning Rate Policy: {}", self.param.lr_policy());
        if let Some(r) = resume {
            info!("Restoring previous solver status from {}", r.display());
            self.restore(r)?;
        }
        let remaining = self.param.max_iter() - self.iter;
        let stopped = self.step(remaining)?;
        let snap = self.param.snapshot();
        let root = self.shard.is_root();
        if root && self.param.snapshot_after_train() && (snap == 0 || self.iter % snap != 0) {
            self.snapshot()?;
        }
        if stopped {
            info!("Optimization stopped early.");
            return Ok(());
        }
        let display = self.param.display();
        if root && display > 0 && self.iter % display == 0 {
            let loss = self.net.forward()?;
            info!("Iteration {}, loss = {}", self.iter, fmt_g(loss));
        }
        let ti = self.param.test_interval();
        if ti > 0 && self.iter % ti == 0 {
            self.test_all()?;
        }
        info!("Optimization Done.");
        Ok(())
    }

    /// Runs `iters` iterations; returns true when a signal asked to stop.
    pub fn step(&mut self, iters: i32) -> Result<bool> {
        let start_iter = self.iter;
        let stop_iter = self.iter + iters;
        let average = self.param.average_loss().max(1) as usize;
        self.losses.clear();
        self.smoothed_loss = 0.0;
        let mut last_event = (Instant::now(), self.iter);
        let mut last_wait = self.net.data_wait().unwrap_or_default();
        if !self.synced {
            self.sync_weights()?;
        }
        let root = self.shard.is_root();
        while self.iter < stop_iter {
            self.net.clear_param_diffs();
            let ti = self.param.test_interval();
            if ti > 0 && self.iter % ti == 0 && (self.iter > 0 || self.param.test_initialization())
            {
                self.test_all()?;
            }
            let display = root && self.param.display() > 0 && self.iter % self.param.display() == 0;
            let iter_size = self.param.iter_size().max(1);
            let layers = self.net.layers().len();
            let mut losses = Vec::new();
            for k in 0..iter_size {
                let e = self.engine.clone();
                if !self.graph.pass(&mut self.net, &*e)? {
                    self.net.run_forward(0, layers)?;
                    if k + 1 == iter_size {
                        self.backward_and_reduce()?;
                    } else {
                        self.net.backward()?;
                    }
                }
                losses.push(self.net.pending_loss(0, layers));
            }
            // A replayed iteration's loss is read while the next one runs, unless it is shown now.
            self.settle_previous(start_iter, average)?;
            self.unsettled = Some((self.iter, losses));
            if display || !self.graph.replaying() || self.iter + 1 == stop_iter {
                self.settle_previous(start_iter, average)?;
            }
            if display {
                let lapse = last_event.0.elapsed().as_secs_f32();
                let per_s = (self.iter - last_event.1) as f32 / lapse.max(1e-9);
                info!(
                    "Iteration {} ({} iter/s, {}s/{} iters), loss = {}",
                    self.iter,
                    fmt_g(per_s),
                    fmt_g(lapse),
                    self.param.display(),
                    fmt_g(self.smoothed_loss)
                );
                if let Some(total) = self.net.data_wait() {
                    let iters = (self.iter - last_event.1).max(1);
                    log_data_wait(
                        total.saturating_sub(last_wait),
                        lapse,
                        &format!("{iters} iters"),
                    );
                    last_wait = total;
                }
                last_event = (Instant::now(), self.iter);
                self.log_outputs("Train", &self.net_outputs(), None);
            }
            self.apply_update(display)?;
            self.iter += 1;
            let snap = self.param.snapshot();
            if root && snap > 0 && self.iter % snap == 0 {
                self.snapshot()?;
            }
            if let Some(s) = &self.signals {
                let mut effect = if s.sigint.swap(false, Ordering::SeqCst) {
                    s.sigint_effect
                } else if s.sighup.swap(false, Ordering::SeqCst) {
                    s.sighup_effect
                } else {
                    None
                };
                // Workers agree: a stop anywhere stops every worker after this same iteration.
                if let Some(c) = &self.collective {
                    let code = match effect {
                        Some(SignalEffect::Stop) => 2,
                        Some(SignalEffect::Snapshot) => 1,
                        _ => 0,
                    };
                    effect = match c.max_u32(code)? {
                        2 => Some(SignalEffect::Stop),
                        1 => Some(SignalEffect::Snapshot),
                        _ => None,
                    };
                }
                match effect {
                    Some(SignalEffect::Stop) => {
                        self.settle_previous(start_iter, average)?;
                        return Ok(true);
                    }
                    Some(SignalEffect::Snapshot) if root => self.snapshot()?,
                    _ => {}
                }
            }
        }
        Ok(false)
    }

    /// Reads the loss of the iteration still unsettled, if any, into the smoothed loss; stops
    /// the run when it is not finite.
    fn settle_previous(&mut self, start_iter: i32, average: usize) -> Result<()> {
        let Some((iter, passes)) = self.unsettled.take() else {
            return Ok(());
        };
        let n = passes.len().max(1) as f32;
        let loss = passes.into_iter().map(settle_loss).sum::<f32>() / n;
        if !loss.is_finite() {
            if let Some(why) = self.net.diagnose() {
                bail!("the loss is {} at iteration {iter}: {why}", fmt_g(loss));
            }
            bail!(
                "training diverged: the loss is {} at iteration {iter}; lower base_lr (now {}) or check the input data and its scale",
                fmt_g(loss),
                fmt_g(self.param.base_lr())
            );
        }
        self.update_smoothed_loss(loss, iter, start_iter, average);
        Ok(())
    }

    fn update_smoothed_loss(&mut self, loss: f32, iter: i32, start_iter: i32, average: usize) {
        if self.losses.len() < average {
            self.losses.push_back(loss);
            let n = (iter - start_iter + 1) as f32;
            self.smoothed_loss = (self.smoothed_loss * (n - 1.0) + loss) / n;
        } else {
            let idx = ((iter - start_iter) as usize) % average;
            let old = self.losses[idx];
            self.smoothed_loss += (loss - old) / average as f32;
            self.losses[idx] = loss;
        }
    }

    /// Output blob values of the training net (for display).
    fn net_outputs(&self) -> Vec<(String, Vec<f32>, f32)> {
        let names = self.net.output_names();
        let weights = self.net.output_loss_weights();
        names
            .into_iter()
            .zip(weights)
            .filter_map(|(n, w)| {
                self.net
                    .blob(&n)
                    .map(|b| (n, b.data_to_vec(&*self.engine), w))
            })
            .collect()
    }

    fn log_outputs(&self, which: &str, outputs: &[(String, Vec<f32>, f32)], _net: Option<usize>) {
        let mut idx = 0;
        for (name, values, w) in outputs {
            for v in values {
                let loss_msg = if *w != 0.0 {
                    format!(" (* {} = {} loss)", fmt_g(*w), fmt_g(w * v))
                } else {
                    String::new()
                };
                info!(
                    "    {which} net output #{idx}: {name} = {}{loss_msg}",
                    fmt_g(*v)
                );
                idx += 1;
            }
        }
    }

    fn apply_update(&mut self, display: bool) -> Result<()> {
        let rate = self
            .policy
            .rate(self.param.base_lr(), self.iter, &mut self.current_step);
        if display {
            info!("Iteration {}, lr = {}", self.iter, fmt_g(rate));
        }
        let e = self.engine.clone();
        let params: Vec<(BlobRef, f32, f32)> = self
            .net
            .params()
            .iter()
            .map(|p| (p.blob.clone(), p.lr_mult, p.decay_mult))
            .collect();
        // Clip gradients by their global L2 norm.
        let clip = self.param.clip_gradients();
        if clip >= 0.0 {
            let sumsq: f32 = params.iter().map(|(b, _, _)| e.sumsq(&b.diff())).sum();
            let norm = sumsq.sqrt();
            if norm > clip {
                let s = clip / norm;
                info!("Gradient clipping: scaling down gradients (L2 norm {} > {}) by scale factor {}", fmt_g(norm), fmt_g(clip), fmt_g(s));
                for (b, _, _) in &params {
                    e.scale(s, &mut b.diff_mut());
                }
            }
        }
        let iter_size = self.param.iter_size().max(1);
        let wd = self.param.weight_decay();
        let reg = self.param.regularization_type().to_string();
        if !matches!(reg.as_str(), "L1" | "L2") {
            bail!("unknown regularization_type `{reg}`; use L1 or L2");
        }
        // Plain SGD: one fused pass over all parameters where the engine has one.
        if self.rule.update(&self.param, self.iter).is_none() {
            let mut data: Vec<_> = params.iter().map(|(b, _, _)| b.data_mut()).collect();
            let mut diff: Vec<_> = params.iter().map(|(b, _, _)| b.diff_mut()).collect();
            let mut fused: Vec<SgdParam> = data
                .iter_mut()
                .zip(diff.iter_mut())
                .zip(self.history.iter_mut())
                .zip(&params)
                .map(|(((d, g), h), (_, lr_mult, decay_mult))| SgdParam {
                    data: d,
                    diff: g,
                    history: h,
                    lr_mult: *lr_mult,
                    decay_mult: *decay_mult,
                })
                .collect();
            let step = SgdStep {
                rate,
                momentum: self.param.momentum(),
                weight_decay: wd,
                l1: reg == "L1",
                scale: 1.0 / iter_size as f32,
            };
            if e.sgd_update_many(&mut fused, step) {
                return Ok(());
            }
        }
        for (i, (b, lr_mult, decay_mult)) in params.iter().enumerate() {
            let mut diff = b.diff_mut();
            if iter_size > 1 {
                e.scale(1.0 / iter_size as f32, &mut diff);
            }
            let local_decay = wd * decay_mult;
            if local_decay != 0.0 {
                match reg.as_str() {
                    "L2" => e.axpby(local_decay, &b.data(), 1.0, &mut diff),
                    "L1" => e.add_sign(local_decay, &b.data(), &mut diff),
                    other => bail!("unknown regularization_type `{other}`; use L1 or L2"),
                }
            }
            let local_rate = rate * lr_mult;
            match self.rule.update(&self.param, self.iter) {
                None => e.sgd_update(
                    local_rate,
                    self.param.momentum(),
                    &diff,
                    &mut self.history[i],
                    &mut b.data_mut(),
                ),
                Some(rule) => {
                    let n = params.len();
                    let (first, second) = self.history.split_at_mut(n);
                    let h2 = if rule.needs_second_history() {
                        second.get_mut(i)
                    } else {
                        None
                    };
                    e.solver_update(
                        rule,
                        local_rate,
                        &diff,
                        &mut first[i],
                        h2,
                        &mut b.data_mut(),
                    );
                }
            }
        }
        Ok(())
    }

    /// Runs every test net for its test_iter batches and logs Caffe's lines.
    pub fn test_all(&mut self) -> Result<()> {
        self.last_test.clear();
        for i in 0..self.test_nets.len() {
            let r = self.test(i)?;
            self.last_test.push(r);
        }
        Ok(())
    }

    fn test(&mut self, i: usize) -> Result<Vec<(String, f32)>> {
        info!("Iteration {}, Testing net (#{i})", self.iter);
        let iters = self.param.test_iter[i].max(0);
        let net = &mut self.test_nets[i];
        let names = net.output_names();
        let weights = net.output_loss_weights();
        let mut scores: Vec<Vec<f64>> = vec![];
        let mut loss = 0.0f64;
        let (started, wait_before) = (Instant::now(), net.data_wait().unwrap_or_default());
        for _ in 0..iters {
            let l = net.forward()?;
            loss += l as f64;
            for (k, n) in names.iter().enumerate() {
                let v = net
                    .blob(n)
                    .map(|b| b.data_to_vec(&*self.engine))
                    .unwrap_or_default();
                if scores.len() <= k {
                    scores.push(vec![0.0; v.len()]);
                }
                for (s, x) in scores[k].iter_mut().zip(&v) {
                    *s += *x as f64;
                }
            }
        }
        if let Some(total) = net.data_wait() {
            let lapse = started.elapsed().as_secs_f32();
            log_data_wait(
                total.saturating_sub(wait_before),
                lapse,
                &format!("{iters} test iters"),
            );
        }
        if self.param.test_compute_loss() {
            info!("Test loss: {}", fmt_g((loss / iters.max(1) as f64) as f32));
        }
        let mut out = vec![];
        let mut idx = 0;
        for (k, n) in names.iter().enumerate() {
            for s in scores.get(k).map(|v| v.as_slice()).unwrap_or(&[]) {
                let mean = (*s / iters.max(1) as f64) as f32;
                let w = weights[k];
                let loss_msg = if w != 0.0 {
                    format!(" (* {} = {} loss)", fmt_g(w), fmt_g(w * mean))
                } else {
                    String::new()
                };
                info!(
                    "    Test net output #{idx}: {n} = {}{loss_msg}",
                    fmt_g(mean)
                );
                out.push((n.clone(), mean));
                idx += 1;
            }
        }
        Ok(out)
    }

    /// Writes PREFIX_iter_N.caffemodel and PREFIX_iter_N.solverstate.
    pub fn snapshot(&mut self) -> Result<()> {
        let model = format!("{}_iter_{}.caffemodel", self.snapshot_prefix, self.iter);
        info!("Snapshotting to binary proto file {model}");
        self.net.save_caffemodel(Path::new(&model))?;
        let state_file = format!("{}_iter_{}.solverstate", self.snapshot_prefix, self.iter);
        info!("Snapshotting solver state to binary proto file {state_file}");
        let history = self
            .history
            .iter()
            .zip(self.net.params().iter().cycle())
            .map(|(h, p)| crema_proto::caffe::BlobProto {
                shape: Some(crema_proto::caffe::BlobShape {
                    dim: p.blob.shape().iter().map(|d| *d as i64).collect(),
                }),
                data: self.engine.download(h),
                ..Default::default()
            })
            .collect();
        let state = SolverState {
            iter: Some(self.iter),
            learned_net: Some(model),
            history,
            current_step: Some(self.current_step),
        };
        crema_proto::write_binary_atomic(Path::new(&state_file), &state)?;
        Ok(())
    }

    /// Restores iteration, learning-rate step, momentum history and weights from a .solverstate.
    pub fn restore(&mut self, path: &Path) -> Result<()> {
        let state: SolverState = crema_proto::read_binary(path, "caffe.SolverState")?;
        if let Some(learned) = &state.learned_net {
            let mut p = PathBuf::from(learned);
            if !p.exists() {
                // Caffe stores the path as written at snapshot time; also look beside the state file.
                if let (Some(dir), Some(name)) = (path.parent(), p.file_name()) {
                    p = dir.join(name);
                }
            }
            if !p.exists() {
                bail!(
                    "{}: the weights it names (`{learned}`) are not found, also not beside the solverstate",
                    path.display()
                );
            }
            self.net.copy_trained_layers_from(&p)?;
        }
        if state.history.len() != self.history.len() {
            bail!(
                "{}: holds {} history blobs but this solver needs {}; was it written for another net or solver type?",
                path.display(),
                state.history.len(),
                self.history.len()
            );
        }
        for (i, (h, s)) in self.history.iter_mut().zip(&state.history).enumerate() {
            let v = crate::net::weights::proto_data(s);
            if v.len() != h.len() {
                bail!(
                    "{}: history blob {i} has {} values, expected {}",
                    path.display(),
                    v.len(),
                    h.len()
                );
            }
            self.engine.upload(&v, h);
        }
        self.iter = state.iter();
        self.current_step = state.current_step();
        self.synced = self.collective.is_none();
        // Continue the same data stream: skip what the interrupted run already consumed.
        let consumed = self.iter as usize * self.param.iter_size().max(1) as usize;
        self.net.skip_data_batches(consumed)?;
        Ok(())
    }
}

/// Logs how long forward() waited on the data layers during `lapse_s` seconds of `what`, when
/// that is a noticeable share of the time (a starving engine shows up in the log).
fn log_data_wait(waited: std::time::Duration, lapse_s: f32, what: &str) {
    let w = waited.as_secs_f32();
    if w >= 0.01 && w >= 0.01 * lapse_s {
        info!(
            "    Data wait: {w:.2} s over the last {what} ({:.0}% of the time)",
            100.0 * w / lapse_s.max(1e-9)
        );
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Msg(e.to_string())
    }
}
