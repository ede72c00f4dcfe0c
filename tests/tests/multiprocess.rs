//! Multi-process tests: every node is its own `peercache-node` process, and
//! the nodes find each other through the embedded discovery (no membership
//! installed by hand), as SGLang ranks on different hosts would.
//!
//! Hosts are modelled with loopback addresses: host i is `127.0.0.i`, used as
//! `local_hostname`, `control_bind_host` and `meta_bind_host`, and every host
//! of one test serves discovery on the same meta port (a free port per test,
//! so the tests can run in parallel). Several ranks of one host share its
//! address and meta port.
//!
//! Heartbeats are short (0.3 s, member TTL 1.2 s unless a test says
//! otherwise) and every wait is bounded. Node logs go to files under the
//! temporary directory; their paths and tails are printed when a test fails,
//! and they are removed when it passes.

use peercache_tests::node_process::{free_port, free_port_pair, NodeProcess};
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Page size of most tests: 64 KiB.
const PAGE: usize = 64 << 10;
/// Bound on waits for membership and for asynchronous re-publishing.
const SETTLE: Duration = Duration::from_secs(15);

fn host(i: u8) -> String {
    format!("127.0.0.{i}")
}

/// One test's cluster: its meta port, its log directory, the logs written.
struct Cluster {
    name: &'static str,
    port: u16,
    dir: PathBuf,
    logs: Vec<(String, PathBuf)>,
}

impl Cluster {
    /// A cluster whose meta port is free on each of `hosts` (`127.0.0.i`).
    fn new(name: &'static str, hosts: &[u8]) -> Cluster {
        let port = (0..100)
            .map(|_| free_port("127.0.0.1"))
            .find(|&p| {
                hosts
                    .iter()
                    .all(|&h| TcpListener::bind((host(h).as_str(), p)).is_ok())
            })
            .expect("a port free on every test host");
        let dir = std::env::temp_dir().join(format!(
            "peercache-multiprocess-{name}-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create the log directory");
        Cluster {
            name,
            port,
            dir,
            logs: Vec::new(),
        }
    }

    /// A `discovery_addr` listing `hosts` in this order (the first is the head).
    fn seeds(&self, hosts: &[u8]) -> String {
        hosts
            .iter()
            .map(|&h| format!("{}:{}", host(h), self.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts node `id` on host `127.0.0.h` with discovery `seeds`; `extra`
    /// (a JSON object) overrides or adds keys of the base config.
    fn spawn(&mut self, id: &str, h: u8, seeds: &str, extra: Value) -> NodeProcess {
        let address = host(h);
        let mut config = json!({
            "discovery_addr": seeds,
            "node_id": format!("{}-{id}", self.name),
            "local_hostname": address,
            "control_bind_host": address,
            "meta_bind_host": address,
            "protocol": "tcp",
            "global_segment_size": "32mb",
            "shards": 2,
            "directory_replicas": 2,
            "heartbeat_interval": 0.3,
            "member_ttl": 1.2,
            "disk_enabled": false,
            "metrics_enabled": false,
        });
        if let (Value::Object(base), Value::Object(more)) = (&mut config, extra) {
            base.extend(more);
        }
        let log = self.dir.join(format!("{id}.log"));
        self.logs.push((id.to_string(), log.clone()));
        NodeProcess::spawn(
            Path::new(env!("CARGO_BIN_EXE_peercache-node")),
            &config.to_string(),
            Some(&log),
        )
        .unwrap_or_else(|e| panic!("node {id} on {address} did not start: {e}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
            return;
        }
        eprintln!("--- {}: node logs (meta port {}) ---", self.name, self.port);
        for (id, path) in &self.logs {
            eprintln!("{id}: {}", path.display());
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            for line in &lines[lines.len().saturating_sub(25)..] {
                eprintln!("  {line}");
            }
        }
    }
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Probes until `done` holds, at most `within`; panics with the last value.
fn wait_for<T: std::fmt::Debug>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let value = probe();
        if done(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; last value: {value:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn members(node: &mut NodeProcess) -> usize {
    node.command("members")
        .expect("members")
        .parse()
        .expect("a member count")
}

/// Waits until `node` sees exactly `n` live members.
fn wait_exact_members(node: &mut NodeProcess, n: usize) {
    let what = format!("{} to see exactly {n} members", node.node_id);
    wait_for(&what, SETTLE, || members(node), |&m| m == n);
}

/// Waits until `node` finds every one of `keys` (re-publishing after a
/// membership change is asynchronous).
fn wait_exists_all(node: &mut NodeProcess, keys: &[String]) {
    let what = format!("{} to find all {} keys", node.node_id, keys.len());
    wait_for(
        &what,
        SETTLE,
        || node.exists(keys).expect("exists"),
        |&n| n == keys.len(),
    );
}

/// Gets `keys` and asserts every one is a hit with the key's own bytes.
fn assert_get_all(node: &mut NodeProcess, keys: &[String], len: usize) {
    let (hits, corrupt) = node.get(len, keys).expect("get");
    let missed = hits.iter().filter(|&&h| !h).count();
    assert_eq!(
        missed,
        0,
        "{}: {missed} of {} pages missed",
        node.node_id,
        keys.len()
    );
    assert_eq!(corrupt, 0, "{}: hits with wrong bytes", node.node_id);
}

fn assert_set_all(node: &mut NodeProcess, keys: &[String], len: usize) {
    let stored = node.set(len, keys).expect("set");
    assert_eq!(stored, vec![true; keys.len()], "{}: set", node.node_id);
}

fn assert_read_counters_add_up(node: &mut NodeProcess) {
    let s = node.stats().expect("stats");
    let c = |name: &str| s.get(name).and_then(Value::as_u64).unwrap();
    assert_eq!(
        c("read_hits") + c("read_misses"),
        c("read_requests"),
        "{}: read_hits + read_misses == read_requests",
        node.node_id
    );
}

#[test]
fn pages_set_on_one_node_are_read_byte_exact_by_the_others() {
    let mut c = Cluster::new("cross", &[1, 2, 3]);
    let seeds = c.seeds(&[1]);
    let mut n1 = c.spawn("n1", 1, &seeds, json!({}));
    let mut n2 = c.spawn("n2", 2, &seeds, json!({}));
    let mut n3 = c.spawn("n3", 3, &seeds, json!({}));
    for n in [&mut n1, &mut n2, &mut n3] {
        n.wait_members(3, 15).expect("3 members");
    }

    let ks = keys("cross", 100);
    assert_set_all(&mut n1, &ks, PAGE);
    assert_eq!(n1.counter("directory_put_failures").unwrap(), 0);
    for reader in [&mut n2, &mut n3] {
        wait_exists_all(reader, &ks);
        assert_get_all(reader, &ks, PAGE);
        let s = reader.stats().unwrap();
        let c = |name: &str| s.get(name).and_then(Value::as_u64).unwrap();
        assert_eq!(c("read_requests"), 100);
        assert_eq!(c("read_remote_hits"), 100, "every hit came from n1");
        assert_eq!(c("read_local_hits"), 0);
        assert_eq!(c("bytes_read"), 100 * PAGE as u64);
        assert_eq!(c("read_hits") + c("read_misses"), c("read_requests"));
    }

    // A key nobody wrote is a miss, and the exists prefix stops there.
    let mut mixed = ks[..3].to_vec();
    mixed.push("cross-nobody-wrote-this".into());
    mixed.extend_from_slice(&ks[3..6]);
    assert_eq!(n2.exists(&mixed).unwrap(), 3);
    let (hits, corrupt) = n2.get(PAGE, &mixed).unwrap();
    assert_eq!(hits, vec![true, true, true, false, true, true, true]);
    assert_eq!(corrupt, 0);
    assert_read_counters_add_up(&mut n2);
}

#[test]
fn a_node_joining_after_publication_resolves_every_key() {
    let mut c = Cluster::new("late", &[1, 2, 3]);
    let seeds = c.seeds(&[1]);
    let mut n1 = c.spawn("n1", 1, &seeds, json!({}));
    let mut n2 = c.spawn("n2", 2, &seeds, json!({}));
    for n in [&mut n1, &mut n2] {
        n.wait_members(2, 15).expect("2 members");
    }
    let ks = keys("early", 100);
    assert_set_all(&mut n1, &ks, PAGE);
    wait_exists_all(&mut n2, &ks);
    let republished = n1.counter("directory_republishes").unwrap();

    let mut n3 = c.spawn("n3", 3, &seeds, json!({}));
    assert_eq!(n3.wait_members(3, 15).expect("n3 joins"), 3);
    for n in [&mut n1, &mut n2] {
        n.wait_members(3, 15).expect("3 members");
    }
    wait_exists_all(&mut n3, &ks);
    assert_get_all(&mut n3, &ks, PAGE);
    assert_eq!(n3.counter("read_remote_hits").unwrap(), 100);
    assert_read_counters_add_up(&mut n3);
    wait_for(
        "n1 to re-publish its pages to the new owners",
        SETTLE,
        || n1.counter("directory_republishes").unwrap(),
        |&n| n >= republished + 100,
    );
}

#[test]
fn a_killed_node_loses_only_its_own_pages() {
    // h1 reads; h2 produces pages that must survive; h3 produces pages and
    // owns directory entries (of both producers), then is killed with -9.
    let mut c = Cluster::new("kill", &[1, 2, 3]);
    let seeds = c.seeds(&[1]);
    let mut reader = c.spawn("reader", 1, &seeds, json!({}));
    let mut live = c.spawn("live", 2, &seeds, json!({}));
    let mut doomed = c.spawn("doomed", 3, &seeds, json!({}));
    for n in [&mut reader, &mut live, &mut doomed] {
        n.wait_members(3, 15).expect("3 members");
    }
    let live_keys = keys("live", 100);
    let doomed_keys = keys("doomed", 50);
    assert_set_all(&mut live, &live_keys, PAGE);
    assert_set_all(&mut doomed, &doomed_keys, PAGE);
    wait_exists_all(&mut reader, &live_keys);
    wait_exists_all(&mut reader, &doomed_keys);
    assert!(
        doomed.counter("directory_entries").unwrap() > 0,
        "the node to kill owns directory entries"
    );

    doomed.kill();
    // Right away, before discovery notices: the dead owner is skipped for
    // the other replica, and the dead producer's pages are misses.
    assert_eq!(
        reader.exists(&live_keys).expect("exists after the kill"),
        100,
        "entries owned by the killed node are found on their other replica"
    );
    assert_get_all(&mut reader, &live_keys, PAGE);
    let (hits, corrupt) = reader.get(PAGE, &doomed_keys).expect("get, no ERR");
    assert_eq!(hits, vec![false; 50], "pages of a killed node are misses");
    assert_eq!(corrupt, 0);
    assert!(reader.counter("remote_failures").unwrap() > 0);

    // After member_ttl the killed node is pruned and the directory re-shards.
    wait_exact_members(&mut reader, 2);
    wait_exact_members(&mut live, 2);
    wait_exists_all(&mut reader, &live_keys);
    assert_get_all(&mut reader, &live_keys, PAGE);
    wait_for(
        "the killed node's entries to stop resolving",
        SETTLE,
        || reader.exists(&doomed_keys).expect("exists"),
        |&n| n == 0,
    );
    let (hits, corrupt) = reader.get(PAGE, &doomed_keys).expect("get, no ERR");
    assert_eq!(hits, vec![false; 50]);
    assert_eq!(corrupt, 0);
    assert_read_counters_add_up(&mut reader);
}

#[test]
fn a_hung_node_costs_one_timeout_then_its_pages_are_skipped() {
    // A stopped process is a hung host: connections open, nothing answers.
    // member_ttl is long, so the hung node stays a member throughout.
    let mut c = Cluster::new("hung", &[1, 2]);
    let seeds = c.seeds(&[1]);
    // The hung node keeps its endpoints across its restart below, so only
    // its departure can end the skip (which would otherwise last 60 s).
    let hung_config = json!({"member_ttl": 60.0, "control_port": free_port_pair()});
    let mut reader = c.spawn("reader", 1, &seeds, json!({"member_ttl": 60.0}));
    let mut hung = c.spawn("hung", 2, &seeds, hung_config.clone());
    for n in [&mut reader, &mut hung] {
        n.wait_members(2, 15).expect("2 members");
    }
    let hung_keys = keys("hung", 40);
    assert_set_all(&mut hung, &hung_keys, PAGE);
    wait_exists_all(&mut reader, &hung_keys);

    hung.signal("STOP").expect("stop the node");
    // The first get waits out the exchange timeout: every page a miss.
    let (hits, corrupt) = reader.get(PAGE, &hung_keys).expect("get, no ERR");
    assert_eq!((hits, corrupt), (vec![false; 40], 0));
    assert!(reader.counter("remote_failures").unwrap() > 0);
    // From then on the node is skipped while still a member: exists does
    // not count its pages, and gets of them are misses without a new try.
    assert_eq!(members(&mut reader), 2, "still a member (member_ttl 60 s)");
    assert_eq!(reader.exists(&hung_keys).expect("exists"), 0);
    let (hits, corrupt) = reader.get(PAGE, &hung_keys).expect("get, no ERR");
    assert_eq!((hits, corrupt), (vec![false; 40], 0));
    assert!(reader.counter("unreachable_skips").unwrap() > 0);
    // The reader's own pages are not affected.
    let own = keys("reader-own", 10);
    assert_set_all(&mut reader, &own, PAGE);
    assert_get_all(&mut reader, &own, PAGE);

    // Resumed and then gone cleanly: its departure ends the skip, and the
    // node started again at the same id and endpoints is read again.
    hung.signal("CONT").expect("resume the node");
    let hung_endpoints = hung.endpoints.clone();
    hung.quit().expect("the resumed node quits cleanly");
    wait_exact_members(&mut reader, 1);
    let mut back = c.spawn("hung", 2, &seeds, hung_config);
    assert_eq!(back.endpoints, hung_endpoints, "same endpoints as before");
    back.wait_members(2, 15).expect("2 members again");
    reader.wait_members(2, 15).expect("the reader sees it");
    let fresh = keys("back", 20);
    assert_set_all(&mut back, &fresh, PAGE);
    wait_exists_all(&mut reader, &fresh);
    assert_get_all(&mut reader, &fresh, PAGE);
    assert_read_counters_add_up(&mut reader);
}

#[test]
fn the_cluster_survives_its_discovery_head_and_joins_through_a_second_seed() {
    let mut c = Cluster::new("head", &[1, 2, 3, 4]);
    let seeds = c.seeds(&[1]);
    let mut head = c.spawn("head", 1, &seeds, json!({}));
    let mut a = c.spawn("a", 2, &seeds, json!({}));
    let mut b = c.spawn("b", 3, &seeds, json!({}));
    for n in [&mut head, &mut a, &mut b] {
        n.wait_members(3, 15).expect("3 members");
    }
    let a_keys = keys("from-a", 50);
    let b_keys = keys("from-b", 50);
    assert_set_all(&mut a, &a_keys, PAGE);
    assert_set_all(&mut b, &b_keys, PAGE);

    head.kill();
    wait_exact_members(&mut a, 2);
    wait_exact_members(&mut b, 2);
    wait_exists_all(&mut a, &b_keys);
    assert_get_all(&mut a, &b_keys, PAGE);
    wait_exists_all(&mut b, &a_keys);
    assert_get_all(&mut b, &a_keys, PAGE);

    // A new node lists the dead head first: it bootstraps via the second seed.
    let mut newcomer = c.spawn("new", 4, &c.seeds(&[1, 2]), json!({}));
    assert_eq!(newcomer.wait_members(3, 15).expect("joins via seed 2"), 3);
    wait_exact_members(&mut a, 3);
    wait_exact_members(&mut b, 3);
    wait_exact_members(&mut newcomer, 3);
    let all: Vec<String> = a_keys.iter().chain(&b_keys).cloned().collect();
    wait_exists_all(&mut newcomer, &all);
    assert_get_all(&mut newcomer, &all, PAGE);
    assert_eq!(newcomer.counter("read_remote_hits").unwrap(), 100);
}

#[test]
fn ranks_of_one_host_share_the_meta_port_and_take_it_over() {
    let mut c = Cluster::new("ranks", &[1, 2, 3]);
    let seeds = c.seeds(&[1]);
    // rank0 is alone when it registers with the head 127.0.0.1:P, so it is
    // the process serving that port.
    let mut rank0 = c.spawn("rank0", 1, &seeds, json!({"local_rank": 0}));
    assert_eq!(rank0.wait_members(1, 15).expect("rank0 serves the head"), 1);
    let mut rank1 = c.spawn("rank1", 1, &seeds, json!({"local_rank": 1}));
    let mut other = c.spawn("other", 2, &seeds, json!({}));
    for n in [&mut rank0, &mut rank1, &mut other] {
        n.wait_members(3, 15).expect("3 members");
    }
    let ks = keys("rank1", 20);
    assert_set_all(&mut rank1, &ks, PAGE);

    rank0.kill();
    // rank1 binds 127.0.0.1:P once rank0 is gone; the dead rank is pruned.
    wait_exact_members(&mut rank1, 2);
    wait_exact_members(&mut other, 2);

    // Only the head address as seed: only rank1 can be answering there now.
    let mut late = c.spawn("late", 3, &seeds, json!({}));
    assert_eq!(late.wait_members(3, 15).expect("joins via 127.0.0.1:P"), 3);
    wait_exact_members(&mut late, 3);
    wait_exact_members(&mut rank1, 3);
    wait_exact_members(&mut other, 3);
    wait_exists_all(&mut late, &ks);
    assert_get_all(&mut late, &ks, PAGE);
}

/// Reads until the peer closes; `None` if it kept the connection open.
fn read_until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reply = Vec::new();
    match stream.read_to_end(&mut reply) {
        Ok(_) => Some(reply),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(_) => Some(reply), // reset: closed too
    }
}

#[test]
fn a_misbehaving_peer_is_dropped_and_the_node_keeps_serving() {
    use peercache_engine::wire;
    let mut c = Cluster::new("garbage", &[1, 2]);
    let seeds = c.seeds(&[1]);
    let mut target = c.spawn("target", 1, &seeds, json!({}));
    let mut reader = c.spawn("reader", 2, &seeds, json!({}));
    for n in [&mut target, &mut reader] {
        n.wait_members(2, 15).expect("2 members");
    }
    let ks = keys("keep-serving", 16);
    assert_set_all(&mut target, &ks, 4096);
    let endpoint = target.endpoints[0].clone();

    // 1. Bytes that are not a frame.
    let mut s = TcpStream::connect(&endpoint).unwrap();
    s.write_all(&[0xde; 100]).unwrap();
    assert!(
        read_until_closed(&mut s).is_some(),
        "garbage: the node closes the connection"
    );

    // 2. A well-formed header announcing a 4 GiB meta section.
    let mut header = Vec::new();
    header.extend_from_slice(&wire::MAGIC.to_le_bytes());
    header.extend_from_slice(&wire::PROTOCOL_VERSION.to_le_bytes());
    header.extend_from_slice(&wire::Kind::DirGet.as_u16().to_le_bytes());
    header.extend_from_slice(&7u64.to_le_bytes());
    header.extend_from_slice(&u32::MAX.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    assert_eq!(header.len(), wire::HEADER_BYTES);
    let mut s = TcpStream::connect(&endpoint).unwrap();
    s.write_all(&header).unwrap();
    assert!(
        read_until_closed(&mut s).is_some(),
        "oversized header: the node closes the connection"
    );

    // 3. A valid request before Hello: an Error reply, then the close.
    let mut frame = Vec::new();
    wire::encode_frame(
        &wire::DirGet {
            keys: vec![[0u8; 16]],
        },
        1,
        0,
        &mut frame,
    )
    .unwrap();
    let mut s = TcpStream::connect(&endpoint).unwrap();
    s.write_all(&frame).unwrap();
    let reply = read_until_closed(&mut s).expect("request before Hello: closed");
    assert!(
        reply.len() >= wire::HEADER_BYTES,
        "an Error reply precedes the close, got {} bytes",
        reply.len()
    );
    assert_eq!(reply[..4], wire::MAGIC.to_le_bytes());
    assert_eq!(
        u16::from_le_bytes([reply[6], reply[7]]),
        wire::Kind::Error.as_u16()
    );

    wait_for(
        "the three protocol errors to be counted",
        SETTLE,
        || target.counter("protocol_errors").unwrap(),
        |&n| n >= 3,
    );
    // Everyone else is still served.
    wait_exists_all(&mut reader, &ks);
    assert_get_all(&mut reader, &ks, 4096);
    assert_eq!(reader.counter("read_remote_hits").unwrap(), 16);
}

#[test]
fn a_stale_location_never_returns_another_pages_bytes() {
    let mut c = Cluster::new("stale", &[1, 2]);
    let seeds = c.seeds(&[1]);
    // The reader keeps resolved locations (read cache), so its get uses the
    // locations its exists resolved, however long the overwrite takes.
    let mut reader = c.spawn("reader", 1, &seeds, json!({"directory_read_cache_ttl": 60}));
    // 4 MiB over 2 shards: 32 slots of 64 KiB per shard, reused at once.
    let mut producer = c.spawn(
        "producer",
        2,
        &seeds,
        json!({"global_segment_size": "4mb", "pool_quarantine_ms": 0}),
    );
    for n in [&mut reader, &mut producer] {
        n.wait_members(2, 15).expect("2 members");
    }
    let first = keys("first", 24);
    assert_set_all(&mut producer, &first, PAGE);
    wait_exists_all(&mut reader, &first);

    // The producer overwrites its whole pool with other pages.
    let mut last = Vec::new();
    for round in 0..6 {
        last = keys(&format!("flood{round}"), 24);
        assert_set_all(&mut producer, &last, PAGE);
    }
    assert!(producer.counter("evictions").unwrap() >= 24);

    let saved = reader.counter("directory_lookups_saved").unwrap();
    let (hits, corrupt) = reader.get(PAGE, &first).expect("get");
    assert_eq!(
        reader.counter("directory_lookups_saved").unwrap(),
        saved + 24,
        "the get used the locations resolved before the overwrite"
    );
    assert_eq!(corrupt, 0, "a hit must carry the page's own bytes");
    assert!(
        hits.iter().any(|&h| !h),
        "overwritten pages must be misses: {hits:?}"
    );
    assert_read_counters_add_up(&mut reader);
    // The slots now hold the newest pages, which read back correctly.
    wait_exists_all(&mut reader, &last);
    assert_get_all(&mut reader, &last, PAGE);
}

/// A clean shutdown right after the cluster formed, by the only rank of a
/// master host: the others must drop the leaver long before member_ttl
/// (30 s here), although no master is settled yet (a master for
/// member_ttl) and the leaver's own host, a master, stops answering with its
/// last list still naming the leaver. The deregistrations the answering
/// masters report are what removes it.
///
/// `a_clean_shutdown_deregisters_once_the_masters_settled` covers settled
/// masters and a leaver whose host keeps serving discovery.
#[test]
fn a_clean_shutdown_deregisters_at_once() {
    let mut c = Cluster::new("quit", &[1, 2, 3]);
    let seeds = c.seeds(&[1]);
    // A long TTL: only the deregistration can remove the node in time.
    let slow = json!({"member_ttl": 30.0});
    let mut head = c.spawn("head", 1, &seeds, slow.clone());
    let mut stays = c.spawn("stays", 2, &seeds, slow.clone());
    let mut leaves = c.spawn("leaves", 3, &seeds, slow);
    for n in [&mut head, &mut stays, &mut leaves] {
        n.wait_members(3, 15).expect("3 members");
    }
    let quit_at = Instant::now();
    leaves.quit().expect("clean quit");
    wait_exact_members(&mut head, 2);
    wait_exact_members(&mut stays, 2);
    assert!(
        quit_at.elapsed() < Duration::from_secs(20),
        "gone before member_ttl (30 s) could have pruned it"
    );
}

/// The deregistration path where it works today: the masters have been
/// masters for member_ttl, and the leaver's host keeps serving discovery
/// (another rank of that host holds the meta port). Pruning could not remove
/// the leaver before member_ttl (4 s) after its last heartbeat; it must be
/// gone well before that.
#[test]
fn a_clean_shutdown_deregisters_once_the_masters_settled() {
    const TTL: Duration = Duration::from_secs(4);
    let mut c = Cluster::new("quit-settled", &[1, 2, 3]);
    let seeds = c.seeds(&[1]);
    let ttl = json!({"member_ttl": TTL.as_secs_f64()});
    let mut head = c.spawn("head", 1, &seeds, ttl.clone());
    let mut stays = c.spawn("stays", 2, &seeds, ttl.clone());
    let mut anchor = c.spawn("anchor", 3, &seeds, ttl.clone());
    anchor
        .wait_members(1, 15)
        .expect("anchor serves 127.0.0.3's meta port");
    let mut leaves = c.spawn("leaves", 3, &seeds, ttl);
    for n in [&mut head, &mut stays, &mut anchor, &mut leaves] {
        n.wait_members(4, 15).expect("4 members");
    }
    // Every master has been one since host 3 joined; let them all settle.
    std::thread::sleep(TTL + Duration::from_millis(500));
    let quit_at = Instant::now();
    leaves.quit().expect("clean quit");
    for n in [&mut head, &mut stays, &mut anchor] {
        wait_exact_members(n, 3);
    }
    let took = quit_at.elapsed();
    assert!(
        took < TTL / 2,
        "deregistration took {took:?}: as slow as pruning (member_ttl {TTL:?})"
    );
}
