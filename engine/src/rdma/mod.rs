//! The RDMA data plane: one-sided READs from peers' published pools.
//!
//! - [`verbs`]: the verbs interface everything else is written against.
//! - [`fabric`]: a deterministic in-memory NIC implementing it, for tests.
//! - `ibverbs` (cargo feature `ibverbs`): the rdma-sys implementation.
//! - [`registration`]: which memory is registered how (pool REMOTE_READ,
//!   host buffer LOCAL_WRITE, lazy destinations, GPU buffers).
//! - [`channel`]: per-peer channel pools (QP + CQ per channel).
//! - [`rail`]: one opened device per rail, striping by index.
//! - [`reader`]: batched, selectively signalled READs with completion
//!   matching, timeouts and the post-READ generation check.
//!
//! - [`shard`]: what one shard owns of all this, behind an object-safe trait.
//!
//! The node picks its transport at start ([`select`]); with RDMA, each shard
//! opens its rails and reads remote pages with one-sided READs
//! (`store::remote`). See `docs/rdma.md`.

pub mod channel;
pub mod fabric;
#[cfg(feature = "ibverbs")]
pub mod ibverbs;
pub mod rail;
pub mod reader;
pub mod registration;
pub mod shard;
pub mod verbs;

#[cfg(test)]
mod tests;

use crate::config::{Config, Protocol};
pub use shard::RdmaFactory;

/// The transport a node's data path uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Pages travel over TCP because `protocol` is `tcp`.
    Tcp,
    /// `protocol` is `rdma` but RDMA cannot be used: the reason, for the
    /// `RDMA transport unavailable (<reason>); using TCP fallback` line.
    TcpFallback(String),
    /// Remote pages are read with one-sided RDMA READs through these
    /// devices (peers without RDMA are still read over TCP).
    Rdma(Vec<String>),
}

/// Where a node's RDMA devices come from.
#[derive(Clone, Debug, Default)]
pub enum RdmaSource {
    /// The host's devices through libibverbs (needs the `ibverbs` feature).
    #[default]
    System,
    /// A software fabric shared by nodes of one process (tests, demos of the
    /// data path without hardware).
    Fabric(fabric::Fabric),
}

/// Chooses the data-path transport for `config` and, for RDMA, the factory
/// each shard opens its rails with. Errors (with the reason) only when
/// `require_rdma` forbids the TCP fallback.
pub fn select(
    config: &Config,
    source: &RdmaSource,
) -> Result<(Transport, Option<RdmaFactory>), String> {
    if config.protocol == Protocol::Tcp {
        return Ok((Transport::Tcp, None));
    }
    let probed = match source {
        RdmaSource::Fabric(fabric) => probe(fabric.provider(), config),
        RdmaSource::System => system(config),
    };
    match probed {
        Ok((devices, factory)) => Ok((Transport::Rdma(devices), Some(factory))),
        Err(reason) if config.require_rdma => Err(reason),
        Err(reason) => Ok((Transport::TcpFallback(reason), None)),
    }
}

#[cfg(feature = "ibverbs")]
fn system(config: &Config) -> Result<(Vec<String>, RdmaFactory), String> {
    probe(ibverbs::IbvProvider, config)
}

#[cfg(not(feature = "ibverbs"))]
fn system(_config: &Config) -> Result<(Vec<String>, RdmaFactory), String> {
    Err(
        "this build has no RDMA support: it was built without the `ibverbs` cargo feature"
            .to_owned(),
    )
}

/// Opens every configured device once (the first active one when none is
/// named) so a bad set-up fails at start with the verbs call's reason, then
/// hands the provider to the shards.
fn probe<Pr>(provider: Pr, config: &Config) -> Result<(Vec<String>, RdmaFactory), String>
where
    Pr: verbs::VerbsProvider + Send + Sync + 'static,
    Pr::Device: 'static,
{
    let names = config.rdma_devices();
    let wanted: Vec<Option<&str>> = if names.is_empty() {
        vec![None]
    } else {
        names.iter().map(|n| Some(n.as_str())).collect()
    };
    let mut opened = Vec::new();
    for name in wanted {
        let dev = provider
            .open(name, config.ib_port, config.gid_index)
            .map_err(|e| e.to_string())?;
        opened.push(verbs::Verbs::name(&dev).to_owned());
    }
    let factory = shard::factory(
        provider,
        config.ib_port,
        config.gid_index,
        config.max_channels_per_peer as usize,
        config.request_timeout(),
    );
    Ok((opened, factory))
}
