//! The registry a discovery master holds: soft state, refreshed by
//! heartbeats and pruned by `member_ttl`.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use crate::config::HostPort;

use super::member::Member;

/// Most members one registry holds (and one member list may carry).
///
/// Every list in discovery is bounded so a confused or hostile peer cannot
/// make a master allocate without limit; 4096 ranks is far beyond the
/// clusters PeerCache targets (a few hundred ranks), and a full member list
/// at that size is still well under a megabyte.
pub const MAX_MEMBERS: usize = 4096;

/// Identifies one state of one registry, so a member can tell whether the
/// list it holds from a master is current without fetching it again.
///
/// `instance` is chosen at random when the registry is created: a master that
/// restarts starts over at `changes == 0` with a new `instance`, and members
/// notice that its registry was emptied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistryVersion {
    /// Random id of this registry's lifetime (one master process).
    pub instance: u64,
    /// Count of changes (joins, replacements, removals) since creation.
    pub changes: u64,
}

/// A clean shutdown a registry reports along with its member list: the
/// process `(node_id, incarnation)` deregistered and is gone for good.
///
/// Positive information, unlike a member merely missing from a list: a
/// member agent may apply it from any master's list, even one that is not
/// settled yet, and against any other master's list, even one that has
/// stopped answering. A node restarted since has a larger incarnation and is
/// not affected.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Departure {
    /// The node that left.
    pub node_id: String,
    /// The incarnation that left (and every older one).
    pub incarnation: u64,
}

/// What [`Registry::upsert`] did with a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upsert {
    /// A node the registry did not hold.
    Inserted,
    /// A newer incarnation of a held node: the old record is gone.
    Replaced {
        /// Incarnation of the record that was replaced.
        old_incarnation: u64,
    },
    /// The same incarnation again (a heartbeat): its TTL restarts.
    Refreshed,
    /// An older incarnation than the held one: a leftover of a process that
    /// has since restarted. Refused, and it does not refresh anything.
    Stale {
        /// Incarnation the registry holds for this node.
        current_incarnation: u64,
    },
    /// This incarnation deregistered less than `member_ttl` ago: a heartbeat
    /// that was still in flight when the node shut down. Refused, so a clean
    /// shutdown is not undone by the network reordering its last messages.
    Departed,
}

/// Why a registry refused a record.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegistryError {
    /// The registry holds its maximum number of members.
    #[error(
        "the discovery registry already holds {cap} members (the most it accepts), so node \
         {node_id} cannot join; stop unused nodes, or split the cluster into separate clusters \
         with different discovery_addr values"
    )]
    Full {
        /// The registry's capacity.
        cap: usize,
        /// The node that was refused.
        node_id: String,
    },
    /// The record failed [`Member::check`].
    #[error("invalid member record for node {node_id:?}: expected {why}")]
    Invalid {
        /// The node id as sent.
        node_id: String,
        /// What was expected instead.
        why: String,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    member: Member,
    last_seen_ms: u64,
}

/// A recent clean departure, remembered for `member_ttl`.
#[derive(Debug, Clone, Copy)]
struct Tombstone {
    incarnation: u64,
    at_ms: u64,
}

/// The member table of one discovery master.
///
/// Soft state by design: nothing here is persisted or replicated between
/// masters. Every member heartbeats its full record to every master, so a
/// master that is promoted or restarted is complete again one heartbeat
/// interval later, and one that stops hearing from a member drops it after
/// `member_ttl`. Output is sorted by node id so every master answers the same
/// question the same way.
///
/// Time is a caller-supplied millisecond counter (`now_ms`); the registry
/// never reads a clock, so tests drive it exactly.
#[derive(Debug, Clone)]
pub struct Registry {
    instance: u64,
    changes: u64,
    member_ttl_ms: u64,
    capacity: usize,
    entries: BTreeMap<String, Entry>,
    /// Deregistered (node, incarnation) pairs, so heartbeats that were
    /// already in flight cannot resurrect them; at most `capacity`.
    tombstones: BTreeMap<String, Tombstone>,
}

impl Registry {
    /// An empty registry holding up to [`MAX_MEMBERS`] members.
    ///
    /// `instance` must differ between lifetimes of a master (pick it at
    /// random at start-up); `member_ttl_ms` is `member_ttl`.
    pub fn new(instance: u64, member_ttl_ms: u64) -> Registry {
        Registry::with_capacity(instance, member_ttl_ms, MAX_MEMBERS)
    }

    /// An empty registry holding up to `capacity` members (at least 1, at
    /// most [`MAX_MEMBERS`]). Smaller capacities exist for tests and for
    /// deployments that want a tighter bound.
    pub fn with_capacity(instance: u64, member_ttl_ms: u64, capacity: usize) -> Registry {
        assert!(
            (1..=MAX_MEMBERS).contains(&capacity),
            "registry capacity must be 1..={MAX_MEMBERS}, got {capacity}"
        );
        assert!(member_ttl_ms > 0, "member_ttl must be positive");
        Registry {
            instance,
            changes: 0,
            member_ttl_ms,
            capacity,
            entries: BTreeMap::new(),
            tombstones: BTreeMap::new(),
        }
    }

    /// Stores a register or heartbeat record, applying the incarnation rules:
    /// newer replaces, equal refreshes (and takes changed fields), older is
    /// [`Upsert::Stale`], and an incarnation that deregistered within
    /// `member_ttl` is [`Upsert::Departed`]. A new node is refused with
    /// [`RegistryError::Full`] when the registry is at capacity; known nodes
    /// are always refreshed, so a full registry keeps serving its current
    /// members.
    pub fn upsert(&mut self, member: Member, now_ms: u64) -> Result<Upsert, RegistryError> {
        if let Err(why) = member.check() {
            return Err(RegistryError::Invalid {
                node_id: member.node_id,
                why,
            });
        }
        if let Some(stone) = self.tombstones.get(&member.node_id) {
            let recent = now_ms.saturating_sub(stone.at_ms) <= self.member_ttl_ms;
            if recent && member.incarnation <= stone.incarnation {
                return Ok(Upsert::Departed);
            }
            self.tombstones.remove(&member.node_id);
        }
        if let Some(entry) = self.entries.get_mut(&member.node_id) {
            let held = entry.member.incarnation;
            if member.incarnation < held {
                return Ok(Upsert::Stale {
                    current_incarnation: held,
                });
            }
            entry.last_seen_ms = entry.last_seen_ms.max(now_ms);
            if member.incarnation > held {
                entry.member = member;
                self.changes += 1;
                return Ok(Upsert::Replaced {
                    old_incarnation: held,
                });
            }
            if entry.member != member {
                entry.member = member;
                self.changes += 1;
            }
            return Ok(Upsert::Refreshed);
        }
        if self.entries.len() >= self.capacity {
            return Err(RegistryError::Full {
                cap: self.capacity,
                node_id: member.node_id,
            });
        }
        self.entries.insert(
            member.node_id.clone(),
            Entry {
                member,
                last_seen_ms: now_ms,
            },
        );
        self.changes += 1;
        Ok(Upsert::Inserted)
    }

    /// Removes `node_id` on a clean shutdown. Returns whether a record was
    /// removed. A deregistration from an older incarnation than the held one
    /// (or than an earlier deregistration) is ignored: it comes from the
    /// process the current one replaced.
    /// The departure is remembered for `member_ttl` so that heartbeats the
    /// node sent just before it (and that arrive after it) are refused, and
    /// it is reported by [`Registry::departures`] meanwhile. A departure not
    /// known before counts as a change even when no record was held, so
    /// members pull the list that reports it.
    pub fn deregister(&mut self, node_id: &str, incarnation: u64, now_ms: u64) -> bool {
        if self
            .entries
            .get(node_id)
            .is_some_and(|entry| entry.member.incarnation > incarnation)
        {
            return false;
        }
        let known = self.tombstones.get(node_id).map(|stone| stone.incarnation);
        if known.is_some_and(|held| held > incarnation) {
            return false;
        }
        if self.tombstones.len() >= self.capacity && known.is_none() {
            // Bounded: forget the oldest departure (its in-flight heartbeats
            // are the least likely to still arrive).
            let oldest = self
                .tombstones
                .iter()
                .min_by_key(|(_, stone)| stone.at_ms)
                .map(|(id, _)| id.clone());
            if let Some(id) = oldest {
                self.tombstones.remove(&id);
            }
        }
        self.tombstones.insert(
            node_id.to_owned(),
            Tombstone {
                incarnation,
                at_ms: now_ms,
            },
        );
        let removed = self.entries.remove(node_id).is_some();
        if removed || known != Some(incarnation) {
            self.changes += 1;
        }
        removed
    }

    /// Prunes every member not heard from for longer than `member_ttl`, and
    /// returns their node ids (sorted). Call it about once per heartbeat
    /// interval or more often; a late call only delays pruning.
    pub fn expire(&mut self, now_ms: u64) -> Vec<String> {
        let ttl = self.member_ttl_ms;
        let expired: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| now_ms.saturating_sub(e.last_seen_ms) > ttl)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.entries.remove(id);
        }
        self.tombstones
            .retain(|_, stone| now_ms.saturating_sub(stone.at_ms) <= ttl);
        if !expired.is_empty() {
            self.changes += 1;
        }
        expired
    }

    /// The live members, sorted by node id.
    pub fn members(&self) -> Vec<Member> {
        self.entries.values().map(|e| e.member.clone()).collect()
    }

    /// The clean shutdowns of the last `member_ttl` (as of the last
    /// [`Registry::expire`]), sorted by node id; at most the capacity.
    pub fn departures(&self) -> Vec<Departure> {
        self.tombstones
            .iter()
            .map(|(node_id, stone)| Departure {
                node_id: node_id.clone(),
                incarnation: stone.incarnation,
            })
            .collect()
    }

    /// The record held for `node_id`, if any.
    pub fn get(&self, node_id: &str) -> Option<&Member> {
        self.entries.get(node_id).map(|e| &e.member)
    }

    /// When `node_id` was last heard from (ms), if held.
    pub fn last_seen_ms(&self, node_id: &str) -> Option<u64> {
        self.entries.get(node_id).map(|e| e.last_seen_ms)
    }

    /// The distinct hosts (`host:meta_port`) of the live members.
    pub fn hosts(&self) -> BTreeSet<HostPort> {
        self.entries
            .values()
            .map(|e| e.member.meta_addr())
            .collect()
    }

    /// Number of live members.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no member is registered (a non-master host, or a master that
    /// has just started).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The current version, sent with every acknowledgement so members fetch
    /// the list only when it changed.
    pub fn version(&self) -> RegistryVersion {
        RegistryVersion {
            instance: self.instance,
            changes: self.changes,
        }
    }

    /// Most members this registry accepts.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, incarnation: u64) -> Member {
        Member {
            node_id: id.to_owned(),
            host: "10.0.0.1".to_owned(),
            meta_port: 31998,
            control_endpoints: vec![("10.0.0.1".to_owned(), 40_000)],
            shard_count: 2,
            incarnation,
            pool_bytes: 1 << 30,
        }
    }

    #[test]
    fn incarnation_rules() {
        let mut r = Registry::new(7, 6_000);
        assert_eq!(r.upsert(m("a", 5), 0), Ok(Upsert::Inserted));
        let v1 = r.version();
        assert_eq!(r.upsert(m("a", 5), 100), Ok(Upsert::Refreshed));
        assert_eq!(r.version(), v1, "a heartbeat is not a change");
        assert_eq!(r.last_seen_ms("a"), Some(100));
        // A leftover of the old process neither replaces nor refreshes.
        assert_eq!(
            r.upsert(m("a", 4), 200),
            Ok(Upsert::Stale {
                current_incarnation: 5
            })
        );
        assert_eq!(r.last_seen_ms("a"), Some(100));
        assert_eq!(
            r.upsert(m("a", 6), 300),
            Ok(Upsert::Replaced { old_incarnation: 5 })
        );
        assert_eq!(r.get("a").map(|x| x.incarnation), Some(6));
        assert!(r.version() > v1);
        // Same incarnation, changed field: stored, and a change.
        let mut bigger = m("a", 6);
        bigger.pool_bytes *= 2;
        let v2 = r.version();
        assert_eq!(r.upsert(bigger.clone(), 400), Ok(Upsert::Refreshed));
        assert_eq!(r.get("a"), Some(&bigger));
        assert!(r.version() > v2);
        // A late deregistration of the old incarnation is ignored.
        assert!(!r.deregister("a", 5, 500));
        assert!(r.deregister("a", 6, 500));
        assert!(r.is_empty());
        assert!(!r.deregister("a", 6, 600));
    }

    #[test]
    fn departed_incarnation_is_not_resurrected_by_late_heartbeats() {
        let mut r = Registry::new(1, 6_000);
        r.upsert(m("a", 3), 0).unwrap();
        assert!(r.deregister("a", 3, 1_000));
        // A heartbeat sent before the shutdown arrives after it.
        assert_eq!(r.upsert(m("a", 3), 1_010), Ok(Upsert::Departed));
        assert!(r.is_empty());
        // The node restarting (new incarnation) is welcome at once.
        assert_eq!(r.upsert(m("a", 4), 1_020), Ok(Upsert::Inserted));
        // And once member_ttl has passed, the tombstone is gone.
        assert!(r.deregister("a", 4, 2_000));
        r.expire(8_001);
        assert_eq!(r.upsert(m("a", 4), 8_001), Ok(Upsert::Inserted));
        // Tombstones are bounded by the capacity.
        let mut small = Registry::with_capacity(1, 6_000, 2);
        for (i, id) in ["x", "y", "z"].iter().enumerate() {
            small.deregister(id, 1, i as u64);
        }
        assert_eq!(small.tombstones.len(), 2);
        assert!(
            !small.tombstones.contains_key("x"),
            "the oldest is forgotten"
        );
    }

    #[test]
    fn departures_are_reported_for_member_ttl_and_are_changes() {
        let mut r = Registry::new(1, 6_000);
        r.upsert(m("a", 3), 0).unwrap();
        r.upsert(m("b", 1), 0).unwrap();
        assert!(r.departures().is_empty());
        let v0 = r.version();
        assert!(r.deregister("b", 1, 1_000));
        let v1 = r.version();
        assert_eq!(v1.changes, v0.changes + 1, "one removal, one change");
        // A node this registry never held (it joined elsewhere first) is
        // still reported: the list it answers with changed.
        assert!(!r.deregister("c", 7, 1_100));
        assert!(r.version() > v1);
        let d = |id: &str, incarnation| Departure {
            node_id: id.to_owned(),
            incarnation,
        };
        assert_eq!(r.departures(), vec![d("b", 1), d("c", 7)]);
        // Repeats and older incarnations change nothing.
        let v2 = r.version();
        assert!(!r.deregister("c", 7, 1_200));
        assert!(!r.deregister("c", 6, 1_300));
        assert_eq!(r.version(), v2);
        assert_eq!(r.departures(), vec![d("b", 1), d("c", 7)]);
        assert_eq!(r.upsert(m("c", 7), 1_400), Ok(Upsert::Departed));
        // A restart clears its departure; member_ttl clears the rest.
        assert_eq!(r.upsert(m("b", 2), 1_500), Ok(Upsert::Inserted));
        assert_eq!(r.departures(), vec![d("c", 7)]);
        // (The repeat at 1_200 restarted the tombstone's member_ttl.)
        r.expire(7_200);
        assert_eq!(r.departures(), vec![d("c", 7)]);
        r.expire(7_201);
        assert!(r.departures().is_empty());
    }

    #[test]
    fn expiry_is_strictly_after_member_ttl() {
        let mut r = Registry::new(1, 6_000);
        r.upsert(m("b", 1), 1_000).unwrap();
        r.upsert(m("a", 1), 2_000).unwrap();
        assert!(
            r.expire(7_000).is_empty(),
            "silent exactly member_ttl stays"
        );
        assert_eq!(r.expire(7_001), vec!["b".to_owned()]);
        assert_eq!(r.expire(9_000), vec!["a".to_owned()]);
        assert!(r.is_empty());
        // Time going backwards never expires anything.
        r.upsert(m("c", 1), 10_000).unwrap();
        assert!(r.expire(0).is_empty());
    }

    #[test]
    fn output_is_sorted_and_versions_count_changes() {
        let mut r = Registry::new(9, 6_000);
        for id in ["c", "a", "b"] {
            r.upsert(m(id, 1), 0).unwrap();
        }
        let order: Vec<String> = r.members().into_iter().map(|x| x.node_id).collect();
        assert_eq!(order, ["a", "b", "c"]);
        assert_eq!(
            r.version(),
            RegistryVersion {
                instance: 9,
                changes: 3
            }
        );
        assert_eq!(r.hosts().len(), 1, "three ranks, one host");
        r.expire(10_000);
        assert_eq!(r.version().changes, 4, "one expiry sweep is one change");
    }

    #[test]
    fn capacity_is_enforced_with_an_actionable_error() {
        assert_eq!(Registry::new(0, 1).capacity(), MAX_MEMBERS);
        assert_eq!(MAX_MEMBERS, 4096);
        let mut r = Registry::with_capacity(0, 6_000, 2);
        r.upsert(m("a", 1), 0).unwrap();
        r.upsert(m("b", 1), 0).unwrap();
        let err = r.upsert(m("c", 1), 0).unwrap_err();
        assert_eq!(
            err,
            RegistryError::Full {
                cap: 2,
                node_id: "c".to_owned()
            }
        );
        let text = err.to_string();
        assert!(
            text.contains("2 members") && text.contains("discovery_addr"),
            "{text}"
        );
        // Known members keep refreshing and restarting while full.
        assert_eq!(r.upsert(m("a", 1), 1_000), Ok(Upsert::Refreshed));
        assert!(matches!(
            r.upsert(m("b", 2), 1_000),
            Ok(Upsert::Replaced { .. })
        ));
        // Room again once someone is pruned.
        r.upsert(m("a", 1), 7_000).unwrap();
        r.upsert(m("b", 2), 7_000).unwrap();
        r.deregister("b", 2, 7_000);
        assert_eq!(r.upsert(m("c", 1), 7_000), Ok(Upsert::Inserted));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn invalid_records_are_refused() {
        let mut r = Registry::new(0, 6_000);
        let mut bad = m("", 1);
        assert!(matches!(
            r.upsert(bad.clone(), 0),
            Err(RegistryError::Invalid { .. })
        ));
        bad = m("x", 1);
        bad.control_endpoints = vec![("h".to_owned(), 1); 65];
        let err = r.upsert(bad, 0).unwrap_err().to_string();
        assert!(err.contains("at most 64 control endpoints"), "{err}");
        bad = m("x y", 1);
        assert!(r.upsert(bad, 0).is_err());
        bad = m("x", 1);
        bad.meta_port = 0;
        assert!(r.upsert(bad, 0).is_err());
        assert!(r.is_empty());
    }
}
