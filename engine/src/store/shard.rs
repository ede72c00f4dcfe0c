//! What a shard does with its part of a batch, and what it owns.
//!
//! A batch call is split by key hash into one [`BatchPart`] per shard. The part
//! points into the caller's arrays (the caller blocks until every part is done,
//! so those arrays outlive the part); the shard reads the entries listed in its
//! part and writes only their result bytes. Two shards never share an index, so
//! their writes never overlap.
//!
//! A shard owns, with no lock: its pool range, its part of this node's
//! directory (the same key-to-shard function places a key's page and, when
//! this node is an owner, its directory entry on the same shard), its reader
//! location cache, its channels to peers, its listener and its disk tier
//! (`tiering.rs`). The local part of
//! every operation runs synchronously; anything that crosses the network runs
//! as a glommio task on the shard (see `remote.rs` and `server.rs`).

use super::lookups::LookupQueues;
use super::owed::{Answers, Owed};
use super::stats::ShardStats;
use super::views::ViewMailbox;
use crate::cluster::ClusterView;
use crate::directory::{
    DirectoryTable, LocationCache, NodeRef, DEFAULT_CACHE_ENTRIES, HANDOFF_TTL,
};
use crate::disk::DiskTier;
use crate::keys::KeyHash;
use crate::logging::RateLimiter;
use crate::net::{Channels, FramedConn};
use crate::pool::{Insert, Location, PoolError, ShardPool};
use crate::rdma::rail::RemotePool;
use crate::rdma::shard::ShardRdma;
use crate::runtime::{BatchCompletion, ShardService};
use glommio::net::{TcpListener, TcpStream};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The operation a part performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Copy pages from `addrs` into the pool and publish them to the directory.
    Set,
    /// Copy pages from the pool (local or remote) to `addrs`.
    Get,
    /// Probe for presence anywhere in the cluster.
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
    /// This part's "asked a peer" flag (one per part, written by its shard
    /// only): a get that needed the network is timed as a remote get.
    pub remote: *mut bool,
    /// Counted down once this part is done.
    pub done: *const BatchCompletion,
    /// Set on the shard when the part runs as a task: the shard's record of
    /// the answer, which a halt after a panic gives if the task never ends
    /// (`owed.rs`). `None` when the part is submitted.
    pub owed: Option<Owed>,
}

// SAFETY: the pointers name the caller's arrays, which stay alive and unmoved
// until `done` reaches zero, and each position is written by one shard only.
// `owed` (which holds an `Rc`) is only ever set on the shard thread, after
// the part arrived there, and the part never leaves that thread again.
unsafe impl Send for BatchPart {}

impl BatchPart {
    /// The positions of this part.
    pub(super) fn indices(&self) -> &[u32] {
        // SAFETY: `indices` has `count` entries (see the struct docs).
        unsafe { std::slice::from_raw_parts(self.indices, self.count) }
    }

    pub(super) fn hash(&self, i: usize) -> KeyHash {
        // SAFETY: i < batch length.
        unsafe { *self.hashes.add(i) }
    }

    pub(super) fn addr(&self, i: usize) -> usize {
        // SAFETY: i < batch length; only read for set/get.
        unsafe { *self.addrs.add(i) }
    }

    pub(super) fn len(&self, i: usize) -> usize {
        // SAFETY: as above.
        unsafe { *self.lens.add(i) }
    }

    pub(super) fn set_result(&self, i: usize, ok: bool) {
        // SAFETY: position i belongs to this part only.
        unsafe { *self.results.add(i) = ok };
    }

    /// Records that this part asked a peer.
    pub(super) fn mark_remote(&self) {
        // SAFETY: this flag belongs to this part only.
        unsafe { *self.remote = true };
    }

    /// Hands the answer of this part to `answers` (see `owed`).
    pub(super) fn owe_to(&mut self, answers: &Rc<Answers>) {
        // SAFETY: the caller waits on `done` until this part is answered.
        self.owed = Some(unsafe { answers.owe(self.done) });
    }

    /// Marks this part done (its results are final). Dropping a part does
    /// the same, so a part its shard could not finish (the shard stopped,
    /// or its task was dropped) still answers its caller, with misses for
    /// the pages it did not reach.
    pub(super) fn complete(self) {}
}

impl Drop for BatchPart {
    fn drop(&mut self) {
        match self.owed.take() {
            // Answers unless a halt already did.
            Some(owed) => drop(owed),
            // SAFETY: the completion outlives every part (the caller waits
            // on it until every part has been dropped), and a part is
            // dropped once.
            None => unsafe { (*self.done).part_done() },
        }
    }
}

/// Jobs a store shard accepts.
#[derive(Debug)]
pub enum StoreJob {
    /// A share of a batch call.
    Batch(BatchPart),
    /// Drop every page of this shard's pool.
    Clear(*const BatchCompletion),
    /// A newer membership view was posted to the node's [`ViewMailbox`]: a
    /// wake-up only, since every job first installs the newest posted view.
    Membership,
    /// Finish every queued disk write and fdatasync the slab.
    DiskFlush(*const BatchCompletion),
    /// Register a caller's host buffer (LOCAL_WRITE) on this shard's rails;
    /// a failure is appended to `errors`.
    RegisterHostBuffer {
        /// Start of the buffer.
        addr: usize,
        /// Its length in bytes.
        len: usize,
        /// Failures, one line per shard.
        errors: *const std::sync::Mutex<Vec<String>>,
        /// Counted down once done.
        done: *const BatchCompletion,
    },
}

// SAFETY: as for BatchPart.
unsafe impl Send for StoreJob {}

/// Identity and tuning a shard needs from the node.
#[derive(Clone, Debug)]
pub struct ShardIdentity {
    /// This node's id.
    pub node_id: String,
    /// This process of it, as directory entries name it.
    pub node_ref: NodeRef,
    /// This shard's index.
    pub shard: u16,
    /// Most channels per peer endpoint.
    pub max_channels_per_peer: usize,
    /// How long one remote control exchange may take before it counts as
    /// failed (`request_timeout_ms`); a read gets more for its bytes
    /// ([`ShardIdentity::read_timeout`]).
    pub request_timeout: Duration,
    /// How long a peer that did not answer is skipped (`member_ttl`: by
    /// then a dead peer has left the membership).
    pub unreachable_skip: Duration,
    /// `directory_read_cache_ttl`.
    pub read_cache_ttl: Duration,
    /// `directory_refresh_interval` (zero: re-publish on membership
    /// changes only).
    pub directory_refresh: Duration,
    /// Where the node posts membership views, one mailbox for all its shards.
    pub views: Arc<ViewMailbox>,
}

impl ShardIdentity {
    /// How long an exchange that moves `bulk_bytes` of pages may take.
    pub fn read_timeout(&self, bulk_bytes: u64) -> Duration {
        crate::net::deadline::for_transfer(self.request_timeout, bulk_bytes)
    }
}

/// A shard of the node store.
pub struct ShardStore {
    pub(super) id: ShardIdentity,
    pub(super) node_ref: NodeRef,
    pub(super) pool: RefCell<ShardPool>,
    pub(super) directory: RefCell<DirectoryTable>,
    pub(super) cache: RefCell<LocationCache>,
    pub(super) view: RefCell<Option<Arc<ClusterView>>>,
    pub(super) channels: Channels<SocketAddr, FramedConn<TcpStream>>,
    /// Directory lookups per owner shard, merged across concurrent batches.
    pub(super) lookups: LookupQueues,
    /// Answers owed to callers by this shard's running tasks (`owed.rs`).
    answers: Rc<Answers>,
    pub(super) stats: Arc<ShardStats>,
    listener: RefCell<Option<ShardListener>>,
    /// The listening socket while the accept loop owns it, so `stop` can
    /// take it out of LISTEN at once (see there).
    listening_fd: Cell<Option<RawFd>>,
    /// Set by `stop`: the accept loop ends instead of reporting an error.
    stopping: Cell<bool>,
    /// Keys evicted by the current batch; reused across batches.
    evicted: RefCell<Vec<KeyHash>>,
    errors: RefCell<RateLimiter>,
    /// Bumped on every membership change; a re-publish of an older epoch stops.
    pub(super) epoch: Cell<u64>,
    /// The number of the membership view this shard installed last (see
    /// [`ShardIdentity::views`]).
    view_number: Cell<u64>,
    /// This shard's disk tier, when `disk_enabled` and its slab opened.
    pub(super) disk: Option<Rc<DiskTier>>,
    /// Promotions (and the pool evictions they caused) not yet published to
    /// the directory.
    #[allow(clippy::type_complexity)]
    pub(super) promoted: RefCell<(Vec<(usize, KeyHash, Location)>, Vec<KeyHash>)>,
    /// This shard's RDMA data path (its rails), when the node runs on RDMA
    /// and the rails opened.
    pub(super) rdma: Option<RefCell<Box<dyn ShardRdma>>>,
    /// What this shard knows of each peer data shard's RDMA side; cleared
    /// on every membership change.
    pub(super) rdma_peers: RefCell<HashMap<SocketAddr, PeerRdma>>,
    /// The last `RdmaConnect::seq` this shard sent.
    pub(super) rdma_connect_seq: Cell<u64>,
    /// The caller's host buffers registered with the node (address ->
    /// length; a buffer registered again replaces its entry, as its MR
    /// does), behind the `host_buffer_bytes` gauge.
    host_buffers: RefCell<HashMap<usize, usize>>,
    /// Long-lived tasks (the accept loop, one per peer connection, the disk
    /// writers), by id, cancelled when the shard stops: the executor never
    /// drops a task it stops polling, and a leaked accept loop would keep
    /// its port (bound with SO_REUSEPORT) taking connections for nobody.
    tasks: RefCell<HashMap<u64, glommio::task::JoinHandle<()>>>,
    next_task: Cell<u64>,
}

/// A peer data shard as this shard's RDMA reader knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum PeerRdma {
    /// Its pool on each rail both ends have.
    Pools(Vec<RemotePool>),
    /// It has no RDMA data path: read it over TCP until the next
    /// membership change.
    TcpOnly,
    /// The QP exchange with it failed: read it over TCP until then (or the
    /// next membership change), then try RDMA again.
    TcpUntil(std::time::Instant),
}

/// A shard's listening socket and its fd, which glommio's `TcpListener` does
/// not expose and `ShardStore::stop` needs.
pub struct ShardListener {
    /// Declared first, so it is dropped (the socket unregistered) before
    /// the listener closes its descriptor (`crate::fork`).
    _closed_in_children: Option<crate::fork::ClosedInChildren>,
    listener: TcpListener,
    fd: RawFd,
}

impl ShardListener {
    /// The address it is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener
            .local_addr()
            .map_err(|e| std::io::Error::other(e.to_string()))
    }
}

/// Binds a shard's listener on `host:port` (0: any free port) the way
/// glommio's `TcpListener::bind` does (SO_REUSEPORT, backlog 1024), keeping
/// its fd. Call it on the shard's executor thread.
pub fn listen(host: &str, port: u16) -> std::io::Result<ShardListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::ToSocketAddrs;
    let addr = (host, port).to_socket_addrs()?.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "the host has no address")
    })?;
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    let fd = std::os::fd::IntoRawFd::into_raw_fd(socket);
    // SAFETY: fd is a bound, listening TCP socket we own; the listener takes
    // it over (and closes it when dropped).
    let listener = unsafe { <TcpListener as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    Ok(ShardListener {
        _closed_in_children: crate::fork::close_in_children(fd, "shard listener"),
        listener,
        fd,
    })
}

impl ShardStore {
    /// A shard owning `pool`, serving `listener` (if any) and reporting into `stats`.
    pub fn new(
        id: ShardIdentity,
        pool: ShardPool,
        directory_entries_hint: usize,
        listener: Option<ShardListener>,
        stats: Arc<ShardStats>,
        disk: Option<DiskTier>,
        rdma: Option<Box<dyn ShardRdma>>,
    ) -> Self {
        let store = Self {
            node_ref: id.node_ref,
            channels: Channels::new(
                id.max_channels_per_peer,
                id.request_timeout,
                id.unreachable_skip,
            ),
            lookups: LookupQueues::default(),
            answers: Rc::default(),
            cache: RefCell::new(LocationCache::new(
                HANDOFF_TTL,
                id.read_cache_ttl,
                DEFAULT_CACHE_ENTRIES,
            )),
            id,
            pool: RefCell::new(pool),
            directory: RefCell::new(DirectoryTable::new(directory_entries_hint)),
            view: RefCell::new(None),
            stats,
            listener: RefCell::new(listener),
            listening_fd: Cell::new(None),
            stopping: Cell::new(false),
            evicted: RefCell::new(Vec::new()),
            errors: RefCell::new(RateLimiter::new(Duration::from_secs(10))),
            epoch: Cell::new(0),
            view_number: Cell::new(0),
            disk: disk.map(Rc::new),
            promoted: RefCell::new((Vec::new(), Vec::new())),
            rdma: rdma.map(RefCell::new),
            rdma_peers: RefCell::new(HashMap::new()),
            rdma_connect_seq: Cell::new(0),
            host_buffers: RefCell::new(HashMap::new()),
            tasks: RefCell::new(HashMap::new()),
            next_task: Cell::new(0),
        };
        store.publish_pool_gauges();
        store
    }

    /// The current cluster view, if discovery delivered one yet.
    pub(super) fn view(&self) -> Option<Arc<ClusterView>> {
        self.view.borrow().clone()
    }

    /// The current view when it has peers (alone, there is nobody to ask or tell).
    pub(super) fn network_view(&self) -> Option<Arc<ClusterView>> {
        self.view().filter(|v| v.len() > 1)
    }

    /// Stores this part's pages in the pool; returns what was stored (for the
    /// directory) and the keys evicted to make room.
    pub(super) fn set_local(
        &self,
        part: &BatchPart,
    ) -> (Vec<(usize, KeyHash, Location)>, Vec<KeyHash>) {
        let now = Instant::now();
        let indices = part.indices();
        let mut pool = self.pool.borrow_mut();
        let mut evicted = self.evicted.borrow_mut();
        evicted.clear();
        let mut stored = Vec::with_capacity(indices.len());
        let mut bytes = 0u64;
        for &i in indices {
            let i = i as usize;
            let (hash, src, len) = (part.hash(i), part.addr(i), part.len(i));
            let location = if src == 0 {
                self.log_error(
                    now,
                    format_args!("batch_set: page {i} has a null source pointer"),
                );
                None
            } else {
                match pool.insert(hash, len, now, &mut evicted) {
                    Ok(Insert::Fresh { dst, location }) => {
                        // SAFETY: the caller vouched for [src, src+len); dst is a
                        // reserved slot of at least len bytes in our own range.
                        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst, len) };
                        bytes += len as u64;
                        Some(location)
                    }
                    Ok(Insert::Present(location)) => Some(location),
                    Err(e) => {
                        self.log_pool_error(now, &e);
                        None
                    }
                }
            };
            part.set_result(i, location.is_some());
            if let Some(location) = location {
                if let Some(disk) = &self.disk {
                    // Write-through: queued, never waited for.
                    disk.enqueue(hash, location);
                }
                stored.push((i, hash, location));
            }
        }
        let s = &self.stats;
        ShardStats::bump(&s.write_requests, indices.len() as u64);
        ShardStats::bump(&s.write_failures, (indices.len() - stored.len()) as u64);
        ShardStats::bump(&s.bytes_written, bytes);
        let evicted = std::mem::take(&mut *evicted);
        drop(pool);
        self.publish_pool_gauges();
        (stored, evicted)
    }

    /// Serves this part's pages from the local pool. Returns the positions
    /// not found locally (candidates for a remote read).
    pub(super) fn get_local(&self, part: &BatchPart) -> Vec<usize> {
        let now = Instant::now();
        let mut pool = self.pool.borrow_mut();
        let mut missing = Vec::new();
        let (mut hits, mut failures, mut bytes) = (0u64, 0u64, 0u64);
        for &i in part.indices() {
            let i = i as usize;
            let (hash, dst, len) = (part.hash(i), part.addr(i), part.len(i));
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
                None => {
                    if dst != 0 && len > 0 {
                        missing.push(i);
                    }
                    false
                }
            };
            hits += u64::from(ok);
            part.set_result(i, ok);
        }
        let s = &self.stats;
        ShardStats::bump(&s.read_requests, part.count as u64);
        ShardStats::bump(&s.read_hits, hits);
        ShardStats::bump(&s.read_local_hits, hits);
        ShardStats::bump(&s.read_failures, failures);
        ShardStats::bump(&s.bytes_read, bytes);
        // Pages neither delivered nor worth asking the cluster for (wrong
        // length, null destination) are misses now; the rest are counted once
        // the remote read settles, so misses + hits always equals requests.
        ShardStats::bump(
            &s.read_misses,
            part.count as u64 - hits - missing.len() as u64,
        );
        missing
    }

    /// Marks locally present pages (in the pool or on disk); returns the
    /// positions not found locally. Pages only on disk start promoting, so
    /// the get that usually follows finds them in the pool.
    pub(super) fn exists_local(self: &Rc<Self>, part: &BatchPart) -> Vec<usize> {
        let pool = self.pool.borrow();
        let mut missing = Vec::new();
        let mut warm = Vec::new();
        for &i in part.indices() {
            let i = i as usize;
            let key = part.hash(i);
            let mut present = pool.contains(key);
            if !present && self.disk_len(key).is_some() {
                present = true;
                warm.push(key);
            }
            part.set_result(i, present);
            if !present {
                missing.push(i);
            }
        }
        drop(pool);
        ShardStats::bump(&self.stats.exists_requests, part.count as u64);
        self.warm(warm);
        missing
    }

    /// Refreshes the pool and directory gauges.
    pub(super) fn publish_pool_gauges(&self) {
        let c = self.pool.borrow().counters();
        let s = &self.stats;
        ShardStats::set(&s.pool_keys, c.keys);
        ShardStats::set(&s.pool_bytes_used, c.bytes_used);
        ShardStats::set(&s.pool_capacity_bytes, c.capacity_bytes);
        ShardStats::set(&s.evictions, c.evictions);
        ShardStats::set(&s.quarantine_early_reuses, c.quarantine_early_reuses);
        ShardStats::set(&s.segment_steals, c.segment_steals);
        if let Some(disk) = &self.disk {
            disk.publish_gauges();
        }
        ShardStats::set(&s.directory_entries, self.directory.borrow().len() as u64);
        let ch = self.channels.counters();
        ShardStats::set(&s.channels_opened, ch.opened);
        ShardStats::set(&s.channel_discards, ch.discarded);
        ShardStats::set(&s.lease_failures, ch.lease_failures);
        ShardStats::set(&s.unreachable_skips, ch.unreachable_skips);
    }

    fn log_pool_error(&self, now: Instant, e: &PoolError) {
        self.log_error(now, format_args!("batch_set: page not stored: {e}"));
    }

    /// Logs a data-path problem, at most once per 10 s per shard.
    pub(super) fn log_error(&self, now: Instant, msg: std::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.errors.borrow_mut().check(now) {
            if suppressed > 0 {
                tracing::warn!(
                    "shard {}: {msg} ({suppressed} similar messages suppressed)",
                    self.id.shard
                );
            } else {
                tracing::warn!("shard {}: {msg}", self.id.shard);
            }
        }
    }

    async fn run_part(self: Rc<Self>, part: BatchPart) {
        match part.op {
            Op::Set => {
                let (stored, evicted) = self.set_local(&part);
                if let Some(view) = self.network_view() {
                    let accepted = self.publish(&view, &stored, &evicted).await;
                    let mut failed = 0;
                    for ((i, _, _), ok) in stored.iter().zip(accepted) {
                        if !ok {
                            part.set_result(*i, false);
                            failed += 1;
                        }
                    }
                    ShardStats::bump(&self.stats.directory_put_failures, failed);
                    ShardStats::bump(&self.stats.write_failures, failed);
                }
            }
            Op::Get => {
                let missing = self.get_local(&part);
                let missing = self.get_disk(&part, missing).await;
                match self.network_view() {
                    Some(view) if !missing.is_empty() => {
                        part.mark_remote();
                        self.get_remote(&view, &part, &missing).await
                    }
                    _ => ShardStats::bump(&self.stats.read_misses, missing.len() as u64),
                }
            }
            Op::Exists => {
                let missing = self.exists_local(&part);
                let mut found = (part.count - missing.len()) as u64;
                if let Some(view) = self.network_view() {
                    if !missing.is_empty() {
                        found += self.exists_remote(&view, &part, &missing).await;
                    }
                }
                ShardStats::bump(&self.stats.exists_pages_found, found);
            }
        }
        if self.network_view().is_none() {
            // Alone, nobody holds directory entries of ours: forget the
            // disk's dropped keys (a later join re-publishes everything).
            drop(self.disk_dropped());
        }
        self.publish_pool_gauges();
        part.complete();
    }

    fn apply_view(this: &Rc<Self>, view: Arc<ClusterView>) {
        let old = this.view.borrow_mut().replace(Arc::clone(&view));
        this.epoch.set(view.epoch());
        if let Some(old) = old {
            for member in old.members() {
                if view.route(member.node_ref).is_none() {
                    let dropped = this.directory.borrow_mut().drop_node(member.node_ref);
                    for ep in &member.shard_endpoints {
                        this.channels.drop_peer(ep);
                        if let Some(rdma) = &this.rdma {
                            rdma.borrow_mut().forget(ep);
                        }
                    }
                    if let Some(rdma) = &this.rdma {
                        // The responder QPs this shard kept for it as a
                        // reader: a restarted reader is another process and
                        // would never use them again. Only members that
                        // left, so a reader whose first view reached it
                        // before it reached us keeps its fresh QPs.
                        rdma.borrow_mut().forget_reader(member.node_ref.0);
                    }
                    tracing::debug!(
                        "shard {}: {} left; dropped {dropped} directory entries",
                        this.id.shard,
                        member.node_id
                    );
                }
            }
        }
        let mut scratch = Vec::new();
        this.directory
            .borrow_mut()
            .retain_owned(|key| view.owns(key, &mut scratch));
        this.cache.borrow_mut().clear();
        // Peers read over TCP (no RDMA, failed exchange) get another chance.
        this.rdma_peers.borrow_mut().clear();
        this.publish_pool_gauges();
        let shard = Rc::clone(this);
        glommio::spawn_local(async move { shard.republish(view).await }).detach();
    }

    /// Spawns a long-lived task this shard cancels when it stops.
    fn spawn_owned(self: &Rc<Self>, task: impl std::future::Future<Output = ()> + 'static) {
        let id = self.next_task.get();
        self.next_task.set(id + 1);
        let this = Rc::downgrade(self);
        let handle = glommio::spawn_local(async move {
            task.await;
            if let Some(this) = this.upgrade() {
                this.tasks.borrow_mut().remove(&id);
            }
        })
        .detach();
        self.tasks.borrow_mut().insert(id, handle);
    }

    /// Owns `listening` until the shard stops (the task is cancelled, or
    /// never polled again after a panic).
    async fn accept_loop(self: Rc<Self>, listening: ShardListener) {
        loop {
            match listening.listener.accept().await {
                Ok(stream) => {
                    let shard = Rc::clone(&self);
                    self.spawn_owned(async move { shard.serve(stream).await });
                }
                Err(_) if self.stopping.get() => return,
                Err(e) => {
                    self.log_error(Instant::now(), format_args!("accept failed: {e}"));
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

impl ShardService for ShardStore {
    type Job = StoreJob;

    fn handle(this: &Rc<Self>, job: StoreJob) {
        #[cfg(test)]
        view_test_hooks::stall_while_armed(&this.id.node_id);
        // Before any job, so a batch never runs on a view older than the
        // newest posted, even when the wake-up for it found the inbox full.
        if let Some((number, view)) = this.id.views.newer_than(this.view_number.get()) {
            this.view_number.set(number);
            Self::apply_view(this, view);
        }
        match job {
            StoreJob::Batch(mut part) => {
                let needs_network = this.view.borrow().as_ref().is_some_and(|v| v.len() > 1);
                // The disk tier awaits I/O (promotion), so its parts run as tasks too.
                if needs_network || this.disk.is_some() {
                    part.owe_to(&this.answers);
                    glommio::spawn_local(Rc::clone(this).run_part(part)).detach();
                } else {
                    // Alone (or before discovery): everything is local and
                    // synchronous; no task to spawn.
                    run_local_only(this, part);
                }
            }
            StoreJob::Clear(done) => {
                // Owed first, so a panic below still answers (from `halt`).
                // SAFETY: the caller waits on `done` until it is answered.
                let answer = unsafe { this.answers.owe(done) };
                // What this shard held, to delete its directory entries:
                // left there, they would tell peers the pages still exist.
                let mut held = Vec::new();
                this.pool.borrow().live_entries(&mut held);
                let mut held: Vec<KeyHash> = held.into_iter().map(|(k, _)| k).collect();
                if let Some(disk) = &this.disk {
                    held.extend(disk.entries().into_iter().map(|(k, _)| k));
                }
                held.sort_unstable();
                held.dedup();
                this.pool.borrow_mut().clear(Instant::now());
                this.publish_pool_gauges();
                let this = Rc::clone(this);
                glommio::spawn_local(async move {
                    let _answer = answer;
                    if let Some(disk) = this.disk.clone() {
                        #[cfg(test)]
                        maintenance_test_hooks::maybe_panic(&this.id.node_id).await;
                        disk.clear().await;
                        this.publish_pool_gauges();
                    }
                    // After the disk is cleared: a page still on it would
                    // get a non-resident entry instead of a delete.
                    if let Some(view) = this.network_view() {
                        for chunk in held.chunks(super::remote::REPUBLISH_CHUNK) {
                            this.publish(&view, &[], chunk).await;
                        }
                    }
                })
                .detach();
            }
            StoreJob::DiskFlush(done) => {
                // SAFETY: the caller waits on `done` until it is answered.
                let answer = unsafe { this.answers.owe(done) };
                let disk = this.disk.clone();
                #[cfg(test)]
                let node_id = this.id.node_id.clone();
                glommio::spawn_local(async move {
                    let _answer = answer;
                    #[cfg(test)]
                    maintenance_test_hooks::maybe_panic(&node_id).await;
                    if let Some(disk) = disk {
                        disk.drain().await;
                    }
                })
                .detach();
            }
            // Installed above.
            StoreJob::Membership => {}
            StoreJob::RegisterHostBuffer {
                addr,
                len,
                errors,
                done,
            } => {
                let registered = match &this.rdma {
                    // SAFETY: the caller of Node::register_host_buffer
                    // vouched that the buffer stays mapped for the node's life.
                    Some(rdma) => unsafe {
                        rdma.borrow_mut().register_host_buffer(addr as *mut u8, len)
                    },
                    // Nothing to register with, but the buffer was handed
                    // over: the gauge says so on TCP as well.
                    None => Ok(()),
                };
                match registered {
                    Ok(()) => {
                        let mut buffers = this.host_buffers.borrow_mut();
                        buffers.insert(addr, len);
                        let bytes: usize = buffers.values().sum();
                        ShardStats::set(&this.stats.host_buffer_bytes, bytes as u64);
                    }
                    Err(e) => {
                        // SAFETY: the caller waits on `done`, so `errors` lives.
                        let errors = unsafe { &*errors };
                        errors
                            .lock()
                            .expect("not poisoned")
                            .push(format!("shard {}: {e}", this.id.shard));
                    }
                }
                // SAFETY: the caller waits on `done`.
                unsafe { (*done).part_done() };
            }
        }
    }

    fn abandon(job: StoreJob) {
        match job {
            // The part's drop answers it: every page it holds is a miss.
            StoreJob::Batch(part) => drop(part),
            StoreJob::Membership => {}
            // SAFETY (all three): the caller waits on `done` (and so keeps
            // `errors` alive) until it is signalled here.
            StoreJob::Clear(done) | StoreJob::DiskFlush(done) => unsafe { (*done).part_done() },
            StoreJob::RegisterHostBuffer { errors, done, .. } => unsafe {
                (*errors)
                    .lock()
                    .expect("not poisoned")
                    .push("a shard stopped after an internal error".to_owned());
                (*done).part_done();
            },
        }
    }

    fn stop(this: &Rc<Self>) {
        this.stopping.set(true);
        // Stop listening now. Dropping the listener is not enough: its
        // in-flight io_uring accept holds the socket open until the ring is
        // torn down, which the kernel finishes asynchronously after this
        // thread exits, and until then the port still completes handshakes.
        // shutdown() takes a listening TCP socket out of LISTEN at once.
        if let Some(fd) = this.listening_fd.take() {
            // SAFETY: fd is the accept loop's listener, still open: the task
            // owning it is cancelled only below.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        // Close the listener and the peer connections (their tasks drop
        // their futures once the runtime yields after this call).
        for (_, task) in this.tasks.borrow_mut().drain() {
            task.cancel();
        }
        // Destroy the QPs and deregister the MRs now, whatever still holds
        // this shard: a registration must not outlive the pool's mapping.
        if let Some(rdma) = &this.rdma {
            rdma.borrow_mut().close();
        }
    }

    fn halt(this: &Rc<Self>) {
        // READs posted by the tasks must not land in their callers' buffers
        // once those callers are released below: destroy the QPs (and with
        // them every posted READ) first. A borrow left held by the panic is
        // skipped rather than panicking again.
        if let Some(rdma) = &this.rdma {
            match rdma.try_borrow_mut() {
                Ok(mut rdma) => rdma.close(),
                Err(_) => tracing::error!(
                    "shard {}: RDMA state still borrowed after the panic; its queue pairs are closed with the shard",
                    this.id.shard
                ),
            }
        }
        // The tasks are never polled again, and glommio does not drop the
        // pending ones: answer their callers now (each with the results it
        // has, misses for the rest).
        this.answers.answer_all();
        // Out of LISTEN now, as `stop` does: peers stop connecting, and the
        // port can be bound again (the accept loop's task is never dropped).
        if let Some(fd) = this.listening_fd.take() {
            // SAFETY: the listener's task is never polled or dropped again,
            // so nothing else uses or closes this descriptor now.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
    }

    fn start(this: &Rc<Self>) {
        if let Some(listening) = this.listener.borrow_mut().take() {
            this.listening_fd.set(Some(listening.fd));
            this.spawn_owned(Rc::clone(this).accept_loop(listening));
        }
        if !this.id.directory_refresh.is_zero() {
            this.spawn_owned(Rc::clone(this).refresh_directory());
        }
        if let Some(disk) = this.disk.clone() {
            glommio::spawn_local(async move { disk.open_io().await }).detach();
            for _ in 0..crate::disk::WRITERS {
                this.spawn_owned(Rc::clone(this).disk_writer());
            }
        }
    }
}

/// A part on a node with no peers: local pool only, no await.
fn run_local_only(this: &Rc<ShardStore>, part: BatchPart) {
    match part.op {
        Op::Set => {
            // Alone there is nobody to tell: peers that join later learn these
            // pages when this shard re-publishes on the membership change.
            let _ = this.set_local(&part);
        }
        Op::Get => {
            let missing = this.get_local(&part);
            ShardStats::bump(&this.stats.read_misses, missing.len() as u64);
        }
        Op::Exists => {
            let missing = this.exists_local(&part);
            ShardStats::bump(
                &this.stats.exists_pages_found,
                (part.count - missing.len()) as u64,
            );
        }
    }
    this.publish_pool_gauges();
    part.complete();
}

/// Test hook: the next clear or disk-flush task of one node's shards
/// panics, as an internal error would.
#[cfg(test)]
pub(crate) mod maintenance_test_hooks {
    use std::sync::Mutex;

    /// The node_id whose next clear or disk-flush task panics (taken by the
    /// first such task to run). Keyed by node so tests running in parallel,
    /// whose nodes flush at shutdown, are never hit.
    pub static PANIC_NEXT: Mutex<Option<String>> = Mutex::new(None);

    pub async fn maybe_panic(node_id: &str) {
        let hit = {
            let mut armed = PANIC_NEXT.lock().unwrap();
            let hit = armed.as_deref() == Some(node_id);
            if hit {
                *armed = None;
            }
            hit
        };
        if hit {
            // Suspended once first, as a real drain is.
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
            panic!("test: a clear or disk-flush task panicked");
        }
    }
}

#[cfg(test)]
pub(crate) mod view_test_hooks {
    use std::sync::Mutex;

    /// Nodes (by `node_id`) whose shard threads block in their next job
    /// until taken off the list, as a stuck shard would (its inbox fills).
    pub static STALLED: Mutex<Vec<String>> = Mutex::new(Vec::new());

    pub fn stall_while_armed(node_id: &str) {
        while STALLED.lock().unwrap().iter().any(|id| id == node_id) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
