//! What a shard does with its part of a batch.
//!
//! A batch call is split by key hash into one [`BatchPart`] per shard. The part
//! points into the caller's arrays (the caller blocks until every part is done,
//! so those arrays outlive the part); the shard reads the entries listed in its
//! part and writes only their result bytes. Two shards never share an index, so
//! their writes never overlap.

use super::stats::ShardStats;
use crate::keys::KeyHash;
use crate::logging::RateLimiter;
use crate::pool::{Insert, PoolError, ShardPool};
use crate::runtime::{BatchCompletion, ShardService};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The operation a part performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Copy pages from `addrs` into the pool.
    Set,
    /// Copy pages from the pool to `addrs`.
    Get,
    /// Probe for presence.
    Exists,
}

/// One shard's share of a batch call. Raw pointers into the caller's stack:
/// see the module docs for why that is sound.
#[derive(Debug)]
pub struct BatchPart {
    /// What to do.
    pub op: Op,
    /// Positions in the batch that belong to this shard.
    pub indices: *const u32,
    /// How many positions.
    pub count: usize,
    /// Key hash of every page of the batch (indexed by position).
    pub hashes: *const KeyHash,
    /// Source (set) or destination (get) address of every page; unused for exists.
    pub addrs: *const usize,
    /// Length in bytes of every page; unused for exists.
    pub lens: *const usize,
    /// Result of every page (true = stored / delivered / present).
    pub results: *mut bool,
    /// Counted down once this part is done.
    pub done: *const BatchCompletion,
}

// SAFETY: the pointers name the caller's arrays, which stay alive and unmoved
// until `done` reaches zero, and each position is written by one shard only.
unsafe impl Send for BatchPart {}

/// Jobs a store shard accepts.
#[derive(Debug)]
pub enum StoreJob {
    /// A share of a batch call.
    Batch(BatchPart),
    /// Drop every page of this shard's pool.
    Clear(*const BatchCompletion),
}

// SAFETY: as for BatchPart.
unsafe impl Send for StoreJob {}

/// A shard of the node store: its pool range and its counters.
pub struct ShardStore {
    pool: RefCell<ShardPool>,
    stats: Arc<ShardStats>,
    /// Keys evicted by the current batch; reused across batches to avoid
    /// allocating. Consumers of evictions (the directory) read it per batch.
    evicted: RefCell<Vec<KeyHash>>,
    errors: RefCell<RateLimiter>,
}

impl ShardStore {
    /// A shard owning `pool` and reporting into `stats`.
    pub fn new(pool: ShardPool, stats: Arc<ShardStats>) -> Self {
        let store = Self {
            pool: RefCell::new(pool),
            stats,
            evicted: RefCell::new(Vec::new()),
            errors: RefCell::new(RateLimiter::new(Duration::from_secs(10))),
        };
        store.publish_pool_gauges();
        store
    }

    fn run_part(&self, part: &BatchPart) {
        // SAFETY: see BatchPart; `indices` has `count` entries, all < batch length.
        let indices = unsafe { std::slice::from_raw_parts(part.indices, part.count) };
        match part.op {
            Op::Set => self.set(part, indices),
            Op::Get => self.get(part, indices),
            Op::Exists => self.exists(part, indices),
        }
    }

    fn set(&self, part: &BatchPart, indices: &[u32]) {
        let now = Instant::now();
        let mut pool = self.pool.borrow_mut();
        let mut evicted = self.evicted.borrow_mut();
        evicted.clear();
        let (mut stored, mut bytes) = (0u64, 0u64);
        for &i in indices {
            let i = i as usize;
            // SAFETY: i < batch length (see BatchPart).
            let (hash, src, len) =
                unsafe { (*part.hashes.add(i), *part.addrs.add(i), *part.lens.add(i)) };
            let ok = if src == 0 {
                self.log_error(
                    now,
                    format_args!("batch_set: page {i} has a null source pointer"),
                );
                false
            } else {
                match pool.insert(hash, len, now, &mut evicted) {
                    Ok(Insert::Fresh { dst, .. }) => {
                        // SAFETY: the caller vouched for [src, src+len); dst is a
                        // reserved slot of at least len bytes in our own range.
                        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst, len) };
                        bytes += len as u64;
                        true
                    }
                    Ok(Insert::Present(_)) => true,
                    Err(e) => {
                        self.log_pool_error(now, &e);
                        false
                    }
                }
            };
            stored += u64::from(ok);
            // SAFETY: position i belongs to this part only.
            unsafe { *part.results.add(i) = ok };
        }
        let s = &self.stats;
        ShardStats::bump(&s.write_requests, indices.len() as u64);
        ShardStats::bump(&s.write_failures, indices.len() as u64 - stored);
        ShardStats::bump(&s.bytes_written, bytes);
        drop(pool);
        self.publish_pool_gauges();
    }

    fn get(&self, part: &BatchPart, indices: &[u32]) {
        let now = Instant::now();
        let mut pool = self.pool.borrow_mut();
        let (mut hits, mut failures, mut bytes) = (0u64, 0u64, 0u64);
        for &i in indices {
            let i = i as usize;
            // SAFETY: i < batch length (see BatchPart).
            let (hash, dst, len) =
                unsafe { (*part.hashes.add(i), *part.addrs.add(i), *part.lens.add(i)) };
            let ok = match pool.get(hash) {
                Some((src, location)) if location.len as usize == len && dst != 0 => {
                    // SAFETY: the caller vouched for [dst, dst+len); src is a live slot of len bytes.
                    unsafe { std::ptr::copy_nonoverlapping(src, dst as *mut u8, len) };
                    bytes += len as u64;
                    true
                }
                Some((_, location)) => {
                    failures += 1;
                    self.log_error(
                        now,
                        format_args!(
                            "batch_get: page {i} is {} bytes but the destination is {len} bytes at {dst:#x}; reported as a miss",
                            location.len
                        ),
                    );
                    false
                }
                None => false,
            };
            hits += u64::from(ok);
            // SAFETY: position i belongs to this part only.
            unsafe { *part.results.add(i) = ok };
        }
        let s = &self.stats;
        ShardStats::bump(&s.read_requests, indices.len() as u64);
        ShardStats::bump(&s.read_hits, hits);
        ShardStats::bump(&s.read_local_hits, hits);
        ShardStats::bump(&s.read_misses, indices.len() as u64 - hits);
        ShardStats::bump(&s.read_failures, failures);
        ShardStats::bump(&s.bytes_read, bytes);
    }

    fn exists(&self, part: &BatchPart, indices: &[u32]) {
        let pool = self.pool.borrow();
        let mut found = 0u64;
        for &i in indices {
            let i = i as usize;
            // SAFETY: i < batch length (see BatchPart).
            let present = pool.contains(unsafe { *part.hashes.add(i) });
            found += u64::from(present);
            // SAFETY: position i belongs to this part only.
            unsafe { *part.results.add(i) = present };
        }
        ShardStats::bump(&self.stats.exists_requests, indices.len() as u64);
        ShardStats::bump(&self.stats.exists_pages_found, found);
    }

    fn publish_pool_gauges(&self) {
        let c = self.pool.borrow().counters();
        let s = &self.stats;
        ShardStats::set(&s.pool_keys, c.keys);
        ShardStats::set(&s.pool_bytes_used, c.bytes_used);
        ShardStats::set(&s.pool_capacity_bytes, c.capacity_bytes);
        ShardStats::set(&s.evictions, c.evictions);
        ShardStats::set(&s.quarantine_early_reuses, c.quarantine_early_reuses);
        ShardStats::set(&s.segment_steals, c.segment_steals);
    }

    fn log_pool_error(&self, now: Instant, e: &PoolError) {
        self.log_error(now, format_args!("batch_set: page not stored: {e}"));
    }

    fn log_error(&self, now: Instant, msg: std::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.errors.borrow_mut().check(now) {
            if suppressed > 0 {
                tracing::warn!("{msg} ({suppressed} similar messages suppressed)");
            } else {
                tracing::warn!("{msg}");
            }
        }
    }
}

impl ShardService for ShardStore {
    type Job = StoreJob;

    fn handle(this: &Rc<Self>, job: StoreJob) {
        match job {
            StoreJob::Batch(part) => {
                this.run_part(&part);
                // SAFETY: the completion outlives every part (the caller waits on it).
                unsafe { (*part.done).part_done() };
            }
            StoreJob::Clear(done) => {
                this.pool.borrow_mut().clear(Instant::now());
                this.publish_pool_gauges();
                // SAFETY: as above.
                unsafe { (*done).part_done() };
            }
        }
    }
}
