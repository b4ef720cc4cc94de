//! Tile: repeats the bottom `tiles` times along an axis.

use super::{canonical_axis, count, Ctx, Layer};
use crate::blob::BlobRef;
use crate::{bail, Result};
use crema_proto::caffe::LayerParameter;

pub struct Tile {
    axis: i32,
    tiles: usize,
    /// (outer, inner): items before `axis` and values from `axis` on.
    dims: (usize, usize),
}

impl Tile {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.tile_param.unwrap_or_default();
        if p.tiles() < 1 {
            bail!("tile_param.tiles must be at least 1, got {}", p.tiles());
        }
        Ok(Box::new(Tile {
            axis: p.axis(),
            tiles: p.tiles() as usize,
            dims: (0, 0),
        }))
    }
}

impl Layer for Tile {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, 1), (1, 1))
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let s = bottom[0].shape();
        let a = canonical_axis(self.axis, s.len(), "tile_param")?;
        self.dims = (count(&s, 0, a), count(&s, a, s.len()));
        let mut t = s.clone();
        t[a] *= self.tiles;
        top[0].reshape(cx.engine, &t);
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let (outer, inner) = self.dims;
        let (x, mut y) = (bottom[0].data(), top[0].data_mut());
        for t in 0..self.tiles {
            cx.engine.copy_blocks(
                outer,
                inner,
                &x,
                0,
                inner,
                &mut y,
                t * inner,
                self.tiles * inner,
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
        if !pd[0] {
            return Ok(());
        }
        let (outer, inner) = self.dims;
        let (dy, mut dx) = (top[0].diff(), bottom[0].diff_mut());
        let stride = self.tiles * inner;
        cx.engine
            .copy_blocks(outer, inner, &dy, 0, stride, &mut dx, 0, inner);
        for t in 1..self.tiles {
            cx.engine
                .add_blocks(outer, inner, &dy, t * inner, stride, &mut dx, 0, inner);
        }
        Ok(())
    }
}
