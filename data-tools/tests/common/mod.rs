//! Helpers shared by the integration tests.
#![allow(dead_code)]
use std::path::{Path, PathBuf};

use image::{ImageBuffer, Luma, Rgb};

/// /work/shared/data (the project's shared data folder), if present.
pub fn shared_data(sub: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(sub);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} is not present", p.display());
        None
    }
}

/// A colour test image whose pixel (x, y) is (R, G, B) = (x*10 + seed, y*10, 200 - seed).
pub fn rgb_image(w: u32, h: u32, seed: u8) -> ImageBuffer<Rgb<u8>, Vec<u8>> {
    ImageBuffer::from_fn(w, h, |x, y| {
        Rgb([(x * 10) as u8 + seed, (y * 10) as u8, 200 - seed])
    })
}

/// A grey test image.
pub fn gray_image(w: u32, h: u32, seed: u8) -> ImageBuffer<Luma<u8>, Vec<u8>> {
    ImageBuffer::from_fn(w, h, |x, y| Luma([(x * 7 + y * 3) as u8 + seed]))
}
