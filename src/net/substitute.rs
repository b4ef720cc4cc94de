//! Data layers stood in for by Input layers of their declared shapes, so a train_val net can be
//! built, inspected or shape-checked without its LMDBs, image lists or HDF5 files.

use super::{filter_net, State};
use crate::{bail, Result};
use crema_proto::caffe::{BlobShape, InputParameter, LayerParameter, NetParameter};
use std::path::Path;

/// Which data layers to replace, and shapes that override what the prototxt says.
#[derive(Debug, Clone, Default)]
pub struct DataOverrides {
    /// Replace every data layer, even those whose source exists.
    pub all: bool,
    /// Shape of the data top of every replaced layer: N,C,H,W, or C,H,W with N from the layer's
    /// batch size.
    pub input_shape: Option<Vec<usize>>,
}

/// A data layer that was replaced: its name, type and the shapes given to its tops, with notes on
/// what was assumed.
#[derive(Debug, Clone, PartialEq)]
pub struct Replaced {
    pub layer: String,
    pub kind: String,
    pub shapes: Vec<Vec<usize>>,
    pub notes: Vec<String>,
}

/// Layer types that read their input from outside the net.
pub const DATA_LAYER_TYPES: [&str; 5] =
    ["Data", "ImageData", "HDF5Data", "MemoryData", "WindowData"];

/// What a data layer declares about its first top: batch, and C/H/W where known.
struct Declared {
    batch: usize,
    channels: Option<usize>,
    height: Option<usize>,
    width: Option<usize>,
    notes: Vec<String>,
    /// Where the data lives, when the layer reads a path crema can open (Data, ImageData).
    source: Option<String>,
}

fn declared(l: &LayerParameter) -> Declared {
    let t = l.transform_param.clone().unwrap_or_default();
    let crop = (t.crop_size() > 0).then_some(t.crop_size() as usize);
    let mut d = Declared {
        batch: 1,
        channels: None,
        height: crop,
        width: crop,
        notes: vec![],
        source: None,
    };
    if t.force_gray() {
        d.channels = Some(1);
    } else if t.force_color() {
        d.channels = Some(3);
    } else if t.mean_value.len() > 1 {
        d.channels = Some(t.mean_value.len());
    }
    // A readable mean file knows the channels, and the size when nothing is cropped.
    if t.mean_file.is_some() {
        if let Ok(m) = crema_data_tools::load_mean(Path::new(t.mean_file())) {
            d.channels = d.channels.or(Some(m.channels));
            d.height = d.height.or(Some(m.height));
            d.width = d.width.or(Some(m.width));
        }
    }
    match l.r#type() {
        "Data" => {
            let p = l.data_param.clone().unwrap_or_default();
            d.batch = p.batch_size() as usize;
            d.source = Some(p.source().to_string());
        }
        "ImageData" => {
            let p = l.image_data_param.clone().unwrap_or_default();
            d.batch = p.batch_size() as usize;
            d.channels = d.channels.or(Some(if p.is_color() { 3 } else { 1 }));
            if crop.is_none() && p.new_height() > 0 && p.new_width() > 0 {
                d.height = Some(p.new_height() as usize);
                d.width = Some(p.new_width() as usize);
            }
            d.source = Some(p.source().to_string());
        }
        "HDF5Data" => {
            d.batch = l.hdf5_data_param.clone().unwrap_or_default().batch_size() as usize;
        }
        "MemoryData" => {
            let p = l.memory_data_param.unwrap_or_default();
            d.batch = p.batch_size() as usize;
            d.channels = Some(p.channels() as usize);
            d.height = Some(p.height() as usize);
            d.width = Some(p.width() as usize);
        }
        "WindowData" => {
            let p = l.window_data_param.clone().unwrap_or_default();
            d.batch = p.batch_size() as usize;
            d.channels = Some(3);
            if crop.is_none() && p.crop_size() > 0 {
                d.height = Some(p.crop_size() as usize);
                d.width = Some(p.crop_size() as usize);
            }
        }
        _ => {}
    }
    if d.channels.is_none() && d.height.is_some() {
        d.channels = Some(3);
        d.notes
            .push("channels assumed to be 3 (colour images); the data source was not read".into());
    }
    d
}

/// Whether the layer's data can be opened here (an LMDB folder or an image list file).
fn source_present(l: &LayerParameter, d: &Declared) -> bool {
    match (l.r#type(), &d.source) {
        ("Data" | "ImageData", Some(s)) => !s.is_empty() && Path::new(s).exists(),
        _ => false,
    }
}

/// The net for `state` (filtered, legacy fields upgraded) with its data layers replaced by Input
/// layers of their declared shapes: data layers whose source is absent, crema cannot read yet
/// (HDF5Data, MemoryData, WindowData), or every one with `overrides.all`. The first top gets
/// N×C×H×W, further tops (labels) get N. Returns the new net and what was replaced.
pub fn replace_data_layers(
    param: &NetParameter,
    state: &State,
    overrides: &DataOverrides,
) -> Result<(NetParameter, Vec<Replaced>)> {
    let upgraded = crate::upgrade::upgrade_net(param)?;
    let state = state.merged_with(upgraded.state.as_ref());
    let mut net = filter_net(&upgraded, &state)?;
    let mut replaced = vec![];
    for l in net.layer.iter_mut() {
        if !DATA_LAYER_TYPES.contains(&l.r#type()) {
            continue;
        }
        let mut d = declared(l);
        if !overrides.all && source_present(l, &d) {
            continue;
        }
        let data_shape = match overrides.input_shape.as_deref() {
            Some([n, c, h, w]) => vec![*n, *c, *h, *w],
            Some([c, h, w]) => vec![d.batch, *c, *h, *w],
            Some(s) => bail!("--input-shape {s:?}: give N,C,H,W or C,H,W"),
            None => match (d.channels, d.height, d.width) {
                (Some(c), Some(h), Some(w)) => vec![d.batch, c, h, w],
                _ => bail!(
                    "layer `{}` (type {}): its data source{} is not here and the prototxt does not say the image size; \
                     give the data shape, e.g. --input-shape {},3,32,32 (N,C,H,W)",
                    l.name(),
                    l.r#type(),
                    d.source.as_deref().map(|s| format!(" `{s}`")).unwrap_or_default(),
                    d.batch
                ),
            },
        };
        if overrides.input_shape.is_some() {
            d.notes.clear();
        }
        let mut shapes = vec![data_shape.clone()];
        for _ in 1..l.top.len() {
            shapes.push(vec![data_shape[0]]);
        }
        replaced.push(Replaced {
            layer: l.name().to_string(),
            kind: l.r#type().to_string(),
            shapes: shapes.clone(),
            notes: d.notes,
        });
        *l = LayerParameter {
            name: l.name.clone(),
            r#type: Some("Input".to_string()),
            top: l.top.clone(),
            input_param: Some(InputParameter {
                shape: shapes
                    .iter()
                    .map(|s| BlobShape {
                        dim: s.iter().map(|d| *d as i64).collect(),
                    })
                    .collect(),
            }),
            ..Default::default()
        };
    }
    Ok((net, replaced))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::Phase;

    fn net(text: &str) -> NetParameter {
        crema_proto::parse_text(text, "t.prototxt", "caffe.NetParameter").unwrap()
    }

    const TRAIN_VAL: &str = r#"
        layer { name: "d" type: "Data" top: "data" top: "label" include { phase: TRAIN }
                transform_param { crop_size: 227 mean_value: 104 mean_value: 117 mean_value: 123 }
                data_param { source: "/nonexistent/train_lmdb" batch_size: 256 } }
        layer { name: "d" type: "Data" top: "data" top: "label" include { phase: TEST }
                data_param { source: "/nonexistent/val_lmdb" batch_size: 50 } }
        layer { name: "m" type: "MemoryData" top: "m" top: "ml"
                memory_data_param { batch_size: 4 channels: 2 height: 5 width: 6 } }
    "#;

    #[test]
    fn data_layers_become_inputs_of_their_declared_shapes() {
        let (n, r) = replace_data_layers(
            &net(TRAIN_VAL),
            &State::phase(Phase::Train),
            &DataOverrides::default(),
        )
        .unwrap();
        assert_eq!(n.layer.len(), 2);
        assert_eq!(r[0].shapes, vec![vec![256, 3, 227, 227], vec![256]]);
        assert_eq!(r[1].shapes, vec![vec![4, 2, 5, 6], vec![4]]);
        assert_eq!(n.layer[0].r#type(), "Input");
        assert_eq!(
            n.layer[0].input_param.as_ref().unwrap().shape[1].dim,
            vec![256]
        );
    }

    #[test]
    fn unknown_sizes_ask_for_an_input_shape() {
        let e = replace_data_layers(
            &net(TRAIN_VAL),
            &State::phase(Phase::Test),
            &DataOverrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("--input-shape 50,3,32,32"), "{e}");
        let o = DataOverrides {
            all: false,
            input_shape: Some(vec![1, 28, 28]),
        };
        let (_, r) = replace_data_layers(&net(TRAIN_VAL), &State::phase(Phase::Test), &o).unwrap();
        assert_eq!(r[0].shapes, vec![vec![50, 1, 28, 28], vec![50]]);
    }
}
