//! Dataset tools for crema.
