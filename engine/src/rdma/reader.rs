//! Batched one-sided READs from one peer's published pool.
//!
//! A batch to one peer is striped over the rails by index; on each rail its
//! pages are chained into as few posts as the send queue allows (one post per
//! QP per batch when the rail's share fits in `max_send_wr`), each chain on
//! its own leased channel. Only the last request of a chain is signalled: an
//! RC QP executes in order, so the success of the last request means every
//! earlier one succeeded, and an error completion at position k means the
//! k requests before it succeeded. Completions are matched by `wr_id` (batch
//! serial in the high 32 bits, page index in the low 32), never by arrival
//! order, so completions arriving out of order across channels, or stale ones,
//! cannot be credited to the wrong page.
//!
//! Every chain is bounded by the batch's timeout: the request timeout plus
//! the time the batch's bytes take at the floor rate of
//! [`crate::net::deadline`], so a large batch is not failed for its size. A
//! chain that times out or fails has its channel discarded (destroying the
//! QP stops any DMA it still had queued) and its unconfirmed pages are
//! misses. Once bytes have landed,
//! each page's slot generation is checked again ([`GenerationCheck`]): a page
//! evicted and reused while its READ was in flight is a miss, never wrong
//! bytes.

use super::channel::{Channel, QpExchange};
use super::rail::{Rails, RemotePool};
use super::registration::LazyRegions;
use super::verbs::{
    Completion, CompletionQueue, Opcode, QueuePair, Sge, Verbs, WcStatus, WorkRequest,
};
use crate::logging::RateLimiter;
use crate::net::deadline;
use crate::pool::Location;
use crate::store::ShardStats;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A time source in microseconds. The shard uses the monotonic clock; tests
/// use the fabric's logical clock, so no test depends on wall-clock time.
pub trait Clock {
    /// Microseconds since an arbitrary origin; never decreases.
    fn now_us(&self) -> u64;
}

/// The process's monotonic clock.
#[derive(Clone, Copy, Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock for MonotonicClock {
    fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }
}

/// Whether a page read from a peer is still the page its location named,
/// asked after its bytes have landed.
pub trait GenerationCheck {
    /// True when the slot at `location` still holds the same generation.
    fn still_valid(&mut self, location: &Location) -> bool;
}

/// One page to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadItem {
    /// Where it is in the peer's pool (offset from the pool start,
    /// generation, length).
    pub location: Location,
    /// Local destination of `location.len` bytes.
    pub dst: *mut u8,
}

/// A chain of READs posted on one channel.
struct Chain<V: Verbs> {
    rail: usize,
    channel: Option<Channel<V>>,
    /// Batch positions, in post order.
    items: Vec<u32>,
    state: ChainState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChainState {
    Pending,
    /// Every request succeeded.
    Done,
    /// Requests before this position succeeded; the rest did not.
    Failed(usize),
}

/// A posted batch, between [`Reader::post`] and [`Reader::finish`]. It owns
/// its leased channels and does not borrow the rails, so several batches
/// (several tasks of one shard) can be in flight at once. Always finish it:
/// dropping it destroys its QPs (so no DMA lands later) but leaves their
/// places counted in the channel pool.
pub struct Batch<V: Verbs> {
    serial: u32,
    len: usize,
    chains: Vec<Chain<V>>,
    /// The batch's bound, and when it runs out (reader clock).
    timeout_us: u64,
    deadline_us: u64,
    /// Per rail, the destinations registered on demand for this batch.
    /// Declared after `chains` so they are deregistered only once the
    /// chains' QPs are idle or destroyed.
    lazy: Vec<LazyRegions<V>>,
}

impl<V: Verbs> Debug for Batch<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("serial", &self.serial)
            .field("len", &self.len)
            .field("chains", &self.chains.len())
            .field(
                "lazy_mrs",
                &self.lazy.iter().map(LazyRegions::len).sum::<usize>(),
            )
            .finish()
    }
}

/// Issues batched READs and keeps the data-path counters.
pub struct Reader {
    serial: u32,
    timeout: Duration,
    stats: Arc<ShardStats>,
    log: RateLimiter,
    completions: Vec<Completion>,
}

impl Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("serial", &self.serial)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Completions taken from a CQ per poll call.
const POLL_BATCH: usize = 64;

impl Reader {
    /// A reader whose READ batches each get `timeout` to complete, plus the
    /// time their bytes take at the floor rate.
    pub fn new(timeout: Duration, stats: Arc<ShardStats>) -> Self {
        Self {
            serial: 0,
            timeout,
            stats,
            log: RateLimiter::new(Duration::from_secs(10)),
            completions: Vec::with_capacity(POLL_BATCH),
        }
    }

    /// Reads `items` from `peer`, whose pool is at `remote[r]` on its rail r,
    /// polling until every chain settles. Returns one flag per item: true
    /// only when the bytes landed and the slot generation still matched
    /// afterwards. A caller that must not block (a shard's executor) uses
    /// [`Reader::post`], [`Reader::poll`] (yielding between calls) and
    /// [`Reader::finish`] instead; this is exactly those three in a loop.
    ///
    /// # Safety
    /// As for [`Reader::post`], until this call returns.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn read<V: Verbs, P: Clone + Eq + Hash + Debug>(
        &mut self,
        rails: &mut Rails<V, P>,
        peer: &P,
        remote: &[RemotePool],
        items: &[ReadItem],
        exchange: &mut dyn QpExchange<P>,
        clock: &dyn Clock,
        check: &mut dyn GenerationCheck,
    ) -> Vec<bool> {
        let mut batch = self.post(rails, peer, remote, items, exchange, clock);
        while !self.poll(&mut batch, peer, clock) {}
        self.finish(rails, peer, batch, items, check)
    }

    /// Stripes `items` over the rails, chains each rail's share into as few
    /// posts as its send queue allows, and posts them. Pages that could not
    /// be posted (no lkey, no channel, refused post) are already misses.
    ///
    /// # Safety
    /// Every `dst` must be valid for writes of its length until the batch is
    /// finished (or dropped: that destroys its QPs, which stops their DMA).
    /// A destination outside every registered buffer gets an on-demand
    /// registration that the batch holds until then.
    pub unsafe fn post<V: Verbs, P: Clone + Eq + Hash + Debug>(
        &mut self,
        rails: &mut Rails<V, P>,
        peer: &P,
        remote: &[RemotePool],
        items: &[ReadItem],
        exchange: &mut dyn QpExchange<P>,
        clock: &dyn Clock,
    ) -> Batch<V> {
        let n = items.len();
        let rail_count = rails.len().min(remote.len());
        assert!(n <= u32::MAX as usize, "batch positions fit a wr_id");
        self.serial = self.serial.wrapping_add(1);
        let serial = self.serial;
        let mut chains: Vec<Chain<V>> = Vec::new();
        if n == 0 {
            return Batch {
                serial,
                len: 0,
                chains,
                timeout_us: 0,
                deadline_us: 0,
                lazy: Vec::new(),
            };
        }
        let mut lazy: Vec<LazyRegions<V>> =
            (0..rail_count).map(|_| LazyRegions::default()).collect();
        for (r, pool) in remote.iter().enumerate().take(rail_count) {
            let rail = rails.rail_mut(r);
            let depth = rail.channels.sizes().max_send_wr.max(1) as usize;
            let positions: Vec<usize> = (r..n).step_by(rail_count).collect();
            let ranges: Vec<(u64, u64)> = positions
                .iter()
                .map(|&i| (items[i].dst as u64, u64::from(items[i].location.len)))
                .collect();
            // SAFETY: the destinations stay mapped until the batch is
            // finished or dropped (this function's contract), and `lazy[r]`
            // goes with the batch.
            let registered = unsafe {
                rail.registry
                    .register_destinations(&rail.device, &ranges, &mut lazy[r])
            };
            if let Err(e) = registered {
                self.warn(format_args!("rail {r}: registering destinations: {e}"));
            }
            for chunk in positions.chunks(depth) {
                let mut wrs = Vec::with_capacity(chunk.len());
                let mut posted_items = Vec::with_capacity(chunk.len());
                for &i in chunk {
                    let item = &items[i];
                    let len = u64::from(item.location.len);
                    let lkey = match rail.registry.lkey_for(item.dst as u64, len, &lazy[r]) {
                        Ok(k) => k,
                        Err(e) => {
                            self.warn(format_args!("rail {r}: destination not registered: {e}"));
                            continue;
                        }
                    };
                    wrs.push(WorkRequest {
                        wr_id: (u64::from(serial) << 32) | i as u64,
                        opcode: Opcode::Read,
                        sges: vec![Sge {
                            addr: item.dst as u64,
                            len: item.location.len,
                            lkey,
                        }],
                        remote_addr: pool.addr + item.location.offset,
                        rkey: pool.rkey,
                        signaled: false,
                    });
                    posted_items.push(i as u32);
                }
                let Some(last) = wrs.last_mut() else { continue };
                last.signaled = true;
                let mut channel = match rail.channels.lease(&rail.device, peer, exchange) {
                    Ok(ch) => ch,
                    Err(e) => {
                        self.warn(format_args!("rail {r}: no channel to {peer:?}: {e}"));
                        continue;
                    }
                };
                if let Err(e) = channel.qp.post_send(&wrs) {
                    // Requests before e.index were posted but none of them is
                    // signalled: their outcome can never be confirmed, so
                    // the whole chain is a miss and the QP is destroyed
                    // (stopping them) with the channel.
                    ShardStats::bump(&self.stats.rdma_post_failures, 1);
                    self.warn(format_args!("rail {r}: {e}"));
                    rail.channels.discard(peer, channel);
                    continue;
                }
                chains.push(Chain {
                    rail: r,
                    channel: Some(channel),
                    items: posted_items,
                    state: ChainState::Pending,
                });
            }
        }

        let bytes: u64 = items.iter().map(|item| u64::from(item.location.len)).sum();
        let timeout_us = u64::try_from(deadline::for_transfer(self.timeout, bytes).as_micros())
            .unwrap_or(u64::MAX);
        Batch {
            serial,
            len: n,
            chains,
            timeout_us,
            deadline_us: clock.now_us().saturating_add(timeout_us),
            lazy,
        }
    }

    /// Polls every pending chain of `batch` once; a chain past the deadline
    /// times out. Returns true once every chain has settled.
    pub fn poll<V: Verbs, P: Debug>(
        &mut self,
        batch: &mut Batch<V>,
        peer: &P,
        clock: &dyn Clock,
    ) -> bool {
        let mut pending = false;
        for chain in batch
            .chains
            .iter_mut()
            .filter(|c| c.state == ChainState::Pending)
        {
            self.poll_chain(chain, batch.serial, peer);
            pending |= chain.state == ChainState::Pending;
        }
        if !pending {
            return true;
        }
        if clock.now_us() < batch.deadline_us {
            return false;
        }
        let timeout_us = batch.timeout_us;
        for chain in batch
            .chains
            .iter_mut()
            .filter(|c| c.state == ChainState::Pending)
        {
            ShardStats::bump(&self.stats.rdma_read_timeouts, 1);
            self.warn(format_args!(
                "rail {}: {} READs from {peer:?} not completed within {} us",
                chain.rail,
                chain.items.len(),
                timeout_us
            ));
            chain.state = ChainState::Failed(0);
        }
        true
    }

    /// Returns healthy channels to their pools, discards the others, and
    /// re-checks the generation of every page whose bytes landed.
    pub fn finish<V: Verbs, P: Clone + Eq + Hash>(
        &mut self,
        rails: &mut Rails<V, P>,
        peer: &P,
        batch: Batch<V>,
        items: &[ReadItem],
        check: &mut dyn GenerationCheck,
    ) -> Vec<bool> {
        assert_eq!(
            batch.len,
            items.len(),
            "finish with the items that were posted"
        );
        let mut ok = vec![false; items.len()];
        for mut chain in batch.chains {
            let good = match chain.state {
                ChainState::Done => chain.items.len(),
                ChainState::Failed(k) => k,
                // Finishing early abandons the chain: a miss, and its QP
                // is destroyed so nothing lands later.
                ChainState::Pending => 0,
            };
            for &i in &chain.items[..good] {
                ok[i as usize] = true;
            }
            let channel = chain.channel.take().expect("channel held until settled");
            let channels = &mut rails.rail_mut(chain.rail).channels;
            if chain.state == ChainState::Done {
                channels.release(peer, channel);
            } else {
                channels.discard(peer, channel);
            }
        }
        // The bytes are in place; now make sure they are still the page the
        // location named (an eviction race is a miss, never wrong bytes).
        for (flag, item) in ok.iter_mut().zip(items) {
            if *flag && !check.still_valid(&item.location) {
                *flag = false;
            }
        }
        ok
    }

    /// Polls one chain's CQ once and applies what arrived.
    fn poll_chain<V: Verbs, P: Debug>(&mut self, chain: &mut Chain<V>, serial: u32, peer: &P) {
        let channel = chain
            .channel
            .as_ref()
            .expect("pending chain holds its channel");
        self.completions.clear();
        if let Err(e) = channel.cq.poll(&mut self.completions, POLL_BATCH) {
            self.warn(format_args!("rail {}: {e}", chain.rail));
            chain.state = ChainState::Failed(0);
            return;
        }
        let last = *chain.items.last().expect("chains are never empty");
        let completions = std::mem::take(&mut self.completions);
        for &c in &completions {
            if (c.wr_id >> 32) as u32 != serial {
                continue; // not this batch: ignore rather than misattribute
            }
            let index = c.wr_id as u32;
            if chain.state != ChainState::Pending {
                continue; // flushes after the first error
            }
            if c.status.is_success() {
                if index == last {
                    chain.state = ChainState::Done;
                }
                continue;
            }
            let Ok(pos) = chain.items.binary_search(&index) else {
                continue;
            };
            if c.status == WcStatus::WR_FLUSH_ERR {
                // A flushed request only says an earlier one failed, not
                // which: nothing in the chain is confirmed.
                chain.state = ChainState::Failed(0);
                continue;
            }
            // RC executes in order: the requests before the failed one
            // completed successfully.
            chain.state = ChainState::Failed(pos);
            {
                ShardStats::bump(&self.stats.rdma_read_wc_errors, 1);
                ShardStats::set(&self.stats.rdma_last_wc_status, u64::from(c.status.0));
                self.warn(format_args!(
                    "RDMA READ from {peer:?} on rail {} failed: {} (rdma_last_wc_status={})",
                    chain.rail,
                    c.status.as_str(),
                    c.status.0
                ));
            }
        }
        self.completions = completions;
    }

    fn warn(&mut self, message: std::fmt::Arguments<'_>) {
        if let Some(suppressed) = self.log.check(Instant::now()) {
            if suppressed > 0 {
                tracing::warn!("{message} ({suppressed} similar messages suppressed)");
            } else {
                tracing::warn!("{message}");
            }
        }
    }
}
