//! Layer tests on the CPU engine: every layer's backward against central finite differences (in the
//! spirit of Caffe's GradientChecker), in-place neurons against their out-of-place results, and
//! forward values worked out by hand or by a naive reference implementation.

mod common;

use common::*;

const SHAPE: [usize; 4] = [2, 3, 4, 5];

// ---------------------------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------------------------

fn conv_check(param: &str, shape: &[usize]) {
    let mut r = Rng::new(11);
    Check::new(&format!(
        r#"name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param {{ {param}
           weight_filler {{ type: "gaussian" std: 0.1 }} bias_filler {{ type: "gaussian" std: 0.1 }} }}"#
    ))
    .bottom(shape, r.vec(numel(shape), -1.0, 1.0))
    .run();
}

#[test]
fn convolution_pad_stride() {
    conv_check(
        "num_output: 3 kernel_size: 3 pad: 1 stride: 2",
        &[2, 4, 5, 5],
    );
}

#[test]
fn convolution_group_2() {
    conv_check(
        "num_output: 4 kernel_size: 3 pad: 1 group: 2",
        &[2, 4, 5, 5],
    );
}

#[test]
fn convolution_dilation_2() {
    conv_check(
        "num_output: 3 kernel_size: 3 pad: 1 dilation: 2",
        &[2, 2, 6, 6],
    );
}

#[test]
fn convolution_no_bias() {
    conv_check(
        "num_output: 3 kernel_size: 2 bias_term: false",
        &[2, 3, 4, 4],
    );
}

#[test]
fn convolution_pointwise_1x1() {
    conv_check("num_output: 4 kernel_size: 1", &[2, 3, 4, 4]);
}

#[test]
fn convolution_pointwise_1x1_group_2() {
    conv_check("num_output: 2 kernel_size: 1 group: 2", &[2, 4, 3, 3]);
}

#[test]
fn convolution_rectangular_kernel_stride_pad() {
    conv_check(
        "num_output: 2 kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0",
        &[2, 2, 4, 5],
    );
}

#[test]
fn convolution_two_bottoms_share_weights() {
    let mut r = Rng::new(12);
    Check::new(
        r#"name: "c" type: "Convolution" bottom: "a" bottom: "b" top: "ya" top: "yb"
           convolution_param { num_output: 2 kernel_size: 3 pad: 1 stride: 2 }"#,
    )
    .bottom(&[2, 2, 5, 5], r.vec(100, -1.0, 1.0))
    .bottom(&[1, 2, 4, 4], r.vec(32, -1.0, 1.0))
    .tops(2)
    .run();
}

// ---------------------------------------------------------------------------------------------
// InnerProduct
// ---------------------------------------------------------------------------------------------

fn ip_check(param: &str, shape: &[usize]) {
    let mut r = Rng::new(21);
    Check::new(&format!(
        r#"name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param {{ {param} }}"#
    ))
    .bottom(shape, r.vec(numel(shape), -1.0, 1.0))
    .run();
}

#[test]
fn inner_product_plain() {
    ip_check("num_output: 4", &[2, 3, 2, 2]);
}

#[test]
fn inner_product_transpose() {
    ip_check("num_output: 4 transpose: true", &[3, 5]);
}

#[test]
fn inner_product_axis_2() {
    ip_check("num_output: 3 axis: 2", &[2, 3, 4]);
}

#[test]
fn inner_product_no_bias() {
    ip_check("num_output: 3 bias_term: false", &[2, 6]);
}

// ---------------------------------------------------------------------------------------------
// Pooling
// ---------------------------------------------------------------------------------------------

fn pool_check(param: &str, shape: &[usize]) {
    let mut r = Rng::new(31);
    let max = param.contains("MAX");
    let x = if max {
        // Distinct values far apart: a window's maximum cannot change under the step.
        r.distinct(numel(shape), 0.05)
    } else {
        r.vec(numel(shape), -1.0, 1.0)
    };
    Check::new(&format!(
        r#"name: "p" type: "Pooling" bottom: "x" top: "y" pooling_param {{ {param} }}"#
    ))
    .bottom(shape, x)
    .run();
}

#[test]
fn pooling_max() {
    pool_check("pool: MAX kernel_size: 2 stride: 2", &[2, 3, 4, 4]);
}

#[test]
fn pooling_max_pad() {
    pool_check("pool: MAX kernel_size: 3 stride: 2 pad: 1", &[2, 2, 5, 5]);
}

#[test]
fn pooling_max_ceil_overhang() {
    pool_check("pool: MAX kernel_size: 3 stride: 2", &[2, 2, 6, 6]);
}

#[test]
fn pooling_max_global() {
    pool_check("pool: MAX global_pooling: true", &[2, 3, 3, 4]);
}

#[test]
fn pooling_max_rectangular_overlapping() {
    pool_check(
        "pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 1 stride_w: 2 pad_h: 1",
        &[1, 2, 4, 5],
    );
}

#[test]
fn pooling_ave() {
    pool_check("pool: AVE kernel_size: 2 stride: 2", &[2, 3, 4, 4]);
}

#[test]
fn pooling_ave_pad() {
    pool_check("pool: AVE kernel_size: 3 stride: 2 pad: 1", &[2, 2, 5, 5]);
}

#[test]
fn pooling_ave_ceil_overhang() {
    pool_check("pool: AVE kernel_size: 3 stride: 2", &[2, 2, 6, 6]);
}

#[test]
fn pooling_ave_global() {
    pool_check("pool: AVE global_pooling: true", &[2, 3, 3, 4]);
}

// ---------------------------------------------------------------------------------------------
// Neurons
// ---------------------------------------------------------------------------------------------

fn neuron_check(text: &str, x: Vec<f32>) {
    Check::new(text).bottom(&SHAPE, x).run();
}

fn n() -> usize {
    numel(&SHAPE)
}

#[test]
fn relu() {
    let x = Rng::new(41).away_from(n(), -1.0, 1.0, &[0.0], 0.05);
    neuron_check(r#"name: "r" type: "ReLU""#, x);
}

#[test]
fn relu_leaky() {
    let x = Rng::new(42).away_from(n(), -1.0, 1.0, &[0.0], 0.05);
    neuron_check(
        r#"name: "r" type: "ReLU" relu_param { negative_slope: 0.1 }"#,
        x,
    );
}

#[test]
fn sigmoid() {
    neuron_check(
        r#"name: "s" type: "Sigmoid""#,
        Rng::new(43).vec(n(), -3.0, 3.0),
    );
}

#[test]
fn tanh() {
    neuron_check(
        r#"name: "t" type: "TanH""#,
        Rng::new(44).vec(n(), -2.0, 2.0),
    );
}

#[test]
fn elu() {
    let x = Rng::new(45).away_from(n(), -2.0, 2.0, &[0.0], 0.05);
    neuron_check(r#"name: "e" type: "ELU" elu_param { alpha: 0.5 }"#, x);
}

#[test]
fn absval() {
    let x = Rng::new(46).away_from(n(), -1.0, 1.0, &[0.0], 0.05);
    neuron_check(r#"name: "a" type: "AbsVal""#, x);
}

#[test]
fn bnll() {
    neuron_check(
        r#"name: "b" type: "BNLL""#,
        Rng::new(47).vec(n(), -3.0, 3.0),
    );
}

#[test]
fn power_square_scale_shift() {
    neuron_check(
        r#"name: "p" type: "Power" power_param { power: 2 scale: 0.7 shift: 0.3 }"#,
        Rng::new(48).vec(n(), -1.0, 1.0),
    );
}

#[test]
fn power_sqrt() {
    // Fractional powers need a positive base: shift + scale·x in [0.6, 2.1].
    neuron_check(
        r#"name: "p" type: "Power" power_param { power: 0.5 scale: 0.5 shift: 1 }"#,
        Rng::new(49).vec(n(), -0.8, 2.2),
    );
}

#[test]
fn exp_base_e() {
    neuron_check(
        r#"name: "e" type: "Exp" exp_param { scale: 0.5 shift: 0.2 }"#,
        Rng::new(50).vec(n(), -1.0, 1.0),
    );
}

#[test]
fn exp_base_2() {
    neuron_check(
        r#"name: "e" type: "Exp" exp_param { base: 2 scale: 1.5 shift: -0.5 }"#,
        Rng::new(51).vec(n(), -1.0, 1.0),
    );
}

#[test]
fn log_base_e() {
    neuron_check(r#"name: "l" type: "Log""#, Rng::new(52).vec(n(), 0.5, 2.0));
}

#[test]
fn log_base_10_scale_shift() {
    // shift + scale·x stays in [0.6, 3].
    neuron_check(
        r#"name: "l" type: "Log" log_param { base: 10 scale: 2 shift: 1 }"#,
        Rng::new(53).vec(n(), -0.2, 1.0),
    );
}

#[test]
fn clip() {
    let x = Rng::new(54).away_from(n(), -1.0, 1.0, &[-0.5, 0.5], 0.05);
    neuron_check(
        r#"name: "c" type: "Clip" clip_param { min: -0.5 max: 0.5 }"#,
        x,
    );
}

#[test]
fn swish() {
    neuron_check(
        r#"name: "s" type: "Swish""#,
        Rng::new(55).vec(n(), -3.0, 3.0),
    );
}

#[test]
fn swish_beta_2() {
    neuron_check(
        r#"name: "s" type: "Swish" swish_param { beta: 2 }"#,
        Rng::new(56).vec(n(), -2.0, 2.0),
    );
}

#[test]
fn dropout_test_phase_is_identity() {
    let x = Rng::new(57).vec(n(), -1.0, 1.0);
    let dy = Rng::new(58).vec(n(), -1.0, 1.0);
    let mut rig = Rig::new(
        r#"name: "d" type: "Dropout" dropout_param { dropout_ratio: 0.3 }"#,
        Phase::Test,
        &[(SHAPE.to_vec(), x.clone())],
        1,
    );
    rig.forward();
    assert_eq!(rig.top(0), x, "TEST-phase Dropout must pass data through");
    rig.tops[0].set_diff(&rig.e, &dy);
    rig.backward(&[true]);
    assert_eq!(
        rig.bottoms[0].diff_to_vec(&rig.e),
        dy,
        "TEST-phase Dropout must pass diffs through"
    );
    // And the gradient checker agrees.
    Check::new(r#"name: "d" type: "Dropout""#)
        .phase(Phase::Test)
        .bottom(&SHAPE, x)
        .run();
}

#[test]
fn dropout_train_backward_is_mask_times_dy() {
    let ratio = 0.4f32;
    let scale = 1.0 / (1.0 - ratio);
    let x = Rng::new(59).away_from(n(), -1.0, 1.0, &[0.0], 0.05);
    let dy = Rng::new(60).vec(n(), -1.0, 1.0);
    let text = format!(r#"name: "d" type: "Dropout" dropout_param {{ dropout_ratio: {ratio} }}"#);
    let mut rig = Rig::new(&text, Phase::Train, &[(SHAPE.to_vec(), x.clone())], 1);
    rig.forward();
    let y = rig.top(0);
    // Read the mask off the forward: each element is dropped (0) or scaled by 1/(1-ratio).
    let mask: Vec<f32> = y.iter().zip(&x).map(|(y, x)| y / x).collect();
    let mut dropped = 0;
    for (i, m) in mask.iter().enumerate() {
        if m.abs() < 1e-6 {
            dropped += 1;
        } else {
            assert!(
                (m - scale).abs() < 1e-5,
                "mask[{i}] = {m}, expected 0 or {scale}"
            );
        }
    }
    let frac = dropped as f32 / n() as f32;
    assert!(
        (0.2..0.6).contains(&frac),
        "dropped {dropped} of {} with ratio {ratio}",
        n()
    );
    rig.tops[0].set_diff(&rig.e, &dy);
    rig.backward(&[true]);
    let want: Vec<f32> = dy.iter().zip(&mask).map(|(d, m)| d * m).collect();
    assert_close(
        "TRAIN Dropout bottom diff",
        &rig.bottoms[0].diff_to_vec(&rig.e),
        &want,
        1e-5,
    );
    // With the engine reseeded before every forward the mask is fixed and finite differences work.
    Check::new(&text).reseed(7).bottom(&SHAPE, x).run();
}

// ---------------------------------------------------------------------------------------------
// In-place neurons: bottom and top the same blob must give the out-of-place results
// ---------------------------------------------------------------------------------------------

/// Runs forward + backward out of place and in place; returns the mismatch, if any.
fn in_place_mismatch(text: &str, phase: Phase, x: &[f32], reseed: Option<u64>) -> Option<String> {
    let dy = Rng::new(99).vec(x.len(), -1.0, 1.0);
    let run = |in_place: bool| -> (Vec<f32>, Vec<f32>) {
        let e = CpuEngine::new();
        let bottom = Blob::new_ref(&e, &SHAPE);
        bottom.set_data(&e, x);
        let top = if in_place {
            bottom.clone()
        } else {
            Blob::new_ref(&e, &[])
        };
        let mut rig = Rig::wire(e, make_layer(text), phase, vec![bottom], vec![top]);
        if let Some(s) = reseed {
            crema::engine::Engine::seed(&rig.e, s);
        }
        rig.forward();
        let y = rig.top(0);
        rig.tops[0].set_diff(&rig.e, &dy);
        rig.backward(&[true]);
        (y, rig.bottoms[0].diff_to_vec(&rig.e))
    };
    let (y0, dx0) = run(false);
    let (y1, dx1) = run(true);
    let close = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .position(|(a, b)| (a - b).abs() > 1e-6 * a.abs().max(1.0))
    };
    if let Some(i) = close(&y0, &y1) {
        return Some(format!(
            "`{text}`: top[{i}] in place {} vs {} out of place (x = {})",
            y1[i], y0[i], x[i]
        ));
    }
    close(&dx0, &dx1).map(|i| {
        format!(
            "`{text}`: bottom diff[{i}] in place {} vs {} out of place (x = {})",
            dx1[i], dx0[i], x[i]
        )
    })
}

#[test]
fn neurons_in_place_match_out_of_place() {
    let mut r = Rng::new(61);
    let kinked = r.away_from(n(), -2.0, 2.0, &[-0.5, 0.0, 0.5], 0.05);
    let positive = r.vec(n(), 0.5, 2.0);
    let cases: Vec<(&str, &[f32])> = vec![
        (r#"name: "r" type: "ReLU""#, &kinked),
        (
            r#"name: "r" type: "ReLU" relu_param { negative_slope: 0.1 }"#,
            &kinked,
        ),
        (
            r#"name: "r" type: "ReLU" relu_param { negative_slope: -0.5 }"#,
            &kinked,
        ),
        (r#"name: "s" type: "Sigmoid""#, &kinked),
        (r#"name: "t" type: "TanH""#, &kinked),
        (r#"name: "e" type: "ELU" elu_param { alpha: 0.5 }"#, &kinked),
        (r#"name: "a" type: "AbsVal""#, &kinked),
        (r#"name: "b" type: "BNLL""#, &kinked),
        (
            r#"name: "p" type: "Power" power_param { power: 2 scale: 0.7 shift: 0.3 }"#,
            &kinked,
        ),
        (
            r#"name: "e" type: "Exp" exp_param { base: 2 scale: 0.5 shift: 0.1 }"#,
            &kinked,
        ),
        (
            r#"name: "l" type: "Log" log_param { scale: 2 shift: 0.5 }"#,
            &positive,
        ),
        (
            r#"name: "c" type: "Clip" clip_param { min: -0.5 max: 0.5 }"#,
            &kinked,
        ),
        (r#"name: "s" type: "Swish""#, &kinked),
        (
            r#"name: "s" type: "Swish" swish_param { beta: 2 }"#,
            &kinked,
        ),
    ];
    let mut failures = vec![];
    for (text, x) in &cases {
        failures.extend(in_place_mismatch(text, Phase::Train, x, None));
    }
    let dropout = r#"name: "d" type: "Dropout" dropout_param { dropout_ratio: 0.5 }"#;
    failures.extend(in_place_mismatch(dropout, Phase::Train, &kinked, Some(3)));
    failures.extend(in_place_mismatch(dropout, Phase::Test, &kinked, None));
    assert!(
        failures.is_empty(),
        "in-place results differ:\n{}",
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// LRN
// ---------------------------------------------------------------------------------------------

#[test]
fn lrn_across_channels() {
    let mut r = Rng::new(71);
    Check::new(r#"name: "n" type: "LRN" lrn_param { local_size: 5 alpha: 1 beta: 0.75 }"#)
        .bottom(&[2, 7, 3, 3], r.vec(126, -1.0, 1.0))
        .run();
}

#[test]
fn lrn_across_channels_k2_size3() {
    let mut r = Rng::new(72);
    Check::new(r#"name: "n" type: "LRN" lrn_param { local_size: 3 alpha: 0.5 beta: 0.6 k: 2 }"#)
        .bottom(&[2, 4, 2, 3], r.vec(48, -1.5, 1.5))
        .run();
}

#[test]
fn lrn_within_channel() {
    let mut r = Rng::new(73);
    Check::new(
        r#"name: "n" type: "LRN" lrn_param { local_size: 3 alpha: 1 beta: 0.75 norm_region: WITHIN_CHANNEL }"#,
    )
    .bottom(&[2, 2, 4, 5], r.vec(80, -1.0, 1.0))
    .run();
}

// ---------------------------------------------------------------------------------------------
// Softmax and losses
// ---------------------------------------------------------------------------------------------

#[test]
fn softmax_axis_1() {
    let mut r = Rng::new(81);
    Check::new(r#"name: "s" type: "Softmax""#)
        .bottom(&[2, 4, 2, 3], r.vec(48, -2.0, 2.0))
        .run();
}

#[test]
fn softmax_axis_2() {
    let mut r = Rng::new(82);
    Check::new(r#"name: "s" type: "Softmax" softmax_param { axis: 2 }"#)
        .bottom(&[2, 3, 4, 2], r.vec(48, -2.0, 2.0))
        .run();
}

fn softmax_loss_check(loss_param: &str, ignore: Option<f32>, spatial: bool) {
    let mut r = Rng::new(91);
    let (shape, lshape): (Vec<usize>, Vec<usize>) = if spatial {
        (vec![2, 4, 2, 3], vec![2, 1, 2, 3])
    } else {
        (vec![5, 4], vec![5])
    };
    let mut labels = r.labels(numel(&lshape), shape[1]);
    if let Some(ig) = ignore {
        labels[1] = ig;
        labels[3] = ig;
    }
    Check::new(&format!(
        r#"name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" {loss_param}"#
    ))
    .bottom(&shape, r.vec(numel(&shape), -2.0, 2.0))
    .label(&lshape, labels)
    .run();
}

#[test]
fn softmax_with_loss() {
    softmax_loss_check("", None, false);
}

#[test]
fn softmax_with_loss_ignore_label_valid() {
    softmax_loss_check("loss_param { ignore_label: 2 }", Some(2.0), false);
}

#[test]
fn softmax_with_loss_ignore_label_full() {
    softmax_loss_check(
        "loss_param { ignore_label: 255 normalization: FULL }",
        Some(255.0),
        true,
    );
}

#[test]
fn softmax_with_loss_batch_size() {
    softmax_loss_check("loss_param { normalization: BATCH_SIZE }", None, true);
}

#[test]
fn softmax_with_loss_none() {
    softmax_loss_check(
        "loss_param { normalization: NONE ignore_label: 1 }",
        Some(1.0),
        true,
    );
}

#[test]
fn softmax_with_loss_spatial_valid() {
    softmax_loss_check("loss_param { ignore_label: 255 }", Some(255.0), true);
}

#[test]
fn softmax_with_loss_legacy_normalize_false() {
    softmax_loss_check("loss_param { normalize: false }", None, true);
}

#[test]
fn euclidean_loss() {
    let mut r = Rng::new(92);
    Check::new(r#"name: "l" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l""#)
        .bottom(&[4, 3], r.vec(12, -1.0, 1.0))
        .bottom(&[4, 3], r.vec(12, -1.0, 1.0))
        .run();
}

// ---------------------------------------------------------------------------------------------
// Data movement
// ---------------------------------------------------------------------------------------------

#[test]
fn concat_axis_0() {
    let mut r = Rng::new(101);
    Check::new(
        r#"name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y" concat_param { axis: 0 }"#,
    )
    .bottom(&[2, 3, 2, 2], r.vec(24, -1.0, 1.0))
    .bottom(&[1, 3, 2, 2], r.vec(12, -1.0, 1.0))
    .run();
}

#[test]
fn concat_axis_1() {
    let mut r = Rng::new(102);
    Check::new(r#"name: "c" type: "Concat" bottom: "a" bottom: "b" bottom: "c" top: "y""#)
        .bottom(&[2, 3, 2, 2], r.vec(24, -1.0, 1.0))
        .bottom(&[2, 2, 2, 2], r.vec(16, -1.0, 1.0))
        .bottom(&[2, 1, 2, 2], r.vec(8, -1.0, 1.0))
        .run();
}

#[test]
fn slice_points() {
    let mut r = Rng::new(103);
    Check::new(
        r#"name: "s" type: "Slice" bottom: "x" top: "a" top: "b" top: "c"
           slice_param { axis: 1 slice_point: 1 slice_point: 3 }"#,
    )
    .bottom(&[2, 5, 2, 2], r.vec(40, -1.0, 1.0))
    .tops(3)
    .run();
}

#[test]
fn slice_even() {
    let mut r = Rng::new(104);
    Check::new(r#"name: "s" type: "Slice" bottom: "x" top: "a" top: "b" slice_param { axis: 0 }"#)
        .bottom(&[4, 3, 2], r.vec(24, -1.0, 1.0))
        .tops(2)
        .run();
}

#[test]
fn split_two_tops() {
    let mut r = Rng::new(105);
    Check::new(r#"name: "s" type: "Split" bottom: "x" top: "a" top: "b""#)
        .bottom(&[2, 3, 2, 2], r.vec(24, -1.0, 1.0))
        .tops(2)
        .run();
}

#[test]
fn flatten() {
    let mut r = Rng::new(106);
    let text = r#"name: "f" type: "Flatten" bottom: "x" top: "y""#;
    let x = r.vec(24, -1.0, 1.0);
    let mut rig = Rig::new(text, Phase::Train, &[(vec![2, 3, 2, 2], x.clone())], 1);
    rig.forward();
    assert_eq!(rig.top_shape(0), vec![2, 12]);
    assert_eq!(rig.top(0), x);
    Check::new(text).bottom(&[2, 3, 2, 2], x).run();
}

#[test]
fn reshape() {
    let mut r = Rng::new(107);
    let text = r#"name: "r" type: "Reshape" bottom: "x" top: "y"
                  reshape_param { shape { dim: 0 dim: -1 dim: 2 } }"#;
    let x = r.vec(24, -1.0, 1.0);
    let mut rig = Rig::new(text, Phase::Train, &[(vec![2, 3, 2, 2], x.clone())], 1);
    rig.forward();
    assert_eq!(rig.top_shape(0), vec![2, 6, 2]);
    assert_eq!(rig.top(0), x);
    Check::new(text).bottom(&[2, 3, 2, 2], x).run();
}

// ---------------------------------------------------------------------------------------------
// Eltwise
// ---------------------------------------------------------------------------------------------

#[test]
fn eltwise_sum_coeff() {
    let mut r = Rng::new(111);
    Check::new(
        r#"name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y"
           eltwise_param { operation: SUM coeff: 1 coeff: -2 coeff: 0.5 }"#,
    )
    .bottom(&[2, 3, 2, 2], r.vec(24, -1.0, 1.0))
    .bottom(&[2, 3, 2, 2], r.vec(24, -1.0, 1.0))
    .bottom(&[2, 3, 2, 2], r.vec(24, -1.0, 1.0))
    .run();
}

#[test]
fn eltwise_prod() {
    let mut r = Rng::new(112);
    Check::new(
        r#"name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y"
           eltwise_param { operation: PROD }"#,
    )
    .bottom(&[2, 3, 2, 2], r.vec(24, -1.0, 1.0))
    .bottom(&[2, 3, 2, 2], r.vec(24, -1.0, 1.0))
    .bottom(&[2, 3, 2, 2], r.vec(24, -1.0, 1.0))
    .run();
}

#[test]
fn eltwise_max() {
    let mut r = Rng::new(113);
    let v = r.distinct(72, 0.05);
    Check::new(
        r#"name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y"
           eltwise_param { operation: MAX }"#,
    )
    .bottom(&[2, 3, 2, 2], v[..24].to_vec())
    .bottom(&[2, 3, 2, 2], v[24..48].to_vec())
    .bottom(&[2, 3, 2, 2], v[48..].to_vec())
    .run();
}

// ---------------------------------------------------------------------------------------------
// Forward values by hand
// ---------------------------------------------------------------------------------------------

/// One N=1, C=1 plane holding 0, 1, 2, ... row by row, pooled with `param`.
fn pool_plane(param: &str, h: usize, w: usize) -> (Vec<usize>, Vec<f32>) {
    let x: Vec<f32> = (0..h * w).map(|v| v as f32).collect();
    let mut rig = Rig::new(
        &format!(r#"name: "p" type: "Pooling" pooling_param {{ {param} }}"#),
        Phase::Test,
        &[(vec![1, 1, h, w], x)],
        1,
    );
    rig.forward();
    (rig.top_shape(0), rig.top(0))
}

#[test]
fn pooling_4x4_to_2x2_values() {
    let (s, y) = pool_plane("pool: MAX kernel_size: 2 stride: 2", 4, 4);
    assert_eq!(s, vec![1, 1, 2, 2]);
    assert_eq!(y, vec![5.0, 7.0, 13.0, 15.0]);
    let (s, y) = pool_plane("pool: AVE kernel_size: 2 stride: 2", 4, 4);
    assert_eq!(s, vec![1, 1, 2, 2]);
    assert_close("AVE 4x4", &y, &[2.5, 4.5, 10.5, 12.5], 1e-6);
}

#[test]
fn pooling_ceil_mode_overhang_values() {
    // Caffe rounds up: ceil((5 - 2) / 2) + 1 = 3; the last window holds one row/column.
    let (s, y) = pool_plane("pool: MAX kernel_size: 2 stride: 2", 5, 5);
    assert_eq!(s, vec![1, 1, 3, 3]);
    assert_eq!(y, vec![6.0, 8.0, 9.0, 16.0, 18.0, 19.0, 21.0, 23.0, 24.0]);
    // AVE divides by the part of the window inside the image (no padding here).
    let (s, y) = pool_plane("pool: AVE kernel_size: 2 stride: 2", 5, 5);
    assert_eq!(s, vec![1, 1, 3, 3]);
    assert_close(
        "AVE 5x5 ceil",
        &y,
        &[3.0, 5.0, 6.5, 13.0, 15.0, 16.5, 20.5, 22.5, 24.0],
        1e-6,
    );
    // FLOOR drops the partial window.
    let (s, y) = pool_plane("pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR", 5, 5);
    assert_eq!(s, vec![1, 1, 2, 2]);
    assert_eq!(y, vec![6.0, 8.0, 16.0, 18.0]);
}

#[test]
fn pooling_pad_clips_last_window_values() {
    // ceil((5 + 2 - 2) / 2) + 1 = 4, but the 4th window would start at 6 >= 5 + 1 (inside the
    // padding only), so Caffe drops it: 3×3. Windows cover rows/cols [0,1), [1,3), [3,5).
    let (s, y) = pool_plane("pool: MAX kernel_size: 2 stride: 2 pad: 1", 5, 5);
    assert_eq!(s, vec![1, 1, 3, 3]);
    assert_eq!(y, vec![0.0, 2.0, 4.0, 10.0, 12.0, 14.0, 20.0, 22.0, 24.0]);
    // AVE divides by the full 2×2 window, padding included.
    let (s, y) = pool_plane("pool: AVE kernel_size: 2 stride: 2 pad: 1", 5, 5);
    assert_eq!(s, vec![1, 1, 3, 3]);
    assert_close(
        "AVE 5x5 pad 1",
        &y,
        &[0.0, 0.75, 1.75, 3.75, 9.0, 11.0, 8.75, 19.0, 21.0],
        1e-6,
    );
    // A 4x4 input with kernel 3, stride 2, pad 1 keeps ceil(3/2) + 1 = 3 windows: the last
    // starts at 3 < 4 + 1.
    let (s, _) = pool_plane("pool: MAX kernel_size: 3 stride: 2 pad: 1", 4, 4);
    assert_eq!(s, vec![1, 1, 3, 3]);
}

fn accuracy(
    param: &str,
    x: &[f32],
    classes: usize,
    labels: &[f32],
    n_tops: usize,
) -> Vec<Vec<f32>> {
    let num = labels.len();
    let mut rig = Rig::new(
        &format!(r#"name: "a" type: "Accuracy" accuracy_param {{ {param} }}"#),
        Phase::Test,
        &[
            (vec![num, classes], x.to_vec()),
            (vec![num], labels.to_vec()),
        ],
        n_tops,
    );
    rig.forward();
    (0..n_tops).map(|i| rig.top(i)).collect()
}

#[test]
fn accuracy_top_k_and_ignore_label() {
    #[rustfmt::skip]
    let x = [
        0.1, 0.5, 0.3, 0.1, // ranks: 1, 2, 0, 3
        0.9, 0.05, 0.03, 0.02, // 0, 1, 2, 3
        0.2, 0.1, 0.3, 0.4, // 3, 2, 0, 1
        0.25, 0.25, 0.4, 0.1, // 2, {0, 1}, 3
    ];
    let labels = [1.0, 1.0, 2.0, 3.0];
    // top-1: sample 0 right (1), 1 wrong (0 wins), 2 wrong (3 wins), 3 wrong.
    let top1 = accuracy("top_k: 1", &x, 4, &labels, 2);
    assert_close("top-1", &top1[0], &[0.25], 1e-6);
    assert_close("top-1 per class", &top1[1], &[0.0, 0.5, 0.0, 0.0], 1e-6);
    // top-2: sample 0 right, 1 right (second), 2 right (second), 3 wrong.
    let top2 = accuracy("top_k: 2", &x, 4, &labels, 1);
    assert_close("top-2", &top2[0], &[0.75], 1e-6);
    // Ignoring label 1 leaves samples 2 and 3.
    let ign = accuracy("top_k: 2 ignore_label: 1", &x, 4, &labels, 1);
    assert_close("top-2 ignoring 1", &ign[0], &[0.5], 1e-6);
    let ign1 = accuracy("top_k: 1 ignore_label: 3", &x, 4, &labels, 1);
    assert_close("top-1 ignoring 3", &ign1[0], &[1.0 / 3.0], 1e-6);
}

#[test]
fn accuracy_ties_count_against_the_true_class() {
    // Caffe counts every other class scoring >= the true class as better, so a tie at the top
    // is not a top-1 hit (a net that outputs constants must not score 100%).
    let x = [0.5, 0.5, 0.0, 1.0, 1.0, 1.0];
    let labels = [0.0, 2.0];
    let top1 = accuracy("top_k: 1", &x, 3, &labels, 1);
    assert_close("top-1 with ties", &top1[0], &[0.0], 1e-6);
    let top2 = accuracy("top_k: 2", &x, 3, &labels, 1);
    // Sample 0: one class ties (rank 2, a hit); sample 1: two classes tie (rank 3, a miss).
    assert_close("top-2 with ties", &top2[0], &[0.5], 1e-6);
}

#[test]
fn softmax_rows_sum_to_one() {
    let mut r = Rng::new(121);
    for (param, shape, axis) in [
        ("", vec![2usize, 4, 2, 3], 1usize),
        ("softmax_param { axis: 2 }", vec![2, 3, 4, 2], 2),
        ("softmax_param { axis: -1 }", vec![3, 5], 1),
    ] {
        let x = r.vec(numel(&shape), -10.0, 10.0);
        let mut rig = Rig::new(
            &format!(r#"name: "s" type: "Softmax" {param}"#),
            Phase::Test,
            &[(shape.clone(), x.clone())],
            1,
        );
        rig.forward();
        let y = rig.top(0);
        let outer: usize = shape[..axis].iter().product();
        let ch = shape[axis];
        let inner: usize = shape[axis + 1..].iter().product();
        for o in 0..outer {
            for i in 0..inner {
                let idx = |c: usize| (o * ch + c) * inner + i;
                let s: f32 = (0..ch).map(|c| y[idx(c)]).sum();
                assert!(
                    (s - 1.0).abs() < 1e-5,
                    "softmax {param}: row ({o}, {i}) sums to {s}"
                );
                // The same ratios as exp(x): y_c / y_0 = exp(x_c - x_0).
                for c in 0..ch {
                    assert!(y[idx(c)] > 0.0);
                    let want = (x[idx(c)] - x[idx(0)]).exp();
                    let got = y[idx(c)] / y[idx(0)];
                    assert!(
                        (got - want).abs() <= 1e-3 * want.max(1.0),
                        "softmax {param}: ratio {got} vs {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn softmax_with_loss_known_value() {
    // Sample 0: logits (1, 2, 3), label 2: -log(e³ / (e + e² + e³)) = log(1 + e⁻¹ + e⁻²).
    // Sample 1: logits (0, 0, 0), label 0: log 3.
    let l0 = (1.0f64 + (-1.0f64).exp() + (-2.0f64).exp()).ln();
    let l1 = 3.0f64.ln();
    let x = vec![1.0, 2.0, 3.0, 0.0, 0.0, 0.0];
    let run = |param: &str, labels: Vec<f32>| -> (f32, Vec<f32>) {
        let mut rig = Rig::new(
            &format!(
                r#"name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "l" top: "p" {param}"#
            ),
            Phase::Train,
            &[(vec![2, 3], x.clone()), (vec![2], labels)],
            2,
        );
        rig.forward();
        (rig.top(0)[0], rig.top(1))
    };
    let (loss, prob) = run("", vec![2.0, 0.0]);
    assert!((loss as f64 - (l0 + l1) / 2.0).abs() < 1e-5, "loss {loss}");
    let z = 1.0f64.exp() + 2.0f64.exp() + 3.0f64.exp();
    let want = [
        (1.0f64.exp() / z) as f32,
        (2.0f64.exp() / z) as f32,
        (3.0f64.exp() / z) as f32,
        1.0 / 3.0,
        1.0 / 3.0,
        1.0 / 3.0,
    ];
    assert_close("softmax probabilities (second top)", &prob, &want, 1e-6);
    let (loss, _) = run("loss_param { normalization: NONE }", vec![2.0, 0.0]);
    assert!((loss as f64 - (l0 + l1)).abs() < 1e-5, "NONE loss {loss}");
    // VALID with sample 1 ignored divides by the one counted sample; FULL still by 2.
    let (loss, _) = run("loss_param { ignore_label: 0 }", vec![2.0, 0.0]);
    assert!(
        (loss as f64 - l0).abs() < 1e-5,
        "VALID ignoring loss {loss}"
    );
    let (loss, _) = run(
        "loss_param { ignore_label: 0 normalization: FULL }",
        vec![2.0, 0.0],
    );
    assert!(
        (loss as f64 - l0 / 2.0).abs() < 1e-5,
        "FULL ignoring loss {loss}"
    );
}

/// Direct convolution from the definition, NCHW, weights O×(C/g)×kh×kw.
#[allow(clippy::too_many_arguments)]
fn naive_conv(
    x: &[f32],
    xs: [usize; 4],
    w: &[f32],
    b: &[f32],
    out: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dil: usize,
    group: usize,
) -> (Vec<usize>, Vec<f32>) {
    let [num, c, h, wd] = xs;
    let ext = dil * (k - 1) + 1;
    let (oh, ow) = (
        (h + 2 * pad - ext) / stride + 1,
        (wd + 2 * pad - ext) / stride + 1,
    );
    let (cg, og) = (c / group, out / group);
    let mut y = vec![0.0f32; num * out * oh * ow];
    for n in 0..num {
        for o in 0..out {
            let g = o / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = b.get(o).copied().unwrap_or(0.0) as f64;
                    for ic in 0..cg {
                        let ci = g * cg + ic;
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * stride + ky * dil) as isize - pad as isize;
                                let ix = (ox * stride + kx * dil) as isize - pad as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xv = x[((n * c + ci) * h + iy as usize) * wd + ix as usize];
                                let wv = w[((o * cg + ic) * k + ky) * k + kx];
                                s += xv as f64 * wv as f64;
                            }
                        }
                    }
                    y[((n * out + o) * oh + oy) * ow + ox] = s as f32;
                }
            }
        }
    }
    (vec![num, out, oh, ow], y)
}

#[test]
fn convolution_matches_naive() {
    let mut r = Rng::new(131);
    for (k, stride, pad, dil, group, bias) in [
        (3usize, 2usize, 1usize, 2usize, 2usize, true),
        (3, 1, 0, 1, 1, true),
        (2, 2, 1, 1, 3, false),
        (1, 1, 0, 1, 2, true),
        (1, 2, 1, 1, 1, true),
    ] {
        let xs = [2usize, 6, 7, 6];
        let out = 6;
        let text = format!(
            r#"name: "c" type: "Convolution" convolution_param {{ num_output: {out} kernel_size: {k}
               stride: {stride} pad: {pad} dilation: {dil} group: {group} bias_term: {bias} }}"#
        );
        let x = r.vec(numel(&xs), -1.0, 1.0);
        let mut rig = Rig::new(&text, Phase::Test, &[(xs.to_vec(), x.clone())], 1);
        let params = rig.params();
        let w = r.vec(params[0].count(), -1.0, 1.0);
        params[0].set_data(&rig.e, &w);
        let b = if bias {
            let b = r.vec(out, -1.0, 1.0);
            params[1].set_data(&rig.e, &b);
            b
        } else {
            assert_eq!(params.len(), 1, "bias_term: false must not create a bias");
            vec![]
        };
        rig.forward();
        let (shape, want) = naive_conv(&x, xs, &w, &b, out, k, stride, pad, dil, group);
        assert_eq!(rig.top_shape(0), shape, "{text}");
        assert_close(&text, &rig.top(0), &want, 1e-5);
    }
}

#[test]
fn inner_product_matches_naive_matmul() {
    let mut r = Rng::new(141);
    let (m, k, n) = (3usize, 8usize, 5usize);
    for transpose in [false, true] {
        let text = format!(
            r#"name: "ip" type: "InnerProduct" inner_product_param {{ num_output: {n} transpose: {transpose} }}"#
        );
        let x = r.vec(m * k, -1.0, 1.0);
        let mut rig = Rig::new(&text, Phase::Test, &[(vec![m, 2, 2, 2], x.clone())], 1);
        let params = rig.params();
        let want_wshape = if transpose { vec![k, n] } else { vec![n, k] };
        assert_eq!(params[0].shape(), want_wshape, "{text}");
        let w = r.vec(k * n, -1.0, 1.0);
        let b = r.vec(n, -1.0, 1.0);
        params[0].set_data(&rig.e, &w);
        params[1].set_data(&rig.e, &b);
        rig.forward();
        let mut want = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = b[j] as f64;
                for t in 0..k {
                    let wv = if transpose {
                        w[t * n + j]
                    } else {
                        w[j * k + t]
                    };
                    s += x[i * k + t] as f64 * wv as f64;
                }
                want[i * n + j] = s as f32;
            }
        }
        assert_eq!(rig.top_shape(0), vec![m, n]);
        assert_close(&text, &rig.top(0), &want, 1e-5);
    }
}

#[test]
fn euclidean_loss_value() {
    // ½N Σ (a - b)² with N = 2: ((1 - 0)² + (2 - 4)² + (0 - 1)² + (-1 - 1)²) / 4 = 10 / 4.
    let mut rig = Rig::new(
        r#"name: "l" type: "EuclideanLoss""#,
        Phase::Train,
        &[
            (vec![2, 2], vec![1.0, 2.0, 0.0, -1.0]),
            (vec![2, 2], vec![0.0, 4.0, 1.0, 1.0]),
        ],
        1,
    );
    rig.forward();
    assert_close("Euclidean loss", &rig.top(0), &[2.5], 1e-6);
}

// ---------------------------------------------------------------------------------------------
// The checker itself must be able to fail
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    None,
    WrongFactor,
    AccumulatesBottomDiff,
    OverwritesParamDiff,
}

/// y = a·x² with a learnable scalar a, and a backward that may carry one planted fault.
struct Square {
    fault: Fault,
    a: Vec<BlobRef>,
}

impl Square {
    fn make(fault: Fault) -> Box<dyn Layer> {
        Box::new(Square { fault, a: vec![] })
    }
}

impl Layer for Square {
    fn setup(&mut self, cx: &Ctx, _bottom: &[BlobRef], _top: &[BlobRef]) -> crema::Result<()> {
        self.a = vec![Blob::new_ref(cx.engine, &[1])];
        Ok(())
    }
    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> crema::Result<()> {
        top[0].reshape(cx.engine, &bottom[0].shape());
        Ok(())
    }
    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> crema::Result<()> {
        let a = self.a[0].data_to_vec(cx.engine)[0];
        let y: Vec<f32> = bottom[0]
            .data_to_vec(cx.engine)
            .iter()
            .map(|x| a * x * x)
            .collect();
        top[0].set_data(cx.engine, &y);
        Ok(())
    }
    fn backward(
        &mut self,
        cx: &Ctx,
        top: &[BlobRef],
        _pd: &[bool],
        bottom: &[BlobRef],
    ) -> crema::Result<()> {
        let e = cx.engine;
        let (x, dy) = (bottom[0].data_to_vec(e), top[0].diff_to_vec(e));
        let a = self.a[0].data_to_vec(e)[0];
        let factor = if self.fault == Fault::WrongFactor {
            1.9
        } else {
            2.0
        };
        let mut dx: Vec<f32> = x.iter().zip(&dy).map(|(x, d)| factor * a * x * d).collect();
        if self.fault == Fault::AccumulatesBottomDiff {
            let old = bottom[0].diff_to_vec(e);
            dx.iter_mut().zip(&old).for_each(|(d, o)| *d += o);
        }
        bottom[0].set_diff(e, &dx);
        let mut da: f32 = x.iter().zip(&dy).map(|(x, d)| x * x * d).sum();
        if self.fault != Fault::OverwritesParamDiff {
            da += self.a[0].diff_to_vec(e)[0];
        }
        self.a[0].set_diff(e, &[da]);
        Ok(())
    }
    fn blobs(&mut self) -> &mut [BlobRef] {
        &mut self.a
    }
}

#[test]
fn checker_catches_planted_faults() {
    fn passes(make: fn() -> Box<dyn Layer>) -> bool {
        let x = Rng::new(151).vec(24, -1.0, 1.0);
        std::panic::catch_unwind(|| {
            Check::new("Square")
                .custom(make)
                .bottom(&[2, 3, 4], x)
                .run()
        })
        .is_ok()
    }
    assert!(
        passes(|| Square::make(Fault::None)),
        "a correct layer must pass"
    );
    assert!(
        !passes(|| Square::make(Fault::WrongFactor)),
        "a 5% gradient error must fail"
    );
    assert!(
        !passes(|| Square::make(Fault::AccumulatesBottomDiff)),
        "accumulating into bottom diffs must fail"
    );
    assert!(
        !passes(|| Square::make(Fault::OverwritesParamDiff)),
        "overwriting parameter diffs must fail"
    );
}
