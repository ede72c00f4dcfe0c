//! The PeerCache engine: everything that runs inside one SGLang rank.
//!
//! It owns the typed `extra_config` ([`config`]), key hashing and naming
//! ([`keys`]), the consistent-hash ring ([`ring`]), the published pool that
//! peers read from ([`pool`]), the shard-per-core runtime ([`runtime`]), the
//! RDMA data plane tested on a software fabric ([`rdma`]) and the node store
//! that ties them together behind batch calls ([`store`]). See
//! `docs/architecture.md` for how the pieces fit.

#![warn(missing_docs)]

pub mod cli;
pub mod cluster;
pub mod config;
pub mod directory;
pub mod discovery;
pub mod disk;
pub mod fork;
pub mod keys;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod pool;
pub mod rdma;
pub mod ring;
pub mod runtime;
pub mod store;
pub mod wire;

pub use config::Config;
pub use store::{BatchError, Node, NodeError, NodeStats};
