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
    /// Channels that exist: idle plus leased.
    open: usize,
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
        let entry = self
            .peers
            .entry(peer.clone())
            .or_insert_with(|| PeerChannels {
                idle: Vec::new(),
                open: 0,
            });
        if let Some(ch) = entry.idle.pop() {
            return Ok(ch);
        }
        if entry.open >= self.max_per_peer {
            ShardStats::bump(&self.stats.rdma_lease_failures, 1);
            return Err(LeaseError::Busy(self.max_per_peer));
        }
        match Self::build(dev, peer, self.rail, self.sizes, exchange) {
            Ok(ch) => {
                entry.open += 1;
                Ok(ch)
            }
            Err(e) => {
                ShardStats::bump(&self.stats.rdma_lease_failures, 1);
                Err(e)
            }
        }
    }

    fn build(
        dev: &V,
        peer: &P,
        rail: usize,
        sizes: ChannelSizes,
        exchange: &mut dyn QpExchange<P>,
    ) -> Result<Channel<V>, LeaseError> {
        let cq = dev.create_cq(sizes.cq_entries)?;
        let mut qp = dev.create_qp(
            &cq,
            QpCaps {
                max_send_wr: sizes.max_send_wr,
                max_send_sge: sizes.max_send_sge,
            },
        )?;
        let remote = exchange
            .exchange(peer, rail, qp.endpoint())
            .map_err(LeaseError::Exchange)?;
        // The requester grants nothing: it only issues READs.
        connect_qp(&mut qp, Access::default(), &remote, dev.port().active_mtu)?;
        Ok(Channel { qp, cq, remote })
    }

    /// Returns a healthy channel for reuse (dropped if the peer was
    /// forgotten meanwhile).
    pub fn release(&mut self, peer: &P, ch: Channel<V>) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.idle.push(ch);
        }
    }

    /// Drops a channel that errored or timed out; the next lease builds a
    /// fresh one.
    pub fn discard(&mut self, peer: &P, ch: Channel<V>) {
        drop(ch);
        if let Some(p) = self.peers.get_mut(peer) {
            assert!(p.open > 0, "discarding more channels than were opened");
            p.open -= 1;
        }
        ShardStats::bump(&self.stats.rdma_channel_discards, 1);
    }

    /// Channels that exist to `peer` (idle and leased).
    pub fn open_to(&self, peer: &P) -> usize {
        self.peers.get(peer).map_or(0, |p| p.open)
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
