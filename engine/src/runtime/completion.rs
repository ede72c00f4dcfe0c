//! One completion per batch call.
//!
//! A batch is split over several shards; each shard finishes its part and
//! counts down. The caller blocks once, on the whole batch, and is unparked by
//! whichever shard finishes last. No lock, no per-page signalling.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::{self, Thread};

/// Countdown over the parts of one batch, waited on by the submitting thread.
pub struct BatchCompletion {
    remaining: AtomicUsize,
    waiter: Thread,
}

/// Spins this many times before parking: small batches (exists probes) finish
/// in a few microseconds, cheaper than a futex round trip.
const SPINS_BEFORE_PARK: u32 = 200;

impl BatchCompletion {
    /// A completion for `parts` parts, to be waited on by the current thread.
    pub fn new(parts: usize) -> Self {
        Self {
            remaining: AtomicUsize::new(parts),
            waiter: thread::current(),
        }
    }

    /// Marks one part done; the last one wakes the waiter.
    pub fn part_done(&self) {
        // Clone first: once `remaining` hits zero the waiter may return and
        // free `self`, so nothing of `self` may be touched after the decrement.
        let waiter = self.waiter.clone();
        let before = self.remaining.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "a batch part completed twice");
        if before == 1 {
            waiter.unpark();
        }
    }

    /// Marks `n` parts done at once (parts that were never submitted).
    pub fn parts_done(&self, n: usize) {
        for _ in 0..n {
            self.part_done();
        }
    }

    /// Blocks until every part is done.
    pub fn wait(&self) {
        debug_assert_eq!(thread::current().id(), self.waiter.id());
        let mut spins = 0;
        while self.remaining.load(Ordering::Acquire) != 0 {
            if spins < SPINS_BEFORE_PARK {
                spins += 1;
                std::hint::spin_loop();
            } else {
                thread::park();
            }
        }
    }

    /// Whether every part is done.
    pub fn is_done(&self) -> bool {
        self.remaining.load(Ordering::Acquire) == 0
    }
}
