//! Replaying a training iteration's forward and backward passes from an engine graph (a CUDA
//! graph on the GPU): one launch instead of one per operation, which is most of the time a
//! small net's step costs.
//!
//! Caffe nets have static shapes, so after a few ordinary iterations (cuDNN's algorithm search,
//! workspaces and tables settle in those) the passes are recorded once and replayed. Data layers
//! run on their own before each replay; the solver update runs after it, with this iteration's
//! learning rate. Whatever the engine replaces that a recording may point to (its workspace)
//! changes [`Engine::graph_epoch`], and a batch of another shape changes the geometry: either way
//! the passes run once more on their own and are recorded again.

use crate::engine::{Engine, Graph};
use crate::net::Net;
use crate::Result;

/// Ordinary iterations before recording; one more is run whenever memory moved.
const WARM_ITERATIONS: u32 = 2;
/// Warm iterations that still allocate buffers before giving up on graphs for this net.
const MAX_ALLOCATING_WARMUPS: u32 = 5;

pub struct StepGraph {
    state: State,
    /// Layers run on their own before the graph each iteration (see [`Net::graph_plan`]).
    inputs: Vec<bool>,
}

enum State {
    /// Not decided yet (decided at the first training pass).
    Unknown,
    /// The net, the engine or the run (several workers, debug_info, CREMA_CUDA_GRAPH=0)
    /// rules graphs out.
    Off,
    Warm {
        /// Ordinary iterations still to run.
        left: u32,
        /// Warm iterations that allocated buffers so far.
        allocating: u32,
        /// The data layers' top shapes of the last ordinary pass: recording needs the same, so
        /// that no layer reshapes (and allocates) while being recorded.
        shapes: Vec<Vec<usize>>,
    },
    Ready {
        graph: Graph,
        epoch: u64,
        /// The data layers' top shapes the graph was recorded with: a batch of another shape
        /// (ImageData without resizing) means other geometry and possibly other memory.
        shapes: Vec<Vec<usize>>,
    },
}

/// The shapes of the tops of the layers marked in `inputs`.
fn input_shapes(net: &Net, inputs: &[bool]) -> Vec<Vec<usize>> {
    net.layers()
        .iter()
        .zip(inputs)
        .filter(|(_, input)| **input)
        .flat_map(|(l, _)| l.tops.iter().map(|&t| net.blob_at(t).shape()))
        .collect()
}

impl StepGraph {
    /// Undecided until the first training pass.
    pub fn new() -> Self {
        StepGraph {
            state: State::Unknown,
            inputs: vec![],
        }
    }

    /// Whether this iteration's passes came from a replay (its loss can be read later).
    pub fn replaying(&self) -> bool {
        matches!(self.state, State::Ready { .. })
    }

    /// Rules graphs out for the rest of the run.
    pub fn disable(&mut self) {
        self.state = State::Off;
    }

    /// One forward and backward pass of `net`, replayed from a graph when possible. Returns
    /// false (having done nothing) when graphs are off: the caller runs the passes itself.
    pub fn pass(&mut self, net: &mut Net, engine: &dyn Engine) -> Result<bool> {
        if matches!(self.state, State::Unknown) {
            let off = std::env::var("CREMA_CUDA_GRAPH").is_ok_and(|v| v == "0");
            self.state = match net.graph_plan() {
                Some(inputs) if !off => {
                    self.inputs = inputs;
                    State::Warm {
                        left: WARM_ITERATIONS,
                        allocating: 0,
                        shapes: vec![],
                    }
                }
                _ => State::Off,
            };
        }
        if matches!(self.state, State::Unknown | State::Off) {
            return Ok(false);
        }
        let inputs = &self.inputs;
        let n = inputs.len();
        net.forward_layers((0..n).filter(|&i| inputs[i]))?;
        let rest = || (0..n).filter(|&i| !inputs[i]);
        let epoch = engine.graph_epoch();
        if let State::Ready {
            graph,
            epoch: e,
            shapes,
        } = &self.state
        {
            if *e == epoch && *shapes == input_shapes(net, inputs) {
                engine.launch_graph(graph);
                return Ok(true);
            }
            tracing::debug!("engine memory or input shapes changed: recording the passes again");
            self.state = State::Warm {
                left: 1,
                allocating: 0,
                shapes: vec![],
            };
        }
        let State::Warm {
            left,
            allocating,
            shapes,
        } = &mut self.state
        else {
            unreachable!("graph state is Warm here");
        };
        let now = input_shapes(net, inputs);
        if *shapes != now {
            // Another batch shape than the last ordinary pass saw: one more ordinary pass.
            *left = (*left).max(1);
            *shapes = now;
        }
        if *left > 0 {
            let before = engine.allocations();
            net.forward_layers(rest())?;
            net.backward()?;
            if engine.allocations() != before {
                // Buffers made during a pass would belong to the recording: wait for a pass
                // that makes none.
                *allocating += 1;
                if *allocating >= MAX_ALLOCATING_WARMUPS {
                    tracing::debug!("the net allocates memory every iteration: no graph");
                    self.state = State::Off;
                }
            } else {
                *left -= 1;
            }
            return Ok(true);
        }
        if !engine.begin_graph() {
            self.state = State::Off;
            net.forward_layers(rest())?;
            net.backward()?;
            return Ok(true);
        }
        let recorded = net.forward_layers(rest()).and_then(|()| net.backward());
        let graph = engine.end_graph();
        recorded?;
        match graph {
            Ok(graph) => {
                engine.launch_graph(&graph);
                tracing::info!(
                    "Training passes recorded into a CUDA graph; replaying it from now on"
                );
                self.state = State::Ready {
                    graph,
                    epoch,
                    shapes: input_shapes(net, inputs),
                };
            }
            Err(e) => {
                tracing::warn!("{e}; training goes on without a graph");
                self.state = State::Off;
                net.forward_layers(rest())?;
                net.backward()?;
            }
        }
        Ok(true)
    }
}
