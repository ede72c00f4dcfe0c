//! Which hosts are discovery masters: a pure function of what a node knows.

use std::collections::BTreeSet;

use crate::config::HostPort;

/// Computes the discovery masters, in priority order.
///
/// The rule (the same on every node, so nodes that see the same member list
/// and the same reachability agree without talking to each other):
///
/// 1. The head — the first `discovery_addr` entry — comes first, unless it is
///    in `dead_hosts`. It is pinned: it need not host any member (a dedicated
///    `peercache-meta` head never does), and when it answers again after an
///    outage it takes the first place back.
/// 2. Then the hosts in `known_hosts` (the `host:meta_port` of live members),
///    skipping the head and every host in `dead_hosts`, in ascending order
///    of host then port: the host compared as a plain byte string (so
///    `"10.0.0.10"` sorts before `"10.0.0.2"`; what matters is that every node
///    sorts alike), then the port numerically.
/// 3. Stop at `max_masters` entries. A cluster with fewer live hosts than
///    `max_masters` has all of them as masters.
///
/// Other `discovery_addr` seeds are not candidates by themselves: they are
/// bootstrap contacts. A seed becomes a master only as the host of live
/// members, like any other host. Several ranks behind one meta port are one
/// host here, so four ranks on one machine give one master.
pub fn select_masters(
    head: &HostPort,
    known_hosts: &BTreeSet<HostPort>,
    dead_hosts: &BTreeSet<HostPort>,
    max_masters: usize,
) -> Vec<HostPort> {
    let mut masters = Vec::with_capacity(max_masters);
    if max_masters == 0 {
        return masters;
    }
    if !dead_hosts.contains(head) {
        masters.push(head.clone());
    }
    // BTreeSet iterates in HostPort's derived order: host, then port.
    for host in known_hosts {
        if masters.len() == max_masters {
            break;
        }
        if host != head && !dead_hosts.contains(host) {
            masters.push(host.clone());
        }
    }
    debug_assert!(masters.len() <= max_masters);
    masters
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(host: &str, port: u16) -> HostPort {
        HostPort {
            host: host.to_owned(),
            port,
        }
    }

    fn set(items: &[HostPort]) -> BTreeSet<HostPort> {
        items.iter().cloned().collect()
    }

    #[test]
    fn head_first_then_hostname_order() {
        let head = hp("node-c", 31998);
        let known = set(&[
            hp("node-e", 31998),
            hp("node-a", 31998),
            hp("node-c", 31998),
            hp("node-b", 31998),
            hp("node-d", 31998),
        ]);
        let masters = select_masters(&head, &known, &BTreeSet::new(), 3);
        assert_eq!(
            masters,
            vec![head.clone(), hp("node-a", 31998), hp("node-b", 31998)]
        );
    }

    #[test]
    fn small_cluster_has_all_hosts_as_masters() {
        let head = hp("h0", 1);
        let known = set(&[hp("h0", 1), hp("h1", 1)]);
        assert_eq!(
            select_masters(&head, &known, &BTreeSet::new(), 3),
            vec![hp("h0", 1), hp("h1", 1)]
        );
    }

    #[test]
    fn head_is_pinned_even_without_members() {
        // A dedicated discovery head hosts no member but is still first.
        let head = hp("meta", 31998);
        let known = set(&[hp("a", 1), hp("b", 1), hp("c", 1)]);
        assert_eq!(
            select_masters(&head, &known, &BTreeSet::new(), 2),
            vec![head.clone(), hp("a", 1)]
        );
        // With no knowledge at all, the head alone.
        assert_eq!(
            select_masters(&head, &BTreeSet::new(), &BTreeSet::new(), 3),
            vec![head]
        );
    }

    #[test]
    fn dead_hosts_are_skipped_and_replaced() {
        let head = hp("c", 1);
        let known = set(&[hp("a", 1), hp("b", 1), hp("c", 1), hp("d", 1)]);
        // A dead non-head master: the next host takes its place.
        assert_eq!(
            select_masters(&head, &known, &set(&[hp("a", 1)]), 3),
            vec![hp("c", 1), hp("b", 1), hp("d", 1)]
        );
        // A dead head: the next hosts fill every place.
        assert_eq!(
            select_masters(&head, &known, &set(&[hp("c", 1)]), 3),
            vec![hp("a", 1), hp("b", 1), hp("d", 1)]
        );
        // Everything dead: no master, the node waits.
        assert!(select_masters(&head, &known, &known, 3).is_empty());
    }

    #[test]
    fn order_is_host_then_port_as_strings() {
        let head = hp("10.0.0.1", 9);
        let known = set(&[
            hp("10.0.0.2", 2),
            hp("10.0.0.10", 5),
            hp("10.0.0.2", 1),
            hp("10.0.0.1", 9),
        ]);
        assert_eq!(
            select_masters(&head, &known, &BTreeSet::new(), 4),
            vec![
                hp("10.0.0.1", 9),
                hp("10.0.0.10", 5),
                hp("10.0.0.2", 1),
                hp("10.0.0.2", 2)
            ]
        );
    }

    #[test]
    fn one_master_and_zero() {
        let head = hp("b", 1);
        let known = set(&[hp("a", 1), hp("b", 1)]);
        assert_eq!(
            select_masters(&head, &known, &BTreeSet::new(), 1),
            vec![hp("b", 1)]
        );
        assert_eq!(
            select_masters(&head, &known, &set(&[hp("b", 1)]), 1),
            vec![hp("a", 1)]
        );
        assert!(select_masters(&head, &known, &BTreeSet::new(), 0).is_empty());
    }
}
