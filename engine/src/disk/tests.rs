//! Node-level disk tier tests: real shards, real slab files in a scratch
//! directory, byte-exact comparisons. Every wait is bounded.

use crate::config::Config;
use crate::store::Node;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Slab directories whose disk reads (or writes) stall this long first: a
/// device that stops answering, for one test's node only.
type Stalls = Mutex<Vec<(PathBuf, Duration)>>;
static STALLED_DIRS: Stalls = Mutex::new(Vec::new());
static STALLED_WRITE_DIRS: Stalls = Mutex::new(Vec::new());

/// How long an operation on the slab at `path` should stall, per `stalls`.
fn stall_for(stalls: &Stalls, path: &Path) -> Option<Duration> {
    let dirs = stalls.lock().unwrap();
    dirs.iter()
        .find(|(dir, _)| path.starts_with(dir))
        .map(|&(_, stall)| stall)
}

/// How long a read of the slab at `path` should stall (test hook of
/// [`super::DiskTier::read`]).
pub(super) fn read_stall_for(path: &Path) -> Option<Duration> {
    stall_for(&STALLED_DIRS, path)
}

/// How long a write to the slab at `path` should stall (test hook of
/// [`super::DiskTier::write`]).
pub(super) fn write_stall_for(path: &Path) -> Option<Duration> {
    stall_for(&STALLED_WRITE_DIRS, path)
}

const PAGE: usize = 16 << 10;

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "peercache-disk-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A node with an 8 MiB pool (4 MiB and 256 pages of 16 KiB per shard) and
/// a disk tier in `dir`.
fn node(dir: &Path, disk_size: &str, disk_enabled: bool) -> Node {
    Node::start(config("disk-test", dir, disk_size, disk_enabled)).unwrap()
}

/// The config of [`node`], under another `node_id`.
fn config(node_id: &str, dir: &Path, disk_size: &str, disk_enabled: bool) -> Config {
    let text = format!(
        r#"{{"discovery_addr":"127.0.0.1:31998","global_segment_size":"8mb","shards":2,
            "node_id":"{node_id}","metrics_enabled":false,"pool_quarantine_ms":0,
            "disk_enabled":{disk_enabled},"disk_path":"{}","disk_size":"{disk_size}"}}"#,
        dir.display()
    );
    Config::from_json(&text).unwrap()
}

/// A node `node_id` in `dir` whose disk writes never finish, holding 32
/// pages, with a flush of it running on another thread; the receiver hears
/// when that flush returns.
fn flushing_behind_stalled_writes(
    dir: &Scratch,
    node_id: &str,
) -> (std::sync::Arc<Node>, std::sync::mpsc::Receiver<()>) {
    STALLED_WRITE_DIRS
        .lock()
        .unwrap()
        .push((dir.0.clone(), Duration::from_secs(600)));
    let node = std::sync::Arc::new(Node::start(config(node_id, &dir.0, "64mb", true)).unwrap());
    let ks = keys(32);
    let pages: Vec<Vec<u8>> = ks.iter().map(|k| page(k)).collect();
    let refs: Vec<&[u8]> = pages.iter().map(|p| p.as_slice()).collect();
    assert!(node
        .batch_set_pages(&ks, &refs)
        .unwrap()
        .iter()
        .all(|&ok| ok));
    let (tx, flushed) = std::sync::mpsc::channel();
    let n = std::sync::Arc::clone(&node);
    std::thread::spawn(move || {
        n.flush_disk();
        drop(n);
        let _ = tx.send(());
    });
    (node, flushed)
}

/// Page content: splitmix64 words seeded by the key's hash, so no two keys
/// share a run of bytes (a damaged copy can be found by its content).
fn page(key: &str) -> Vec<u8> {
    let seed = xxhash_rust::xxh3::xxh3_64(key.as_bytes());
    (0..PAGE / 8)
        .flat_map(|i| {
            let mut z = seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)).to_le_bytes()
        })
        .collect()
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("page-{i}")).collect()
}

/// Sets `keys` in batches of 32, letting the disk catch up after each (the
/// pool holds 512 pages, so without that the first pages would be evicted
/// before their queued writes ran).
fn set_through(node: &Node, keys: &[String]) {
    for batch in keys.chunks(32) {
        let pages: Vec<Vec<u8>> = batch.iter().map(|k| page(k)).collect();
        let refs: Vec<&[u8]> = pages.iter().map(|p| p.as_slice()).collect();
        assert!(node
            .batch_set_pages(batch, &refs)
            .unwrap()
            .iter()
            .all(|&ok| ok));
        node.flush_disk();
    }
}

/// Gets `keys`; returns which arrived and whether each that arrived is byte-exact.
fn get(node: &Node, keys: &[String]) -> Vec<bool> {
    let mut out: Vec<Vec<u8>> = keys.iter().map(|_| vec![0u8; PAGE]).collect();
    let mut dsts: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
    let ok = node.batch_get_into(keys, &mut dsts).unwrap();
    for ((k, got), &ok) in keys.iter().zip(&out).zip(&ok) {
        if ok {
            assert!(*got == page(k), "{k} came back with other bytes");
        }
    }
    ok
}

/// A node of `name`'s scratch directory holding 1024 pages written through
/// to disk; the pool holds 512, so the first half are on disk only.
fn written_through(name: &str) -> (Scratch, Node, Vec<String>) {
    let dir = Scratch::new(name);
    let node = node(&dir.0, "64mb", true);
    let ks = keys(1024);
    set_through(&node, &ks);
    (dir, node, ks)
}

fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn evicted_pages_are_promoted_back_byte_exact() {
    let (_dir, node, ks) = written_through("promote");
    let s = node.stats();
    assert_eq!(s.disk_writes, 1024);
    assert_eq!(s.disk_keys, 1024);
    assert_eq!(s.disk_bytes_used, 1024 * PAGE as u64);
    assert!(
        s.evictions >= 512,
        "the pool holds 512 pages: {}",
        s.evictions
    );

    // All of them, in one batch twice the pool: byte-exact.
    assert_eq!(get(&node, &ks), vec![true; 1024]);
    let s = node.stats();
    assert!(s.read_disk_hits >= 512, "{s:?}");
    assert_eq!(s.promotes, s.read_disk_hits);
    assert_eq!(s.read_hits, 1024);
    assert_eq!(s.read_local_hits + s.read_disk_hits, 1024);
    assert_eq!(s.disk_corrupt_pages, 0);
    assert_eq!(node.batch_exists(&ks).unwrap(), 1024);
}

#[test]
fn exists_reports_disk_pages_and_warms_them_for_the_get() {
    let (_dir, node, ks) = written_through("exists");
    // The first pages were evicted long ago: only on disk now.
    let cold = &ks[..8];
    let before = node.stats();
    assert_eq!(node.batch_exists(cold).unwrap(), 8);
    eventually("exists warming", || {
        node.stats().promotes >= before.promotes + 8
    });
    assert_eq!(get(&node, cold), vec![true; 8]);
    let s = node.stats();
    assert_eq!(
        s.read_disk_hits, before.read_disk_hits,
        "served from the pool"
    );
    assert_eq!(s.read_local_hits, before.read_local_hits + 8);
    assert!(!node.batch_exists_each(&["never-set"]).unwrap()[0]);
}

#[test]
fn pages_survive_a_clean_restart() {
    let dir = Scratch::new("restart");
    let ks = keys(300);
    {
        let node = node(&dir.0, "64mb", true);
        set_through(&node, &ks);
    } // dropped: shutdown flushes and syncs
    let node = node(&dir.0, "64mb", true);
    let s = node.stats();
    assert_eq!(s.disk_keys, 300, "index rebuilt from the slot headers");
    assert_eq!(s.pool_keys, 0);
    assert_eq!(node.batch_exists(&ks).unwrap(), 300);
    assert_eq!(get(&node, &ks), vec![true; 300]);
    assert_eq!(node.stats().disk_corrupt_pages, 0);
}

#[test]
fn clear_forgets_disk_pages_now_and_after_a_restart() {
    let dir = Scratch::new("clear");
    let ks = keys(64);
    {
        let node = node(&dir.0, "64mb", true);
        set_through(&node, &ks);
        node.clear();
        assert_eq!(node.stats().disk_keys, 0);
        assert_eq!(node.batch_exists(&ks).unwrap(), 0);
    }
    let node = node(&dir.0, "64mb", true);
    assert_eq!(node.stats().disk_keys, 0);
    assert_eq!(get(&node, &ks), vec![false; 64]);
}

/// Flips one byte of `needle`'s first occurrence in `file`.
fn flip_byte_of(file: &Path, needle: &[u8]) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the page is in the slab");
    bytes[at + needle.len() / 2] ^= 0x01;
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn a_flipped_byte_is_detected_and_never_returned() {
    let dir = Scratch::new("flip");
    let ks = keys(16);
    {
        let node = node(&dir.0, "64mb", true);
        set_through(&node, &ks);
    }
    let victim = &ks[3];
    let shard_files: Vec<PathBuf> = (0..2)
        .map(|s| dir.0.join("disk-test").join(format!("shard-{s}.slab")))
        .collect();
    let needle = &page(victim)[..256];
    let file = shard_files
        .iter()
        .find(|f| {
            std::fs::read(f)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle)
        })
        .unwrap();
    flip_byte_of(file, needle);

    let node = node(&dir.0, "64mb", true);
    let ok = get(&node, &ks);
    assert!(
        !ok[3],
        "the damaged page is a miss: {ok:?} {:?}",
        node.stats()
    );
    assert_eq!(
        ok.iter().filter(|&&b| b).count(),
        15,
        "the others are intact"
    );
    let s = node.stats();
    assert_eq!(s.disk_corrupt_pages, 1);
    assert_eq!(s.disk_keys, 15, "the damaged page was dropped");
    assert!(!node.batch_exists_each(&[victim]).unwrap()[0]);
}

/// Zeroes the second half of `needle`'s page in `file`, as a write cut
/// short by a crash leaves it (header written, data not).
fn tear_page_of(file: &Path, needle: &[u8]) {
    let mut bytes = std::fs::read(file).unwrap();
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the page is in the slab");
    bytes[at + PAGE / 2..at + PAGE].fill(0);
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn a_torn_write_is_detected_after_a_restart() {
    let dir = Scratch::new("torn");
    let ks = keys(16);
    {
        let node = node(&dir.0, "64mb", true);
        set_through(&node, &ks);
    }
    let needle = &page(&ks[7])[..256];
    for shard in 0..2 {
        let file = dir.0.join("disk-test").join(format!("shard-{shard}.slab"));
        let bytes = std::fs::read(&file).unwrap();
        if bytes.windows(needle.len()).any(|w| w == needle) {
            tear_page_of(&file, needle);
        }
    }
    let node = node(&dir.0, "64mb", true);
    assert_eq!(node.stats().disk_keys, 16, "the header alone looks fine");
    let ok = get(&node, &ks);
    assert!(!ok[7]);
    assert_eq!(ok.iter().filter(|&&b| b).count(), 15);
    assert_eq!(node.stats().disk_corrupt_pages, 1);
}

#[test]
fn a_restart_with_another_disk_size_starts_the_slabs_empty() {
    let dir = Scratch::new("resize");
    let ks = keys(16);
    {
        let node = node(&dir.0, "64mb", true);
        set_through(&node, &ks);
    }
    // Slots would move: the files are started afresh, not misread.
    let node = node(&dir.0, "32mb", true);
    let s = node.stats();
    assert_eq!(s.disk_keys, 0);
    assert!(s.disk_capacity_bytes <= 32 << 20);
    assert_eq!(get(&node, &ks), vec![false; 16]);
}

#[test]
fn disk_size_bounds_the_slab_and_lru_evicts() {
    let dir = Scratch::new("bound");
    // 4 MiB for 2 shards: 2 MiB per shard, about 96 pages of 16 KiB each.
    let node = node(&dir.0, "4mb", true);
    let ks = keys(1024);
    set_through(&node, &ks);
    let s = node.stats();
    assert!(
        s.disk_capacity_bytes <= 4 << 20,
        "{}",
        s.disk_capacity_bytes
    );
    assert!(s.disk_bytes_used <= s.disk_capacity_bytes);
    assert!(s.disk_evictions > 0);
    assert_eq!(s.disk_writes, s.disk_keys + s.disk_evictions);
    for shard in 0..2 {
        let path = dir.0.join("disk-test").join(format!("shard-{shard}.slab"));
        let size = std::fs::metadata(&path).unwrap().len();
        assert!(size <= 2 << 20, "{} is {size} bytes", path.display());
    }
    // The oldest pages left both tiers; the newest are still served.
    assert_eq!(get(&node, &ks[..16]), vec![false; 16]);
    assert_eq!(get(&node, &ks[1008..]), vec![true; 16]);
}

#[test]
fn an_unwritable_disk_path_leaves_a_memory_only_node() {
    let dir = Scratch::new("unwritable");
    // A path under a regular file cannot be created, even by root.
    let file = dir.0.join("not-a-directory");
    std::fs::write(&file, b"x").unwrap();
    let node = node(&file.join("sub"), "64mb", true);
    let ks = keys(8);
    set_through(&node, &ks);
    assert_eq!(get(&node, &ks), vec![true; 8]);
    let s = node.stats();
    assert_eq!(s.disk_capacity_bytes, 0);
    assert_eq!(s.disk_writes, 0);
}

#[test]
fn disk_disabled_writes_nothing() {
    let dir = Scratch::new("disabled");
    let node = node(&dir.0, "64mb", false);
    set_through(&node, &keys(8));
    assert_eq!(node.stats().disk_capacity_bytes, 0);
    assert!(!dir.0.join("disk-test").exists());
}

#[test]
fn enospc_and_short_writes_stop_writes_other_errors_are_counted() {
    use super::{layout::Geometry, DiskTier, NodeDisk};
    use crate::keys::KeyHash;
    use crate::pool::Location;
    use crate::store::ShardStats;
    use std::io::{Error, ErrorKind};
    use std::sync::Arc;

    let dir = Scratch::new("errors");
    let nd = NodeDisk {
        dir: dir.0.clone(),
        geometry: Geometry::for_budget(1 << 20, 1).unwrap(),
        claim: None,
    };
    let page = Location {
        offset: 0,
        generation: 0,
        len: 4096,
    };
    let cases = [
        (Error::from_raw_os_error(libc::ENOSPC), true),
        (Error::new(ErrorKind::StorageFull, "short write"), true),
        (Error::from_raw_os_error(libc::EIO), false),
    ];
    for (error, stops) in cases {
        let stats = Arc::new(ShardStats::default());
        let tier = DiskTier::open(&nd, 0, Arc::clone(&stats)).unwrap();
        tier.write_failed(&error);
        let s = stats.snapshot();
        assert_eq!(s.disk_writes_stopped, u64::from(stops), "{error}");
        assert_eq!(s.disk_write_errors, u64::from(!stops), "{error}");
        // A stopped tier drops new writes at once, counted.
        tier.enqueue(KeyHash(1), page);
        assert_eq!(
            stats.snapshot().disk_write_drops,
            u64::from(stops),
            "{error}"
        );
    }
}

#[test]
fn a_slab_the_file_system_cannot_hold_is_not_written_at_all() {
    use super::{layout::Geometry, DiskTier, NodeDisk};
    use crate::store::ShardStats;
    use std::sync::Arc;

    let dir = Scratch::new("reserve");
    // Twice what the scratch directory's file system has free.
    let path = std::ffi::CString::new(dir.0.to_str().unwrap()).unwrap();
    // SAFETY: statvfs fills the plain struct or fails.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
    let free = st.f_bavail as u64 * st.f_frsize as u64;
    let nd = NodeDisk {
        dir: dir.0.clone(),
        geometry: Geometry::for_budget(2 * free + (1 << 30), 1).unwrap(),
        claim: None,
    };
    let stats = Arc::new(ShardStats::default());
    let tier = DiskTier::open(&nd, 0, Arc::clone(&stats)).unwrap();
    assert_eq!(stats.snapshot().disk_writes_stopped, 1);
    let len = std::fs::metadata(tier.path()).unwrap().len();
    assert_eq!(len, super::layout::BLOCK as u64, "only the header block");
}

/// Nodes with a generated `node_id` mark and lock their directory; a node
/// starting later removes the ones whose node is gone (their pages can never
/// be found again), and leaves a running node's and a named node's alone.
#[test]
fn generated_node_directories_are_reclaimed_once_their_node_is_gone() {
    let dir = Scratch::new("reclaim");
    let unnamed = || {
        let text = format!(
            r#"{{"discovery_addr":"127.0.0.1:31998","global_segment_size":"8mb","shards":2,
                "metrics_enabled":false,"disk_path":"{}","disk_size":"1mb"}}"#,
            dir.0.display()
        );
        Node::start(Config::from_json(&text).unwrap()).unwrap()
    };
    let subdirs = || {
        let mut names: Vec<String> = std::fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    let mut named = node(&dir.0, "1mb", true);
    named.shutdown();
    let mut first = unnamed();
    let first_dir = dir.0.join(first.node_id());
    assert!(first_dir.join(super::claim::GENERATED_MARKER).is_file());
    // A second node while the first runs: both directories stay.
    let mut second = unnamed();
    let mut expected = vec![
        "disk-test".to_string(),
        first.node_id().to_string(),
        second.node_id().to_string(),
    ];
    expected.sort();
    assert_eq!(subdirs(), expected);
    first.shutdown();
    drop(first);
    second.shutdown();
    drop(second);
    // The next node removes both abandoned directories; the named one stays.
    let third = unnamed();
    let mut expected = vec!["disk-test".to_string(), third.node_id().to_string()];
    expected.sort();
    assert_eq!(subdirs(), expected);
    assert!(!first_dir.exists());
}

#[test]
fn a_stalled_disk_makes_misses_after_the_timeout_and_writes_nothing_late() {
    let (dir, node, ks) = written_through("stall");
    // The first 512 were evicted from the pool (it holds 512): on disk only.
    // (No exists here: it would start promoting them.)
    let on_disk: Vec<String> = ks[..64].to_vec();

    let stall = Duration::from_secs(4);
    STALLED_DIRS.lock().unwrap().push((dir.0.clone(), stall));
    let mut out: Vec<Vec<u8>> = on_disk.iter().map(|_| vec![0u8; PAGE]).collect();
    let mut dsts: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
    let ok = node.batch_get_into(&on_disk, &mut dsts).unwrap();
    assert_eq!(
        ok,
        vec![false; 64],
        "pages behind a stalled disk are misses"
    );
    assert_eq!(node.stats().disk_read_timeouts, 2, "one per shard");
    // The cancelled reads never land in the caller's buffers, even after
    // the stall would have ended.
    std::thread::sleep(stall);
    assert!(
        out.iter().all(|p| p.iter().all(|&b| b == 0)),
        "a page was written after its get returned"
    );

    // The device answers again: the same pages come back byte-exact.
    STALLED_DIRS.lock().unwrap().clear();
    assert_eq!(get(&node, &on_disk), vec![true; 64]);
}

/// A disk whose writes stop finishing does not hold a flush (or the
/// shutdown that flushes) past the drain's stall limit.
#[test]
fn a_flush_gives_up_on_writes_that_stop_finishing() {
    let dir = Scratch::new("write-stall");
    let (node, rx) = flushing_behind_stalled_writes(&dir, "disk-test");
    // Bounded only to tell "gave up" from "waits for the stalled writes".
    let returned = rx.recv_timeout(super::DRAIN_STALL_LIMIT * 10).is_ok();
    STALLED_WRITE_DIRS
        .lock()
        .unwrap()
        .retain(|(d, _)| d != &dir.0);
    assert!(returned, "the flush waited for writes that never finish");
    assert_eq!(node.stats().disk_writes, 0, "no write finished");
}

/// Two running nodes given the same node_id on one disk_path would write
/// the same slab files: the second does not start, and says why; once the
/// first is gone the id is free again.
#[test]
fn a_node_id_in_use_by_a_running_node_is_refused() {
    let dir = Scratch::new("id-in-use");
    let first = node(&dir.0, "64mb", true);
    let second = Node::start(config("disk-test", &dir.0, "64mb", true));
    let err = second
        .expect_err("a second node of the same id must not start")
        .to_string();
    assert!(
        err.contains("node_id \"disk-test\"") && err.contains("locked"),
        "{err}"
    );
    drop(first);
    drop(node(&dir.0, "64mb", true));
}

/// A shard that panics while other tasks of it wait (here a flush held by a
/// disk whose writes stopped) answers those tasks' callers too: glommio
/// never drops a pending task of a dead executor, so without the shard's
/// own record of what it owes, the flush would wait forever.
#[test]
fn a_panic_on_a_shard_answers_the_callers_its_other_tasks_hold() {
    use crate::store::shard::maintenance_test_hooks::PANIC_NEXT;
    let dir = Scratch::new("panic-while-flushing");
    // The flush waits on both shards for writes that never finish.
    let (node, flushed) = flushing_behind_stalled_writes(&dir, "panics-while-flushing");
    std::thread::sleep(Duration::from_millis(200));
    // While it waits, a task of one shard panics.
    *PANIC_NEXT.lock().unwrap() = Some("panics-while-flushing".to_owned());
    node.clear();
    assert!(PANIC_NEXT.lock().unwrap().is_none(), "the panic happened");
    // Bounded only to tell "answered" from "waits forever"; the live shard's
    // part gives up after the drain's stall limit.
    let returned = flushed.recv_timeout(super::DRAIN_STALL_LIMIT * 10).is_ok();
    STALLED_WRITE_DIRS
        .lock()
        .unwrap()
        .retain(|(d, _)| d != &dir.0);
    assert!(
        returned,
        "the flush waiting on the panicked shard was never answered"
    );
    drop(std::sync::Arc::try_unwrap(node).expect("the flushing thread is done"));
}
