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
//! What is wired into the node today is transport *selection* ([`select`]):
//! the live get path still reads over TCP. See `docs/rdma.md`.

pub mod channel;
pub mod fabric;
#[cfg(feature = "ibverbs")]
pub mod ibverbs;
pub mod rail;
pub mod reader;
pub mod registration;
pub mod verbs;

#[cfg(test)]
mod tests;

use crate::config::{Config, Protocol};

/// The transport a node's data path uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Pages travel over TCP because `protocol` is `tcp`.
    Tcp,
    /// `protocol` is `rdma` but RDMA cannot be used: the reason, for the
    /// `RDMA transport unavailable (<reason>); using TCP fallback` line.
    TcpFallback(String),
}

/// Chooses the data-path transport for `config`. Errors (with the reason)
/// only when `require_rdma` forbids the fallback.
pub fn select(config: &Config) -> Result<Transport, String> {
    if config.protocol == Protocol::Tcp {
        return Ok(Transport::Tcp);
    }
    let reason = rdma_unavailable_reason(config);
    if config.require_rdma {
        Err(reason)
    } else {
        Ok(Transport::TcpFallback(reason))
    }
}

/// Why the RDMA data path cannot serve this node. Always a reason today:
/// even where every configured device opens, the READ path is not wired into
/// the node's get path yet, and saying "rdma" then would be a lie.
fn rdma_unavailable_reason(config: &Config) -> String {
    #[cfg(feature = "ibverbs")]
    {
        let provider = ibverbs::IbvProvider;
        let names = config.rdma_devices();
        let wanted: Vec<Option<&str>> = if names.is_empty() {
            vec![None]
        } else {
            names.iter().map(|n| Some(n.as_str())).collect()
        };
        let mut opened = Vec::new();
        for name in wanted {
            match verbs::VerbsProvider::open(&provider, name, config.ib_port, config.gid_index) {
                Ok(dev) => opened.push(verbs::Verbs::name(&dev).to_owned()),
                Err(e) => return e.to_string(),
            }
        }
        format!(
            "device(s) {} opened, but this build does not yet read pages over RDMA in the node's get path",
            opened.join(",")
        )
    }
    #[cfg(not(feature = "ibverbs"))]
    {
        let _ = config;
        "this build has no RDMA support: it was built without the `ibverbs` cargo feature"
            .to_owned()
    }
}
