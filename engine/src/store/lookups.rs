//! Directory lookups bound for one owner shard, merged across the batches a
//! shard is running at the same time.
//!
//! Why: every batch that misses locally asks each remote owner shard for its
//! keys with one `DirGet`. With several SGLang threads calling at once, a
//! shard runs several such batches together, and each `DirGet` costs a send,
//! a receive and a wake-up on both nodes however few keys it carries: on the
//! two vCPUs of the benchmark machine those fixed costs, not the directory,
//! bounded `exists` (docs/performance.md).
//!
//! How: per owner endpoint at most [`IN_FLIGHT_PER_OWNER`] requests are out
//! at a time. A lookup that finds the window open leaves at once: its request
//! is sent by a task that runs after the tasks already runnable on this
//! shard, so batches handled in the same turn of the executor share it.
//! Lookups that find the window full join one forming request, which leaves
//! when a request in flight returns, with all of their keys. A lone lookup
//! therefore waits for nothing; merging only happens when requests to that
//! owner are already in flight. With an owner that stopped answering, a
//! lookup waits for at most one request ahead of it and then its own, each
//! bounded by the request timeout, before its keys count as unresolved.
//!
//! [`LookupQueues`] is the bookkeeping alone (no I/O), so its rules are unit
//! tested; [`ShardStore::dir_get`] runs the requests.

use super::remote::expect_reply;
use super::shard::ShardStore;
use super::stats::ShardStats;
use crate::wire::{DirGet, DirGetReply};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::ops::Range;
use std::rc::Rc;
use std::task::{Poll, Waker};

/// Requests out at once per owner endpoint. One: every lookup that arrives
/// while a request is out rides in the next, so each request carries as many
/// batches as possible. A lookup may wait one round trip longer than with a
/// wider window, and each request saved is a send, a receive and a wake-up
/// on both nodes. On the benchmark machine (exists, 8 threads, 2 shards per
/// node) a window of 1 sent about 40 % fewer requests per call than a
/// window of 2, and exists ran at a median 484 K pages/s against 410 K
/// over 10 interleaved pairs (docs/performance.md, 2026-12-02).
pub(super) const IN_FLIGHT_PER_OWNER: usize = 1;

/// Most keys one merged request carries; a lookup that would take a forming
/// request past it is sent on its own. Far above any batch SGLang sends,
/// far below the wire's per-message limit.
const MAX_KEYS_PER_REQUEST: usize = 8192;

/// The outcome every lookup of one request shares.
pub(super) type Outcome = Rc<Result<DirGetReply, String>>;

/// One `DirGet` being formed, sent or answered, and the lookups waiting on it.
#[derive(Default)]
pub(super) struct PendingGet {
    keys: RefCell<Vec<[u8; 16]>>,
    /// A task was spawned to send it (it may not have started yet, and
    /// takes keys until it does).
    launched: Cell<bool>,
    outcome: RefCell<Option<Outcome>>,
    wakers: RefCell<Vec<Waker>>,
}

impl PendingGet {
    fn with_keys(keys: &[[u8; 16]]) -> Rc<Self> {
        Rc::new(Self {
            keys: RefCell::new(keys.to_vec()),
            ..Self::default()
        })
    }

    /// Hands the answer (or the failure) to every lookup waiting on it.
    fn complete(&self, outcome: Result<DirGetReply, String>) {
        *self.outcome.borrow_mut() = Some(Rc::new(outcome));
        for waker in self.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    /// Waits for [`complete`](Self::complete).
    async fn outcome(&self) -> Outcome {
        poll_fn(|cx| match &*self.outcome.borrow() {
            Some(outcome) => Poll::Ready(Rc::clone(outcome)),
            None => {
                self.wakers.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// What a lookup does after [`LookupQueues::join`].
pub(super) enum Joined {
    /// Spawn a task sending this request (it also carries the caller's keys,
    /// at `range`), then wait for it.
    Launch(Rc<PendingGet>, Range<usize>),
    /// The caller's keys ride in this request (at `range`): wait for it.
    Wait(Rc<PendingGet>, Range<usize>),
    /// Too many keys to merge: send them in a request of their own.
    Alone,
}

#[derive(Default)]
struct OwnerQueue {
    /// Requests launched and not yet answered.
    in_flight: usize,
    /// The request taking keys: launched but not started, or waiting for
    /// the window.
    forming: Option<Rc<PendingGet>>,
}

/// Per owner endpoint: the window and the forming request. One per shard,
/// used only from that shard's thread.
#[derive(Default)]
pub(super) struct LookupQueues {
    owners: RefCell<HashMap<SocketAddr, OwnerQueue>>,
}

impl LookupQueues {
    /// Adds `keys`, bound for `ep`, to the request they will travel in.
    pub(super) fn join(&self, ep: SocketAddr, keys: &[[u8; 16]]) -> Joined {
        let mut owners = self.owners.borrow_mut();
        let q = owners.entry(ep).or_default();
        if let Some(forming) = &q.forming {
            let mut pending = forming.keys.borrow_mut();
            if pending.len() + keys.len() > MAX_KEYS_PER_REQUEST {
                return Joined::Alone;
            }
            let range = pending.len()..pending.len() + keys.len();
            pending.extend_from_slice(keys);
            return Joined::Wait(Rc::clone(forming), range);
        }
        let request = PendingGet::with_keys(keys);
        q.forming = Some(Rc::clone(&request));
        if q.in_flight < IN_FLIGHT_PER_OWNER {
            q.in_flight += 1;
            request.launched.set(true);
            Joined::Launch(request, 0..keys.len())
        } else {
            Joined::Wait(request, 0..keys.len())
        }
    }

    /// The sending task of `request` has started: it takes no more keys.
    /// Returns the keys to send.
    pub(super) fn seal(&self, ep: SocketAddr, request: &Rc<PendingGet>) -> Vec<[u8; 16]> {
        let mut owners = self.owners.borrow_mut();
        if let Some(q) = owners.get_mut(&ep) {
            if q.forming.as_ref().is_some_and(|f| Rc::ptr_eq(f, request)) {
                q.forming = None;
            }
        }
        std::mem::take(&mut *request.keys.borrow_mut())
    }

    /// `request` was answered (or failed): wakes its lookups, and returns the
    /// forming request to launch now that the window has room, if any.
    pub(super) fn finish(
        &self,
        ep: SocketAddr,
        request: &PendingGet,
        outcome: Result<DirGetReply, String>,
    ) -> Option<Rc<PendingGet>> {
        request.complete(outcome);
        let mut owners = self.owners.borrow_mut();
        let q = owners.get_mut(&ep)?;
        q.in_flight -= 1;
        match &q.forming {
            Some(next) if !next.launched.get() => {
                q.in_flight += 1;
                next.launched.set(true);
                Some(Rc::clone(next))
            }
            _ => {
                if q.in_flight == 0 && q.forming.is_none() {
                    owners.remove(&ep);
                }
                None
            }
        }
    }
}

impl ShardStore {
    /// Looks `keys` up in the directory of the owner shard at `ep`, in a
    /// request shared with other batches' lookups when requests to that
    /// owner are already in flight. Returns the shared answer and where in
    /// its entries this lookup's keys are.
    pub(super) async fn dir_get(
        self: &Rc<Self>,
        ep: SocketAddr,
        keys: &[[u8; 16]],
    ) -> (Outcome, Range<usize>) {
        let (request, range) = match self.lookups.join(ep, keys) {
            Joined::Launch(request, range) => {
                self.spawn_dir_get(ep, Rc::clone(&request));
                (request, range)
            }
            Joined::Wait(request, range) => (request, range),
            Joined::Alone => {
                let outcome = self.send_dir_get(ep, keys.to_vec()).await;
                return (Rc::new(outcome), 0..keys.len());
            }
        };
        (request.outcome().await, range)
    }

    /// Sends `request` from a task of its own, then the requests that formed
    /// behind it, one at a time as the window allows.
    fn spawn_dir_get(self: &Rc<Self>, ep: SocketAddr, request: Rc<PendingGet>) {
        let this = Rc::clone(self);
        glommio::spawn_local(async move {
            let mut next = Some(request);
            while let Some(request) = next {
                let keys = this.lookups.seal(ep, &request);
                let outcome = this.send_dir_get(ep, keys).await;
                next = this.lookups.finish(ep, &request, outcome);
            }
        })
        .detach();
    }

    async fn send_dir_get(
        &self,
        ep: SocketAddr,
        keys: Vec<[u8; 16]>,
    ) -> Result<DirGetReply, String> {
        ShardStats::bump(&self.stats.directory_requests_sent, 1);
        let request = DirGet { keys };
        self.exchange(ep, self.id.request_timeout, async |conn| {
            let id = conn.next_id();
            conn.send(&request, id, &[]).await?;
            expect_reply::<DirGetReply>(conn, id).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn keys(from: u8, n: u8) -> Vec<[u8; 16]> {
        (from..from + n).map(|k| [k; 16]).collect()
    }

    /// Joins `keys` to `ep`'s queue, which must launch a new request.
    fn launch(q: &LookupQueues, ep: SocketAddr, keys: &[[u8; 16]]) -> Rc<PendingGet> {
        match q.join(ep, keys) {
            Joined::Launch(request, range) => {
                assert_eq!(range, 0..keys.len());
                request
            }
            _ => panic!("the lookup must launch a request"),
        }
    }

    fn reply(keys: &[[u8; 16]]) -> Result<DirGetReply, String> {
        Ok(DirGetReply {
            entries: vec![None; keys.len()],
        })
    }

    /// The first lookups to an owner leave at once, one request each, up to
    /// the window; past it they wait.
    #[test]
    fn lookups_leave_at_once_while_the_window_has_room() {
        let q = LookupQueues::default();
        for n in 0..IN_FLIGHT_PER_OWNER {
            let mine = keys(10 * n as u8, 3);
            let request = launch(&q, ep(1), &mine);
            assert_eq!(q.seal(ep(1), &request), mine);
        }
        // The window is full: the next lookup waits for a request to return.
        assert!(matches!(q.join(ep(1), &keys(90, 1)), Joined::Wait(..)));
        // Another owner has a window of its own.
        launch(&q, ep(2), &keys(0, 1));
    }

    /// Lookups made before the sending task started ride in its request.
    #[test]
    fn lookups_of_the_same_turn_share_a_launched_request() {
        let q = LookupQueues::default();
        let request = launch(&q, ep(1), &keys(0, 2));
        let Joined::Wait(same, r) = q.join(ep(1), &keys(5, 3)) else {
            panic!("must join the launched request");
        };
        assert!(Rc::ptr_eq(&request, &same));
        assert_eq!(r, 2..5);
        let sent = q.seal(ep(1), &request);
        assert_eq!(sent, [keys(0, 2), keys(5, 3)].concat());
    }

    /// With the window full, lookups form one request that leaves, with all
    /// their keys, when a request in flight is answered; every waiter sees
    /// the answer of the request that carried its keys.
    #[test]
    fn a_full_window_merges_lookups_into_the_next_request() {
        let q = LookupQueues::default();
        let mut out = Vec::new();
        for n in 0..IN_FLIGHT_PER_OWNER {
            let request = launch(&q, ep(1), &keys(n as u8, 1));
            let sent = q.seal(ep(1), &request);
            out.push((request, sent));
        }
        let Joined::Wait(merged, a) = q.join(ep(1), &keys(20, 2)) else {
            panic!("the window is full: must wait");
        };
        let Joined::Wait(same, b) = q.join(ep(1), &keys(30, 4)) else {
            panic!("must join the forming request");
        };
        assert!(Rc::ptr_eq(&merged, &same));
        assert_eq!((a, b), (0..2, 2..6));

        let (first, sent) = out.remove(0);
        let next = q.finish(ep(1), &first, reply(&sent));
        assert!(
            first.outcome.borrow().is_some(),
            "the answered request's lookups are woken"
        );
        let next = next.expect("the forming request leaves when the window opens");
        assert!(Rc::ptr_eq(&next, &merged));
        assert_eq!(q.seal(ep(1), &next), [keys(20, 2), keys(30, 4)].concat());
        // It is in flight now: the next lookup waits again.
        assert!(matches!(q.join(ep(1), &keys(40, 1)), Joined::Wait(..)));
    }

    /// A failure reaches every lookup that shared the request.
    #[test]
    fn a_failed_request_fails_every_lookup_that_rode_in_it() {
        let q = LookupQueues::default();
        let request = launch(&q, ep(1), &keys(0, 1));
        let Joined::Wait(..) = q.join(ep(1), &keys(1, 1)) else {
            panic!("must share it");
        };
        q.seal(ep(1), &request);
        assert!(q.finish(ep(1), &request, Err("no reply".into())).is_none());
        let outcome = request.outcome.borrow().clone().expect("answered");
        assert_eq!(outcome.as_ref().as_ref().unwrap_err(), "no reply");
        // Nothing in flight or forming: the owner's entry is gone.
        assert!(q.owners.borrow().is_empty());
    }

    /// A lookup too large to merge is sent on its own, and the forming
    /// request keeps its keys.
    #[test]
    fn a_lookup_past_the_request_limit_goes_alone() {
        let q = LookupQueues::default();
        let request = launch(&q, ep(1), &keys(0, 1));
        let big = vec![[7u8; 16]; MAX_KEYS_PER_REQUEST];
        assert!(matches!(q.join(ep(1), &big), Joined::Alone));
        assert_eq!(q.seal(ep(1), &request), keys(0, 1));
    }
}
