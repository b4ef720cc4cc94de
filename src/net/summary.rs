//! A built net described layer by layer: shapes, learnable parameters, multiply-adds, memory.

use super::Net;

/// One layer's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerSummary {
    pub name: String,
    pub kind: String,
    pub bottoms: Vec<String>,
    pub tops: Vec<String>,
    pub top_shapes: Vec<Vec<usize>>,
    /// Learnable values the layer owns (0 for blobs it shares with an earlier layer).
    pub params: usize,
    /// Whether some of its learnable blobs are shared with an earlier layer.
    pub shares_params: bool,
    /// Multiply-adds per image of Convolution, Deconvolution and InnerProduct (others: 0).
    pub macs_per_image: u64,
    /// Bytes of the tops this layer creates (in-place tops reuse their bottom's memory).
    pub activation_bytes: usize,
}

/// The whole net's figures.
#[derive(Debug, Clone, PartialEq)]
pub struct NetSummary {
    pub layers: Vec<LayerSummary>,
    /// Learnable values, shared blobs counted once.
    pub total_params: usize,
    pub total_macs_per_image: u64,
    pub total_activation_bytes: usize,
    /// Batch size: the first axis of the first layer's first top.
    pub batch: usize,
}

impl Net {
    /// Per-layer shapes, parameter counts, multiply-adds and activation memory, with totals.
    pub fn summary(&self) -> NetSummary {
        let names = self.blob_names();
        let mut owned = std::collections::HashSet::new();
        for p in self.params() {
            owned.insert(std::rc::Rc::as_ptr(&p.blob));
        }
        let mut seen = std::collections::HashSet::new();
        let mut layers = vec![];
        for l in self.layers() {
            let top_shapes: Vec<Vec<usize>> =
                l.tops.iter().map(|t| self.blob_at(*t).shape()).collect();
            let mut params = 0;
            let mut shares = false;
            for b in &l.blobs {
                let ptr = std::rc::Rc::as_ptr(b);
                if owned.contains(&ptr) && seen.insert(ptr) {
                    params += b.count();
                } else {
                    shares = true;
                }
            }
            let per_image =
                |shape: &[usize]| -> u64 { shape.iter().skip(1).product::<usize>() as u64 };
            let weight_fan = |skip: usize| -> u64 {
                l.blobs
                    .first()
                    .map_or(0, |w| w.shape().iter().skip(skip).product::<usize>() as u64)
            };
            let macs = match l.kind.as_str() {
                // Each output value sums over Cin/g × kh × kw inputs: the filter's shape past axis 0.
                "Convolution" | "InnerProduct" => top_shapes
                    .first()
                    .map_or(0, |s| per_image(s) * weight_fan(1)),
                // Each input value spreads over Cout/g × kh × kw outputs.
                "Deconvolution" => l
                    .bottoms
                    .first()
                    .map_or(0, |b| per_image(&self.blob_at(*b).shape()) * weight_fan(1)),
                _ => 0,
            };
            let activation_bytes = l
                .tops
                .iter()
                .filter(|t| !l.bottoms.contains(t))
                .map(|t| self.blob_at(*t).count() * std::mem::size_of::<f32>())
                .sum();
            layers.push(LayerSummary {
                name: l.name.clone(),
                kind: l.kind.clone(),
                bottoms: l.bottoms.iter().map(|b| names[*b].clone()).collect(),
                tops: l.tops.iter().map(|t| names[*t].clone()).collect(),
                top_shapes,
                params,
                shares_params: shares,
                macs_per_image: macs,
                activation_bytes,
            });
        }
        let batch = layers
            .iter()
            .find_map(|l| l.top_shapes.first().and_then(|s| s.first().copied()))
            .unwrap_or(1);
        NetSummary {
            total_params: self.params().iter().map(|p| p.blob.count()).sum(),
            total_macs_per_image: layers.iter().map(|l| l.macs_per_image).sum(),
            total_activation_bytes: layers.iter().map(|l| l.activation_bytes).sum(),
            batch,
            layers,
        }
    }
}
