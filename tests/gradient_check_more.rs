//! Layer tests beyond LeNet's layers (BatchNorm, Scale, Deconvolution, the other losses, ...): each
//! layer's backward against central finite differences with the shared checker, in-place runs
//! against out-of-place ones, and forward values worked out by hand where the semantics are subtle.

mod common;

use common::*;

const SHAPE: [usize; 4] = [2, 3, 4, 5];

/// Runs a layer out of place and in place on the same input, top diff and parameters; returns
/// (top, bottom diff, parameter diffs) of each run.
#[allow(clippy::type_complexity)]
fn in_place_runs(
    text: &str,
    phase: Phase,
    shape: &[usize],
    x: &[f32],
    params: &[Vec<f32>],
) -> [(Vec<f32>, Vec<f32>, Vec<Vec<f32>>); 2] {
    let dy = Rng::new(99).vec(x.len(), -1.0, 1.0);
    let run = |in_place: bool| {
        let e = CpuEngine::new();
        let bottom = Blob::new_ref(&e, shape);
        bottom.set_data(&e, x);
        let top = if in_place {
            bottom.clone()
        } else {
            Blob::new_ref(&e, &[])
        };
        let mut rig = Rig::wire(e, make_layer(text), phase, vec![bottom], vec![top]);
        let ps = rig.params();
        for (p, v) in ps.iter().zip(params) {
            p.set_data(&rig.e, v);
        }
        rig.forward();
        let y = rig.top(0);
        rig.tops[0].set_diff(&rig.e, &dy);
        rig.backward(&[true]);
        let pd = ps.iter().map(|p| p.diff_to_vec(&rig.e)).collect();
        (y, rig.bottoms[0].diff_to_vec(&rig.e), pd)
    };
    [run(false), run(true)]
}

fn assert_in_place_matches(
    text: &str,
    phase: Phase,
    shape: &[usize],
    x: &[f32],
    params: &[Vec<f32>],
) {
    let [(y0, dx0, p0), (y1, dx1, p1)] = in_place_runs(text, phase, shape, x, params);
    assert_close(&format!("{text}: top in place"), &y1, &y0, 1e-5);
    assert_close(&format!("{text}: bottom diff in place"), &dx1, &dx0, 1e-5);
    for (k, (a, b)) in p1.iter().zip(&p0).enumerate() {
        assert_close(&format!("{text}: param {k} diff in place"), a, b, 1e-5);
    }
}

// ---------------------------------------------------------------------------------------------
// BatchNorm
// ---------------------------------------------------------------------------------------------

#[test]
fn batch_norm_train_gradient() {
    let mut r = Rng::new(201);
    Check::new(r#"name: "bn" type: "BatchNorm" bottom: "x" top: "y""#)
        .bottom(&SHAPE, r.vec(numel(&SHAPE), -1.0, 1.0))
        .skip_params()
        .run();
}

#[test]
fn batch_norm_train_gradient_2d_bottom() {
    // N×C with no spatial axes (BatchNorm after InnerProduct).
    let mut r = Rng::new(202);
    Check::new(
        r#"name: "bn" type: "BatchNorm" bottom: "x" top: "y" batch_norm_param { eps: 0.001 }"#,
    )
    .bottom(&[5, 3], r.vec(15, -1.0, 1.0))
    .skip_params()
    .run();
}

#[test]
fn batch_norm_global_stats_gradient() {
    let mut r = Rng::new(203);
    // Stored sums and scale factor 2: mean = sums / 2, variance = var sums / 2.
    Check::new(r#"name: "bn" type: "BatchNorm" bottom: "x" top: "y""#)
        .phase(Phase::Test)
        .bottom(&SHAPE, r.vec(numel(&SHAPE), -1.0, 1.0))
        .params(vec![vec![0.2, -0.4, 0.6], vec![0.5, 1.0, 2.0], vec![2.0]])
        .skip_params()
        .run();
}

#[test]
fn batch_norm_use_global_stats_in_train() {
    let mut r = Rng::new(204);
    Check::new(
        r#"name: "bn" type: "BatchNorm" bottom: "x" top: "y" batch_norm_param { use_global_stats: true }"#,
    )
    .bottom(&SHAPE, r.vec(numel(&SHAPE), -1.0, 1.0))
    .params(vec![vec![0.1, 0.0, -0.3], vec![0.8, 0.3, 1.5], vec![1.0]])
    .skip_params()
    .run();
}

#[test]
fn batch_norm_train_values_and_running_sums() {
    // One channel of 4 values over N = 2, H×W = 1×2: mean 2.5, biased variance 1.25,
    // unbiased (m = 4) 1.25·4/3.
    let x = vec![1.0, 2.0, 3.0, 4.0];
    let text =
        r#"name: "bn" type: "BatchNorm" batch_norm_param { eps: 0 moving_average_fraction: 0.5 }"#;
    let mut rig = Rig::new(text, Phase::Train, &[(vec![2, 1, 1, 2], x.clone())], 1);
    rig.forward();
    let sd = 1.25f32.sqrt();
    let want: Vec<f32> = x.iter().map(|v| (v - 2.5) / sd).collect();
    assert_close("BatchNorm TRAIN output", &rig.top(0), &want, 1e-5);
    let p = rig.params();
    let e = &rig.e;
    assert_close("mean sum", &p[0].data_to_vec(e), &[2.5], 1e-6);
    assert_close(
        "variance sum",
        &p[1].data_to_vec(e),
        &[1.25 * 4.0 / 3.0],
        1e-6,
    );
    assert_close("scale factor", &p[2].data_to_vec(e), &[1.0], 1e-6);
    // A second batch: every sum decays by 0.5 and adds the new statistics.
    rig.bottoms[0].set_data(&rig.e, &[0.0, 0.0, 2.0, 2.0]);
    rig.forward();
    let e = &rig.e;
    assert_close("mean sum 2", &p[0].data_to_vec(e), &[2.5 * 0.5 + 1.0], 1e-6);
    assert_close(
        "variance sum 2",
        &p[1].data_to_vec(e),
        &[1.25 * 4.0 / 3.0 * 0.5 + 4.0 / 3.0],
        1e-6,
    );
    assert_close("scale factor 2", &p[2].data_to_vec(e), &[1.5], 1e-6);
    assert_close(
        "BatchNorm TRAIN output 2",
        &rig.top(0),
        &[-1.0, -1.0, 1.0, 1.0],
        1e-5,
    );
}

#[test]
fn batch_norm_test_uses_stored_statistics() {
    // Two channels; stored sums over a scale factor of 4.
    let x = vec![1.0, 3.0, 10.0, 14.0];
    let text = r#"name: "bn" type: "BatchNorm" batch_norm_param { eps: 0.01 }"#;
    let mut rig = Rig::new(text, Phase::Test, &[(vec![1, 2, 1, 2], x)], 1);
    let p = rig.params();
    p[0].set_data(&rig.e, &[8.0, 48.0]); // means 2, 12
    p[1].set_data(&rig.e, &[4.0, 16.0]); // variances 1, 4
    p[2].set_data(&rig.e, &[4.0]);
    rig.forward();
    let (s0, s1) = (1.01f32.sqrt(), 4.01f32.sqrt());
    let want = [-1.0 / s0, 1.0 / s0, -2.0 / s1, 2.0 / s1];
    assert_close("BatchNorm TEST output", &rig.top(0), &want, 1e-5);
    // A zero scale factor means "no statistics yet": Caffe then uses zero mean and variance.
    p[2].set_data(&rig.e, &[0.0]);
    rig.forward();
    let want: Vec<f32> = [1.0f32, 3.0, 10.0, 14.0]
        .iter()
        .map(|v| v / 0.01f32.sqrt())
        .collect();
    assert_close(
        "BatchNorm TEST output, zero scale factor",
        &rig.top(0),
        &want,
        1e-5,
    );
}

#[test]
fn batch_norm_in_place_matches() {
    let x = Rng::new(205).vec(numel(&SHAPE), -1.0, 1.0);
    let text = r#"name: "bn" type: "BatchNorm""#;
    let zero = vec![vec![0.0; 3], vec![0.0; 3], vec![0.0]];
    assert_in_place_matches(text, Phase::Train, &SHAPE, &x, &zero);
    let stats = vec![vec![0.1, 0.2, 0.3], vec![1.0, 2.0, 0.5], vec![1.0]];
    assert_in_place_matches(text, Phase::Test, &SHAPE, &x, &stats);
}

// ---------------------------------------------------------------------------------------------
// Scale and Bias
// ---------------------------------------------------------------------------------------------

#[test]
fn scale_learned_with_bias() {
    let mut r = Rng::new(211);
    Check::new(r#"name: "s" type: "Scale" bottom: "x" top: "y" scale_param { bias_term: true }"#)
        .bottom(&SHAPE, r.vec(numel(&SHAPE), -1.0, 1.0))
        .run();
}

#[test]
fn scale_learned_axis_2_num_axes_2() {
    let mut r = Rng::new(212);
    Check::new(
        r#"name: "s" type: "Scale" bottom: "x" top: "y" scale_param { axis: 2 num_axes: 2 }"#,
    )
    .bottom(&SHAPE, r.vec(numel(&SHAPE), -1.0, 1.0))
    .run();
}

#[test]
fn scale_learned_scalar() {
    let mut r = Rng::new(213);
    Check::new(
        r#"name: "s" type: "Scale" bottom: "x" top: "y" scale_param { num_axes: 0 bias_term: true }"#,
    )
    .bottom(&SHAPE, r.vec(numel(&SHAPE), -1.0, 1.0))
    .run();
}

#[test]
fn scale_second_bottom_with_bias() {
    let mut r = Rng::new(214);
    Check::new(
        r#"name: "s" type: "Scale" bottom: "x" bottom: "s" top: "y" scale_param { axis: 1 bias_term: true }"#,
    )
    .bottom(&SHAPE, r.vec(numel(&SHAPE), -1.0, 1.0))
    .bottom(&[3, 4], r.vec(12, -1.0, 1.0))
    .run();
}

#[test]
fn scale_second_bottom_eltwise() {
    let mut r = Rng::new(215);
    Check::new(
        r#"name: "s" type: "Scale" bottom: "x" bottom: "s" top: "y" scale_param { axis: 0 }"#,
    )
    .bottom(&[2, 3, 2], r.vec(12, -1.0, 1.0))
    .bottom(&[2, 3, 2], r.vec(12, -1.0, 1.0))
    .run();
}

#[test]
fn scale_values_and_default_fillers() {
    // Unset fillers: scale 1, bias 0, so a fresh Scale is the identity.
    let x = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let text = r#"name: "s" type: "Scale" scale_param { bias_term: true }"#;
    let mut rig = Rig::new(text, Phase::Test, &[(vec![1, 3, 2], x.clone())], 1);
    rig.forward();
    assert_close("identity Scale", &rig.top(0), &x, 0.0);
    let p = rig.params();
    assert_eq!(p[0].shape(), vec![3]);
    assert_eq!(p[1].shape(), vec![3]);
    p[0].set_data(&rig.e, &[2.0, -1.0, 0.5]);
    p[1].set_data(&rig.e, &[1.0, 0.0, -1.0]);
    rig.forward();
    assert_close(
        "Scale values",
        &rig.top(0),
        &[3.0, 5.0, -3.0, -4.0, 1.5, 2.0],
        1e-6,
    );
}

#[test]
fn scale_in_place_matches() {
    let x = Rng::new(216).vec(numel(&SHAPE), -1.0, 1.0);
    let text = r#"name: "s" type: "Scale" scale_param { bias_term: true }"#;
    let params = vec![vec![0.5, -1.5, 2.0], vec![0.1, 0.2, 0.3]];
    assert_in_place_matches(text, Phase::Train, &SHAPE, &x, &params);
}

#[test]
fn bias_learned() {
    let mut r = Rng::new(221);
    Check::new(r#"name: "b" type: "Bias" bottom: "x" top: "y" bias_param { axis: 1 num_axes: 2 }"#)
        .bottom(&SHAPE, r.vec(numel(&SHAPE), -1.0, 1.0))
        .run();
}

#[test]
fn bias_second_bottom() {
    let mut r = Rng::new(222);
    Check::new(r#"name: "b" type: "Bias" bottom: "x" bottom: "b" top: "y""#)
        .bottom(&SHAPE, r.vec(numel(&SHAPE), -1.0, 1.0))
        .bottom(&[3], r.vec(3, -1.0, 1.0))
        .run();
}

#[test]
fn bias_values_and_in_place() {
    let text = r#"name: "b" type: "Bias" bias_param { filler { type: "constant" value: 0.5 } }"#;
    let mut rig = Rig::new(
        text,
        Phase::Test,
        &[(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])],
        1,
    );
    rig.forward();
    assert_close("Bias values", &rig.top(0), &[1.5, 2.5, 3.5, 4.5], 0.0);
    let x = Rng::new(223).vec(numel(&SHAPE), -1.0, 1.0);
    assert_in_place_matches(text, Phase::Train, &SHAPE, &x, &[vec![0.1, -0.2, 0.3]]);
}

// ---------------------------------------------------------------------------------------------
// Deconvolution
// ---------------------------------------------------------------------------------------------

fn deconv_check(param: &str, shape: &[usize]) {
    let mut r = Rng::new(231);
    Check::new(&format!(
        r#"name: "d" type: "Deconvolution" bottom: "x" top: "y" convolution_param {{ {param} }}"#
    ))
    .bottom(shape, r.vec(numel(shape), -1.0, 1.0))
    .run();
}

#[test]
fn deconvolution_stride_2_pad_1() {
    deconv_check(
        "num_output: 3 kernel_size: 3 stride: 2 pad: 1",
        &[2, 2, 3, 3],
    );
}

#[test]
fn deconvolution_group_2_no_bias() {
    deconv_check(
        "num_output: 4 kernel_size: 2 stride: 2 group: 2 bias_term: false",
        &[2, 4, 2, 3],
    );
}

#[test]
fn deconvolution_dilation_rectangular() {
    deconv_check(
        "num_output: 2 kernel_h: 2 kernel_w: 3 dilation: 2 stride_h: 1 stride_w: 2",
        &[1, 2, 3, 3],
    );
}

#[test]
fn deconvolution_shape_and_adjoint_of_convolution() {
    // FCN's 2× upsampling: kernel 4, stride 2, pad 1 doubles the size.
    let mut r = Rng::new(232);
    let (n, cin, cout, h, w) = (2usize, 3usize, 4usize, 5usize, 6usize);
    let x = r.vec(n * cin * h * w, -1.0, 1.0);
    let geometry = "kernel_size: 4 stride: 2 pad: 1 bias_term: false";
    let dtext = format!(
        r#"name: "d" type: "Deconvolution" convolution_param {{ num_output: {cout} {geometry} }}"#
    );
    let mut deconv = Rig::new(&dtext, Phase::Test, &[(vec![n, cin, h, w], x.clone())], 1);
    assert_eq!(deconv.top_shape(0), vec![n, cout, 2 * h, 2 * w]);
    assert_eq!(deconv.params()[0].shape(), vec![cin, cout, 4, 4]);
    let wts = r.vec(cin * cout * 16, -1.0, 1.0);
    deconv.params()[0].set_data(&deconv.e, &wts);
    deconv.forward();
    // The convolution with the same weights maps the top's space back: <D x, y> = <x, C y>.
    let y = r.vec(n * cout * 4 * h * w, -1.0, 1.0);
    let ctext = format!(
        r#"name: "c" type: "Convolution" convolution_param {{ num_output: {cin} {geometry} }}"#
    );
    let mut conv = Rig::new(
        &ctext,
        Phase::Test,
        &[(vec![n, cout, 2 * h, 2 * w], y.clone())],
        1,
    );
    assert_eq!(conv.params()[0].shape(), vec![cin, cout, 4, 4]);
    conv.params()[0].set_data(&conv.e, &wts);
    conv.forward();
    assert_eq!(conv.top_shape(0), vec![n, cin, h, w]);
    let dot = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(a, b)| *a as f64 * *b as f64)
            .sum::<f64>()
    };
    let (lhs, rhs) = (dot(&deconv.top(0), &y), dot(&x, &conv.top(0)));
    assert!(
        (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
        "<Dx, y> = {lhs} but <x, Cy> = {rhs}"
    );
}

#[test]
fn deconvolution_values_1d() {
    // One channel, kernel [1, 2, 3], stride 2: each input drops a scaled kernel, overlaps add.
    let text = r#"name: "d" type: "Deconvolution" convolution_param { num_output: 1 kernel_h: 1 kernel_w: 3 stride_w: 2 bias_term: true bias_filler { type: "constant" value: 0.5 } }"#;
    let mut rig = Rig::new(text, Phase::Test, &[(vec![1, 1, 1, 2], vec![1.0, 10.0])], 1);
    rig.params()[0].set_data(&rig.e, &[1.0, 2.0, 3.0]);
    rig.forward();
    assert_eq!(rig.top_shape(0), vec![1, 1, 1, 5]);
    assert_close(
        "deconvolution values",
        &rig.top(0),
        &[1.5, 2.5, 13.5, 20.5, 30.5],
        1e-6,
    );
}

// ---------------------------------------------------------------------------------------------
// PReLU
// ---------------------------------------------------------------------------------------------

#[test]
fn prelu_per_channel() {
    let mut r = Rng::new(241);
    Check::new(r#"name: "p" type: "PReLU" bottom: "x" top: "y""#)
        .bottom(&SHAPE, r.away_from(numel(&SHAPE), -1.0, 1.0, &[0.0], 0.05))
        .run();
}

#[test]
fn prelu_channel_shared() {
    let mut r = Rng::new(242);
    Check::new(
        r#"name: "p" type: "PReLU" bottom: "x" top: "y" prelu_param { channel_shared: true }"#,
    )
    .bottom(&SHAPE, r.away_from(numel(&SHAPE), -1.0, 1.0, &[0.0], 0.05))
    .run();
}

#[test]
fn prelu_values_default_slope_and_in_place() {
    let mut rig = Rig::new(
        r#"name: "p" type: "PReLU""#,
        Phase::Test,
        &[(vec![1, 2, 2], vec![-4.0, 2.0, -1.0, 0.0])],
        1,
    );
    rig.forward();
    // The default filler gives every channel slope 0.25.
    assert_close(
        "PReLU default slope",
        &rig.top(0),
        &[-1.0, 2.0, -0.25, 0.0],
        0.0,
    );
    let x = Rng::new(243).away_from(numel(&SHAPE), -1.0, 1.0, &[0.0], 0.05);
    assert_in_place_matches(
        r#"name: "p" type: "PReLU""#,
        Phase::Train,
        &SHAPE,
        &x,
        &[vec![0.1, -0.3, 0.7]],
    );
}

// ---------------------------------------------------------------------------------------------
// Crop
// ---------------------------------------------------------------------------------------------

#[test]
fn crop_gradient_axis_2_offsets() {
    let mut r = Rng::new(251);
    Check::new(
        r#"name: "c" type: "Crop" bottom: "x" bottom: "ref" top: "y" crop_param { axis: 2 offset: 1 offset: 2 }"#,
    )
    .bottom(&[2, 2, 4, 5], r.vec(80, -1.0, 1.0))
    .label(&[1, 1, 2, 3], vec![0.0; 6])
    .run();
}

#[test]
fn crop_gradient_axis_1_single_offset() {
    let mut r = Rng::new(252);
    Check::new(r#"name: "c" type: "Crop" bottom: "x" bottom: "ref" top: "y" crop_param { axis: 1 offset: 1 }"#)
        .bottom(&[2, 3, 4, 4], r.vec(96, -1.0, 1.0))
        .label(&[2, 2, 2, 3], vec![0.0; 24])
        .run();
}

#[test]
fn crop_values() {
    // A 1×1×3×4 ramp cropped to 2×2 at offset (1, 1) on axes 2 and 3.
    let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
    let mut rig = Rig::new(
        r#"name: "c" type: "Crop" crop_param { offset: 1 }"#,
        Phase::Test,
        &[(vec![1, 1, 3, 4], x), (vec![5, 5, 2, 2], vec![0.0; 100])],
        1,
    );
    rig.forward();
    assert_eq!(rig.top_shape(0), vec![1, 1, 2, 2]);
    assert_close("Crop values", &rig.top(0), &[5.0, 6.0, 9.0, 10.0], 0.0);
}

// ---------------------------------------------------------------------------------------------
// Losses
// ---------------------------------------------------------------------------------------------

#[test]
fn sigmoid_cross_entropy_batch_size_default() {
    let mut r = Rng::new(301);
    Check::new(r#"name: "l" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "l""#)
        .bottom(&[3, 2, 2], r.vec(12, -3.0, 3.0))
        .label(&[3, 2, 2], r.vec(12, 0.0, 1.0))
        .run();
}

#[test]
fn sigmoid_cross_entropy_ignore_label_valid() {
    let mut r = Rng::new(302);
    let mut t: Vec<f32> = r.labels(10, 2);
    t[2] = -1.0;
    t[7] = -1.0;
    Check::new(
        r#"name: "l" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "l"
           loss_param { ignore_label: -1 normalization: VALID }"#,
    )
    .bottom(&[2, 5], r.vec(10, -3.0, 3.0))
    .label(&[2, 5], t)
    .run();
}

#[test]
fn sigmoid_cross_entropy_values() {
    // -[t log σ(x) + (1 - t) log(1 - σ(x))]: log 2, log(1 + e²), log(1 + e³), and 100 for the
    // saturated pair that a naive formula would turn into inf.
    let want = (2f64.ln() + (1.0 + 2f64.exp()).ln() + (1.0 + 3f64.exp()).ln() + 100.0) / 2.0;
    let mut rig = Rig::new(
        r#"name: "l" type: "SigmoidCrossEntropyLoss""#,
        Phase::Train,
        &[
            (vec![2, 2], vec![0.0, 2.0, -3.0, 100.0]),
            (vec![2, 2], vec![1.0, 0.0, 1.0, 0.0]),
        ],
        1,
    );
    rig.forward();
    assert_close(
        "sigmoid cross-entropy / batch",
        &rig.top(0),
        &[want as f32],
        1e-6,
    );
    // Ignoring the saturated element and normalising by the 3 valid ones.
    let mut rig = Rig::new(
        r#"name: "l" type: "SigmoidCrossEntropyLoss" loss_param { ignore_label: 5 normalization: VALID }"#,
        Phase::Train,
        &[
            (vec![2, 2], vec![0.0, 2.0, -3.0, 100.0]),
            (vec![2, 2], vec![1.0, 0.5, 1.0, 5.0]),
        ],
        1,
    );
    rig.forward();
    let mid = -(0.5 * (1.0 / (1.0 + (-2f64).exp())).ln()
        + 0.5 * (1.0 - 1.0 / (1.0 + (-2f64).exp())).ln());
    let want = (2f64.ln() + mid + (1.0 + 3f64.exp()).ln()) / 3.0;
    assert_close(
        "sigmoid cross-entropy / valid",
        &rig.top(0),
        &[want as f32],
        1e-6,
    );
}

#[test]
fn multinomial_logistic_loss_gradient() {
    let mut r = Rng::new(311);
    Check::new(r#"name: "l" type: "MultinomialLogisticLoss" bottom: "p" bottom: "y" top: "l""#)
        .bottom(&[4, 5, 1, 1], r.vec(20, 0.2, 1.0))
        .label(&[4], r.labels(4, 5))
        .run();
}

#[test]
fn multinomial_logistic_loss_values() {
    // -(log 0.5 + log max(0, 1e-20)) / 2
    let mut rig = Rig::new(
        r#"name: "l" type: "MultinomialLogisticLoss""#,
        Phase::Train,
        &[
            (vec![2, 3], vec![0.2, 0.5, 0.3, 0.0, 0.0, 1.0]),
            (vec![2], vec![1.0, 0.0]),
        ],
        1,
    );
    rig.forward();
    let want = -(0.5f64.ln() + 1e-20f32.ln() as f64) / 2.0;
    assert_close(
        "multinomial logistic loss",
        &rig.top(0),
        &[want as f32],
        1e-6,
    );
}

/// An infogain matrix with a heavier diagonal, row-major C×C.
fn infogain_matrix(r: &mut Rng, c: usize) -> Vec<f32> {
    let mut h = r.vec(c * c, 0.0, 0.5);
    for i in 0..c {
        h[i * c + i] += 1.0;
    }
    h
}

#[test]
fn infogain_loss_matrix_bottom() {
    let mut r = Rng::new(321);
    let h = infogain_matrix(&mut r, 4);
    Check::new(r#"name: "l" type: "InfogainLoss" bottom: "x" bottom: "y" bottom: "H" top: "l""#)
        .bottom(&[3, 4], r.vec(12, -2.0, 2.0))
        .label(&[3], r.labels(3, 4))
        .label(&[1, 1, 4, 4], h)
        .run();
}

#[test]
fn infogain_loss_spatial_ignore_label_and_prob_top() {
    let mut r = Rng::new(322);
    let h = infogain_matrix(&mut r, 3);
    let mut labels = r.labels(8, 3);
    labels[3] = 255.0;
    let x = r.vec(24, -2.0, 2.0);
    Check::new(
        r#"name: "l" type: "InfogainLoss" bottom: "x" bottom: "y" bottom: "H" top: "l"
           loss_param { ignore_label: 255 }"#,
    )
    .bottom(&[2, 3, 2, 2], x.clone())
    .label(&[2, 1, 2, 2], labels.clone())
    .label(&[3, 3], h.clone())
    .run();
    // The optional second top is the softmax over the class axis.
    let mut info = Rig::new(
        r#"name: "l" type: "InfogainLoss" loss_param { ignore_label: 255 }"#,
        Phase::Train,
        &[
            (vec![2, 3, 2, 2], x.clone()),
            (vec![2, 1, 2, 2], labels),
            (vec![3, 3], h),
        ],
        2,
    );
    info.forward();
    let mut soft = Rig::new(
        r#"name: "s" type: "Softmax""#,
        Phase::Train,
        &[(vec![2, 3, 2, 2], x)],
        1,
    );
    soft.forward();
    assert_close("InfogainLoss prob top", &info.top(1), &soft.top(0), 1e-6);
}

#[test]
fn infogain_loss_identity_from_file_equals_softmax_loss() {
    use crema_proto::caffe::{BlobProto, BlobShape};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("H.binaryproto");
    let c = 5usize;
    let mut eye = vec![0.0f32; c * c];
    for i in 0..c {
        eye[i * c + i] = 1.0;
    }
    let blob = BlobProto {
        shape: Some(BlobShape {
            dim: vec![1, 1, c as i64, c as i64],
        }),
        data: eye,
        ..Default::default()
    };
    crema_proto::write_binary_atomic(&path, &blob).expect("write H");
    let mut r = Rng::new(323);
    let x = r.vec(4 * c, -2.0, 2.0);
    let y = r.labels(4, c);
    let text = format!(
        r#"name: "l" type: "InfogainLoss" infogain_loss_param {{ source: "{}" }}"#,
        path.display()
    );
    let bottoms = [(vec![4, c], x), (vec![4], y)];
    let mut info = Rig::new(&text, Phase::Train, &bottoms, 1);
    info.forward();
    let mut soft = Rig::new(
        r#"name: "l" type: "SoftmaxWithLoss""#,
        Phase::Train,
        &bottoms,
        1,
    );
    soft.forward();
    assert_close("infogain with H = I", &info.top(0), &soft.top(0), 1e-6);
    // A missing file names the path.
    let bad = r#"name: "l" type: "InfogainLoss" infogain_loss_param { source: "/nonexistent/H.binaryproto" }"#;
    let e = CpuEngine::new();
    let b: Vec<BlobRef> = bottoms.iter().map(|(s, _)| Blob::new_ref(&e, s)).collect();
    let mut layer = make_layer(bad);
    let cx = Ctx {
        engine: &e,
        phase: Phase::Train,
    };
    let err = layer
        .setup(&cx, &b, &[Blob::new_ref(&e, &[])])
        .expect_err("a missing H must fail")
        .to_string();
    assert!(err.contains("/nonexistent/H.binaryproto"), "{err}");
}

#[test]
fn hinge_loss_l1() {
    let mut r = Rng::new(331);
    Check::new(r#"name: "l" type: "HingeLoss" bottom: "x" bottom: "y" top: "l""#)
        .bottom(&[4, 5], r.away_from(20, -2.0, 2.0, &[-1.0, 1.0], 0.05))
        .label(&[4], r.labels(4, 5))
        .run();
}

#[test]
fn hinge_loss_l2() {
    let mut r = Rng::new(332);
    Check::new(
        r#"name: "l" type: "HingeLoss" bottom: "x" bottom: "y" top: "l" hinge_loss_param { norm: L2 }"#,
    )
    .bottom(&[4, 5], r.away_from(20, -2.0, 2.0, &[-1.0, 1.0], 0.05))
    .label(&[4], r.labels(4, 5))
    .run();
}

#[test]
fn hinge_loss_values() {
    // Item 0 (label 1): max(0, 1 + 0.5) + max(0, 1 - 2) + max(0, 1 - 3) = 1.5
    // Item 1 (label 0): max(0, 1 - 0.5) + max(0, 1 + 0) + max(0, 1 - 1) = 1.5
    let bottoms = [
        (vec![2, 3], vec![0.5, 2.0, -3.0, 0.5, 0.0, -1.0]),
        (vec![2], vec![1.0, 0.0]),
    ];
    let mut l1 = Rig::new(r#"name: "l" type: "HingeLoss""#, Phase::Train, &bottoms, 1);
    l1.forward();
    assert_close("hinge L1", &l1.top(0), &[1.5], 1e-6);
    let mut l2 = Rig::new(
        r#"name: "l" type: "HingeLoss" hinge_loss_param { norm: L2 }"#,
        Phase::Train,
        &bottoms,
        1,
    );
    l2.forward();
    assert_close("hinge L2", &l2.top(0), &[(2.25 + 0.25 + 1.0) / 2.0], 1e-6);
}

fn contrastive_check(param: &str) {
    let mut r = Rng::new(341);
    // Pairs far enough from the margin that no distance crosses it under the step.
    let a = r.vec(12, -0.4, 0.4);
    let b = r.vec(12, -0.4, 0.4);
    Check::new(&format!(
        r#"name: "l" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "y" top: "l" {param}"#
    ))
    .bottom(&[4, 3, 1, 1], a)
    .bottom(&[4, 3, 1, 1], b)
    .label(&[4, 1, 1, 1], vec![1.0, 0.0, 0.0, 1.0])
    .run();
}

#[test]
fn contrastive_loss() {
    contrastive_check("contrastive_loss_param { margin: 2 }");
}

#[test]
fn contrastive_loss_legacy() {
    contrastive_check("contrastive_loss_param { margin: 2 legacy_version: true }");
}

#[test]
fn contrastive_loss_values() {
    // Pair 0 similar at distance 5; pair 1 dissimilar at distance 1 within margin 3; pair 2
    // dissimilar beyond the margin.
    let a = vec![3.0, 4.0, 1.0, 0.0, 5.0, 0.0];
    let b = vec![0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    let bottoms = [
        (vec![3, 2], a),
        (vec![3, 2], b),
        (vec![3], vec![1.0, 0.0, 0.0]),
    ];
    let mut rig = Rig::new(
        r#"name: "l" type: "ContrastiveLoss" contrastive_loss_param { margin: 3 }"#,
        Phase::Train,
        &bottoms,
        1,
    );
    rig.forward();
    assert_close("contrastive", &rig.top(0), &[(25.0 + 4.0) / 6.0], 1e-6);
    let mut rig = Rig::new(
        r#"name: "l" type: "ContrastiveLoss" contrastive_loss_param { margin: 3 legacy_version: true }"#,
        Phase::Train,
        &bottoms,
        1,
    );
    rig.forward();
    assert_close(
        "contrastive legacy",
        &rig.top(0),
        &[(25.0 + 2.0) / 6.0],
        1e-6,
    );
}

// ---------------------------------------------------------------------------------------------
// ArgMax
// ---------------------------------------------------------------------------------------------

#[test]
fn argmax_values() {
    let x = vec![0.1, 0.9, 0.5, 0.9, /**/ 3.0, -1.0, 2.0, 0.0];
    let bottoms = [(vec![2, 4], x)];
    let mut rig = Rig::new(r#"name: "a" type: "ArgMax""#, Phase::Test, &bottoms, 1);
    rig.forward();
    assert_eq!(rig.top_shape(0), vec![2, 1, 1]);
    // Ties go to the larger index, as with Caffe's sort of (value, index) pairs.
    assert_eq!(rig.top(0), vec![3.0, 0.0]);
    let mut rig = Rig::new(
        r#"name: "a" type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }"#,
        Phase::Test,
        &bottoms,
        1,
    );
    rig.forward();
    assert_eq!(rig.top_shape(0), vec![2, 2, 2]);
    assert_eq!(rig.top(0), vec![3.0, 1.0, 0.9, 0.9, 0.0, 2.0, 3.0, 2.0]);
    // Along axis 0: per column, the row of the maximum.
    let mut rig = Rig::new(
        r#"name: "a" type: "ArgMax" argmax_param { axis: 0 }"#,
        Phase::Test,
        &bottoms,
        1,
    );
    rig.forward();
    // With an axis the top keeps the bottom's axes, k along the axis.
    assert_eq!(rig.top_shape(0), vec![1, 4]);
    assert_eq!(rig.top(0), vec![1.0, 0.0, 1.0, 0.0]);
    let mut rig = Rig::new(
        r#"name: "a" type: "ArgMax" argmax_param { axis: 1 top_k: 1 out_max_val: true }"#,
        Phase::Test,
        &bottoms,
        1,
    );
    rig.forward();
    assert_eq!(rig.top_shape(0), vec![2, 1]);
    assert_eq!(rig.top(0), vec![0.9, 3.0]);
}

// ---------------------------------------------------------------------------------------------
// Reduction
// ---------------------------------------------------------------------------------------------

fn reduction_check(param: &str, shape: &[usize]) {
    let mut r = Rng::new(401);
    Check::new(&format!(
        r#"name: "r" type: "Reduction" bottom: "x" top: "y" reduction_param {{ {param} }}"#
    ))
    .bottom(shape, r.away_from(numel(shape), -1.0, 1.0, &[0.0], 0.05))
    .run();
}

#[test]
fn reduction_sum_all() {
    reduction_check("operation: SUM coeff: 2", &[2, 3, 2]);
}

#[test]
fn reduction_mean_axis_1() {
    reduction_check("operation: MEAN axis: 1", &[2, 3, 2]);
}

#[test]
fn reduction_asum_axis_2() {
    reduction_check("operation: ASUM axis: 2 coeff: -0.5", &[2, 3, 4]);
}

#[test]
fn reduction_sumsq_axis_minus_1() {
    reduction_check("operation: SUMSQ axis: -1", &[2, 3, 4]);
}

#[test]
fn reduction_values() {
    let x = vec![1.0, -2.0, 3.0, -4.0, 5.0, -6.0];
    let run = |param: &str| {
        let mut rig = Rig::new(
            &format!(r#"name: "r" type: "Reduction" reduction_param {{ {param} }}"#),
            Phase::Test,
            &[(vec![2, 3], x.clone())],
            1,
        );
        rig.forward();
        (rig.top_shape(0), rig.top(0))
    };
    let check = |param: &str, shape: Vec<usize>, want: &[f32]| {
        let (s, v) = run(param);
        assert_eq!(s, shape, "{param}");
        assert_close(param, &v, want, 1e-6);
    };
    check("operation: SUM", vec![], &[-3.0]);
    check("operation: ASUM axis: 1", vec![2], &[6.0, 15.0]);
    check("operation: SUMSQ axis: 1 coeff: 0.5", vec![2], &[7.0, 38.5]);
    check("operation: MEAN axis: 1", vec![2], &[2.0 / 3.0, -5.0 / 3.0]);
}

// ---------------------------------------------------------------------------------------------
// Tile, Embed, Parameter, BatchReindex, Filter
// ---------------------------------------------------------------------------------------------

#[test]
fn tile_gradient() {
    let mut r = Rng::new(411);
    Check::new(r#"name: "t" type: "Tile" bottom: "x" top: "y" tile_param { axis: 1 tiles: 3 }"#)
        .bottom(&[2, 2, 3], r.vec(12, -1.0, 1.0))
        .run();
}

#[test]
fn tile_values() {
    let mut rig = Rig::new(
        r#"name: "t" type: "Tile" tile_param { axis: 1 tiles: 2 }"#,
        Phase::Test,
        &[(vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])],
        1,
    );
    rig.forward();
    assert_eq!(rig.top_shape(0), vec![2, 4]);
    assert_eq!(rig.top(0), vec![1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0]);
}

#[test]
fn embed_gradient() {
    Check::new(
        r#"name: "e" type: "Embed" bottom: "x" top: "y"
           embed_param { input_dim: 5 num_output: 3 bias_term: true }"#,
    )
    .label(&[2, 3], vec![0.0, 4.0, 2.0, 2.0, 1.0, 4.0])
    .run();
}

#[test]
fn embed_values_and_bad_index() {
    let text =
        r#"name: "e" type: "Embed" embed_param { input_dim: 3 num_output: 2 bias_term: false }"#;
    let mut rig = Rig::new(text, Phase::Test, &[(vec![3], vec![2.0, 0.0, 2.0])], 1);
    rig.params()[0].set_data(&rig.e, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    rig.forward();
    assert_eq!(rig.top_shape(0), vec![3, 2]);
    assert_eq!(rig.top(0), vec![5.0, 6.0, 1.0, 2.0, 5.0, 6.0]);
    let mut rig = Rig::new(text, Phase::Test, &[(vec![1], vec![3.0])], 1);
    let cx = Ctx {
        engine: &rig.e,
        phase: Phase::Test,
    };
    let err = rig
        .layer
        .forward(&cx, &rig.bottoms, &rig.tops)
        .expect_err("index 3 of 3 must fail");
    assert!(err.to_string().contains("input_dim"), "{err}");
}

#[test]
fn parameter_gradient_and_shape() {
    Check::new(
        r#"name: "p" type: "Parameter" top: "y" parameter_param { shape { dim: 2 dim: 3 } }"#,
    )
    .run();
    let mut rig = Rig::new(
        r#"name: "p" type: "Parameter" parameter_param { shape { dim: 4 } }"#,
        Phase::Test,
        &[],
        1,
    );
    rig.params()[0].set_data(&rig.e, &[1.0, 2.0, 3.0, 4.0]);
    rig.forward();
    assert_eq!(rig.top(0), vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn batch_reindex_gradient_with_repeats() {
    let mut r = Rng::new(421);
    Check::new(r#"name: "b" type: "BatchReindex" bottom: "x" bottom: "i" top: "y""#)
        .bottom(&[3, 2, 2], r.vec(12, -1.0, 1.0))
        .label(&[4], vec![2.0, 0.0, 2.0, 1.0])
        .run();
}

#[test]
fn batch_reindex_values() {
    let mut rig = Rig::new(
        r#"name: "b" type: "BatchReindex""#,
        Phase::Test,
        &[
            (vec![3, 2], vec![0.0, 1.0, 10.0, 11.0, 20.0, 21.0]),
            (vec![2], vec![2.0, 0.0]),
        ],
        1,
    );
    rig.forward();
    assert_eq!(rig.top_shape(0), vec![2, 2]);
    assert_eq!(rig.top(0), vec![20.0, 21.0, 0.0, 1.0]);
}

#[test]
fn filter_gradient() {
    let mut r = Rng::new(431);
    Check::new(
        r#"name: "f" type: "Filter" bottom: "a" bottom: "b" bottom: "sel" top: "fa" top: "fb""#,
    )
    .bottom(&[4, 3], r.vec(12, -1.0, 1.0))
    .bottom(&[4, 2, 1], r.vec(8, -1.0, 1.0))
    .label(&[4], vec![1.0, 0.0, 1.0, 1.0])
    .tops(2)
    .run();
}

#[test]
fn filter_values() {
    let mut rig = Rig::new(
        r#"name: "f" type: "Filter""#,
        Phase::Test,
        &[
            (vec![3, 2], vec![0.0, 1.0, 10.0, 11.0, 20.0, 21.0]),
            (vec![3, 1], vec![0.0, 1.0, 0.0]),
        ],
        1,
    );
    rig.forward();
    assert_eq!(rig.top_shape(0), vec![1, 2]);
    assert_eq!(rig.top(0), vec![10.0, 11.0]);
}

// ---------------------------------------------------------------------------------------------
// MVN
// ---------------------------------------------------------------------------------------------

fn mvn_check(param: &str) {
    let mut r = Rng::new(441);
    Check::new(&format!(
        r#"name: "m" type: "MVN" bottom: "x" top: "y" mvn_param {{ {param} }}"#
    ))
    .bottom(&SHAPE, r.vec(numel(&SHAPE), -1.0, 1.0))
    .run();
}

#[test]
fn mvn_normalize_variance() {
    mvn_check("");
}

#[test]
fn mvn_across_channels() {
    mvn_check("across_channels: true");
}

#[test]
fn mvn_mean_only() {
    mvn_check("normalize_variance: false");
}

#[test]
fn mvn_values_and_in_place() {
    // One group of four values: mean 2.5, std sqrt(1.25); eps is added to the std.
    let x = vec![1.0, 2.0, 3.0, 4.0];
    let mut rig = Rig::new(
        r#"name: "m" type: "MVN" mvn_param { eps: 0.5 }"#,
        Phase::Test,
        &[(vec![1, 1, 2, 2], x.clone())],
        1,
    );
    rig.forward();
    let sd = 1.25f32.sqrt() + 0.5;
    let want: Vec<f32> = x.iter().map(|v| (v - 2.5) / sd).collect();
    assert_close("MVN values", &rig.top(0), &want, 1e-6);
    let x = Rng::new(442).vec(numel(&SHAPE), -1.0, 1.0);
    assert_in_place_matches(r#"name: "m" type: "MVN""#, Phase::Train, &SHAPE, &x, &[]);
    assert_in_place_matches(
        r#"name: "m" type: "MVN" mvn_param { normalize_variance: false }"#,
        Phase::Train,
        &SHAPE,
        &x,
        &[],
    );
}

// ---------------------------------------------------------------------------------------------
// Im2col, SPP, stochastic pooling
// ---------------------------------------------------------------------------------------------

#[test]
fn im2col_gradient() {
    let mut r = Rng::new(451);
    Check::new(r#"name: "i" type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 3 stride: 2 pad: 1 }"#)
        .bottom(&[2, 2, 5, 4], r.vec(80, -1.0, 1.0))
        .run();
}

#[test]
fn im2col_values_match_caffe_layout() {
    // Rows (c, ki, kj), columns (oy, ox); zero where the window hangs over the padding.
    let (c, h, w) = (2usize, 3usize, 3usize);
    let x: Vec<f32> = (0..c * h * w).map(|v| v as f32 + 1.0).collect();
    let mut rig = Rig::new(
        r#"name: "i" type: "Im2col" convolution_param { kernel_size: 2 pad: 1 stride: 2 }"#,
        Phase::Test,
        &[(vec![1, c, h, w], x.clone())],
        1,
    );
    rig.forward();
    let (oh, ow) = (2usize, 2usize);
    assert_eq!(rig.top_shape(0), vec![1, c * 4, oh, ow]);
    let mut want = vec![];
    for ch in 0..c {
        for ki in 0..2 {
            for kj in 0..2 {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (iy, ix) = ((oy * 2 + ki) as isize - 1, (ox * 2 + kj) as isize - 1);
                        let inside = iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w;
                        want.push(if inside {
                            x[(ch * h + iy as usize) * w + ix as usize]
                        } else {
                            0.0
                        });
                    }
                }
            }
        }
    }
    assert_eq!(rig.top(0), want);
}

#[test]
fn spp_max_gradient() {
    let mut r = Rng::new(461);
    Check::new(
        r#"name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 3 pool: MAX }"#,
    )
    .bottom(&[2, 2, 6, 7], r.distinct(168, 0.05))
    .run();
}

#[test]
fn spp_ave_gradient() {
    let mut r = Rng::new(462);
    Check::new(
        r#"name: "s" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 2 pool: AVE }"#,
    )
    .bottom(&[2, 3, 4, 5], r.vec(120, -1.0, 1.0))
    .run();
}

#[test]
fn spp_shapes_and_values() {
    // 13×13 conv5 of a 3-level pyramid: 1 + 4 + 16 bins per channel.
    let mut rig = Rig::new(
        r#"name: "s" type: "SPP" spp_param { pyramid_height: 3 }"#,
        Phase::Test,
        &[(vec![2, 4, 13, 13], vec![0.0; 2 * 4 * 169])],
        1,
    );
    rig.forward();
    assert_eq!(rig.top_shape(0), vec![2, 4 * 21]);
    // One level is plain global pooling with a 4-D top.
    let x: Vec<f32> = (0..8).map(|v| v as f32).collect();
    let mut rig = Rig::new(
        r#"name: "s" type: "SPP" spp_param { pyramid_height: 1 }"#,
        Phase::Test,
        &[(vec![1, 2, 2, 2], x.clone())],
        1,
    );
    rig.forward();
    assert_eq!(rig.top_shape(0), vec![1, 2, 1, 1]);
    assert_eq!(rig.top(0), vec![3.0, 7.0]);
    // Two levels of a 1×1×2×2 input: the global max, then each pixel, per item.
    let mut rig = Rig::new(
        r#"name: "s" type: "SPP" spp_param { pyramid_height: 2 }"#,
        Phase::Test,
        &[(vec![1, 1, 2, 2], vec![4.0, 1.0, 2.0, 3.0])],
        1,
    );
    rig.forward();
    assert_eq!(rig.top(0), vec![4.0, 4.0, 1.0, 2.0, 3.0]);
}

#[test]
fn pooling_stochastic_train_gradient() {
    let mut r = Rng::new(471);
    Check::new(r#"name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }"#)
        .bottom(&[2, 2, 5, 5], r.vec(100, 0.1, 1.0))
        .reseed(7)
        .tolerance(1e-4, 1e-2)
        .run();
}

#[test]
fn pooling_stochastic_values() {
    // One 2×2 window of [1, 2, 3, 4]: TEST gives Σx²/Σx = 3; TRAIN always picks one of the
    // window's values, each about as often as its share of the sum.
    let x = vec![1.0, 2.0, 3.0, 4.0];
    let text =
        r#"name: "p" type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }"#;
    let mut rig = Rig::new(text, Phase::Test, &[(vec![1, 1, 2, 2], x.clone())], 1);
    rig.forward();
    assert_close("stochastic TEST", &rig.top(0), &[3.0], 1e-6);
    let mut rig = Rig::new(text, Phase::Train, &[(vec![1, 1, 2, 2], x)], 1);
    let mut counts = [0usize; 4];
    let trials = 4000;
    for _ in 0..trials {
        rig.forward();
        let v = rig.top(0)[0];
        assert!([1.0, 2.0, 3.0, 4.0].contains(&v), "sampled {v}");
        counts[v as usize - 1] += 1;
    }
    for (i, c) in counts.iter().enumerate() {
        let want = (i + 1) as f64 / 10.0;
        let got = *c as f64 / trials as f64;
        assert!(
            (got - want).abs() < 0.03,
            "value {} taken {got:.3} of the time, expected {want}",
            i + 1
        );
    }
    // Padding is Caffe's error for STOCHASTIC.
    let padded =
        r#"name: "p" type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 pad: 1 }"#;
    assert!(create_layer(&layer_param(padded)).is_err());
}

// ---------------------------------------------------------------------------------------------
// LSTMUnit
// ---------------------------------------------------------------------------------------------

#[test]
fn lstm_unit_gradient() {
    let mut r = Rng::new(501);
    let (n, d) = (3usize, 2usize);
    Check::new(r#"name: "l" type: "LSTMUnit" bottom: "c_prev" bottom: "x" bottom: "cont" top: "c" top: "h""#)
        .bottom(&[1, n, d], r.vec(n * d, -1.0, 1.0))
        .bottom(&[1, n, 4 * d], r.vec(n * 4 * d, -1.0, 1.0))
        .label(&[1, n], vec![1.0, 0.0, 1.0])
        .tops(2)
        .run();
}

#[test]
fn lstm_unit_values() {
    // One unit: gates (i, f, o, g) from X = (0, 0, 0, 0) are (½, ½, ½, 0), so c = ½ c'; a new
    // sequence (flag 0) forgets c' entirely.
    let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
    let x = vec![1.0, -1.0, 2.0, 0.5, /**/ 0.0, 0.0, 0.0, 0.0];
    let mut rig = Rig::new(
        r#"name: "l" type: "LSTMUnit""#,
        Phase::Test,
        &[
            (vec![1, 2, 1], vec![2.0, 4.0]),
            (vec![1, 2, 4], x),
            (vec![1, 2], vec![1.0, 0.0]),
        ],
        2,
    );
    rig.forward();
    let c0 = sig(-1.0) * 2.0 + sig(1.0) * 0.5f32.tanh();
    let h0 = sig(2.0) * c0.tanh();
    assert_close("LSTMUnit c", &rig.top(0), &[c0, 0.0], 1e-6);
    assert_close("LSTMUnit h", &rig.top(1), &[h0, 0.0], 1e-6);
}

// ---------------------------------------------------------------------------------------------
// The new layers inside a net
// ---------------------------------------------------------------------------------------------

#[test]
fn batch_norm_scale_prelu_deconv_net_learns_and_tests_with_global_stats() {
    use crema::net::{Net, State};
    use std::rc::Rc;
    let text = r#"
        name: "bn_net"
        layer { name: "data" type: "Input" top: "x" top: "y"
                input_param { shape { dim: 8 dim: 2 dim: 4 dim: 4 } shape { dim: 8 } } }
        layer { name: "conv" type: "Convolution" bottom: "x" top: "c"
                convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
        layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
        layer { name: "sc" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }
        layer { name: "pr" type: "PReLU" bottom: "c" top: "c" }
        layer { name: "up" type: "Deconvolution" bottom: "c" top: "u"
                convolution_param { num_output: 2 kernel_size: 2 stride: 2 weight_filler { type: "xavier" } } }
        layer { name: "pool" type: "Pooling" bottom: "u" top: "p" pooling_param { pool: AVE global_pooling: true } }
        layer { name: "ip" type: "InnerProduct" bottom: "p" top: "s"
                inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
        layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "y" top: "loss" }
    "#;
    let param = crema_proto::parse_text::<crema_proto::caffe::NetParameter>(
        text,
        "bn_net",
        "caffe.NetParameter",
    )
    .expect("net prototxt");
    let engine: Rc<dyn crema::engine::Engine> = Rc::new(CpuEngine::new());
    let mut train =
        Net::new(&param, &State::phase(Phase::Train), engine.clone()).expect("train net");
    let mut r = Rng::new(601);
    let x = r.vec(8 * 2 * 16, -1.0, 1.0);
    // Label: whether channel 0 of the item is brighter than channel 1 on average.
    let y: Vec<f32> = (0..8)
        .map(|n| {
            let m = |c: usize| {
                x[(n * 2 + c) * 16..(n * 2 + c + 1) * 16]
                    .iter()
                    .sum::<f32>()
            };
            if m(0) > m(1) {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let e = engine.clone();
    train.blob("x").expect("x").set_data(&*e, &x);
    train.blob("y").expect("y").set_data(&*e, &y);
    let bn = train.layer_blobs("bn").expect("bn blobs");
    assert_eq!(bn.len(), 3);
    for p in train.params() {
        if p.label.starts_with("bn.") {
            assert_eq!(p.lr_mult, 0.0, "{} must never be trained", p.label);
        }
    }
    let mut losses = vec![];
    for _ in 0..100 {
        train.clear_param_diffs();
        losses.push(train.forward().expect("forward"));
        train.backward().expect("backward");
        for p in train.params() {
            let (w, g) = (p.blob.data_to_vec(&*e), p.blob.diff_to_vec(&*e));
            let w: Vec<f32> = w
                .iter()
                .zip(&g)
                .map(|(w, g)| w - 0.5 * p.lr_mult * g)
                .collect();
            p.blob.set_data(&*e, &w);
        }
    }
    let (first, last) = (losses[0], *losses.last().expect("losses"));
    assert!(
        last < 0.5 * first,
        "loss should fall: {first} -> {last} ({losses:?})"
    );
    // 100 batches with the default fraction 0.999: the scale factor is Σ 0.999^k.
    let factor = bn[2].data_to_vec(&*e)[0];
    let want: f32 = (0..100).map(|k| 0.999f32.powi(k)).sum();
    assert!(
        (factor - want).abs() < 1e-3,
        "scale factor {factor}, expected {want}"
    );
    // The test net follows the trained blobs and normalises with the running statistics.
    let mut test = Net::new(&param, &State::phase(Phase::Test), engine.clone()).expect("test net");
    test.share_trained_layers_with(&train).expect("share");
    test.blob("x").expect("x").set_data(&*e, &x);
    test.blob("y").expect("y").set_data(&*e, &y);
    let test_loss = test.forward().expect("test forward");
    assert!(
        test_loss.is_finite() && test_loss < first,
        "test loss {test_loss} (first train loss {first})"
    );
}

// ---------------------------------------------------------------------------------------------
// RNN and LSTM
// ---------------------------------------------------------------------------------------------

/// A recurrent layer over T = 3 steps of N = 2 sequences: the first continues from the initial
/// state throughout, the second restarts at steps 0 and 1.
fn recurrent_check(ty: &str, extra: &str, static_input: bool, exposed: usize) {
    let mut r = Rng::new(511);
    let (t, n, h) = (3usize, 2usize, 2usize);
    let mut bottoms = String::from(r#"bottom: "x" bottom: "cont""#);
    if static_input {
        bottoms.push_str(r#" bottom: "xs""#);
    }
    let mut tops = String::from(r#"top: "y""#);
    for k in 0..exposed {
        bottoms.push_str(&format!(r#" bottom: "s0_{k}""#));
        tops.push_str(&format!(r#" top: "sT_{k}""#));
    }
    let mut c = Check::new(&format!(
        r#"name: "r" type: "{ty}" {bottoms} {tops} recurrent_param {{ num_output: {h} {extra} }}"#
    ))
    .bottom(&[t, n, 3], r.vec(t * n * 3, -1.0, 1.0))
    .label(&[t, n], vec![1.0, 0.0, 1.0, 0.0, 1.0, 1.0]);
    if static_input {
        c = c.bottom(&[n, 2], r.vec(n * 2, -1.0, 1.0));
    }
    for _ in 0..exposed {
        c = c.bottom(&[1, n, h], r.vec(n * h, -1.0, 1.0));
    }
    c.tops(1 + exposed).run();
}

#[test]
fn lstm_gradient() {
    recurrent_check("LSTM", "", false, 0);
}

#[test]
fn lstm_gradient_static_input_and_exposed_state() {
    recurrent_check("LSTM", "expose_hidden: true", true, 2);
}

#[test]
fn rnn_gradient() {
    recurrent_check("RNN", "", false, 0);
}

#[test]
fn rnn_gradient_static_input_and_exposed_state() {
    recurrent_check("RNN", "expose_hidden: true", true, 1);
}

#[test]
fn lstm_matches_lstm_unit_steps_and_caffe_blob_order() {
    // One sequence, one unit: the layer equals LSTMUnit steps over W_xc x + b_c + W_hc h.
    let text = r#"name: "l" type: "LSTM" recurrent_param { num_output: 1 }"#;
    let x = vec![0.5, -1.0, 2.0];
    let mut rig = Rig::new(
        text,
        Phase::Test,
        &[
            (vec![3, 1, 1], x.clone()),
            (vec![3, 1], vec![0.0, 1.0, 1.0]),
        ],
        1,
    );
    let p = rig.params();
    let shapes: Vec<Vec<usize>> = p.iter().map(|b| b.shape()).collect();
    assert_eq!(
        shapes,
        vec![vec![4, 1], vec![4], vec![4, 1]],
        "W_xc, b_c, W_hc"
    );
    let (wx, b, wh) = (
        [0.3f32, -0.2, 0.5, 0.8],
        [0.1f32, 0.2, -0.1, 0.0],
        [0.4f32, 0.6, -0.3, 0.2],
    );
    p[0].set_data(&rig.e, &wx);
    p[1].set_data(&rig.e, &b);
    p[2].set_data(&rig.e, &wh);
    rig.forward();
    let sig = |v: f32| 1.0 / (1.0 + (-v).exp());
    let (mut c, mut h) = (0.0f32, 0.0f32);
    let mut want = vec![];
    for (t, xv) in x.iter().enumerate() {
        let cont = if t == 0 { 0.0 } else { 1.0 };
        let pre: Vec<f32> = (0..4)
            .map(|k| wx[k] * xv + b[k] + wh[k] * cont * h)
            .collect();
        let (i, f, o, g) = (sig(pre[0]), cont * sig(pre[1]), sig(pre[2]), pre[3].tanh());
        c = f * c + i * g;
        h = o * c.tanh();
        want.push(h);
    }
    assert_close("LSTM outputs", &rig.top(0), &want, 1e-6);
}

// ---------------------------------------------------------------------------------------------
// HDF5Data and HDF5Output (cargo feature `hdf5`)
// ---------------------------------------------------------------------------------------------

#[cfg(not(feature = "hdf5"))]
#[test]
fn hdf5_layers_explain_the_missing_feature() {
    for ty in ["HDF5Data", "HDF5Output"] {
        let text = format!(r#"name: "h" type: "{ty}" top: "data""#);
        let err = create_layer(&layer_param(&text))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--features hdf5"), "{ty}: {err}");
    }
}

#[cfg(feature = "hdf5")]
#[test]
fn hdf5_data_reads_rows_across_files_and_output_writes_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, data: &[f64], label: &[f32]| {
        let path = dir.path().join(name);
        let f = hdf5_metno::File::create(&path).expect("create h5");
        let rows = label.len();
        f.new_dataset::<f64>()
            .shape(vec![rows, 2])
            .create("data")
            .expect("data")
            .write_raw(data)
            .expect("write");
        f.new_dataset::<f32>()
            .shape(vec![rows])
            .create("label")
            .expect("label")
            .write_raw(label)
            .expect("write");
        path
    };
    let a = write(
        "a.h5",
        &[0.0, 1.0, 10.0, 11.0, 20.0, 21.0],
        &[0.0, 1.0, 2.0],
    );
    let b = write("b.h5", &[30.0, 31.0, 40.0, 41.0], &[3.0, 4.0]);
    let list = dir.path().join("list.txt");
    std::fs::write(&list, format!("{}\n{}\n", a.display(), b.display())).expect("list");
    let text = format!(
        r#"name: "d" type: "HDF5Data" top: "data" top: "label" hdf5_data_param {{ source: "{}" batch_size: 4 }}"#,
        list.display()
    );
    let mut rig = Rig::new(&text, Phase::Train, &[], 2);
    assert_eq!((rig.top_shape(0), rig.top_shape(1)), (vec![4, 2], vec![4]));
    rig.forward();
    assert_eq!(
        rig.top(0),
        vec![0.0, 1.0, 10.0, 11.0, 20.0, 21.0, 30.0, 31.0]
    );
    assert_eq!(rig.top(1), vec![0.0, 1.0, 2.0, 3.0]);
    // The next batch finishes the second file and wraps around to the first.
    rig.forward();
    assert_eq!(rig.top(1), vec![4.0, 0.0, 1.0, 2.0]);

    let out = dir.path().join("out.h5");
    let text = format!(
        r#"name: "o" type: "HDF5Output" hdf5_output_param {{ file_name: "{}" }}"#,
        out.display()
    );
    let mut rig = Rig::new(
        &text,
        Phase::Test,
        &[
            (vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]),
            (vec![2], vec![7.0, 8.0]),
        ],
        0,
    );
    rig.forward();
    let f = hdf5_metno::File::open(&out).expect("open output");
    let data = f.dataset("data").expect("data");
    assert_eq!(data.shape(), vec![2, 2]);
    assert_eq!(
        data.read_raw::<f32>().expect("read"),
        vec![1.0, 2.0, 3.0, 4.0]
    );
    assert_eq!(
        f.dataset("label")
            .expect("label")
            .read_raw::<f32>()
            .expect("read"),
        vec![7.0, 8.0]
    );
}
