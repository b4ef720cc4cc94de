//! Crop: cuts the first bottom down to the second bottom's shape on the axes from `axis` on, at
//! the given offsets (FCN's alignment of upsampled scores with the input).

use super::{canonical_axis, Ctx, Layer};
use crate::blob::BlobRef;
use crate::{bail, Result};
use crema_proto::caffe::LayerParameter;

pub struct Crop {
    axis: i32,
    offset: Vec<u32>,
    /// Offset per bottom axis (0 before `axis`).
    offsets: Vec<usize>,
}

impl Crop {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.crop_param.clone().unwrap_or_default();
        Ok(Box::new(Crop {
            axis: p.axis(),
            offset: p.offset.clone(),
            offsets: vec![],
        }))
    }
}

/// Block copies between the window of a big blob (shape `bshape`) at `offsets` and a small one
/// (shape `sshape`): `f(rows, cols, big offset, big row stride, small offset, small row stride)`
/// once per index of the axes before the last two.
fn crop_blocks(
    bshape: &[usize],
    sshape: &[usize],
    offsets: &[usize],
    mut f: impl FnMut(usize, usize, usize, usize, usize, usize),
) {
    let nd = sshape.len();
    if sshape.contains(&0) {
        return;
    }
    let strides = |s: &[usize]| -> Vec<usize> {
        let mut st = vec![1; s.len()];
        for d in (0..s.len().saturating_sub(1)).rev() {
            st[d] = st[d + 1] * s[d + 1];
        }
        st
    };
    let (bst, sst) = (strides(bshape), strides(sshape));
    // Rows: the last axis; blocks of rows: the second-to-last axis (or a single row for 1-D).
    let (rows, cols) = if nd >= 2 {
        (sshape[nd - 2], sshape[nd - 1])
    } else {
        (1, sshape[0])
    };
    let (brow, srow) = if nd >= 2 {
        (bst[nd - 2], sst[nd - 2])
    } else {
        (0, 0)
    };
    let lead = nd.saturating_sub(2);
    let mut idx = vec![0usize; lead];
    loop {
        let mut boff: usize = (0..lead).map(|d| (idx[d] + offsets[d]) * bst[d]).sum();
        let soff: usize = (0..lead).map(|d| idx[d] * sst[d]).sum();
        boff += (lead..nd).map(|d| offsets[d] * bst[d]).sum::<usize>();
        f(rows, cols, boff, brow, soff, srow);
        // Next index of the leading axes, last fastest.
        let mut d = lead;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < sshape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

impl Layer for Crop {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((2, 2), (1, 1))
    }
    fn allow_force_backward(&self, bottom: usize) -> bool {
        bottom == 0
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let (bshape, rshape) = (bottom[0].shape(), bottom[1].shape());
        if bshape.len() != rshape.len() {
            bail!("both bottoms must have the same number of axes, got {bshape:?} and {rshape:?}");
        }
        let a = canonical_axis(self.axis, bshape.len(), "crop_param")?;
        let cropped = bshape.len() - a;
        if self.offset.len() > 1 && self.offset.len() != cropped {
            bail!(
                "crop_param gives {} offsets; give one for all cropped axes or one per axis ({cropped} from axis {a})",
                self.offset.len()
            );
        }
        let mut shape = bshape.clone();
        self.offsets = vec![0; bshape.len()];
        for d in a..bshape.len() {
            let off = match self.offset.len() {
                0 => 0,
                1 => self.offset[0] as usize,
                _ => self.offset[d - a] as usize,
            };
            if bshape[d] < rshape[d] + off {
                bail!(
                    "axis {d}: cropping {} at offset {off} needs at least {} but the first bottom has {} (shape {bshape:?})",
                    rshape[d],
                    rshape[d] + off,
                    bshape[d]
                );
            }
            shape[d] = rshape[d];
            self.offsets[d] = off;
        }
        top[0].reshape(cx.engine, &shape);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let (bshape, sshape) = (bottom[0].shape(), top[0].shape());
        let (x, mut y) = (bottom[0].data(), top[0].data_mut());
        crop_blocks(&bshape, &sshape, &self.offsets, |r, c, bo, bs, so, ss| {
            cx.engine.copy_blocks(r, c, &x, bo, bs, &mut y, so, ss)
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
        if !pd[0] {
            return Ok(());
        }
        let (bshape, sshape) = (bottom[0].shape(), top[0].shape());
        let mut dx = bottom[0].diff_mut();
        cx.engine.fill(0.0, &mut dx);
        let dy = top[0].diff();
        crop_blocks(&bshape, &sshape, &self.offsets, |r, c, bo, bs, so, ss| {
            cx.engine.copy_blocks(r, c, &dy, so, ss, &mut dx, bo, bs)
        });
        Ok(())
    }
}
