//! The RDMA data path of real nodes, on the software fabric.
//!
//! Several nodes run in one process and share one `Fabric` (an in-memory
//! NIC per node); their control traffic (membership by hand, directory, the
//! QP exchange `RdmaConnect`, the post-READ `DataValidate`) goes over real
//! TCP on 127.0.0.1, and remote pages move by one-sided READs executed by the
//! fabric. No hardware is involved: see docs/rdma.md for what that proves.

use peercache_engine::rdma::fabric::{Fabric, FabricOptions, FaultPlan};
use peercache_engine::rdma::{RdmaSource, Transport};
use peercache_engine::{Config, Node};
use peercache_tests::node_process::free_port_pair;
use peercache_tests::pages;

const PAGE: usize = 64 << 10;

fn config(name: &str, extra: &str) -> Config {
    Config::from_json(&format!(
        r#"{{"discovery_addr":"127.0.0.1:1","global_segment_size":"16mb","shards":2,
            "node_id":"{name}","local_hostname":"127.0.0.1","control_bind_host":"127.0.0.1",
            "disk_enabled":false,"metrics_enabled":false,"pool_quarantine_ms":0{extra}}}"#
    ))
    .unwrap()
}

/// A node whose NIC is fabric device `{name}-nic`.
fn rdma_node(fabric: &Fabric, name: &str, extra: &str) -> Node {
    fabric.add_device(&format!("{name}-nic"), true);
    start_on_nic(fabric, name, extra)
}

/// Two RDMA nodes `{prefix}-a` and `{prefix}-b` on `fabric`, members of one
/// cluster.
fn joined_pair(fabric: &Fabric, prefix: &str) -> (Node, Node) {
    let a = rdma_node(fabric, &format!("{prefix}-a"), "");
    let b = rdma_node(fabric, &format!("{prefix}-b"), "");
    join(&[&a, &b], 1);
    (a, b)
}

/// Starts node `name` on its existing fabric device `{name}-nic`.
fn start_on_nic(fabric: &Fabric, name: &str, extra: &str) -> Node {
    let config = config(
        name,
        &format!(r#","protocol":"rdma","require_rdma":true,"device_name":"{name}-nic"{extra}"#),
    );
    Node::start_with(config, &RdmaSource::Fabric(fabric.clone())).unwrap()
}

fn tcp_node(name: &str) -> Node {
    Node::start(config(name, r#","protocol":"tcp""#)).unwrap()
}

fn join(nodes: &[&Node], epoch: u64) {
    let routes: Vec<_> = nodes.iter().map(|n| n.route()).collect();
    for n in nodes {
        n.set_membership(epoch, routes.clone());
    }
}

/// Page `key`'s content, as every node agrees on it.
fn page(key: &str) -> Vec<u8> {
    pages::page(key, PAGE)
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn set_all(node: &Node, keys: &[String]) {
    let pages: Vec<Vec<u8>> = keys.iter().map(|k| page(k)).collect();
    let refs: Vec<&[u8]> = pages.iter().map(|p| p.as_slice()).collect();
    assert!(node
        .batch_set_pages(keys, &refs)
        .unwrap()
        .iter()
        .all(|&ok| ok));
}

/// Gets `keys` into buffers pre-filled with 0xEE; checks every page that
/// reports a hit is byte-exact, and returns the flags.
fn get_checked(node: &Node, keys: &[String]) -> Vec<bool> {
    let mut out: Vec<Vec<u8>> = keys.iter().map(|_| vec![0xEE; PAGE]).collect();
    let mut dsts: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
    let ok = node.batch_get_into(keys, &mut dsts).unwrap();
    for ((k, got), &hit) in keys.iter().zip(&out).zip(&ok) {
        if hit {
            assert!(got == &page(k), "page {k} reported as a hit but differs");
        }
    }
    ok
}

#[test]
fn remote_pages_are_read_by_one_sided_reads_byte_exact() {
    let fabric = Fabric::new(FabricOptions::default());
    let a = rdma_node(&fabric, "rdma-a", "");
    let b = rdma_node(&fabric, "rdma-b", "");
    assert_eq!(a.transport(), &Transport::Rdma(vec!["rdma-a-nic".into()]));
    join(&[&a, &b], 1);
    assert_eq!(b.stats().rdma_rails, 2, "one rail per shard");

    let ks = keys("prefix", 48);
    set_all(&a, &ks);
    let before = fabric.counters();
    assert_eq!(get_checked(&b, &ks), vec![true; 48]);
    let after = fabric.counters();
    assert_eq!(
        after.bytes - before.bytes,
        (48 * PAGE) as u64,
        "every page crossed the fabric, none came over TCP"
    );
    // b's 2 shards read from a's 2 shards: at most one post per pair.
    assert!((1..=4).contains(&(after.posts - before.posts)));
    let s = b.stats();
    assert_eq!(s.read_remote_hits, 48);
    assert_eq!(s.bytes_read, (48 * PAGE) as u64);
    assert_eq!(
        (
            s.rdma_read_wc_errors,
            s.rdma_read_timeouts,
            s.rdma_lease_failures
        ),
        (0, 0, 0)
    );

    // Channels are reused: a second batch opens no QP.
    assert_eq!(get_checked(&b, &ks), vec![true; 48]);
    assert_eq!(fabric.counters().qps_created, after.qps_created);
}

#[test]
fn a_peer_without_rdma_is_read_over_tcp() {
    let fabric = Fabric::new(FabricOptions::default());
    let b = rdma_node(&fabric, "mixed-b", "");
    let c = tcp_node("mixed-c");
    join(&[&b, &c], 1);
    let ks = keys("tcp-side", 16);
    set_all(&c, &ks);
    assert_eq!(get_checked(&b, &ks), vec![true; 16]);
    assert_eq!(fabric.counters().bytes, 0, "nothing went over the fabric");
    assert_eq!(b.stats().read_remote_hits, 16);
    // And the TCP node reads the RDMA node's pages over TCP.
    let back = keys("rdma-side", 8);
    set_all(&b, &back);
    assert_eq!(get_checked(&c, &back), vec![true; 8]);
}

#[test]
fn read_errors_are_counted_misses_and_broken_channels_are_replaced() {
    let fabric = Fabric::new(FabricOptions::default());
    let (a, b) = joined_pair(&fabric, "fault");
    let ks = keys("faulty", 24);
    set_all(&a, &ks);
    assert_eq!(get_checked(&b, &ks), vec![true; 24]);
    assert_eq!(b.stats().read_failures, 0);

    fabric.set_faults(FaultPlan {
        remote_access_per_mille: 1000,
        ..FaultPlan::default()
    });
    assert_eq!(get_checked(&b, &ks), vec![false; 24]);
    let s = b.stats();
    assert!(s.rdma_read_wc_errors > 0);
    assert_eq!(s.rdma_last_wc_status, 10);
    assert!(s.rdma_channel_discards > 0);
    assert_eq!(s.read_remote_hits, 24, "only the first pass hit");
    // Found, but the transfer failed (and so did its retry): the symptom
    // the troubleshooting table reads as `read_failures` with WC errors.
    assert_eq!(s.read_failures, 24);
    assert_eq!(s.read_misses, 24);

    // The fault clears: fresh channels replace the discarded ones.
    fabric.set_faults(FaultPlan::default());
    let qps = fabric.counters().qps_created;
    assert_eq!(get_checked(&b, &ks), vec![true; 24]);
    assert!(fabric.counters().qps_created > qps);
}

#[test]
fn a_slot_reused_after_its_location_was_resolved_is_a_miss_not_wrong_bytes() {
    let fabric = Fabric::new(FabricOptions::default());
    let a = rdma_node(&fabric, "stale-a", "");
    // b keeps the locations its exists resolved for a minute, so its get
    // reads the slots they named, whatever they hold by then.
    let b = rdma_node(&fabric, "stale-b", r#","directory_read_cache_ttl":60"#);
    join(&[&a, &b], 1);
    let ks = keys("old", 16);
    set_all(&a, &ks);
    assert_eq!(b.batch_exists(&ks).unwrap(), 16);
    // a's 16 MiB pool holds ~240 pages: writing 600 more evicts the old
    // ones and reuses their slots for other pages.
    for chunk in keys("new", 600).chunks(100) {
        set_all(&a, chunk);
    }
    let bytes = fabric.counters().bytes;
    let ok = get_checked(&b, &ks);
    assert!(
        fabric.counters().bytes > bytes,
        "the READs of the stale locations ran"
    );
    assert_eq!(
        ok,
        vec![false; 16],
        "the generation check turned every stale read into a miss"
    );
    // A page gone from its slot is a plain miss, not a failed read.
    assert_eq!(b.stats().read_failures, 0);
}

#[test]
fn a_registered_host_buffer_needs_no_lazy_registration() {
    let fabric = Fabric::new(FabricOptions::default());
    let (a, b) = joined_pair(&fabric, "host");
    let ks = keys("hostbuf", 16);
    set_all(&a, &ks);

    // The host KV pool stand-in: one buffer, pages read into slices of it.
    let mut host = vec![0u8; 16 * PAGE];
    // SAFETY: `b` is dropped below, while `host` is still alive.
    let rails = unsafe { b.register_host_buffer(host.as_mut_ptr() as usize, host.len()) };
    assert_eq!(
        rails,
        Ok(2),
        "registered on the rail of each of b's 2 shards"
    );
    let mut dsts: Vec<&mut [u8]> = host.chunks_mut(PAGE).collect();
    assert_eq!(b.batch_get_into(&ks, &mut dsts).unwrap(), vec![true; 16]);
    for (k, got) in ks.iter().zip(host.chunks(PAGE)) {
        assert!(got == page(k).as_slice(), "page {k} differs");
    }
    let s = b.stats();
    assert_eq!((s.rdma_local_reg_misses, s.rdma_lazy_local_mrs), (0, 0));
    assert_eq!(
        s.host_buffer_bytes,
        (16 * PAGE) as u64,
        "once, not per shard"
    );

    // A destination outside it is registered lazily, and counted.
    assert_eq!(get_checked(&b, &ks), vec![true; 16]);
    assert!(b.stats().rdma_local_reg_misses > 0);
    drop(b);

    // A node on TCP has no rail to register with.
    let c = tcp_node("host-c");
    let mut buf = vec![0u8; PAGE];
    // SAFETY: nothing is registered.
    assert_eq!(
        unsafe { c.register_host_buffer(buf.as_mut_ptr() as usize, buf.len()) },
        Ok(0)
    );
    // It was handed over all the same, which is what the gauge shows.
    assert_eq!(c.stats().host_buffer_bytes, PAGE as u64);
}

#[test]
fn a_batch_is_striped_over_every_rail() {
    let fabric = Fabric::new(FabricOptions::default());
    let node = |name: &str| {
        let nics: Vec<String> = (0..4).map(|i| format!("{name}-nic{i}")).collect();
        for nic in &nics {
            fabric.add_device(nic, true);
        }
        // One shard owning all four NICs: four rails.
        let extra = format!(
            r#","protocol":"rdma","require_rdma":true,"device_names":"{}","shards":1"#,
            nics.join(",")
        );
        let config = Config::from_json(&format!(
            r#"{{"discovery_addr":"127.0.0.1:1","global_segment_size":"16mb",
                "node_id":"{name}","local_hostname":"127.0.0.1","control_bind_host":"127.0.0.1",
                "disk_enabled":false,"metrics_enabled":false,"pool_quarantine_ms":0{extra}}}"#
        ))
        .unwrap();
        Node::start_with(config, &RdmaSource::Fabric(fabric.clone())).unwrap()
    };
    let (a, b) = (node("rails-a"), node("rails-b"));
    join(&[&a, &b], 1);
    assert_eq!(b.stats().rdma_rails, 4);
    let ks = keys("striped", 32);
    set_all(&a, &ks);
    let before = fabric.counters();
    assert_eq!(get_checked(&b, &ks), vec![true; 32]);
    let after = fabric.counters();
    assert_eq!(after.posts - before.posts, 4, "one post per rail");
    assert_eq!(after.bytes - before.bytes, (32 * PAGE) as u64);
}

#[test]
fn a_failed_qp_exchange_falls_back_to_tcp() {
    // Two RDMA nodes on different fabrics: no RDMA path between them, so the
    // owner cannot connect its responder QPs and refuses the exchange.
    let (fabric_a, fabric_b) = (
        Fabric::new(FabricOptions::default()),
        Fabric::new(FabricOptions::default()),
    );
    let a = rdma_node(&fabric_a, "apart-a", "");
    let b = rdma_node(&fabric_b, "apart-b", "");
    join(&[&a, &b], 1);
    let ks = keys("apart", 16);
    set_all(&a, &ks);
    assert_eq!(get_checked(&b, &ks), vec![true; 16], "read over TCP");
    assert_eq!(fabric_a.counters().bytes + fabric_b.counters().bytes, 0);
    assert!(b.stats().rdma_lease_failures > 0, "the abandoned QPs count");
    // And again (within the retry delay: no new exchange, no new QP).
    let qps = fabric_b.counters().qps_created;
    assert_eq!(get_checked(&b, &ks), vec![true; 16]);
    assert_eq!(fabric_b.counters().qps_created, qps);
}

#[test]
fn a_peer_restarted_behind_the_same_endpoint_is_reconnected() {
    let fabric = Fabric::new(FabricOptions::default());
    let port = free_port_pair();
    let fixed = format!(r#","control_port":{port}"#);
    let a = rdma_node(&fabric, "again-a", &fixed);
    let b = rdma_node(&fabric, "again-b", "");
    join(&[&a, &b], 1);
    let ks = keys("again", 16);
    set_all(&a, &ks);
    assert_eq!(get_checked(&b, &ks), vec![true; 16]);

    // `a` restarts on the same ports: its QPs and MRs are gone (it
    // deregistered them when it stopped). Discovery shows the new process
    // (a new incarnation, so another NodeRef): `b` drops the old process's
    // entries and channels with it, and its next read opens new channels,
    // whose exchange brings the new pool's address and rkey.
    let before = a.route();
    drop(a);
    let a = start_on_nic(&fabric, "again-a", &fixed);
    assert_eq!(a.route().shard_endpoints, before.shard_endpoints);
    assert_ne!(a.route().node_ref, before.node_ref, "another process");
    join(&[&a, &b], 2);
    set_all(&a, &ks);
    let qps = fabric.counters().qps_created;
    assert_eq!(get_checked(&b, &ks), vec![true; 16]);
    assert!(
        fabric.counters().qps_created > qps,
        "new channels to the new process"
    );
    assert_eq!(
        b.stats().rdma_read_wc_errors,
        0,
        "no READ went to a stale QP"
    );
}

#[test]
fn lost_completions_time_out_as_counted_misses_not_hangs() {
    let fabric = Fabric::new(FabricOptions::default());
    let (a, b) = joined_pair(&fabric, "lost");
    let ks = keys("lost", 8);
    set_all(&a, &ks);
    fabric.set_faults(FaultPlan {
        lost_completion_per_mille: 1000,
        ..FaultPlan::default()
    });
    // Each READ chain times out (2 s), for the read and for its retry.
    assert_eq!(get_checked(&b, &ks), vec![false; 8]);
    let s = b.stats();
    assert!(s.rdma_read_timeouts > 0);
    assert!(
        s.rdma_channel_discards > 0,
        "timed-out channels are destroyed"
    );
    fabric.set_faults(FaultPlan::default());
    assert_eq!(get_checked(&b, &ks), vec![true; 8]);
}

#[test]
fn a_reader_that_left_leaves_no_responder_qps_behind() {
    let fabric = Fabric::new(FabricOptions::default());
    let (a, b) = joined_pair(&fabric, "gone");
    let ks = keys("gone", 16);
    set_all(&a, &ks);
    let before_reads = fabric.live_qps();
    assert_eq!(get_checked(&b, &ks), vec![true; 16]);
    assert!(fabric.live_qps() > before_reads, "b read over new channels");
    // b stops (its own QPs go with it) and leaves the membership: `a`
    // drops the responder QPs it kept for b's channels. A reader restarts
    // as another process, so nothing else would ever free them.
    drop(b);
    join(&[&a], 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fabric.live_qps() != before_reads {
        assert!(
            std::time::Instant::now() < deadline,
            "{} QPs live, {before_reads} before b read",
            fabric.live_qps()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
