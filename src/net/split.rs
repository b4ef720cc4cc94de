//! Caffe's InsertSplits: a blob read by several layers (or read and also weighted as a loss) gets
//! a Split layer so each consumer has its own gradient, with Caffe's exact blob and layer names.

use crema_proto::caffe::{LayerParameter, NetParameter};
use std::collections::HashMap;

fn split_layer_name(layer: &str, blob: &str, top: usize) -> String {
    format!("{blob}_{layer}_{top}_split")
}

fn split_blob_name(layer: &str, blob: &str, top: usize, k: usize) -> String {
    format!("{blob}_{layer}_{top}_split_{k}")
}

/// Returns the net with Split layers inserted.
pub fn insert_splits(param: &NetParameter) -> NetParameter {
    // (layer index, top index) producing each blob name at each point in the net.
    let mut producer: HashMap<String, (usize, usize)> = HashMap::new();
    let mut consumers: HashMap<(usize, usize), usize> = HashMap::new();
    let mut loss_weight: HashMap<(usize, usize), f32> = HashMap::new();
    let mut bottom_source: HashMap<(usize, usize), (usize, usize)> = HashMap::new();
    for (i, l) in param.layer.iter().enumerate() {
        for (j, b) in l.bottom.iter().enumerate() {
            if let Some(src) = producer.get(b) {
                bottom_source.insert((i, j), *src);
                *consumers.entry(*src).or_default() += 1;
            }
        }
        for (j, t) in l.top.iter().enumerate() {
            producer.insert(t.clone(), (i, j));
        }
        for (j, w) in l.loss_weight.iter().enumerate() {
            if *w != 0.0 {
                loss_weight.insert((i, j), *w);
                *consumers.entry((i, j)).or_default() += 1;
            }
        }
    }
    let mut next_split: HashMap<(usize, usize), usize> = HashMap::new();
    let mut out = param.clone();
    out.layer.clear();
    for (i, l) in param.layer.iter().enumerate() {
        let mut layer = l.clone();
        for j in 0..layer.bottom.len() {
            if let Some(src) = bottom_source.get(&(i, j)) {
                if consumers.get(src).copied().unwrap_or(0) > 1 {
                    let src_layer = param.layer[src.0].name().to_string();
                    let k = next_split.entry(*src).or_default();
                    layer.bottom[j] = split_blob_name(&src_layer, &layer.bottom[j], src.1, *k);
                    *k += 1;
                }
            }
        }
        let mut splits = vec![];
        for j in 0..layer.top.len() {
            let n = consumers.get(&(i, j)).copied().unwrap_or(0);
            if n > 1 {
                let blob = layer.top[j].clone();
                let name = layer.name().to_string();
                let mut s = LayerParameter {
                    name: Some(split_layer_name(&name, &blob, j)),
                    r#type: Some("Split".to_string()),
                    bottom: vec![blob.clone()],
                    top: (0..n)
                        .map(|k| split_blob_name(&name, &blob, j, k))
                        .collect(),
                    ..Default::default()
                };
                if let Some(w) = loss_weight.get(&(i, j)) {
                    // The loss weight moves to the split's first top; consumers start after it.
                    s.loss_weight = vec![*w];
                    s.loss_weight.extend(std::iter::repeat_n(0.0, n - 1));
                    layer.loss_weight[j] = 0.0;
                    *next_split.entry((i, j)).or_default() += 1;
                }
                splits.push(s);
            }
        }
        out.layer.push(layer);
        out.layer.extend(splits);
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::engine::{CpuEngine, Engine};
    use crate::layers::Phase;
    use crate::net::{Net, State};
    use std::rc::Rc;

    #[test]
    fn split_tops_read_the_bottom_data_and_sum_their_gradients() {
        let text = r#"force_backward: true
            layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
            layer { name: "a" type: "Power" bottom: "x" top: "a" power_param { scale: 2 } }
            layer { name: "relu_b" type: "ReLU" bottom: "x" top: "b" }
            layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }
            layer { name: "loss" type: "EuclideanLoss" bottom: "s" bottom: "x" top: "l" }"#;
        let p = crema_proto::parse_text(text, "t.prototxt", "caffe.NetParameter").unwrap();
        let e: Rc<dyn Engine> = Rc::new(CpuEngine::new());
        let mut net = Net::new(&p, &State::phase(Phase::Train), e.clone()).unwrap();
        let x = net.blob("x").unwrap();
        let tops: Vec<_> = (0..3)
            .filter_map(|k| net.blob(&format!("x_in_0_split_{k}")))
            .collect();
        assert_eq!(tops.len(), 3, "{:?}", net.blob_names());
        assert!(tops.iter().all(|t| t.shares_data(&x)));
        let v = [-1.0, 0.5, 2.0, -3.0, 4.0, 0.25];
        x.set_data(&*e, &v);
        net.forward().unwrap();
        for t in &tops {
            assert_eq!(t.data_to_vec(&*e), v);
        }
        // s = 2x + relu(x) and loss = |s - x|² / (2·2); force_backward makes the loss pass a
        // gradient to x as well, so dL/dx = (s - x)/2 · (2 + [x > 0] - 1).
        net.backward().unwrap();
        let want: Vec<f32> = v
            .iter()
            .map(|&x| {
                let s = 2.0 * x + x.max(0.0);
                (s - x) / 2.0 * (1.0 + if x > 0.0 { 1.0 } else { 0.0 })
            })
            .collect();
        assert_eq!(x.diff_to_vec(&*e), want);
    }
}
