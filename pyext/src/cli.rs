//! The console scripts `peercache-meta` and `peercache-bench`: the Python
//! entry points (`peercache.cli`) hand `sys.argv` to the same Rust code the
//! standalone binaries run.

use pyo3::prelude::*;
use std::ffi::OsString;

/// Runs `peercache-meta` with `argv`; returns its exit code. The GIL is
/// released for the whole run (it serves until SIGINT/SIGTERM).
#[pyfunction]
pub fn run_meta(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(|| peercache_engine::cli::meta::run(argv))
}

/// Runs `peercache-bench` with `argv`; `self_command` is how to start it
/// again in a second process (the interpreter and `-m peercache.cli bench`).
#[pyfunction]
pub fn run_bench(py: Python<'_>, argv: Vec<String>, self_command: Vec<String>) -> i32 {
    peercache_bench::set_self_command(self_command.into_iter().map(OsString::from).collect());
    py.detach(|| peercache_bench::run_cli(argv))
}
