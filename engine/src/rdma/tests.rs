//! RDMA data-plane tests on the software fabric: deterministic, seeded, and
//! checked byte for byte. Node "A" reads from node "B"'s published pool.

use super::channel::{ChannelPool, ChannelSizes, LeaseError, QpExchange};
use super::fabric::{Fabric, FabricCq, FabricDevice, FabricOptions, FabricQp, FaultPlan};
use super::rail::{Rails, RemotePool};
use super::reader::{GenerationCheck, ReadItem, Reader};
use super::registration::{GpuBuffer, LazyRegions, RegistrationError, Registry};
use super::verbs::*;
use super::*;
use crate::keys::KeyHash;
use crate::pool::{Insert, Location, ShardPool};
use crate::store::ShardStats;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PAGE: usize = 4096;
const PEER: u32 = 7;
/// Per-read timeout in fabric ticks (one tick per CQ poll).
const TIMEOUT: Duration = Duration::from_micros(400);

/// A 4 KiB-aligned heap buffer (pool memory or a host KV buffer).
struct Buf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Buf {
    fn new(len: usize, fill: impl Fn(usize) -> u8) -> Buf {
        let raw = vec![0u8; len + PAGE];
        let start = raw.as_ptr().align_offset(PAGE);
        let mut b = Buf { raw, start, len };
        for (i, x) in b.bytes_mut().iter_mut().enumerate() {
            *x = fill(i);
        }
        b
    }
    fn ptr(&mut self) -> *mut u8 {
        // SAFETY: start + len <= raw.len().
        unsafe { self.raw.as_mut_ptr().add(self.start) }
    }
    fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// Content of pool byte `i` (differs per page and per byte).
fn pool_byte(i: usize) -> u8 {
    ((i / PAGE).wrapping_mul(131) ^ i.wrapping_mul(7) ^ (i >> 9)) as u8
}

const SENTINEL: u8 = 0xEE;

/// Answers QP exchanges from B's side of the fabric: creates a responder QP
/// on B's rail, connects it back with REMOTE_READ, keeps it alive.
struct Responder {
    devices: Vec<FabricDevice>,
    keep: Vec<(FabricQp, FabricCq)>,
    refuse: bool,
}

impl QpExchange<u32> for Responder {
    fn exchange(
        &mut self,
        _peer: &u32,
        rail: usize,
        local: QpEndpoint,
    ) -> Result<QpEndpoint, String> {
        if self.refuse {
            return Err("peer unreachable on the control connection".into());
        }
        let dev = &self.devices[rail];
        let cq = dev.create_cq(16).map_err(|e| e.to_string())?;
        let mut qp = dev
            .create_qp(
                &cq,
                QpCaps {
                    max_send_wr: 16,
                    max_send_sge: 1,
                },
            )
            .map_err(|e| e.to_string())?;
        let mtu = dev.port().active_mtu;
        connect_qp(&mut qp, Access::REMOTE_READ, &local, mtu).map_err(|e| e.to_string())?;
        let ep = qp.endpoint();
        // Tuple fields drop in order: the QP is destroyed before its CQ.
        self.keep.push((qp, cq));
        Ok(ep)
    }
}

/// Accepts every page (for tests about the transport, not eviction).
struct NoEviction;
impl GenerationCheck for NoEviction {
    fn still_valid(&mut self, _: &Location) -> bool {
        true
    }
}

/// Both nodes on one fabric: A's rails, B's devices, B's pool registered
/// REMOTE_READ on every B rail.
struct Setup {
    fabric: Fabric,
    rails: Rails<FabricDevice, u32>,
    responder: Responder,
    remote: Vec<RemotePool>,
    pool: Buf,
    stats: Arc<ShardStats>,
    // MRs of B's pool; dropped after the rails.
    _pool_mrs: Vec<FabricMr>,
}

use super::fabric::FabricMr;

fn setup(options: FabricOptions, rails: usize, max_channels: usize, sizes: ChannelSizes) -> Setup {
    setup_with_mtu(options, rails, max_channels, sizes, 5)
}

/// [`setup`] with B's ports at active MTU `b_mtu` (A's at 4096).
fn setup_with_mtu(
    options: FabricOptions,
    rails: usize,
    max_channels: usize,
    sizes: ChannelSizes,
    b_mtu: u8,
) -> Setup {
    let fabric = Fabric::new(options);
    for r in 0..rails {
        fabric.add_device(&format!("a{r}"), true);
        fabric.add_device_with_mtu(&format!("b{r}"), true, b_mtu);
    }
    let provider = fabric.provider();
    let stats = Arc::new(ShardStats::default());
    let names: Vec<String> = (0..rails).map(|r| format!("a{r}")).collect();
    let a = Rails::open(
        &provider,
        &names,
        1,
        3,
        max_channels,
        sizes,
        Arc::clone(&stats),
    )
    .unwrap();
    let b: Vec<FabricDevice> = (0..rails)
        .map(|r| provider.open(Some(&format!("b{r}")), 1, 3).unwrap())
        .collect();
    let mut pool = Buf::new(256 * PAGE, pool_byte);
    let mut pool_mrs = Vec::new();
    let mut remote = Vec::new();
    for dev in &b {
        // SAFETY: the pool outlives the MRs (Setup field order).
        let mr = unsafe { dev.register(pool.ptr(), pool.len, Access::REMOTE_READ) }.unwrap();
        remote.push(RemotePool::from(mr.keys()));
        pool_mrs.push(mr);
    }
    Setup {
        fabric,
        rails: a,
        responder: Responder {
            devices: b,
            keep: Vec::new(),
            refuse: false,
        },
        remote,
        pool,
        stats,
        _pool_mrs: pool_mrs,
    }
}

impl Setup {
    /// Reads pool pages `pages` into `dst` (page j of the batch into slot j).
    fn read(&mut self, reader: &mut Reader, pages: &[usize], dst: &mut Buf) -> Vec<bool> {
        self.read_checked(reader, pages, dst, &mut NoEviction)
    }

    fn read_checked(
        &mut self,
        reader: &mut Reader,
        pages: &[usize],
        dst: &mut Buf,
        check: &mut dyn GenerationCheck,
    ) -> Vec<bool> {
        let items = items(pages, dst);
        let clock = self.fabric.clock();
        // SAFETY: dst is alive and unaliased for the call.
        unsafe {
            reader.read(
                &mut self.rails,
                &PEER,
                &self.remote,
                &items,
                &mut self.responder,
                &clock,
                check,
            )
        }
    }

    fn register_host(&mut self, dst: &mut Buf) {
        // SAFETY: every test keeps its destination alive past the rails' use.
        unsafe { self.rails.register_host_buffer(dst.ptr(), dst.len) }.unwrap();
    }

    fn reader(&self) -> Reader {
        Reader::new(TIMEOUT, Arc::clone(&self.stats))
    }
}

/// Asserts the pages flagged true hold exactly their pool bytes, and the
/// ones flagged false were not turned into a "hit" with other bytes.
fn assert_delivered(setup: &Setup, pages: &[usize], dst: &Buf, ok: &[bool]) {
    for (j, (&p, &hit)) in pages.iter().zip(ok).enumerate() {
        let got = &dst.bytes()[j * PAGE..(j + 1) * PAGE];
        if hit {
            assert_eq!(
                got,
                &setup.pool.bytes()[p * PAGE..(p + 1) * PAGE],
                "page {j} (pool page {p})"
            );
        }
    }
}

/// Read items for pool pages `pages`, page j of the batch into slot j of `dst`.
fn items(pages: &[usize], dst: &mut Buf) -> Vec<ReadItem> {
    let base = dst.ptr();
    pages
        .iter()
        .enumerate()
        .map(|(j, &p)| ReadItem {
            location: Location {
                offset: (p * PAGE) as u64,
                generation: 0,
                len: PAGE as u32,
            },
            // SAFETY: dst holds pages.len() pages.
            dst: unsafe { base.add(j * PAGE) },
        })
        .collect()
}

fn dst_for(pages: usize) -> Buf {
    Buf::new(pages * PAGE, |_| SENTINEL)
}

#[test]
fn one_post_per_qp_per_batch_with_selective_signalling() {
    let mut s = setup(FabricOptions::default(), 1, 4, ChannelSizes::default());
    let mut dst = dst_for(100);
    s.register_host(&mut dst);
    let mut reader = s.reader();
    let pages: Vec<usize> = (0..100).map(|i| (i * 37) % 256).collect();
    let ok = s.read(&mut reader, &pages, &mut dst);
    assert!(ok.iter().all(|&x| x));
    assert_delivered(&s, &pages, &dst, &ok);
    let c = s.fabric.counters();
    assert_eq!(
        c.posts, 1,
        "all 100 READs of the batch chained into one post"
    );
    assert_eq!(c.executed, 100);
    assert_eq!(
        c.completions, 1,
        "only the last READ of the chain is signalled"
    );
    assert_eq!(s.rails.rail(0).channels.open_to(&PEER), 1);
    assert_eq!(
        s.rails.rail(0).channels.idle_to(&PEER),
        1,
        "channel returned to the pool"
    );
    // The next batch reuses the channel: no new QP.
    let before = s.fabric.counters().qps_created;
    let ok = s.read(&mut reader, &pages[..10], &mut dst);
    assert!(ok.iter().all(|&x| x));
    assert_eq!(s.fabric.counters().qps_created, before);
}

#[test]
fn ports_of_different_mtus_agree_on_the_smaller() {
    // A's port at 4096, B's at 1024 (ibv_mtu 3): each end tells the other
    // its MTU in the QP exchange and both connect at 1024. Had A kept its
    // own, every READ would retry out (the fabric drops packets of the
    // other path MTU, as a real one does).
    let mut s = setup_with_mtu(FabricOptions::default(), 1, 4, ChannelSizes::default(), 3);
    let mut reader = s.reader();
    let pages: Vec<usize> = (0..8).collect();
    let mut dst = dst_for(pages.len());
    s.register_host(&mut dst);
    let ok = s.read(&mut reader, &pages, &mut dst);
    assert_eq!(ok, vec![true; pages.len()]);
    assert_delivered(&s, &pages, &dst, &ok);
}

#[test]
fn completions_out_of_order_are_matched_by_wr_id() {
    // 16 READs per post: a 200-page batch is 13 chains on 13 channels, and
    // each chain's completion is delayed by a seeded 0..=40 ticks, so they
    // arrive in a shuffled order across the CQs.
    for seed in 0..8 {
        let options = FabricOptions {
            seed,
            max_completion_delay_ticks: 40,
            ..FabricOptions::default()
        };
        let sizes = ChannelSizes {
            max_send_wr: 16,
            max_send_sge: 1,
            cq_entries: 16,
        };
        let mut s = setup(options, 1, 16, sizes);
        let mut dst = dst_for(200);
        s.register_host(&mut dst);
        let mut reader = s.reader();
        let pages: Vec<usize> = (0..200).map(|i| (i * 11 + seed as usize) % 256).collect();
        for _ in 0..3 {
            let ok = s.read(&mut reader, &pages, &mut dst);
            assert!(ok.iter().all(|&x| x), "seed {seed}");
            assert_delivered(&s, &pages, &dst, &ok);
        }
        assert_eq!(
            s.fabric.counters().posts,
            3 * 13,
            "one post per QP per batch"
        );
        assert_eq!(s.rails.rail(0).channels.open_to(&PEER), 13);
        assert_eq!(
            s.stats
                .rdma_read_timeouts
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}

#[test]
fn a_batch_is_striped_over_8_rails_by_index() {
    let mut s = setup(FabricOptions::default(), 8, 4, ChannelSizes::default());
    assert_eq!(s.stats.snapshot().rdma_rails, 8);
    let seen: Arc<Mutex<Vec<(u64, u32)>>> = Arc::default();
    let log = Arc::clone(&seen);
    s.fabric
        .on_read(move |e| log.lock().unwrap().push((e.remote_addr, e.rkey)));
    let mut dst = dst_for(64);
    s.register_host(&mut dst);
    let mut reader = s.reader();
    let pages: Vec<usize> = (0..64).map(|i| 255 - i).collect();
    let ok = s.read(&mut reader, &pages, &mut dst);
    assert!(ok.iter().all(|&x| x));
    assert_delivered(&s, &pages, &dst, &ok);
    assert_eq!(s.fabric.counters().posts, 8, "one post per rail");
    let base = s.remote[0].addr;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 64);
    for &(addr, rkey) in seen.iter() {
        let j = pages
            .iter()
            .position(|&p| (p * PAGE) as u64 == addr - base)
            .unwrap();
        assert_eq!(
            rkey,
            s.remote[j % 8].rkey,
            "page {j} went through rail {}",
            j % 8
        );
    }
    for r in 0..8 {
        assert_eq!(s.rails.rail(r).channels.open_to(&PEER), 1, "rail {r}");
    }
    // Striping uses only the rails both ends have.
    assert_eq!(s.rails.stripe(13, 3), Some(1));
    assert_eq!(s.rails.stripe(13, 0), None);
}

/// A's device a0 and a responder on B's device b0, one fabric.
fn device_and_responder() -> (FabricDevice, Responder) {
    let fabric = Fabric::new(FabricOptions::default());
    fabric.add_device("a0", true);
    fabric.add_device("b0", true);
    let provider = fabric.provider();
    let a = provider.open(Some("a0"), 1, 3).unwrap();
    let responder = Responder {
        devices: vec![provider.open(Some("b0"), 1, 3).unwrap()],
        keep: Vec::new(),
        refuse: false,
    };
    (a, responder)
}

#[test]
fn channel_pool_under_concurrent_leases() {
    // Six tasks of one shard interleave lease / hold / release / break in a
    // seeded order: the cap is never exceeded, every refused lease is
    // counted, and a broken channel is replaced by a new QP.
    let (a, mut responder) = device_and_responder();
    let stats = Arc::new(ShardStats::default());
    let cap = 3;
    let mut pool: ChannelPool<FabricDevice, u32> =
        ChannelPool::new(0, cap, ChannelSizes::default(), Arc::clone(&stats));
    let mut rng = StdRng::seed_from_u64(42);
    let mut held: Vec<Option<super::channel::Channel<FabricDevice>>> =
        (0..6).map(|_| None).collect();
    let (mut refused, mut broken, mut qpns) = (0u64, 0u64, std::collections::HashSet::new());
    for _ in 0..2000 {
        let t = rng.random_range(0..held.len());
        match held[t].take() {
            None => match pool.lease(&a, &PEER, &mut responder) {
                Ok(ch) => {
                    assert_eq!(ch.qp.state(), QpState::Rts);
                    qpns.insert(ch.qp.endpoint().qp_num);
                    held[t] = Some(ch);
                }
                Err(LeaseError::Busy(n)) => {
                    assert_eq!(n, cap);
                    assert_eq!(
                        held.iter().flatten().count(),
                        cap,
                        "refused only at the cap"
                    );
                    refused += 1;
                }
                Err(e) => panic!("unexpected lease error: {e}"),
            },
            Some(ch) => {
                if rng.random_range(0..10) == 0 {
                    pool.discard(&PEER, ch);
                    broken += 1;
                } else {
                    pool.release(&PEER, ch);
                }
            }
        }
        assert!(pool.open_to(&PEER) <= cap);
        assert_eq!(
            pool.open_to(&PEER),
            held.iter().flatten().count() + pool.idle_to(&PEER)
        );
    }
    let snap = stats.snapshot();
    assert!(
        refused > 0 && broken > 0,
        "the schedule exercised both paths"
    );
    assert_eq!(snap.rdma_lease_failures, refused);
    assert_eq!(snap.rdma_channel_discards, broken);
    // Every broken channel was replaced by a new QP, never reused: the QPs
    // ever built are the ones open now plus the discarded ones.
    assert_eq!(qpns.len() as u64, pool.open_to(&PEER) as u64 + broken);

    // A peer that does not answer the exchange is a counted lease failure.
    let mut fresh: ChannelPool<FabricDevice, u32> =
        ChannelPool::new(0, cap, ChannelSizes::default(), Arc::clone(&stats));
    responder.refuse = true;
    let err = fresh.lease(&a, &PEER, &mut responder).unwrap_err();
    assert!(matches!(err, LeaseError::Exchange(_)), "{err}");
    assert_eq!(stats.snapshot().rdma_lease_failures, refused + 1);
    assert_eq!(fresh.open_to(&PEER), 0);
}

#[test]
fn channels_leased_before_a_peer_was_forgotten_leave_its_new_entry_alone() {
    // A peer leaves the view while two batches hold channels to it, comes
    // back at the same endpoint, and a new channel is built; then the old
    // batches end, one with a discard, one with a release. Only the new
    // channel stays counted, idle, and offered to the responder.
    let (a, mut responder) = device_and_responder();
    let stats = Arc::new(ShardStats::default());
    let mut pool: ChannelPool<FabricDevice, u32> =
        ChannelPool::new(0, 4, ChannelSizes::default(), Arc::clone(&stats));
    let old1 = pool.lease(&a, &PEER, &mut responder).unwrap();
    let old2 = pool.lease(&a, &PEER, &mut responder).unwrap();
    let old3 = pool.lease(&a, &PEER, &mut responder).unwrap();
    // And one reserved, its exchange still out.
    let reserved = pool.reserve(&a, &PEER).unwrap();
    pool.forget(&PEER);
    let new = pool.lease(&a, &PEER, &mut responder).unwrap();
    let new_qp = new.qp.endpoint().qp_num;
    pool.release(&PEER, new);
    pool.discard(&PEER, old1);
    pool.discard(&PEER, old2); // this one used to panic: the count went below 0
    pool.release(&PEER, old3);
    let answer = responder.exchange(&PEER, 0, reserved.endpoint()).unwrap();
    pool.complete(&a, &PEER, reserved, &answer).unwrap();
    assert_eq!(pool.open_to(&PEER), 1);
    assert_eq!(pool.idle_to(&PEER), 1);
    assert_eq!(pool.live_qps(&PEER), vec![new_qp]);
    let again = pool.lease(&a, &PEER, &mut responder).unwrap();
    assert_eq!(again.qp.endpoint().qp_num, new_qp);
}

/// Runs one batch with `faults` on, then one with faults off.
fn fault_then_recover(faults: FaultPlan, seed: u64) -> (Setup, Vec<bool>, Buf) {
    let options = FabricOptions {
        seed,
        ..FabricOptions::default()
    };
    let mut s = setup(options, 2, 4, ChannelSizes::default());
    let mut dst = dst_for(32);
    s.register_host(&mut dst);
    let mut reader = s.reader();
    let pages: Vec<usize> = (0..32).collect();
    s.fabric.set_faults(faults);
    let ok = s.read(&mut reader, &pages, &mut dst);
    assert_delivered(&s, &pages, &dst, &ok);
    // Nothing in flight may land later: advance the fabric well past any
    // delay and check the misses' destinations still hold the sentinel.
    s.fabric.advance(10_000);
    for (j, &hit) in ok.iter().enumerate() {
        if !hit {
            assert!(
                dst.bytes()[j * PAGE..(j + 1) * PAGE]
                    .iter()
                    .all(|&b| b == SENTINEL)
                    || {
                        // A READ that executed before its chain failed may have
                        // landed; it must then be the right bytes (never a mix).
                        dst.bytes()[j * PAGE..(j + 1) * PAGE]
                            == s.pool.bytes()[j * PAGE..(j + 1) * PAGE]
                    }
            );
        }
    }
    s.fabric.set_faults(FaultPlan::default());
    let mut dst2 = dst_for(32);
    s.register_host(&mut dst2);
    let again = s.read(&mut reader, &pages, &mut dst2);
    assert!(
        again.iter().all(|&x| x),
        "the rails recover once the fault is gone"
    );
    assert_delivered(&s, &pages, &dst2, &again);
    (s, ok, dst)
}

#[test]
fn completion_errors_surface_as_counters_and_misses() {
    for (code, faults) in [
        (
            10,
            FaultPlan {
                remote_access_per_mille: 1000,
                ..FaultPlan::default()
            },
        ),
        (
            12,
            FaultPlan {
                retry_exceeded_per_mille: 1000,
                ..FaultPlan::default()
            },
        ),
        (
            13,
            FaultPlan {
                rnr_retry_per_mille: 1000,
                ..FaultPlan::default()
            },
        ),
    ] {
        let (s, ok, _) = fault_then_recover(faults, 3);
        let snap = s.stats.snapshot();
        assert!(
            ok.iter().all(|&x| !x),
            "status {code}: every page is a miss"
        );
        assert_eq!(
            snap.rdma_read_wc_errors, 2,
            "status {code}: one error per rail chain"
        );
        assert_eq!(snap.rdma_last_wc_status, code);
        assert_eq!(
            snap.rdma_channel_discards, 2,
            "both errored channels discarded"
        );
        assert_eq!(snap.rdma_read_timeouts, 0);
        for r in 0..2 {
            assert_eq!(
                s.rails.rail(r).channels.open_to(&PEER),
                1,
                "replaced on rail {r}"
            );
        }
    }
}

#[test]
fn lost_completion_and_slow_peer_time_out_without_hanging() {
    let lost = FaultPlan {
        lost_completion_per_mille: 1000,
        ..FaultPlan::default()
    };
    let (s, ok, _) = fault_then_recover(lost, 5);
    assert!(ok.iter().all(|&x| !x));
    let snap = s.stats.snapshot();
    assert_eq!(snap.rdma_read_timeouts, 2, "one timed-out chain per rail");
    assert_eq!(snap.rdma_channel_discards, 2);
    assert_eq!(snap.rdma_read_wc_errors, 0);

    // A slow peer (responder b1 only) times out rail 1; rail 0 delivers.
    let slow = FaultPlan {
        slow_device: Some("b1".into()),
        slow_ticks: 5_000,
        ..FaultPlan::default()
    };
    let (s, ok, dst) = fault_then_recover(slow, 6);
    for (j, &hit) in ok.iter().enumerate() {
        assert_eq!(hit, j % 2 == 0, "page {j}");
        if j % 2 == 1 {
            // Its QP was destroyed at the timeout: the READ never lands.
            assert!(dst.bytes()[j * PAGE..(j + 1) * PAGE]
                .iter()
                .all(|&b| b == SENTINEL));
        }
    }
    assert_eq!(s.stats.snapshot().rdma_read_timeouts, 1);
}

#[test]
fn a_slow_peer_within_the_batch_bound_delivers() {
    // 32 pages of 4 KiB: the batch's bound is TIMEOUT (400 ticks) plus the
    // 1,311 its 128 KiB take at the floor rate. Rail 1's peer answers
    // 1,000 ticks late: past TIMEOUT, within the bound.
    let bound = crate::net::deadline::for_transfer(TIMEOUT, 32 * PAGE as u64);
    assert_eq!(bound.as_micros(), 400 + 1_310);
    let slow = FaultPlan {
        slow_device: Some("b1".into()),
        slow_ticks: 1_000,
        ..FaultPlan::default()
    };
    let (s, ok, _) = fault_then_recover(slow, 8);
    assert!(ok.iter().all(|&hit| hit));
    let snap = s.stats.snapshot();
    assert_eq!(
        (snap.rdma_read_timeouts, snap.rdma_channel_discards),
        (0, 0)
    );
}

#[test]
fn refused_posts_are_counted_misses() {
    let refuse = FaultPlan {
        post_refusal_per_mille: 1000,
        ..FaultPlan::default()
    };
    let (s, ok, _) = fault_then_recover(refuse, 7);
    assert!(ok.iter().all(|&x| !x));
    let snap = s.stats.snapshot();
    assert_eq!(snap.rdma_post_failures, 2);
    assert_eq!(snap.rdma_channel_discards, 2);
    assert_eq!(
        s.fabric.counters().executed,
        32,
        "only the recovery batch ran"
    );
}

#[test]
fn random_faults_never_deliver_wrong_bytes() {
    // Mixed faults at seeded rates over many batches: whatever is reported
    // delivered is byte-exact, and every failure is accounted for.
    let faults = FaultPlan {
        remote_access_per_mille: 20,
        retry_exceeded_per_mille: 20,
        lost_completion_per_mille: 50,
        ..FaultPlan::default()
    };
    let options = FabricOptions {
        seed: 99,
        max_completion_delay_ticks: 30,
        faults,
        ..FabricOptions::default()
    };
    let sizes = ChannelSizes {
        max_send_wr: 8,
        max_send_sge: 1,
        cq_entries: 8,
    };
    let mut s = setup(options, 4, 8, sizes);
    let mut reader = s.reader();
    let mut rng = StdRng::seed_from_u64(99);
    let (mut hits, mut misses) = (0, 0);
    for _ in 0..40 {
        let n = rng.random_range(1..64);
        let pages: Vec<usize> = (0..n).map(|_| rng.random_range(0..256)).collect();
        let mut dst = dst_for(n);
        let ok = s.read(&mut reader, &pages, &mut dst);
        assert_delivered(&s, &pages, &dst, &ok);
        hits += ok.iter().filter(|&&x| x).count();
        misses += ok.iter().filter(|&&x| !x).count();
    }
    let snap = s.stats.snapshot();
    assert!(hits > 0 && misses > 0, "hits {hits}, misses {misses}");
    assert!(snap.rdma_read_wc_errors > 0 && snap.rdma_read_timeouts > 0);
    assert_eq!(
        snap.rdma_channel_discards,
        snap.rdma_read_wc_errors + snap.rdma_read_timeouts
    );
    assert!([10, 12].contains(&snap.rdma_last_wc_status));
}

/// A destination outside every registered buffer is registered for the
/// batch that reads into it and deregistered with it. Never cached: SGLang's
/// per-page dummy tensors are freed after the call and their addresses
/// reused by new memory, and an MR found by address would still pin the old
/// physical pages, so a later READ would land there and report a hit.
#[test]
fn unregistered_destinations_are_registered_for_their_batch_only() {
    let mut s = setup(FabricOptions::default(), 1, 4, ChannelSizes::default());
    let mut reader = s.reader();
    // Registered up front: no miss.
    let mut host = dst_for(8);
    s.register_host(&mut host);
    let pages: Vec<usize> = (0..8).collect();
    assert!(s.read(&mut reader, &pages, &mut host).iter().all(|&x| x));
    assert_eq!(s.stats.snapshot().rdma_local_reg_misses, 0);
    let registered = s.fabric.live_mrs();
    // A buffer PeerCache was never told about: each page counts as a miss
    // (the batch registers the pages' region once) and the reads still
    // succeed.
    let mut stray = dst_for(8);
    let ok = s.read(&mut reader, &pages, &mut stray);
    assert!(ok.iter().all(|&x| x));
    assert_delivered(&s, &pages, &stray, &ok);
    assert_eq!(s.stats.snapshot().rdma_local_reg_misses, 8);
    // Once the batch is finished its registrations are gone.
    assert_eq!(s.fabric.live_mrs(), registered, "no MR outlives its batch");
    assert_eq!(s.stats.snapshot().rdma_lazy_local_mrs, 0);
    // Reading into the same addresses again registers them again.
    let ok = s.read(&mut reader, &pages, &mut stray);
    assert!(ok.iter().all(|&x| x));
    assert_delivered(&s, &pages, &stray, &ok);
    assert_eq!(s.stats.snapshot().rdma_local_reg_misses, 16);
    assert_eq!(s.fabric.live_mrs(), registered);
}

/// While a batch is in flight its on-demand registrations are alive (and
/// counted), adjacent destinations sharing one MR registered once; finishing
/// the batch drops them.
#[test]
fn a_batch_holds_its_on_demand_registrations_until_finished() {
    let mut s = setup(FabricOptions::default(), 1, 4, ChannelSizes::default());
    let mut reader = s.reader();
    let registered = s.fabric.live_mrs();
    let pages: Vec<usize> = (0..8).collect();
    let mut stray = dst_for(8);
    let items = items(&pages, &mut stray);
    let clock = s.fabric.clock();
    // SAFETY: `stray` outlives the batch.
    let mut batch = unsafe {
        reader.post(
            &mut s.rails,
            &PEER,
            &s.remote,
            &items,
            &mut s.responder,
            &clock,
        )
    };
    // The 8 adjacent pages share one MR, held while posted.
    assert_eq!(s.stats.snapshot().rdma_lazy_local_mrs, 1);
    assert_eq!(s.fabric.live_mrs() - registered, 1);
    while !reader.poll(&mut batch, &PEER, &clock) {}
    let ok = reader.finish(&mut s.rails, &PEER, batch, &items, &mut NoEviction);
    assert!(ok.iter().all(|&x| x));
    assert_eq!(s.fabric.live_mrs(), registered);
    assert_eq!(s.stats.snapshot().rdma_lazy_local_mrs, 0);
}

#[test]
fn access_flags_are_enforced_by_the_fabric() {
    let mut s = setup(FabricOptions::default(), 1, 4, ChannelSizes::default());
    let mut reader = s.reader();
    // A's host buffer is registered LOCAL_WRITE only. If B tries to READ it
    // with that MR's rkey, the fabric refuses with a remote access error.
    let mut host = Buf::new(4 * PAGE, |i| i as u8);
    let a_dev = s.rails.rail(0).device.clone();
    // SAFETY: host outlives the rails.
    let host_keys = unsafe {
        s.rails
            .rail_mut(0)
            .registry
            .register_host_buffer(&a_dev, host.ptr(), host.len)
    }
    .unwrap();
    let stats_b = Arc::new(ShardStats::default());
    let b_dev = s.responder.devices[0].clone();
    let mut b_rails: Rails<FabricDevice, u32> = Rails::from_devices(
        vec![b_dev],
        4,
        ChannelSizes::default(),
        Arc::clone(&stats_b),
    );
    let mut b_to_a = Responder {
        devices: vec![a_dev],
        keep: Vec::new(),
        refuse: false,
    };
    let mut dst = dst_for(1);
    // SAFETY: dst outlives b_rails.
    unsafe { b_rails.register_host_buffer(dst.ptr(), dst.len) }.unwrap();
    let items = [ReadItem {
        location: Location {
            offset: 0,
            generation: 0,
            len: PAGE as u32,
        },
        dst: dst.ptr(),
    }];
    let mut b_reader = Reader::new(TIMEOUT, Arc::clone(&stats_b));
    let clock = s.fabric.clock();
    // SAFETY: dst alive for the call.
    let ok = unsafe {
        b_reader.read(
            &mut b_rails,
            &1u32,
            &[host_keys.into()],
            &items,
            &mut b_to_a,
            &clock,
            &mut NoEviction,
        )
    };
    assert_eq!(ok, vec![false]);
    assert_eq!(stats_b.snapshot().rdma_last_wc_status, 10);
    assert!(
        dst.bytes().iter().all(|&b| b == SENTINEL),
        "not one byte of the host buffer leaked"
    );

    // A pool registered without REMOTE_READ cannot be read either.
    let mut closed = Buf::new(PAGE, |_| 1);
    // SAFETY: closed outlives the MR.
    let mr = unsafe { s.responder.devices[0].register(closed.ptr(), PAGE, Access::LOCAL_WRITE) }
        .unwrap();
    let mut dst2 = dst_for(1);
    s.register_host(&mut dst2);
    let items = [ReadItem {
        location: Location {
            offset: 0,
            generation: 0,
            len: PAGE as u32,
        },
        dst: dst2.ptr(),
    }];
    let clock = s.fabric.clock();
    // SAFETY: dst2 alive for the call.
    let ok = unsafe {
        reader.read(
            &mut s.rails,
            &PEER,
            &[mr.keys().into()],
            &items,
            &mut s.responder,
            &clock,
            &mut NoEviction,
        )
    };
    assert_eq!(ok, vec![false]);
    assert_eq!(s.stats.snapshot().rdma_last_wc_status, 10);
    // A READ past the end of the pool MR is refused the same way.
    let items = [ReadItem {
        location: Location {
            offset: 255 * PAGE as u64 + 1,
            generation: 0,
            len: PAGE as u32,
        },
        dst: dst2.ptr(),
    }];
    // SAFETY: as above.
    let ok = unsafe {
        reader.read(
            &mut s.rails,
            &PEER,
            &s.remote.clone(),
            &items,
            &mut s.responder,
            &clock,
            &mut NoEviction,
        )
    };
    assert_eq!(ok, vec![false]);
    assert_eq!(s.stats.snapshot().rdma_read_wc_errors, 2);
    // MR rules: REMOTE_WRITE needs LOCAL_WRITE, as in libibverbs.
    // SAFETY: closed is alive.
    let err = unsafe { s.responder.devices[0].register(closed.ptr(), PAGE, Access::REMOTE_WRITE) }
        .unwrap_err();
    assert_eq!(err.call, "ibv_reg_mr");
}

/// B's shard pool, shared with the fabric hook that evicts mid-READ.
struct PeerPool(ShardPool);
// SAFETY: the test uses the pool from one thread at a time under a mutex.
unsafe impl Send for PeerPool {}

struct PoolCheck(Arc<Mutex<PeerPool>>);
impl GenerationCheck for PoolCheck {
    fn still_valid(&mut self, location: &Location) -> bool {
        self.0.lock().unwrap().0.validate(*location).is_some()
    }
}

#[test]
fn an_eviction_during_a_read_is_a_miss() {
    let mut s = setup(FabricOptions::default(), 1, 4, ChannelSizes::default());
    // B's real shard pool over its published memory, no quarantine so the
    // evicted slot can be reused at once (the worst case).
    // SAFETY: s.pool outlives the ShardPool (dropped at the end of the test).
    let shard = unsafe { ShardPool::new(s.pool.ptr(), 0, s.pool.len, 64 * PAGE, Duration::ZERO) };
    let pool = Arc::new(Mutex::new(PeerPool(shard)));
    let now = Instant::now();
    let mut locations = Vec::new();
    for k in 1..=4u128 {
        let mut ev = Vec::new();
        match pool
            .lock()
            .unwrap()
            .0
            .insert(KeyHash(k), PAGE, now, &mut ev)
            .unwrap()
        {
            Insert::Fresh { dst, location } => {
                // SAFETY: dst is the slot's PAGE bytes.
                unsafe { std::ptr::write_bytes(dst, k as u8, PAGE) };
                locations.push(location);
            }
            Insert::Present(_) => unreachable!(),
        }
    }
    let victim = locations[2];
    let hook_pool = Arc::clone(&pool);
    let base = s.remote[0].addr;
    s.fabric.on_read(move |e| {
        if e.remote_addr == base + victim.offset {
            // The owner evicts key 3 (bumping the slot generation first, as
            // the pool does) and another page's bytes (9s) land in the slot
            // while the READ is in flight: the READ copies those bytes.
            let mut p = hook_pool.lock().unwrap();
            assert!(p.0.remove(KeyHash(3), Instant::now()));
            // SAFETY: the victim slot's PAGE bytes inside B's pool buffer.
            unsafe { std::ptr::write_bytes(e.remote_addr as *mut u8, 9, PAGE) };
        }
    });
    let mut dst = dst_for(4);
    s.register_host(&mut dst);
    let base_ptr = dst.ptr();
    let items: Vec<ReadItem> = locations
        .iter()
        .enumerate()
        // SAFETY: dst holds 4 pages.
        .map(|(j, &location)| ReadItem {
            location,
            dst: unsafe { base_ptr.add(j * PAGE) },
        })
        .collect();
    let mut reader = s.reader();
    let clock = s.fabric.clock();
    let mut check = PoolCheck(Arc::clone(&pool));
    // SAFETY: dst alive for the call.
    let ok = unsafe {
        reader.read(
            &mut s.rails,
            &PEER,
            &s.remote.clone(),
            &items,
            &mut s.responder,
            &clock,
            &mut check,
        )
    };
    assert_eq!(
        ok,
        vec![true, true, false, true],
        "the raced page is a miss"
    );
    for (j, &hit) in ok.iter().enumerate() {
        if hit {
            assert!(dst.bytes()[j * PAGE..(j + 1) * PAGE]
                .iter()
                .all(|&b| b == j as u8 + 1));
        }
    }
    // The READ did copy key 9's bytes: without the generation check they
    // would have been reported as key 3.
    assert!(dst.bytes()[2 * PAGE..3 * PAGE].iter().all(|&b| b == 9));
}

#[test]
fn gpu_registration_names_the_gpudirect_prerequisite() {
    let fabric = Fabric::new(FabricOptions::default());
    fabric.add_device("a0", true);
    let dev = fabric.provider().open(None, 1, 3).unwrap();
    let stats = Arc::new(ShardStats::default());
    let mut reg: Registry<FabricDevice> = Registry::new(Arc::clone(&stats));
    let mut gpu_mem = Buf::new(PAGE, |_| 0);
    let gpu = GpuBuffer {
        addr: gpu_mem.ptr() as u64,
        len: PAGE,
        dmabuf: Some((5, 0)),
    };
    let err = reg.register_gpu_buffer(&dev, gpu).unwrap_err();
    assert!(matches!(err, RegistrationError::Gpu { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("ibv_reg_dmabuf_mr") && msg.contains("nvidia-peermem"),
        "{msg}"
    );

    let fabric = Fabric::new(FabricOptions {
        dmabuf: true,
        ..FabricOptions::default()
    });
    fabric.add_device("a0", true);
    let dev = fabric.provider().open(None, 1, 3).unwrap();
    let keys = reg.register_gpu_buffer(&dev, gpu).unwrap();
    assert_eq!(keys.addr, gpu.addr);
    // A READ into the GPU buffer now needs no lazy registration.
    let mut lazy = LazyRegions::default();
    // SAFETY: gpu_mem is alive.
    unsafe { reg.register_destinations(&dev, &[(gpu.addr, PAGE as u64)], &mut lazy) }.unwrap();
    assert!(lazy.is_empty());
    assert_eq!(
        reg.lkey_for(gpu.addr, PAGE as u64, &lazy).unwrap(),
        keys.lkey
    );
    assert_eq!(stats.snapshot().rdma_local_reg_misses, 0);
}

#[test]
fn queue_pairs_follow_the_state_machine() {
    let fabric = Fabric::new(FabricOptions::default());
    fabric.add_device("a0", true);
    fabric.add_device("down", false);
    let provider = fabric.provider();
    let devices = provider.devices(1).unwrap();
    assert_eq!(
        devices.iter().map(|d| d.active).collect::<Vec<_>>(),
        vec![true, false]
    );
    let err = provider.open(Some("down"), 1, 3).unwrap_err();
    assert_eq!(err.call, "ibv_query_port");
    let err = provider.open(Some("mlx5_9"), 1, 3).unwrap_err();
    assert!(err.to_string().contains("device_name"), "{err}");
    let dev = provider.open(None, 1, 3).unwrap();
    let cq = dev.create_cq(4).unwrap();
    let caps = QpCaps {
        max_send_wr: 4,
        max_send_sge: 1,
    };
    let mut a = dev.create_qp(&cq, caps).unwrap();
    let mut b = dev.create_qp(&cq, caps).unwrap();
    assert_eq!(a.state(), QpState::Reset);
    let err = a.to_rtr(&b.endpoint(), 5).unwrap_err();
    assert!(err.call.starts_with("ibv_modify_qp"), "{err}");
    let wr = WorkRequest {
        wr_id: 1,
        opcode: Opcode::Read,
        sges: vec![],
        remote_addr: 0,
        rkey: 0,
        signaled: true,
    };
    let err = a.post_send(std::slice::from_ref(&wr)).unwrap_err();
    assert_eq!((err.index, err.error.call), (0, "ibv_post_send"));
    connect_qp(&mut a, Access::default(), &b.endpoint(), 5).unwrap();
    connect_qp(&mut b, Access::REMOTE_READ, &a.endpoint(), 5).unwrap();
    assert_eq!(a.state(), QpState::Rts);
    // A full send queue refuses at the first request that does not fit.
    let chain = vec![wr; 6];
    let err = a.post_send(&chain).unwrap_err();
    assert_eq!(err.index, 4);
}

#[test]
fn wc_status_strings_match_libibverbs() {
    assert_eq!(WcStatus::REM_ACCESS_ERR.as_str(), "remote access error");
    assert_eq!(
        WcStatus::RETRY_EXC_ERR.as_str(),
        "transport retry counter exceeded"
    );
    assert_eq!(
        WcStatus::RNR_RETRY_EXC_ERR.as_str(),
        "RNR retry counter exceeded"
    );
    assert_eq!(WcStatus(99).as_str(), "unknown");
    assert_eq!(WcStatus(10).to_string(), "remote access error (10)");
}

fn config(extra: &str) -> Config {
    let text = format!(r#"{{"discovery_addr":"127.0.0.1:31998"{extra}}}"#);
    Config::from_json(&text).unwrap()
}

/// The transport `select` picks (the factory aside).
fn transport(config: &Config, source: &RdmaSource) -> Result<Transport, String> {
    select(config, source).map(|(t, _)| t)
}

#[test]
fn transport_selection_falls_back_or_fails_fast() {
    let system = RdmaSource::System;
    assert_eq!(
        transport(&config(r#","protocol":"tcp""#), &system),
        Ok(Transport::Tcp)
    );
    let reason = match transport(&config(r#","protocol":"rdma""#), &system) {
        Ok(Transport::TcpFallback(reason)) => reason,
        // A host with a working NIC and the `ibverbs` build: nothing to
        // fall back from.
        #[cfg(feature = "ibverbs")]
        Ok(Transport::Rdma(devices)) if !devices.is_empty() => return,
        other => panic!("protocol rdma without a usable device must fall back: {other:?}"),
    };
    assert!(!reason.is_empty());
    let err = transport(
        &config(r#","protocol":"rdma","require_rdma":true"#),
        &system,
    )
    .unwrap_err();
    assert_eq!(err, reason, "require_rdma fails with the same reason");
    #[cfg(not(feature = "ibverbs"))]
    assert!(reason.contains("`ibverbs` cargo feature"), "{reason}");
    // With the feature the reason is a verbs error naming its call.
    #[cfg(feature = "ibverbs")]
    assert!(reason.contains("ibv_"), "{reason}");
}

/// A reader shard and a data (owner) shard on one fabric, one rail each,
/// at most 4 channels per peer.
fn reader_and_owner() -> (
    shard::RdmaShard<FabricDevice>,
    shard::RdmaShard<FabricDevice>,
) {
    reader_and_owner_on_rails(1)
}

/// [`reader_and_owner`] with `rails` rails each (devices `reader<r>` and
/// `owner<r>`).
fn reader_and_owner_on_rails(
    rails: usize,
) -> (
    shard::RdmaShard<FabricDevice>,
    shard::RdmaShard<FabricDevice>,
) {
    let fabric = Fabric::new(FabricOptions::default());
    for r in 0..rails {
        fabric.add_device(&format!("reader{r}"), true);
        fabric.add_device(&format!("owner{r}"), true);
    }
    let stats = Arc::new(ShardStats::default());
    let open = |name: &str| {
        let names: Vec<String> = (0..rails).map(|r| format!("{name}{r}")).collect();
        let rails: Rails<FabricDevice, shard::PeerShard> = Rails::open(
            &fabric.provider(),
            &names,
            1,
            3,
            4,
            ChannelSizes::default(),
            Arc::clone(&stats),
        )
        .unwrap();
        shard::RdmaShard::new(rails, Duration::from_secs(1), Arc::clone(&stats))
    };
    (open("reader"), open("owner"))
}

#[test]
fn channels_reserved_on_two_rails_at_once_keep_their_rails() {
    use shard::ShardRdma;
    let (mut reader, mut owner) = reader_and_owner_on_rails(2);
    let peer: shard::PeerShard = "127.0.0.1:9".parse().unwrap();
    // QP numbers are per device (as on hardware, and on the fabric): the
    // first QP of each rail has the same number.
    let on0 = reader.reserve(&peer, 0, 1).unwrap();
    let on1 = reader.reserve(&peer, 1, 1).unwrap();
    assert_eq!(on0[0].qp_num, on1[0].qp_num, "the two rails number alike");
    let a0 = owner
        .accept((7, 0), 0, 1, &reader.live_qps(&peer, 0), &on0)
        .unwrap();
    let a1 = owner
        .accept((7, 0), 1, 2, &reader.live_qps(&peer, 1), &on1)
        .unwrap();
    reader.complete(&peer, 0, &on0, &a0).unwrap();
    reader.complete(&peer, 1, &on1, &a1).unwrap();
    // Each rail holds its own channel, connected through its own device.
    assert_eq!(reader.missing_for(&peer, 0, 1), 0, "rail 0 has its channel");
    assert_eq!(reader.missing_for(&peer, 1, 1), 0, "rail 1 has its channel");
    assert_eq!(owner.responder_qps(), 2);
}

#[test]
fn a_responder_keeps_qps_only_for_the_readers_live_channels() {
    use shard::ShardRdma;
    let (mut reader, mut owner) = reader_and_owner();
    let peer: shard::PeerShard = "127.0.0.1:9".parse().unwrap();
    let first = reader.reserve(&peer, 0, 3).unwrap();
    let answered = owner
        .accept((7, 0), 0, 1, &reader.live_qps(&peer, 0), &first)
        .unwrap();
    reader.complete(&peer, 0, &first, &answered).unwrap();
    assert_eq!(owner.responder_qps(), 3);
    assert_eq!(reader.missing_for(&peer, 0, 3), 0, "three idle channels");
    assert_eq!(reader.missing_for(&peer, 0, 9), 1, "capped at 4");
    // The reader drops one channel (say it errored) and opens one more:
    // the owner drops the responder QP of the dropped one.
    reader.forget(&peer);
    let second = reader.reserve(&peer, 0, 1).unwrap();
    let live = reader.live_qps(&peer, 0);
    assert_eq!(live, vec![second[0].qp_num]);
    owner.accept((7, 0), 0, 2, &live, &second).unwrap();
    assert_eq!(owner.responder_qps(), 1);
    // Another reader shard's QPs are its own.
    let other = reader
        .reserve(&"127.0.0.1:10".parse().unwrap(), 0, 1)
        .unwrap();
    owner
        .accept((7, 1), 0, 1, &[other[0].qp_num], &other)
        .unwrap();
    assert_eq!(owner.responder_qps(), 2);
    // A rail the owner does not have is refused.
    assert!(owner.accept((7, 0), 1, 3, &[], &[]).is_err());
    // Reader node 7 leaves the cluster (or restarts as another process):
    // its responder QPs go, another reader's stay.
    let third = reader
        .reserve(&"127.0.0.1:11".parse().unwrap(), 0, 1)
        .unwrap();
    owner
        .accept((8, 0), 0, 1, &[third[0].qp_num], &third)
        .unwrap();
    assert_eq!(owner.responder_qps(), 3);
    owner.forget_reader(7);
    assert_eq!(owner.responder_qps(), 1);
}

#[test]
fn an_older_connect_arriving_last_keeps_the_newer_ones_responder_qps() {
    use shard::ShardRdma;
    let (mut reader, mut owner) = reader_and_owner();
    let peer: shard::PeerShard = "127.0.0.1:9".parse().unwrap();
    // Two tasks of the reader shard connect at once: the first's live list
    // was taken before the second reserved its QP.
    let q1 = reader.reserve(&peer, 0, 1).unwrap();
    let live1 = reader.live_qps(&peer, 0);
    let q2 = reader.reserve(&peer, 0, 1).unwrap();
    let live2 = reader.live_qps(&peer, 0);
    // The second arrives first.
    let a2 = owner.accept((7, 0), 0, 2, &live2, &q2).unwrap();
    let a1 = owner.accept((7, 0), 0, 1, &live1, &q1).unwrap();
    assert_eq!(owner.responder_qps(), 2, "the older list pruned nothing");
    reader.complete(&peer, 0, &q2, &a2).unwrap();
    reader.complete(&peer, 0, &q1, &a1).unwrap();
    // A newer list still prunes what the reader dropped.
    reader.forget(&peer);
    let q3 = reader.reserve(&peer, 0, 1).unwrap();
    owner
        .accept((7, 0), 0, 3, &reader.live_qps(&peer, 0), &q3)
        .unwrap();
    assert_eq!(owner.responder_qps(), 1);
}

#[test]
fn transport_selection_opens_the_named_devices_of_a_fabric() {
    let fabric = Fabric::new(FabricOptions::default());
    fabric.add_device("nic0", true);
    fabric.add_device("nic1", true);
    let source = RdmaSource::Fabric(fabric);
    assert_eq!(
        transport(
            &config(r#","protocol":"rdma","device_names":"nic0,nic1""#),
            &source
        ),
        Ok(Transport::Rdma(vec!["nic0".into(), "nic1".into()]))
    );
    // A device that is not there: the fallback names it, or start fails.
    let Ok(Transport::TcpFallback(reason)) = transport(
        &config(r#","protocol":"rdma","device_name":"nic9""#),
        &source,
    ) else {
        panic!("a missing device must fall back");
    };
    assert!(reason.contains("nic9"), "{reason}");
    assert!(transport(
        &config(r#","protocol":"rdma","device_name":"nic9","require_rdma":true"#),
        &source
    )
    .is_err());
}

/// Runs a faulty, reordering workload and returns everything observable.
fn faulty_run(seed: u64) -> (Vec<Vec<bool>>, crate::store::NodeStats, u64) {
    let options = FabricOptions {
        seed,
        max_completion_delay_ticks: 20,
        faults: FaultPlan {
            remote_access_per_mille: 30,
            rnr_retry_per_mille: 30,
            lost_completion_per_mille: 30,
            post_refusal_per_mille: 10,
            ..FaultPlan::default()
        },
        ..FabricOptions::default()
    };
    let sizes = ChannelSizes {
        max_send_wr: 8,
        max_send_sge: 1,
        cq_entries: 8,
    };
    let mut s = setup(options, 3, 4, sizes);
    let mut reader = s.reader();
    let mut dst = dst_for(48);
    s.register_host(&mut dst);
    let mut results = Vec::new();
    for round in 0..20 {
        let pages: Vec<usize> = (0..48).map(|i| (i * 5 + round * 3) % 256).collect();
        let ok = s.read(&mut reader, &pages, &mut dst);
        assert_delivered(&s, &pages, &dst, &ok);
        results.push(ok);
    }
    (results, s.stats.snapshot(), s.fabric.tick())
}

#[test]
fn a_run_replays_exactly_from_its_seed() {
    let a = faulty_run(2024);
    let b = faulty_run(2024);
    assert_eq!(a, b, "same seed, same hits, counters and ticks");
    let c = faulty_run(2025);
    assert_ne!(a.0, c.0, "another seed draws other faults");
}

#[test]
fn writes_follow_the_same_access_rules() {
    // The published pool is REMOTE_READ only: a peer's RDMA WRITE into it is
    // refused (status 10) and not one byte changes.
    let s = setup(FabricOptions::default(), 1, 4, ChannelSizes::default());
    let a = s.rails.rail(0).device.clone();
    let b = s.responder.devices[0].clone();
    let (cq_a, cq_b) = (a.create_cq(4).unwrap(), b.create_cq(4).unwrap());
    let caps = QpCaps {
        max_send_wr: 4,
        max_send_sge: 1,
    };
    let mut qa = a.create_qp(&cq_a, caps).unwrap();
    let mut qb = b.create_qp(&cq_b, caps).unwrap();
    connect_qp(&mut qa, Access::default(), &qb.endpoint(), 5).unwrap();
    connect_qp(
        &mut qb,
        Access::REMOTE_READ | Access::REMOTE_WRITE,
        &qa.endpoint(),
        5,
    )
    .unwrap();
    let mut src = Buf::new(PAGE, |_| 0x55);
    // SAFETY: src outlives the MR.
    let mr = unsafe { a.register(src.ptr(), PAGE, Access::LOCAL_WRITE) }.unwrap();
    let before = s.pool.bytes()[..PAGE].to_vec();
    let write = WorkRequest {
        wr_id: 77,
        opcode: Opcode::Write,
        sges: vec![Sge {
            addr: src.ptr() as u64,
            len: PAGE as u32,
            lkey: mr.keys().lkey,
        }],
        remote_addr: s.remote[0].addr,
        rkey: s.remote[0].rkey,
        signaled: true,
    };
    qa.post_send(&[write]).unwrap();
    let mut out = Vec::new();
    while out.is_empty() {
        cq_a.poll(&mut out, 4).unwrap();
    }
    assert_eq!(
        (out[0].wr_id, out[0].status),
        (77, WcStatus::REM_ACCESS_ERR)
    );
    assert_eq!(qa.state(), QpState::Error);
    assert_eq!(&s.pool.bytes()[..PAGE], &before[..]);
}

#[test]
fn two_batches_in_flight_settle_independently() {
    // The post / poll / finish split lets a shard keep several batches in
    // flight and yield between polls. Responder rail b1 is slow: a batch
    // striped over both rails waits for it, while a batch that uses rail 0
    // only settles and is delivered first.
    let options = FabricOptions {
        faults: FaultPlan {
            slow_device: Some("b1".into()),
            slow_ticks: 100,
            ..FaultPlan::default()
        },
        ..FabricOptions::default()
    };
    let mut s = setup(options, 2, 4, ChannelSizes::default());
    let mut dst = dst_for(3);
    s.register_host(&mut dst);
    let base = dst.ptr();
    let item = |page: usize, j: usize| ReadItem {
        location: Location {
            offset: (page * PAGE) as u64,
            generation: 0,
            len: PAGE as u32,
        },
        // SAFETY: dst holds 3 pages.
        dst: unsafe { base.add(j * PAGE) },
    };
    let striped_items = [item(10, 0), item(11, 1)];
    let rail0_items = [item(20, 2)];
    let (both_rails, rail0) = (s.remote.clone(), [s.remote[0]]);
    let mut reader = s.reader();
    let clock = s.fabric.clock();
    // SAFETY: dst outlives both batches.
    let mut striped = unsafe {
        reader.post(
            &mut s.rails,
            &PEER,
            &both_rails,
            &striped_items,
            &mut s.responder,
            &clock,
        )
    };
    // SAFETY: as above.
    let mut quick = unsafe {
        reader.post(
            &mut s.rails,
            &PEER,
            &rail0,
            &rail0_items,
            &mut s.responder,
            &clock,
        )
    };
    let (mut striped_done, mut quick_done, mut polls) = (false, false, 0);
    while !quick_done {
        striped_done |= reader.poll(&mut striped, &PEER, &clock);
        quick_done |= reader.poll(&mut quick, &PEER, &clock);
        polls += 1;
        assert!(polls < 1000, "bounded");
    }
    assert!(
        !striped_done,
        "the striped batch still waits for the slow rail"
    );
    let ok_quick = reader.finish(&mut s.rails, &PEER, quick, &rail0_items, &mut NoEviction);
    assert_eq!(ok_quick, vec![true]);
    assert_eq!(
        &dst.bytes()[2 * PAGE..],
        &s.pool.bytes()[20 * PAGE..21 * PAGE]
    );
    while !reader.poll(&mut striped, &PEER, &clock) {}
    let ok_striped = reader.finish(
        &mut s.rails,
        &PEER,
        striped,
        &striped_items,
        &mut NoEviction,
    );
    assert_eq!(ok_striped, vec![true, true], "slow, not timed out");
    assert_eq!(
        &dst.bytes()[..2 * PAGE],
        &s.pool.bytes()[10 * PAGE..12 * PAGE]
    );
    assert_eq!(s.stats.snapshot().rdma_read_timeouts, 0);
    // Both rails' channels went back to their pools.
    assert_eq!(s.rails.rail(0).channels.idle_to(&PEER), 2);
    assert_eq!(s.rails.rail(1).channels.idle_to(&PEER), 1);
}
