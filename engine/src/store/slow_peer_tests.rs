//! Slow and silent peers, on both sides of a read: two nodes in this
//! process over TCP on 127.0.0.1, membership installed by hand.
//!
//! - A data node whose `DataRead` answers are held back by a test hook: a
//!   large read that is slow but within its bound is a hit and leaves the
//!   peer usable; one past its bound is a miss and never writes into the
//!   caller's buffers afterwards.
//! - Raw sockets playing a reader that never greets, or that asks for a
//!   large reply and stops reading: the server closes such connections
//!   within their bounds instead of holding them (and a blocked send)
//!   forever, and keeps a greeted connection that merely sits idle. The
//!   same holds for a peer that pipelines directory requests and never
//!   reads the answers.
//! - A directory owner whose answers name other keys than the ones asked
//!   for: the reader ignores them and asks the next owner, so no other
//!   page's bytes are ever reported as a hit.

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

/// Directory puts that carry one of these keys wait this long before the
/// owner applies them.
static DIR_PUT_STALLS: Mutex<Vec<([u8; 16], Duration)>> = Mutex::new(Vec::new());

/// How long an owner waits before applying `request` (the test hook of
/// the server's put handler).
pub(super) fn dir_put_stall_for(request: &crate::wire::DirPut) -> Option<Duration> {
    let stalls = DIR_PUT_STALLS.lock().unwrap();
    request.entries.iter().find_map(|e| {
        stalls
            .iter()
            .find(|(key, _)| *key == e.key)
            .map(|&(_, stall)| stall)
    })
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

/// Short, so the tests take about a second, and not shorter: the nodes'
/// own directory traffic runs under it too, on a machine running other tests.
const REQUEST_TIMEOUT_MS: u64 = 250;
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
    // 128 MiB: the bound is 250 ms + 1.34 s. The answer starts two request
    // timeouts late, which a bound of the request timeout alone would fail.
    let stall = 2 * timeout;
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
    assert_eq!(stats.read_failures, 0);
    drop(data);
}

#[test]
fn a_read_past_its_bound_is_a_miss_and_writes_nothing_late() {
    let (data, reader, keys) = data_node_and_reader("slow-data-b", "slow-reader-b");
    let timeout = Duration::from_millis(REQUEST_TIMEOUT_MS);
    let few = &keys[..4];
    let bound = deadline::for_transfer(timeout, (few.len() * PAGE) as u64);
    // Well past the bound, so even a busy machine times the read out first.
    let stall = bound + Duration::from_millis(1500);
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
    // Located but not delivered: read failures, as well as misses.
    assert_eq!(stats.read_failures, few.len() as u64);
    assert_eq!(stats.read_misses, few.len() as u64);
    drop(data);
}

/// A raw client connection to `node`'s only shard, speaking the protocol
/// by hand (blocking socket).
struct RawPeer {
    stream: std::net::TcpStream,
    meta: rkyv::util::AlignedVec,
}

impl RawPeer {
    fn connect(node: &Node) -> RawPeer {
        let stream = std::net::TcpStream::connect(node.endpoints()[0]).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        RawPeer {
            stream,
            meta: rkyv::util::AlignedVec::new(),
        }
    }

    fn send<T: crate::wire::WireMessage>(&mut self, msg: &T, id: u64) {
        use std::io::Write;
        let mut frame = Vec::new();
        crate::wire::encode_frame(msg, id, 0, &mut frame).unwrap();
        self.stream.write_all(&frame).unwrap();
    }

    fn greet(&mut self) {
        let hello = crate::wire::Hello {
            protocol_version: crate::wire::PROTOCOL_VERSION,
            node_id: "raw-peer".into(),
            purpose: crate::wire::Purpose::Data,
        };
        self.send(&hello, 1);
        let h = crate::wire::read_frame(&mut self.stream, &mut self.meta).unwrap();
        assert_eq!(h.kind, crate::wire::Kind::HelloAck);
    }

    /// The entries `node`'s directory holds for `keys`.
    fn dir_get(&mut self, node: &Node, keys: &[String]) -> Vec<crate::wire::DirEntry> {
        let keys = keys
            .iter()
            .map(|k| node.namespace().hash(k).to_be_bytes())
            .collect();
        self.send(&crate::wire::DirGet { keys }, 2);
        crate::wire::read_frame(&mut self.stream, &mut self.meta).unwrap();
        let reply = crate::wire::decode_owned::<crate::wire::DirGetReply>(&self.meta).unwrap();
        reply.entries.into_iter().map(Option::unwrap).collect()
    }

    /// Reads until the server closes: the bytes received, or None when the
    /// connection was still open after the read timeout. A server that
    /// closed with requests of ours unread resets the connection instead.
    fn drain(&mut self) -> Option<usize> {
        use std::io::{ErrorKind, Read};
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0;
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return Some(total),
                Ok(n) => total += n,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return Some(total),
                Err(_) => return None,
            }
        }
    }
}

#[test]
fn a_connection_that_never_greets_is_closed_after_the_request_timeout() {
    let a = node("silent-a", "16mb");
    let mut raw = RawPeer::connect(&a);
    // Closed after the request timeout (250 ms); a connection left open
    // would reach the socket's 10 s read timeout instead.
    assert_eq!(raw.drain(), Some(0), "closed, not left open");
}

#[test]
fn a_greeted_connection_may_sit_idle_longer_than_the_request_timeout() {
    let (data, _reader, keys) = data_node_and_reader("idle-data", "idle-reader");
    let mut raw = RawPeer::connect(&data);
    raw.greet();
    std::thread::sleep(Duration::from_millis(5 * REQUEST_TIMEOUT_MS));
    assert_eq!(raw.dir_get(&data, &keys[..3]).len(), 3);
}

#[test]
fn a_reader_that_stops_reading_a_large_reply_is_cut_off_within_its_bound() {
    let (data, _reader, keys) = data_node_and_reader("stuck-data", "stuck-reader");
    let mut raw = RawPeer::connect(&data);
    raw.greet();
    let entries = raw.dir_get(&data, &keys);
    let request = crate::wire::DataRead {
        node: entries[0].node,
        items: entries
            .iter()
            .map(|e| crate::wire::ReadItem {
                offset: e.offset,
                generation: e.generation,
                len: e.len,
            })
            .collect(),
    };
    // 128 MiB asked for, far more than the sockets buffer; the reader
    // takes nothing until well past the bound (250 ms + 1.34 s).
    raw.send(&request, 3);
    let bound = deadline::for_transfer(
        Duration::from_millis(REQUEST_TIMEOUT_MS),
        (PAGES * PAGE) as u64,
    );
    // Past the bound with room for a busy machine: had the server not cut
    // the reply off by then, draining would let it finish and stay open.
    std::thread::sleep(bound + Duration::from_secs(2));
    let received = raw.drain().expect("the server closed the connection");
    assert!(
        received < PAGES * PAGE,
        "{received} bytes: the reply was cut off"
    );
    assert_eq!(data.stats().server_send_timeouts, 1);
}

#[test]
fn a_peer_that_pipelines_directory_requests_and_never_reads_is_cut_off() {
    use std::io::Write;
    let a = node("unread-a", "16mb");
    let mut raw = RawPeer::connect(&a);
    raw.greet();
    // Each answer is ~3.7 MiB (65,536 entries of 56 bytes): a few of them
    // fill both sockets' buffers, and the server's send of the next one
    // blocks. The requests past that point may block this side too.
    raw.stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let keys: Vec<[u8; 16]> = (0..crate::wire::MAX_BATCH_ITEMS as u128)
        .map(|k| k.to_be_bytes())
        .collect();
    let mut frame = Vec::new();
    crate::wire::encode_frame(&crate::wire::DirGet { keys }, 2, 0, &mut frame).unwrap();
    for _ in 0..8 {
        if raw.stream.write_all(&frame).is_err() {
            break;
        }
    }
    // Well past the request timeout (250 ms): had the server's send not
    // been bounded, it would still be waiting, then answer everything
    // once drained and keep the connection open (idle for 300 s).
    std::thread::sleep(Duration::from_millis(REQUEST_TIMEOUT_MS) + Duration::from_secs(2));
    let received = raw.drain().expect("the server closed the connection");
    assert!(
        received < 8 * 56 * crate::wire::MAX_BATCH_ITEMS,
        "{received} bytes"
    );
    assert_eq!(a.stats().server_send_timeouts, 1);
}

/// A directory owner on raw sockets that answers each `DirGet` with the
/// entries of `entries` for the keys asked, in reverse order: replies whose
/// entries name other keys than their positions. Returns its route and a
/// count of the keys it was asked about.
fn confused_owner(
    entries: std::collections::HashMap<[u8; 16], crate::wire::DirEntry>,
) -> (MemberRoute, Arc<AtomicUsize>) {
    use crate::wire::{DirGet, DirGetReply, HelloAck, Kind};
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let route = MemberRoute {
        node_id: "confused-owner".into(),
        node_ref: NodeRef(0xC0FFEE),
        shard_endpoints: vec![listener.local_addr().unwrap()],
    };
    let asked = Arc::new(AtomicUsize::new(0));
    let entries = Arc::new(entries);
    let counter = Arc::clone(&asked);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let (asked, entries) = (Arc::clone(&counter), Arc::clone(&entries));
            std::thread::spawn(move || {
                let mut meta = rkyv::util::AlignedVec::new();
                while let Ok(h) = crate::wire::read_frame(&mut stream, &mut meta) {
                    let mut frame = Vec::new();
                    let encoded = match h.kind {
                        Kind::Hello => {
                            let ack = HelloAck {
                                node_id: "confused-owner".into(),
                            };
                            crate::wire::encode_frame(&ack, h.request_id, 0, &mut frame)
                        }
                        Kind::DirGet => {
                            let request = crate::wire::decode_owned::<DirGet>(&meta).unwrap();
                            asked.fetch_add(request.keys.len(), Ordering::SeqCst);
                            let mut found: Vec<_> = request
                                .keys
                                .iter()
                                .map(|k| entries.get(k).copied())
                                .collect();
                            found.reverse();
                            let reply = DirGetReply { entries: found };
                            crate::wire::encode_frame(&reply, h.request_id, 0, &mut frame)
                        }
                        _ => return,
                    };
                    if encoded.is_err() || stream.write_all(&frame).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (route, asked)
}

#[test]
fn directory_answers_naming_other_keys_are_ignored_and_the_next_owner_asked() {
    let (data, reader, keys) = data_node_and_reader("confused-data", "confused-reader");
    let mut raw = RawPeer::connect(&data);
    raw.greet();
    let entries = raw
        .dir_get(&data, &keys)
        .into_iter()
        .map(|e| (e.key, e))
        .collect();
    let (owner, asked) = confused_owner(entries);
    // Only the reader sees the confused owner: it is now the first owner
    // of some keys the reader no longer holds a replica of.
    reader.set_membership(2, vec![data.route(), reader.route(), owner]);
    let mut out = vec![vec![0u8; PAGE]; PAGES];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = get(&reader, &keys, &mut out);
        // Every page reported a hit holds its own bytes, whichever owner
        // answered.
        for (i, bytes) in out.iter().enumerate() {
            assert!(
                !ok[i] || *bytes == page(i),
                "page {i}: a hit with another page's bytes"
            );
        }
        if asked.load(Ordering::SeqCst) > 1 && ok.iter().all(|&hit| hit) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "asked {} keys, {} of {PAGES} hits",
            asked.load(Ordering::SeqCst),
            ok.iter().filter(|&&hit| hit).count()
        );
        out.iter_mut().for_each(|bytes| bytes.fill(0));
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_put_overtaken_by_the_pages_delete_is_corrected_once_answered() {
    // The owner (o) holds the page's put back; meanwhile the producer (a)
    // evicts the page, and its delete, on another connection, lands first.
    // The held-back put then restores an entry naming a freed slot, which
    // nothing else would remove: the producer's answered publish sees the
    // page gone and deletes it again.
    // Within the request timeout (250 ms): a put answered later would mark
    // the owner unreachable, and the second delete would not be sent.
    const HELD_BACK: Duration = Duration::from_millis(150);
    let a = node("overtaken-a", "16mb");
    let o = node("overtaken-o", "16mb");
    let routes = vec![a.route(), o.route()];
    a.set_membership(1, routes.clone());
    o.set_membership(1, routes);
    let key = "overtaken-page";
    let hash = a.namespace().hash(key).to_be_bytes();
    DIR_PUT_STALLS.lock().unwrap().push((hash, HELD_BACK));
    let a = Arc::new(a);
    // One SGLang thread stores the page (its set waits for the owner's
    // answer), another floods the pool meanwhile: 16 pages of 1 MiB fill
    // it and evict the first page, whose delete leaves at once.
    let first_set = {
        let a = Arc::clone(&a);
        std::thread::spawn(move || a.batch_set_pages(&[key], &[page(0).as_slice()]).unwrap())
    };
    // Stored (counted before its publish starts): its put is on the way.
    let deadline = Instant::now() + Duration::from_secs(10);
    while a.stats().write_requests == 0 {
        assert!(Instant::now() < deadline, "the first set never started");
        std::thread::sleep(Duration::from_millis(1));
    }
    let flood: Vec<String> = (0..24).map(|i| format!("overtaken-flood-{i}")).collect();
    let pages: Vec<Vec<u8>> = (1..=24).map(page).collect();
    let refs: Vec<&[u8]> = pages.iter().map(|p| p.as_slice()).collect();
    a.batch_set_pages(&flood, &refs).unwrap();
    assert!(a.stats().evictions > 0);
    assert_eq!(first_set.join().unwrap(), vec![true]);
    // The delete may well be applied already; what matters is after the
    // held-back put lands. Then, long before any refresh (60 s):
    std::thread::sleep(HELD_BACK + Duration::from_millis(300));
    let deadline = Instant::now() + Duration::from_secs(10);
    while o.batch_exists(&[key]).unwrap() != 0 {
        assert!(
            Instant::now() < deadline,
            "the owner still lists the evicted page"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    DIR_PUT_STALLS.lock().unwrap().retain(|(k, _)| *k != hash);
}
