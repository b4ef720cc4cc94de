//! Caffe's own prototxts and a Caffe-trained model load; errors point at the right place.

use std::path::{Path, PathBuf};

use crema_proto::caffe::{self, v1_layer_parameter::LayerType};
use crema_proto::{
    parse_text, read_binary, read_net_text, read_solver_text, to_text, write_binary_atomic,
    write_text_atomic, ProtoError,
};

/// The repository's sibling `shared/` folder, if this checkout has one.
fn shared() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared");
    if dir.is_dir() {
        Some(dir)
    } else {
        eprintln!("skipping: {} not found", dir.display());
        None
    }
}

fn prototxts(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            prototxts(&path, out);
        } else if path.extension().is_some_and(|e| e == "prototxt") {
            out.push(path);
        }
    }
}

fn layer<'a>(net: &'a caffe::NetParameter, name: &str) -> &'a caffe::LayerParameter {
    net.layer
        .iter()
        .find(|l| l.name() == name)
        .unwrap_or_else(|| panic!("no layer {name}"))
}

fn parse_err(text: &str, message_name: &str) -> String {
    match parse_text::<caffe::NetParameter>(text, "t.prototxt", message_name) {
        Ok(_) => panic!("expected an error for {text:?}"),
        Err(err) => err.to_string(),
    }
}

fn reparses<M>(msg: &M, message_name: &str) -> Result<bool, ProtoError>
where
    M: prost::Message + Default + PartialEq,
{
    let text = to_text(msg, message_name)?;
    Ok(parse_text::<M>(&text, "printed", message_name)? == *msg)
}

#[test]
fn every_caffe_prototxt_parses() {
    let Some(shared) = shared() else { return };
    let mut files = Vec::new();
    prototxts(&shared.join("caffe"), &mut files);
    files.sort();
    assert!(files.len() >= 40, "only {} prototxts found", files.len());

    let mut failures = Vec::new();
    for path in &files {
        let solver = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("solver"));
        // Each file must also survive printing and re-parsing unchanged.
        let result = if solver {
            read_solver_text(path).and_then(|m| reparses(&m, "caffe.SolverParameter"))
        } else {
            read_net_text(path).and_then(|m| reparses(&m, "caffe.NetParameter"))
        };
        match result {
            Ok(true) => {}
            Ok(false) => failures.push(format!("{}: changed by a text round trip", path.display())),
            Err(err) => failures.push(err.to_string()),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

#[test]
fn caffe_examples_have_the_expected_values() {
    let Some(shared) = shared() else { return };
    let caffe_dir = shared.join("caffe");

    let lenet = read_net_text(&caffe_dir.join("examples/mnist/lenet_train_test.prototxt")).unwrap();
    assert_eq!(lenet.name(), "LeNet");
    let conv1 = layer(&lenet, "conv1");
    assert_eq!(conv1.r#type(), "Convolution");
    let conv = conv1.convolution_param.as_ref().unwrap();
    assert_eq!(conv.num_output(), 20);
    assert_eq!(conv.kernel_size, vec![5]);
    assert_eq!(conv.weight_filler.as_ref().unwrap().r#type(), "xavier");
    assert_eq!(conv1.param.len(), 2);
    assert_eq!(conv1.param[1].lr_mult(), 2.0);
    // Unset optional fields read as Caffe's declared defaults.
    assert_eq!(conv.group(), 1);
    assert!(conv.bias_term());
    let data = layer(&lenet, "mnist");
    assert_eq!(data.include.len(), 1);
    assert!((data.transform_param.as_ref().unwrap().scale() - 0.00390625).abs() < 1e-9);

    let solver =
        read_solver_text(&caffe_dir.join("examples/cifar10/cifar10_quick_solver.prototxt"))
            .unwrap();
    assert_eq!(solver.base_lr(), 0.001);
    assert_eq!(solver.max_iter(), 4000);
    assert_eq!(
        solver.solver_mode(),
        caffe::solver_parameter::SolverMode::Gpu
    );
    assert_eq!(solver.r#type(), "SGD");
    assert_eq!(solver.random_seed(), -1);

    // A solver with an inline V1 net (`layers { type: CONVOLUTION }`).
    let consolidated =
        read_solver_text(&caffe_dir.join("examples/mnist/lenet_consolidated_solver.prototxt"))
            .unwrap();
    let net = consolidated.net_param.as_ref().unwrap();
    assert!(net.layer.is_empty());
    assert!(!net.layers.is_empty());
    let v1_conv = net.layers.iter().find(|l| l.name() == "conv1").unwrap();
    assert_eq!(v1_conv.r#type(), LayerType::Convolution);
    assert_eq!(v1_conv.blobs_lr, vec![1.0, 2.0]);
    assert_eq!(consolidated.test_state.len(), 2);

    // Deploy nets declare their input through an Input layer.
    let rcnn =
        read_net_text(&caffe_dir.join("models/bvlc_reference_rcnn_ilsvrc13/deploy.prototxt"))
            .unwrap();
    let input = layer(&rcnn, "data").input_param.as_ref().unwrap();
    assert_eq!(input.shape[0].dim, vec![10, 3, 227, 227]);
}

#[test]
fn legacy_input_dim_nets_parse() {
    let net: caffe::NetParameter = parse_text(
        "name: 'old' input: 'data' input_dim: 1 input_dim: 3 input_dim: 227 input_dim: 227\n\
         layers { name: 'ip' type: INNER_PRODUCT bottom: 'data' top: 'ip'\n\
                  blobs_lr: 1 blobs_lr: 2 inner_product_param { num_output: 10 } }",
        "old.prototxt",
        "caffe.NetParameter",
    )
    .unwrap();
    assert_eq!(net.input, vec!["data"]);
    assert_eq!(net.input_dim, vec![1, 3, 227, 227]);
    assert_eq!(net.layers[0].r#type(), LayerType::InnerProduct);
}

#[test]
fn lenet_caffemodel_decodes() {
    let Some(shared) = shared() else { return };
    let model: caffe::NetParameter = read_binary(
        &shared.join("zoo/lenet/lenet_iter_10000.caffemodel"),
        "caffe.NetParameter",
    )
    .unwrap();
    let conv1 = layer(&model, "conv1");
    assert_eq!(conv1.blobs.len(), 2);
    let weights = &conv1.blobs[0];
    assert_eq!(weights.shape.as_ref().unwrap().dim, vec![20, 1, 5, 5]);
    assert_eq!(weights.data.len(), 500);
    assert!(weights.data.iter().all(|w| w.is_finite()));
    assert!(weights.data.iter().any(|&w| w != 0.0));
    assert_eq!(conv1.blobs[1].data.len(), 20);
}

#[test]
fn misspelt_field_names_the_place_and_the_fix() {
    let msg = parse_err(
        r#"layer { name: "c" type: "Convolution" convolution_param { num_ouput: 3 } }"#,
        "caffe.NetParameter",
    );
    assert_eq!(
        msg,
        "t.prototxt:1:59: no field `num_ouput` in caffe.ConvolutionParameter; did you mean `num_output`?"
    );
    assert!(!msg.contains('\n'));

    // A misspelling on a later line reports that line.
    let msg = parse_err("name: 'x'\nlayer {\n  nmae: 'y'\n}\n", "caffe.NetParameter");
    assert_eq!(
        msg,
        "t.prototxt:3:3: no field `nmae` in caffe.LayerParameter; did you mean `name`?"
    );

    // Nothing close: no guess, but a setting one level too high says where it belongs.
    let msg = parse_err("layer { num_output: 3 }", "caffe.NetParameter");
    assert!(msg.starts_with("t.prototxt:1:9: no field `num_output` in caffe.LayerParameter; `num_output` belongs inside a block such as `convolution_param`"), "{msg}");
    let msg = parse_err("layer { completely_unknown: 3 }", "caffe.NetParameter");
    assert_eq!(
        msg,
        "t.prototxt:1:9: no field `completely_unknown` in caffe.LayerParameter"
    );

    // V1 habits get pointed at their V2 spelling.
    let msg = parse_err("layer { blobs_lr: 1 }", "caffe.NetParameter");
    assert!(msg.contains("`param { lr_mult: ... }`"), "{msg}");
}

#[test]
fn unknown_enum_value_suggests_the_closest() {
    let msg = parse_err(
        "layer {\n  name: 'p' type: 'Pooling'\n  pooling_param { pool: MAXX }\n}",
        "caffe.NetParameter",
    );
    assert_eq!(
        msg,
        "t.prototxt:3:25: no value `MAXX` in enum caffe.PoolingParameter.PoolMethod \
         (for `pool` in caffe.PoolingParameter); did you mean `MAX`?"
    );
    let msg = parse_err("solver_mode: TPU_POD_X", "caffe.SolverParameter");
    assert!(msg.ends_with("; expected one of CPU, GPU"), "{msg}");
}

#[test]
fn wrong_value_type_names_the_field_and_expectation() {
    let msg = parse_err(
        "layer {\n  convolution_param {\n    num_output: \"twenty\"\n  }\n}",
        "caffe.NetParameter",
    );
    assert_eq!(
        msg,
        "t.prototxt:3:17: `num_output` in caffe.ConvolutionParameter expects a non-negative \
         integer (uint32), but found `\"twenty\"`"
    );
    let msg = parse_err("layer { type: Convolution }", "caffe.NetParameter");
    assert_eq!(
        msg,
        "t.prototxt:1:15: `type` in caffe.LayerParameter expects a quoted string, but found \
         `Convolution` (strings need quotes: \"Convolution\")"
    );
    let msg = parse_err(
        "layer { convolution_param { num_output: -1 } }",
        "caffe.NetParameter",
    );
    assert!(
        msg.starts_with("t.prototxt:1:41: `num_output` in caffe.ConvolutionParameter: "),
        "{msg}"
    );
    assert!(msg.contains("out of range"), "{msg}");
    let msg = parse_err("name: 'a'\nname: 'b'", "caffe.NetParameter");
    assert_eq!(
        msg,
        "t.prototxt:2:7: `name` is set twice in caffe.NetParameter; it is not a repeated field"
    );
}

#[test]
fn unclosed_block_points_at_its_opening() {
    let msg = parse_err("name: 'x'\nlayer {\n  name: 'y'\n", "caffe.NetParameter");
    assert!(msg.starts_with("t.prototxt:4:1: "), "{msg}");
    assert!(
        msg.ends_with("the `{` of `layer` at 2:7 is never closed"),
        "{msg}"
    );
}

#[test]
fn missing_file_names_the_path_and_the_role() {
    let err = read_net_text(Path::new("/nonexistent/crema/train_val.prototxt")).unwrap_err();
    assert!(matches!(err, ProtoError::Read { .. }));
    assert_eq!(
        err.to_string(),
        "cannot read net definition `/nonexistent/crema/train_val.prototxt`: \
         No such file or directory (os error 2)"
    );
}

#[test]
fn garbage_binary_is_reported_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.caffemodel");
    std::fs::write(&path, b"\x0a\xff\xff\xff\xff\xff").unwrap();
    let err = read_binary::<caffe::NetParameter>(&path, "caffe.NetParameter").unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("x.caffemodel: not a valid caffe.NetParameter binary protobuf: "),
        "{msg}"
    );
}

fn sample_net() -> caffe::NetParameter {
    parse_text(
        r#"
        name: "tiny"
        layer {
          name: "data" type: "Input" top: "data"
          input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } }
        }
        layer {
          name: "conv" type: "Convolution" bottom: "data" top: "conv"
          param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
          convolution_param { num_output: 4 kernel_size: 3 pad: 1
                              weight_filler { type: "gaussian" std: 0.01 } }
          blobs { shape { dim: 2 } data: 0.5 data: -1.25e-3 }
        }
        layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
                pooling_param { pool: AVE kernel_size: 2 stride: 2 } }
        "#,
        "sample",
        "caffe.NetParameter",
    )
    .unwrap()
}

#[test]
fn binary_round_trip_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.caffemodel");
    let net = sample_net();
    write_binary_atomic(&path, &net).unwrap();
    let back: caffe::NetParameter = read_binary(&path, "caffe.NetParameter").unwrap();
    assert_eq!(back, net);
    // Only the final file remains; the temporary was renamed away.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("net.caffemodel")]);
}

#[test]
fn text_round_trip_is_exact() {
    let net = sample_net();
    let text = to_text(&net, "caffe.NetParameter").unwrap();
    assert!(text.lines().count() > 10, "not pretty-printed:\n{text}");
    assert!(text.starts_with("name: \"tiny\"\n"), "{text}");
    let back: caffe::NetParameter = parse_text(&text, "roundtrip", "caffe.NetParameter").unwrap();
    assert_eq!(back, net);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("solver.prototxt");
    let solver = caffe::SolverParameter {
        net: Some("train_val.prototxt".into()),
        base_lr: Some(0.01),
        test_iter: vec![100],
        solver_mode: Some(caffe::solver_parameter::SolverMode::Cpu as i32),
        ..Default::default()
    };
    write_text_atomic(&path, &solver, "caffe.SolverParameter").unwrap();
    assert_eq!(read_solver_text(&path).unwrap(), solver);
}

#[test]
fn text_output_uses_caffes_layout() {
    let text = to_text(&sample_net(), "caffe.NetParameter").unwrap();
    let expected_start =
        "name: \"tiny\"\nlayer {\n  name: \"data\"\n  type: \"Input\"\n  top: \"data\"\n  \
                          input_param {\n    shape {\n      dim: 2\n      dim: 3\n";
    assert!(text.starts_with(expected_start), "{text}");
    assert!(
        text.contains(
            "\n  param {\n    lr_mult: 1\n  }\n  param {\n    lr_mult: 2\n    decay_mult: 0\n  }\n"
        ),
        "{text}"
    );
    assert!(text.contains("    pool: AVE\n"), "{text}");
    assert!(text.contains("    data: -0.00125\n"), "{text}");
    assert!(!text.contains('['), "no list syntax:\n{text}");
    assert!(text.ends_with("}\n"));
}

#[test]
fn caffe_text_format_quirks_parse() {
    // What protobuf's C++ TextFormat (and so Caffe) accepts: `;` and `,` separators, single
    // quotes, `<>` blocks, `field: { }`, list syntax, hex, `f` suffixes, inf, bool spellings,
    // enums by number, CRLF line ends, a BOM, and a comment on the last line with no newline.
    let text = "\u{feff}name: 'q';\r\nforce_backward: True,\r\n\
                layer < name: \"a\", type: 'Convolution'; convolution_param: { num_output: 0x10 \
                pad: [1, 2] weight_filler { std: 1.5f type: 'gaussian' } engine: 2 } >\r\n\
                layer { name: 'r' relu_param { negative_slope: -.5 } loss_weight: inf }\r\n# end";
    let net: caffe::NetParameter = parse_text(text, "q", "caffe.NetParameter").unwrap();
    assert_eq!(net.name(), "q");
    assert!(net.force_backward());
    let conv = net.layer[0].convolution_param.as_ref().unwrap();
    assert_eq!(conv.num_output(), 16);
    assert_eq!(conv.pad, vec![1, 2]);
    assert_eq!(conv.weight_filler.as_ref().unwrap().std(), 1.5);
    assert_eq!(conv.engine(), caffe::convolution_parameter::Engine::Cudnn);
    assert_eq!(
        net.layer[1].relu_param.as_ref().unwrap().negative_slope(),
        -0.5
    );
    assert_eq!(net.layer[1].loss_weight, vec![f32::INFINITY]);
}

#[test]
fn non_utf8_comments_do_not_break_reading() {
    // GBK/Latin-1 comments are common in shared prototxts; Caffe reads bytes and skips them.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("net.prototxt");
    let mut bytes = b"# \xd7\xa2\xca\xcd comment\nname: \"n\"\n".to_vec();
    bytes.extend_from_slice(b"layer { name: \"x\" } # \xe9t\xe9\n");
    std::fs::write(&path, bytes).unwrap();
    let net = read_net_text(&path).unwrap();
    assert_eq!(net.layer[0].name(), "x");
}

#[test]
fn errors_inside_list_syntax_keep_their_context() {
    let msg = parse_err(
        "layer: [{ name: 'a' type: 'ReLU' }, { name: 'b' relu_param { negative_slop: 0.1 } }]",
        "caffe.NetParameter",
    );
    assert_eq!(
        msg,
        "t.prototxt:1:62: no field `negative_slop` in caffe.ReLUParameter; did you mean `negative_slope`?"
    );
    let msg = parse_err(
        "layer { convolution_param { pad: [1, x] } }",
        "caffe.NetParameter",
    );
    assert!(
        msg.contains("`pad` in caffe.ConvolutionParameter expects a non-negative integer"),
        "{msg}"
    );
}
