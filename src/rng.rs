//! The process-wide seeded random generator (Caffe's `random_seed` makes runs repeatable).

use rand::rngs::StdRng;
use rand::SeedableRng;
use std::cell::RefCell;

thread_local! {
    static RNG: RefCell<StdRng> = RefCell::new(StdRng::seed_from_u64(0x00c0_ffee));
}

/// Reseeds this thread's generator.
pub fn seed(seed: u64) {
    RNG.with(|r| *r.borrow_mut() = StdRng::seed_from_u64(seed));
}

/// Runs `f` with this thread's generator.
pub fn with<R>(f: impl FnOnce(&mut StdRng) -> R) -> R {
    RNG.with(|r| f(&mut r.borrow_mut()))
}

/// A fresh seed drawn from this thread's generator (for worker threads).
pub fn next_seed() -> u64 {
    with(rand::Rng::gen)
}
