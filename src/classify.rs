//! Caffe's classification example as a library: the preprocessing of `cpp_classification` and of
//! the Python `caffe.Classifier` (decode, channels, BGR, resize, crops, mean, scale) and batched
//! prediction with a deploy net.

use crate::blob::BlobRef;
use crate::engine::Engine;
use crate::layers::Phase;
use crate::net::{Net, State};
use crate::{bail, Error, Result};
use crema_data_tools::image_io::{decode, resize_bilinear, ColorMode, Image8};
use crema_data_tools::MeanImage;
use std::path::Path;
use std::rc::Rc;

/// Which part of the resized image the net sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crop {
    /// Resize straight to the net's input (Caffe's cpp_classification).
    None,
    /// Resize to a larger canvas, take the centre crop (Caffe's test-phase transformer).
    Center,
    /// Resize to a larger canvas, average over the 4 corner crops, the centre and their mirrors
    /// (the Python classifier's `oversample`).
    Oversample,
}

/// What is subtracted from each pixel.
#[derive(Debug, Clone, PartialEq)]
pub enum Mean {
    None,
    /// One value per channel (BGR order), or one for every channel.
    Values(Vec<f32>),
    /// A C×H×W mean image, resized to the canvas and cropped along with the image.
    Image(MeanImage),
}

impl Mean {
    /// The per-channel means of a mean image, as `cpp_classification` reduces its mean file.
    pub fn channel_means(img: &MeanImage) -> Mean {
        let hw = img.height * img.width;
        let v = (0..img.channels)
            .map(|c| {
                let s: f64 = img.data[c * hw..(c + 1) * hw]
                    .iter()
                    .map(|x| *x as f64)
                    .sum();
                (s / hw as f64) as f32
            })
            .collect();
        Mean::Values(v)
    }
}

/// How an image becomes the net's input.
#[derive(Debug, Clone)]
pub struct Preprocess {
    /// The net's input: channels (1 or 3), height, width.
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub crop: Crop,
    /// Canvas the image is resized to before cropping (crop modes only).
    pub canvas: (usize, usize),
    pub mean: Mean,
    /// Pixels (0..255) are multiplied by raw_scale / 255 before the mean is subtracted, as the
    /// Python transformer's `raw_scale`; 255 leaves them as they are.
    pub raw_scale: f32,
    /// Multiplies the mean-subtracted values (Caffe's `transform_param.scale`, Python's input_scale).
    pub scale: f32,
}

impl Preprocess {
    /// Number of inputs the net sees per image.
    pub fn crops_per_image(&self) -> usize {
        match self.crop {
            Crop::Oversample => 10,
            _ => 1,
        }
    }

    /// Checks the settings against each other; run once before preprocessing.
    pub fn validate(&self) -> Result<()> {
        if self.channels != 1 && self.channels != 3 {
            bail!(
                "the net's input has {} channels; classify handles 1 (grey) or 3 (BGR)",
                self.channels
            );
        }
        if self.crop != Crop::None && (self.canvas.0 < self.height || self.canvas.1 < self.width) {
            bail!(
                "the resize size {}x{} is smaller than the net's input {}x{}; crops need a larger canvas",
                self.canvas.0, self.canvas.1, self.height, self.width
            );
        }
        match &self.mean {
            Mean::Values(v) if v.len() != 1 && v.len() != self.channels => {
                bail!(
                    "{} mean values for a net with {} input channels; give one per channel",
                    v.len(),
                    self.channels
                )
            }
            Mean::Image(m) if m.channels != self.channels => {
                bail!(
                    "the mean image has {} channels but the net's input has {}",
                    m.channels,
                    self.channels
                )
            }
            _ => Ok(()),
        }
    }

    fn color_mode(&self) -> ColorMode {
        if self.channels == 1 {
            ColorMode::Gray
        } else {
            ColorMode::Color
        }
    }

    /// Decodes an encoded image file's bytes and preprocesses it.
    pub fn image_bytes(&self, bytes: &[u8], source: &Path) -> Result<Vec<Vec<f32>>> {
        let img = decode(bytes, self.color_mode(), source)?;
        Ok(self.image(&img))
    }

    /// The net inputs (C×H×W each; 1 or 10 crops) for an image already in the net's channels.
    pub fn image(&self, img: &Image8) -> Vec<Vec<f32>> {
        let (ch, cw) = match self.crop {
            Crop::None => (self.height, self.width),
            _ => self.canvas,
        };
        let canvas = resize_bilinear(img, ch, cw);
        let c = self.channels;
        let k = self.raw_scale / 255.0;
        let mut planar = vec![0f32; c * ch * cw];
        for (i, px) in canvas.data.chunks_exact(c).enumerate() {
            for (j, v) in px.iter().enumerate() {
                planar[j * ch * cw + i] = *v as f32 * k;
            }
        }
        let mean_canvas: Option<Vec<f32>> = match &self.mean {
            Mean::Image(m) => Some(resize_planar(
                &m.data, m.channels, m.height, m.width, ch, cw,
            )),
            _ => None,
        };
        let (h, w) = (self.height, self.width);
        let offsets: Vec<(usize, usize, bool)> = match self.crop {
            Crop::None => vec![(0, 0, false)],
            Crop::Center => vec![((ch - h) / 2, (cw - w) / 2, false)],
            Crop::Oversample => {
                let mut v = vec![
                    (0, 0),
                    (0, cw - w),
                    (ch - h, 0),
                    (ch - h, cw - w),
                    ((ch - h) / 2, (cw - w) / 2),
                ];
                v.extend(v.clone());
                v.into_iter()
                    .enumerate()
                    .map(|(i, (y, x))| (y, x, i >= 5))
                    .collect()
            }
        };
        offsets
            .into_iter()
            .map(|(y0, x0, mirror)| {
                let mut out = vec![0f32; c * h * w];
                for ci in 0..c {
                    let m_value = match &self.mean {
                        Mean::Values(v) => v[if v.len() == 1 { 0 } else { ci }],
                        _ => 0.0,
                    };
                    for y in 0..h {
                        for x in 0..w {
                            let src = ci * ch * cw + (y0 + y) * cw + x0 + x;
                            let m = mean_canvas.as_ref().map_or(m_value, |mc| mc[src]);
                            let dx = if mirror { w - 1 - x } else { x };
                            out[ci * h * w + y * w + dx] = (planar[src] - m) * self.scale;
                        }
                    }
                }
                out
            })
            .collect()
    }
}

/// Bilinear resize of planar float channels with OpenCV's pixel geometry (half-pixel centres,
/// edge clamping), for mean images whose size differs from the canvas.
pub fn resize_planar(data: &[f32], c: usize, h: usize, w: usize, nh: usize, nw: usize) -> Vec<f32> {
    if h == nh && w == nw {
        return data.to_vec();
    }
    let taps = |dst: usize, src: usize| -> Vec<(usize, usize, f32)> {
        let s = src as f64 / dst as f64;
        (0..dst)
            .map(|d| {
                let f = ((d as f64 + 0.5) * s - 0.5).max(0.0);
                let i = (f.floor() as usize).min(src - 1);
                let frac = if i + 1 >= src { 0.0 } else { f - i as f64 };
                (i, (i + 1).min(src - 1), frac as f32)
            })
            .collect()
    };
    let (ys, xs) = (taps(nh, h), taps(nw, w));
    let mut out = Vec::with_capacity(c * nh * nw);
    for ci in 0..c {
        let plane = &data[ci * h * w..(ci + 1) * h * w];
        for &(y0, y1, fy) in &ys {
            for &(x0, x1, fx) in &xs {
                let top = plane[y0 * w + x0] * (1.0 - fx) + plane[y0 * w + x1] * fx;
                let bot = plane[y1 * w + x0] * (1.0 - fx) + plane[y1 * w + x1] * fx;
                out.push(top * (1.0 - fy) + bot * fy);
            }
        }
    }
    out
}

/// A deploy net ready to score preprocessed images.
pub struct Classifier {
    net: Net,
    engine: Rc<dyn Engine>,
    input: BlobRef,
    output: BlobRef,
    output_name: String,
    /// The net's declared input shape: N, C, H, W.
    pub input_shape: [usize; 4],
}

impl Classifier {
    /// Builds a deploy net (TEST phase), loads its weights and finds its input and output blobs;
    /// `output` defaults to the net's last output (usually `prob`).
    pub fn new(
        model: &Path,
        weights: &Path,
        engine: Rc<dyn Engine>,
        output: Option<&str>,
    ) -> Result<Classifier> {
        let mut net = crate::net::net_from_file(model, &State::phase(Phase::Test), engine.clone())?;
        net.copy_trained_layers_from(weights)?;
        let inputs: Vec<String> = net
            .layers()
            .iter()
            .filter(|l| l.kind == "Input")
            .flat_map(|l| l.param.top.iter().cloned())
            .collect();
        let input_name = match inputs.as_slice() {
            [one] => one.clone(),
            [] => bail!(
                "{}: the net has no Input layer (or input: field); classify needs a deploy net whose input is one N×C×H×W blob",
                model.display()
            ),
            many => bail!("{}: the net has {} inputs ({}); classify feeds exactly one", model.display(), many.len(), many.join(", ")),
        };
        let input = net
            .blob(&input_name)
            .ok_or_else(|| Error::msg(format!("input blob `{input_name}` is missing")))?;
        let shape = input.shape();
        let input_shape: [usize; 4] = match shape.as_slice() {
            [n, c, h, w] => [*n, *c, *h, *w],
            _ => bail!(
                "{}: input `{input_name}` has shape {shape:?}; classify needs N×C×H×W",
                model.display()
            ),
        };
        let output_name = match output {
            Some(o) => o.to_string(),
            None => net.output_names().last().cloned().ok_or_else(|| {
                Error::msg(format!("{}: the net has no output blob", model.display()))
            })?,
        };
        let output = net.blob(&output_name).ok_or_else(|| {
            Error::msg(format!(
                "{}: no blob named `{output_name}`; known: {}",
                model.display(),
                net.blob_names().join(", ")
            ))
        })?;
        Ok(Classifier {
            net,
            engine,
            input,
            output,
            output_name,
            input_shape,
        })
    }

    /// The name of the blob predictions are read from.
    pub fn output_name(&self) -> &str {
        &self.output_name
    }

    /// Number of classes: the output blob's count per input.
    pub fn num_outputs(&self) -> usize {
        self.output.count_range(1, usize::MAX)
    }

    /// Runs the net on a batch of C×H×W inputs; returns one score vector per input.
    pub fn predict(&mut self, inputs: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        if inputs.is_empty() {
            return Ok(vec![]);
        }
        let [_, c, h, w] = self.input_shape;
        let mut flat = Vec::with_capacity(inputs.len() * c * h * w);
        for x in inputs {
            if x.len() != c * h * w {
                bail!(
                    "an input holds {} values; the net takes {c}×{h}×{w}",
                    x.len()
                );
            }
            flat.extend_from_slice(x);
        }
        self.input.reshape(&*self.engine, &[inputs.len(), c, h, w]);
        self.input.set_data(&*self.engine, &flat);
        self.net.forward()?;
        let out = self.output.data_to_vec(&*self.engine);
        let k = out.len() / inputs.len();
        Ok(out.chunks(k.max(1)).map(|s| s.to_vec()).collect())
    }
}

/// Averages each image's crops' scores (`per_image` crops in a row per image).
pub fn average_crops(scores: &[Vec<f32>], per_image: usize) -> Vec<Vec<f32>> {
    scores
        .chunks(per_image.max(1))
        .map(|g| {
            let mut m = vec![0f32; g[0].len()];
            for s in g {
                for (a, b) in m.iter_mut().zip(s) {
                    *a += b;
                }
            }
            m.iter_mut().for_each(|a| *a /= g.len() as f32);
            m
        })
        .collect()
}

/// The `k` highest scores as (class, score), highest first; ties keep the lower class first.
pub fn top_k(scores: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|a, b| {
        scores[*b]
            .partial_cmp(&scores[*a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    idx.into_iter().take(k).map(|i| (i, scores[i])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gray(h: usize, w: usize) -> Image8 {
        Image8 {
            channels: 1,
            height: h,
            width: w,
            data: (0..h * w).map(|i| i as u8).collect(),
        }
    }

    fn prep(crop: Crop) -> Preprocess {
        Preprocess {
            channels: 1,
            height: 2,
            width: 2,
            crop,
            canvas: (4, 4),
            mean: Mean::Values(vec![1.0]),
            raw_scale: 255.0,
            scale: 0.5,
        }
    }

    #[test]
    fn center_crop_subtracts_mean_then_scales() {
        let out = prep(Crop::Center).image(&gray(4, 4));
        assert_eq!(out, vec![vec![2.0, 2.5, 4.0, 4.5]]);
    }

    #[test]
    fn oversample_gives_corners_centre_and_mirrors() {
        let out = prep(Crop::Oversample).image(&gray(4, 4));
        assert_eq!(out.len(), 10);
        assert_eq!(out[0], vec![-0.5, 0.0, 1.5, 2.0]); // top-left: pixels 0 1 4 5
        assert_eq!(out[3], vec![4.5, 5.0, 6.5, 7.0]); // bottom-right: 10 11 14 15
        assert_eq!(out[5], vec![0.0, -0.5, 2.0, 1.5]); // mirrored top-left
    }

    #[test]
    fn mean_image_is_cropped_with_the_image() {
        let mut p = prep(Crop::Center);
        p.mean = Mean::Image(MeanImage {
            channels: 1,
            height: 4,
            width: 4,
            data: (0..16).map(|i| i as f32).collect(),
        });
        assert_eq!(p.image(&gray(4, 4)), vec![vec![0.0; 4]]);
        assert_eq!(
            Mean::channel_means(&MeanImage {
                channels: 2,
                height: 1,
                width: 2,
                data: vec![1.0, 3.0, 5.0, 7.0]
            }),
            Mean::Values(vec![2.0, 6.0])
        );
    }

    #[test]
    fn top_k_orders_by_score() {
        assert_eq!(
            top_k(&[0.1, 0.5, 0.2, 0.5], 3),
            vec![(1, 0.5), (3, 0.5), (2, 0.2)]
        );
        assert_eq!(
            average_crops(&[vec![1.0, 0.0], vec![0.0, 1.0]], 2),
            vec![vec![0.5, 0.5]]
        );
    }
}
