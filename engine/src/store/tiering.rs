//! The shard's side of the disk tier: write-through after a set, promotion
//! (disk -> pool) for local gets, exists warming and peers' `DataPromote`,
//! and the directory bookkeeping that keeps disk-resident pages findable.
//!
//! Directory design: a page evicted from the pool but still on disk keeps its
//! directory entry, marked non-resident (length kept, pool location zeroed);
//! a page dropped from disk (LRU or failed checksum) and not in the pool has
//! its entry deleted. Both ride on the next `publish` of the shard. A reader
//! that resolves a non-resident entry sends `DataPromote` to the page's shard,
//! which promotes it and answers with a fresh resident location, then reads
//! it with the ordinary `DataRead` (generation checks included).

use super::shard::{BatchPart, ShardStore};
use super::stats::ShardStats;
use crate::disk::layout::BLOCK;
use crate::disk::WriteOutcome;
use crate::keys::KeyHash;
use crate::pool::{Insert, Location};
use glommio::sync::Semaphore;
use std::rc::Rc;
use std::time::Instant;

/// Promotes run this many at a time per shard: enough to keep the device
/// busy, few enough that one large get does not monopolise the executor.
const PROMOTE_CONCURRENCY: usize = 32;

impl ShardStore {
    /// One disk writer: takes queued (key, pool location) jobs and writes the
    /// page if the pool still holds it at that location.
    pub(super) async fn disk_writer(self: Rc<Self>) {
        let Some(disk) = self.disk.clone() else {
            return;
        };
        loop {
            let (key, location) = disk.next_write().await;
            let outcome = disk
                .write(key, location.len as usize, |dst| {
                    let pool = self.pool.borrow();
                    match pool.validate(location) {
                        Some(src) => {
                            // SAFETY: a live slot of `len` bytes in our own pool,
                            // copied synchronously (no await while borrowed).
                            unsafe {
                                std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len())
                            };
                            true
                        }
                        None => false,
                    }
                })
                .await;
            // Evicted from the pool while its write was in flight: the
            // eviction's publish found it not yet on disk and deleted its
            // entries; give it its non-resident entry now.
            if outcome == WriteOutcome::Written && !self.pool.borrow().contains(key) {
                self.promoted.borrow_mut().1.push(key);
                self.publish_promoted();
            }
        }
    }

    /// Brings `key` into the pool from disk (or finds it already there).
    /// Returns its pool location; None when it is in neither tier or its
    /// disk copy failed the checksum.
    pub(super) async fn promote(self: Rc<Self>, key: KeyHash) -> Option<Location> {
        if let Some(location) = self.pool.borrow().location(key) {
            return Some(location);
        }
        let disk = self.disk.clone()?;
        let (buf, len) = disk.read(key).await.ok()?;
        let mut evicted = Vec::new();
        let location = {
            let mut pool = self.pool.borrow_mut();
            match pool.insert(key, len, Instant::now(), &mut evicted) {
                Ok(Insert::Fresh { dst, location }) => {
                    // SAFETY: dst is a reserved slot of `len` bytes in our pool.
                    unsafe { std::ptr::copy_nonoverlapping(buf[BLOCK..].as_ptr(), dst, len) };
                    ShardStats::bump(&self.stats.promotes, 1);
                    Some(location)
                }
                Ok(Insert::Present(location)) => Some(location),
                Err(e) => {
                    self.log_error(
                        Instant::now(),
                        format_args!("promote: page not placed in the pool: {e}"),
                    );
                    None
                }
            }
        };
        let mut pending = self.promoted.borrow_mut();
        if let Some(location) = location {
            pending.0.push((0, key, location));
        }
        pending.1.extend(evicted);
        location
    }

    /// Promotes `keys`, up to [`PROMOTE_CONCURRENCY`] at a time; one
    /// location per key.
    pub(super) async fn promote_many(self: &Rc<Self>, keys: &[KeyHash]) -> Vec<Option<Location>> {
        let window = Rc::new(Semaphore::new(PROMOTE_CONCURRENCY as u64));
        let tasks: Vec<_> = keys
            .iter()
            .map(|&key| {
                let (this, window) = (Rc::clone(self), Rc::clone(&window));
                glommio::spawn_local(async move {
                    let _slot = window.acquire_permit(1).await.ok()?;
                    this.promote(key).await
                })
            })
            .collect();
        let mut out = Vec::with_capacity(keys.len());
        for task in tasks {
            out.push(task.await);
        }
        self.publish_promoted();
        out
    }

    /// Tells the directory about promotions (fresh resident locations) and
    /// the pool evictions they caused, in the background: the reader that
    /// asked already has its answer.
    pub(super) fn publish_promoted(self: &Rc<Self>) {
        let (stored, evicted) = std::mem::take(&mut *self.promoted.borrow_mut());
        if stored.is_empty() && evicted.is_empty() {
            return;
        }
        if let Some(view) = self.network_view() {
            let this = Rc::clone(self);
            glommio::spawn_local(async move {
                this.publish(&view, &stored, &evicted).await;
            })
            .detach();
        }
    }

    /// Serves pages of this part missing from the pool from the disk tier
    /// (promoting them). Returns the positions still missing.
    pub(super) async fn get_disk(
        self: &Rc<Self>,
        part: &BatchPart,
        missing: Vec<usize>,
    ) -> Vec<usize> {
        let Some(disk) = self.disk.clone() else {
            return missing;
        };
        let (candidates, mut rest): (Vec<usize>, Vec<usize>) = missing
            .into_iter()
            .partition(|&i| disk.len_of(part.hash(i)) == Some(part.len(i) as u32));
        if candidates.is_empty() {
            return rest;
        }
        // A sliding window of promotions, each page copied out as soon as it
        // is in the pool: the device never idles behind a chunk boundary, and
        // a batch larger than the pool cannot evict its own promotions before
        // they are delivered.
        let window = Rc::new(Semaphore::new(PROMOTE_CONCURRENCY as u64));
        let tasks: Vec<_> = candidates
            .iter()
            .map(|&i| {
                let (this, window) = (Rc::clone(self), Rc::clone(&window));
                let (key, dst, len) = (part.hash(i), part.addr(i), part.len(i));
                glommio::spawn_local(async move {
                    let _slot = window.acquire_permit(1).await.ok()?;
                    Rc::clone(&this).promote(key).await?;
                    let mut pool = this.pool.borrow_mut();
                    match pool.get(key) {
                        Some((src, location)) if location.len as usize == len => {
                            // SAFETY: the batch's caller vouched for [dst,
                            // dst+len) and waits for this part; src is a live
                            // slot of len bytes.
                            unsafe { std::ptr::copy_nonoverlapping(src, dst as *mut u8, len) };
                            Some(())
                        }
                        _ => None,
                    }
                })
            })
            .collect();
        // A disk that stops answering must not hold the caller: after the
        // request timeout the promotions still waiting are dropped, which
        // cancels them (each copies into the caller's page only after its
        // read, with no await in between, so a dropped one never writes
        // there later), and their pages are misses.
        let (mut hits, mut bytes) = (0u64, 0u64);
        let mut delivered = vec![false; candidates.len()];
        let collect = async {
            for (j, task) in tasks.into_iter().enumerate() {
                delivered[j] = task.await.is_some();
            }
        };
        if glommio::timer::timeout(self.id.request_timeout, async {
            collect.await;
            Ok(())
        })
        .await
        .is_err()
        {
            ShardStats::bump(&self.stats.disk_read_timeouts, 1);
            self.log_error(
                Instant::now(),
                format_args!(
                    "disk tier: reads did not finish within {:?}; their pages are misses",
                    self.id.request_timeout
                ),
            );
        }
        for (&i, ok) in candidates.iter().zip(delivered) {
            if ok {
                part.set_result(i, true);
                hits += 1;
                bytes += part.len(i) as u64;
            } else {
                // Failed its check, the pool could not hold it, or the disk
                // did not answer in time.
                rest.push(i);
            }
        }
        self.publish_promoted();
        let s = &self.stats;
        ShardStats::bump(&s.read_hits, hits);
        ShardStats::bump(&s.read_disk_hits, hits);
        ShardStats::bump(&s.bytes_read, bytes);
        rest
    }

    /// Exists warming: starts promoting disk-resident pages an exists just
    /// reported, so the get that usually follows finds them in the pool.
    pub(super) fn warm(self: &Rc<Self>, keys: Vec<KeyHash>) {
        if keys.is_empty() {
            return;
        }
        let this = Rc::clone(self);
        glommio::spawn_local(async move {
            this.promote_many(&keys).await;
            this.publish_pool_gauges();
        })
        .detach();
    }

    /// Disk keys whose directory entries should be deleted now: dropped from
    /// disk and not back in the pool.
    pub(super) fn disk_dropped(&self) -> Vec<KeyHash> {
        let Some(disk) = &self.disk else {
            return Vec::new();
        };
        let pool = self.pool.borrow();
        let mut dropped = disk.take_dropped();
        dropped.retain(|&k| !pool.contains(k) && !disk.contains(k));
        dropped
    }

    /// Length of `key`'s page on this shard's disk, if it is there.
    pub(super) fn disk_len(&self, key: KeyHash) -> Option<u32> {
        self.disk.as_ref().and_then(|d| d.len_of(key))
    }
}
