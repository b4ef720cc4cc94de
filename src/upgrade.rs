//! Legacy net formats upgraded on load, as Caffe does: V1 `layers { type: CONVOLUTION }` nets and
//! `input:`/`input_dim:`/`input_shape:` nets become the current `layer { type: "..." }` form.

use crate::{bail, Result};
use crema_proto::caffe::v1_layer_parameter::{DimCheckMode as V1Dim, LayerType};
use crema_proto::caffe::param_spec::DimCheckMode;
use crema_proto::caffe::{BlobShape, InputParameter, LayerParameter, NetParameter, ParamSpec, V1LayerParameter};
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
        accuracy_param: v1.accuracy_param.clone(),
        argmax_param: v1.argmax_param.clone(),
        concat_param: v1.concat_param.clone(),
        contrastive_loss_param: v1.contrastive_loss_param.clone(),
        convolution_param: v1.convolution_param.clone(),
        data_param: v1.data_param.clone(),
        dropout_param: v1.dropout_param.clone(),
        dummy_data_param: v1.dummy_data_param.clone(),
        eltwise_param: v1.eltwise_param.clone(),
        exp_param: v1.exp_param.clone(),
        hdf5_data_param: v1.hdf5_data_param.clone(),
        hdf5_output_param: v1.hdf5_output_param.clone(),
        hinge_loss_param: v1.hinge_loss_param.clone(),
        image_data_param: v1.image_data_param.clone(),
        infogain_loss_param: v1.infogain_loss_param.clone(),
        inner_product_param: v1.inner_product_param.clone(),
        lrn_param: v1.lrn_param.clone(),
        memory_data_param: v1.memory_data_param.clone(),
        mvn_param: v1.mvn_param.clone(),
        pooling_param: v1.pooling_param.clone(),
        power_param: v1.power_param.clone(),
        relu_param: v1.relu_param.clone(),
        sigmoid_param: v1.sigmoid_param.clone(),
        softmax_param: v1.softmax_param.clone(),
        slice_param: v1.slice_param.clone(),
        tanh_param: v1.tanh_param.clone(),
        threshold_param: v1.threshold_param.clone(),
        window_data_param: v1.window_data_param.clone(),
        transform_param: v1.transform_param.clone(),
        loss_param: v1.loss_param.clone(),
        ..Default::default()
    };
    let n = v1.param.len().max(v1.blobs_lr.len()).max(v1.weight_decay.len()).max(v1.blob_share_mode.len());
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
        info!("Upgrading V1 net `{}` (layers {{ type: ENUM }}) to the current format", net.name());
        net.layer = net.layers.iter().map(upgrade_v1_layer).collect::<Result<_>>()?;
        net.layers.clear();
    }
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
                .map(|c| BlobShape { dim: c.iter().map(|d| *d as i64).collect() })
                .collect()
        } else {
            bail!("the net declares `input` without input_shape or input_dim");
        };
        if shapes.len() != net.input.len() {
            bail!("the net has {} inputs but {} input shapes", net.input.len(), shapes.len());
        }
        info!("Upgrading input fields of net `{}` to an Input layer", net.name());
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
