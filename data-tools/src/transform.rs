//! Caffe's DataTransformer: crop, mirror, mean subtraction and scaling of a Datum into floats,
//! in Caffe's order: value = (pixel - mean) * scale, written at the cropped (and mirrored) place.
use std::borrow::Cow;
use std::path::Path;

use crema_proto::caffe::{Datum, TransformationParameter};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::{DataError, Result};
use crate::image_io::decode_datum;
use crate::mean::{load_mean, MeanImage};

/// Applies a `TransformationParameter` to Datums; random crops and mirrors come from its own
/// seeded generator, so it can move into a prefetch thread.
#[derive(Debug)]
pub struct Transformer {
    scale: f32,
    mirror: bool,
    crop_size: usize,
    force_color: bool,
    force_gray: bool,
    mean_image: Option<MeanImage>,
    mean_values: Vec<f32>,
    train: bool,
    rng: StdRng,
}

impl Transformer {
    /// Builds a transformer for the TRAIN (`train`) or TEST phase, loading `mean_file` if set.
    pub fn new(param: &TransformationParameter, train: bool, seed: u64) -> Result<Self> {
        if param.mean_file.is_some() && !param.mean_value.is_empty() {
            return Err(DataError::Transform(
                "mean_file and mean_value cannot both be set; keep one".into(),
            ));
        }
        if param.force_color() && param.force_gray() {
            return Err(DataError::Transform(
                "force_color and force_gray cannot both be true".into(),
            ));
        }
        let mean_image = match &param.mean_file {
            Some(file) => Some(load_mean(Path::new(file)).map_err(|e| {
                DataError::Transform(format!("mean_file {file:?} could not be loaded: {e}"))
            })?),
            None => None,
        };
        Ok(Transformer {
            scale: param.scale(),
            mirror: param.mirror(),
            crop_size: param.crop_size() as usize,
            force_color: param.force_color(),
            force_gray: param.force_gray(),
            mean_image,
            mean_values: param.mean_value.clone(),
            train,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// The (channels, height, width) a datum of this size becomes: crop_size squares it.
    pub fn output_shape(
        &self,
        channels: usize,
        height: usize,
        width: usize,
    ) -> (usize, usize, usize) {
        if self.crop_size > 0 {
            (channels, self.crop_size, self.crop_size)
        } else {
            (channels, height, width)
        }
    }

    /// The (channels, height, width) of `datum` after decoding (if encoded) and transforming.
    pub fn datum_output_shape(&self, datum: &Datum) -> Result<(usize, usize, usize)> {
        let datum = self.decoded(datum)?;
        Ok(self.output_shape(
            datum.channels().max(0) as usize,
            datum.height().max(0) as usize,
            datum.width().max(0) as usize,
        ))
    }

    /// Transforms `datum` into `out` (length C×crop×crop, or C×H×W without crop). The crop offset
    /// is random in TRAIN and centred in TEST; with `mirror` each datum is flipped at random in
    /// either phase, exactly as Caffe does.
    pub fn transform(&mut self, datum: &Datum, out: &mut [f32]) -> Result<()> {
        let datum = self.decoded(datum)?;
        let (h_off, w_off, mirror) = self.draw(
            datum.height().max(0) as usize,
            datum.width().max(0) as usize,
        )?;
        self.apply(&datum, out, h_off, w_off, mirror)
    }

    /// The random choices [`Transformer::transform`] makes for an h×w datum: (crop row offset,
    /// crop column offset, mirror), drawn in Caffe's order (the mirror coin first, then the
    /// offsets). Drawing them item by item and then calling [`Transformer::transform_at`] for the
    /// items in any order, e.g. on several threads, gives exactly what `transform` would.
    pub fn draw(&mut self, h: usize, w: usize) -> Result<(usize, usize, bool)> {
        let mirror = self.mirror && self.rng.gen_range(0..2) == 1;
        let (mut h_off, mut w_off) = (0, 0);
        if self.crop_size > 0 {
            self.check_crop(h, w)?;
            if self.train {
                h_off = self.rng.gen_range(0..=h - self.crop_size);
                w_off = self.rng.gen_range(0..=w - self.crop_size);
            } else {
                h_off = (h - self.crop_size) / 2;
                w_off = (w - self.crop_size) / 2;
            }
        }
        Ok((h_off, w_off, mirror))
    }

    /// Transforms with a given crop offset and flip (no randomness), e.g. for tests or
    /// multi-crop testing.
    pub fn transform_at(
        &self,
        datum: &Datum,
        out: &mut [f32],
        h_off: usize,
        w_off: usize,
        mirror: bool,
    ) -> Result<()> {
        let datum = self.decoded(datum)?;
        if self.crop_size > 0 {
            self.check_crop(
                datum.height().max(0) as usize,
                datum.width().max(0) as usize,
            )?;
        }
        self.apply(&datum, out, h_off, w_off, mirror)
    }

    fn decoded<'a>(&self, datum: &'a Datum) -> Result<Cow<'a, Datum>> {
        if datum.encoded() {
            Ok(Cow::Owned(decode_datum(
                datum,
                self.force_color,
                self.force_gray,
            )?))
        } else {
            Ok(Cow::Borrowed(datum))
        }
    }

    fn check_crop(&self, h: usize, w: usize) -> Result<()> {
        if h < self.crop_size || w < self.crop_size {
            return Err(DataError::Transform(format!(
                "crop_size {} is larger than the {h}x{w} datum; lower crop_size or resize the images",
                self.crop_size
            )));
        }
        Ok(())
    }

    /// Checks a raw datum against the output size, crop and mean before it is transformed and
    /// returns (channels, datum height, datum width, output height, output width).
    fn check(
        &self,
        datum: &Datum,
        out_len: usize,
        h_off: usize,
        w_off: usize,
    ) -> Result<(usize, usize, usize, usize, usize)> {
        let c = datum.channels().max(0) as usize;
        let dh = datum.height().max(0) as usize;
        let dw = datum.width().max(0) as usize;
        if c == 0 || dh == 0 || dw == 0 {
            return Err(DataError::Transform(format!(
                "datum has shape {}x{}x{}; channels, height and width must be positive",
                datum.channels(),
                datum.height(),
                datum.width()
            )));
        }
        let (_, height, width) = self.output_shape(c, dh, dw);
        if h_off + height > dh || w_off + width > dw {
            return Err(DataError::Transform(format!(
                "crop {height}x{width} at ({h_off}, {w_off}) does not fit the {dh}x{dw} datum"
            )));
        }
        if out_len != c * height * width {
            return Err(DataError::Transform(format!(
                "output holds {out_len} values but the transformed datum has {c}x{height}x{width} = {}",
                c * height * width
            )));
        }
        let available = if datum.data().is_empty() {
            datum.float_data.len()
        } else {
            datum.data().len()
        };
        if available != c * dh * dw {
            return Err(DataError::Transform(format!(
                "datum declares {c}x{dh}x{dw} = {} values but holds {available}",
                c * dh * dw
            )));
        }
        if let Some(m) = &self.mean_image {
            if (m.channels, m.height, m.width) != (c, dh, dw) {
                return Err(DataError::Transform(format!(
                    "mean_file is {}x{}x{} but the datum is {c}x{dh}x{dw} (CxHxW); compute the mean over the same data",
                    m.channels, m.height, m.width
                )));
            }
        }
        Ok((c, dh, dw, height, width))
    }

    /// The scale applied after the mean is subtracted (`scale`, 1 by default).
    pub fn scale(&self) -> f32 {
        self.scale
    }

    /// The mean image of `mean_file`, if one is set; it is indexed at the datum's uncropped
    /// position.
    pub fn mean_image(&self) -> Option<&MeanImage> {
        self.mean_image.as_ref()
    }

    /// `mean_value` spelled out for each of `c` channels (empty without mean values).
    pub fn channel_means(&self, c: usize) -> Result<Vec<f32>> {
        match self.mean_values.len() {
            0 => Ok(Vec::new()),
            1 => Ok(vec![self.mean_values[0]; c]),
            n if n == c => Ok(self.mean_values.clone()),
            n => Err(DataError::Transform(format!(
                "{n} mean_value entries for a {c}-channel datum; give 1 or {c}"
            ))),
        }
    }

    /// The byte half of [`Transformer::transform_at`] for a raw uint8 datum: copies the crop at
    /// (`h_off`, `w_off`), flipped if `mirror`, into `out` without converting it, leaving the
    /// mean and scale to whoever finishes the batch (an engine, on its own memory): element
    /// (ch, y, x) of the result came from datum row `h_off + y`, column `w_off + x` or, mirrored,
    /// `w_off + width - 1 - x`. Returns false, writing nothing, for a datum of float values.
    pub fn crop_bytes_at(
        &self,
        datum: &Datum,
        out: &mut [u8],
        h_off: usize,
        w_off: usize,
        mirror: bool,
    ) -> Result<bool> {
        if datum.encoded() || datum.data().is_empty() {
            return Ok(false);
        }
        let (c, dh, dw, height, width) = self.check(datum, out.len(), h_off, w_off)?;
        self.channel_means(c)?;
        let src = datum.data();
        for ch in 0..c {
            for y in 0..height {
                let from = (ch * dh + h_off + y) * dw + w_off;
                let row = &src[from..from + width];
                let to = &mut out[(ch * height + y) * width..][..width];
                to.copy_from_slice(row);
                if mirror {
                    to.reverse();
                }
            }
        }
        Ok(true)
    }

    fn apply(
        &self,
        datum: &Datum,
        out: &mut [f32],
        h_off: usize,
        w_off: usize,
        mirror: bool,
    ) -> Result<()> {
        let (c, dh, dw, height, width) = self.check(datum, out.len(), h_off, w_off)?;
        let uint8 = datum.data();
        let has_uint8 = !uint8.is_empty();
        let mean_values = self.channel_means(c)?;
        let scale = self.scale;
        for ch in 0..c {
            for y in 0..height {
                let src_row = (ch * dh + h_off + y) * dw + w_off;
                let dst_row = (ch * height + y) * width;
                for x in 0..width {
                    let src = src_row + x;
                    let dst = if mirror {
                        dst_row + width - 1 - x
                    } else {
                        dst_row + x
                    };
                    let v = if has_uint8 {
                        uint8[src] as f32
                    } else {
                        datum.float_data[src]
                    };
                    out[dst] = if let Some(m) = &self.mean_image {
                        (v - m.data[src]) * scale
                    } else if !mean_values.is_empty() {
                        (v - mean_values[ch]) * scale
                    } else {
                        v * scale
                    };
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datum_3x4x4() -> Datum {
        Datum {
            channels: Some(3),
            height: Some(4),
            width: Some(4),
            data: Some((0..48).map(|i| i as u8).collect()),
            label: Some(1),
            ..Default::default()
        }
    }

    #[test]
    fn test_phase_centre_crop_mean_values_scale() {
        let param = TransformationParameter {
            crop_size: Some(2),
            mean_value: vec![1.0, 2.0, 3.0],
            scale: Some(0.5),
            ..Default::default()
        };
        let mut t = Transformer::new(&param, false, 1).unwrap();
        assert_eq!(t.output_shape(3, 4, 4), (3, 2, 2));
        let mut out = vec![0.0; 12];
        t.transform(&datum_3x4x4(), &mut out).unwrap();
        // Centre offset (1, 1): channel 0 pixels 5, 6, 9, 10, minus 1, times 0.5.
        assert_eq!(&out[..4], &[2.0, 2.5, 4.0, 4.5]);
        // Channel 2: pixels 37, 38, 41, 42, minus 3.
        assert_eq!(&out[8..], &[17.0, 17.5, 19.0, 19.5]);
    }

    #[test]
    fn train_phase_crops_and_mirrors_randomly() {
        let param = TransformationParameter {
            crop_size: Some(3),
            mirror: Some(true),
            ..Default::default()
        };
        let mut t = Transformer::new(&param, true, 7).unwrap();
        let d = datum_3x4x4();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let mut out = vec![0.0; 27];
            t.transform(&d, &mut out).unwrap();
            // Recover offsets and flip from the first row of channel 0.
            let (a, b) = (out[0] as usize, out[2] as usize);
            let mirrored = a > b;
            let first = a.min(b);
            let (h_off, w_off) = (first / 4, first % 4);
            let mut expect = vec![0.0; 27];
            t.transform_at(&d, &mut expect, h_off, w_off, mirrored)
                .unwrap();
            assert_eq!(out, expect);
            seen.insert((h_off, w_off, mirrored));
        }
        assert_eq!(seen.len(), 8, "all 2x2 offsets, both flips: {seen:?}");
    }

    #[test]
    fn mean_file_indexed_at_uncropped_position_and_float_data() {
        let dir = tempfile::tempdir().unwrap();
        let mean_path = dir.path().join("mean.binaryproto");
        let blob = crema_proto::caffe::BlobProto {
            num: Some(1),
            channels: Some(1),
            height: Some(3),
            width: Some(3),
            data: (0..9).map(|i| i as f32 * 10.0).collect(),
            ..Default::default()
        };
        crate::mean::write_mean(&mean_path, &blob).unwrap();
        let param = TransformationParameter {
            crop_size: Some(2),
            mean_file: Some(mean_path.to_string_lossy().into_owned()),
            scale: Some(2.0),
            ..Default::default()
        };
        let t = Transformer::new(&param, false, 0).unwrap();
        let d = Datum {
            channels: Some(1),
            height: Some(3),
            width: Some(3),
            float_data: (0..9).map(|i| 100.0 + i as f32).collect(),
            ..Default::default()
        };
        let mut out = vec![0.0; 4];
        t.transform_at(&d, &mut out, 1, 1, true).unwrap();
        // Pixels 4, 5, 7, 8 minus means 40, 50, 70, 80, doubled, each row flipped.
        let v = |i: f32| (100.0 + i - 10.0 * i) * 2.0;
        assert_eq!(out, vec![v(5.0), v(4.0), v(8.0), v(7.0)]);

        let both = TransformationParameter {
            mean_value: vec![1.0],
            ..param.clone()
        };
        assert!(Transformer::new(&both, true, 0)
            .unwrap_err()
            .to_string()
            .contains("both"));
        let big = Datum {
            channels: Some(1),
            height: Some(4),
            width: Some(4),
            data: Some(vec![0; 16]),
            ..Default::default()
        };
        let mut out = vec![0.0; 4];
        let e = Transformer::new(&param, false, 0)
            .unwrap()
            .transform(&big, &mut out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1x3x3") && e.contains("1x4x4"), "{e}");
        let missing = TransformationParameter {
            mean_file: Some("/nonexistent/mean.binaryproto".into()),
            ..Default::default()
        };
        let e = Transformer::new(&missing, false, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/mean.binaryproto"), "{e}");
    }

    #[test]
    fn single_mean_value_applies_to_all_channels_and_errors() {
        let param = TransformationParameter {
            mean_value: vec![10.0],
            ..Default::default()
        };
        let mut t = Transformer::new(&param, true, 0).unwrap();
        let mut out = vec![0.0; 48];
        t.transform(&datum_3x4x4(), &mut out).unwrap();
        assert_eq!(out[47], 37.0);
        assert_eq!(out[0], -10.0);
        let mut short = vec![0.0; 47];
        assert!(t.transform(&datum_3x4x4(), &mut short).is_err());
        let two = TransformationParameter {
            mean_value: vec![1.0, 2.0],
            ..Default::default()
        };
        let e = Transformer::new(&two, true, 0)
            .unwrap()
            .transform(&datum_3x4x4(), &mut out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("give 1 or 3"), "{e}");
        let crop = TransformationParameter {
            crop_size: Some(5),
            ..Default::default()
        };
        let e = Transformer::new(&crop, true, 0)
            .unwrap()
            .transform(&datum_3x4x4(), &mut out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("crop_size 5"), "{e}");
    }
}
