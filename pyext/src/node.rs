//! [`PyNode`]: one engine node, and the batch calls SGLang's data path makes.
//!
//! Every batch method converts its arguments with the GIL held, releases the
//! GIL exactly once around the engine call, and never raises on a data-path
//! failure: a closed node, a malformed batch, an engine error or even a panic
//! becomes all-`False` (or `0`) plus one rate-limited log line. Only a
//! caller bug in the arguments themselves raises before any work starts (a
//! wrong Python type, an op other than `"set"`/`"get"`, a misaligned index
//! array); `peercache.store` turns those into misses too.

use crate::layout::{PageLayout, ResolvedBatch};
use peercache_engine::keys::RankKeys;
use peercache_engine::logging::RateLimiter;
use peercache_engine::{Config, Node as EngineNode, NodeStats};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The engine node, or the counters it had when it was closed.
enum State {
    Open(Box<EngineNode>),
    Closed(Box<NodeStats>),
}

impl State {
    /// Takes the node out, leaving `Closed` with the counters `last` reads
    /// from it; `None` when already closed.
    fn take_open(
        &mut self,
        last: impl FnOnce(&EngineNode) -> NodeStats,
    ) -> Option<Box<EngineNode>> {
        let State::Open(node) = self else {
            return None;
        };
        let stats = Box::new(last(node));
        match std::mem::replace(self, State::Closed(stats)) {
            State::Open(node) => Some(node),
            State::Closed(_) => None,
        }
    }
}

/// What a batch call does with its pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageOp {
    Set,
    Get,
}

impl PageOp {
    fn parse(op: &str) -> PyResult<Self> {
        match op {
            "set" => Ok(PageOp::Set),
            "get" => Ok(PageOp::Get),
            other => Err(PyValueError::new_err(format!(
                "page operation must be 'set' or 'get', not {other:?}"
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            PageOp::Set => "batch_set",
            PageOp::Get => "batch_get",
        }
    }
}

/// Per-call transfer figures, in the shape of SGLang's `StorageMetrics`
/// (pages moved and GB/s of each set and get call), appended with the GIL
/// released and drained by `PeerCacheStore.get_stats()`. Bounded, so a
/// caller that never drains it does not grow memory.
#[derive(Default)]
struct CallLog {
    backup_pgs: Vec<u64>,
    backup_bandwidth: Vec<f64>,
    prefetch_pgs: Vec<u64>,
    prefetch_bandwidth: Vec<f64>,
}

/// Most calls the log keeps per direction between two drains.
const CALL_LOG_CAP: usize = 100_000;

impl CallLog {
    fn record(&mut self, op: PageOp, pages: u64, bytes: u64, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let gbps = if secs > 0.0 {
            bytes as f64 / secs / 1e9
        } else {
            0.0
        };
        let (pgs, bw) = match op {
            PageOp::Set => (&mut self.backup_pgs, &mut self.backup_bandwidth),
            PageOp::Get => (&mut self.prefetch_pgs, &mut self.prefetch_bandwidth),
        };
        if pgs.len() < CALL_LOG_CAP {
            pgs.push(pages);
            bw.push(gbps);
        }
    }
}

/// A host pool's page map (see [`crate::layout`]), built once per registered
/// pool by `peercache.store` and passed to every zero-copy batch call.
#[pyclass(module = "peercache._native", name = "PageLayout", frozen)]
pub struct PyPageLayout {
    inner: PageLayout,
}

#[pymethods]
impl PyPageLayout {
    /// `bases[e] + index * strides[e]` is entry `e` of the page starting at
    /// token `index`, `sizes[e]` bytes long; `pool_tokens` bounds the index.
    #[new]
    #[pyo3(signature = (bases, strides, sizes, page_size, pool_tokens, tp_rank, tp_size, pp_rank, pp_size, is_mla, pool=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        bases: Vec<u64>,
        strides: Vec<u64>,
        sizes: Vec<usize>,
        page_size: usize,
        pool_tokens: u64,
        tp_rank: u32,
        tp_size: u32,
        pp_rank: u32,
        pp_size: u32,
        is_mla: bool,
        pool: Option<String>,
    ) -> PyResult<Self> {
        let rank = RankKeys::new(tp_rank, tp_size, pp_rank, pp_size, is_mla)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let inner = PageLayout::new(bases, strides, sizes, page_size, pool_tokens, rank, pool)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PyPageLayout { inner })
    }

    /// Stored objects per page.
    #[getter]
    fn entries(&self) -> usize {
        self.inner.entries()
    }

    /// Bytes of one page, all entries together.
    #[getter]
    fn page_bytes(&self) -> usize {
        self.inner.page_bytes()
    }

    /// Token indices per page.
    #[getter]
    fn page_size(&self) -> usize {
        self.inner.page_size()
    }

    /// The object names of `keys` (entry-major within a page); for tests and tools.
    fn names(&self, keys: Vec<String>) -> Vec<String> {
        self.inner.names(&keys)
    }
}

/// A PeerCache node running inside this process.
///
/// `Node(config_json, cluster=False)` parses the `extra_config` JSON object,
/// maps the published pool and starts the shard threads; with `cluster=True`
/// it also joins (or starts) discovery at `discovery_addr` and serves its pool
/// to peers. Page pointers are plain integers (e.g. `tensor.data_ptr()`): the
/// caller vouches that each one is valid for `lens[i]` bytes until the call
/// returns, also while other Python threads run during the call.
#[pyclass(module = "peercache._native", name = "Node", frozen)]
pub struct PyNode {
    /// Batch calls hold the read lock for the engine call; `close` takes the
    /// write lock only to take the node out, so it waits for calls in flight
    /// and later calls see `Closed`; the node's shutdown runs after, with no
    /// lock held. Both are only ever taken with the GIL released.
    state: RwLock<State>,
    /// Set first thing by `close`: calls made from then on are misses at
    /// once instead of queueing behind the write lock for the shutdown.
    closing: AtomicBool,
    /// Held for the whole of `close`, so a second `close` (SGLang's and the
    /// exit finalizer) returns only once the node is really down.
    close_lock: Mutex<()>,
    /// The process that started the node. After a `fork` the child has the
    /// node's memory but none of its threads: every call there is a miss
    /// with a message saying so, and `close` only forgets the node.
    pid: u32,
    shards: usize,
    pool_bytes: usize,
    node_id: String,
    endpoints: Vec<String>,
    /// Wall-clock bounds (ns since the Unix epoch, the clock of Python's
    /// `time.time_ns`) of the most recent batch call's GIL-released part
    /// (diagnostics: lets a caller compute how long a call held the GIL
    /// before and after). Two relaxed stores: with calls from several
    /// threads at once the pair may mix two calls.
    last_detached_start_ns: AtomicU64,
    last_detached_end_ns: AtomicU64,
    /// Data-path failures are logged at most once a second per node (the
    /// lock is only taken on the failure path).
    failure_log: Mutex<RateLimiter>,
    /// Native calls that failed and were reported as misses (closed node,
    /// arguments that do not describe the pool, internal errors).
    failed_calls: AtomicU64,
    /// Per-call figures for SGLang's storage metrics (taken with the GIL
    /// released, once per batch call; never contended across shards).
    call_log: Mutex<CallLog>,
}

impl Drop for PyNode {
    fn drop(&mut self) {
        let forked = self.forked().is_some();
        // `get_mut` ignores the lock, which a parent thread may have held
        // at a fork.
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        let Some(node) = state.take_open(|_| NodeStats::default()) else {
            return;
        };
        if forked {
            // Dropped in a forked child (its garbage collector, its exit):
            // the engine node's own drop would join the parent's threads.
            node.forget_in_fork();
            return;
        }
        // Dropped without close(): the engine node's drop shuts it down,
        // which leaves discovery and flushes the disk tier (up to seconds).
        // Python deallocates with the GIL held, so every other Python thread
        // of the process would stop for that long; release it meanwhile (no
        // Python object is touched). Only on the main thread: another
        // thread that released the GIL while the interpreter starts to
        // finalize is ended by Python when it takes the GIL back, through
        // these Rust frames. Elsewhere (and where `try_attach` refuses, in a
        // GC traversal) the node goes down with the GIL held.
        let _ = Python::try_attach(move |py| {
            if on_main_thread(py) {
                py.detach(move || drop(node));
            } else {
                drop(node);
            }
        });
    }
}

/// Whether this is Python's main thread (the one that finalizes the
/// interpreter); false when that cannot be told.
fn on_main_thread(py: Python<'_>) -> bool {
    let check = || -> PyResult<bool> {
        let threading = py.import("threading")?;
        let main = threading.call_method0("main_thread")?;
        Ok(main.is(&threading.call_method0("current_thread")?))
    };
    check().unwrap_or(false)
}

impl PyNode {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// In a forked child: marks the node closed and leaks it
    /// (`EngineNode::forget_in_fork`). Shutting it down would join threads
    /// that do not exist here and flush through queues nobody serves; its
    /// memory goes with the child. If a parent thread held the state lock
    /// at the fork, the node is left for `Drop`, which ignores the lock.
    fn forget_in_fork(&self) {
        self.closing.store(true, Ordering::Release);
        if let Ok(mut state) = self.state.try_write() {
            if let Some(node) = state.take_open(|_| NodeStats::default()) {
                node.forget_in_fork();
            }
        }
    }

    /// Why this process cannot use the node, if it is a forked child of the
    /// one that started it.
    fn forked(&self) -> Option<String> {
        let here = std::process::id();
        (here != self.pid).then(|| {
            format!(
                "this PeerCache node was started by process {}, and process {here} is a fork of it, where the node's threads do not exist; create the PeerCacheStore after forking (or use the spawn start method)",
                self.pid
            )
        })
    }

    /// The node to run a call on, or why there is none: checked before any
    /// lock is taken (a forked child may have inherited it locked).
    fn usable(&self) -> Result<(), String> {
        if let Some(why) = self.forked() {
            return Err(why);
        }
        if self.closing.load(Ordering::Acquire) {
            return Err("the PeerCache node is closed".to_owned());
        }
        Ok(())
    }

    /// Runs `f` on the open node with the GIL released (once), records how
    /// long that took, and turns every failure into `fallback`: a closed
    /// node, an `Err` from `f`, or a panic anywhere below (which must never
    /// unwind into SGLang's threads).
    fn detached<T: Send>(
        &self,
        py: Python<'_>,
        what: &str,
        fallback: T,
        f: impl FnOnce(&EngineNode) -> Result<T, String> + Send,
    ) -> T {
        let (out, span) = py.detach(|| {
            let t0 = SystemTime::now();
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                self.usable()?;
                match &*self.read() {
                    State::Open(node) => f(node),
                    State::Closed(_) => Err("the PeerCache node is closed".to_owned()),
                }
            }));
            let out = match outcome {
                Ok(Ok(out)) => out,
                Ok(Err(reason)) => {
                    self.log_failure(what, &reason);
                    fallback
                }
                Err(panic) => {
                    let reason = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("unknown panic");
                    self.log_failure(what, &format!("internal error: {reason}"));
                    fallback
                }
            };
            (out, (t0, SystemTime::now()))
        });
        let unix_ns = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        };
        self.last_detached_start_ns
            .store(unix_ns(span.0), Ordering::Relaxed);
        self.last_detached_end_ns
            .store(unix_ns(span.1), Ordering::Relaxed);
        out
    }

    fn log_failure(&self, what: &str, reason: &str) {
        self.failed_calls.fetch_add(1, Ordering::Relaxed);
        let allowed = self
            .failure_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .check(Instant::now());
        if let Some(suppressed) = allowed {
            tracing::warn!(
                "{what} failed: {reason}; reported as a miss{}",
                if suppressed > 0 {
                    format!(" ({suppressed} similar messages suppressed)")
                } else {
                    String::new()
                }
            );
        }
    }

    /// Runs one resolved batch through the engine, one flag per object.
    ///
    /// # Safety
    /// Every `(addrs[i], lens[i])` must be valid for the operation (reads for
    /// a set, non-overlapping writes for a get) for the whole call.
    unsafe fn run_objects(
        &self,
        node: &EngineNode,
        op: PageOp,
        batch: &ResolvedBatch,
    ) -> Result<Vec<bool>, String> {
        let out = match op {
            PageOp::Set => {
                let srcs: Vec<*const u8> = batch.addrs.iter().map(|&p| p as *const u8).collect();
                node.batch_set(&batch.names, &srcs, &batch.lens)
            }
            PageOp::Get => {
                let dsts: Vec<*mut u8> = batch.addrs.iter().map(|&p| p as *mut u8).collect();
                node.batch_get(&batch.names, &dsts, &batch.lens)
            }
        };
        out.map_err(|e| e.to_string())
    }

    /// Folds object flags into page flags and logs the call for SGLang's
    /// storage metrics (pages moved, their bytes).
    fn per_page_recorded(
        &self,
        op: PageOp,
        layout: &PageLayout,
        flags: &[bool],
        started: Instant,
    ) -> Vec<bool> {
        let pages = layout.per_page(flags);
        let done = pages.iter().filter(|&&ok| ok).count();
        self.record(op, done, (done * layout.page_bytes()) as u64, started);
        pages
    }

    /// Logs one call for SGLang's storage metrics: `pages` moved, `bytes` in all.
    fn record(&self, op: PageOp, pages: usize, bytes: u64, started: Instant) {
        self.call_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(op, pages as u64, bytes, started.elapsed());
    }
}

#[pymethods]
impl PyNode {
    /// Starts a node from an `extra_config` JSON object.
    ///
    /// Raises `ValueError` with the engine's message (which names the key and
    /// what to write instead) for a bad config, `RuntimeError` when the node
    /// cannot start.
    #[new]
    #[pyo3(signature = (config_json, cluster=false))]
    fn new(py: Python<'_>, config_json: String, cluster: bool) -> PyResult<Self> {
        peercache_engine::logging::init();
        let config =
            Config::from_json(&config_json).map_err(|e| PyValueError::new_err(e.to_string()))?;
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
        // Mapping and pre-faulting the pool (and joining discovery) takes a
        // while: let Python run meanwhile.
        let node = py
            .detach(|| {
                if cluster {
                    EngineNode::start_cluster(config)
                } else {
                    EngineNode::start(config)
                }
            })
            .map_err(|e| PyRuntimeError::new_err(format!("PeerCache node did not start: {e}")))?;
        Ok(PyNode {
            shards: node.shards(),
            pool_bytes: node.pool_bytes(),
            node_id: node.node_id().to_owned(),
            endpoints: node.endpoints().iter().map(|a| a.to_string()).collect(),
            state: RwLock::new(State::Open(Box::new(node))),
            closing: AtomicBool::new(false),
            close_lock: Mutex::new(()),
            pid: std::process::id(),
            last_detached_start_ns: AtomicU64::new(0),
            last_detached_end_ns: AtomicU64::new(0),
            failure_log: Mutex::new(RateLimiter::new(Duration::from_secs(1))),
            failed_calls: AtomicU64::new(0),
            call_log: Mutex::new(CallLog::default()),
        })
    }

    /// Stores `lens[i]` bytes at address `ptrs[i]` under `keys[i]`; one flag per page.
    fn batch_set(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        ptrs: Vec<usize>,
        lens: Vec<usize>,
    ) -> Vec<bool> {
        self.raw_pages(py, PageOp::Set, keys, ptrs, lens)
    }

    /// Copies the page of `keys[i]` to address `ptrs[i]` (exactly `lens[i]`
    /// bytes, the stored page's length); one flag per page, `False` for a miss.
    fn batch_get(
        &self,
        py: Python<'_>,
        keys: Vec<String>,
        ptrs: Vec<usize>,
        lens: Vec<usize>,
    ) -> Vec<bool> {
        self.raw_pages(py, PageOp::Get, keys, ptrs, lens)
    }

    /// Length of the longest prefix of `keys` whose pages are all present.
    fn batch_exists(&self, py: Python<'_>, keys: Vec<String>) -> usize {
        self.detached(py, "batch_exists", 0, move |node| {
            node.batch_exists(&keys).map_err(|e| e.to_string())
        })
    }

    /// Whether each of `keys` is present, one flag per key.
    fn exists_each(&self, py: Python<'_>, keys: Vec<String>) -> Vec<bool> {
        let n = keys.len();
        self.detached(py, "batch_exists", vec![false; n], move |node| {
            node.batch_exists_each(&keys).map_err(|e| e.to_string())
        })
    }

    /// Zero-copy page transfer between the host pool described by `layout`
    /// and the cache: `op` is `"set"` or `"get"`; `keys` the `count` page
    /// keys joined by NUL bytes, UTF-8 (`"\0".join(keys).encode()`: one
    /// object to convert instead of one per page, which is most of the GIL
    /// time a call holds); `indices_addr` the address of `indices_len`
    /// contiguous int64 host indices (`page_size` per key; e.g. a CPU
    /// tensor's `data_ptr()`). One flag per page: true only when every entry
    /// of the page moved.
    #[allow(clippy::too_many_arguments)]
    fn pages(
        &self,
        py: Python<'_>,
        op: &str,
        layout: &PyPageLayout,
        keys: &[u8],
        count: usize,
        indices_addr: usize,
        indices_len: usize,
    ) -> PyResult<Vec<bool>> {
        let op = PageOp::parse(op)?;
        if indices_len > 0
            && (indices_addr == 0 || !indices_addr.is_multiple_of(std::mem::align_of::<i64>()))
        {
            return Err(PyValueError::new_err(format!(
                "host indices at {indices_addr:#x} are not an aligned int64 array"
            )));
        }
        let layout = &layout.inner;
        Ok(
            self.detached(py, op.name(), vec![false; count], move |node| {
                let keys = split_keys(keys, count)?;
                let indices: &[i64] = if indices_len == 0 {
                    &[]
                } else {
                    // SAFETY: the caller vouches for an int64 array of this length
                    // that stays alive for the call (alignment checked above).
                    unsafe { std::slice::from_raw_parts(indices_addr as *const i64, indices_len) }
                };
                let started = Instant::now();
                let batch = layout.resolve(&keys, indices).map_err(|e| e.to_string())?;
                // SAFETY: `resolve` only yields addresses inside the host buffer
                // the layout was measured on (every index is bounds-checked).
                let flags = unsafe { self.run_objects(node, op, &batch)? };
                Ok(self.per_page_recorded(op, layout, &flags, started))
            }),
        )
    }

    /// Like `pages`, with the buffers listed by the host pool itself
    /// (`get_page_buffer_meta` output), for pools whose map is not affine.
    #[allow(clippy::too_many_arguments)]
    fn pages_listed(
        &self,
        py: Python<'_>,
        op: &str,
        layout: &PyPageLayout,
        keys: &[u8],
        count: usize,
        ptrs: Vec<usize>,
        sizes: Vec<usize>,
    ) -> PyResult<Vec<bool>> {
        let op = PageOp::parse(op)?;
        let layout = &layout.inner;
        Ok(
            self.detached(py, op.name(), vec![false; count], move |node| {
                let keys = split_keys(keys, count)?;
                let started = Instant::now();
                let batch = layout
                    .resolve_listed(&keys, ptrs, sizes)
                    .map_err(|e| e.to_string())?;
                // SAFETY: the pool listed these buffers for exactly these pages.
                let flags = unsafe { self.run_objects(node, op, &batch)? };
                Ok(self.per_page_recorded(op, layout, &flags, started))
            }),
        )
    }

    /// Whether each page of `keys` (`count` keys joined as for `pages`) is
    /// fully present in the keyspace of `layout` (every entry of the page);
    /// one flag per page.
    fn pages_exist(
        &self,
        py: Python<'_>,
        layout: &PyPageLayout,
        keys: &[u8],
        count: usize,
    ) -> Vec<bool> {
        let layout = &layout.inner;
        self.detached(py, "batch_exists", vec![false; count], move |node| {
            let keys = split_keys(keys, count)?;
            let names = layout.names(&keys);
            let flags = node.batch_exists_each(&names).map_err(|e| e.to_string())?;
            Ok(layout.per_page(&flags))
        })
    }

    /// Registers a buffer pages are read into (SGLang's host KV pool) with
    /// every RDMA rail, LOCAL_WRITE only. Returns the rails that registered
    /// it: 0 on TCP, and 0 (logged) when registration failed, in which case
    /// READ destinations are registered lazily. The caller keeps the buffer
    /// alive for the node's lifetime (SGLang's host pool lives as long as
    /// the store).
    fn register_host_buffer(&self, py: Python<'_>, addr: usize, len: usize) -> u64 {
        self.detached(py, "register_host_buffer", 0, |node| {
            // SAFETY: the caller's contract above.
            unsafe { node.register_host_buffer(addr, len) }
        })
    }

    /// Drops every page of this node's pool (nothing to do once closed).
    fn clear(&self, py: Python<'_>) {
        self.detached(py, "clear", (), |node| {
            node.clear();
            Ok(())
        })
    }

    /// Counters summed over every shard, by name (the final values once closed).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = py.detach(|| {
            if self.forked().is_some() {
                return NodeStats::default();
            }
            match &*self.read() {
                State::Open(node) => node.stats(),
                State::Closed(stats) => **stats,
            }
        });
        let dict = PyDict::new(py);
        for (name, value) in stats.fields() {
            dict.set_item(name, value)?;
        }
        Ok(dict)
    }

    /// Drains the per-call figures since the last drain:
    /// `(prefetch_pgs, backup_pgs, prefetch_bandwidth, backup_bandwidth)`,
    /// SGLang's `StorageMetrics` fields (objects per call, GB/s per call).
    #[allow(clippy::type_complexity)]
    fn drain_call_log(&self, py: Python<'_>) -> (Vec<u64>, Vec<u64>, Vec<f64>, Vec<f64>) {
        let log = py.detach(|| {
            std::mem::take(&mut *self.call_log.lock().unwrap_or_else(PoisonError::into_inner))
        });
        (
            log.prefetch_pgs,
            log.backup_pgs,
            log.prefetch_bandwidth,
            log.backup_bandwidth,
        )
    }

    /// Live cluster members this node sees (itself included; 1 standalone, 0 once closed).
    #[getter]
    fn members(&self, py: Python<'_>) -> usize {
        py.detach(|| {
            if self.usable().is_err() {
                return 0;
            }
            match &*self.read() {
                State::Open(node) => node.members(),
                State::Closed(_) => 0,
            }
        })
    }

    /// Leaves the cluster (deregisters from discovery first), stops the
    /// shards and unmaps the pool. Idempotent; afterwards the data methods
    /// return all-`False` / `0` and `stats()` the final counters. Calls made
    /// while it runs are misses at once; it waits only for calls already in
    /// flight. In a forked child it only forgets the node (see `pid`).
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            if self.forked().is_some() {
                self.forget_in_fork();
                return;
            }
            let _one_close_at_a_time = self
                .close_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.closing.store(true, Ordering::Release);
            // Take the node out under the write lock (waiting for calls in
            // flight); no call can reach it afterwards, so it is shut down
            // and dropped (its pool unmapped) with no state lock held.
            let node = self
                .state
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .take_open(|node| node.stats());
            if let Some(mut node) = node {
                node.shutdown();
                let stats = node.stats();
                drop(node);
                *self.state.write().unwrap_or_else(PoisonError::into_inner) =
                    State::Closed(Box::new(stats));
                tracing::info!("PeerCache node {} closed", self.node_id);
            }
        });
    }

    /// Native calls that failed and were reported as misses since start.
    #[getter]
    fn failed_calls(&self) -> u64 {
        self.failed_calls.load(Ordering::Relaxed)
    }

    /// Whether `close()` has been called.
    #[getter]
    fn closed(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Number of shards.
    #[getter]
    fn shards(&self) -> usize {
        self.shards
    }

    /// Size of the published pool in bytes.
    #[getter]
    fn pool_bytes(&self) -> usize {
        self.pool_bytes
    }

    /// This node's id in the cluster.
    #[getter]
    fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The control endpoints peers reach this node on (one per shard).
    #[getter]
    fn endpoints(&self) -> Vec<String> {
        self.endpoints.clone()
    }

    /// When the most recent batch call released the GIL and when its
    /// engine work ended, in ns since the Unix epoch (`time.time_ns()`'s
    /// clock). Diagnostics only: the GIL-held time before and after.
    #[getter]
    fn _last_detached_span(&self) -> (u64, u64) {
        (
            self.last_detached_start_ns.load(Ordering::Relaxed),
            self.last_detached_end_ns.load(Ordering::Relaxed),
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "Node(node_id={:?}, shards={}, pool_bytes={}, closed={})",
            self.node_id,
            self.shards,
            self.pool_bytes,
            if self.closed() { "True" } else { "False" }
        )
    }
}

/// Splits NUL-joined UTF-8 page keys; exactly `count` of them, or an error
/// (a key containing a NUL byte shows up as a count mismatch, never as a
/// wrong key).
fn split_keys(blob: &[u8], count: usize) -> Result<Vec<&str>, String> {
    let text = std::str::from_utf8(blob).map_err(|e| format!("page keys are not UTF-8: {e}"))?;
    let keys: Vec<&str> = if count == 0 {
        Vec::new()
    } else {
        text.split('\0').collect()
    };
    if keys.len() != count {
        return Err(format!(
            "{} page keys received where {count} were announced (a key contains a NUL byte?)",
            keys.len()
        ));
    }
    Ok(keys)
}

impl PyNode {
    /// Shared body of the raw-pointer `batch_set` / `batch_get`.
    fn raw_pages(
        &self,
        py: Python<'_>,
        op: PageOp,
        keys: Vec<String>,
        ptrs: Vec<usize>,
        lens: Vec<usize>,
    ) -> Vec<bool> {
        let n = keys.len();
        // `move`: the argument vectors are also freed with the GIL released.
        self.detached(py, op.name(), vec![false; n], move |node| {
            let batch = ResolvedBatch {
                names: keys,
                addrs: ptrs,
                lens,
            };
            let started = Instant::now();
            // SAFETY: the Python caller vouches for [ptrs[i], ptrs[i] + lens[i])
            // for the whole call (see the class documentation).
            let flags = unsafe { self.run_objects(node, op, &batch)? };
            let (mut done, mut bytes) = (0, 0u64);
            for (&ok, &len) in flags.iter().zip(&batch.lens) {
                if ok {
                    done += 1;
                    bytes += len as u64;
                }
            }
            self.record(op, done, bytes, started);
            Ok(flags)
        })
    }
}
