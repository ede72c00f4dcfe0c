//! The disk tier across nodes and processes: a remote reader gets pages its
//! owner evicted to disk, a node killed with `kill -9` serves its earlier
//! pages after a restart, and a full disk (a small tmpfs) stops writes
//! without stopping the node. Every wait is bounded.

use peercache_engine::{Config, Node};
use peercache_tests::node_process::{free_port, NodeProcess};
use peercache_tests::pages;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Page size: 16 KiB, so a 8 MiB pool (512 pages) overflows quickly.
const PAGE: usize = 16 << 10;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("peercache-disk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).output();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn in_process_node(name: &str, disk: Option<&Path>) -> Node {
    let disk = match disk {
        Some(dir) => format!(
            r#""disk_enabled":true,"disk_path":"{}","disk_size":"64mb""#,
            dir.display()
        ),
        None => r#""disk_enabled":false"#.to_string(),
    };
    let config = Config::from_json(&format!(
        r#"{{"discovery_addr":"127.0.0.1:1","global_segment_size":"8mb","shards":2,
            "node_id":"{name}","local_hostname":"127.0.0.1","control_bind_host":"127.0.0.1",
            "metrics_enabled":false,"pool_quarantine_ms":0,{disk}}}"#
    ))
    .unwrap();
    Node::start(config).unwrap()
}

fn set_pages(node: &Node, keys: &[String]) -> Vec<bool> {
    let data: Vec<Vec<u8>> = keys.iter().map(|k| pages::page(k, PAGE)).collect();
    let refs: Vec<&[u8]> = data.iter().map(|p| p.as_slice()).collect();
    node.batch_set_pages(keys, &refs).unwrap()
}

/// Gets `keys`; asserts every page that arrived is byte-exact.
fn get_pages(node: &Node, keys: &[String]) -> Vec<bool> {
    let mut out: Vec<Vec<u8>> = keys.iter().map(|_| vec![0u8; PAGE]).collect();
    let mut dsts: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
    let ok = node.batch_get_into(keys, &mut dsts).unwrap();
    for ((k, got), &ok) in keys.iter().zip(&out).zip(&ok) {
        assert!(
            !ok || pages::matches(k, got),
            "{k} came back with other bytes"
        );
    }
    ok
}

#[test]
fn a_remote_reader_gets_pages_the_owner_evicted_to_disk() {
    let scratch = Scratch::new("remote");
    let a = in_process_node("disk-a", Some(&scratch.0));
    let b = in_process_node("disk-b", None);
    let routes = vec![a.route(), b.route()];
    a.set_membership(1, routes.clone());
    b.set_membership(1, routes);

    // Twice a's pool, written through to its disk batch by batch.
    let ks = keys("remote", 1024);
    for batch in ks.chunks(32) {
        assert!(set_pages(&a, batch).iter().all(|&ok| ok));
        a.flush_disk();
    }
    assert_eq!(a.stats().disk_keys, 1024);
    assert!(a.stats().evictions >= 512);

    // b holds nothing: every page comes from a, the cold ones promoted first.
    for batch in ks.chunks(32) {
        assert_eq!(get_pages(&b, batch), vec![true; batch.len()]);
    }
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sb.read_remote_hits, 1024);
    assert!(sa.promotes >= 512, "{}", sa.promotes);
    assert_eq!(sa.disk_corrupt_pages, 0);

    // Exists on b reports pages only on a's disk (a promotes them on the way).
    let cold = keys("remote", 1024)[..32].to_vec();
    assert_eq!(b.batch_exists(&cold).unwrap(), 32);
    assert_eq!(get_pages(&b, &cold), vec![true; 32]);
}

#[test]
fn a_location_gone_stale_falls_back_to_the_owners_disk() {
    let scratch = Scratch::new("stale");
    let a = in_process_node("stale-a", Some(&scratch.0));
    let b = in_process_node("stale-b", None);
    let routes = vec![a.route(), b.route()];
    a.set_membership(1, routes.clone());
    b.set_membership(1, routes);

    let early = keys("early", 32);
    assert!(set_pages(&a, &early).iter().all(|&ok| ok));
    a.flush_disk();
    // b resolves them while they are in a's pool (the exists -> get handoff)...
    assert_eq!(b.batch_exists(&early).unwrap(), 32);
    // ...then a's pool moves on: every early page is evicted to disk.
    let late = keys("late", 1024);
    for batch in late.chunks(32) {
        assert!(set_pages(&a, batch).iter().all(|&ok| ok));
        a.flush_disk();
    }
    let promotes = a.stats().promotes;
    // The handed-off locations are stale; the pages still arrive, promoted.
    assert_eq!(get_pages(&b, &early), vec![true; 32]);
    assert_eq!(
        b.stats().directory_lookups_saved,
        32,
        "the stale handoff was used"
    );
    assert!(a.stats().promotes >= promotes + 32);
}

fn node_config(dir: &Path, port: u16, disk_size: &str) -> String {
    json!({
        "discovery_addr": format!("127.0.0.1:{port}"),
        "node_id": "disk-restart",
        "local_hostname": "127.0.0.1",
        "control_bind_host": "127.0.0.1",
        "meta_bind_host": "127.0.0.1",
        "protocol": "tcp",
        "global_segment_size": "8mb",
        "shards": 2,
        "metrics_enabled": false,
        "pool_quarantine_ms": 0,
        "disk_enabled": true,
        "disk_path": dir.display().to_string(),
        "disk_size": disk_size,
    })
    .to_string()
}

fn spawn(config: &str, log: &Path) -> NodeProcess {
    NodeProcess::spawn(
        Path::new(env!("CARGO_BIN_EXE_peercache-node")),
        config,
        Some(log),
    )
    .unwrap_or_else(|e| panic!("node did not start: {e} (log: {})", log.display()))
}

fn wait_counter(node: &mut NodeProcess, name: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = node.counter(name).unwrap();
        if v >= at_least {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {v}, below {at_least}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn pages_written_before_kill_9_are_served_after_a_restart() {
    let scratch = Scratch::new("kill9");
    let data = scratch.0.join("data");
    let config = node_config(&data, free_port("127.0.0.1"), "64mb");
    let ks = keys("kill9", 64);

    let mut node = spawn(&config, &scratch.0.join("first.log"));
    assert_eq!(node.set(PAGE, &ks).unwrap(), vec![true; 64]);
    wait_counter(&mut node, "disk_writes", 64);
    node.kill();

    let mut node = spawn(&config, &scratch.0.join("second.log"));
    assert_eq!(node.counter("disk_keys").unwrap(), 64);
    let (ok, corrupt) = node.get(PAGE, &ks).unwrap();
    assert_eq!(ok, vec![true; 64]);
    assert_eq!(corrupt, 0);
    assert_eq!(node.counter("read_disk_hits").unwrap(), 64);
    node.quit().unwrap();
}

#[test]
fn a_full_disk_stops_writes_and_the_node_keeps_serving() {
    let scratch = Scratch::new("enospc");
    // A 1 MiB tmpfs under a 64 MiB disk_size: preallocation fails, the tier
    // writes into what is left and stops at the first ENOSPC. Mounting needs
    // root (the project's test machines run as root).
    let mount = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&scratch.0)
        .output()
        .expect("run mount");
    assert!(
        mount.status.success(),
        "this test mounts a 1 MiB tmpfs and needs root: {}",
        String::from_utf8_lossy(&mount.stderr)
    );
    let data = scratch.0.join("data");
    let log =
        std::env::temp_dir().join(format!("peercache-disk-enospc-{}.log", std::process::id()));
    let config = node_config(&data, free_port("127.0.0.1"), "64mb");
    let mut node = spawn(&config, &log);
    let ks = keys("full", 256);
    for batch in ks.chunks(32) {
        assert_eq!(node.set(PAGE, batch).unwrap(), vec![true; batch.len()]);
    }
    wait_counter(&mut node, "disk_writes_stopped", 1);
    assert_eq!(node.counter("disk_writes").unwrap(), 0);
    assert_eq!(node.counter("disk_write_drops").unwrap(), 256);
    // Every page is still served (the 8 MiB pool holds them all).
    let (ok, corrupt) = node.get(PAGE, &ks).unwrap();
    assert_eq!(ok, vec![true; 256]);
    assert_eq!(corrupt, 0);
    node.quit().unwrap();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("new disk writes stopped"),
        "the log says writes stopped: {text}"
    );
    let _ = std::fs::remove_file(&log);
}
