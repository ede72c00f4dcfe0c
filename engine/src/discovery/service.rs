//! The discovery service every host runs on its meta port: requests in,
//! replies out, backed by a [`Registry`].

use super::member::Member;
use super::registry::{Departure, Registry, RegistryVersion, Upsert};

/// A request from a member agent to a discovery service.
///
/// Plain data: the transport maps it onto wire messages. Register and
/// Heartbeat both carry the full record so any master — including one just
/// promoted or restarted with an empty registry — can (re)create it from a
/// heartbeat alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// First contact with a master (or the first since it was unreachable or
    /// restarted).
    Register(Member),
    /// Periodic refresh, every `heartbeat_interval`, to every master.
    Heartbeat(Member),
    /// Clean shutdown: remove the record now instead of after `member_ttl`.
    Deregister {
        /// Node leaving.
        node_id: String,
        /// Its incarnation, so a late deregistration of an old process
        /// cannot remove its restarted successor.
        incarnation: u64,
    },
    /// Pull the live member list (also used to probe a host and to
    /// bootstrap through any seed).
    Members,
}

/// A discovery service's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Register/Heartbeat/Deregister accepted; `version` tells the member
    /// whether its copy of this master's list is current.
    Ack {
        /// The registry version after the request.
        version: RegistryVersion,
    },
    /// The registry's live members, sorted by node id, and its recent clean
    /// shutdowns.
    Members {
        /// The version this list is.
        version: RegistryVersion,
        /// The members, at most [`MAX_MEMBERS`](super::MAX_MEMBERS).
        members: Vec<Member>,
        /// Members that deregistered within `member_ttl`, sorted by node id,
        /// at most [`MAX_MEMBERS`](super::MAX_MEMBERS): members drop them at
        /// once, whatever other (unsettled or silent) masters still list.
        departed: Vec<Departure>,
    },
    /// This host's registry is empty (it is not a master), so it answers with
    /// its co-located member's view instead: enough for a node that
    /// bootstraps through this seed to find the real masters, but not
    /// authoritative.
    Referral {
        /// The co-located agent's live view.
        members: Vec<Member>,
    },
    /// The request was refused; `reason` says what to do about it.
    Rejected {
        /// Operator-facing explanation.
        reason: String,
    },
}

impl Reply {
    /// The registry version carried by the reply, if any.
    pub fn version(&self) -> Option<RegistryVersion> {
        match self {
            Reply::Ack { version } | Reply::Members { version, .. } => Some(*version),
            Reply::Referral { .. } | Reply::Rejected { .. } => None,
        }
    }
}

/// The discovery service of one host (one per meta port, shared by the
/// host's ranks).
///
/// Every host runs one, master or not: members register only with the hosts
/// they compute as masters, so a non-master's registry stays empty, yet it
/// still answers [`Request::Members`] (with a [`Reply::Referral`]) so that any
/// `discovery_addr` seed can bootstrap a new node. The service does not need
/// to know whether it is a master.
#[derive(Debug, Clone)]
pub struct Service {
    registry: Registry,
}

impl Service {
    /// A service around `registry` (normally empty, with a fresh instance).
    pub fn new(registry: Registry) -> Service {
        Service { registry }
    }

    /// Handles one request at `now_ms`.
    ///
    /// `local_view` is the live view of a member agent running on this host
    /// (empty if none); it is only used to answer [`Request::Members`] when
    /// the registry is empty.
    pub fn handle(&mut self, request: Request, now_ms: u64, local_view: &[Member]) -> Reply {
        match request {
            Request::Register(member) | Request::Heartbeat(member) => {
                let node_id = member.node_id.clone();
                let incarnation = member.incarnation;
                match self.registry.upsert(member, now_ms) {
                    Ok(Upsert::Stale {
                        current_incarnation,
                    }) => Reply::Rejected {
                        reason: format!(
                            "node {node_id} incarnation {incarnation} was replaced by incarnation \
                             {current_incarnation}; this process is a leftover of a restart and \
                             should stop"
                        ),
                    },
                    Ok(Upsert::Departed) => Reply::Rejected {
                        reason: format!(
                            "node {node_id} incarnation {incarnation} deregistered; a restarted \
                             node must use a new incarnation"
                        ),
                    },
                    Ok(_) => Reply::Ack {
                        version: self.registry.version(),
                    },
                    Err(error) => Reply::Rejected {
                        reason: error.to_string(),
                    },
                }
            }
            Request::Deregister {
                node_id,
                incarnation,
            } => {
                // Checked as a record's id is: a tombstone of a 16 MiB id
                // would make every Members reply too large to send.
                if let Err(expected) = super::member::check_node_id(&node_id) {
                    return Reply::Rejected {
                        reason: format!("deregistration refused: expected {expected}"),
                    };
                }
                self.registry.deregister(&node_id, incarnation, now_ms);
                Reply::Ack {
                    version: self.registry.version(),
                }
            }
            Request::Members => {
                if self.registry.is_empty() && !local_view.is_empty() {
                    Reply::Referral {
                        members: local_view.to_vec(),
                    }
                } else {
                    Reply::Members {
                        version: self.registry.version(),
                        members: self.registry.members(),
                        departed: self.registry.departures(),
                    }
                }
            }
        }
    }

    /// Prunes silent members (see [`Registry::expire`]); returns their ids.
    pub fn expire(&mut self, now_ms: u64) -> Vec<String> {
        self.registry.expire(now_ms)
    }

    /// The registry, for metrics and tests.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::RegistryError;

    fn m(id: &str, incarnation: u64) -> Member {
        Member {
            node_id: id.to_owned(),
            host: "10.0.0.2".to_owned(),
            meta_port: 31998,
            control_endpoints: vec![("10.0.0.2".to_owned(), 40_000)],
            shard_count: 1,
            incarnation,
            pool_bytes: 4096,
        }
    }

    #[test]
    fn register_heartbeat_members_deregister() {
        let mut s = Service::new(Registry::new(5, 6_000));
        let Reply::Ack { version } = s.handle(Request::Register(m("a", 1)), 0, &[]) else {
            panic!("register must be acknowledged");
        };
        assert_eq!(
            version,
            RegistryVersion {
                instance: 5,
                changes: 1
            }
        );
        let ack = s.handle(Request::Heartbeat(m("a", 1)), 100, &[]);
        assert_eq!(ack, Reply::Ack { version });
        assert_eq!(
            s.handle(Request::Members, 200, &[]),
            Reply::Members {
                version,
                members: vec![m("a", 1)],
                departed: Vec::new(),
            }
        );
        let gone = s.handle(
            Request::Deregister {
                node_id: "a".to_owned(),
                incarnation: 1,
            },
            300,
            &[],
        );
        assert!(matches!(gone, Reply::Ack { version } if version.changes == 2));
        // An id no record could have is refused and leaves no tombstone.
        let huge = s.handle(
            Request::Deregister {
                node_id: "x".repeat(1 << 20),
                incarnation: 1,
            },
            301,
            &[],
        );
        assert!(matches!(huge, Reply::Rejected { ref reason } if reason.contains("node_id")));
        assert!(s.registry().is_empty());
        // The list reports the departure while it is recent.
        assert!(matches!(
            s.handle(Request::Members, 305, &[]),
            Reply::Members { ref members, ref departed, .. }
                if members.is_empty()
                    && departed == &vec![Departure { node_id: "a".to_owned(), incarnation: 1 }]
        ));
        // A heartbeat that was in flight when "a" left is refused.
        let late = s.handle(Request::Heartbeat(m("a", 1)), 310, &[]);
        assert!(matches!(late, Reply::Rejected { ref reason } if reason.contains("deregistered")));
        assert!(s.registry().is_empty());
        assert!(s.expire(100_000).is_empty());
    }

    #[test]
    fn empty_registry_refers_to_the_local_view() {
        let mut s = Service::new(Registry::new(1, 6_000));
        let view = vec![m("x", 1), m("y", 1)];
        assert_eq!(
            s.handle(Request::Members, 0, &view),
            Reply::Referral {
                members: view.clone()
            }
        );
        // Nothing to refer to: an (empty) authoritative answer.
        assert!(matches!(
            s.handle(Request::Members, 0, &[]),
            Reply::Members { ref members, .. } if members.is_empty()
        ));
        // Once anyone registers, the registry answers for itself.
        s.handle(Request::Register(m("a", 1)), 0, &[]);
        assert!(matches!(
            s.handle(Request::Members, 0, &view),
            Reply::Members { ref members, .. } if members == &vec![m("a", 1)]
        ));
    }

    #[test]
    fn refusals_carry_an_operator_reason() {
        let mut s = Service::new(Registry::with_capacity(1, 6_000, 1));
        s.handle(Request::Register(m("a", 2)), 0, &[]);
        let full = s.handle(Request::Register(m("b", 1)), 0, &[]);
        let expected = RegistryError::Full {
            cap: 1,
            node_id: "b".to_owned(),
        }
        .to_string();
        assert_eq!(full, Reply::Rejected { reason: expected });
        let stale = s.handle(Request::Heartbeat(m("a", 1)), 0, &[]);
        assert!(matches!(stale, Reply::Rejected { ref reason } if reason.contains("leftover")));
        assert_eq!(s.registry().get("a").map(|x| x.incarnation), Some(2));
        assert_eq!(
            Reply::Rejected {
                reason: String::new()
            }
            .version(),
            None
        );
    }
}
