//! Member lists: merging what several masters say, and what changed.

use std::collections::BTreeMap;

use super::member::Member;

/// Merges member lists from several masters into one list sorted by node id.
///
/// For each node id the record with the highest incarnation wins (a restart
/// seen by one master is newer than the old record still held by another);
/// on equal incarnations the first list given wins, so the result depends
/// only on the lists and their order. Duplicates inside one list are
/// resolved the same way.
pub fn merge_lists<'a, I>(lists: I) -> Vec<Member>
where
    I: IntoIterator<Item = &'a [Member]>,
{
    let mut merged: BTreeMap<&str, &Member> = BTreeMap::new();
    for list in lists {
        for member in list {
            merged
                .entry(member.node_id.as_str())
                .and_modify(|held| {
                    if member.incarnation > held.incarnation {
                        *held = member;
                    }
                })
                .or_insert(member);
        }
    }
    merged.into_values().cloned().collect()
}

/// One difference between two membership views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipChange {
    /// A node that was not in the old view.
    Joined(Member),
    /// A node that is no longer in the view (pruned or deregistered).
    Left(Member),
    /// The same node id with another incarnation: the process restarted and
    /// its pool is new.
    Restarted {
        /// The record that was replaced.
        old: Member,
        /// The record that replaced it.
        new: Member,
    },
    /// The same incarnation with different fields.
    Updated(Member),
}

/// The changes from `old` to `new`, in node id order. Either input may be
/// unsorted; each node id is expected at most once per view.
pub fn diff(old: &[Member], new: &[Member]) -> Vec<MembershipChange> {
    let old_by_id: BTreeMap<&str, &Member> = old.iter().map(|m| (m.node_id.as_str(), m)).collect();
    let new_by_id: BTreeMap<&str, &Member> = new.iter().map(|m| (m.node_id.as_str(), m)).collect();
    let mut ids: Vec<&str> = old_by_id.keys().chain(new_by_id.keys()).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    let mut changes = Vec::new();
    for id in ids {
        match (old_by_id.get(id), new_by_id.get(id)) {
            (None, Some(new)) => changes.push(MembershipChange::Joined((*new).clone())),
            (Some(old), None) => changes.push(MembershipChange::Left((*old).clone())),
            (Some(old), Some(new)) if old.incarnation != new.incarnation => {
                changes.push(MembershipChange::Restarted {
                    old: (*old).clone(),
                    new: (*new).clone(),
                });
            }
            (Some(old), Some(new)) if old != new => {
                changes.push(MembershipChange::Updated((*new).clone()));
            }
            _ => {}
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, incarnation: u64) -> Member {
        Member {
            node_id: id.to_owned(),
            host: "h".to_owned(),
            meta_port: 1,
            control_endpoints: vec![("h".to_owned(), 2)],
            shard_count: 1,
            incarnation,
            pool_bytes: 1,
        }
    }

    #[test]
    fn merge_takes_the_newest_incarnation_and_sorts() {
        let a = vec![m("b", 1), m("a", 2)];
        let b = vec![m("a", 1), m("c", 1), m("b", 3)];
        let merged = merge_lists([a.as_slice(), b.as_slice()]);
        assert_eq!(merged, vec![m("a", 2), m("b", 3), m("c", 1)]);
        assert!(merge_lists(std::iter::empty::<&[Member]>()).is_empty());
    }

    #[test]
    fn merge_prefers_the_first_list_on_equal_incarnations() {
        let mut other = m("a", 1);
        other.pool_bytes = 99;
        let first = vec![m("a", 1)];
        let second = vec![other];
        assert_eq!(
            merge_lists([first.as_slice(), second.as_slice()]),
            vec![m("a", 1)]
        );
    }

    #[test]
    fn diff_reports_each_kind() {
        let mut updated = m("d", 1);
        updated.pool_bytes = 7;
        let old = vec![m("a", 1), m("b", 1), m("d", 1)];
        let new = vec![m("b", 2), m("c", 1), updated.clone()];
        assert_eq!(
            diff(&old, &new),
            vec![
                MembershipChange::Left(m("a", 1)),
                MembershipChange::Restarted {
                    old: m("b", 1),
                    new: m("b", 2)
                },
                MembershipChange::Joined(m("c", 1)),
                MembershipChange::Updated(updated),
            ]
        );
        assert!(diff(&new, &new).is_empty());
    }
}
