//! Layers that move data without arithmetic: Split, Flatten, Reshape, Concat, Slice, Silence.

use super::{canonical_axis, count, Ctx, Layer};
use crate::blob::BlobRef;
use crate::{bail, Result};
use crema_proto::caffe::LayerParameter;

/// Copies the whole of `src`'s data into `dst`'s data.
fn copy_data(cx: &Ctx, src: &BlobRef, dst: &BlobRef) {
    if !super::in_place(src, dst) {
        let n = src.count();
        cx.engine
            .copy_blocks(1, n, &src.data(), 0, 0, &mut dst.data_mut(), 0, 0);
    }
}

/// Copies the whole of `src`'s diff into `dst`'s diff.
fn copy_diff(cx: &Ctx, src: &BlobRef, dst: &BlobRef) {
    if !super::in_place(src, dst) {
        let n = src.count();
        cx.engine
            .copy_blocks(1, n, &src.diff(), 0, 0, &mut dst.diff_mut(), 0, 0);
    }
}

/// Split: one bottom feeding several consumers; gradients are summed.
pub struct Split;

impl Split {
    pub fn create(_lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        Ok(Box::new(Split))
    }
}

impl Layer for Split {
    fn graph_safe(&self) -> bool {
        true
    }
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 1), (1, usize::MAX))
    }
    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        for t in top {
            if super::in_place(&bottom[0], t) {
                bail!("a Split top cannot be its bottom");
            }
            t.reshape(cx.engine, &bottom[0].shape());
        }
        Ok(())
    }
    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        for t in top {
            // A top the net made share its bottom's data (see `Layer::shares_bottom_data`)
            // already holds it.
            if !t.shares_data(&bottom[0]) {
                copy_data(cx, &bottom[0], t);
            }
        }
        Ok(())
    }
    fn shares_bottom_data(&self) -> bool {
        true
    }
    fn backward(
        &mut self,
        cx: &Ctx,
        top: &[BlobRef],
        pd: &[bool],
        bottom: &[BlobRef],
    ) -> Result<()> {
        if !pd[0] {
            return Ok(());
        }
        if top.len() == 1 {
            copy_diff(cx, &top[0], &bottom[0]);
            return Ok(());
        }
        // One pass writes the sum of the tops' gradients.
        let diffs: Vec<_> = top.iter().map(|t| t.diff()).collect();
        let terms: Vec<(f32, &crate::engine::Buffer)> = diffs.iter().map(|d| (1.0, &**d)).collect();
        cx.engine.sum_terms(&terms, None, &mut bottom[0].diff_mut());
        Ok(())
    }
}

/// Maps a bottom shape to a top shape.
type ShapeFn = Box<dyn Fn(&[usize]) -> Result<Vec<usize>>>;

/// A layer whose top is its bottom with another shape (Flatten, Reshape).
pub struct Reshaping {
    target: ShapeFn,
}

impl Layer for Reshaping {
    fn graph_safe(&self) -> bool {
        true
    }
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 1), (1, 1))
    }
    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        if super::in_place(&bottom[0], &top[0]) {
            bail!("this layer cannot run in place; give it a top of its own");
        }
        let shape = (self.target)(&bottom[0].shape())?;
        top[0].reshape(cx.engine, &shape);
        Ok(())
    }
    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        copy_data(cx, &bottom[0], &top[0]);
        Ok(())
    }
    fn backward(
        &mut self,
        cx: &Ctx,
        top: &[BlobRef],
        pd: &[bool],
        bottom: &[BlobRef],
    ) -> Result<()> {
        if pd[0] {
            copy_diff(cx, &top[0], &bottom[0]);
        }
        Ok(())
    }
}

pub struct Flatten;

impl Flatten {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.flatten_param.unwrap_or_default();
        let (axis, end) = (p.axis(), p.end_axis());
        Ok(Box::new(Reshaping {
            target: Box::new(move |s: &[usize]| {
                let a = canonical_axis(axis, s.len(), "flatten_param")?;
                let e = canonical_axis(end, s.len(), "flatten_param end_axis")?;
                if e < a {
                    bail!(
                        "flatten_param end_axis ({end}) comes before axis ({axis}) for shape {s:?}"
                    );
                }
                let mut out = s[..a].to_vec();
                out.push(count(s, a, e + 1));
                out.extend_from_slice(&s[e + 1..]);
                Ok(out)
            }),
        }))
    }
}

pub struct Reshape;

impl Reshape {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.reshape_param.clone().unwrap_or_default();
        let dims: Vec<i64> = p.shape.as_ref().map(|s| s.dim.clone()).unwrap_or_default();
        if dims.iter().filter(|d| **d == -1).count() > 1 {
            bail!("reshape_param.shape may contain at most one -1 (the inferred dimension)");
        }
        if let Some(d) = dims.iter().find(|d| **d < -1) {
            bail!(
                "reshape_param.shape has dimension {d}; use positive sizes, 0 (copy) or -1 (infer)"
            );
        }
        let (axis, num_axes) = (p.axis(), p.num_axes());
        Ok(Box::new(Reshaping {
            target: Box::new(move |s: &[usize]| {
                // Caffe replaces bottom axes [start, end) with the given dims.
                let n = s.len() as i32;
                let start = if axis < 0 { axis + n + 1 } else { axis };
                if start < 0 || start > n {
                    bail!("reshape_param.axis {axis} is out of range for shape {s:?}");
                }
                let start = start as usize;
                let end = if num_axes == -1 {
                    s.len()
                } else {
                    start + num_axes.max(0) as usize
                };
                if end > s.len() {
                    bail!("reshape_param axis {axis} + num_axes {num_axes} exceed the {} axes of {s:?}", s.len());
                }
                let mut out = s[..start].to_vec();
                let mut infer = None;
                for (i, d) in dims.iter().enumerate() {
                    match *d {
                        0 => match s.get(start + i) {
                            Some(v) => out.push(*v),
                            None => bail!(
                                "reshape_param dim {i} is 0 (copy) but the bottom has no axis {}",
                                start + i
                            ),
                        },
                        -1 => {
                            infer = Some(out.len());
                            out.push(1);
                        }
                        v => out.push(v as usize),
                    }
                }
                out.extend_from_slice(&s[end..]);
                let total: usize = s.iter().product();
                let known: usize = out.iter().product();
                if let Some(i) = infer {
                    if known == 0 || !total.is_multiple_of(known) {
                        bail!("cannot infer a dimension: {total} elements of {s:?} do not divide into {out:?}");
                    }
                    out[i] = total / known;
                }
                let got: usize = out.iter().product();
                if got != total {
                    bail!("reshape to {out:?} ({got} elements) does not preserve the {total} elements of {s:?}");
                }
                Ok(out)
            }),
        }))
    }
}

/// Concat: joins bottoms along an axis.
pub struct Concat {
    axis: i32,
    legacy_dim: Option<u32>,
    resolved: usize,
}

impl Concat {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.concat_param.unwrap_or_default();
        if p.axis.is_some() && p.concat_dim.is_some() {
            bail!("give either concat_param.axis or the legacy concat_dim, not both");
        }
        Ok(Box::new(Concat {
            axis: p.axis(),
            legacy_dim: p.concat_dim,
            resolved: 1,
        }))
    }
}

impl Layer for Concat {
    fn graph_safe(&self) -> bool {
        true
    }
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, usize::MAX), (1, 1))
    }
    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let s0 = bottom[0].shape();
        let a = match self.legacy_dim {
            Some(d) => d as usize,
            None => canonical_axis(self.axis, s0.len(), "concat_param")?,
        };
        if a >= s0.len() {
            bail!("concat axis {a} is out of range for shape {s0:?}");
        }
        let mut out = s0.clone();
        for b in &bottom[1..] {
            let s = b.shape();
            if s.len() != s0.len() || s.iter().enumerate().any(|(i, d)| i != a && *d != s0[i]) {
                bail!("all bottoms must match except on axis {a}: {s0:?} vs {s:?}");
            }
            out[a] += s[a];
        }
        self.resolved = a;
        top[0].reshape(cx.engine, &out);
        Ok(())
    }
    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        if bottom.len() == 1 {
            copy_data(cx, &bottom[0], &top[0]);
            return Ok(());
        }
        let ts = top[0].shape();
        let a = self.resolved;
        let (outer, inner) = (count(&ts, 0, a), count(&ts, a + 1, ts.len()));
        let mut off = 0;
        let mut y = top[0].data_mut();
        for b in bottom {
            let ch = b.dim(a);
            cx.engine.copy_blocks(
                outer,
                ch * inner,
                &b.data(),
                0,
                ch * inner,
                &mut y,
                off * inner,
                ts[a] * inner,
            );
            off += ch;
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
        if bottom.len() == 1 {
            if pd[0] {
                copy_diff(cx, &top[0], &bottom[0]);
            }
            return Ok(());
        }
        let ts = top[0].shape();
        let a = self.resolved;
        let (outer, inner) = (count(&ts, 0, a), count(&ts, a + 1, ts.len()));
        let mut off = 0;
        let dy = top[0].diff();
        for (i, b) in bottom.iter().enumerate() {
            let ch = b.dim(a);
            if pd[i] {
                cx.engine.copy_blocks(
                    outer,
                    ch * inner,
                    &dy,
                    off * inner,
                    ts[a] * inner,
                    &mut b.diff_mut(),
                    0,
                    ch * inner,
                );
            }
            off += ch;
        }
        Ok(())
    }
}

/// Slice: splits a bottom along an axis at slice points (or evenly).
pub struct Slice {
    axis: i32,
    legacy_dim: Option<u32>,
    points: Vec<u32>,
    resolved: usize,
}

impl Slice {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.slice_param.clone().unwrap_or_default();
        if p.axis.is_some() && p.slice_dim.is_some() {
            bail!("give either slice_param.axis or the legacy slice_dim, not both");
        }
        Ok(Box::new(Slice {
            axis: p.axis(),
            legacy_dim: p.slice_dim,
            points: p.slice_point.clone(),
            resolved: 1,
        }))
    }
}

impl Layer for Slice {
    fn graph_safe(&self) -> bool {
        true
    }
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 1), (1, usize::MAX))
    }
    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let s = bottom[0].shape();
        let a = match self.legacy_dim {
            Some(d) => d as usize,
            None => canonical_axis(self.axis, s.len(), "slice_param")?,
        };
        if a >= s.len() {
            bail!("slice axis {a} is out of range for shape {s:?}");
        }
        let total = s[a];
        let sizes: Vec<usize> = if self.points.is_empty() {
            if !total.is_multiple_of(top.len()) {
                bail!(
                    "axis {a} of size {total} does not split evenly into {} tops; give slice_point",
                    top.len()
                );
            }
            vec![total / top.len(); top.len()]
        } else {
            if self.points.len() + 1 != top.len() {
                bail!(
                    "{} slice points give {} pieces but the layer has {} tops",
                    self.points.len(),
                    self.points.len() + 1,
                    top.len()
                );
            }
            let mut prev = 0usize;
            let mut v = vec![];
            for &p in &self.points {
                let p = p as usize;
                if p <= prev || p >= total {
                    bail!(
                        "slice points {:?} must increase strictly within (0, {total})",
                        self.points
                    );
                }
                v.push(p - prev);
                prev = p;
            }
            v.push(total - prev);
            v
        };
        for (t, n) in top.iter().zip(&sizes) {
            let mut ts = s.clone();
            ts[a] = *n;
            t.reshape(cx.engine, &ts);
        }
        self.resolved = a;
        Ok(())
    }
    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let s = bottom[0].shape();
        let a = self.resolved;
        let (outer, inner) = (count(&s, 0, a), count(&s, a + 1, s.len()));
        let x = bottom[0].data();
        let mut off = 0;
        for t in top {
            let ch = t.dim(a);
            cx.engine.copy_blocks(
                outer,
                ch * inner,
                &x,
                off * inner,
                s[a] * inner,
                &mut t.data_mut(),
                0,
                ch * inner,
            );
            off += ch;
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
        if !pd[0] {
            return Ok(());
        }
        let s = bottom[0].shape();
        let a = self.resolved;
        let (outer, inner) = (count(&s, 0, a), count(&s, a + 1, s.len()));
        let mut dx = bottom[0].diff_mut();
        let mut off = 0;
        for t in top {
            let ch = t.dim(a);
            cx.engine.copy_blocks(
                outer,
                ch * inner,
                &t.diff(),
                0,
                ch * inner,
                &mut dx,
                off * inner,
                s[a] * inner,
            );
            off += ch;
        }
        Ok(())
    }
}

/// Silence: consumes blobs so they are not reported as outputs; gradient zero.
pub struct Silence;

impl Silence {
    pub fn create(_lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        Ok(Box::new(Silence))
    }
}

impl Layer for Silence {
    fn graph_safe(&self) -> bool {
        true
    }
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, usize::MAX), (0, 0))
    }
    fn reshape(&mut self, _cx: &Ctx, _bottom: &[BlobRef], _top: &[BlobRef]) -> Result<()> {
        Ok(())
    }
    fn forward(&mut self, _cx: &Ctx, _bottom: &[BlobRef], _top: &[BlobRef]) -> Result<()> {
        Ok(())
    }
    fn backward(
        &mut self,
        cx: &Ctx,
        _top: &[BlobRef],
        pd: &[bool],
        bottom: &[BlobRef],
    ) -> Result<()> {
        for (b, p) in bottom.iter().zip(pd) {
            if *p {
                cx.engine.fill(0.0, &mut b.diff_mut());
            }
        }
        Ok(())
    }
}
