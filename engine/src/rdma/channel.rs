//! Per-peer channel pool of one rail: one RC QP with its own CQ per channel.
//!
//! Channels are created lazily, on the first lease that finds none idle, up
//! to `max_channels_per_peer` per peer. Each has its own CQ so a reader polls
//! only the completions of its own batch, and several batches to one peer run
//! in parallel on different QPs. A lease takes the channel out of the pool by
//! value (no borrow outlives an await in the shard's tasks); the holder gives
//! it back with [`ChannelPool::release`] or, after any error, drops it with
//! [`ChannelPool::discard`]: a QP that saw an error completion is in the
//! ERROR state and can only be destroyed, and the next lease builds a fresh
//! one. A lease that finds the cap reached, or cannot build a channel, fails
//! at once (counted in `rdma_lease_failures`) and its pages are misses: a
//! reader never queues behind a busy peer.

use super::verbs::{connect_qp, Access, QpCaps, QpEndpoint, QueuePair, Verbs, VerbsError};
use crate::store::ShardStats;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;

/// Exchanges QP info with a peer: sends this end (qp_num, psn, lid, gid) of
/// a new channel on `rail` and returns the peer's end, whose QP the peer has
/// created, connected back and granted REMOTE_READ. On a cluster this runs
/// over the control connection; tests answer it from the software fabric.
pub trait QpExchange<P> {
    /// One exchange; an error message says why the peer did not answer.
    fn exchange(&mut self, peer: &P, rail: usize, local: QpEndpoint) -> Result<QpEndpoint, String>;
}

/// Sizes of each channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelSizes {
    /// Send queue depth: most READs one channel carries per post.
    pub max_send_wr: u32,
    /// Most scatter entries per READ.
    pub max_send_sge: u32,
    /// Completion queue entries.
    pub cq_entries: u32,
}

impl Default for ChannelSizes {
    fn default() -> Self {
        // 512 READs per post covers a 128-page batch on one rail with room;
        // the CQ holds one completion per request so even a chain that fails
        // at its first request (every later one flushed) cannot overrun it.
        Self {
            max_send_wr: 512,
            max_send_sge: 1,
            cq_entries: 512,
        }
    }
}

/// One channel: a connected QP and its CQ.
pub struct Channel<V: Verbs> {
    /// The QP (RTS).
    pub qp: V::Qp,
    /// Its CQ. Declared after `qp` so the QP is destroyed first (a CQ cannot
    /// be destroyed while a QP uses it).
    pub cq: V::Cq,
    /// The peer's end, as exchanged.
    pub remote: QpEndpoint,
}

impl<V: Verbs> std::fmt::Debug for Channel<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("qp_num", &self.qp.endpoint().qp_num)
            .field("remote", &self.remote.qp_num)
            .finish()
    }
}

/// Why a lease failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseError {
    /// Every channel to the peer is leased and the cap is reached.
    #[error("all {0} channels to the peer are busy (max_channels_per_peer)")]
    Busy(usize),
    /// Building a channel failed in a verbs call.
    #[error("new channel: {0}")]
    Verbs(#[from] VerbsError),
    /// The peer did not answer the QP exchange.
    #[error("QP exchange with the peer: {0}")]
    Exchange(String),
}

struct PeerChannels<V: Verbs> {
    idle: Vec<Channel<V>>,
    /// Local QP numbers of the channels that exist (idle, leased and
    /// reserved) and count against the cap.
    qps: Vec<u32>,
}

/// A channel whose QP exists but is not connected yet (see
/// [`ChannelPool::reserve`]).
pub struct PendingChannel<V: Verbs> {
    qp: V::Qp,
    cq: V::Cq,
}

impl<V: Verbs> PendingChannel<V> {
    /// This end, for the peer.
    pub fn endpoint(&self) -> QpEndpoint {
        self.qp.endpoint()
    }
}

impl<V: Verbs> std::fmt::Debug for PendingChannel<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingChannel")
            .field("qp_num", &self.qp.endpoint().qp_num)
            .finish()
    }
}

/// The channels of one rail to every peer.
pub struct ChannelPool<V: Verbs, P> {
    rail: usize,
    max_per_peer: usize,
    sizes: ChannelSizes,
    peers: HashMap<P, PeerChannels<V>>,
    stats: Arc<ShardStats>,
}

impl<V: Verbs, P> std::fmt::Debug for ChannelPool<V, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelPool")
            .field("rail", &self.rail)
            .field("max_per_peer", &self.max_per_peer)
            .field("peers", &self.peers.len())
            .finish()
    }
}

impl<V: Verbs, P: Clone + Eq + Hash> ChannelPool<V, P> {
    /// An empty pool for rail `rail`, capped at `max_per_peer` channels.
    pub fn new(
        rail: usize,
        max_per_peer: usize,
        sizes: ChannelSizes,
        stats: Arc<ShardStats>,
    ) -> Self {
        assert!(max_per_peer > 0, "max_channels_per_peer is at least 1");
        Self {
            rail,
            max_per_peer,
            sizes,
            peers: HashMap::new(),
            stats,
        }
    }

    /// Channel sizes.
    pub fn sizes(&self) -> ChannelSizes {
        self.sizes
    }

    /// Takes an idle channel to `peer`, or builds one when under the cap.
    pub fn lease(
        &mut self,
        dev: &V,
        peer: &P,
        exchange: &mut dyn QpExchange<P>,
    ) -> Result<Channel<V>, LeaseError> {
        if let Some(ch) = self.peers.get_mut(peer).and_then(|p| p.idle.pop()) {
            return Ok(ch);
        }
        let pending = self.reserve(dev, peer)?;
        let remote = match exchange.exchange(peer, self.rail, pending.endpoint()) {
            Ok(remote) => remote,
            Err(e) => {
                self.abandon(peer, pending);
                return Err(LeaseError::Exchange(e));
            }
        };
        self.complete(dev, peer, pending, &remote)?;
        Ok(self
            .peers
            .get_mut(peer)
            .and_then(|p| p.idle.pop())
            .expect("complete() made the channel idle"))
    }

    /// Creates the QP and CQ of a new channel to `peer` (counted against the
    /// cap from now on) without connecting it: its endpoint goes to the peer,
    /// whose answer [`ChannelPool::complete`] takes. A shard runs the
    /// exchange as an awaited request on its control connection in between;
    /// [`ChannelPool::lease`] runs it synchronously through a [`QpExchange`].
    pub fn reserve(&mut self, dev: &V, peer: &P) -> Result<PendingChannel<V>, LeaseError> {
        let entry = self
            .peers
            .entry(peer.clone())
            .or_insert_with(|| PeerChannels {
                idle: Vec::new(),
                qps: Vec::new(),
            });
        if entry.qps.len() >= self.max_per_peer {
            ShardStats::bump(&self.stats.rdma_lease_failures, 1);
            return Err(LeaseError::Busy(self.max_per_peer));
        }
        let built = dev.create_cq(self.sizes.cq_entries).and_then(|cq| {
            let qp = dev.create_qp(
                &cq,
                QpCaps {
                    max_send_wr: self.sizes.max_send_wr,
                    max_send_sge: self.sizes.max_send_sge,
                },
            )?;
            Ok(PendingChannel { qp, cq })
        });
        match built {
            Ok(pending) => {
                entry.qps.push(pending.endpoint().qp_num);
                Ok(pending)
            }
            Err(e) => {
                ShardStats::bump(&self.stats.rdma_lease_failures, 1);
                Err(e.into())
            }
        }
    }

    /// Connects a reserved channel to the peer's end and makes it idle.
    pub fn complete(
        &mut self,
        dev: &V,
        peer: &P,
        pending: PendingChannel<V>,
        remote: &QpEndpoint,
    ) -> Result<(), LeaseError> {
        let PendingChannel { mut qp, cq } = pending;
        // The requester grants nothing: it only issues READs.
        if let Err(e) = connect_qp(&mut qp, Access::default(), remote, dev.port().active_mtu) {
            self.abandon(peer, PendingChannel { qp, cq });
            return Err(e.into());
        }
        let qp_num = qp.endpoint().qp_num;
        let ch = Channel {
            qp,
            cq,
            remote: *remote,
        };
        match self.peers.get_mut(peer) {
            Some(p) if p.qps.contains(&qp_num) => p.idle.push(ch),
            // The peer was forgotten meanwhile (and perhaps came back with
            // a new entry that never counted this one): it goes with it.
            _ => drop(ch),
        }
        Ok(())
    }

    /// Gives up a reserved channel whose exchange failed (a lease failure).
    pub fn abandon(&mut self, peer: &P, pending: PendingChannel<V>) {
        let qp_num = pending.endpoint().qp_num;
        drop(pending);
        self.forget_qp(peer, qp_num);
        ShardStats::bump(&self.stats.rdma_lease_failures, 1);
    }

    /// QP numbers of every channel to `peer` that exists (idle, leased or
    /// reserved): the peer keeps its responder QPs for exactly these.
    pub fn live_qps(&self, peer: &P) -> Vec<u32> {
        self.peers
            .get(peer)
            .map_or_else(Vec::new, |p| p.qps.clone())
    }

    /// How many new channels to `peer` a batch needing `chains` chains
    /// should build: what the idle ones do not cover, within the cap.
    pub fn missing_for(&self, peer: &P, chains: usize) -> usize {
        let (idle, open) = self
            .peers
            .get(peer)
            .map_or((0, 0), |p| (p.idle.len(), p.qps.len()));
        chains
            .saturating_sub(idle)
            .min(self.max_per_peer.saturating_sub(open))
    }

    /// Stops counting the channel of QP `qp_num` to `peer`, if the peer's
    /// current entry counts it. A channel leased before the peer was
    /// forgotten (it left the view while a batch held the channel) belongs
    /// to no entry: a peer back at the same endpoint has a new one, whose
    /// counts it must not touch.
    fn forget_qp(&mut self, peer: &P, qp_num: u32) {
        if let Some(p) = self.peers.get_mut(peer) {
            if let Some(at) = p.qps.iter().position(|&q| q == qp_num) {
                p.qps.swap_remove(at);
            }
        }
    }

    /// Returns a healthy channel for reuse; dropped instead if the peer was
    /// forgotten since it was leased (its current entry, if any, is a new
    /// one that never counted it).
    pub fn release(&mut self, peer: &P, ch: Channel<V>) {
        let qp_num = ch.qp.endpoint().qp_num;
        if let Some(p) = self.peers.get_mut(peer) {
            if p.qps.contains(&qp_num) {
                p.idle.push(ch);
            }
        }
    }

    /// Drops a channel that errored or timed out; the next lease builds a
    /// fresh one.
    pub fn discard(&mut self, peer: &P, ch: Channel<V>) {
        let qp_num = ch.qp.endpoint().qp_num;
        drop(ch);
        self.forget_qp(peer, qp_num);
        ShardStats::bump(&self.stats.rdma_channel_discards, 1);
    }

    /// Channels that exist to `peer` (idle and leased).
    pub fn open_to(&self, peer: &P) -> usize {
        self.peers.get(peer).map_or(0, |p| p.qps.len())
    }

    /// Idle channels to `peer`.
    pub fn idle_to(&self, peer: &P) -> usize {
        self.peers.get(peer).map_or(0, |p| p.idle.len())
    }

    /// Drops every channel of `peer` (it left the cluster). Leased channels
    /// are dropped by their holders through `discard`/`release` as usual.
    pub fn forget(&mut self, peer: &P) {
        self.peers.remove(peer);
    }
}
