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
        self.wait_spinning(std::time::Duration::ZERO);
    }

    /// Blocks until every part is done, spinning for up to `spin` before
    /// parking. Parking and being woken costs tens of microseconds on some
    /// hosts (a virtual CPU woken by an interrupt through the hypervisor);
    /// spinning saves that for small batches where a core is spare.
    pub fn wait_spinning(&self, spin: std::time::Duration) {
        debug_assert_eq!(thread::current().id(), self.waiter.id());
        let deadline = (!spin.is_zero()).then(|| std::time::Instant::now() + spin);
        let mut spins = 0;
        while self.remaining.load(Ordering::Acquire) != 0 {
            if spins < SPINS_BEFORE_PARK {
                spins += 1;
                std::hint::spin_loop();
            } else if deadline.is_some_and(|d| std::time::Instant::now() < d) {
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
