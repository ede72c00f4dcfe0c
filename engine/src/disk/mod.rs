//! The disk tier (L4): pages written through from the pool to a per-shard
//! O_DIRECT slab file, promoted back into the pool when read after the pool
//! evicted them, and found again after a restart.
//!
//! - `layout.rs`: the file format (geometry, header blocks, checksums).
//! - `index.rs`: which slot holds which page, free slots, LRU.
//! - `slab.rs`: creating/reopening the file and rebuilding the index at start.
//! - `claim.rs`: locking a node's directory, and removing the directories of
//!   generated-id nodes that are gone.
//! - this file: [`DiskTier`], one per shard, driving the file through the
//!   shard's glommio executor (`DmaFile`: O_DIRECT on io_uring), and the
//!   node-level set-up ([`prepare_node_dir`]).
//!
//! Writes never hold up a `set`: the shard queues (key, pool location) in a
//! bounded queue and a few writer tasks copy each page out of the pool when
//! its turn comes. A full queue, a page evicted before its turn, or a stopped
//! tier (ENOSPC) drops the write and counts it. See docs/disk.md for the
//! durability promise.

pub mod claim;
pub mod index;
pub mod layout;
pub mod slab;

use crate::config::Config;
use crate::keys::KeyHash;
use crate::pool::Location;
use crate::store::ShardStats;
use glommio::io::{DmaFile, OpenOptions, ReadResult};
use glommio::sync::Semaphore;
use index::SlabIndex;
use layout::{Geometry, SlotHeader, BLOCK};
use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Pages waiting for their disk write, per shard. At 128 KiB pages this is
/// 512 MiB of pool bytes behind the disk: past that the disk cannot keep up
/// anyway, and a longer queue would only write pages already evicted.
pub const WRITE_QUEUE_PAGES: usize = 4096;

/// How long [`DiskTier::drain`] waits with no write finishing before it
/// gives up on the rest (short in tests, which stall a disk on purpose).
pub const DRAIN_STALL_LIMIT: Duration = if cfg!(test) {
    Duration::from_secs(2)
} else {
    Duration::from_secs(30)
};

/// Concurrent writes per shard. Measured on a virtio disk with 128 KiB pages
/// (docs/performance.md): 4 and 8 left the device idle between completions
/// (68-100 % and 72-94 % of dd oflag=direct), 16 kept up (95-235 %). Half the
/// promotion window, so background writes do not crowd out reads.
pub const WRITERS: usize = 16;

/// The node's disk directory and each shard's share of `disk_size`, or None
/// (with one log line saying why) when the tier is off or unusable.
#[derive(Clone, Debug)]
pub struct NodeDisk {
    /// `disk_path/<node_id>`.
    pub dir: PathBuf,
    /// Geometry of every shard's slab.
    pub geometry: Geometry,
    /// The directory's lock; the node keeps a clone until it stops.
    pub claim: Option<Arc<claim::DirClaim>>,
}

/// Another running node holds `disk_path/<node_id>`: two live processes
/// were given the same `node_id`.
#[derive(Debug)]
pub struct DirInUse {
    /// The locked directory.
    pub dir: PathBuf,
}

/// Sets up `disk_path/<node_id>` for `shards` shards. Returns `Ok(None)`,
/// after one log line, when `disk_enabled` is false (no line), the directory
/// cannot be created, written or locked, or `disk_size` is too small to
/// split; `Err` when another running node holds the directory of this
/// configured `node_id` (the node must not start: both would write the same
/// slab files).
pub fn prepare_node_dir(
    config: &Config,
    node_id: &str,
    shards: usize,
) -> Result<Option<NodeDisk>, DirInUse> {
    if !config.disk_enabled {
        return Ok(None);
    }
    let dir = config.disk_path.join(node_id);
    let budget = config.disk_size / shards.max(1) as u64;
    let Some(geometry) = Geometry::for_budget(budget, shards as u32) else {
        tracing::warn!(
            "disk tier disabled: disk_size of {} bytes gives each of {shards} shards less than {} KiB; serving from memory only (raise disk_size)",
            config.disk_size,
            layout::MIN_SHARD_BUDGET / 1024
        );
        return Ok(None);
    };
    for gone in claim::reclaim_abandoned(&config.disk_path) {
        tracing::info!(
            "disk tier: removed {} (left by a node with a generated node_id that is no longer running; nothing could find its pages again)",
            gone.display()
        );
    }
    if let Err(e) = check_writable(&dir, node_id, shards, config.disk_size) {
        tracing::warn!(
            "disk tier disabled: cannot use {}: {e}; serving from memory only (fix disk_path or set \"disk_enabled\": false)",
            dir.display()
        );
        return Ok(None);
    }
    let claimed = if config.node_id.is_none() {
        claim::claim_generated(&dir).map(Some)
    } else {
        claim::claim_named(&dir)
    };
    let dir_claim = match claimed {
        Ok(Some(c)) => Some(Arc::new(c)),
        Ok(None) => return Err(DirInUse { dir }),
        Err(e) => {
            tracing::warn!(
                "disk tier disabled: cannot lock {}: {e}; serving from memory only",
                dir.display()
            );
            return Ok(None);
        }
    };
    if config.node_id.is_none() {
        tracing::info!(
            "disk tier: node_id is generated, so {} will not be found again after a restart (it is removed by the next node started on this disk_path once this one is gone); set node_id to keep disk pages across restarts",
            dir.display()
        );
    }
    Ok(Some(NodeDisk {
        dir,
        geometry,
        claim: dir_claim,
    }))
}

/// Creates the directory and writes a small description file: proves the
/// directory is writable before any shard relies on it.
fn check_writable(dir: &Path, node_id: &str, shards: usize, disk_size: u64) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let about = format!(
        "PeerCache disk tier of node {node_id}: {shards} slab files (shard-<i>.slab), {disk_size} bytes in all.\n"
    );
    std::fs::write(dir.join("README"), about)
}

/// Why a page could not be read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFail {
    /// Not on disk (or overwritten while being read).
    Miss,
    /// On disk but its bytes do not match its checksum: dropped.
    Corrupt,
}

/// What happened to one queued write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// On disk now.
    Written,
    /// Already on disk; nothing written.
    Present,
    /// Not written (page gone from the pool, no room, tier stopped, I/O error).
    Dropped,
}

/// One shard's disk tier.
pub struct DiskTier {
    shard: usize,
    path: PathBuf,
    geometry: Geometry,
    /// The file's identity; replaced by [`DiskTier::clear`].
    instance: Cell<u64>,
    index: RefCell<SlabIndex>,
    file: RefCell<Option<Rc<DmaFile>>>,
    /// Signalled (generously) once the file is open, or failed to open.
    opened: Semaphore,
    open_done: Cell<bool>,
    queue: RefCell<VecDeque<(KeyHash, Location)>>,
    /// Counts queued writes: writers wait on it.
    queued: Semaphore,
    /// Keys queued or being written (so a page is queued once).
    pending: RefCell<HashSet<KeyHash>>,
    in_flight: Cell<usize>,
    /// Set after ENOSPC (or a failed open): no more writes.
    stopped: Cell<bool>,
    seq: Cell<u64>,
    /// Pages this tier dropped (LRU or corrupt) whose directory entries
    /// must go; taken by the next publish.
    dropped_keys: RefCell<Vec<KeyHash>>,
    stats: Arc<ShardStats>,
    write_errors_logged: Cell<bool>,
}

impl std::fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskTier")
            .field("shard", &self.shard)
            .field("path", &self.path)
            .finish()
    }
}

impl DiskTier {
    /// Opens (or creates) shard `shard`'s slab in `disk` and rebuilds its
    /// index. Blocking: call on the shard thread before it serves.
    pub fn open(
        disk: &NodeDisk,
        shard: usize,
        stats: Arc<ShardStats>,
    ) -> std::io::Result<DiskTier> {
        let prepared = slab::prepare(&disk.dir, shard, disk.geometry)?;
        let tier = DiskTier {
            shard,
            path: prepared.path,
            geometry: disk.geometry,
            instance: Cell::new(prepared.instance),
            seq: Cell::new(prepared.index.max_seq()),
            index: RefCell::new(prepared.index),
            file: RefCell::new(None),
            opened: Semaphore::new(0),
            open_done: Cell::new(false),
            queue: RefCell::new(VecDeque::new()),
            queued: Semaphore::new(0),
            pending: RefCell::new(HashSet::new()),
            in_flight: Cell::new(0),
            stopped: Cell::new(false),
            dropped_keys: RefCell::new(Vec::new()),
            stats,
            write_errors_logged: Cell::new(false),
        };
        if let Some(e) = prepared.preallocation_error {
            tier.stop_writes(&format!(
                "cannot reserve its {} bytes: {e} (lower disk_size or free space)",
                disk.geometry.file_bytes()
            ));
        }
        let restored = tier.index.borrow().keys();
        if restored > 0 {
            tracing::info!(
                "disk tier: shard {shard}: {restored} pages found in {}",
                tier.path.display()
            );
        }
        tier.publish_gauges();
        Ok(tier)
    }

    /// Opens the slab for O_DIRECT I/O on this shard's executor. Reads and
    /// writes issued before it finishes wait for it.
    pub async fn open_io(&self) {
        let opened = OpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(&self.path)
            .await;
        match opened {
            Ok(file) => *self.file.borrow_mut() = Some(Rc::new(file)),
            Err(e) => {
                tracing::warn!(
                    "disk tier: shard {}: cannot open {} for direct I/O: {e}; this shard serves from memory only",
                    self.shard,
                    self.path.display()
                );
                self.stopped.set(true);
                ShardStats::set(&self.stats.disk_writes_stopped, 1);
            }
        }
        self.open_done.set(true);
        // Wake every waiter, now and later (they give their unit back).
        self.opened.signal(1 << 20);
    }

    async fn file(&self) -> Option<Rc<DmaFile>> {
        if !self.open_done.get() {
            let _ = self.opened.acquire(1).await;
            self.opened.signal(1);
        }
        self.file.borrow().clone()
    }

    /// Whether the page is on disk.
    pub fn contains(&self, key: KeyHash) -> bool {
        self.index.borrow().contains(key)
    }

    /// Length of the page on disk.
    pub fn len_of(&self, key: KeyHash) -> Option<u32> {
        self.index.borrow().get(key).map(|e| e.len)
    }

    /// Every page on disk as (key, length).
    pub fn entries(&self) -> Vec<(KeyHash, u32)> {
        self.index.borrow().entries()
    }

    /// Keys this tier dropped since the last call (their directory entries
    /// should be deleted).
    pub fn take_dropped(&self) -> Vec<KeyHash> {
        std::mem::take(&mut *self.dropped_keys.borrow_mut())
    }

    /// Queues `key` (now at `location` in the pool) for a disk write. Never
    /// waits: a full queue or a stopped tier drops the write and counts it.
    pub fn enqueue(&self, key: KeyHash, location: Location) {
        if self.contains(key) || self.pending.borrow().contains(&key) {
            return;
        }
        let mut queue = self.queue.borrow_mut();
        if self.stopped.get() || queue.len() >= WRITE_QUEUE_PAGES {
            ShardStats::bump(&self.stats.disk_write_drops, 1);
            return;
        }
        queue.push_back((key, location));
        self.pending.borrow_mut().insert(key);
        self.queued.signal(1);
    }

    /// Waits for the next queued write.
    pub async fn next_write(&self) -> (KeyHash, Location) {
        loop {
            let _ = self.queued.acquire(1).await;
            if let Some(job) = self.queue.borrow_mut().pop_front() {
                self.in_flight.set(self.in_flight.get() + 1);
                return job;
            }
        }
    }

    /// Writes the page of `len` bytes that `fill` copies into the slot
    /// buffer (`fill` returns false when the page is no longer in the pool).
    /// Call once per job from [`DiskTier::next_write`].
    pub async fn write(
        &self,
        key: KeyHash,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> bool,
    ) -> WriteOutcome {
        #[cfg(test)]
        if let Some(stall) = tests::write_stall_for(&self.path) {
            glommio::timer::sleep(stall).await;
        }
        let outcome = self.write_inner(key, len, fill).await;
        self.pending.borrow_mut().remove(&key);
        self.in_flight.set(self.in_flight.get() - 1);
        match outcome {
            WriteOutcome::Written => ShardStats::bump(&self.stats.disk_writes, 1),
            WriteOutcome::Dropped => ShardStats::bump(&self.stats.disk_write_drops, 1),
            WriteOutcome::Present => {}
        }
        self.publish_gauges();
        outcome
    }

    async fn write_inner(
        &self,
        key: KeyHash,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> bool,
    ) -> WriteOutcome {
        if self.contains(key) {
            return WriteOutcome::Present;
        }
        let Some(file) = self.file().await else {
            return WriteOutcome::Dropped;
        };
        if self.stopped.get() {
            return WriteOutcome::Dropped;
        }
        let slot_bytes = layout::slot_bytes_for(len);
        let mut buf = file.alloc_dma_buffer(slot_bytes);
        let bytes = buf.as_bytes_mut();
        // Copy before reserving: the copy is what can fail (page gone).
        if !fill(&mut bytes[BLOCK..BLOCK + len]) {
            return WriteOutcome::Dropped;
        }
        bytes[BLOCK + len..].fill(0);
        let seq = self.seq.get() + 1;
        self.seq.set(seq);
        let header = SlotHeader {
            key,
            len: len as u32,
            seq,
            checksum: layout::page_checksum(&bytes[BLOCK..BLOCK + len]),
        };
        let instance = self.instance.get();
        layout::encode_slot_header(bytes, instance, &header);
        let Some(r) = self.index.borrow_mut().reserve(len) else {
            return WriteOutcome::Dropped;
        };
        if let Some(victim) = r.evicted {
            ShardStats::bump(&self.stats.disk_evictions, 1);
            self.dropped_keys.borrow_mut().push(victim);
        }
        if r.new_segment {
            let mut seg = file.alloc_dma_buffer(BLOCK);
            layout::encode_segment_header(seg.as_bytes_mut(), instance, r.slot_bytes);
            let at = self.geometry.segment_offset(r.slot.segment);
            let written = self.checked_write(&file, seg, at, BLOCK).await;
            if self.instance.get() != instance {
                return WriteOutcome::Dropped; // cleared meanwhile: r belongs to the old index
            }
            if let Err(e) = written {
                self.index.borrow_mut().abort(&r);
                self.write_failed(&e);
                return WriteOutcome::Dropped;
            }
        }
        let at = self
            .geometry
            .slot_offset(r.slot.segment, r.slot.index, r.slot_bytes);
        let written = self.checked_write(&file, buf, at, slot_bytes).await;
        if self.instance.get() != instance {
            return WriteOutcome::Dropped;
        }
        match written {
            Ok(()) => {
                self.index.borrow_mut().commit(&r, key, len as u32, seq);
                WriteOutcome::Written
            }
            Err(e) => {
                self.index.borrow_mut().abort(&r);
                self.write_failed(&e);
                WriteOutcome::Dropped
            }
        }
    }

    async fn checked_write(
        &self,
        file: &DmaFile,
        buf: glommio::io::DmaBuffer,
        at: u64,
        len: usize,
    ) -> std::io::Result<()> {
        match file.write_at(buf, at).await {
            Ok(n) if n == len => Ok(()),
            // A regular file takes fewer bytes than asked only when the file
            // system ran out of room mid-write.
            Ok(n) => Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("short write: {n} of {len} bytes"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    fn write_failed(&self, e: &std::io::Error) {
        // glommio's errors keep the kind but not always the raw errno.
        if e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == std::io::ErrorKind::StorageFull {
            self.stop_writes("no space left on device");
            return;
        }
        ShardStats::bump(&self.stats.disk_write_errors, 1);
        if !self.write_errors_logged.replace(true) {
            tracing::warn!(
                "disk tier: shard {}: write to {} failed: {e}; the page stays in memory only (further write errors are counted in disk_write_errors)",
                self.shard,
                self.path.display()
            );
        }
    }

    /// Stops new writes for good (pages already on disk are still served).
    pub fn stop_writes(&self, why: &str) {
        if self.stopped.replace(true) {
            return;
        }
        ShardStats::set(&self.stats.disk_writes_stopped, 1);
        let dropped = {
            let mut queue = self.queue.borrow_mut();
            let n = queue.len();
            for (key, _) in queue.drain(..) {
                self.pending.borrow_mut().remove(&key);
            }
            n
        };
        ShardStats::bump(&self.stats.disk_write_drops, dropped as u64);
        tracing::warn!(
            "disk tier: shard {}: {}: {why}; new disk writes stopped, pages already on disk are still served",
            self.shard,
            self.path.display()
        );
    }

    /// Reads `key`'s page back and checks it against its header: the buffer
    /// holds the page at `[BLOCK, BLOCK + len)`. A page that fails the check
    /// is dropped from the index and counted in `disk_corrupt_pages`.
    pub async fn read(&self, key: KeyHash) -> Result<(ReadResult, usize), ReadFail> {
        let entry = self.index.borrow().get(key).ok_or(ReadFail::Miss)?;
        let file = self.file().await.ok_or(ReadFail::Miss)?;
        #[cfg(test)]
        if let Some(stall) = tests::read_stall_for(&self.path) {
            glommio::timer::sleep(stall).await;
        }
        let at = self
            .geometry
            .slot_offset(entry.slot.segment, entry.slot.index, entry.slot_bytes);
        let read = file.read_at_aligned(at, entry.slot_bytes).await;
        // The slot may have been evicted and rewritten while we waited: then
        // its bytes belong to another page, which is a miss, not damage.
        if self.index.borrow().get(key) != Some(entry) {
            return Err(ReadFail::Miss);
        }
        let len = entry.len as usize;
        let intact = match &read {
            Ok(buf) if buf.len() == entry.slot_bytes => {
                layout::decode_slot_header(buf, self.instance.get()).is_some_and(|h| {
                    h.key == key
                        && h.len == entry.len
                        && h.seq == entry.seq
                        && h.checksum == layout::page_checksum(&buf[BLOCK..BLOCK + len])
                })
            }
            _ => false,
        };
        if !intact {
            self.index.borrow_mut().remove(key);
            self.dropped_keys.borrow_mut().push(key);
            ShardStats::bump(&self.stats.disk_corrupt_pages, 1);
            tracing::warn!(
                "disk tier: shard {}: page {key} at offset {at} of {} failed its check{}; dropped",
                self.shard,
                self.path.display(),
                match &read {
                    Err(e) => format!(" (read error: {e})"),
                    Ok(_) => String::new(),
                }
            );
            self.publish_gauges();
            return Err(ReadFail::Corrupt);
        }
        self.index.borrow_mut().touch(key);
        Ok((read.expect("checked above"), len))
    }

    /// Waits until every queued write has finished, then makes them durable
    /// with fdatasync. A disk that stops answering must not hold the caller
    /// (`close()`, SGLang's exit): the wait gives up once no write has
    /// finished for [`DRAIN_STALL_LIMIT`], and so does the fdatasync, with a
    /// warning naming what was left unwritten. A slow disk that keeps
    /// finishing writes is waited for.
    pub async fn drain(&self) {
        let outstanding = || self.queue.borrow().len() + self.in_flight.get();
        let mut left = outstanding();
        let mut last_progress = Instant::now();
        while left > 0 {
            glommio::timer::sleep(Duration::from_millis(1)).await;
            let now_left = outstanding();
            if now_left != left {
                last_progress = Instant::now();
                left = now_left;
            } else if last_progress.elapsed() >= DRAIN_STALL_LIMIT {
                tracing::warn!(
                    "disk tier: shard {}: {left} page writes to {} made no progress for {:?}; not waiting for them (those pages are not on disk)",
                    self.shard,
                    self.path.display(),
                    DRAIN_STALL_LIMIT
                );
                return;
            }
        }
        if let Some(file) = self.file().await {
            let synced =
                glommio::timer::timeout(DRAIN_STALL_LIMIT, async { Ok(file.fdatasync().await) })
                    .await;
            let failure = match synced {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {DRAIN_STALL_LIMIT:?}"),
            };
            tracing::warn!(
                "disk tier: shard {}: fdatasync of {} failed: {failure}",
                self.shard,
                self.path.display()
            );
        }
    }

    /// Forgets every page: a new file instance is written to the file header,
    /// so no slot header of the old one counts again, now or after a restart.
    pub async fn clear(&self) {
        let queued: Vec<KeyHash> = self.queue.borrow_mut().drain(..).map(|(k, _)| k).collect();
        {
            let mut pending = self.pending.borrow_mut();
            for key in queued {
                pending.remove(&key);
            }
        }
        let instance = crate::cluster::random_u64();
        self.instance.set(instance);
        *self.index.borrow_mut() = SlabIndex::new(self.geometry);
        self.dropped_keys.borrow_mut().clear();
        self.publish_gauges();
        if let Some(file) = self.file().await {
            let mut block = file.alloc_dma_buffer(BLOCK);
            layout::encode_file_header(block.as_bytes_mut(), &self.geometry, instance);
            let written = self.checked_write(&file, block, 0, BLOCK).await;
            if let Err(e) = written.and(file.fdatasync().await.map_err(Into::into)) {
                tracing::warn!(
                    "disk tier: shard {}: clear could not rewrite the header of {}: {e}; pages on disk may come back after a restart",
                    self.shard,
                    self.path.display()
                );
            }
        }
    }

    /// Refreshes the disk gauges.
    pub fn publish_gauges(&self) {
        let ix = self.index.borrow();
        let s = &self.stats;
        ShardStats::set(&s.disk_keys, ix.keys());
        ShardStats::set(&s.disk_bytes_used, ix.bytes_used());
        ShardStats::set(&s.disk_capacity_bytes, self.geometry.file_bytes());
    }

    /// Where the slab file is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests;
