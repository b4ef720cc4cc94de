//! Legacy net formats upgraded on load, as Caffe does: V1 `layers { type: CONVOLUTION }` nets and
//! `input:`/`input_dim:`/`input_shape:` nets become the current `layer { type: "..." }` form.

use crate::{bail, Result};
use crema_proto::caffe::param_spec::DimCheckMode;
use crema_proto::caffe::v1_layer_parameter::{DimCheckMode as V1Dim, LayerType};
use crema_proto::caffe::{
    BlobShape, InputParameter, LayerParameter, NetParameter, ParamSpec, V1LayerParameter,
};
use tracing::info;

/// Caffe's type string for a V1 layer type.
fn v1_type_name(t: LayerType) -> &'static str {
    use LayerType::*;
    match t {
        None => "",
        Absval => "AbsVal",
        Accuracy => "Accuracy",
        Argmax => "ArgMax",
        Bnll => "BNLL",
        Concat => "Concat",
        ContrastiveLoss => "ContrastiveLoss",
        Convolution => "Convolution",
        Deconvolution => "Deconvolution",
        Data => "Data",
        Dropout => "Dropout",
        DummyData => "DummyData",
        EuclideanLoss => "EuclideanLoss",
        Eltwise => "Eltwise",
        Exp => "Exp",
        Flatten => "Flatten",
        Hdf5Data => "HDF5Data",
        Hdf5Output => "HDF5Output",
        HingeLoss => "HingeLoss",
        Im2col => "Im2col",
        ImageData => "ImageData",
        InfogainLoss => "InfogainLoss",
        InnerProduct => "InnerProduct",
        Lrn => "LRN",
        MemoryData => "MemoryData",
        MultinomialLogisticLoss => "MultinomialLogisticLoss",
        Mvn => "MVN",
        Pooling => "Pooling",
        Power => "Power",
        Relu => "ReLU",
        Sigmoid => "Sigmoid",
        SigmoidCrossEntropyLoss => "SigmoidCrossEntropyLoss",
        Silence => "Silence",
        Softmax => "Softmax",
        SoftmaxLoss => "SoftmaxWithLoss",
        Split => "Split",
        Slice => "Slice",
        Tanh => "TanH",
        WindowData => "WindowData",
        Threshold => "Threshold",
    }
}

/// One V1 layer in the current form.
pub fn upgrade_v1_layer(v1: &V1LayerParameter) -> Result<LayerParameter> {
    if v1.layer.is_some() {
        bail!(
            "layer `{}` uses the V0 format (a `layer` inside `layers`), which crema does not read; upgrade it with Caffe's upgrade_net_proto_text once",
            v1.name()
        );
    }
    let mut l = LayerParameter {
        name: v1.name.clone(),
        r#type: Some(v1_type_name(v1.r#type()).to_string()),
        bottom: v1.bottom.clone(),
        top: v1.top.clone(),
        include: v1.include.clone(),
        exclude: v1.exclude.clone(),
        loss_weight: v1.loss_weight.clone(),
        blobs: v1.blobs.clone(),
        accuracy_param: v1.accuracy_param,
        argmax_param: v1.argmax_param,
        concat_param: v1.concat_param,
        contrastive_loss_param: v1.contrastive_loss_param,
        convolution_param: v1.convolution_param.clone(),
        data_param: v1.data_param.clone(),
        dropout_param: v1.dropout_param,
        dummy_data_param: v1.dummy_data_param.clone(),
        eltwise_param: v1.eltwise_param.clone(),
        exp_param: v1.exp_param,
        hdf5_data_param: v1.hdf5_data_param.clone(),
        hdf5_output_param: v1.hdf5_output_param.clone(),
        hinge_loss_param: v1.hinge_loss_param,
        image_data_param: v1.image_data_param.clone(),
        infogain_loss_param: v1.infogain_loss_param.clone(),
        inner_product_param: v1.inner_product_param.clone(),
        lrn_param: v1.lrn_param,
        memory_data_param: v1.memory_data_param,
        mvn_param: v1.mvn_param,
        pooling_param: v1.pooling_param,
        power_param: v1.power_param,
        relu_param: v1.relu_param,
        sigmoid_param: v1.sigmoid_param,
        softmax_param: v1.softmax_param,
        slice_param: v1.slice_param.clone(),
        tanh_param: v1.tanh_param,
        threshold_param: v1.threshold_param,
        window_data_param: v1.window_data_param.clone(),
        transform_param: v1.transform_param.clone(),
        loss_param: v1.loss_param,
        ..Default::default()
    };
    let n = v1
        .param
        .len()
        .max(v1.blobs_lr.len())
        .max(v1.weight_decay.len())
        .max(v1.blob_share_mode.len());
    for k in 0..n {
        let mut spec = ParamSpec::default();
        if let Some(name) = v1.param.get(k) {
            spec.name = Some(name.clone());
        }
        if let Some(m) = v1.blob_share_mode.get(k) {
            let mode = match V1Dim::try_from(*m) {
                Ok(V1Dim::Permissive) => DimCheckMode::Permissive,
                _ => DimCheckMode::Strict,
            };
            spec.set_share_mode(mode);
        }
        if let Some(lr) = v1.blobs_lr.get(k) {
            spec.lr_mult = Some(*lr);
        }
        if let Some(wd) = v1.weight_decay.get(k) {
            spec.decay_mult = Some(*wd);
        }
        l.param.push(spec);
    }
    Ok(l)
}

/// Returns the net in the current format (a clone when nothing needed upgrading).
pub fn upgrade_net(param: &NetParameter) -> Result<NetParameter> {
    let mut net = param.clone();
    if !net.layers.is_empty() {
        if !net.layer.is_empty() {
            bail!("the net mixes `layer` and legacy `layers` entries; use one format");
        }
        info!(
            "Upgrading V1 net `{}` (layers {{ type: ENUM }}) to the current format",
            net.name()
        );
        net.layer = net
            .layers
            .iter()
            .map(upgrade_v1_layer)
            .collect::<Result<_>>()?;
        net.layers.clear();
    }
    upgrade_data_transformation(&mut net);
    upgrade_batch_norm(&mut net);
    if !net.input.is_empty() {
        let shapes: Vec<BlobShape> = if !net.input_shape.is_empty() {
            net.input_shape.clone()
        } else if !net.input_dim.is_empty() {
            if net.input_dim.len() != 4 * net.input.len() {
                bail!(
                    "the net has {} inputs but {} input_dim values; give four (N, C, H, W) per input",
                    net.input.len(),
                    net.input_dim.len()
                );
            }
            net.input_dim
                .chunks(4)
                .map(|c| BlobShape {
                    dim: c.iter().map(|d| *d as i64).collect(),
                })
                .collect()
        } else {
            bail!("the net declares `input` without input_shape or input_dim");
        };
        if shapes.len() != net.input.len() {
            bail!(
                "the net has {} inputs but {} input shapes",
                net.input.len(),
                shapes.len()
            );
        }
        info!(
            "Upgrading input fields of net `{}` to an Input layer",
            net.name()
        );
        let input = LayerParameter {
            name: Some("input".to_string()),
            r#type: Some("Input".to_string()),
            top: net.input.clone(),
            input_param: Some(InputParameter { shape: shapes }),
            ..Default::default()
        };
        net.layer.insert(0, input);
        net.input.clear();
        net.input_shape.clear();
        net.input_dim.clear();
    }
    Ok(net)
}

/// Moves the pre-2014 transformation fields (scale, mean_file, crop_size, mirror) of data layer
/// parameters into `transform_param`, as Caffe's UpgradeNetDataTransformation does.
fn upgrade_data_transformation(net: &mut NetParameter) {
    macro_rules! lift {
        ($layer:expr, $field:ident) => {{
            let l: &mut LayerParameter = $layer;
            if let Some(p) = l.$field.as_mut() {
                let (scale, mean, crop, mirror) = (
                    p.scale.take(),
                    p.mean_file.take(),
                    p.crop_size.take(),
                    p.mirror.take(),
                );
                if scale.is_some() || mean.is_some() || crop.is_some() || mirror.is_some() {
                    info!(
                        "Upgrading legacy transformation fields of layer `{}` to transform_param",
                        l.name()
                    );
                    let t = l.transform_param.get_or_insert_with(Default::default);
                    if scale.is_some() {
                        t.scale = scale;
                    }
                    if mean.is_some() {
                        t.mean_file = mean;
                    }
                    if crop.is_some() {
                        t.crop_size = crop;
                    }
                    if mirror.is_some() {
                        t.mirror = mirror;
                    }
                }
            }
        }};
    }
    for l in net.layer.iter_mut() {
        lift!(l, data_param);
        lift!(l, image_data_param);
        lift!(l, window_data_param);
    }
}

/// Old BatchNorm definitions listed three `param { lr_mult: 0 }` specs; the layer now freezes its
/// statistics itself, so Caffe drops them.
fn upgrade_batch_norm(net: &mut NetParameter) {
    for l in net.layer.iter_mut() {
        if l.r#type() == "BatchNorm" && l.param.len() == 3 {
            info!("Dropping the param specs of BatchNorm layer `{}` (the layer freezes its statistics)", l.name());
            l.param.clear();
        }
    }
}

/// Upgrades a solver: the legacy `solver_type` enum becomes the `type` string.
pub fn upgrade_solver(
    param: &crema_proto::caffe::SolverParameter,
) -> Result<crema_proto::caffe::SolverParameter> {
    let mut p = param.clone();
    if let Some(v) = p.solver_type.take() {
        const NAMES: [&str; 6] = ["SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam"];
        let Some(name) = NAMES.get(v as usize) else {
            bail!("solver_type {v} is not a solver type");
        };
        if let Some(t) = &p.r#type {
            if t != name {
                bail!("the solver says type: \"{t}\" but solver_type says {name}; remove one");
            }
        }
        info!("Upgrading solver_type {v} to type: \"{name}\"");
        p.r#type = Some(name.to_string());
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> NetParameter {
        crema_proto::parse_text(text, "t", "caffe.NetParameter").unwrap()
    }

    #[test]
    fn v1_layers_become_current_layers_with_param_specs() {
        let n = net(
            r#"name: "x" layers { name: "c" type: CONVOLUTION bottom: "data" top: "c"
            blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 param: "w"
            convolution_param { num_output: 3 kernel_size: 3 }
            include { phase: TRAIN } }
            layers { name: "l" type: SOFTMAX_LOSS bottom: "c" bottom: "label" }"#,
        );
        let u = upgrade_net(&n).unwrap();
        assert!(u.layers.is_empty());
        assert_eq!(u.layer[0].r#type(), "Convolution");
        assert_eq!(u.layer[0].param.len(), 2);
        assert_eq!(u.layer[0].param[0].name(), "w");
        assert_eq!(u.layer[0].param[1].lr_mult(), 2.0);
        assert_eq!(u.layer[0].param[1].decay_mult(), 0.0);
        assert_eq!(u.layer[0].include.len(), 1);
        assert_eq!(u.layer[1].r#type(), "SoftmaxWithLoss");
    }

    #[test]
    fn input_dims_become_an_input_layer() {
        let n = net(
            r#"input: "data" input_dim: 1 input_dim: 3 input_dim: 8 input_dim: 8
            layer { name: "r" type: "ReLU" bottom: "data" top: "data" }"#,
        );
        let u = upgrade_net(&n).unwrap();
        assert_eq!(u.layer[0].r#type(), "Input");
        assert_eq!(
            u.layer[0].input_param.as_ref().unwrap().shape[0].dim,
            vec![1, 3, 8, 8]
        );
        let bad = net(r#"input: "data" input_dim: 1 input_dim: 3"#);
        assert!(upgrade_net(&bad)
            .unwrap_err()
            .to_string()
            .contains("four (N, C, H, W)"));
    }

    #[test]
    fn legacy_transform_fields_move_to_transform_param() {
        let n = net(
            r#"layer { name: "d" type: "Data" top: "data" data_param { source: "x" batch_size: 4 scale: 0.5 crop_size: 3 mirror: true mean_file: "m" } }"#,
        );
        let u = upgrade_net(&n).unwrap();
        let t = u.layer[0].transform_param.as_ref().unwrap();
        assert_eq!(
            (t.scale(), t.crop_size(), t.mirror(), t.mean_file()),
            (0.5, 3, true, "m")
        );
        assert!(u.layer[0].data_param.as_ref().unwrap().scale.is_none());
    }

    #[test]
    fn solver_type_enum_becomes_type_string() {
        let p: crema_proto::caffe::SolverParameter = crema_proto::parse_text(
            "solver_type: ADAM base_lr: 0.1",
            "t",
            "caffe.SolverParameter",
        )
        .unwrap();
        assert_eq!(upgrade_solver(&p).unwrap().r#type(), "Adam");
    }
}
