//! Caffe's loss normalisation: what a loss sum is divided by (LossParameter.normalization).

use crema_proto::caffe::loss_parameter::NormalizationMode;
use crema_proto::caffe::LossParameter;

/// The mode a LossParameter asks for: `normalization` when set, else the legacy `normalize`
/// (true: VALID, false: BATCH_SIZE), else the layer's own default.
pub fn mode(p: &LossParameter, default: NormalizationMode) -> NormalizationMode {
    if p.normalization.is_some() {
        p.normalization()
    } else if let Some(n) = p.normalize {
        if n {
            NormalizationMode::Valid
        } else {
            NormalizationMode::BatchSize
        }
    } else {
        default
    }
}

/// The divisor for `outer` × `inner` predictions of which `valid` were counted; at least 1, so
/// a batch whose labels are all ignored gives a zero loss rather than NaN.
pub fn divisor(mode: NormalizationMode, outer: usize, inner: usize, valid: usize) -> f32 {
    let n = match mode {
        NormalizationMode::Full => (outer * inner) as f32,
        NormalizationMode::Valid => valid as f32,
        NormalizationMode::BatchSize => outer as f32,
        NormalizationMode::None => 1.0,
    };
    n.max(1.0)
}
