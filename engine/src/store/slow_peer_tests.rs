//! A data node that answers reads late: two nodes in this process over TCP
//! on 127.0.0.1, membership installed by hand, the data node's `DataRead`
//! answers held back by a test hook. A large read that is slow but within
//! its bound is a hit and leaves the peer usable; one past its bound is a
//! miss and never writes into the caller's buffers afterwards.

use super::*;
use crate::net::deadline;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Nodes (by `node_id`) whose answers to `DataRead` wait this long first.
static DATA_READ_STALLS: Mutex<Vec<(String, Duration)>> = Mutex::new(Vec::new());

/// How long `node_id`'s server waits before answering a `DataRead` (the
/// test hook of the server's read handler).
pub(super) fn data_read_stall_for(node_id: &str) -> Option<Duration> {
    let stalls = DATA_READ_STALLS.lock().unwrap();
    stalls
        .iter()
        .find(|(id, _)| id == node_id)
        .map(|&(_, stall)| stall)
}

/// Stalls `node_id`'s read answers until dropped.
struct Stall(String);

impl Stall {
    fn new(node_id: &str, stall: Duration) -> Stall {
        DATA_READ_STALLS
            .lock()
            .unwrap()
            .push((node_id.to_owned(), stall));
        Stall(node_id.to_owned())
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        DATA_READ_STALLS
            .lock()
            .unwrap()
            .retain(|(id, _)| *id != self.0);
    }
}

const REQUEST_TIMEOUT_MS: u64 = 100;
const PAGE: usize = 1 << 20;
const PAGES: usize = 128;

fn node(name: &str, pool: &str) -> Node {
    let text = format!(
        r#"{{"discovery_addr":"127.0.0.1:1","global_segment_size":"{pool}","shards":1,
            "node_id":"{name}","local_hostname":"127.0.0.1","control_bind_host":"127.0.0.1",
            "disk_enabled":false,"metrics_enabled":false,"prefault_pool":false,
            "directory_replicas":2,"request_timeout_ms":{REQUEST_TIMEOUT_MS}}}"#
    );
    Node::start(Config::from_json(&text).unwrap()).unwrap()
}

fn page(key: usize) -> Vec<u8> {
    (0..PAGE)
        .map(|i| (key.wrapping_mul(131) ^ i.wrapping_mul(7) ^ (i >> 9)) as u8)
        .collect()
}

/// A data node holding `PAGES` pages of 1 MiB and a reader that knows
/// where they are (both nodes hold every directory entry).
fn data_node_and_reader(data_id: &str, reader_id: &str) -> (Node, Node, Vec<String>) {
    let data = node(data_id, "160mb");
    let reader = node(reader_id, "16mb");
    let routes = vec![data.route(), reader.route()];
    data.set_membership(1, routes.clone());
    reader.set_membership(1, routes);
    let keys: Vec<String> = (0..PAGES).map(|i| format!("slow-{i}")).collect();
    let pages: Vec<Vec<u8>> = (0..PAGES).map(page).collect();
    let refs: Vec<&[u8]> = pages.iter().map(|p| p.as_slice()).collect();
    assert!(data
        .batch_set_pages(&keys, &refs)
        .unwrap()
        .iter()
        .all(|&ok| ok));
    // The reader's replica of the directory is filled by the data node's
    // publish, which runs after the set returned.
    let deadline = Instant::now() + Duration::from_secs(10);
    while reader.batch_exists(&keys).unwrap() < PAGES {
        assert!(Instant::now() < deadline, "the reader never saw the pages");
        std::thread::sleep(Duration::from_millis(10));
    }
    (data, reader, keys)
}

fn get(reader: &Node, keys: &[String], out: &mut [Vec<u8>]) -> Vec<bool> {
    let mut dsts: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
    reader.batch_get_into(keys, &mut dsts).unwrap()
}

#[test]
fn a_large_read_slower_than_the_request_timeout_but_within_its_bound_is_a_hit() {
    let (data, reader, keys) = data_node_and_reader("slow-data-a", "slow-reader-a");
    let timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
    let bound = deadline::for_transfer(timeout, (PAGES * PAGE) as u64);
    // 128 MiB: the bound is 100 ms + 1.34 s. The answer starts three request
    // timeouts late, which a bound of the request timeout alone would fail.
    let stall = 3 * timeout;
    assert!(stall + Duration::from_millis(500) < bound);
    let _stall = Stall::new("slow-data-a", stall);
    let mut out = vec![vec![0u8; PAGE]; PAGES];
    let ok = get(&reader, &keys, &mut out);
    assert_eq!(ok.iter().filter(|&&hit| hit).count(), PAGES);
    for (i, bytes) in out.iter().enumerate() {
        assert!(*bytes == page(i), "page {i} differs");
    }
    let stats = reader.stats();
    assert_eq!(stats.read_remote_hits, PAGES as u64);
    assert_eq!((stats.remote_failures, stats.unreachable_skips), (0, 0));
    drop(data);
}

#[test]
fn a_read_past_its_bound_is_a_miss_and_writes_nothing_late() {
    let (data, reader, keys) = data_node_and_reader("slow-data-b", "slow-reader-b");
    let timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
    let few = &keys[..4];
    let bound = deadline::for_transfer(timeout, (few.len() * PAGE) as u64);
    let stall = bound + Duration::from_millis(400);
    let _stall = Stall::new("slow-data-b", stall);
    let mut out = vec![vec![0u8; PAGE]; few.len()];
    let started = Instant::now();
    let ok = get(&reader, few, &mut out);
    assert_eq!(ok, vec![false; few.len()]);
    // The pages would have been sent once the stall ended: by then the
    // reader dropped the channel, and its buffers stay untouched.
    std::thread::sleep(
        (started + stall + Duration::from_millis(300)).saturating_duration_since(Instant::now()),
    );
    assert!(out.iter().all(|bytes| bytes.iter().all(|&b| b == 0)));
    let stats = reader.stats();
    assert_eq!(stats.read_remote_hits, 0);
    assert!(stats.remote_failures > 0);
    drop(data);
}
