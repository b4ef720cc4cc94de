//! Blob: an N-d array with a data and a diff buffer, living wherever the engine keeps memory.

use crate::engine::{Buffer, Engine};
use std::cell::{Ref, RefCell, RefMut};
use std::rc::Rc;

/// Shared handle to a blob. In-place layers give the same blob as bottom and top.
pub type BlobRef = Rc<Blob>;

/// An N-d array of f32 values (`data`) and gradients (`diff`), shape in Caffe's N×C×H×W order.
///
/// Data and diff sit in separate cells so a layer can read one blob's data while writing the same
/// blob's diff (in-place backward).
#[derive(Debug)]
pub struct Blob {
    shape: RefCell<Vec<usize>>,
    /// Shared with another blob's data where a layer's top is its bottom's data (Split).
    data: Rc<RefCell<Buffer>>,
    diff: RefCell<Buffer>,
}

impl Blob {
    /// A zero-filled blob of the given shape in the engine's memory.
    pub fn new(engine: &dyn Engine, shape: &[usize]) -> Self {
        let n = shape.iter().product();
        Blob {
            shape: RefCell::new(shape.to_vec()),
            data: Rc::new(RefCell::new(engine.alloc(n))),
            diff: RefCell::new(engine.alloc(n)),
        }
    }

    /// A blob whose data is `other`'s very data (what one writes, the other reads; a reshape
    /// of either to another size gives both new memory), with a gradient of its own.
    pub fn sharing_data(engine: &dyn Engine, other: &Blob) -> BlobRef {
        let shape = other.shape();
        Rc::new(Blob {
            data: other.data.clone(),
            diff: RefCell::new(engine.alloc(shape.iter().product())),
            shape: RefCell::new(shape),
        })
    }

    /// Whether the two blobs hold the same data memory.
    pub fn shares_data(&self, other: &Blob) -> bool {
        Rc::ptr_eq(&self.data, &other.data)
    }

    /// Same as [`Blob::new`], wrapped in a shared handle.
    pub fn new_ref(engine: &dyn Engine, shape: &[usize]) -> BlobRef {
        Rc::new(Self::new(engine, shape))
    }

    /// The shape (a copy; shapes are tiny).
    pub fn shape(&self) -> Vec<usize> {
        self.shape.borrow().clone()
    }

    /// Number of axes.
    pub fn num_axes(&self) -> usize {
        self.shape.borrow().len()
    }

    /// Size of one axis; negative indexes count from the end as in Caffe.
    pub fn dim(&self, axis: usize) -> usize {
        self.shape.borrow().get(axis).copied().unwrap_or(1)
    }

    /// Total number of elements.
    pub fn count(&self) -> usize {
        self.shape.borrow().iter().product()
    }

    /// Product of the dimensions in `[start, end)`.
    pub fn count_range(&self, start: usize, end: usize) -> usize {
        let s = self.shape.borrow();
        s[start.min(s.len())..end.min(s.len())].iter().product()
    }

    /// Changes the shape, reallocating only when the element count changes.
    pub fn reshape(&self, engine: &dyn Engine, shape: &[usize]) {
        let n: usize = shape.iter().product();
        // Memory of the new size; shared data already resized by its other holder is kept.
        if self.data.borrow().len() != n {
            *self.data.borrow_mut() = engine.alloc(n);
        }
        if self.diff.borrow().len() != n {
            *self.diff.borrow_mut() = engine.alloc(n);
        }
        *self.shape.borrow_mut() = shape.to_vec();
    }

    /// Caffe's human-readable shape string: "64 20 24 24 (737280)".
    pub fn shape_string(&self) -> String {
        let s = self.shape.borrow();
        let dims: Vec<String> = s.iter().map(|d| d.to_string()).collect();
        format!("{} ({})", dims.join(" "), self.count())
    }

    pub fn data(&self) -> Ref<'_, Buffer> {
        self.data.borrow()
    }
    pub fn data_mut(&self) -> RefMut<'_, Buffer> {
        self.data.borrow_mut()
    }
    pub fn diff(&self) -> Ref<'_, Buffer> {
        self.diff.borrow()
    }
    pub fn diff_mut(&self) -> RefMut<'_, Buffer> {
        self.diff.borrow_mut()
    }

    /// Copies the data to host memory.
    pub fn data_to_vec(&self, engine: &dyn Engine) -> Vec<f32> {
        engine.download(&self.data.borrow())
    }
    /// Copies the diff to host memory.
    pub fn diff_to_vec(&self, engine: &dyn Engine) -> Vec<f32> {
        engine.download(&self.diff.borrow())
    }
    /// Replaces the data with host values (lengths must match).
    pub fn set_data(&self, engine: &dyn Engine, values: &[f32]) {
        engine.upload(values, &mut self.data.borrow_mut());
    }
    /// Replaces the diff with host values (lengths must match).
    pub fn set_diff(&self, engine: &dyn Engine, values: &[f32]) {
        engine.upload(values, &mut self.diff.borrow_mut());
    }
}
