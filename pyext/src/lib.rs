//! `peercache._native`: the PeerCache engine as a Python extension module.
//!
//! One class, [`PyNode`] (Python name `Node`), wraps one engine
//! [`peercache_engine::Node`]. It is deliberately thin: the SGLang-facing
//! `PeerCacheStore` is written in Python on top of it.
//!
//! Data-path rules, which every batch method follows:
//! - the Python arguments are converted to Rust vectors first (by PyO3, with the
//!   GIL held);
//! - the GIL is then released exactly once ([`Python::detach`]) around the
//!   engine call, so other Python threads of the rank keep running while pages
//!   are copied;
//! - the only Python object built on the way back is the result list;
//! - a failure (malformed batch, closed node) never raises: the call returns
//!   all-`False` (or `0`) and logs one line through `tracing`.
//!
//! Arguments of the wrong Python type (a `str` where a list is expected, a
//! negative pointer) are caller bugs and raise `TypeError` / `OverflowError`
//! from the conversion, before any work starts.

use peercache_engine::{Config, Node as EngineNode, NodeStats};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};
use std::time::Instant;

/// The engine node, or the counters it had when it was closed.
enum State {
    Open(Box<EngineNode>),
    Closed(Box<NodeStats>),
}

/// A PeerCache node running inside this process.
///
/// `Node(config_json)` parses the `extra_config` JSON object, maps the
/// published pool and starts the shard threads. Page pointers are plain
/// integers (e.g. `tensor.data_ptr()` or `ctypes.addressof(buf)`): the caller
/// vouches that each one is valid for `lens[i]` bytes until the call returns,
/// also while other Python threads run during the call.
#[pyclass(module = "peercache._native", name = "Node", frozen)]
pub struct PyNode {
    /// Batch calls hold the read lock for the engine call; `close` takes the
    /// write lock, so it waits for calls in flight and later calls see `Closed`.
    /// Both are only ever taken with the GIL released.
    state: RwLock<State>,
    shards: usize,
    pool_bytes: usize,
    /// Nanoseconds the last batch call spent with the GIL released
    /// (diagnostics: lets a caller compute how long a call held the GIL).
    last_detached_ns: AtomicU64,
}

impl PyNode {
    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` with the GIL released (once) and records how long that took.
    fn detached<T: Send>(&self, py: Python<'_>, f: impl FnOnce(&State) -> T + Send) -> T {
        let (out, ns) = py.detach(|| {
            let t0 = Instant::now();
            let out = f(&self.read());
            (out, t0.elapsed().as_nanos() as u64)
        });
        self.last_detached_ns.store(ns, Ordering::Relaxed);
        out
    }

    /// Shared body of `batch_set` / `batch_get`: all-`false` on any failure.
    fn pages(
        &self,
        py: Python<'_>,
        op: &'static str,
        keys: Vec<String>,
        ptrs: Vec<usize>,
        lens: Vec<usize>,
    ) -> Vec<bool> {
        // `move`: the argument vectors are also freed with the GIL released.
        self.detached(py, move |state| {
            let n = keys.len();
            let node = match state {
                State::Open(node) => node,
                State::Closed(_) => {
                    tracing::warn!("{op} on a closed PeerCache node: {n} pages reported as failed");
                    return vec![false; n];
                }
            };
            let result = if op == "batch_set" {
                let srcs: Vec<*const u8> = ptrs.iter().map(|&p| p as *const u8).collect();
                // SAFETY: the Python caller vouches for [ptrs[i], ptrs[i] + lens[i])
                // for the whole call (see the class documentation).
                unsafe { node.batch_set(&keys, &srcs, &lens) }
            } else {
                let dsts: Vec<*mut u8> = ptrs.iter().map(|&p| p as *mut u8).collect();
                // SAFETY: as above, for writes, with non-overlapping destinations.
                unsafe { node.batch_get(&keys, &dsts, &lens) }
            };
            result.unwrap_or_else(|e| {
                tracing::warn!("{op}: {e}; {n} pages reported as failed");
                vec![false; n]
            })
        })
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
    fn new(py: Python<'_>, config_json: String) -> PyResult<Self> {
        peercache_engine::logging::init();
        let config =
            Config::from_json(&config_json).map_err(|e| PyValueError::new_err(e.to_string()))?;
        // Mapping and pre-faulting the pool takes a while: let Python run meanwhile.
        let node = py
            .detach(|| EngineNode::start(config))
            .map_err(|e| PyRuntimeError::new_err(format!("PeerCache node did not start: {e}")))?;
        Ok(PyNode {
            shards: node.shards(),
            pool_bytes: node.pool_bytes(),
            state: RwLock::new(State::Open(Box::new(node))),
            last_detached_ns: AtomicU64::new(0),
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
        self.pages(py, "batch_set", keys, ptrs, lens)
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
        self.pages(py, "batch_get", keys, ptrs, lens)
    }

    /// Length of the longest prefix of `keys` whose pages are all present.
    fn batch_exists(&self, py: Python<'_>, keys: Vec<String>) -> usize {
        self.detached(py, move |state| match state {
            State::Open(node) => node.batch_exists(&keys).unwrap_or_else(|e| {
                tracing::warn!("batch_exists: {e}; reported as 0 pages present");
                0
            }),
            State::Closed(_) => {
                tracing::warn!(
                    "batch_exists on a closed PeerCache node: reported as 0 pages present"
                );
                0
            }
        })
    }

    /// Drops every page of this node's pool (nothing to do once closed).
    fn clear(&self, py: Python<'_>) {
        py.detach(|| match &*self.read() {
            State::Open(node) => node.clear(),
            State::Closed(_) => tracing::debug!("clear on a closed PeerCache node: nothing to do"),
        })
    }

    /// Counters summed over every shard, by name (the final values once closed).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = py.detach(|| match &*self.read() {
            State::Open(node) => node.stats(),
            State::Closed(stats) => **stats,
        });
        stats_dict(py, stats)
    }

    /// Stops the shards and unmaps the pool. Idempotent; afterwards the data
    /// methods return all-`False` / `0` and `stats()` the final counters.
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
            if let State::Open(node) = &mut *state {
                node.shutdown();
                let stats = node.stats();
                // Drops the node: its pool is unmapped here, with the lock held,
                // so no batch call can still be using it.
                *state = State::Closed(Box::new(stats));
                tracing::info!("PeerCache node closed");
            }
        });
    }

    /// Whether `close()` has been called.
    #[getter]
    fn closed(&self, py: Python<'_>) -> bool {
        py.detach(|| matches!(&*self.read(), State::Closed(_)))
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

    /// Nanoseconds the most recent batch call of this node (from any thread)
    /// ran with the GIL released. Diagnostics only: a call's GIL-held time is
    /// its wall time minus this.
    #[getter]
    fn _last_detached_ns(&self) -> u64 {
        self.last_detached_ns.load(Ordering::Relaxed)
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "Node(shards={}, pool_bytes={}, closed={})",
            self.shards,
            self.pool_bytes,
            if self.closed(py) { "True" } else { "False" }
        )
    }
}

/// Every [`NodeStats`] field under its own name. The pattern is exhaustive, so
/// a counter added to the engine fails this build until it is listed here.
fn stats_dict(py: Python<'_>, stats: NodeStats) -> PyResult<Bound<'_, PyDict>> {
    let dict = PyDict::new(py);
    for (name, value) in stats.fields() {
        dict.set_item(name, value)?;
    }
    Ok(dict)
}

/// The `peercache._native` module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNode>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // No RDMA transport exists yet: pages move only within this process.
    m.add("HAS_RDMA", false)?;
    Ok(())
}
