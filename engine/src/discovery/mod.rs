//! Embedded multi-master discovery: who is in the cluster.
//!
//! There is no separate meta process. Every host runs a discovery
//! [`Service`] in-process on its meta port (shared by all ranks of the host),
//! and every node runs a [`MemberAgent`]. The first `discovery_addr` entry is
//! the *head*, pinned as the primary master; the next hosts in (host, port)
//! order are promoted up to `max_masters` ([`select_masters`] has the exact
//! rule). A cluster with fewer hosts than `max_masters` has all of them as
//! masters.
//!
//! The registry a master holds ([`Registry`]) is soft state: members register
//! and then heartbeat their full record every `heartbeat_interval` to *every*
//! master, and a master prunes a member silent for `member_ttl`. Nothing is
//! replicated between masters, and nothing needs to be: a promoted or
//! restarted master is complete again within one heartbeat interval. A clean
//! shutdown deregisters at once; a restarted node comes back with a larger
//! `incarnation`, which replaces its old record everywhere.
//!
//! Members pull the list from the masters whenever a master's
//! [`RegistryVersion`] changes and keep the union as their live view
//! ([`MemberAgent::live_members`]), so losing any one master — the head
//! included — loses nothing. A list also reports the recent clean shutdowns
//! ([`Departure`]s): those leave the view at once, even while the lists that
//! still name them come from masters not yet trusted to remove anyone, or
//! from a master that stopped answering (the leaver's own host). A master that has not answered for `member_ttl`
//! is treated as down, the next host takes its place, and it is probed until
//! it answers again (the head then takes its first place back). A node
//! started before any master is reachable waits, retries every heartbeat
//! interval through every seed, and says so in the log periodically.
//!
//! # Sans-IO
//!
//! Like foca, this module never touches sockets or clocks. Time is a
//! millisecond counter passed in by the caller; the agent's outputs are
//! [`Action`]s (send this request, log this line, membership changed) and its
//! inputs are replies and failures. The runtime that owns the meta port and
//! the connections is a thin loop around these types, and the tests drive a
//! whole simulated cluster — hosts dying, heads returning, nodes restarting —
//! deterministically from a seed, without a single sleep.
//!
//! The types here are plain Rust; the runtime converts them to and from the
//! wire messages.

mod agent;
mod masters;
mod member;
mod membership;
mod registry;
mod service;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use agent::{
    Action, AgentConfig, AgentConfigError, LogLevel, MemberAgent, Phase, MAX_MASTERS, MAX_SEEDS,
};
pub use masters::select_masters;
pub use member::{Member, MAX_CONTROL_ENDPOINTS, MAX_NODE_ID_CHARS};
pub use membership::{diff, merge_lists, MembershipChange};
pub use registry::{Departure, Registry, RegistryError, RegistryVersion, Upsert, MAX_MEMBERS};
pub use service::{Reply, Request, Service};
