//! Work memory a layer keeps between its forward and backward passes (Caffe's temp_ blobs).

use crate::engine::{Buffer, Engine};

/// An engine buffer that follows the size a layer asks for, reallocated only when it changes.
#[derive(Default)]
pub struct Work(Option<Buffer>);

impl Work {
    /// The buffer with exactly `n` elements (zero-filled when newly allocated).
    pub fn get(&mut self, e: &dyn Engine, n: usize) -> &mut Buffer {
        if self.0.as_ref().is_none_or(|b| b.len() != n) {
            self.0 = Some(e.alloc(n));
        }
        self.0.get_or_insert_with(|| e.alloc(n))
    }

    /// The buffer as last sized; `None` before the first `get`.
    pub fn buf(&self) -> Option<&Buffer> {
        self.0.as_ref()
    }

    /// A buffer of `n` elements filled with `value`, refilled only when reallocated (for constant
    /// vectors such as Caffe's sum multipliers).
    pub fn constant(&mut self, e: &dyn Engine, n: usize, value: f32) -> &Buffer {
        if self.0.as_ref().is_none_or(|b| b.len() != n) {
            let mut b = e.alloc(n);
            e.fill(value, &mut b);
            self.0 = Some(b);
        }
        self.0.get_or_insert_with(|| e.alloc(n))
    }
}
