//! Convolution (2-D, with groups, padding, stride, dilation and an optional bias).

use super::{Ctx, Layer};
use crate::blob::{Blob, BlobRef};
use crate::engine::{Activation, ConvGeom};
use crate::filler::fill;
use crate::{bail, Result};
use crema_proto::caffe::{ConvolutionParameter, LayerParameter};

/// Kernel, stride, pad and dilation, each as (h, w).
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub pad: (usize, usize),
    pub dilation: (usize, usize),
}

/// Reads Caffe's repeated-or-_h/_w geometry fields of a ConvolutionParameter (2-D only).
pub fn conv_window(p: &ConvolutionParameter) -> Result<Window> {
    fn pick(
        rep: &[u32],
        h: Option<u32>,
        w: Option<u32>,
        default: u32,
        what: &str,
    ) -> Result<(usize, usize)> {
        if h.is_some() || w.is_some() {
            if !rep.is_empty() {
                bail!("either {what} or {what}_h/{what}_w should be given, not both");
            }
            return Ok((h.unwrap_or(default) as usize, w.unwrap_or(default) as usize));
        }
        match rep {
            [] => Ok((default as usize, default as usize)),
            [v] => Ok((*v as usize, *v as usize)),
            [a, b] => Ok((*a as usize, *b as usize)),
            _ => bail!(
                "{what} has {} values; crema supports 2-D convolution (1 or 2 values)",
                rep.len()
            ),
        }
    }
    let kernel = pick(&p.kernel_size, p.kernel_h, p.kernel_w, 0, "kernel_size")?;
    if kernel.0 == 0 || kernel.1 == 0 {
        bail!("kernel_size must be given and positive (or kernel_h and kernel_w)");
    }
    let stride = pick(&p.stride, p.stride_h, p.stride_w, 1, "stride")?;
    if stride.0 == 0 || stride.1 == 0 {
        bail!("stride must be positive");
    }
    let pad = pick(&p.pad, p.pad_h, p.pad_w, 0, "pad")?;
    let dilation = pick(&p.dilation, None, None, 1, "dilation")?;
    if dilation.0 == 0 || dilation.1 == 0 {
        bail!("dilation must be positive");
    }
    Ok(Window {
        kernel,
        stride,
        pad,
        dilation,
    })
}

/// Caffe's Convolution layer.
pub struct Convolution {
    p: ConvolutionParameter,
    win: Window,
    blobs: Vec<BlobRef>,
    in_channels: usize,
    geoms: Vec<ConvGeom>,
    /// The activation of an in-place layer after this one, applied here (see
    /// [`Layer::absorb_activation`]).
    act: Option<Activation>,
    /// Whether the backward pass also runs that activation's (a ReLU).
    act_backward: bool,
}

impl Convolution {
    pub fn create(lp: &LayerParameter) -> Result<Box<dyn Layer>> {
        let p = lp.convolution_param.clone().unwrap_or_default();
        let win = conv_window(&p)?;
        if p.num_output() == 0 {
            bail!("convolution_param.num_output must be positive");
        }
        if p.axis() != 1 {
            bail!("convolution_param.axis {} is not supported; crema convolves N×C×H×W blobs on axis 1", p.axis());
        }
        Ok(Box::new(Convolution {
            p,
            win,
            blobs: vec![],
            in_channels: 0,
            geoms: vec![],
            act: None,
            act_backward: false,
        }))
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
        let g = ConvGeom {
            num: shape[0],
            in_channels: shape[1],
            in_h: shape[2],
            in_w: shape[3],
            out_channels: self.p.num_output() as usize,
            kernel_h: self.win.kernel.0,
            kernel_w: self.win.kernel.1,
            stride_h: self.win.stride.0,
            stride_w: self.win.stride.1,
            pad_h: self.win.pad.0,
            pad_w: self.win.pad.1,
            dilation_h: self.win.dilation.0,
            dilation_w: self.win.dilation.1,
            group: self.p.group() as usize,
        };
        let ext_h = g.dilation_h * (g.kernel_h - 1) + 1;
        let ext_w = g.dilation_w * (g.kernel_w - 1) + 1;
        if g.in_h + 2 * g.pad_h < ext_h || g.in_w + 2 * g.pad_w < ext_w {
            bail!(
                "kernel {}×{} (dilated {}×{}) is larger than the padded input {}×{}",
                g.kernel_h,
                g.kernel_w,
                ext_h,
                ext_w,
                g.in_h + 2 * g.pad_h,
                g.in_w + 2 * g.pad_w
            );
        }
        Ok(g)
    }
}

impl Layer for Convolution {
    fn graph_safe(&self) -> bool {
        true
    }
    fn absorb_activation(&mut self, act: Activation) -> bool {
        if self.act.is_some() {
            return false;
        }
        self.act = Some(act);
        true
    }
    fn absorb_activation_backward(&mut self) -> bool {
        // The ReLU's gradient mask comes from the top's data, and with a bias it runs in the
        // same pass as the bias gradient.
        self.act_backward = matches!(self.act, Some(Activation::Relu { .. }));
        self.act_backward
    }
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
        let wshape = [
            out,
            self.in_channels / group,
            self.win.kernel.0,
            self.win.kernel.1,
        ];
        let wf = self.p.weight_filler.clone().unwrap_or_default();
        let w = Blob::new_ref(cx.engine, &wshape);
        w.set_data(cx.engine, &fill(&wf, &wshape)?);
        self.blobs = vec![w];
        if self.p.bias_term() {
            let bf = self.p.bias_filler.clone().unwrap_or_default();
            let b = Blob::new_ref(cx.engine, &[out]);
            b.set_data(cx.engine, &fill(&bf, &[out])?);
            self.blobs.push(b);
        }
        Ok(())
    }

    fn reshape(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        self.geoms.clear();
        for (b, t) in bottom.iter().zip(top) {
            let g = self.geom(&b.shape())?;
            t.reshape(cx.engine, &[g.num, g.out_channels, g.out_h(), g.out_w()]);
            self.geoms.push(g);
        }
        Ok(())
    }

    fn forward(&mut self, cx: &Ctx, bottom: &[BlobRef], top: &[BlobRef]) -> Result<()> {
        let e = cx.engine;
        for ((b, t), g) in bottom.iter().zip(top).zip(&self.geoms) {
            let bias = self.blobs.get(1).map(|b| b.data());
            e.conv_forward_fused(
                g,
                &b.data(),
                &self.blobs[0].data(),
                bias.as_deref(),
                self.act,
                &mut t.data_mut(),
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
        let e = cx.engine;
        for (i, ((b, t), g)) in bottom.iter().zip(top).zip(&self.geoms).enumerate() {
            let (outer, ch, inner) = (g.num, g.out_channels, g.out_h() * g.out_w());
            if let (true, Some(Activation::Relu { negative_slope })) = (self.act_backward, self.act)
            {
                let mut db = self.blobs.get(1).map(|b| b.diff_mut());
                e.relu_backward_bias(
                    outer,
                    ch,
                    inner,
                    negative_slope,
                    &t.data(),
                    &mut t.diff_mut(),
                    db.as_deref_mut(),
                );
            } else if let Some(bias) = self.blobs.get(1) {
                e.bias_backward(outer, ch, inner, &t.diff(), &mut bias.diff_mut());
            }
            e.conv_backward_filter(g, &b.data(), &t.diff(), &mut self.blobs[0].diff_mut());
            if pd[i] {
                e.conv_backward_data(g, &t.diff(), &self.blobs[0].data(), &mut b.diff_mut());
            }
        }
        Ok(())
    }

    fn blobs(&mut self) -> &mut [BlobRef] {
        &mut self.blobs
    }
}
