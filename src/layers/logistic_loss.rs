//! MultinomialLogisticLoss (-log p of the true class, from probabilities) and InfogainLoss (the
//! same weighted by an information-gain matrix H, from raw scores through a softmax). Caffe runs
//! both on the host only; so does crema, around the engine's softmax.

use super::{canonical_axis, count, normalization, Ctx, Layer};
use crate::blob::{Blob, BlobRef};
use crate::net::weights::{proto_data, proto_shape};
use crate::{bail, Result};
use crema_proto::caffe::loss_parameter::NormalizationMode;
use crema_proto::caffe::{BlobProto, LayerParameter, LossParameter};
use std::path::Path;

/// Caffe's floor under probabilities before the log (kLOG_THRESHOLD).
const LOG_THRESHOLD: f32 = 1e-20;

/// Reads labels as integer class indexes in [0, classes), skipping `ignore`.
fn check_label(v: f32, classes: usize, ignore: Option<i32>) -> Result<Option<usize>> {
    let l = v as i32;
    if Some(l) == ignore {
        return Ok(None);
    }
    if l < 0 || l as usize >= classes {
        bail!("label {v} is outside [0, {classes}); check the data's labels or num_output");
    }
    Ok(Some(l as usize))
}

/// MultinomialLogisticLoss: -1/N Σ log max(p[n, label_n], 1e-20) over N×D probabilities.
pub struct MultinomialLogisticLoss {
    dims: (usize, usize),
}

impl MultinomialLogisticLoss {
    pub fn create(_lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        Ok(Box::new(MultinomialLogisticLoss { dims: (0, 0) }))
    }
}

impl Layer for MultinomialLogisticLoss {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((2, 2), (1, 1))
    }
    fn is_loss(&self) -> bool {
        true
    }
    fn allow_force_backward(&self, bottom: usize) -> bool {
        bottom == 0
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let num = bottom[0].dim(0);
        if bottom[1].count() != num {
            bail!(
                "needs one label per item: {} labels for {num} items (shape {:?})",
                bottom[1].count(),
                bottom[0].shape()
            );
        }
        self.dims = (num, bottom[0].count().checked_div(num).unwrap_or(0));
        top[0].reshape(cx.engine, &[]);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let (num, dim) = self.dims;
        let (p, labels) = (bottom[0].data_to_vec(e), bottom[1].data_to_vec(e));
        let mut loss = 0.0f64;
        for (n, l) in labels.iter().enumerate() {
            if let Some(l) = check_label(*l, dim, None)? {
                loss -= (p[n * dim + l].max(LOG_THRESHOLD) as f64).ln();
            }
        }
        e.upload(&[(loss / num.max(1) as f64) as f32], &mut top[0].data_mut());
        Ok(())
    }

    fn backward(
        &mut self,
        cx: &Ctx,
        top: &[BlobRef],
        pd: &[bool],
        bottom: &[BlobRef],
    ) -> Result<()> {
        if pd.get(1).copied().unwrap_or(false) {
            bail!("cannot backpropagate to the labels; set propagate_down: false for them");
        }
        if !pd[0] {
            return Ok(());
        }
        let e = cx.engine;
        let (num, dim) = self.dims;
        let (p, labels) = (bottom[0].data_to_vec(e), bottom[1].data_to_vec(e));
        let scale = -e.download(&top[0].diff())[0] / num.max(1) as f32;
        let mut dx = vec![0.0f32; num * dim];
        for (n, l) in labels.iter().enumerate() {
            if let Some(l) = check_label(*l, dim, None)? {
                dx[n * dim + l] = scale / p[n * dim + l].max(LOG_THRESHOLD);
            }
        }
        e.upload(&dx, &mut bottom[0].diff_mut());
        Ok(())
    }
}

/// InfogainLoss: -1/norm Σ Σ_l H[label, l] log max(softmax(x)_l, 1e-20), with H read from
/// `infogain_loss_param.source` or given as a third bottom. An optional second top gives the
/// softmax probabilities.
pub struct InfogainLoss {
    axis: i32,
    source: Option<String>,
    loss: LossParameter,
    /// H from the source file (None when it is the third bottom).
    h_file: Option<Vec<f32>>,
    prob: Option<BlobRef>,
    /// (outer, classes, inner)
    dims: (usize, usize, usize),
    norm: f32,
}

impl InfogainLoss {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.infogain_loss_param.clone().unwrap_or_default();
        let loss = lp.loss_param.unwrap_or_default();
        if loss.normalize.is_some() {
            bail!("loss_param.normalize is deprecated for InfogainLoss (as in Caffe); use normalization");
        }
        Ok(Box::new(InfogainLoss {
            axis: p.axis(),
            source: p.source.clone(),
            loss,
            h_file: None,
            prob: None,
            dims: (0, 0, 0),
            norm: 1.0,
        }))
    }

    fn ignore(&self) -> Option<i32> {
        self.loss.ignore_label
    }

    fn matrix(&self, cx: &Ctx, bottom: &[BlobRef]) -> Vec<f32> {
        match (&self.h_file, bottom.get(2)) {
            (_, Some(h)) => h.data_to_vec(cx.engine),
            (Some(h), None) => h.clone(),
            (None, None) => vec![],
        }
    }
}

impl Layer for InfogainLoss {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((2, 3), (1, 2))
    }
    fn is_loss(&self) -> bool {
        true
    }
    fn allow_force_backward(&self, bottom: usize) -> bool {
        bottom == 0
    }

    fn setup(&mut self, _cx: &Ctx, bottom: &[BlobRef], _top: &[BlobRef]) -> Result<()> {
        if bottom.len() < 3 {
            let Some(src) = self.source.as_deref().filter(|s| !s.is_empty()) else {
                bail!("needs the infogain matrix H: set infogain_loss_param.source or give it as a third bottom");
            };
            let blob: BlobProto = crema_proto::read_binary(Path::new(src), "caffe.BlobProto")
                .map_err(|e| crate::Error::msg(format!("infogain_loss_param.source: {e}")))?;
            let data = proto_data(&blob);
            if data.len() != proto_shape(&blob).iter().product::<usize>() {
                bail!(
                    "infogain matrix `{src}` holds {} values for its shape {:?}",
                    data.len(),
                    proto_shape(&blob)
                );
            }
            self.h_file = Some(data);
        }
        Ok(())
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let s = bottom[0].shape();
        let a = canonical_axis(self.axis, s.len(), "infogain_loss_param")?;
        let (o, c, i) = (count(&s, 0, a), s[a], count(&s, a + 1, s.len()));
        if bottom[1].count() != o * i {
            bail!(
                "number of labels ({}) must equal outer × inner of the predictions ({o} × {i}) for shape {s:?} on axis {a}",
                bottom[1].count()
            );
        }
        let h_len = match (bottom.get(2), &self.h_file) {
            (Some(h), _) => h.count(),
            (None, Some(h)) => h.len(),
            (None, None) => 0,
        };
        if h_len != c * c {
            bail!(
                "the infogain matrix has {h_len} values but {c} classes need {c}×{c} = {}",
                c * c
            );
        }
        self.dims = (o, c, i);
        top[0].reshape(cx.engine, &[]);
        match &self.prob {
            Some(p) => p.reshape(cx.engine, &s),
            None => self.prob = Some(Blob::new_ref(cx.engine, &s)),
        }
        if let Some(t) = top.get(1) {
            t.reshape(cx.engine, &s);
        }
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let (o, c, inner) = self.dims;
        let Some(prob) = &self.prob else {
            return Ok(());
        };
        e.softmax_forward(o, c, inner, &bottom[0].data(), &mut prob.data_mut());
        let p = prob.data_to_vec(e);
        let labels = bottom[1].data_to_vec(e);
        let h = self.matrix(cx, bottom);
        let mut loss = 0.0f64;
        let mut valid = 0;
        for oi in 0..o {
            for ii in 0..inner {
                let Some(l) = check_label(labels[oi * inner + ii], c, self.ignore())? else {
                    continue;
                };
                for k in 0..c {
                    let pk = p[(oi * c + k) * inner + ii].max(LOG_THRESHOLD);
                    loss -= h[l * c + k] as f64 * (pk as f64).ln();
                }
                valid += 1;
            }
        }
        let mode = normalization::mode(&self.loss, NormalizationMode::Valid);
        self.norm = normalization::divisor(mode, o, inner, valid);
        e.upload(&[(loss / self.norm as f64) as f32], &mut top[0].data_mut());
        if let Some(t) = top.get(1) {
            e.copy_blocks(
                1,
                o * c * inner,
                &prob.data(),
                0,
                0,
                &mut t.data_mut(),
                0,
                0,
            );
        }
        Ok(())
    }

    fn backward(
        &mut self,
        cx: &Ctx,
        top: &[BlobRef],
        pd: &[bool],
        bottom: &[BlobRef],
    ) -> Result<()> {
        if pd.iter().skip(1).any(|p| *p) {
            bail!("cannot backpropagate to the labels or the infogain matrix; set propagate_down: false for them");
        }
        if !pd[0] {
            return Ok(());
        }
        let e = cx.engine;
        let (o, c, inner) = self.dims;
        let Some(prob) = &self.prob else {
            return Ok(());
        };
        let p = prob.data_to_vec(e);
        let labels = bottom[1].data_to_vec(e);
        let h = self.matrix(cx, bottom);
        let row_sums: Vec<f32> = (0..c).map(|r| h[r * c..(r + 1) * c].iter().sum()).collect();
        let scale = e.download(&top[0].diff())[0] / self.norm;
        // d/dx_k of -Σ_l H[y,l] log p_l = p_k Σ_l H[y,l] - H[y,k]
        let mut dx = vec![0.0f32; o * c * inner];
        for oi in 0..o {
            for ii in 0..inner {
                let Some(l) = check_label(labels[oi * inner + ii], c, self.ignore())? else {
                    continue;
                };
                for k in 0..c {
                    let at = (oi * c + k) * inner + ii;
                    dx[at] = scale * (p[at] * row_sums[l] - h[l * c + k]);
                }
            }
        }
        e.upload(&dx, &mut bottom[0].diff_mut());
        Ok(())
    }
}
