//! The RDMA data path as one shard owns it: its rails, its reader, its
//! pending channels and the responder QPs it keeps for its peers.
//!
//! The shard (`store::shard`) is not generic over the verbs implementation,
//! so it holds a `Box<dyn ShardRdma>`; [`RdmaShard`] implements it for any
//! [`Verbs`] (libibverbs on a cluster, the software fabric in tests).
//! Everything here is synchronous: the shard runs the QP exchange and the
//! post-READ generation check as awaited requests on its control connection
//! (`store::remote`), and polls batches with a yield between polls.
//!
//! Requester side: [`ShardRdma::reserve`] creates QPs for a peer,
//! [`ShardRdma::complete`] connects them with the peer's answer,
//! [`ShardRdma::post`] / [`ShardRdma::poll`] / [`ShardRdma::finish`] run one
//! batch. Responder side: [`ShardRdma::accept`] creates one QP granting
//! REMOTE_READ per reader QP and keeps it while the reader lists it as live.

use super::channel::{ChannelSizes, PendingChannel, QpExchange};
use super::rail::{Rails, RemotePool};
use super::reader::{Batch, GenerationCheck, MonotonicClock, ReadItem, Reader};
use super::verbs::{connect_qp, Access, QpCaps, QpEndpoint, QueuePair, Verbs, VerbsProvider};
use crate::pool::Location;
use crate::store::ShardStats;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A peer data shard, named by its control endpoint.
pub type PeerShard = SocketAddr;

/// Responder QPs one reader shard may hold on one rail of this shard. A
/// reader keeps at most `max_channels_per_peer` (its own setting) and prunes
/// the rest with every `RdmaConnect`; this bounds a misbehaving one.
const MAX_RESPONDER_QPS_PER_READER: usize = 256;

/// What a shard needs from its RDMA data path.
pub trait ShardRdma {
    /// Rails this shard opened.
    fn rails(&self) -> usize;
    /// READs one channel carries per post on `rail`.
    fn send_depth(&self, rail: usize) -> usize;
    /// This shard's pool as peers address it on `rail` (after
    /// [`ShardRdma::register_pool`]).
    fn local_pool(&self, rail: usize) -> Option<RemotePool>;
    /// Registers this shard's pool range (REMOTE_READ) on every rail.
    /// `offset` is the range's offset in the node's region, which is what
    /// pool locations are relative to.
    ///
    /// # Safety
    /// `[ptr, ptr+len)` stays mapped for the life of this object.
    unsafe fn register_pool(&mut self, ptr: *mut u8, offset: u64, len: usize)
        -> Result<(), String>;
    /// Registers a caller's host buffer (LOCAL_WRITE only) on every rail.
    ///
    /// # Safety
    /// `[addr, addr+len)` stays mapped for the life of this object.
    unsafe fn register_host_buffer(&mut self, addr: *mut u8, len: usize) -> Result<(), String>;

    /// New channels to `peer` on `rail` a batch needing `chains` chains
    /// should open (what idle channels do not cover, within the cap).
    fn missing_for(&self, peer: &PeerShard, rail: usize, chains: usize) -> usize;
    /// Creates `count` unconnected QPs to `peer` on `rail`; returns their
    /// endpoints for the peer.
    fn reserve(
        &mut self,
        peer: &PeerShard,
        rail: usize,
        count: usize,
    ) -> Result<Vec<QpEndpoint>, String>;
    /// Every QP this shard has to `peer` on `rail` (the `live` list).
    fn live_qps(&self, peer: &PeerShard, rail: usize) -> Vec<u32>;
    /// Connects reserved QPs (`local[i]` to `remote[i]`); a reserved QP with
    /// no answer is abandoned.
    fn complete(
        &mut self,
        peer: &PeerShard,
        rail: usize,
        local: &[QpEndpoint],
        remote: &[QpEndpoint],
    ) -> Result<(), String>;
    /// Drops reserved QPs whose exchange failed.
    fn abandon(&mut self, peer: &PeerShard, rail: usize, local: &[QpEndpoint]);

    /// Posts one batch of READs from `peer` (whose pool is `remote[r]` on
    /// rail r); returns the batch's handle.
    ///
    /// # Safety
    /// Every destination stays valid for writes until the batch is finished.
    unsafe fn post(&mut self, peer: &PeerShard, remote: &[RemotePool], items: &[ReadItem]) -> u64;
    /// Polls a posted batch once; true when every READ settled.
    fn poll(&mut self, batch: u64, peer: &PeerShard) -> bool;
    /// Finishes a batch: per item, whether its bytes landed. The caller
    /// still checks the generations (over the network).
    fn finish(&mut self, batch: u64, peer: &PeerShard, items: &[ReadItem]) -> Vec<bool>;
    /// Drops every channel to a peer that left.
    fn forget(&mut self, peer: &PeerShard);
    /// Responder side: drops every QP kept for reader node `node` (a
    /// process, by `NodeRef`) that left the membership. A reader that
    /// restarts comes back as another process, so without this the QPs of
    /// every earlier one would stay until this node stops.
    fn forget_reader(&mut self, node: u64);
    /// Destroys every QP and deregisters every MR (the shard is stopping).
    /// Afterwards the object has no rail and must not be used.
    fn close(&mut self);

    /// Responder side: creates and connects one QP (REMOTE_READ) per reader
    /// endpoint, after dropping the QPs of that reader that are not in
    /// `live` when `seq` is the newest connect of that reader shard seen on
    /// this rail. Returns this end of each, in order.
    fn accept(
        &mut self,
        reader: (u64, u16),
        rail: usize,
        seq: u64,
        live: &[u32],
        endpoints: &[QpEndpoint],
    ) -> Result<Vec<QpEndpoint>, String>;
}

/// Builds a shard's RDMA data path on the shard's own thread (verbs objects
/// stay on the thread that made them). Given the device names this shard
/// owns (empty: the first active device).
pub type RdmaFactory =
    Arc<dyn Fn(&[String], Arc<ShardStats>) -> Result<Box<dyn ShardRdma>, String> + Send + Sync>;

/// A factory opening rails through `provider`, whose readers bound each
/// batch by `request_timeout` plus the time its bytes take at the floor rate
/// ([`crate::net::deadline`]).
pub fn factory<Pr>(
    provider: Pr,
    port: u8,
    gid_index: u8,
    max_channels: usize,
    request_timeout: Duration,
) -> RdmaFactory
where
    Pr: VerbsProvider + Send + Sync + 'static,
    Pr::Device: 'static,
{
    Arc::new(move |names, stats| {
        let rails = Rails::open(
            &provider,
            names,
            port,
            gid_index,
            max_channels,
            ChannelSizes::default(),
            Arc::clone(&stats),
        )
        .map_err(|e| e.to_string())?;
        Ok(Box::new(RdmaShard::new(rails, request_timeout, stats)) as Box<dyn ShardRdma>)
    })
}

/// A responder QP kept for one reader QP.
struct ResponderQp<V: Verbs> {
    // Field order: the QP is destroyed before its CQ.
    _qp: V::Qp,
    _cq: V::Cq,
}

/// [`ShardRdma`] over one verbs implementation.
pub struct RdmaShard<V: Verbs> {
    /// Responder QPs, per (reader node, reader shard, rail), by reader QP
    /// number. Declared first: dropped before the rails' MRs and devices.
    responders: HashMap<(u64, u16, usize), HashMap<u32, ResponderQp<V>>>,
    /// Per (reader node, reader shard, rail), the `seq` of the newest
    /// connect whose live list was applied.
    newest_live: HashMap<(u64, u16, usize), u64>,
    /// Reserved channels, by (rail, local QP number): QP numbers are per
    /// device, so two rails may hand out the same one.
    pending: HashMap<(usize, u32), (PeerShard, PendingChannel<V>)>,
    /// Posted batches, by handle.
    batches: HashMap<u64, Batch<V>>,
    next_batch: u64,
    reader: Reader,
    clock: MonotonicClock,
    /// Local pool per rail, as peers address it.
    pools: Vec<RemotePool>,
    rails: Rails<V, PeerShard>,
}

impl<V: Verbs> std::fmt::Debug for RdmaShard<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdmaShard")
            .field("rails", &self.rails)
            .field("batches", &self.batches.len())
            .finish()
    }
}

/// Channels are all reserved before a batch posts: a lease that finds none
/// idle fails (counted) instead of exchanging synchronously.
struct NotPrepared;

impl QpExchange<PeerShard> for NotPrepared {
    fn exchange(&mut self, _: &PeerShard, _: usize, _: QpEndpoint) -> Result<QpEndpoint, String> {
        Err("no connected channel was prepared for this batch".into())
    }
}

/// The generation check runs over the network after `finish`.
struct Landed;

impl GenerationCheck for Landed {
    fn still_valid(&mut self, _: &Location) -> bool {
        true
    }
}

impl<V: Verbs> RdmaShard<V> {
    /// A shard's RDMA path over opened rails.
    pub fn new(rails: Rails<V, PeerShard>, timeout: Duration, stats: Arc<ShardStats>) -> Self {
        Self {
            responders: HashMap::new(),
            newest_live: HashMap::new(),
            pending: HashMap::new(),
            batches: HashMap::new(),
            next_batch: 0,
            reader: Reader::new(timeout, stats),
            clock: MonotonicClock::default(),
            pools: Vec::new(),
            rails,
        }
    }

    /// Responder QPs kept for readers, over all rails.
    pub fn responder_qps(&self) -> usize {
        self.responders.values().map(HashMap::len).sum()
    }
}

impl<V: Verbs> ShardRdma for RdmaShard<V> {
    fn rails(&self) -> usize {
        self.rails.len()
    }

    fn send_depth(&self, rail: usize) -> usize {
        self.rails.rail(rail).channels.sizes().max_send_wr.max(1) as usize
    }

    fn local_pool(&self, rail: usize) -> Option<RemotePool> {
        self.pools.get(rail).copied()
    }

    unsafe fn register_pool(
        &mut self,
        ptr: *mut u8,
        offset: u64,
        len: usize,
    ) -> Result<(), String> {
        let keys = self
            .rails
            .register_pool(ptr, len)
            .map_err(|e| e.to_string())?;
        // Peers add a location's offset (relative to the node's region) to
        // this base, which lands inside this shard's MR.
        self.pools = keys
            .into_iter()
            .map(|k| RemotePool {
                addr: k.addr - offset,
                rkey: k.rkey,
            })
            .collect();
        Ok(())
    }

    unsafe fn register_host_buffer(&mut self, addr: *mut u8, len: usize) -> Result<(), String> {
        self.rails
            .register_host_buffer(addr, len)
            .map_err(|e| e.to_string())
    }

    fn missing_for(&self, peer: &PeerShard, rail: usize, chains: usize) -> usize {
        self.rails.rail(rail).channels.missing_for(peer, chains)
    }

    fn reserve(
        &mut self,
        peer: &PeerShard,
        rail: usize,
        count: usize,
    ) -> Result<Vec<QpEndpoint>, String> {
        let r = self.rails.rail_mut(rail);
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let pending = r
                .channels
                .reserve(&r.device, peer)
                .map_err(|e| format!("rail {rail}: {e}"));
            let pending = match pending {
                Ok(p) => p,
                // Keep what was reserved: fewer channels still serve.
                Err(e) if !out.is_empty() => {
                    tracing::debug!("{e}");
                    break;
                }
                Err(e) => return Err(e),
            };
            let ep = pending.endpoint();
            self.pending.insert((rail, ep.qp_num), (*peer, pending));
            out.push(ep);
        }
        Ok(out)
    }

    fn live_qps(&self, peer: &PeerShard, rail: usize) -> Vec<u32> {
        self.rails.rail(rail).channels.live_qps(peer)
    }

    fn complete(
        &mut self,
        peer: &PeerShard,
        rail: usize,
        local: &[QpEndpoint],
        remote: &[QpEndpoint],
    ) -> Result<(), String> {
        let mut first_error = None;
        for (i, ep) in local.iter().enumerate() {
            let Some((_, pending)) = self.pending.remove(&(rail, ep.qp_num)) else {
                continue;
            };
            let r = self.rails.rail_mut(rail);
            match remote.get(i) {
                Some(remote) => {
                    if let Err(e) = r.channels.complete(&r.device, peer, pending, remote) {
                        first_error.get_or_insert(format!("rail {rail}: {e}"));
                    }
                }
                None => {
                    r.channels.abandon(peer, pending);
                    first_error.get_or_insert(format!(
                        "rail {rail}: the peer answered {} of {} QPs",
                        remote.len(),
                        local.len()
                    ));
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn abandon(&mut self, peer: &PeerShard, rail: usize, local: &[QpEndpoint]) {
        for ep in local {
            if let Some((_, pending)) = self.pending.remove(&(rail, ep.qp_num)) {
                self.rails.rail_mut(rail).channels.abandon(peer, pending);
            }
        }
    }

    unsafe fn post(&mut self, peer: &PeerShard, remote: &[RemotePool], items: &[ReadItem]) -> u64 {
        let batch = self.reader.post(
            &mut self.rails,
            peer,
            remote,
            items,
            &mut NotPrepared,
            &self.clock,
        );
        self.next_batch += 1;
        self.batches.insert(self.next_batch, batch);
        self.next_batch
    }

    fn poll(&mut self, batch: u64, peer: &PeerShard) -> bool {
        match self.batches.get_mut(&batch) {
            Some(b) => self.reader.poll(b, peer, &self.clock),
            None => true,
        }
    }

    fn finish(&mut self, batch: u64, peer: &PeerShard, items: &[ReadItem]) -> Vec<bool> {
        match self.batches.remove(&batch) {
            Some(b) => self
                .reader
                .finish(&mut self.rails, peer, b, items, &mut Landed),
            None => vec![false; items.len()],
        }
    }

    fn forget(&mut self, peer: &PeerShard) {
        for r in 0..self.rails.len() {
            self.rails.rail_mut(r).channels.forget(peer);
        }
    }

    fn forget_reader(&mut self, node: u64) {
        self.responders.retain(|&(reader, _, _), _| reader != node);
        self.newest_live.retain(|&(reader, _, _), _| reader != node);
    }

    fn close(&mut self) {
        // QPs before the MRs and devices they use (as in the field order).
        self.responders.clear();
        self.newest_live.clear();
        self.pending.clear();
        self.batches.clear();
        self.pools.clear();
        self.rails.close();
    }

    fn accept(
        &mut self,
        reader: (u64, u16),
        rail: usize,
        seq: u64,
        live: &[u32],
        endpoints: &[QpEndpoint],
    ) -> Result<Vec<QpEndpoint>, String> {
        if rail >= self.rails.len() {
            return Err(format!(
                "rail {rail} requested, this shard has {}",
                self.rails.len()
            ));
        }
        let key = (reader.0, reader.1, rail);
        let kept = self.responders.entry(key).or_default();
        // A reader QP not listed as live was discarded by the reader: its
        // responder QP can never be used again. Only the newest list says
        // so: the connects of one reader shard travel on separate
        // connections and may overtake each other, and an older list lacks
        // the QPs reserved after it, whose responders may exist already.
        let newest = self.newest_live.entry(key).or_insert(0);
        if seq >= *newest {
            *newest = seq;
            kept.retain(|qp_num, _| live.contains(qp_num));
        }
        if kept.len() + endpoints.len() > MAX_RESPONDER_QPS_PER_READER {
            return Err(format!(
                "a reader asked for more than {MAX_RESPONDER_QPS_PER_READER} QPs on rail {rail}"
            ));
        }
        let dev = &self.rails.rail(rail).device;
        let mtu = dev.port().active_mtu;
        let mut out = Vec::with_capacity(endpoints.len());
        for remote in endpoints {
            // A responder QP never posts: the smallest queues do.
            let cq = dev.create_cq(1).map_err(|e| e.to_string())?;
            let mut qp = dev
                .create_qp(
                    &cq,
                    QpCaps {
                        max_send_wr: 1,
                        max_send_sge: 1,
                    },
                )
                .map_err(|e| e.to_string())?;
            connect_qp(&mut qp, Access::REMOTE_READ, remote, mtu).map_err(|e| e.to_string())?;
            out.push(qp.endpoint());
            kept.insert(remote.qp_num, ResponderQp { _qp: qp, _cq: cq });
        }
        Ok(out)
    }
}
