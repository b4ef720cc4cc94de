//! Layers that pick items (rows along the first axis): BatchReindex gathers them by index, Filter
//! keeps those whose selector is non-zero. Gradients flow back to the rows they came from.

use super::{Ctx, Layer};
use crate::blob::BlobRef;
use crate::{bail, Result};
use crema_proto::caffe::LayerParameter;

/// Item indexes from a blob of (integral) floats, each checked to lie in [0, n).
fn indexes(cx: &Ctx, blob: &BlobRef, n: usize) -> Result<Vec<usize>> {
    blob.data_to_vec(cx.engine)
        .iter()
        .map(|v| {
            if *v < 0.0 || *v as usize >= n || v.fract() != 0.0 {
                bail!("index {v} is not an item of a bottom with {n} items");
            }
            Ok(*v as usize)
        })
        .collect()
}

/// Copies rows `src_rows[k]` of `src` to row k of `dst` (rows of `row` values).
fn gather(
    cx: &Ctx,
    rows: &[usize],
    row: usize,
    src: &crate::engine::Buffer,
    dst: &mut crate::engine::Buffer,
) {
    for (k, r) in rows.iter().enumerate() {
        cx.engine
            .copy_blocks(1, row, src, r * row, 0, dst, k * row, 0);
    }
}

/// BatchReindex: top[k] = bottom[index[k]].
pub struct BatchReindex {
    perm: Vec<usize>,
}

impl BatchReindex {
    pub fn create(_lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        Ok(Box::new(BatchReindex { perm: vec![] }))
    }
}

impl Layer for BatchReindex {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((2, 2), (1, 1))
    }
    fn allow_force_backward(&self, bottom: usize) -> bool {
        bottom == 0
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        if bottom[1].num_axes() != 1 {
            bail!(
                "the index bottom must be 1-D, got shape {:?}",
                bottom[1].shape()
            );
        }
        let mut s = bottom[0].shape();
        if s.is_empty() {
            bail!("the data bottom needs a first axis to index");
        }
        s[0] = bottom[1].count();
        top[0].reshape(cx.engine, &s);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let n = bottom[0].dim(0);
        self.perm = indexes(cx, &bottom[1], n)?;
        let row = bottom[0].count().checked_div(n).unwrap_or(0);
        gather(
            cx,
            &self.perm,
            row,
            &bottom[0].data(),
            &mut top[0].data_mut(),
        );
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
            bail!("cannot backpropagate to the indexes; set propagate_down: false for them");
        }
        if !pd[0] {
            return Ok(());
        }
        let n = bottom[0].dim(0);
        let row = bottom[0].count().checked_div(n).unwrap_or(0);
        let (dy, mut dx) = (top[0].diff(), bottom[0].diff_mut());
        cx.engine.fill(0.0, &mut dx);
        // An item picked twice receives both gradients.
        for (k, r) in self.perm.iter().enumerate() {
            cx.engine
                .add_blocks(1, row, &dy, k * row, 0, &mut dx, r * row, 0);
        }
        Ok(())
    }
}

/// Filter: keeps the items whose selector (the last bottom) is non-zero, in every other bottom.
pub struct Filter {
    keep: Vec<usize>,
    n_bottoms: usize,
}

impl Filter {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        Ok(Box::new(Filter {
            keep: vec![],
            n_bottoms: lp.bottom.len(),
        }))
    }
}

impl Layer for Filter {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((2, usize::MAX), (1, usize::MAX))
    }
    fn allow_force_backward(&self, bottom: usize) -> bool {
        bottom + 1 < self.n_bottoms
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let Some((selector, data)) = bottom.split_last() else {
            bail!("needs bottoms")
        };
        if top.len() != data.len() {
            bail!(
                "needs one top per filtered bottom: {} bottoms besides the selector but {} tops",
                data.len(),
                top.len()
            );
        }
        let n = selector.dim(0);
        if selector.count() != n {
            bail!(
                "the selector must hold one value per item (shape N or N×1), got {:?}",
                selector.shape()
            );
        }
        // The kept items depend on the selector's values, so they are read here, as Caffe does.
        self.keep = selector
            .data_to_vec(cx.engine)
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != 0.0)
            .map(|(i, _)| i)
            .collect();
        for (b, t) in data.iter().zip(top) {
            let mut s = b.shape();
            if s.first() != Some(&n) {
                bail!("bottom {s:?} must have as many items as the selector ({n})");
            }
            s[0] = self.keep.len();
            t.reshape(cx.engine, &s);
        }
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        for (b, t) in bottom.iter().zip(top) {
            let n = b.dim(0);
            let row = b.count().checked_div(n).unwrap_or(0);
            gather(cx, &self.keep, row, &b.data(), &mut t.data_mut());
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
        if pd.last().copied().unwrap_or(false) {
            bail!("cannot backpropagate to the selector; set propagate_down: false for it");
        }
        for (i, (b, t)) in bottom.iter().zip(top).enumerate() {
            if !pd[i] {
                continue;
            }
            let n = b.dim(0);
            let row = b.count().checked_div(n).unwrap_or(0);
            let (dy, mut dx) = (t.diff(), b.diff_mut());
            // Items filtered out get zero gradient.
            cx.engine.fill(0.0, &mut dx);
            for (k, r) in self.keep.iter().enumerate() {
                cx.engine
                    .copy_blocks(1, row, &dy, k * row, 0, &mut dx, r * row, 0);
            }
        }
        Ok(())
    }
}
