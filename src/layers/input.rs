//! Input (shapes only; the caller fills the data) and DummyData (filled by fillers).

use super::{Ctx, Layer};
use crate::blob::BlobRef;
use crate::filler::fill;
use crate::{bail, Result};
use crema_proto::caffe::{FillerParameter, LayerParameter};

fn dims(shape: &crema_proto::caffe::BlobShape) -> Result<Vec<usize>> {
    shape
        .dim
        .iter()
        .map(|d| {
            if *d < 0 {
                bail!("shape dimension {d} is negative in {:?}", shape.dim)
            } else {
                Ok(*d as usize)
            }
        })
        .collect()
}

/// Picks the i-th shape, or the only one when a single shape serves every top.
fn shape_for(shapes: &[Vec<usize>], i: usize, tops: usize, what: &str) -> Result<Vec<usize>> {
    match shapes.len() {
        1 => Ok(shapes[0].clone()),
        n if n == tops => Ok(shapes[i].clone()),
        n => bail!("{what} has {n} shapes for {tops} tops; give one shape, or one per top"),
    }
}

pub struct Input {
    shapes: Vec<Vec<usize>>,
}

impl Input {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.input_param.clone().unwrap_or_default();
        let shapes = p.shape.iter().map(dims).collect::<Result<Vec<_>>>()?;
        if shapes.is_empty() && !lp.top.is_empty() {
            bail!("input_param needs a shape, e.g. input_param {{ shape: {{ dim: 1 dim: 3 dim: 224 dim: 224 }} }}");
        }
        Ok(Box::new(Input { shapes }))
    }
}

impl Layer for Input {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((0, 0), (1, usize::MAX))
    }
    fn setup(&mut self, cx: &Ctx, _bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        for (i, t) in top.iter().enumerate() {
            t.reshape(
                cx.engine,
                &shape_for(&self.shapes, i, top.len(), "input_param")?,
            );
        }
        Ok(())
    }
    fn reshape(&mut self, _cx: &Ctx, _bottom: &[BlobRef], _top: &[BlobRef]) -> Result<()> {
        // The caller may reshape inputs; keep whatever shape they have.
        Ok(())
    }
    fn forward(&mut self, _cx: &Ctx, _bottom: &[BlobRef], _top: &[BlobRef]) -> Result<()> {
        Ok(())
    }
    fn backward(
        &mut self,
        _cx: &Ctx,
        _top: &[BlobRef],
        _pd: &[bool],
        _bottom: &[BlobRef],
    ) -> Result<()> {
        Ok(())
    }
}

pub struct DummyData {
    shapes: Vec<Vec<usize>>,
    fillers: Vec<FillerParameter>,
    filled_once: bool,
}

impl DummyData {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.dummy_data_param.clone().unwrap_or_default();
        let mut shapes = p.shape.iter().map(dims).collect::<Result<Vec<_>>>()?;
        if shapes.is_empty() {
            // Legacy 4-D form: num/channels/height/width, one value per top or one for all.
            let n = p
                .num
                .len()
                .max(p.channels.len())
                .max(p.height.len())
                .max(p.width.len());
            let at = |v: &[u32], i: usize| -> usize {
                if v.len() == 1 {
                    v[0] as usize
                } else {
                    v.get(i).copied().unwrap_or(1) as usize
                }
            };
            for i in 0..n {
                shapes.push(vec![
                    at(&p.num, i),
                    at(&p.channels, i),
                    at(&p.height, i),
                    at(&p.width, i),
                ]);
            }
        }
        if shapes.is_empty() {
            bail!("dummy_data_param needs a shape (or num/channels/height/width)");
        }
        let fillers = p.data_filler.clone();
        Ok(Box::new(DummyData {
            shapes,
            fillers,
            filled_once: false,
        }))
    }

    fn filler(&self, i: usize) -> FillerParameter {
        match self.fillers.len() {
            0 => FillerParameter::default(),
            1 => self.fillers[0].clone(),
            _ => self.fillers.get(i).cloned().unwrap_or_default(),
        }
    }
}

impl Layer for DummyData {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((0, 0), (1, usize::MAX))
    }
    fn setup(&mut self, cx: &Ctx, _bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        if self.fillers.len() > 1 && self.fillers.len() != top.len() {
            bail!(
                "dummy_data_param has {} data_filler entries for {} tops",
                self.fillers.len(),
                top.len()
            );
        }
        for (i, t) in top.iter().enumerate() {
            t.reshape(
                cx.engine,
                &shape_for(&self.shapes, i, top.len(), "dummy_data_param")?,
            );
        }
        Ok(())
    }
    fn reshape(&mut self, _cx: &Ctx, _bottom: &[BlobRef], _top: &[BlobRef]) -> Result<()> {
        Ok(())
    }
    fn forward(&mut self, cx: &Ctx, _bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        for (i, t) in top.iter().enumerate() {
            let f = self.filler(i);
            // Constant fillers are applied once; random ones draw fresh data every pass (Caffe).
            if f.r#type() != "constant" || !self.filled_once {
                t.set_data(cx.engine, &fill(&f, &t.shape())?);
            }
        }
        self.filled_once = true;
        Ok(())
    }
    fn backward(
        &mut self,
        _cx: &Ctx,
        _top: &[BlobRef],
        _pd: &[bool],
        _bottom: &[BlobRef],
    ) -> Result<()> {
        Ok(())
    }
}
