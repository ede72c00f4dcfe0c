//! One node's membership record: what every peer needs to reach it.

use crate::config::addr::validate_host;
use crate::config::HostPort;

/// Most control endpoints one member may advertise (one per shard is the
/// expected shape; 64 covers the largest host with room to spare). Bounds
/// what a peer can make a master store.
pub const MAX_CONTROL_ENDPOINTS: usize = 64;

/// Longest node id accepted, in characters (the same limit as the
/// `node_id` config key, because the id also names a disk directory).
pub const MAX_NODE_ID_CHARS: usize = 128;

/// A cluster member as discovery knows it: one PeerCache node (one SGLang
/// rank), not one host.
///
/// Several ranks of one host are separate members that share `host` and
/// `meta_port`; the pair is the host's identity for master selection
/// ([`Member::meta_addr`]). The record is static for one incarnation: a node
/// that restarts gets a larger `incarnation`, and the new record replaces the
/// old one everywhere (masters and members), which is how peers learn that its
/// pool — and every directory entry pointing into it — is gone.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    /// Stable node identifier (`node_id`), unique in the cluster. Records are
    /// keyed by it.
    pub node_id: String,
    /// Advertised host or IP (`local_hostname`), the address peers dial.
    pub host: String,
    /// Port of the discovery service on `host` (shared by all ranks there).
    pub meta_port: u16,
    /// Control RPC endpoints (host, port), typically one per shard.
    pub control_endpoints: Vec<(String, u16)>,
    /// Number of shards (cores) this node runs.
    pub shard_count: u32,
    /// Grows on every restart of `node_id` (e.g. start time in ms since the
    /// Unix epoch); a larger value replaces a smaller one, a smaller one is a
    /// leftover from a dead process and is refused.
    pub incarnation: u64,
    /// Bytes of published pool this node serves.
    pub pool_bytes: u64,
}

/// Checks a node id that arrived from the network (in a record or a
/// deregistration); the error text completes "expected ...".
pub fn check_node_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("a non-empty node_id".to_owned());
    }
    if id.chars().count() > MAX_NODE_ID_CHARS {
        return Err(format!(
            "a node_id of at most {MAX_NODE_ID_CHARS} characters"
        ));
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) || id.contains('/') {
        return Err("a node_id without spaces, control characters or '/'".to_owned());
    }
    Ok(())
}

impl Member {
    /// The discovery address of this member's host: `host:meta_port`.
    ///
    /// This is the unit masters are chosen from, so four ranks behind one
    /// meta port count as one host.
    pub fn meta_addr(&self) -> HostPort {
        HostPort {
            host: self.host.clone(),
            port: self.meta_port,
        }
    }

    /// Checks the record before a master stores it or an agent trusts it.
    ///
    /// Records arrive from the network, so every field that could make a
    /// master store unbounded or unusable data is checked. The error text
    /// completes "expected ...".
    pub fn check(&self) -> Result<(), String> {
        check_node_id(&self.node_id)?;
        validate_host(&self.host).map_err(|why| format!("host: {why}"))?;
        if self.meta_port == 0 {
            return Err("a meta_port from 1 to 65535".to_owned());
        }
        if self.control_endpoints.len() > MAX_CONTROL_ENDPOINTS {
            return Err(format!(
                "at most {MAX_CONTROL_ENDPOINTS} control endpoints, got {}",
                self.control_endpoints.len()
            ));
        }
        for (host, port) in &self.control_endpoints {
            validate_host(host).map_err(|why| format!("control endpoint host: {why}"))?;
            if *port == 0 {
                return Err(format!("a control port from 1 to 65535 for {host}"));
            }
        }
        if self.shard_count == 0 {
            return Err("a shard_count of at least 1".to_owned());
        }
        Ok(())
    }
}
