//! Image decoding, resizing and encoding the way Caffe's OpenCV calls do it: BGR channel order,
//! OpenCV's grey weights, bilinear resize with OpenCV's pixel geometry, EXIF orientation applied.
use std::io::Cursor;
use std::path::Path;

use crema_proto::caffe::Datum;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};

use crate::error::{DataError, Result};

/// How to turn a decoded file into channels, as OpenCV's imread flags do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorMode {
    /// Three channels, BGR (grey sources replicated), like `IMREAD_COLOR`.
    Color,
    /// One channel, like `IMREAD_GRAYSCALE`.
    Gray,
    /// One channel for grey sources, three (BGR) otherwise, like `IMREAD_ANYCOLOR`.
    Native,
}

/// An 8-bit image, interleaved height × width × channels, channels in BGR order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image8 {
    /// 1 or 3.
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// HWC bytes.
    pub data: Vec<u8>,
}

/// Decodes an encoded image (JPEG, PNG, BMP) held in memory; `source` names it in errors.
pub fn decode(bytes: &[u8], mode: ColorMode, source: &Path) -> Result<Image8> {
    decode_full(bytes, mode, source).map(|(img, _)| img)
}

/// As [`decode`], also telling whether the file itself is in colour.
pub fn decode_full(bytes: &[u8], mode: ColorMode, source: &Path) -> Result<(Image8, bool)> {
    let fail = |reason: String| DataError::Image {
        path: source.to_path_buf(),
        reason,
    };
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| fail(e.to_string()))?;
    if reader.format().is_none() {
        return Err(fail("not a JPEG, PNG or BMP file".into()));
    }
    let is_jpeg = reader.format() == Some(ImageFormat::Jpeg);
    let mut decoder = reader.into_decoder().map_err(|e| fail(e.to_string()))?;
    let orientation = decoder.orientation().map_err(|e| fail(e.to_string()))?;
    // JPEG pixels come from libjpeg (mozjpeg, a libjpeg-turbo fork), as OpenCV's do: `image`'s
    // own decoder rounds its IDCT and chroma upsampling differently (±4 grey levels).
    let libjpeg = if is_jpeg {
        decode_libjpeg(bytes, mode)
    } else {
        None
    };
    let (mut img, source_has_color) = match libjpeg {
        Some(decoded) => decoded,
        None => {
            let img = DynamicImage::from_decoder(decoder).map_err(|e| fail(e.to_string()))?;
            let color = img.color().has_color();
            (img, color)
        }
    };
    img.apply_orientation(orientation);
    let (width, height) = (img.width() as usize, img.height() as usize);
    if width == 0 || height == 0 {
        return Err(fail("the image is empty (0 pixels)".into()));
    }
    let gray = match mode {
        ColorMode::Gray => true,
        ColorMode::Color => false,
        ColorMode::Native => !source_has_color,
    };
    let data = if gray {
        if let DynamicImage::ImageLuma8(g) = &img {
            g.as_raw().clone()
        } else if source_has_color {
            img.to_rgb8()
                .as_raw()
                .chunks_exact(3)
                .map(|p| rgb_to_gray(p[0], p[1], p[2]))
                .collect()
        } else {
            img.to_luma8().into_raw()
        }
    } else {
        let mut rgb = img.to_rgb8().into_raw();
        for p in rgb.chunks_exact_mut(3) {
            p.swap(0, 2);
        }
        rgb
    };
    let img = Image8 {
        channels: if gray { 1 } else { 3 },
        height,
        width,
        data,
    };
    Ok((img, source_has_color))
}

/// Decodes a JPEG with libjpeg as OpenCV's imread does: grey output (libjpeg's own Y channel)
/// when asked for grey or when the file is grey, RGB otherwise. Returns the image and whether
/// the file is in colour, or None (CMYK files, or a decoding error) to fall back on `image`.
fn decode_libjpeg(bytes: &[u8], mode: ColorMode) -> Option<(DynamicImage, bool)> {
    std::panic::catch_unwind(|| -> Option<(DynamicImage, bool)> {
        use mozjpeg::ColorSpace;
        let d = mozjpeg::Decompress::new_mem(bytes).ok()?;
        let color = match d.color_space() {
            ColorSpace::JCS_GRAYSCALE => false,
            ColorSpace::JCS_YCbCr | ColorSpace::JCS_RGB => true,
            _ => return None,
        };
        let (w, h) = (d.width() as u32, d.height() as u32);
        let gray = mode == ColorMode::Gray || !color;
        let mut started = if gray {
            d.grayscale().ok()?
        } else {
            d.rgb().ok()?
        };
        let px: Vec<u8> = started.read_scanlines().ok()?;
        started.finish().ok()?;
        let img = if gray {
            DynamicImage::ImageLuma8(image::GrayImage::from_raw(w, h, px)?)
        } else {
            DynamicImage::ImageRgb8(image::RgbImage::from_raw(w, h, px)?)
        };
        Some((img, color))
    })
    .ok()
    .flatten()
}

/// OpenCV's fixed-point BGR2GRAY: Y = 0.299 R + 0.587 G + 0.114 B, rounded.
fn rgb_to_gray(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 4899 + g as u32 * 9617 + b as u32 * 1868 + (1 << 13)) >> 14) as u8
}

/// Bilinear resize bit-exact with OpenCV's `INTER_LINEAR` for 8-bit images: half-pixel centres,
/// single-precision source coordinates, 11-bit fixed-point weights, columns clamped at the edges
/// (weight 0) but rows blended with their unclamped weights, and the vertical blend of OpenCV's
/// SIMD path: `((h0 >> 4) * b0 >> 16) + ((h1 >> 4) * b1 >> 16)`, rounded by `(v + 2) >> 2`.
///
/// Why not `image`'s Triangle filter: it widens its kernel when shrinking (antialiasing), which
/// OpenCV does not, so LMDBs made here would differ visibly from those Caffe makes.
pub fn resize_bilinear(img: &Image8, new_height: usize, new_width: usize) -> Image8 {
    if img.height == new_height && img.width == new_width {
        return img.clone();
    }
    const SCALE: f32 = 2048.0;
    // OpenCV: fx = (float)((dx + 0.5) * scale - 0.5); sx = floor(fx); fx -= sx; weights
    // saturate_cast<short>((1 - fx) * 2048) and saturate_cast<short>(fx * 2048), rounded to even.
    let coeffs = |dst: usize, src: usize, clamp_weights: bool| -> Vec<(usize, usize, i32, i32)> {
        let scale = 1.0 / (dst as f64 / src as f64);
        (0..dst)
            .map(|d| {
                let f = ((d as f64 + 0.5) * scale - 0.5) as f32;
                let mut s = f.floor() as i64;
                let mut frac = f - s as f32;
                if clamp_weights && s < 0 {
                    s = 0;
                    frac = 0.0;
                }
                if clamp_weights && s >= src as i64 - 1 {
                    s = src as i64 - 1;
                    frac = 0.0;
                }
                let clip = |i: i64| i.clamp(0, src as i64 - 1) as usize;
                let w0 = ((1.0 - frac) * SCALE).round_ties_even() as i32;
                let w1 = (frac * SCALE).round_ties_even() as i32;
                (clip(s), clip(s + 1), w0, w1)
            })
            .collect()
    };
    let xs = coeffs(new_width, img.width, true);
    let ys = coeffs(new_height, img.height, false);
    let c = img.channels;
    // Horizontal pass per source row needed, then vertical blend, as OpenCV does.
    let hrow = |y: usize| -> Vec<i32> {
        let row = &img.data[y * img.width * c..(y + 1) * img.width * c];
        let mut out = Vec::with_capacity(new_width * c);
        for &(x0, x1, a0, a1) in &xs {
            for k in 0..c {
                out.push(row[x0 * c + k] as i32 * a0 + row[x1 * c + k] as i32 * a1);
            }
        }
        out
    };
    let mut data = Vec::with_capacity(new_height * new_width * c);
    let mut cache: Option<(usize, Vec<i32>, usize, Vec<i32>)> = None;
    for &(y0, y1, b0, b1) in &ys {
        let (r0, r1) = match cache.take() {
            Some((cy0, r0, cy1, r1)) if cy0 == y0 && cy1 == y1 => (r0, r1),
            Some((_, _, cy1, r1)) if cy1 == y0 => (r1, hrow(y1)),
            _ => (hrow(y0), hrow(y1)),
        };
        for (&v0, &v1) in r0.iter().zip(&r1) {
            // v_pack saturates to i16; v_mul_hi keeps the high 16 bits of the i16×i16 product.
            let h0 = (v0 >> 4).clamp(i16::MIN as i32, i16::MAX as i32);
            let h1 = (v1 >> 4).clamp(i16::MIN as i32, i16::MAX as i32);
            let v = ((h0 * b0) >> 16) + ((h1 * b1) >> 16);
            data.push(((v + 2) >> 2).clamp(0, 255) as u8);
        }
        cache = Some((y0, r0, y1, r1));
    }
    Image8 {
        channels: c,
        height: new_height,
        width: new_width,
        data,
    }
}

/// The image as a raw Datum: uint8 C×H×W (planar), BGR for colour, with `label`.
pub fn image_to_datum(img: &Image8, label: i32) -> Datum {
    let (c, hw) = (img.channels, img.height * img.width);
    let mut chw = vec![0u8; c * hw];
    for (i, px) in img.data.chunks_exact(c).enumerate() {
        for (k, &v) in px.iter().enumerate() {
            chw[k * hw + i] = v;
        }
    }
    Datum {
        channels: Some(c as i32),
        height: Some(img.height as i32),
        width: Some(img.width as i32),
        data: Some(chw),
        label: Some(label),
        encoded: Some(false),
        ..Default::default()
    }
}

/// Encodes the image as `format` ("jpg"/"jpeg" at OpenCV's default quality 95, "png", "bmp").
pub fn encode(img: &Image8, format: &str, source: &Path) -> Result<Vec<u8>> {
    let (w, h) = (img.width as u32, img.height as u32);
    let (pixels, color) = if img.channels == 3 {
        let mut rgb = img.data.clone();
        for p in rgb.chunks_exact_mut(3) {
            p.swap(0, 2);
        }
        (rgb, image::ExtendedColorType::Rgb8)
    } else {
        (img.data.clone(), image::ExtendedColorType::L8)
    };
    let mut out = Vec::new();
    let result = match normalize_encoding(format) {
        Some("jpg") => image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 95)
            .encode(&pixels, w, h, color),
        Some("png") => image::ImageEncoder::write_image(
            image::codecs::png::PngEncoder::new(&mut out),
            &pixels,
            w,
            h,
            color,
        ),
        Some("bmp") => image::codecs::bmp::BmpEncoder::new(&mut out).encode(&pixels, w, h, color),
        _ => {
            return Err(DataError::InvalidArgument(format!(
                "cannot encode {} as {format:?}; use --encode-type jpg, png or bmp",
                source.display()
            )))
        }
    };
    result.map_err(|e| DataError::Image {
        path: source.to_path_buf(),
        reason: format!("encoding as {format} failed: {e}"),
    })?;
    Ok(out)
}

/// The canonical name of an encoding we can write ("jpeg" → "jpg"), or None.
pub fn normalize_encoding(format: &str) -> Option<&'static str> {
    match format.to_ascii_lowercase().as_str() {
        "jpg" | "jpeg" | "jpe" => Some("jpg"),
        "png" => Some("png"),
        "bmp" => Some("bmp"),
        _ => None,
    }
}

/// Decodes an encoded Datum into a raw one (uint8 C×H×W, BGR), keeping its label.
/// Raw Datums are returned unchanged. Neither flag decodes to the file's own channel count;
/// `force_color` gives 3 channels, `force_gray` 1; both at once is an error.
pub fn decode_datum(datum: &Datum, force_color: bool, force_gray: bool) -> Result<Datum> {
    if force_color && force_gray {
        return Err(DataError::Transform(
            "force_color and force_gray cannot both be true".into(),
        ));
    }
    if !datum.encoded() {
        return Ok(datum.clone());
    }
    let mode = if force_color {
        ColorMode::Color
    } else if force_gray {
        ColorMode::Gray
    } else {
        ColorMode::Native
    };
    let img = decode(datum.data(), mode, Path::new("<encoded Datum>"))?;
    Ok(image_to_datum(&img, datum.label()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(c: usize, h: usize, w: usize, f: impl Fn(usize, usize, usize) -> u8) -> Image8 {
        let mut data = Vec::new();
        for y in 0..h {
            for x in 0..w {
                for k in 0..c {
                    data.push(f(y, x, k));
                }
            }
        }
        Image8 {
            channels: c,
            height: h,
            width: w,
            data,
        }
    }

    #[test]
    fn resize_matches_opencv_geometry() {
        // 1x4 -> 1x2: centres at 0.5 and 2.5 → (10+20)/2, (30+40)/2.
        let src = img(1, 1, 4, |_, x, _| [10, 20, 30, 40][x]);
        assert_eq!(resize_bilinear(&src, 1, 2).data, vec![15, 35]);
        // 1x2 -> 1x4: src x = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1).
        let src = img(1, 1, 2, |_, x, _| [0, 200][x]);
        assert_eq!(resize_bilinear(&src, 1, 4).data, vec![0, 50, 150, 200]);
        // Shrinking 8 -> 2 samples (not averages) at 1.5 and 5.5, unlike an antialiasing filter.
        let src = img(1, 1, 8, |_, x, _| [0, 0, 100, 0, 0, 0, 0, 255][x]);
        assert_eq!(resize_bilinear(&src, 1, 2).data, vec![50, 0]);
        // Vertical and multi-channel.
        let src = img(3, 2, 1, |y, _, k| (y * 100 + k) as u8);
        let out = resize_bilinear(&src, 4, 1);
        assert_eq!(
            out.data,
            vec![0, 1, 2, 25, 26, 27, 75, 76, 77, 100, 101, 102]
        );
    }

    #[test]
    fn gray_uses_opencv_weights() {
        assert_eq!(rgb_to_gray(255, 0, 0), 76);
        assert_eq!(rgb_to_gray(0, 255, 0), 150);
        assert_eq!(rgb_to_gray(0, 0, 255), 29);
        assert_eq!(rgb_to_gray(255, 255, 255), 255);
    }

    #[test]
    fn png_round_trip_is_bgr_planar() {
        let src = img(3, 2, 3, |y, x, k| (y * 30 + x * 10 + k) as u8);
        let png = encode(&src, "png", Path::new("t.png")).unwrap();
        let back = decode(&png, ColorMode::Color, Path::new("t.png")).unwrap();
        assert_eq!(back, src);
        let d = image_to_datum(&src, 4);
        // Plane 0 holds channel 0 (B) of every pixel in row-major order.
        assert_eq!(&d.data()[..6], &[0, 10, 20, 30, 40, 50]);
        assert_eq!(&d.data()[6..8], &[1, 11]);
        let gray = decode(&png, ColorMode::Native, Path::new("t.png")).unwrap();
        assert_eq!(gray.channels, 3);
        let enc = Datum {
            data: Some(png),
            label: Some(4),
            encoded: Some(true),
            ..Default::default()
        };
        assert_eq!(decode_datum(&enc, false, false).unwrap(), d);
        let g = decode_datum(&enc, false, true).unwrap();
        assert_eq!(g.channels(), 1);
        assert_eq!(g.data()[1], rgb_to_gray(12, 11, 10));
        assert!(decode_datum(&enc, true, true).is_err());
    }

    #[test]
    fn garbage_is_an_error_naming_the_source() {
        let err = decode(b"not an image", ColorMode::Color, Path::new("x/broken.jpg"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("broken.jpg"), "{err}");
        let mut jpeg = encode(&img(3, 8, 8, |_, _, _| 9), "jpg", Path::new("a")).unwrap();
        jpeg.truncate(40);
        assert!(decode(&jpeg, ColorMode::Color, Path::new("t.jpg")).is_err());
    }
}
