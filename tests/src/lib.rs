//! Shared pieces of the multi-process tests and the demo: the deterministic
//! page contents every node process agrees on, and a client that drives a
//! `peercache-node` process over its stdin/stdout line protocol.

pub mod node_process;
pub mod pages;
