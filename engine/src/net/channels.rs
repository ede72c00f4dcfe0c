//! Per-peer channel pools of one shard.
//!
//! A shard keeps, for every remote endpoint it talks to, up to
//! `max_channels_per_peer` open connections ("channels", as the seed calls
//! them: RC queue pairs on RDMA, sockets on TCP). A request leases one channel
//! for its whole exchange, so one batch's request and its streamed reply never
//! interleave with another's; concurrent batches to the same peer use
//! different channels, and callers past the cap wait, bounded by a timeout,
//! for a channel to come back. A channel whose exchange failed is dropped,
//! not returned, so a broken socket is never reused.
//!
//! A peer that could not be reached (connect refused or timed out, or an
//! exchange cut off or left unanswered) is skipped for a while: its leases
//! fail at once instead of each waiting out the timeouts again, so a dead or
//! hung node costs a batch one timeout, not one per batch until its
//! membership expires. A membership change that drops the peer
//! ([`Channels::forget`]) ends the skip.
//!
//! Owned by one shard thread (`Rc`, `RefCell`): no locks.

use glommio::sync::Semaphore;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Why a channel could not be leased.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Every channel to the peer stayed busy for the whole lease timeout.
    #[error("all {max} channels to {peer} stayed busy for {waited_ms} ms")]
    Busy {
        /// The peer, printable.
        peer: String,
        /// The cap.
        max: usize,
        /// How long we waited.
        waited_ms: u128,
    },
    /// Opening a new channel failed.
    #[error("cannot open a channel to {peer}: {reason}")]
    Connect {
        /// The peer, printable.
        peer: String,
        /// What went wrong.
        reason: String,
    },
    /// The peer failed to answer recently and is skipped for a while.
    #[error("{peer} is skipped for {left_ms} ms more: it did not answer recently")]
    Unreachable {
        /// The peer, printable.
        peer: String,
        /// How long the skip still lasts.
        left_ms: u128,
    },
}

struct Peer<C> {
    idle: Vec<C>,
    permits: Rc<Semaphore>,
}

/// Counters of a shard's channel pools.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChannelCounters {
    /// Channels opened since start.
    pub opened: u64,
    /// Channels dropped after a failed exchange.
    pub discarded: u64,
    /// Leases that gave up (busy or connect failure).
    pub lease_failures: u64,
    /// Leases refused at once because their peer is skipped as unreachable.
    pub unreachable_skips: u64,
}

/// The channel pools of one shard, keyed by peer endpoint `K`.
pub struct Channels<K, C> {
    peers: RefCell<HashMap<K, Peer<C>>>,
    max_per_peer: usize,
    lease_timeout: Duration,
    /// Peers skipped as unreachable, and until when.
    unreachable: RefCell<HashMap<K, Instant>>,
    skip_for: Duration,
    counters: RefCell<ChannelCounters>,
}

/// A leased channel. Give it back with [`Channels::release`] after a clean
/// exchange, or [`Channels::discard`] after a failed one; dropping it without
/// either counts as a discard.
pub struct Lease<K: Clone + Eq + Hash, C> {
    key: K,
    channel: Option<C>,
    permits: Rc<Semaphore>,
    reused: bool,
}

impl<K: Clone + Eq + Hash, C> Lease<K, C> {
    /// Whether the channel sat idle in the pool before this lease (rather
    /// than being opened for it): such a channel may have been closed by
    /// its peer in the meantime.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// The leased channel.
    pub fn channel(&mut self) -> &mut C {
        self.channel
            .as_mut()
            .expect("lease holds a channel until released")
    }
}

impl<K: Clone + Eq + Hash, C> Drop for Lease<K, C> {
    fn drop(&mut self) {
        // Released or discarded: either way the slot under the cap frees up.
        self.permits.signal(1);
    }
}

impl<K: Clone + Eq + Hash + std::fmt::Display, C> Channels<K, C> {
    /// Pools capped at `max_per_peer` channels each; a lease waits at most
    /// `lease_timeout` for a free channel; a peer that could not be reached
    /// is skipped for `skip_for`.
    pub fn new(max_per_peer: usize, lease_timeout: Duration, skip_for: Duration) -> Self {
        assert!(max_per_peer >= 1);
        Self {
            peers: RefCell::new(HashMap::new()),
            max_per_peer,
            lease_timeout,
            unreachable: RefCell::new(HashMap::new()),
            skip_for,
            counters: RefCell::new(ChannelCounters::default()),
        }
    }

    /// Skips `key` for the skip period from now: it did not answer (the
    /// caller saw its exchange time out or its connection cut off). Its idle
    /// channels go too.
    pub fn mark_unreachable(&self, key: &K) {
        let now = Instant::now();
        let mut unreachable = self.unreachable.borrow_mut();
        // Marks of endpoints never asked about again (a peer gone for good,
        // one restarted on another port) would otherwise stay forever.
        unreachable.retain(|_, until| *until > now);
        unreachable.insert(key.clone(), now + self.skip_for);
        drop(unreachable);
        if let Some(peer) = self.peers.borrow_mut().get_mut(key) {
            peer.idle.clear();
        }
    }

    /// How long `key` is still skipped, if it is.
    pub fn skipped_for(&self, key: &K) -> Option<Duration> {
        let mut unreachable = self.unreachable.borrow_mut();
        let until = *unreachable.get(key)?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            unreachable.remove(key);
            return None;
        }
        Some(left)
    }

    /// Refuses (and counts) a lease to a peer that is skipped.
    fn refuse_if_skipped(&self, key: &K) -> Result<(), LeaseError> {
        match self.skipped_for(key) {
            None => Ok(()),
            Some(left) => {
                self.counters.borrow_mut().unreachable_skips += 1;
                Err(LeaseError::Unreachable {
                    peer: key.to_string(),
                    left_ms: left.as_millis(),
                })
            }
        }
    }

    /// Counters so far.
    pub fn counters(&self) -> ChannelCounters {
        *self.counters.borrow()
    }

    /// Idle channels currently kept for `key` (for tests and metrics).
    pub fn idle(&self, key: &K) -> usize {
        self.peers.borrow().get(key).map_or(0, |p| p.idle.len())
    }

    /// Leases a channel to `key`: an idle one if any, else a new one from
    /// `connect`, waiting while the peer already has `max_per_peer` in use.
    pub async fn lease<F, Fut>(&self, key: &K, connect: F) -> Result<Lease<K, C>, LeaseError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C, String>>,
    {
        self.refuse_if_skipped(key)?;
        let permits = {
            let mut peers = self.peers.borrow_mut();
            let peer = peers.entry(key.clone()).or_insert_with(|| Peer {
                idle: Vec::new(),
                permits: Rc::new(Semaphore::new(self.max_per_peer as u64)),
            });
            Rc::clone(&peer.permits)
        };
        let acquired = glommio::timer::timeout(self.lease_timeout, async {
            permits.acquire(1).await?;
            Ok(())
        })
        .await;
        if acquired.is_err() {
            self.counters.borrow_mut().lease_failures += 1;
            return Err(LeaseError::Busy {
                peer: key.to_string(),
                max: self.max_per_peer,
                waited_ms: self.lease_timeout.as_millis(),
            });
        }
        // The peer may have been found unreachable while this lease waited
        // for a free channel: do not pay another connect for it.
        if let Err(e) = self.refuse_if_skipped(key) {
            permits.signal(1);
            return Err(e);
        }
        let idle = self
            .peers
            .borrow_mut()
            .get_mut(key)
            .and_then(|p| p.idle.pop());
        let reused = idle.is_some();
        let channel = match idle {
            Some(c) => c,
            None => match connect().await {
                Ok(c) => {
                    self.counters.borrow_mut().opened += 1;
                    c
                }
                Err(reason) => {
                    permits.signal(1);
                    self.mark_unreachable(key);
                    self.counters.borrow_mut().lease_failures += 1;
                    return Err(LeaseError::Connect {
                        peer: key.to_string(),
                        reason,
                    });
                }
            },
        };
        Ok(Lease {
            key: key.clone(),
            channel: Some(channel),
            permits,
            reused,
        })
    }

    /// Returns a channel after a clean exchange, for reuse. A channel of a
    /// peer dropped while it was leased ([`Channels::drop_peer`]) is closed
    /// instead: it belongs to a process that left the cluster.
    pub fn release(&self, mut lease: Lease<K, C>) {
        if let Some(channel) = lease.channel.take() {
            if let Some(peer) = self.peers.borrow_mut().get_mut(&lease.key) {
                if Rc::ptr_eq(&peer.permits, &lease.permits) {
                    peer.idle.push(channel);
                }
            }
        }
    }

    /// Drops a channel whose exchange failed (its state is unknown).
    pub fn discard(&self, mut lease: Lease<K, C>) {
        lease.channel.take();
        self.counters.borrow_mut().discarded += 1;
    }

    /// Closes every idle channel of `key` and ends any skip of it (the
    /// peer left the cluster; whatever comes back at that address is new).
    pub fn forget(&self, key: &K) {
        if let Some(peer) = self.peers.borrow_mut().get_mut(key) {
            peer.idle.clear();
        }
        self.unreachable.borrow_mut().remove(key);
    }

    /// Forgets `key` entirely: the peer left the cluster. Its idle channels
    /// close now, those leased close when their exchange ends, and nothing
    /// is kept for the endpoint (with `control_port` 0 a restarted peer
    /// comes back on another port, so entries of departed endpoints would
    /// otherwise pile up for the life of the process).
    pub fn drop_peer(&self, key: &K) {
        self.peers.borrow_mut().remove(key);
        self.unreachable.borrow_mut().remove(key);
    }

    /// Endpoints with a pool or a skip mark.
    #[cfg(test)]
    fn tracked_peers(&self) -> usize {
        let peers = self.peers.borrow();
        let marked = self.unreachable.borrow();
        peers.len() + marked.keys().filter(|k| !peers.contains_key(*k)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    const SKIP: Duration = Duration::from_secs(60);

    fn run<F: Future<Output = ()> + 'static>(make: impl FnOnce() -> F + Send + 'static) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(256 << 10)
            .spawn(make)
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn reuses_idle_channels_and_discards_broken_ones() {
        run(|| async {
            let ch: Channels<String, u32> = Channels::new(4, Duration::from_millis(100), SKIP);
            let key = "peer-a".to_string();
            let next = Cell::new(0u32);
            let connect = || {
                next.set(next.get() + 1);
                let id = next.get();
                async move { Ok::<_, String>(id) }
            };
            let mut a = ch.lease(&key, connect).await.unwrap();
            assert_eq!(*a.channel(), 1);
            ch.release(a);
            assert_eq!(ch.idle(&key), 1);
            let mut b = ch.lease(&key, connect).await.unwrap();
            assert_eq!(*b.channel(), 1, "idle channel reused, not reopened");
            ch.discard(b);
            assert_eq!(ch.idle(&key), 0);
            let mut c = ch.lease(&key, connect).await.unwrap();
            assert_eq!(
                *c.channel(),
                2,
                "a discarded channel is replaced by a new one"
            );
            ch.release(c);
            let counters = ch.counters();
            assert_eq!(
                (counters.opened, counters.discarded, counters.lease_failures),
                (2, 1, 0)
            );
        });
    }

    #[test]
    fn cap_is_honoured_and_a_busy_peer_fails_the_lease() {
        run(|| async {
            let ch: Rc<Channels<String, u32>> =
                Rc::new(Channels::new(2, Duration::from_millis(50), SKIP));
            let key = "peer-b".to_string();
            let connect = || async { Ok::<_, String>(7) };
            let l1 = ch.lease(&key, connect).await.unwrap();
            let l2 = ch.lease(&key, connect).await.unwrap();
            // A third concurrent lease waits, then fails: never a third channel.
            let err = ch.lease(&key, connect).await.err().unwrap();
            assert!(matches!(err, LeaseError::Busy { max: 2, .. }), "{err}");
            assert_eq!(ch.counters().lease_failures, 1);
            // A waiter gets the channel as soon as one comes back.
            let (ch2, key2) = (Rc::clone(&ch), key.clone());
            let waiter =
                glommio::spawn_local(async move { ch2.lease(&key2, connect).await.is_ok() });
            glommio::timer::sleep(Duration::from_millis(5)).await;
            ch.release(l1);
            assert!(waiter.await);
            ch.release(l2);
            assert_eq!(ch.counters().opened, 2);
        });
    }

    #[test]
    fn connect_failure_frees_the_slot() {
        run(|| async {
            let ch: Channels<String, u32> =
                Channels::new(1, Duration::from_millis(50), Duration::ZERO);
            let key = "peer-c".to_string();
            let err = ch
                .lease(&key, || async { Err::<u32, _>("refused".to_string()) })
                .await
                .err()
                .unwrap();
            assert!(err.to_string().contains("refused"));
            // The single slot is free again.
            let ok = ch.lease(&key, || async { Ok::<_, String>(1) }).await;
            assert!(ok.is_ok());
        });
    }

    #[test]
    fn an_unreachable_peer_is_skipped_until_the_period_ends_or_it_is_forgotten() {
        run(|| async {
            let ch: Channels<String, u32> = Channels::new(2, Duration::from_millis(50), SKIP);
            let (dead, alive) = ("peer-dead".to_string(), "peer-alive".to_string());
            let connects = Cell::new(0);
            let refused = || {
                connects.set(connects.get() + 1);
                async { Err::<u32, _>("refused".to_string()) }
            };
            let err = ch.lease(&dead, refused).await.err().unwrap();
            assert!(matches!(err, LeaseError::Connect { .. }), "{err}");
            // Skipped now: refused at once, without another connect attempt.
            let err = ch.lease(&dead, refused).await.err().unwrap();
            assert!(matches!(err, LeaseError::Unreachable { .. }), "{err}");
            assert_eq!(connects.get(), 1);
            assert!(ch.skipped_for(&dead).is_some_and(|d| d <= SKIP));
            // Another peer is not affected.
            assert!(ch
                .lease(&alive, || async { Ok::<_, String>(1) })
                .await
                .is_ok());
            // An exchange that went unanswered marks its peer the same way.
            ch.mark_unreachable(&alive);
            assert!(matches!(
                ch.lease(&alive, || async { Ok::<_, String>(1) }).await,
                Err(LeaseError::Unreachable { .. })
            ));
            assert_eq!(ch.counters().unreachable_skips, 2);
            // The peer left the cluster: whatever is at that address is new.
            ch.forget(&dead);
            assert!(ch
                .lease(&dead, || async { Ok::<_, String>(2) })
                .await
                .is_ok());
        });
    }

    #[test]
    fn a_lease_that_waited_for_a_channel_sees_the_peer_marked_meanwhile() {
        run(|| async {
            let ch: Rc<Channels<String, u32>> =
                Rc::new(Channels::new(1, Duration::from_millis(200), SKIP));
            let key = "peer-e".to_string();
            let connects = Rc::new(Cell::new(0));
            let held = ch
                .lease(&key, || async { Ok::<_, String>(1) })
                .await
                .unwrap();
            let (ch2, key2, connects2) = (Rc::clone(&ch), key.clone(), Rc::clone(&connects));
            let waiter = glommio::spawn_local(async move {
                ch2.lease(&key2, || {
                    connects2.set(connects2.get() + 1);
                    async { Ok::<_, String>(2) }
                })
                .await
                .err()
            });
            glommio::timer::sleep(Duration::from_millis(5)).await;
            // The exchange on the held channel found the peer unreachable.
            ch.mark_unreachable(&key);
            ch.discard(held);
            let err = waiter.await.expect("the waiter is refused");
            assert!(matches!(err, LeaseError::Unreachable { .. }), "{err}");
            assert_eq!(
                connects.get(),
                0,
                "no connect to a peer just found unreachable"
            );
        });
    }

    #[test]
    fn a_dropped_peer_keeps_nothing_not_even_channels_leased_at_the_time() {
        run(|| async {
            let ch: Channels<String, u32> =
                Channels::new(2, Duration::from_millis(50), Duration::from_millis(20));
            let key = "peer-f".to_string();
            let connects = Cell::new(0u32);
            let connect = || {
                connects.set(connects.get() + 1);
                let id = connects.get();
                async move { Ok::<_, String>(id) }
            };
            let idle = ch.lease(&key, connect).await.unwrap();
            let leased = ch.lease(&key, connect).await.unwrap();
            ch.release(idle);
            assert_eq!((ch.idle(&key), ch.tracked_peers()), (1, 1));
            // The peer leaves while one exchange with it is still running.
            ch.drop_peer(&key);
            assert_eq!((ch.idle(&key), ch.tracked_peers()), (0, 0));
            // A new process comes back at the same endpoint and is leased
            // anew; the old exchange ends and releases its channel, which
            // must not join the new process's pool.
            let fresh = ch.lease(&key, connect).await.unwrap();
            assert!(!fresh.reused());
            ch.release(leased);
            assert_eq!(ch.idle(&key), 0, "the old process's channel was closed");
            ch.release(fresh);
            assert_eq!(ch.idle(&key), 1);
            ch.drop_peer(&key);
            // Skip marks of endpoints nobody asks about again expire with
            // the next mark instead of staying for the life of the shard.
            ch.mark_unreachable(&"peer-gone".to_string());
            glommio::timer::sleep(Duration::from_millis(30)).await;
            ch.mark_unreachable(&"peer-other".to_string());
            assert_eq!(ch.tracked_peers(), 1);
        });
    }

    #[test]
    fn the_skip_ends_when_its_period_is_over() {
        run(|| async {
            let ch: Channels<String, u32> =
                Channels::new(1, Duration::from_millis(50), Duration::from_millis(20));
            let key = "peer-d".to_string();
            ch.mark_unreachable(&key);
            assert!(ch
                .lease(&key, || async { Ok::<_, String>(1) })
                .await
                .is_err());
            glommio::timer::sleep(Duration::from_millis(30)).await;
            assert!(ch.skipped_for(&key).is_none());
            assert!(ch
                .lease(&key, || async { Ok::<_, String>(1) })
                .await
                .is_ok());
        });
    }
}
