//! A shard's picture of the cluster: who is a member, where each member's
//! shards listen, and which members own a key's directory entry.
//!
//! The discovery thread builds one [`ClusterView`] per membership change and
//! hands a copy (`Rc`-free, `Send`) to every shard through its inbox, so the
//! data path reads membership without any lock shared between shards.

use crate::directory::NodeRef;
use crate::keys::KeyHash;
use crate::ring::Ring;
use std::collections::HashMap;
use std::net::SocketAddr;

/// A member as the data path needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRoute {
    /// Stable node identifier.
    pub node_id: String,
    /// How directory entries name the node.
    pub node_ref: NodeRef,
    /// Control/data endpoint of each of the member's shards, by shard index.
    pub shard_endpoints: Vec<SocketAddr>,
}

impl MemberRoute {
    /// The endpoint of the member's shard that owns `key`.
    pub fn endpoint_for(&self, key: KeyHash) -> Option<SocketAddr> {
        if self.shard_endpoints.is_empty() {
            return None;
        }
        Some(self.shard_endpoints[key.shard(self.shard_endpoints.len())])
    }

    /// The endpoint of shard `shard`, if the member has it.
    pub fn endpoint_of_shard(&self, shard: u16) -> Option<SocketAddr> {
        self.shard_endpoints.get(usize::from(shard)).copied()
    }
}

/// Membership, ring and routes at one membership epoch.
#[derive(Clone, Debug)]
pub struct ClusterView {
    epoch: u64,
    self_ref: NodeRef,
    ring: Ring,
    /// Routes by ring member index.
    routes: Vec<MemberRoute>,
    by_ref: HashMap<NodeRef, usize>,
    replicas: usize,
}

impl ClusterView {
    /// Builds the view of `members` (which should include this node) at
    /// `epoch`, with `vnodes` ring points per member and `replicas` directory
    /// owners per key. Members without a single endpoint are left out: on
    /// the ring they would own keys nobody can ask them about, and with
    /// one replica those keys could not be found at all.
    pub fn new(
        epoch: u64,
        self_node_id: &str,
        mut members: Vec<MemberRoute>,
        vnodes: u32,
        replicas: usize,
    ) -> Self {
        members.retain(|m| !m.shard_endpoints.is_empty());
        let ring = Ring::new(members.iter().map(|m| m.node_id.as_str()), vnodes);
        let mut by_id: HashMap<String, MemberRoute> = members
            .into_iter()
            .map(|m| (m.node_id.clone(), m))
            .collect();
        // Ring member indexes follow the ring's own (sorted, deduplicated) order.
        let routes: Vec<MemberRoute> = ring
            .members()
            .iter()
            .map(|id| by_id.remove(id).expect("every ring member has a route"))
            .collect();
        let by_ref = routes
            .iter()
            .enumerate()
            .map(|(i, r)| (r.node_ref, i))
            .collect();
        // This node's own route names its current process (see NodeRef).
        let self_ref = routes
            .iter()
            .find(|r| r.node_id == self_node_id)
            .map_or(NodeRef(0), |r| r.node_ref);
        Self {
            epoch,
            self_ref,
            ring,
            routes,
            by_ref,
            replicas: replicas.max(1),
        }
    }

    /// The membership epoch this view was built at.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether the view has no member.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// This node's reference.
    pub fn self_ref(&self) -> NodeRef {
        self.self_ref
    }

    /// Directory replicas per key actually in force: `directory_replicas`,
    /// capped by the number of members.
    pub fn replicas(&self) -> usize {
        self.replicas.min(self.routes.len())
    }

    /// Every member's route.
    pub fn members(&self) -> &[MemberRoute] {
        &self.routes
    }

    /// The route of the member named by `node_ref`.
    pub fn route(&self, node_ref: NodeRef) -> Option<&MemberRoute> {
        self.by_ref.get(&node_ref).map(|&i| &self.routes[i])
    }

    /// Appends the ring indexes of `key`'s directory owners (primary first) to
    /// `out`, which is cleared first.
    pub fn owners_into(&self, key: KeyHash, out: &mut Vec<u32>) {
        self.ring.owners_into(key, self.replicas(), out);
    }

    /// The route of ring member `index`.
    pub fn route_at(&self, index: u32) -> &MemberRoute {
        &self.routes[index as usize]
    }

    /// Whether this node is one of `key`'s directory owners.
    pub fn owns(&self, key: KeyHash, scratch: &mut Vec<u32>) -> bool {
        self.owners_into(key, scratch);
        scratch
            .iter()
            .any(|&i| self.routes[i as usize].node_ref == self.self_ref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: usize, shards: usize) -> MemberRoute {
        let id = format!("node-{i}");
        MemberRoute {
            node_ref: NodeRef::of(&id, 1),
            node_id: id,
            shard_endpoints: (0..shards)
                .map(|s| format!("127.0.0.{}:{}", i + 1, 4000 + s).parse().unwrap())
                .collect(),
        }
    }

    #[test]
    fn a_member_without_endpoints_owns_no_keys() {
        let mut members: Vec<MemberRoute> = (0..3).map(|i| member(i, 2)).collect();
        members.push(member(3, 0));
        let view = ClusterView::new(1, "node-0", members, 160, 1);
        assert_eq!(view.len(), 3);
        assert!(view.members().iter().all(|m| m.node_id != "node-3"));
        let mut owners = Vec::new();
        for k in 0..2000u128 {
            let key = KeyHash(k.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835));
            view.owners_into(key, &mut owners);
            assert!(view.route_at(owners[0]).endpoint_for(key).is_some());
        }
    }

    #[test]
    fn owners_are_distinct_members_and_routes_match() {
        let members: Vec<MemberRoute> = (0..5).rev().map(|i| member(i, 1 + i % 3)).collect();
        let view = ClusterView::new(7, "node-2", members, 160, 2);
        assert_eq!(view.epoch(), 7);
        assert_eq!(view.len(), 5);
        assert_eq!(view.replicas(), 2);
        let mut owners = Vec::new();
        let mut owned = 0;
        for k in 0..2000u128 {
            let key = KeyHash(k.wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835));
            view.owners_into(key, &mut owners);
            assert_eq!(owners.len(), 2);
            assert_ne!(owners[0], owners[1]);
            for &o in &owners {
                let route = view.route_at(o);
                assert_eq!(view.route(route.node_ref), Some(route));
                let ep = route.endpoint_for(key).unwrap();
                assert!(route.shard_endpoints.contains(&ep));
            }
            owned += usize::from(view.owns(key, &mut owners));
        }
        // node-2 owns about 2/5 of the keys.
        assert!((600..=1000).contains(&owned), "{owned}");
    }

    #[test]
    fn replicas_are_capped_by_members() {
        let view = ClusterView::new(1, "node-0", vec![member(0, 2)], 16, 3);
        assert_eq!(view.replicas(), 1);
        let mut owners = Vec::new();
        assert!(view.owns(KeyHash(42), &mut owners));
        assert_eq!(view.route(NodeRef::of("missing", 1)), None);
    }
}
