//! Scale and Bias: multiply by / add a factor broadcast along the bottom's other axes. The factor
//! is a learned blob or a second bottom; Scale may add a learned bias as well (Caffe's way of
//! giving BatchNorm its γ and β).

use super::work::Work;
use super::{canonical_axis, count, in_place, with_diff_in_out, with_in_out, Ctx, Layer};
use crate::blob::{Blob, BlobRef};
use crate::filler::fill;
use crate::{bail, Result};
use crema_proto::caffe::{FillerParameter, LayerParameter};

/// The learned factor's shape: the bottom's axes [axis, axis + num_axes), to the end for -1.
fn param_shape(bshape: &[usize], axis: i32, num_axes: i32, what: &str) -> Result<Vec<usize>> {
    let a = canonical_axis(axis, bshape.len(), what)?;
    if num_axes < -1 {
        bail!("{what}.num_axes must be non-negative, or -1 to extend to the end of the bottom; got {num_axes}");
    }
    let end = if num_axes == -1 {
        bshape.len()
    } else {
        a + num_axes as usize
    };
    if end > bshape.len() {
        bail!(
            "{what}: axis {axis} + num_axes {num_axes} exceed the {} axes of the bottom {bshape:?}",
            bshape.len()
        );
    }
    Ok(bshape[a..end].to_vec())
}

/// (outer, dim, inner) when a factor of shape `fshape` lies along the bottom from `axis`; a
/// scalar factor lies anywhere, as in Caffe.
fn broadcast_dims(
    bshape: &[usize],
    axis: i32,
    fshape: &[usize],
    what: &str,
) -> Result<(usize, usize, usize)> {
    let a = if fshape.is_empty() {
        0
    } else {
        canonical_axis(axis, bshape.len(), what)?
    };
    let end = a + fshape.len();
    if end > bshape.len() || bshape[a..end] != *fshape {
        bail!(
            "{what}: the factor's shape {fshape:?} must match the bottom {bshape:?} from axis {a}"
        );
    }
    Ok((
        count(bshape, 0, a),
        fshape.iter().product(),
        count(bshape, end, bshape.len()),
    ))
}

/// The second bottom when given, else the learned blob.
fn factor<'a>(bottom: &'a [BlobRef], blobs: &'a [BlobRef]) -> &'a BlobRef {
    match bottom.get(1) {
        Some(b) => b,
        None => &blobs[0],
    }
}

/// Bias: top = bottom + b, with `b` learned or the second bottom.
pub struct Bias {
    axis: i32,
    num_axes: i32,
    filler: FillerParameter,
    blobs: Vec<BlobRef>,
    dims: (usize, usize, usize),
}

impl Bias {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.bias_param.clone().unwrap_or_default();
        Ok(Box::new(Bias {
            axis: p.axis(),
            num_axes: p.num_axes(),
            filler: p.filler.clone().unwrap_or_default(),
            blobs: vec![],
            dims: (0, 0, 0),
        }))
    }
}

impl Layer for Bias {
    fn graph_safe(&self) -> bool {
        true
    }
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 2), (1, 1))
    }

    fn setup(&mut self, cx: &Ctx, bottom: &[BlobRef], _top: &[BlobRef]) -> Result<()> {
        if bottom.len() == 1 {
            let shape = param_shape(&bottom[0].shape(), self.axis, self.num_axes, "bias_param")?;
            let b = Blob::new_ref(cx.engine, &shape);
            b.set_data(cx.engine, &fill(&self.filler, &shape)?);
            self.blobs = vec![b];
        }
        Ok(())
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let bshape = bottom[0].shape();
        let fshape = match bottom.get(1) {
            Some(b) => b.shape(),
            None => self.blobs[0].shape(),
        };
        self.dims = broadcast_dims(&bshape, self.axis, &fshape, "bias_param")?;
        top[0].reshape(cx.engine, &bshape);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let (o, d, i) = self.dims;
        if !in_place(&bottom[0], &top[0]) {
            e.copy_blocks(
                1,
                o * d * i,
                &bottom[0].data(),
                0,
                0,
                &mut top[0].data_mut(),
                0,
                0,
            );
        }
        let b = factor(bottom, &self.blobs);
        e.bias_forward(o, d, i, &b.data(), &mut top[0].data_mut());
        Ok(())
    }

    fn backward(
        &mut self,
        cx: &Ctx,
        top: &[BlobRef],
        pd: &[bool],
        bottom: &[BlobRef],
    ) -> Result<()> {
        let e = cx.engine;
        let (o, d, i) = self.dims;
        let dy = top[0].diff();
        match bottom.get(1) {
            // A learned bias accumulates; a bottom's gradient is overwritten.
            None => e.bias_backward(o, d, i, &dy, &mut self.blobs[0].diff_mut()),
            Some(b) if pd[1] => {
                let mut db = b.diff_mut();
                e.fill(0.0, &mut db);
                e.bias_backward(o, d, i, &dy, &mut db);
            }
            Some(_) => {}
        }
        if pd[0] && !in_place(&bottom[0], &top[0]) {
            e.copy_blocks(1, o * d * i, &dy, 0, 0, &mut bottom[0].diff_mut(), 0, 0);
        }
        Ok(())
    }

    fn blobs(&mut self) -> &mut [BlobRef] {
        &mut self.blobs
    }
}

/// Scale: top = bottom · s (+ b), with `s` learned or the second bottom.
pub struct Scale {
    axis: i32,
    num_axes: i32,
    filler: Option<FillerParameter>,
    bias_term: bool,
    bias_filler: FillerParameter,
    /// [scale] when learned, then [bias] when bias_term.
    blobs: Vec<BlobRef>,
    dims: (usize, usize, usize),
    /// The bottom's data, kept when running in place (the scale's gradient needs it).
    saved: Work,
}

impl Scale {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.scale_param.clone().unwrap_or_default();
        Ok(Box::new(Scale {
            axis: p.axis(),
            num_axes: p.num_axes(),
            filler: p.filler.clone(),
            bias_term: p.bias_term(),
            bias_filler: p.bias_filler.clone().unwrap_or_default(),
            blobs: vec![],
            dims: (0, 0, 0),
            saved: Work::default(),
        }))
    }

    fn learned(&self, bottom: &[BlobRef]) -> bool {
        bottom.len() == 1
    }
}

impl Layer for Scale {
    fn graph_safe(&self) -> bool {
        true
    }
    fn fusable_affine(&self) -> Option<(BlobRef, BlobRef)> {
        // A learned per-channel factor and bias on N × C × ... (BatchNorm's γ and β).
        match self.blobs.as_slice() {
            [s, b] if self.bias_term && self.axis == 1 && self.num_axes == 1 => {
                Some((s.clone(), b.clone()))
            }
            _ => None,
        }
    }
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 2), (1, 1))
    }

    fn setup(&mut self, cx: &Ctx, bottom: &[BlobRef], _top: &[BlobRef]) -> Result<()> {
        let bshape = bottom[0].shape();
        self.blobs.clear();
        if self.learned(bottom) {
            let shape = param_shape(&bshape, self.axis, self.num_axes, "scale_param")?;
            // Caffe's default scale is 1 (identity), not the filler default of 0.
            let filler = self.filler.clone().unwrap_or(FillerParameter {
                r#type: Some("constant".into()),
                value: Some(1.0),
                ..Default::default()
            });
            let s = Blob::new_ref(cx.engine, &shape);
            s.set_data(cx.engine, &fill(&filler, &shape)?);
            self.blobs.push(s);
        }
        if self.bias_term {
            let num_axes = match bottom.get(1) {
                Some(b) => b.num_axes() as i32,
                None => self.num_axes,
            };
            let shape = param_shape(&bshape, self.axis, num_axes, "scale_param")?;
            let b = Blob::new_ref(cx.engine, &shape);
            b.set_data(cx.engine, &fill(&self.bias_filler, &shape)?);
            self.blobs.push(b);
        }
        Ok(())
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let bshape = bottom[0].shape();
        let fshape = match bottom.get(1) {
            Some(b) => b.shape(),
            None => self.blobs[0].shape(),
        };
        self.dims = broadcast_dims(&bshape, self.axis, &fshape, "scale_param")?;
        top[0].reshape(cx.engine, &bshape);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        let (o, d, i) = self.dims;
        let n = o * d * i;
        if in_place(&bottom[0], &top[0]) {
            e.copy_blocks(1, n, &bottom[0].data(), 0, 0, self.saved.get(e, n), 0, 0);
        }
        let s = factor(bottom, &self.blobs).data();
        let bias = if self.bias_term {
            self.blobs.last().map(|b| b.data())
        } else {
            None
        };
        with_in_out(&bottom[0], &top[0], |x, y| {
            e.channel_affine(o, d, i, &s, bias.as_deref(), x, y)
        });
        Ok(())
    }

    fn backward(
        &mut self,
        cx: &Ctx,
        top: &[BlobRef],
        pd: &[bool],
        bottom: &[BlobRef],
    ) -> Result<()> {
        let e = cx.engine;
        let (o, d, i) = self.dims;
        let learned = self.learned(bottom);
        {
            let dy = top[0].diff();
            if self.bias_term {
                if let Some(b) = self.blobs.last() {
                    e.bias_backward(o, d, i, &dy, &mut b.diff_mut());
                }
            }
            if learned || pd[1] {
                // ds[c] = Σ dy · x over the axes the factor is broadcast along.
                let x_data;
                let x: &crate::engine::Buffer = if in_place(&bottom[0], &top[0]) {
                    match self.saved.buf() {
                        Some(x) => x,
                        None => bail!("backward ran before forward"),
                    }
                } else {
                    x_data = bottom[0].data();
                    &x_data
                };
                if learned {
                    e.channel_dot(o, d, i, x, &dy, &mut self.blobs[0].diff_mut());
                } else {
                    let mut ds = bottom[1].diff_mut();
                    e.fill(0.0, &mut ds);
                    e.channel_dot(o, d, i, x, &dy, &mut ds);
                }
            }
        }
        if pd[0] {
            let s = factor(bottom, &self.blobs).data();
            with_diff_in_out(&top[0], &bottom[0], |dy, dx| {
                e.channel_scale(o, d, i, &s, dy, dx)
            });
        }
        Ok(())
    }

    fn blobs(&mut self) -> &mut [BlobRef] {
        &mut self.blobs
    }
}
