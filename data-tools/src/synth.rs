//! A labelled image-folder data set drawn on the spot, so the whole workflow can be tried with
//! no download: the digits 0-9 as pen strokes, each image with its own scale, rotation, shear,
//! position, stroke width, colours, a stray line now and then, and pixel noise.
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use crate::error::{DataError, Result};

/// How many images to draw, and how.
#[derive(Clone, Debug)]
pub struct SynthOptions {
    /// Training images per class.
    pub train_per_class: usize,
    /// Test images per class.
    pub test_per_class: usize,
    /// Width and height in pixels.
    pub size: u32,
    /// Seed: the same seed draws the same images.
    pub seed: u64,
}

/// What [`write_digit_folders`] wrote.
#[derive(Clone, Debug)]
pub struct SynthSummary {
    /// `dir/train`: one folder per class ("0" to "9").
    pub train_dir: PathBuf,
    /// `dir/test`, laid out the same way.
    pub test_dir: PathBuf,
    /// Images written in all.
    pub images: usize,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// Number of classes: the digits 0-9.
pub const CLASSES: usize = 10;

type Pt = (f32, f32);

/// Points on an ellipse arc in the glyph's unit box (y grows downwards), angles in degrees.
fn arc(cx: f32, cy: f32, rx: f32, ry: f32, from: f32, to: f32) -> Vec<Pt> {
    let n = (((to - from).abs() / 15.0).ceil() as usize).max(2);
    (0..=n)
        .map(|i| {
            let a = (from + (to - from) * i as f32 / n as f32).to_radians();
            (cx + rx * a.cos(), cy + ry * a.sin())
        })
        .collect()
}

/// The pen strokes of a digit in a unit box, as polylines.
fn glyph(digit: usize) -> Vec<Vec<Pt>> {
    match digit {
        0 => vec![arc(0.5, 0.5, 0.27, 0.4, 0.0, 360.0)],
        1 => vec![vec![(0.33, 0.27), (0.53, 0.1), (0.53, 0.9)]],
        2 => {
            let mut s = arc(0.5, 0.32, 0.26, 0.22, 180.0, 400.0);
            s.extend([(0.22, 0.9), (0.8, 0.9)]);
            vec![s]
        }
        3 => vec![
            arc(0.5, 0.3, 0.24, 0.2, 200.0, 450.0),
            arc(0.5, 0.7, 0.27, 0.2, 270.0, 520.0),
        ],
        4 => vec![vec![(0.65, 0.9), (0.65, 0.1), (0.2, 0.65), (0.82, 0.65)]],
        5 => {
            let mut s = vec![(0.75, 0.1), (0.32, 0.1), (0.29, 0.47)];
            s.extend(arc(0.5, 0.66, 0.27, 0.24, 225.0, 500.0));
            vec![s]
        }
        6 => vec![
            arc(0.56, 0.55, 0.32, 0.44, 290.0, 150.0),
            arc(0.5, 0.69, 0.25, 0.21, 0.0, 360.0),
        ],
        7 => vec![vec![(0.2, 0.1), (0.8, 0.1), (0.42, 0.9)]],
        8 => vec![
            arc(0.5, 0.3, 0.21, 0.19, 0.0, 360.0),
            arc(0.5, 0.7, 0.26, 0.21, 0.0, 360.0),
        ],
        _ => {
            let mut tail = arc(0.5, 0.31, 0.25, 0.21, 0.0, 360.0);
            tail.push((0.72, 0.9));
            vec![tail]
        }
    }
}

/// Distance from `p` to the segment `a`-`b`.
fn segment_distance(p: Pt, a: Pt, b: Pt) -> f32 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (x, y) = (a.0 + t * dx - p.0, a.1 + t * dy - p.1);
    (x * x + y * y).sqrt()
}

/// Relative luminance of an RGB colour in 0..1.
fn luminance(c: [f32; 3]) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

/// Draws one `digit` as an RGB image of `size`×`size`, varied by `rng`.
pub fn draw_digit(digit: usize, size: u32, rng: &mut StdRng) -> image::RgbImage {
    let s = size as f32;
    // Where the unit box lands: scaled, rotated, sheared and moved about the centre.
    let scale = s * rng.gen_range(0.62..0.9);
    let angle = rng.gen_range(-18.0f32..18.0).to_radians();
    let shear = rng.gen_range(-0.25f32..0.25);
    let aspect = rng.gen_range(0.8f32..1.15);
    let room = (s - scale) / 2.0;
    let centre = (
        s / 2.0 + rng.gen_range(-room..=room) * 0.8,
        s / 2.0 + rng.gen_range(-room..=room) * 0.8,
    );
    let (sin, cos) = angle.sin_cos();
    let place = |(x, y): Pt| -> Pt {
        let (u, v) = ((x - 0.5) * scale * aspect, (y - 0.5) * scale);
        let u = u + shear * v;
        (centre.0 + u * cos - v * sin, centre.1 + u * sin + v * cos)
    };
    let mut strokes: Vec<Vec<Pt>> = glyph(digit)
        .into_iter()
        .map(|line| line.into_iter().map(place).collect())
        .collect();
    let width = rng.gen_range(1.4f32..3.0) * s / 32.0;
    let mut colour = || [rng.gen::<f32>(), rng.gen::<f32>(), rng.gen::<f32>()];
    let bg = colour();
    let mut fg = colour();
    while (luminance(fg) - luminance(bg)).abs() < 0.3 {
        fg = colour();
    }
    let bg2 = colour();
    // A stray line in a third colour, faint, on a third of the images.
    let stray = rng.gen_bool(0.33).then(|| {
        let mut p = || (rng.gen_range(0.0..s), rng.gen_range(0.0..s));
        (p(), p())
    });
    let stray_colour = [rng.gen::<f32>(), rng.gen::<f32>(), rng.gen::<f32>()];
    let gradient = rng.gen_range(0.0f32..0.5);
    let noise = rng.gen_range(0.0f32..0.12);
    strokes.retain(|l| l.len() >= 2);
    image::RgbImage::from_fn(size, size, |x, y| {
        let p = (x as f32 + 0.5, y as f32 + 0.5);
        let t = gradient * (x + y) as f32 / (2.0 * s);
        let mut px = [0f32; 3];
        for c in 0..3 {
            px[c] = bg[c] * (1.0 - t) + bg2[c] * t;
        }
        if let Some((a, b)) = stray {
            let cover = (0.6 - segment_distance(p, a, b)).clamp(0.0, 1.0) * 0.5;
            for c in 0..3 {
                px[c] += (stray_colour[c] - px[c]) * cover;
            }
        }
        let d = strokes
            .iter()
            .flat_map(|l| l.windows(2).map(|w| segment_distance(p, w[0], w[1])))
            .fold(f32::MAX, f32::min);
        let cover = (width / 2.0 + 0.5 - d).clamp(0.0, 1.0);
        let mut out = [0u8; 3];
        for c in 0..3 {
            let v = px[c] + (fg[c] - px[c]) * cover + noise * (rng.gen::<f32>() * 2.0 - 1.0);
            out[c] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
        }
        image::Rgb(out)
    })
}

/// Writes `dir/train/<digit>/NNNN.png` and `dir/test/<digit>/NNNN.png`: drawn in parallel, each
/// image from its own seed, so the same options always give the same files.
pub fn write_digit_folders(dir: &Path, opts: &SynthOptions) -> Result<SynthSummary> {
    let started = Instant::now();
    if opts.size < 8 {
        return Err(DataError::InvalidArgument(format!(
            "images of {}x{} pixels are too small to draw digits on; use 8 or more",
            opts.size, opts.size
        )));
    }
    let mut jobs = Vec::new();
    for (split, per_class) in [
        ("train", opts.train_per_class),
        ("test", opts.test_per_class),
    ] {
        for digit in 0..CLASSES {
            let folder = dir.join(split).join(digit.to_string());
            std::fs::create_dir_all(&folder).map_err(|e| DataError::io("create", &folder, e))?;
            for i in 0..per_class {
                jobs.push((
                    split == "test",
                    digit,
                    i,
                    folder.join(format!("{i:04}.png")),
                ));
            }
        }
    }
    jobs.par_iter().try_for_each(|(test, digit, i, path)| {
        let seed = opts.seed ^ ((*test as u64) << 63) ^ ((*digit as u64) << 40) ^ (*i as u64);
        let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        draw_digit(*digit, opts.size, &mut rng)
            .save(path)
            .map_err(|e| DataError::Image {
                path: path.clone(),
                reason: format!("cannot write: {e}"),
            })
    })?;
    Ok(SynthSummary {
        train_dir: dir.join("train"),
        test_dir: dir.join("test"),
        images: jobs.len(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_image_and_strokes_are_visible() {
        let a = draw_digit(8, 32, &mut StdRng::seed_from_u64(5));
        let b = draw_digit(8, 32, &mut StdRng::seed_from_u64(5));
        assert_eq!(a, b);
        // The glyph covers a fair part of the image and leaves background around it.
        for digit in 0..CLASSES {
            for seed in 0..20 {
                let img = draw_digit(digit, 32, &mut StdRng::seed_from_u64(seed));
                let (lo, hi) = img.pixels().fold((255u8, 0u8), |(lo, hi), p| {
                    let l =
                        ((p[0] as u32 * 299 + p[1] as u32 * 587 + p[2] as u32 * 114) / 1000) as u8;
                    (lo.min(l), hi.max(l))
                });
                assert!(
                    hi - lo > 50,
                    "digit {digit} seed {seed}: contrast {lo}..{hi}"
                );
            }
        }
    }

    #[test]
    fn writes_class_folders() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SynthOptions {
            train_per_class: 3,
            test_per_class: 1,
            size: 28,
            seed: 1,
        };
        let s = write_digit_folders(dir.path(), &opts).unwrap();
        assert_eq!(s.images, 40);
        let img = image::open(dir.path().join("train/7/0002.png")).unwrap();
        assert_eq!((img.width(), img.height()), (28, 28));
        assert!(dir.path().join("test/0/0000.png").exists());
        assert!(!dir.path().join("test/0/0001.png").exists());
        let small = SynthOptions { size: 4, ..opts };
        assert!(write_digit_folders(dir.path(), &small).is_err());
    }
}
