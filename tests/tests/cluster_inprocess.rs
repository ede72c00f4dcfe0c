//! Several nodes in one process, talking over real TCP on 127.0.0.1, with
//! membership installed by hand (no discovery): the data plane on its own.

use peercache_engine::{Config, Node};
use peercache_tests::node_process::free_port_pair;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn node(name: &str, extra: &str) -> Node {
    let config = Config::from_json(&format!(
        r#"{{"discovery_addr":"127.0.0.1:1","global_segment_size":"32mb","shards":2,
            "node_id":"{name}","local_hostname":"127.0.0.1","control_bind_host":"127.0.0.1",
            "disk_enabled":false,"metrics_enabled":false,"pool_quarantine_ms":0{extra}}}"#
    ))
    .unwrap();
    Node::start(config).unwrap()
}

fn join(nodes: &[&Node], epoch: u64) {
    let routes: Vec<_> = nodes.iter().map(|n| n.route()).collect();
    for n in nodes {
        n.set_membership(epoch, routes.clone());
    }
}

fn page(key: &str, len: usize) -> Vec<u8> {
    let seed = key
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(u64::from(b)));
    (0..len)
        .map(|i| (seed.wrapping_add(i as u64 * 2654435761) >> 7) as u8)
        .collect()
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn set_all(node: &Node, keys: &[String], len: usize) -> Vec<bool> {
    let pages: Vec<Vec<u8>> = keys.iter().map(|k| page(k, len)).collect();
    let refs: Vec<&[u8]> = pages.iter().map(|p| p.as_slice()).collect();
    node.batch_set_pages(keys, &refs).unwrap()
}

fn get_all(node: &Node, keys: &[String], len: usize) -> (Vec<bool>, Vec<Vec<u8>>) {
    let mut out: Vec<Vec<u8>> = keys.iter().map(|_| vec![0u8; len]).collect();
    let mut dsts: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
    let ok = node.batch_get_into(keys, &mut dsts).unwrap();
    (ok, out)
}

/// Waits (bounded) until `cond` holds.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn pages_set_on_one_node_are_read_byte_exact_on_another() {
    let a = node("node-a", "");
    let b = node("node-b", "");
    join(&[&a, &b], 1);
    let ks = keys("shared", 64);
    assert_eq!(set_all(&a, &ks, 64 << 10), vec![true; 64]);
    assert_eq!(b.batch_exists(&ks).unwrap(), 64);
    let (ok, out) = get_all(&b, &ks, 64 << 10);
    assert_eq!(ok, vec![true; 64]);
    for (k, got) in ks.iter().zip(&out) {
        assert_eq!(got, &page(k, 64 << 10), "page {k} differs");
    }
    let sb = b.stats();
    assert_eq!(sb.read_remote_hits, 64);
    assert_eq!(sb.read_hits + sb.read_misses, sb.read_requests);
    assert_eq!(sb.bytes_read, 64 * (64 << 10));
    assert!(sb.directory_lookups_saved > 0, "exists primed the get");
    // A key nobody wrote is a miss on every node, and the prefix stops there.
    let mut mixed = ks[..3].to_vec();
    mixed.push("nobody-wrote-this".into());
    mixed.extend_from_slice(&ks[3..6]);
    assert_eq!(b.batch_exists(&mixed).unwrap(), 3);
    let (ok, _) = get_all(&b, &mixed, 64 << 10);
    assert_eq!(ok, vec![true, true, true, false, true, true, true]);
}

#[test]
fn a_directory_replica_held_locally_answers_without_asking_a_peer() {
    // Two nodes and two replicas: each node owns an entry for every key, so
    // neither exists nor get needs a peer's directory, whatever the key's
    // first owner on the ring.
    let a = node("replica-a", r#","directory_replicas":2"#);
    let b = node("replica-b", r#","directory_replicas":2"#);
    join(&[&a, &b], 1);
    let probed = keys("probed", 64);
    let fetched = keys("fetched", 64);
    assert!(set_all(&a, &probed, 4096).iter().all(|&x| x));
    assert!(set_all(&a, &fetched, 4096).iter().all(|&x| x));
    assert_eq!(b.batch_exists(&probed).unwrap(), 64);
    let (ok, out) = get_all(&b, &fetched, 4096); // no exists first
    assert_eq!(ok, vec![true; 64]);
    assert!(fetched
        .iter()
        .zip(&out)
        .all(|(k, got)| *got == page(k, 4096)));
    assert_eq!(a.stats().directory_lookups_served, 0);
    assert_eq!(b.stats().read_remote_hits, 64);

    // One replica: the keys whose only owner is the other node are asked
    // for over the network.
    let c = node("replica-c", r#","directory_replicas":1"#);
    let d = node("replica-d", r#","directory_replicas":1"#);
    join(&[&c, &d], 1);
    assert!(set_all(&c, &probed, 4096).iter().all(|&x| x));
    assert_eq!(d.batch_exists(&probed).unwrap(), 64);
    let served = c.stats().directory_lookups_served;
    assert!(served > 0 && served < 64, "c served {served} lookups");
}

#[test]
fn concurrent_lookups_share_requests_and_each_gets_its_own_answer() {
    // One replica on two nodes: about half the keys are owned by the
    // producer, so each exists asks its directory. Eight threads ask at once,
    // each its own keys plus one nobody wrote: merged requests must hand
    // every lookup its own entries, ask for every key exactly as often as
    // the same calls one after the other do, and never send more requests.
    let a = node("merge-a", r#","directory_replicas":1"#);
    let b = node("merge-b", r#","directory_replicas":1"#);
    join(&[&a, &b], 1);
    let threads = 8;
    let per_thread: Vec<Vec<String>> = (0..threads)
        .map(|t| {
            let mut ks = keys(&format!("merge-{t}"), 24);
            assert!(set_all(&a, &ks, 4096).iter().all(|&x| x));
            ks.insert(12, format!("merge-{t}-nobody-wrote-this"));
            ks
        })
        .collect();
    let rounds = 20;
    let calls = |b: &Node| {
        std::thread::scope(|scope| {
            for ks in &per_thread {
                scope.spawn(move || {
                    for _ in 0..rounds {
                        // The prefix stops at the key nobody wrote.
                        assert_eq!(b.batch_exists(ks).unwrap(), 12);
                    }
                });
            }
        })
    };
    let serial_start = (a.stats(), b.stats());
    for ks in &per_thread {
        for _ in 0..rounds {
            assert_eq!(b.batch_exists(ks).unwrap(), 12);
        }
    }
    let serial = (a.stats(), b.stats());
    calls(&b);
    let concurrent = (a.stats(), b.stats());
    let served_serial = serial.0.directory_lookups_served - serial_start.0.directory_lookups_served;
    let served_concurrent =
        concurrent.0.directory_lookups_served - serial.0.directory_lookups_served;
    assert!(served_serial > 0, "some keys are owned by the producer");
    assert_eq!(
        served_concurrent, served_serial,
        "every key asked once per call"
    );
    let sent_serial = serial.1.directory_requests_sent - serial_start.1.directory_requests_sent;
    let sent_concurrent = concurrent.1.directory_requests_sent - serial.1.directory_requests_sent;
    assert!(
        sent_concurrent <= sent_serial,
        "{sent_concurrent} requests at once against {sent_serial} one after the other"
    );
}

#[test]
fn a_node_joining_later_finds_every_key() {
    let a = node("late-a", "");
    let b = node("late-b", "");
    join(&[&a, &b], 1);
    let ks = keys("early", 200);
    assert!(set_all(&a, &ks, 8192).iter().all(|&x| x));
    let c = node("late-c", "");
    let before = a.stats().directory_republishes;
    join(&[&a, &b, &c], 2);
    eventually("node-a to re-publish its pages", || {
        a.stats().directory_republishes >= before + 200
    });
    assert_eq!(c.batch_exists(&ks).unwrap(), 200);
    let (ok, out) = get_all(&c, &ks, 8192);
    assert!(ok.iter().all(|&x| x));
    assert!(ks.iter().zip(&out).all(|(k, got)| *got == page(k, 8192)));
}

#[test]
fn evicted_pages_are_misses_never_other_bytes() {
    // 4 MiB pool, 2 shards: 64 KiB pages, 32 slots per node.
    let a = node("evict-a", r#","global_segment_size":"4mb""#);
    let b = node("evict-b", "");
    join(&[&a, &b], 1);
    let first = keys("first", 24);
    assert!(set_all(&a, &first, 64 << 10).iter().all(|&x| x));
    // b resolves locations (exists primes its handoff cache) ...
    assert_eq!(b.batch_exists(&first).unwrap(), 24);
    // ... then a overwrites its whole pool with other pages.
    for round in 0..4 {
        set_all(&a, &keys(&format!("flood{round}"), 24), 64 << 10);
    }
    assert!(a.stats().evictions > 0);
    let (ok, out) = get_all(&b, &first, 64 << 10);
    for ((k, hit), got) in first.iter().zip(&ok).zip(&out) {
        if *hit {
            assert_eq!(
                got,
                &page(k, 64 << 10),
                "a hit must carry the page's own bytes"
            );
        }
    }
    assert!(
        ok.iter().any(|&x| !x),
        "evicted pages must be reported as misses"
    );
    // Gone from their slots: misses, not failed reads.
    assert_eq!(b.stats().read_failures, 0);
}

#[test]
fn a_remote_page_of_another_length_is_a_counted_failure_and_left_unread() {
    let a = node("length-a", "");
    let b = node("length-b", "");
    join(&[&a, &b], 1);
    let ks = keys("eight-kib", 8);
    assert!(set_all(&a, &ks, 8192).iter().all(|&x| x));
    assert_eq!(b.batch_exists(&ks).unwrap(), 8);
    let mut out: Vec<Vec<u8>> = ks.iter().map(|_| vec![0xAB; 4096]).collect();
    let mut dsts: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
    assert_eq!(b.batch_get_into(&ks, &mut dsts).unwrap(), vec![false; 8]);
    assert!(out.iter().flatten().all(|&x| x == 0xAB), "nothing written");
    let s = b.stats();
    assert_eq!((s.read_failures, s.read_misses, s.read_hits), (8, 8, 0));
}

/// Nodes a and b both store the same pages, b last, so each page's
/// directory entry (one per key, the newest put wins) names b; then b's
/// pool fills with other pages and evicts them, and b's delete removes the
/// entries although a still holds every page. c is the node that looks.
fn pages_held_by_a_after_the_later_writer_evicted_them(
    prefix: &str,
    extra: &str,
) -> (Node, Node, Node, Vec<String>) {
    // directory_replicas 1: one entry per key in the cluster, as with
    // any number of replicas that all receive the same delete.
    let extra = format!(r#","directory_replicas":1{extra}"#);
    let a = node(&format!("{prefix}-a"), &extra);
    let b = node(
        &format!("{prefix}-b"),
        &format!(r#"{extra},"global_segment_size":"4mb""#),
    );
    let c = node(&format!("{prefix}-c"), &extra);
    join(&[&a, &b, &c], 1);
    // The same keys in every cluster of these tests, so each sees the same
    // placement over shards and owners.
    let shared = keys("held-twice", 8);
    assert!(set_all(&a, &shared, 64 << 10).iter().all(|&x| x));
    assert!(set_all(&b, &shared, 64 << 10).iter().all(|&x| x));
    // A 4 MiB pool holds 64 pages of 64 KiB: 96 more evict the 8, the
    // least recently used.
    for round in 0..4 {
        set_all(&b, &keys(&format!("{prefix}-flood{round}"), 24), 64 << 10);
    }
    let held = b.stats().pool_keys;
    assert!(held <= 64 && b.stats().evictions >= 104 - held);
    (a, b, c, shared)
}

/// How many of `keys` `node` finds, each asked on its own.
fn found_one_by_one(node: &Node, keys: &[String]) -> usize {
    keys.iter()
        .map(|k| node.batch_exists(std::slice::from_ref(k)).unwrap())
        .sum()
}

#[test]
fn without_refreshes_a_page_the_later_writer_evicted_cannot_be_found() {
    let (_a, _b, c, shared) = pages_held_by_a_after_the_later_writer_evicted_them(
        "norefresh",
        r#","directory_refresh_interval":0"#,
    );
    // The loss the refresh exists for: a still holds all 8 pages.
    eventually("b's deletes to remove every entry", || {
        found_one_by_one(&c, &shared) == 0
    });
}

#[test]
fn a_refresh_brings_back_the_entries_of_pages_another_writer_evicted() {
    let (_a, _b, c, shared) = pages_held_by_a_after_the_later_writer_evicted_them(
        "refresh",
        r#","directory_refresh_interval":0.5"#,
    );
    eventually("a's refresh to bring back every entry", || {
        found_one_by_one(&c, &shared) == shared.len()
    });
    let (ok, out) = get_all(&c, &shared, 64 << 10);
    assert_eq!(ok, vec![true; shared.len()]);
    for (k, got) in shared.iter().zip(&out) {
        assert_eq!(got, &page(k, 64 << 10), "page {k} differs");
    }
}

#[test]
fn after_a_clear_peers_no_longer_find_the_cleared_pages() {
    let a = node("clear-a", "");
    let b = node("clear-b", "");
    join(&[&a, &b], 1);
    let ks = keys("cleared", 32);
    assert!(set_all(&a, &ks, 64 << 10).iter().all(|&x| x));
    // directory_replicas 2 on two nodes: b holds an entry for every page.
    eventually("b to find every page", || {
        b.batch_exists(&ks).unwrap() == 32
    });
    a.clear();
    // The clear returned after its deletes were answered.
    assert_eq!(found_one_by_one(&b, &ks), 0);
    let (ok, _) = get_all(&b, &ks, 64 << 10);
    assert_eq!(ok, vec![false; 32]);
}

/// Sends `bytes` on a new connection to `endpoint` and returns what comes
/// back until the server closes it (bounded by a 5 s read timeout).
fn send_and_read_to_close(endpoint: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(endpoint).unwrap();
    s.write_all(bytes).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    reply
}

#[test]
fn garbage_and_oversized_frames_close_only_that_connection() {
    let a = node("garbage-a", "");
    let b = node("garbage-b", "");
    join(&[&a, &b], 1);
    let ks = keys("keep-serving", 16);
    assert!(set_all(&a, &ks, 4096).iter().all(|&x| x));
    let endpoint = a.endpoints()[0];

    // 1. Random bytes instead of a frame.
    let mut s = TcpStream::connect(endpoint).unwrap();
    s.write_all(&[0xde; 100]).unwrap();
    let mut buf = [0u8; 256];
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(
        matches!(s.read(&mut buf), Ok(0) | Err(_)),
        "the server closes a garbage connection"
    );

    // 2. A valid-looking header announcing a 1 TiB meta section.
    let mut header = Vec::new();
    header.extend_from_slice(&peercache_engine::wire::MAGIC.to_le_bytes());
    header.extend_from_slice(&peercache_engine::wire::PROTOCOL_VERSION.to_le_bytes());
    header.extend_from_slice(&0x22u16.to_le_bytes()); // DirGet
    header.extend_from_slice(&7u64.to_le_bytes());
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    send_and_read_to_close(endpoint, &header);

    // 3. A request before Hello.
    let mut frame = Vec::new();
    peercache_engine::wire::encode_frame(
        &peercache_engine::wire::DirGet {
            keys: vec![[0u8; 16]],
        },
        1,
        0,
        &mut frame,
    )
    .unwrap();
    let reply = send_and_read_to_close(endpoint, &frame);
    assert!(
        reply.len() >= peercache_engine::wire::HEADER_BYTES,
        "an Error reply precedes the close"
    );

    // 4. A discovery request (a discovery_addr pointing at a control port):
    //    the Error says what was dialled, for the operator to fix.
    let mut frame = Vec::new();
    peercache_engine::wire::encode_frame(&peercache_engine::wire::MembersRequest, 1, 0, &mut frame)
        .unwrap();
    let reply = send_and_read_to_close(endpoint, &frame);
    assert!(
        String::from_utf8_lossy(&reply)
            .contains("is a discovery request, and this is a shard's control port"),
        "the Error names the mistake: {:?}",
        String::from_utf8_lossy(&reply)
    );

    eventually("the protocol errors to be counted", || {
        a.stats().protocol_errors >= 4
    });
    // The node keeps serving everyone else.
    let (ok, out) = get_all(&b, &ks, 4096);
    assert!(ok.iter().all(|&x| x));
    assert!(ks.iter().zip(&out).all(|(k, got)| *got == page(k, 4096)));
}

#[test]
fn a_dead_peer_makes_its_pages_misses_quickly() {
    let a = node("dead-a", "");
    let b = node("dead-b", "");
    join(&[&a, &b], 1);
    let ks = keys("doomed", 32);
    assert!(set_all(&a, &ks, 4096).iter().all(|&x| x));
    assert_eq!(b.batch_exists(&ks).unwrap(), 32);
    drop(a); // its listeners close: connections are refused from now on
    let started = Instant::now();
    let (ok, _) = get_all(&b, &ks, 4096);
    assert!(ok.iter().all(|&x| !x), "pages of a dead node are misses");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "bounded: no hang"
    );
    let s = b.stats();
    assert!(s.remote_failures > 0);
    // Located, but the transfers failed: read failures (and misses).
    assert_eq!((s.read_failures, s.read_misses), (32, 32));
}

#[test]
fn a_stopped_node_releases_its_ports_and_connections() {
    let a = node("stops-a", "");
    let b = node("stops-b", "");
    join(&[&a, &b], 1);
    let ks = keys("stops", 8);
    assert_eq!(set_all(&a, &ks, 4096), vec![true; 8]);
    assert_eq!(get_all(&b, &ks, 4096).0, vec![true; 8]);
    let endpoints = a.endpoints().to_vec();
    drop(a);
    // Nothing listens any more (a leaked accept loop would still accept,
    // and with SO_REUSEPORT share the port with the next node bound there).
    for ep in endpoints {
        assert!(
            TcpStream::connect_timeout(&ep, Duration::from_secs(1)).is_err(),
            "{ep} still accepts connections after its node stopped"
        );
    }
}

/// Two joined nodes `<name>-a` (on fixed ports, so a restart keeps its
/// endpoints; returns its extra config) and `<name>-b`, and 16 pages
/// (`<name>-old-i`) `a` stored that `b` has read once.
fn pages_of_a_restartable_node(name: &str) -> (String, Node, Node, Vec<String>) {
    let fixed = format!(r#","control_port":{}"#, free_port_pair());
    let a = node(&format!("{name}-a"), &fixed);
    let b = node(&format!("{name}-b"), "");
    join(&[&a, &b], 1);
    let ks = keys(&format!("{name}-old"), 16);
    assert_eq!(set_all(&a, &ks, 4096), vec![true; 16]);
    assert_eq!(get_all(&b, &ks, 4096).0, vec![true; 16]);
    (fixed, a, b, ks)
}

/// Once the membership shows the restarted process (discovery reports a
/// new incarnation), its pages are read at once: the channels to the old
/// process were dropped with it, so no read fails on a dead socket.
#[test]
fn a_peer_restarted_behind_the_same_endpoint_costs_no_miss() {
    let (fixed, a, b, ks) = pages_of_a_restartable_node("restarts");
    // `a` restarts on the same ports: `b`'s idle channels to `a` are closed
    // sockets of the old process.
    let before = a.route();
    drop(a);
    let a = node("restarts-a", &fixed);
    let after = a.route();
    assert_eq!(
        after.shard_endpoints, before.shard_endpoints,
        "same endpoints"
    );
    assert_ne!(
        after.node_ref, before.node_ref,
        "another process of the node"
    );
    join(&[&a, &b], 2);
    assert_eq!(set_all(&a, &ks, 4096), vec![true; 16]);
    let (ok, out) = get_all(&b, &ks, 4096);
    assert_eq!(ok, vec![true; 16], "the first get after the restart");
    assert!(ks.iter().zip(&out).all(|(k, got)| *got == page(k, 4096)));
    assert_eq!(
        b.stats().remote_failures,
        0,
        "no read failed on a dead channel"
    );
}

/// A node restarted under the same id and endpoints starts its slots and
/// generations afresh, so a location its previous process published can
/// name the same slot and generation as another page now. Such reads must
/// be misses, never the other page's bytes: before the view changes (the
/// new process refuses the old one's locations) and after (they name no
/// member).
#[test]
fn locations_of_a_restarted_node_are_misses_never_other_pages() {
    let (fixed, a, b, old) = pages_of_a_restartable_node("reborn");
    drop(a);
    // The new process stores other pages: the same slots and generations
    // the old keys' entries (still in `b`'s directory) name.
    let a = node("reborn-a", &fixed);
    let old_view = vec![a.route(), b.route()];
    a.set_membership(2, old_view);
    let new = keys("reborn-new", 16);
    assert_eq!(set_all(&a, &new, 4096), vec![true; 16]);
    let (ok, out) = get_all(&b, &old, 4096);
    for ((k, hit), got) in old.iter().zip(&ok).zip(&out) {
        assert!(!hit || *got == page(k, 4096), "{k}: another page's bytes");
    }
    assert_eq!(ok, vec![false; 16], "the old process's pages are gone");
    assert!(
        a.stats().stale_node_reads > 0,
        "the new process refused the old one's locations"
    );
    // Once `b` knows the new process, the old entries name no member.
    join(&[&a, &b], 3);
    assert_eq!(get_all(&b, &old, 4096).0, vec![false; 16]);
    assert_eq!(get_all(&b, &new, 4096).0, vec![true; 16]);
}
