//! The network half of a shard's batch work: what a shard asks its peers.
//!
//! Everything is batched per peer endpoint: one `DirPut` (+ one `DirDelete`
//! for the batch's evictions, pipelined on the same channel) per directory
//! owner shard, one `DirGet` per owner shard per lookup round, one `DataRead`
//! (or one RDMA READ batch, `rdma_read.rs`) per data shard. Requests to
//! different peers run concurrently as tasks on this shard's executor. A failed or timed-out exchange makes its pages
//! misses (`false`), never an error, and discards the channel.

use super::shard::{BatchPart, ShardStore};
use super::stats::ShardStats;
use crate::cluster::ClusterView;
use crate::directory::{DirLocation, NodeRef};
use crate::keys::KeyHash;
use crate::net::{FramedConn, LeaseError};
use crate::pool::Location;
use crate::wire::{
    self, BulkDest, BulkPlan, BulkSegment, DataPromote, DataPromoteReply, DataRead, DataReadReply,
    DirDelete, DirDeleteAck, DirEntry, DirPut, DirPutAck, ErrorReply, Hello, HelloAck, Kind,
    Purpose, ReadItem, ReadStatus, WireError, WireMessage, MAX_BULK_BYTES, PROTOCOL_VERSION,
};
use glommio::net::TcpStream;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Directory entries per request of a re-publish (membership change,
/// refresh) or of the deletes after a clear.
pub(super) const REPUBLISH_CHUNK: usize = 4096;

/// A peer's refusal, carried as an I/O error so it flows through `WireError`.
fn peer_error(reply: &ErrorReply) -> WireError {
    WireError::Io(std::io::Error::other(format!(
        "peer answered error {}: {}",
        reply.code, reply.message
    )))
}

/// Why one attempt of an exchange failed.
struct ExchangeFailure {
    /// The peer is skipped as unreachable: nothing was sent.
    skipped: bool,
    /// The peer did not answer (no reply in time, or it cut the connection
    /// mid-exchange): skip it for a while.
    unanswered: bool,
    /// The channel was an idle one its peer had closed: worth one retry.
    stale_channel: bool,
    reason: String,
}

/// Whether `e` says the peer's end of the stream is gone (closed or reset),
/// rather than that the peer answered something wrong.
fn closed_by_peer(e: &WireError) -> bool {
    use std::io::ErrorKind::*;
    match e {
        WireError::Closed | WireError::Truncated { .. } => true,
        WireError::Io(io) => matches!(
            io.kind(),
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof | NotConnected
        ),
        _ => false,
    }
}

/// Receives the reply to request `id` and decodes it as `T` (or the peer's error).
pub(super) async fn expect_reply<T: WireMessage>(
    conn: &mut FramedConn<TcpStream>,
    id: u64,
) -> Result<T, WireError> {
    let header = conn.recv().await?;
    if header.kind == Kind::Error {
        return Err(peer_error(&wire::decode_owned::<ErrorReply>(conn.meta())?));
    }
    header.expect_kind(T::KIND)?;
    // Every reply read here ends its exchange: bulk announced after it
    // would stay unread on the channel and garble the next exchange on it.
    if header.bulk_len != 0 {
        return Err(WireError::UnexpectedBulk {
            kind: header.kind,
            len_bytes: header.bulk_len,
        });
    }
    if header.request_id != id {
        return Err(WireError::Io(std::io::Error::other(format!(
            "reply to request {} arrived where {id} was expected",
            header.request_id
        ))));
    }
    wire::decode_owned::<T>(conn.meta())
}

async fn connect(
    ep: SocketAddr,
    node_id: String,
    timeout: Duration,
) -> Result<FramedConn<TcpStream>, String> {
    let stream = TcpStream::connect_timeout(ep, timeout)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut conn = FramedConn::new(stream);
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        node_id,
        purpose: Purpose::Data,
    };
    let handshake = glommio::timer::timeout(timeout, async {
        let id = conn.next_id();
        let r = async {
            conn.send(&hello, id, &[]).await?;
            expect_reply::<HelloAck>(&mut conn, id).await
        }
        .await;
        Ok(r)
    })
    .await;
    match handshake {
        Ok(Ok(_)) => Ok(conn),
        Ok(Err(e)) => Err(format!("handshake: {e}")),
        Err(_) => Err(format!("handshake: no answer within {timeout:?}")),
    }
}

/// `put_index` of a non-resident entry (not one of the batch's stored pages).
const NOT_STORED: usize = usize::MAX;

/// The writes of one batch to one directory owner shard.
struct OwnerWrites {
    put: DirPut,
    /// For each entry of `put`: its index in the batch's stored list, or
    /// [`NOT_STORED`].
    put_index: Vec<usize>,
    delete: DirDelete,
}

impl OwnerWrites {
    fn new(node: NodeRef) -> Self {
        Self {
            put: DirPut {
                entries: Vec::new(),
            },
            put_index: Vec::new(),
            delete: DirDelete {
                node: node.0,
                keys: Vec::new(),
            },
        }
    }
}

/// What one page of a remote read came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PageRead {
    /// Its bytes are in the destination, and the owner confirmed afterwards
    /// that the slot still held the page.
    Delivered,
    /// The owner no longer holds the page at the resolved slot (evicted or
    /// rewritten since the location was published): a plain miss.
    Gone,
    /// The transfer itself failed: the exchange errored or timed out, the
    /// connection died, an RDMA READ completed with an error or was never
    /// posted. Counted in `read_failures` when a retry does not recover it.
    Failed,
}

/// The reads of one batch from one data shard.
pub(super) struct DataReads {
    pub(super) endpoint: SocketAddr,
    pub(super) request: DataRead,
    /// Destination (address, length), batch position and resolved location
    /// of each item.
    pub(super) targets: Vec<(usize, usize, usize, DirLocation)>,
}

/// The `DataRead`s of one batch: one per data shard, split where a reply
/// would pass `max_bytes` of pages.
struct ReadGroups {
    max_bytes: u64,
    /// Per data shard, the read being filled and its bytes so far.
    open: HashMap<(NodeRef, u16), (DataReads, u64)>,
    full: Vec<DataReads>,
}

impl ReadGroups {
    fn new(max_bytes: u64) -> Self {
        ReadGroups {
            max_bytes,
            open: HashMap::new(),
            full: Vec::new(),
        }
    }

    /// Adds the read of `target` (destination address, length, batch
    /// position, location) from the shard at `endpoint`.
    fn push(&mut self, endpoint: SocketAddr, target: (usize, usize, usize, DirLocation)) {
        let (_, len, _, loc) = target;
        let new_reads = || DataReads {
            endpoint,
            request: DataRead {
                node: loc.node.0,
                items: Vec::new(),
            },
            targets: Vec::new(),
        };
        let (reads, bytes) = self
            .open
            .entry((loc.node, loc.shard))
            .or_insert_with(|| (new_reads(), 0));
        // A server frames at most MAX_BULK_BYTES in one reply and drops the
        // connection when asked for more (so the reader would take it for a
        // dead peer): larger shares of a batch travel as several reads.
        if *bytes + len as u64 > self.max_bytes && !reads.targets.is_empty() {
            self.full.push(std::mem::replace(reads, new_reads()));
            *bytes = 0;
        }
        *bytes += len as u64;
        reads
            .request
            .items
            .push(ReadItem::from(loc.pool_location()));
        reads.targets.push(target);
    }

    fn into_reads(self) -> impl Iterator<Item = DataReads> {
        self.full
            .into_iter()
            .chain(self.open.into_values().map(|(reads, _)| reads))
    }
}

impl ShardStore {
    /// Runs `exchange` on a leased channel to `ep`, bounded by `timeout`
    /// (the request timeout, or [`ShardIdentity::read_timeout`] for a read).
    /// A failure discards the channel and is counted and logged.
    ///
    /// A channel that sat idle may belong to a peer process that has stopped
    /// since, even one restarted behind the same endpoint. It then fails at
    /// once, closed or reset, which says nothing about the peer now: such a
    /// failure drops the peer's other idle channels (as old as this one) and
    /// the exchange runs once more on a new channel. Every request of the
    /// protocol is idempotent, so running one twice is safe.
    pub(super) async fn exchange<T>(
        &self,
        ep: SocketAddr,
        timeout: Duration,
        exchange: impl AsyncFn(&mut FramedConn<TcpStream>) -> Result<T, WireError>,
    ) -> Result<T, String> {
        let mut result = self.exchange_once(ep, timeout, &exchange).await;
        if let Err(ExchangeFailure {
            stale_channel: true,
            ..
        }) = &result
        {
            self.channels.forget(&ep);
            result = self.exchange_once(ep, timeout, &exchange).await;
        }
        result.map_err(|failure| {
            // A peer that did not answer is skipped for a while, so the
            // batches after this one do not wait out the same timeouts.
            if failure.unanswered {
                self.channels.mark_unreachable(&ep);
            }
            ShardStats::bump(&self.stats.remote_failures, 1);
            if !failure.skipped {
                self.log_error(
                    Instant::now(),
                    format_args!("exchange with {ep} failed: {}", failure.reason),
                );
            }
            failure.reason
        })
    }

    /// One attempt of [`exchange`](Self::exchange).
    async fn exchange_once<T, F>(
        &self,
        ep: SocketAddr,
        timeout: Duration,
        exchange: &F,
    ) -> Result<T, ExchangeFailure>
    where
        F: AsyncFn(&mut FramedConn<TcpStream>) -> Result<T, WireError>,
    {
        let connect_timeout = self.id.request_timeout;
        let node_id = self.id.node_id.clone();
        let mut lease = self
            .channels
            .lease(&ep, || connect(ep, node_id, connect_timeout))
            .await
            .map_err(|e| ExchangeFailure {
                skipped: matches!(e, LeaseError::Unreachable { .. }),
                // A failed connect already marked the peer in `lease`.
                unanswered: false,
                stale_channel: false,
                reason: e.to_string(),
            })?;
        let reused = lease.reused();
        let outcome =
            glommio::timer::timeout(timeout, async { Ok(exchange(lease.channel()).await) }).await;
        match outcome {
            Ok(Ok(v)) => {
                self.channels.release(lease);
                Ok(v)
            }
            Ok(Err(e)) => {
                self.channels.discard(lease);
                // An idle channel its peer closed meanwhile says nothing
                // about the peer: the caller retries on a fresh one.
                let stale_channel = reused && closed_by_peer(&e);
                Err(ExchangeFailure {
                    skipped: false,
                    unanswered: !stale_channel && closed_by_peer(&e),
                    stale_channel,
                    reason: e.to_string(),
                })
            }
            Err(_) => {
                self.channels.discard(lease);
                Err(ExchangeFailure {
                    skipped: false,
                    unanswered: true,
                    stale_channel: false,
                    reason: format!("no reply within {timeout:?}"),
                })
            }
        }
    }

    /// Publishes `stored` pages to every directory owner, and the pages that
    /// left the pool (`evicted`) or the disk tier: a page evicted from the
    /// pool but on disk gets a non-resident entry, any other page that left
    /// both tiers is deleted. Returns, per stored page, whether at least one
    /// owner accepted its entry.
    ///
    /// Writes about one page may travel on different channels and overtake
    /// each other: a put sent while the page was being evicted (its delete
    /// already out), or a delete sent while the page came back, can land
    /// last and leave the owner with the wrong word, which nothing would
    /// correct. So once these writes are answered, the pages whose state
    /// changed meanwhile are published again; those writes land after.
    pub(super) async fn publish(
        self: &Rc<Self>,
        view: &ClusterView,
        stored: &[(usize, KeyHash, Location)],
        evicted: &[KeyHash],
    ) -> Vec<bool> {
        let accepted = self.publish_once(view, stored, evicted).await;
        let (moved, back) = {
            let pool = self.pool.borrow();
            let moved: Vec<KeyHash> = stored
                .iter()
                .filter(|&&(_, k, l)| pool.location(k) != Some(l))
                .map(|&(_, k, _)| k)
                .collect();
            let back: Vec<(usize, KeyHash, Location)> = evicted
                .iter()
                .filter_map(|&k| pool.location(k).map(|l| (0, k, l)))
                .collect();
            (moved, back)
        };
        if !moved.is_empty() || !back.is_empty() {
            self.publish_once(view, &back, &moved).await;
        }
        accepted
    }

    /// One round of [`publish`](Self::publish)'s writes.
    async fn publish_once(
        self: &Rc<Self>,
        view: &ClusterView,
        stored: &[(usize, KeyHash, Location)],
        evicted: &[KeyHash],
    ) -> Vec<bool> {
        let mut accepted = vec![false; stored.len()];
        let mut groups: HashMap<SocketAddr, OwnerWrites> = HashMap::new();
        let mut owners = Vec::new();
        let shard = self.id.shard;
        {
            let mut dir = self.directory.borrow_mut();
            for (j, &(_, key, location)) in stored.iter().enumerate() {
                view.owners_into(key, &mut owners);
                for &o in &owners {
                    let route = view.route_at(o);
                    if route.node_ref == self.node_ref {
                        let loc = DirLocation::from_pool(self.node_ref, shard, location, true);
                        accepted[j] |= dir.put(key, loc).is_ok();
                    } else if let Some(ep) = route.endpoint_for(key) {
                        let g = groups
                            .entry(ep)
                            .or_insert_with(|| OwnerWrites::new(self.node_ref));
                        g.put.entries.push(DirEntry::new(
                            key,
                            self.node_ref.0,
                            shard,
                            location,
                            true,
                        ));
                        g.put_index.push(j);
                    }
                }
            }
            let dropped = self.disk_dropped();
            let pool = self.pool.borrow();
            for &key in evicted.iter().chain(&dropped) {
                if pool.contains(key) {
                    continue; // back in the pool: its resident entry stands
                }
                let on_disk = self.disk_len(key).map(|len| Location {
                    offset: 0,
                    generation: 0,
                    len,
                });
                view.owners_into(key, &mut owners);
                for &o in &owners {
                    let route = view.route_at(o);
                    if route.node_ref == self.node_ref {
                        match on_disk {
                            Some(l) => {
                                let loc = DirLocation::from_pool(self.node_ref, shard, l, false);
                                let _ = dir.offer(key, loc);
                            }
                            None => {
                                dir.remove_if_node(key, self.node_ref);
                            }
                        }
                    } else if let Some(ep) = route.endpoint_for(key) {
                        let g = groups
                            .entry(ep)
                            .or_insert_with(|| OwnerWrites::new(self.node_ref));
                        match on_disk {
                            Some(l) => {
                                g.put.entries.push(DirEntry::new(
                                    key,
                                    self.node_ref.0,
                                    shard,
                                    l,
                                    false,
                                ));
                                g.put_index.push(NOT_STORED);
                            }
                            None => g.delete.keys.push(key.to_be_bytes()),
                        }
                    }
                }
            }
        }
        let tasks: Vec<_> = groups
            .into_iter()
            .map(|(ep, writes)| {
                let this = Rc::clone(self);
                glommio::spawn_local(async move {
                    let ok = this
                        .exchange(ep, this.id.request_timeout, async |conn| {
                            let (mut put_id, mut del_id) = (None, None);
                            if !writes.put.entries.is_empty() {
                                let id = conn.next_id();
                                conn.send(&writes.put, id, &[]).await?;
                                put_id = Some(id);
                            }
                            if !writes.delete.keys.is_empty() {
                                let id = conn.next_id();
                                conn.send(&writes.delete, id, &[]).await?;
                                del_id = Some(id);
                            }
                            // Both requests are in flight; replies come in order.
                            if let Some(id) = put_id {
                                expect_reply::<DirPutAck>(conn, id).await?;
                            }
                            if let Some(id) = del_id {
                                expect_reply::<DirDeleteAck>(conn, id).await?;
                            }
                            Ok(())
                        })
                        .await
                        .is_ok();
                    (writes.put_index, ok)
                })
            })
            .collect();
        for task in tasks {
            let (indexes, ok) = task.await;
            if ok {
                for j in indexes.into_iter().filter(|&j| j != NOT_STORED) {
                    accepted[j] = true;
                }
            }
        }
        accepted
    }

    /// Resolves `keys` through the directory: the local table when this node
    /// is one of a key's owners (whatever its rank among them), else one
    /// `DirGet` per owner shard (shared with the lookups of batches running
    /// at the same time, see `lookups.rs`), trying the next replica for keys
    /// still unresolved. Entries of nodes outside `view` or skipped as
    /// unreachable, and of this node (whose pool and disk were already
    /// checked), are not locations. Non-resident entries are (the page is on
    /// its node's disk).
    pub(super) async fn lookup(
        self: &Rc<Self>,
        view: &ClusterView,
        keys: &[KeyHash],
    ) -> Vec<Option<DirLocation>> {
        let mut found: Vec<Option<DirLocation>> = vec![None; keys.len()];
        let mut pending: Vec<usize> = (0..keys.len()).collect();
        let mut owners = Vec::new();
        // A location on a peer skipped as unreachable is not one either: the
        // read would fail at once, and exists must not count it.
        let usable = |loc: DirLocation| {
            let endpoint = view
                .route(loc.node)
                .and_then(|r| r.endpoint_of_shard(loc.shard))?;
            (loc.node != self.node_ref && self.channels.skipped_for(&endpoint).is_none())
                .then_some(loc)
        };
        // A replica held here answers first: every owner receives the same
        // puts and deletes, so asking a remote owner ahead of it would only
        // add a network round trip (with 2 replicas on 2 nodes, one for half
        // the keys). Keys it does not know go to the other owners below.
        {
            let dir = self.directory.borrow();
            pending.retain(|&j| {
                view.owners_into(keys[j], &mut owners);
                if owners
                    .iter()
                    .any(|&o| view.route_at(o).node_ref == self.node_ref)
                {
                    found[j] = dir.get(keys[j]).and_then(usable);
                }
                found[j].is_none()
            });
        }
        for round in 0..view.replicas() {
            if pending.is_empty() {
                break;
            }
            let mut groups: HashMap<SocketAddr, (Vec<[u8; 16]>, Vec<usize>)> = HashMap::new();
            for &j in &pending {
                view.owners_into(keys[j], &mut owners);
                let Some(&o) = owners.get(round) else {
                    continue;
                };
                let route = view.route_at(o);
                if route.node_ref == self.node_ref {
                    continue; // the local table was asked above
                }
                if let Some(ep) = route.endpoint_for(keys[j]) {
                    let g = groups.entry(ep).or_default();
                    g.0.push(keys[j].to_be_bytes());
                    g.1.push(j);
                }
            }
            let tasks: Vec<_> = groups
                .into_iter()
                .map(|(ep, (keys, index))| {
                    let this = Rc::clone(self);
                    glommio::spawn_local(async move {
                        let (outcome, range) = this.dir_get(ep, &keys).await;
                        (index, keys, outcome, range)
                    })
                })
                .collect();
            for task in tasks {
                let (index, keys, outcome, range) = task.await;
                let Ok(reply) = &*outcome else { continue };
                let Some(entries) = reply.entries.get(range) else {
                    continue; // a reply shorter than its request: all unresolved
                };
                for ((j, key), entry) in index.into_iter().zip(&keys).zip(entries) {
                    found[j] = entry_for(entry, key).map(to_location).and_then(usable);
                }
            }
            pending.retain(|&j| found[j].is_none());
        }
        found
    }

    /// Exists for pages not in the local pool: directory lookup; resolved
    /// locations are kept for the get that usually follows (the handoff).
    pub(super) async fn exists_remote(
        self: &Rc<Self>,
        view: &ClusterView,
        part: &BatchPart,
        missing: &[usize],
    ) -> u64 {
        let keys: Vec<KeyHash> = missing.iter().map(|&i| part.hash(i)).collect();
        let locations = self.lookup(view, &keys).await;
        // Pages on their owner's disk: have the owner promote them now (the
        // exists warming), so the get that follows reads them from memory.
        let mut resolved: Vec<(usize, DirLocation)> = Vec::with_capacity(keys.len());
        let mut on_disk = Vec::new();
        for (&i, location) in missing.iter().zip(locations) {
            match location {
                Some(l) if l.resident => resolved.push((i, l)),
                Some(l) => on_disk.push((i, part.hash(i), l)),
                None => {}
            }
        }
        resolved.extend(self.promote_remote(view, on_disk).await);
        let now = Instant::now();
        let mut cache = self.cache.borrow_mut();
        for &(i, location) in &resolved {
            part.set_result(i, true);
            cache.insert(part.hash(i), location, now);
        }
        resolved.len() as u64
    }

    /// Get for pages not in the local pool: resolve (handoff, read cache,
    /// directory), then one `DataRead` per data shard, received straight into
    /// the destinations.
    pub(super) async fn get_remote(
        self: &Rc<Self>,
        view: &ClusterView,
        part: &BatchPart,
        missing: &[usize],
    ) {
        let now = Instant::now();
        let mut resolved: Vec<(usize, DirLocation)> = Vec::with_capacity(missing.len());
        let mut unresolved: Vec<usize> = Vec::new();
        {
            let mut cache = self.cache.borrow_mut();
            for &i in missing {
                let key = part.hash(i);
                match cache.take(key, now).or_else(|| cache.get(key, now)) {
                    Some(loc) if view.route(loc.node).is_some() => resolved.push((i, loc)),
                    _ => unresolved.push(i),
                }
            }
        }
        ShardStats::bump(&self.stats.directory_lookups_saved, resolved.len() as u64);
        if !unresolved.is_empty() {
            let keys: Vec<KeyHash> = unresolved.iter().map(|&i| part.hash(i)).collect();
            let locations = self.lookup(view, &keys).await;
            resolved.extend(
                unresolved
                    .iter()
                    .zip(locations)
                    .filter_map(|(&i, l)| l.map(|l| (i, l))),
            );
        }
        // A page found with another length than its destination is not
        // read (a miss and a read failure, as for a local page).
        let (mut wrong_length, mut first_wrong) = (0u64, None);
        resolved.retain(|&(i, l)| {
            let fits = l.len as usize == part.len(i);
            if !fits {
                wrong_length += 1;
                first_wrong.get_or_insert((i, l));
            }
            fits
        });
        if let Some((i, l)) = first_wrong {
            self.log_error(
                now,
                format_args!(
                    "batch_get: page {i} is {} bytes on {} but the destination is {} bytes; reported as a miss ({} such page(s) in this batch)",
                    l.len,
                    view.route(l.node).map_or("a departed node", |r| r.node_id.as_str()),
                    part.len(i),
                    wrong_length
                ),
            );
        }
        let mut failures = wrong_length;
        // Non-resident entries: the owner promotes, then we read as usual.
        let (mut resolved, on_disk): (Vec<_>, Vec<_>) =
            resolved.into_iter().partition(|(_, l)| l.resident);
        let on_disk: Vec<(usize, KeyHash, DirLocation)> = on_disk
            .into_iter()
            .map(|(i, l)| (i, part.hash(i), l))
            .collect();
        resolved.extend(self.promote_remote(view, on_disk).await);

        let (mut hits, mut bytes, undelivered) = self.read_resolved(view, part, &resolved).await;
        // A page its owner evicted since it was resolved (a stale handoff or
        // cache entry, a race with a set) may be on the owner's disk, and a
        // transfer may fail once: one promote-and-read retry before either
        // counts as a miss.
        if !undelivered.is_empty() {
            let retry = undelivered
                .iter()
                .map(|&(i, loc, _)| (i, part.hash(i), loc))
                .collect();
            let fresh = self.promote_remote(view, retry).await;
            let (h, b, still) = self.read_resolved(view, part, &fresh).await;
            hits += h;
            bytes += b;
            // A read failure is a page whose last transfer failed: one the
            // retry delivered, or found gone, is not. Indexed by batch
            // position (the retried pages are a subset of the undelivered).
            let end = undelivered.iter().map(|&(i, _, _)| i + 1).max();
            let mut transfer_failed = vec![false; end.unwrap_or(0)];
            for &(i, _, outcome) in &undelivered {
                transfer_failed[i] = outcome == PageRead::Failed;
            }
            for &(i, _) in &fresh {
                transfer_failed[i] = false;
            }
            for &(i, _, outcome) in &still {
                transfer_failed[i] = outcome == PageRead::Failed;
            }
            failures += transfer_failed.iter().filter(|&&f| f).count() as u64;
            let mut cache = self.cache.borrow_mut();
            for &(i, _, _) in &undelivered {
                cache.invalidate(part.hash(i));
            }
        }
        let s = &self.stats;
        ShardStats::bump(&s.read_hits, hits);
        ShardStats::bump(&s.read_remote_hits, hits);
        ShardStats::bump(&s.bytes_read, bytes);
        ShardStats::bump(&s.read_misses, missing.len() as u64 - hits);
        ShardStats::bump(&s.read_failures, failures);
    }

    /// Reads resolved pages (each of its destination's length): one
    /// `DataRead` per data shard, concurrently, straight into the
    /// destinations. Returns hits, bytes, and the pages not delivered with
    /// what became of them (gone from their slot, or a failed transfer).
    async fn read_resolved(
        self: &Rc<Self>,
        view: &ClusterView,
        part: &BatchPart,
        resolved: &[(usize, DirLocation)],
    ) -> (u64, u64, Vec<(usize, DirLocation, PageRead)>) {
        let mut undelivered = Vec::new();
        let mut groups = ReadGroups::new(u64::from(MAX_BULK_BYTES));
        for &(i, loc) in resolved {
            let len = part.len(i);
            if loc.len as usize != len {
                // Rewritten with another length since it was resolved.
                undelivered.push((i, loc, PageRead::Gone));
                continue;
            }
            let Some(endpoint) = view
                .route(loc.node)
                .and_then(|r| r.endpoint_of_shard(loc.shard))
            else {
                continue;
            };
            groups.push(endpoint, (part.addr(i), len, i, loc));
        }
        let tasks: Vec<_> = groups
            .into_reads()
            .map(|reads| {
                let this = Rc::clone(self);
                glommio::spawn_local(async move {
                    // One-sided READs when both ends have RDMA, else TCP.
                    let outcomes = match this.read_pages_rdma(&reads).await {
                        Some(outcomes) => outcomes,
                        None => this.read_pages(&reads).await,
                    };
                    (reads, outcomes)
                })
            })
            .collect();
        let (mut hits, mut bytes) = (0u64, 0u64);
        for task in tasks {
            let (reads, outcomes) = task.await;
            for (&(_, len, i, loc), outcome) in reads.targets.iter().zip(outcomes) {
                if outcome == PageRead::Delivered {
                    part.set_result(i, true);
                    hits += 1;
                    bytes += len as u64;
                } else {
                    undelivered.push((i, loc, outcome));
                }
            }
        }
        (hits, bytes, undelivered)
    }

    /// Asks the owners of non-resident pages to promote them: one
    /// `DataPromote` per data shard, concurrently. Returns the fresh
    /// resident locations of the pages that made it back into memory.
    pub(super) async fn promote_remote(
        self: &Rc<Self>,
        view: &ClusterView,
        items: Vec<(usize, KeyHash, DirLocation)>,
    ) -> Vec<(usize, DirLocation)> {
        let mut groups: HashMap<SocketAddr, (DataPromote, Vec<usize>)> = HashMap::new();
        for (i, key, loc) in items {
            let Some(ep) = view
                .route(loc.node)
                .and_then(|r| r.endpoint_of_shard(loc.shard))
            else {
                continue;
            };
            let g = groups
                .entry(ep)
                .or_insert_with(|| (DataPromote { keys: Vec::new() }, Vec::new()));
            g.0.keys.push(key.to_be_bytes());
            g.1.push(i);
        }
        let tasks: Vec<_> = groups
            .into_iter()
            .map(|(ep, (request, index))| {
                let this = Rc::clone(self);
                glommio::spawn_local(async move {
                    let reply = this
                        .exchange(ep, this.id.request_timeout, async |conn| {
                            let id = conn.next_id();
                            conn.send(&request, id, &[]).await?;
                            expect_reply::<DataPromoteReply>(conn, id).await
                        })
                        .await
                        .map(|reply| (request.keys, reply));
                    (index, reply)
                })
            })
            .collect();
        let mut fresh = Vec::new();
        for task in tasks {
            let (index, reply) = task.await;
            let Ok((keys, reply)) = reply else { continue };
            for ((i, key), entry) in index.into_iter().zip(&keys).zip(&reply.entries) {
                if let Some(loc) = entry_for(entry, key)
                    .map(to_location)
                    .filter(|l| l.resident)
                {
                    fresh.push((i, loc));
                }
            }
        }
        fresh
    }

    /// One `DataRead` exchange. Returns, per item, whether its bytes arrived
    /// and were still valid after the server finished sending them.
    async fn read_pages(&self, reads: &DataReads) -> Vec<PageRead> {
        let n = reads.request.items.len();
        // The pages' bytes get time of their own on top of the request
        // timeout: a large batch on a slow link is not a dead peer.
        let bytes: u64 = reads.targets.iter().map(|&(_, len, _, _)| len as u64).sum();
        let timeout = self.id.read_timeout(bytes);
        let result = self
            .exchange(reads.endpoint, timeout, async |conn| {
                let id = conn.next_id();
                conn.send(&reads.request, id, &[]).await?;
                // Exact reads: the pages that follow go straight in place.
                let header = conn.recv_before_bulk().await?;
                if header.kind == Kind::Error {
                    return Err(peer_error(&wire::decode_owned::<ErrorReply>(conn.meta())?));
                }
                // SAFETY: the batch's caller vouched for each destination and
                // blocks until this part completes.
                let mut dests: Vec<BulkDest<'_>> = reads
                    .targets
                    .iter()
                    .map(|&(addr, len, _, _)| unsafe { BulkDest::from_raw(addr as *mut u8, len) })
                    .collect();
                let segments: Vec<BulkSegment> = {
                    let reply = wire::decode_meta::<DataReadReply>(conn.meta())?;
                    let plan = BulkPlan::new(&header, reply, &reads.request.items, &mut dests)?;
                    plan.segments().collect()
                };
                if header.request_id != id {
                    return Err(WireError::Io(std::io::Error::other(
                        "data reply for another request",
                    )));
                }
                let mut ok = vec![false; n];
                for seg in &segments {
                    let dst = dests[seg.item].as_mut_ptr();
                    // SAFETY: BulkPlan checked the length equals the destination's.
                    let slice = unsafe { std::slice::from_raw_parts_mut(dst, seg.len_bytes) };
                    conn.recv_bulk(slice).await?;
                    ok[seg.item] = true;
                }
                // The server re-checks every slot after sending it: a page
                // evicted while on the wire is reported here and is a miss.
                let last = expect_reply::<DataReadReply>(conn, id).await?;
                if last.status.len() != n {
                    return Err(WireError::Io(std::io::Error::other(
                        "final status list has the wrong length",
                    )));
                }
                // A page the server skipped or found changed is gone from
                // its slot; the exchange itself went through.
                Ok(ok
                    .iter()
                    .zip(&last.status)
                    .map(
                        |(&arrived, &status)| match arrived && status == ReadStatus::Ok as u8 {
                            true => PageRead::Delivered,
                            false => PageRead::Gone,
                        },
                    )
                    .collect())
            })
            .await;
        result.unwrap_or_else(|_| vec![PageRead::Failed; n])
    }

    /// Sends every page of this shard to its (new) directory owners: on a
    /// membership change, and every `directory_refresh_interval`.
    pub(super) async fn republish(self: Rc<Self>, view: Arc<ClusterView>) {
        if view.len() <= 1 {
            return;
        }
        let mut entries = Vec::new();
        self.pool.borrow().live_entries(&mut entries);
        for chunk in entries.chunks(REPUBLISH_CHUNK) {
            if self.epoch.get() != view.epoch() {
                return; // a newer membership started its own re-publish
            }
            // Only what is still there: a page evicted while earlier chunks
            // were out had its delete sent, and a put sent after it would
            // bring back an entry naming a freed slot (the newest put wins
            // on its owner, so it could replace another node's good entry).
            let stored: Vec<(usize, KeyHash, Location)> = {
                let pool = self.pool.borrow();
                chunk
                    .iter()
                    .filter(|&&(k, l)| pool.location(k) == Some(l))
                    .map(|&(k, l)| (0, k, l))
                    .collect()
            };
            self.publish(&view, &stored, &[]).await;
            ShardStats::bump(&self.stats.directory_republishes, stored.len() as u64);
        }
        // Pages only on disk (e.g. after a restart) get non-resident entries.
        let disk_keys: Vec<KeyHash> = match &self.disk {
            Some(disk) => {
                let pool = self.pool.borrow();
                disk.entries()
                    .into_iter()
                    .map(|(k, _)| k)
                    .filter(|&k| !pool.contains(k))
                    .collect()
            }
            None => Vec::new(),
        };
        for chunk in disk_keys.chunks(REPUBLISH_CHUNK) {
            if self.epoch.get() != view.epoch() {
                return;
            }
            // Promoted back meanwhile: its resident entry was published.
            let chunk: Vec<KeyHash> = {
                let pool = self.pool.borrow();
                chunk
                    .iter()
                    .copied()
                    .filter(|&k| !pool.contains(k))
                    .collect()
            };
            self.publish(&view, &[], &chunk).await;
            ShardStats::bump(&self.stats.directory_republishes, chunk.len() as u64);
        }
        self.publish_pool_gauges();
    }

    /// Re-publishes this shard's pages every `directory_refresh_interval`
    /// (each wait drawn from 0.75 to 1.25 of it, so a cluster's shards do
    /// not all send at once). An entry can be lost with no membership
    /// change to announce it: a put that reached its owner just before the
    /// owner applied a view it no longer owned the key in, or a delete from
    /// another node that held the same page and evicted it (the owner keeps
    /// one location per key). Such a page comes back within one interval.
    pub(super) async fn refresh_directory(self: Rc<Self>) {
        let every = self.id.directory_refresh;
        let seed = self.node_ref.0 ^ u64::from(self.id.shard);
        for round in 0u64.. {
            // A spread that differs per node, shard and round is all this
            // needs; a hash gives it without a random number generator.
            let draw = xxhash_rust::xxh3::xxh3_64_with_seed(&round.to_le_bytes(), seed);
            let spread = 0.75 + 0.5 * (draw >> 11) as f64 / (1u64 << 53) as f64;
            glommio::timer::sleep(every.mul_f64(spread)).await;
            if let Some(view) = self.network_view() {
                Rc::clone(&self).republish(view).await;
            }
        }
    }
}

/// The entry a reply holds for the key asked for at its position, if it is
/// one for that key. Replies answer by position; an entry naming another
/// key (a buggy or confused peer) would send the read to another page of
/// the same size, and its bytes would count as a hit for this key.
fn entry_for<'a>(entry: &'a Option<DirEntry>, key: &[u8; 16]) -> Option<&'a DirEntry> {
    entry.as_ref().filter(|e| e.key == *key)
}

/// A wire directory entry as a location.
pub(super) fn to_location(e: &DirEntry) -> DirLocation {
    DirLocation::from_pool(NodeRef(e.node), e.shard, e.location(), e.resident)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn location(node: u64, shard: u16, page: u64) -> DirLocation {
        let at = Location {
            offset: page * MIB as u64,
            generation: 1,
            len: MIB as u32,
        };
        DirLocation::from_pool(NodeRef(node), shard, at, true)
    }

    fn endpoint(shard: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7000 + shard))
    }

    /// Reads as (shard, batch positions), sorted.
    fn summary(groups: ReadGroups) -> Vec<(u16, Vec<usize>)> {
        let mut reads: Vec<(u16, Vec<usize>)> = groups
            .into_reads()
            .map(|r| {
                assert_eq!(r.request.items.len(), r.targets.len());
                let shard = r.targets[0].3.shard;
                assert!(r.targets.iter().all(|t| t.3.shard == shard));
                (shard, r.targets.iter().map(|t| t.2).collect())
            })
            .collect();
        reads.sort();
        reads
    }

    #[test]
    fn a_shards_share_of_a_batch_is_split_where_a_reply_would_pass_the_limit() {
        let mut groups = ReadGroups::new(3 * MIB as u64);
        for i in 0..10 {
            let shard = (i % 2 == 1) as u16;
            groups.push(
                endpoint(shard),
                (i * MIB, MIB, i, location(9, shard, i as u64)),
            );
        }
        // Five 1 MiB pages per shard, at most 3 MiB per read.
        assert_eq!(
            summary(groups),
            vec![
                (0, vec![0, 2, 4]),
                (0, vec![6, 8]),
                (1, vec![1, 3, 5]),
                (1, vec![7, 9])
            ]
        );
    }

    #[test]
    fn a_page_as_large_as_the_limit_goes_alone_and_nothing_is_dropped() {
        let mut groups = ReadGroups::new(MIB as u64);
        for i in 0..3 {
            groups.push(endpoint(0), (i * MIB, MIB, i, location(9, 0, i as u64)));
        }
        assert_eq!(
            summary(groups),
            vec![(0, vec![0]), (0, vec![1]), (0, vec![2])]
        );
    }
}
