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
//! Owned by one shard thread (`Rc`, `RefCell`): no locks.

use glommio::sync::Semaphore;
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::rc::Rc;
use std::time::Duration;

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
}

/// The channel pools of one shard, keyed by peer endpoint `K`.
pub struct Channels<K, C> {
    peers: RefCell<HashMap<K, Peer<C>>>,
    max_per_peer: usize,
    lease_timeout: Duration,
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
    /// `lease_timeout` for a free channel.
    pub fn new(max_per_peer: usize, lease_timeout: Duration) -> Self {
        assert!(max_per_peer >= 1);
        Self {
            peers: RefCell::new(HashMap::new()),
            max_per_peer,
            lease_timeout,
            counters: RefCell::new(ChannelCounters::default()),
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

    /// Returns a channel after a clean exchange, for reuse.
    pub fn release(&self, mut lease: Lease<K, C>) {
        if let Some(channel) = lease.channel.take() {
            if let Some(peer) = self.peers.borrow_mut().get_mut(&lease.key) {
                peer.idle.push(channel);
            }
        }
    }

    /// Drops a channel whose exchange failed (its state is unknown).
    pub fn discard(&self, mut lease: Lease<K, C>) {
        lease.channel.take();
        self.counters.borrow_mut().discarded += 1;
    }

    /// Closes every idle channel of `key` (the peer left the cluster).
    pub fn forget(&self, key: &K) {
        if let Some(peer) = self.peers.borrow_mut().get_mut(key) {
            peer.idle.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

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
            let ch: Channels<String, u32> = Channels::new(4, Duration::from_millis(100));
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
                Rc::new(Channels::new(2, Duration::from_millis(50)));
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
            let ch: Channels<String, u32> = Channels::new(1, Duration::from_millis(50));
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
}
