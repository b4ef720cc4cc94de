//! Caffe's NetState rules: which layers belong to a phase / level / stage.

use crema_proto::caffe::{
    LayerParameter, NetParameter, NetState, NetStateRule, Phase as ProtoPhase,
};

use crate::layers::Phase;
use crate::{bail, Result};

/// The state a net is built for.
#[derive(Debug, Clone)]
pub struct State {
    pub phase: Phase,
    pub level: i32,
    pub stages: Vec<String>,
}

impl State {
    /// A state for a phase with no level or stages.
    pub fn phase(phase: Phase) -> Self {
        State {
            phase,
            level: 0,
            stages: vec![],
        }
    }

    /// Merges the net's own `state` field: its level and stages apply, the phase is ours.
    pub fn merged_with(&self, net_state: Option<&NetState>) -> State {
        let mut s = self.clone();
        if let Some(ns) = net_state {
            if ns.level.is_some() && s.level == 0 {
                s.level = ns.level();
            }
            for st in &ns.stage {
                if !s.stages.contains(st) {
                    s.stages.push(st.clone());
                }
            }
        }
        s
    }
}

fn proto_phase(p: Phase) -> ProtoPhase {
    match p {
        Phase::Train => ProtoPhase::Train,
        Phase::Test => ProtoPhase::Test,
    }
}

/// Whether a state satisfies one rule.
pub fn meets_rule(state: &State, rule: &NetStateRule) -> bool {
    if rule.phase.is_some() && rule.phase() != proto_phase(state.phase) {
        return false;
    }
    if rule.min_level.is_some() && state.level < rule.min_level() {
        return false;
    }
    if rule.max_level.is_some() && state.level > rule.max_level() {
        return false;
    }
    if rule.stage.iter().any(|s| !state.stages.contains(s)) {
        return false;
    }
    if rule.not_stage.iter().any(|s| state.stages.contains(s)) {
        return false;
    }
    true
}

/// Whether a layer is part of the net in this state.
pub fn layer_included(state: &State, layer: &LayerParameter) -> Result<bool> {
    if !layer.include.is_empty() && !layer.exclude.is_empty() {
        bail!(
            "layer `{}` has both include and exclude rules; use only one of them",
            layer.name()
        );
    }
    if !layer.include.is_empty() {
        return Ok(layer.include.iter().any(|r| meets_rule(state, r)));
    }
    Ok(!layer.exclude.iter().any(|r| meets_rule(state, r)))
}

/// The net with only the layers of `state` (Caffe's FilterNet).
pub fn filter_net(param: &NetParameter, state: &State) -> Result<NetParameter> {
    let mut out = param.clone();
    out.layer.clear();
    for l in &param.layer {
        if layer_included(state, l)? {
            out.layer.push(l.clone());
        }
    }
    Ok(out)
}
