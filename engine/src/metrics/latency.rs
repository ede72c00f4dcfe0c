//! Batch-call latency histograms, recorded by the calling thread.
//!
//! A batch call's latency is what SGLang waits for: from the call entering
//! `Node` to the last shard finishing. Only the caller sees both ends, so the
//! caller records it. Callers are arbitrary threads (SGLang's, benchmarks'),
//! so each thread gets its own [`OpLatencies`] per node, created on its first
//! call and registered once with the node's [`LatencyRecorders`]. After that a
//! thread is the only writer of its buckets: recording is a plain load + store
//! on memory no other thread writes, with no lock and no locked instruction.
//! A scrape adds every thread's buckets up.
//!
//! A thread's histograms stay registered after the thread ends, so the node's
//! totals never go backwards (Prometheus counters must not).

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Upper bounds of the buckets, in nanoseconds: 10 µs to 10 s. A local batch
/// takes tens of microseconds, a remote one a few hundred to milliseconds; a
/// batch stuck behind a timeout (2 s per control exchange by default, 5 s
/// per full queue) still lands in a bucket of its own rather than only in
/// `+Inf`.
pub const BUCKET_BOUNDS_NS: [u64; 19] = [
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Buckets plus the `+Inf` one.
const SLOTS: usize = BUCKET_BOUNDS_NS.len() + 1;

/// The operations timed, one histogram each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyOp {
    /// `batch_set`.
    Set,
    /// `batch_get` answered from this node's pool alone (no peer asked).
    GetLocal,
    /// `batch_get` that asked at least one peer (directory or data).
    GetRemote,
    /// `batch_exists`.
    Exists,
}

impl LatencyOp {
    /// Every operation, in histogram order.
    pub const ALL: [LatencyOp; 4] = [
        LatencyOp::Set,
        LatencyOp::GetLocal,
        LatencyOp::GetRemote,
        LatencyOp::Exists,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// One histogram with a single writer (the thread that owns it).
#[derive(Debug, Default)]
struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; SLOTS],
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Only the owning thread may call this.
    fn record(&self, ns: u64) {
        let slot = BUCKET_BOUNDS_NS.partition_point(|&bound| bound < ns);
        bump(&self.buckets[slot], 1);
        bump(&self.sum_ns, ns);
    }

    fn snapshot(&self) -> HistogramSnapshot {
        let mut snap = HistogramSnapshot::default();
        for (to, from) in snap.buckets.iter_mut().zip(&self.buckets) {
            *to = from.load(Ordering::Relaxed);
        }
        snap.sum_ns = self.sum_ns.load(Ordering::Relaxed);
        snap
    }
}

/// Single-writer add: no other thread writes `counter`.
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// A histogram's values at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Observations per bucket of [`BUCKET_BOUNDS_NS`] (not cumulative); the
    /// last entry counts observations above every bound.
    pub buckets: [u64; SLOTS],
    /// Sum of every observation, in nanoseconds.
    pub sum_ns: u64,
}

impl HistogramSnapshot {
    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Adds another histogram's observations.
    pub fn add(&mut self, other: &HistogramSnapshot) {
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.sum_ns += other.sum_ns;
    }
}

/// One thread's histograms for one node.
#[derive(Debug, Default)]
pub struct OpLatencies {
    ops: [Histogram; 4],
}

/// Every thread's histograms for one node.
#[derive(Debug)]
pub struct LatencyRecorders {
    /// Tells this node's entries apart in a thread's list (a node dropped
    /// and another allocated at the same address must not share entries).
    id: u64,
    threads: Mutex<Vec<Arc<OpLatencies>>>,
}

/// One node's histograms as a calling thread holds them.
struct ThreadEntry {
    /// [`LatencyRecorders::id`] of the node.
    node: u64,
    /// Tells whether the node still exists.
    alive: Weak<LatencyRecorders>,
    latencies: Arc<OpLatencies>,
}

thread_local! {
    /// This thread's histograms, one entry per node it has called.
    static MINE: RefCell<Vec<ThreadEntry>> = const { RefCell::new(Vec::new()) };
}

impl LatencyRecorders {
    /// Recorders for a new node.
    pub fn new() -> Arc<Self> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            threads: Mutex::new(Vec::new()),
        })
    }

    /// Records one call of `op` that took `elapsed`, into the calling
    /// thread's histograms.
    pub fn record(self: &Arc<Self>, op: LatencyOp, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        MINE.with(|mine| {
            let mut mine = mine.borrow_mut();
            if let Some(entry) = mine.iter().find(|e| e.node == self.id) {
                entry.latencies.ops[op.index()].record(ns);
                return;
            }
            // First call of this thread on this node: forget nodes that are
            // gone (a long-lived thread may outlive many nodes in tests),
            // then register once.
            mine.retain(|e| e.alive.strong_count() > 0);
            let latencies = Arc::new(OpLatencies::default());
            latencies.ops[op.index()].record(ns);
            self.threads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Arc::clone(&latencies));
            mine.push(ThreadEntry {
                node: self.id,
                alive: Arc::downgrade(self),
                latencies,
            });
        });
    }

    /// Every operation's histogram summed over all threads, in
    /// [`LatencyOp::ALL`] order.
    pub fn snapshot(&self) -> [HistogramSnapshot; 4] {
        let mut total = [HistogramSnapshot::default(); 4];
        for thread in self
            .threads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            for (sum, hist) in total.iter_mut().zip(&thread.ops) {
                sum.add(&hist.snapshot());
            }
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_at_or_above_them() {
        let recorders = LatencyRecorders::new();
        recorders.record(LatencyOp::Set, Duration::from_nanos(10_000)); // on the bound
        recorders.record(LatencyOp::Set, Duration::from_nanos(10_001));
        recorders.record(LatencyOp::Set, Duration::from_secs(60)); // above all
        let [set, get_local, _, _] = recorders.snapshot();
        assert_eq!(set.buckets[0], 1);
        assert_eq!(set.buckets[1], 1);
        assert_eq!(set.buckets[SLOTS - 1], 1);
        assert_eq!(set.count(), 3);
        assert_eq!(set.sum_ns, 10_000 + 10_001 + 60_000_000_000);
        assert_eq!(get_local.count(), 0);
    }

    #[test]
    fn threads_record_separately_and_are_summed() {
        let recorders = LatencyRecorders::new();
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let r = Arc::clone(&recorders);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        r.record(LatencyOp::GetRemote, Duration::from_micros(300));
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("worker");
        }
        // Four threads, four registrations, and nothing lost after they ended.
        assert_eq!(recorders.threads.lock().unwrap().len(), 4);
        let remote = recorders.snapshot()[LatencyOp::GetRemote.index()];
        assert_eq!(remote.count(), 4000);
        assert_eq!(remote.buckets[5], 4000); // (250 µs, 500 µs]
    }

    #[test]
    fn a_thread_keeps_separate_histograms_per_node() {
        let a = LatencyRecorders::new();
        let b = LatencyRecorders::new();
        a.record(LatencyOp::Exists, Duration::from_micros(1));
        b.record(LatencyOp::Exists, Duration::from_micros(1));
        b.record(LatencyOp::Exists, Duration::from_micros(1));
        assert_eq!(a.snapshot()[3].count(), 1);
        assert_eq!(b.snapshot()[3].count(), 2);
        // A dropped node's entry is pruned when this thread meets a new node.
        drop(a);
        let c = LatencyRecorders::new();
        c.record(LatencyOp::Set, Duration::from_micros(1));
        MINE.with(|mine| assert_eq!(mine.borrow().len(), 2));
    }
}
