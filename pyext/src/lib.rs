//! `peercache._native`: the PeerCache engine as a Python extension module.
//!
//! [`node::PyNode`] (Python name `Node`) wraps one engine
//! [`peercache_engine::Node`]; [`node::PyPageLayout`] (`PageLayout`) is a
//! host pool's page map ([`layout`]), so zero-copy calls compute every page
//! pointer in Rust; [`cli`] runs the console scripts. It is deliberately thin:
//! the SGLang-facing `PeerCacheStore` (`peercache.store`) is written in Python
//! on top of it.
//!
//! Data-path rules, which every batch method follows:
//! - the Python arguments are converted to Rust vectors first (by PyO3, with the
//!   GIL held);
//! - the GIL is then released exactly once ([`Python::detach`]) around the
//!   engine call, so other Python threads of the rank keep running while pages
//!   are copied;
//! - the only Python object built on the way back is the result list;
//! - a failure (malformed batch, closed node, engine error, even a panic)
//!   never raises: the call returns all-`False` (or `0`) and logs one
//!   rate-limited line through `tracing`.
//!
//! Arguments of the wrong Python type (a `str` where a list is expected, a
//! negative pointer) are caller bugs and raise `TypeError` / `OverflowError`
//! from the conversion, before any work starts.

mod cli;
mod layout;
mod node;

use pyo3::prelude::*;

/// The `peercache._native` module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<node::PyNode>()?;
    m.add_class::<node::PyPageLayout>()?;
    m.add_function(wrap_pyfunction!(cli::run_meta, m)?)?;
    m.add_function(wrap_pyfunction!(cli::run_bench, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Whether this build can read over RDMA hardware (the `ibverbs`
    // feature); without it `protocol: "rdma"` falls back to TCP.
    m.add("HAS_RDMA", cfg!(feature = "ibverbs"))?;
    Ok(())
}
