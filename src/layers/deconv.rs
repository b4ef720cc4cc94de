//! Deconvolution (transposed convolution): the convolution's backward-data pass run forward, so it
//! reuses the engine's convolution operations with input and output swapped.

use super::conv::{conv_window, Window};
use super::{Ctx, Layer};
use crate::blob::{Blob, BlobRef};
use crate::engine::ConvGeom;
use crate::filler::fill;
use crate::{bail, Result};
use crema_proto::caffe::{ConvolutionParameter, LayerParameter};

pub struct Deconvolution {
    p: ConvolutionParameter,
    win: Window,
    blobs: Vec<BlobRef>,
    in_channels: usize,
    /// Per bottom: the convolution that maps this layer's top back to its bottom.
    geoms: Vec<ConvGeom>,
}

impl Deconvolution {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.convolution_param.clone().unwrap_or_default();
        let win = conv_window(&p)?;
        if p.num_output() == 0 {
            bail!("convolution_param.num_output must be positive");
        }
        if p.axis() != 1 {
            bail!("convolution_param.axis {} is not supported; crema deconvolves N×C×H×W blobs on axis 1", p.axis());
        }
        Ok(Box::new(Deconvolution {
            p,
            win,
            blobs: vec![],
            in_channels: 0,
            geoms: vec![],
        }))
    }

    /// Caffe's deconvolution output size: stride·(in - 1) + dilation·(kernel - 1) + 1 - 2·pad.
    fn out_size(
        input: usize,
        kernel: usize,
        stride: usize,
        pad: usize,
        dilation: usize,
    ) -> Option<usize> {
        let full = stride * input.checked_sub(1)? + dilation * (kernel - 1) + 1;
        full.checked_sub(2 * pad).filter(|v| *v > 0)
    }

    fn geom(&self, shape: &[usize]) -> Result<ConvGeom> {
        if shape.len() != 4 {
            bail!("needs a 4-D N×C×H×W bottom, got shape {shape:?}");
        }
        if shape[1] != self.in_channels {
            bail!(
                "bottom has {} channels but the weights were set up for {}",
                shape[1],
                self.in_channels
            );
        }
        let w = &self.win;
        let size = |input, k, s, p, d, what| {
            Self::out_size(input, k, s, p, d).ok_or_else(|| {
                crate::Error::msg(format!(
                    "the {what} output would be empty: input {input}, kernel {k}, stride {s}, pad {p}, dilation {d}"
                ))
            })
        };
        let oh = size(
            shape[2],
            w.kernel.0,
            w.stride.0,
            w.pad.0,
            w.dilation.0,
            "height",
        )?;
        let ow = size(
            shape[3],
            w.kernel.1,
            w.stride.1,
            w.pad.1,
            w.dilation.1,
            "width",
        )?;
        // The convolution from our top (num_output channels) back to our bottom.
        Ok(ConvGeom {
            num: shape[0],
            in_channels: self.p.num_output() as usize,
            in_h: oh,
            in_w: ow,
            out_channels: shape[1],
            kernel_h: w.kernel.0,
            kernel_w: w.kernel.1,
            stride_h: w.stride.0,
            stride_w: w.stride.1,
            pad_h: w.pad.0,
            pad_w: w.pad.1,
            dilation_h: w.dilation.0,
            dilation_w: w.dilation.1,
            group: self.p.group() as usize,
        })
    }
}

impl Layer for Deconvolution {
    fn arity(&self) -> ((usize, usize), (usize, usize)) {
        ((1, usize::MAX), (1, usize::MAX))
    }

    fn setup(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        if bottom.len() != top.len() {
            bail!(
                "needs as many tops as bottoms, got {} bottoms and {} tops",
                bottom.len(),
                top.len()
            );
        }
        let shape = bottom[0].shape();
        if shape.len() != 4 {
            bail!("needs a 4-D N×C×H×W bottom, got shape {shape:?}");
        }
        let group = self.p.group() as usize;
        let out = self.p.num_output() as usize;
        self.in_channels = shape[1];
        if group == 0 || !self.in_channels.is_multiple_of(group) || !out.is_multiple_of(group) {
            bail!(
                "group {group} must divide both the input channels ({}) and num_output ({out})",
                self.in_channels
            );
        }
        // Caffe's deconvolution weights: bottom channels × num_output/group × kh × kw.
        let wshape = [
            self.in_channels,
            out / group,
            self.win.kernel.0,
            self.win.kernel.1,
        ];
        let w = Blob::new_ref(cx.engine, &wshape);
        w.set_data(
            cx.engine,
            &fill(&self.p.weight_filler.clone().unwrap_or_default(), &wshape)?,
        );
        self.blobs = vec![w];
        if self.p.bias_term() {
            let b = Blob::new_ref(cx.engine, &[out]);
            b.set_data(
                cx.engine,
                &fill(&self.p.bias_filler.clone().unwrap_or_default(), &[out])?,
            );
            self.blobs.push(b);
        }
        Ok(())
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        self.geoms.clear();
        for (b, t) in bottom.iter().zip(top) {
            let g = self.geom(&b.shape())?;
            t.reshape(cx.engine, &[g.num, g.in_channels, g.in_h, g.in_w]);
            self.geoms.push(g);
        }
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        for ((b, t), g) in bottom.iter().zip(top).zip(&self.geoms) {
            e.conv_backward_data(g, &b.data(), &self.blobs[0].data(), &mut t.data_mut());
            if let Some(bias) = self.blobs.get(1) {
                e.bias_forward(
                    g.num,
                    g.in_channels,
                    g.in_h * g.in_w,
                    &bias.data(),
                    &mut t.data_mut(),
                );
            }
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
        let e = cx.engine;
        for (i, ((b, t), g)) in bottom.iter().zip(top).zip(&self.geoms).enumerate() {
            if let Some(bias) = self.blobs.get(1) {
                e.bias_backward(
                    g.num,
                    g.in_channels,
                    g.in_h * g.in_w,
                    &t.diff(),
                    &mut bias.diff_mut(),
                );
            }
            // The convolution's input is our top, its output our bottom.
            e.conv_backward_filter(g, &t.diff(), &b.data(), &mut self.blobs[0].diff_mut());
            if pd[i] {
                e.conv_forward(g, &t.diff(), &self.blobs[0].data(), &mut b.diff_mut());
            }
        }
        Ok(())
    }

    fn blobs(&mut self) -> &mut [BlobRef] {
        &mut self.blobs
    }
}
