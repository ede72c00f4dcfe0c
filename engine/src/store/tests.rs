//! Node store tests: real shards, real pool, byte-exact comparisons.

use super::*;
use std::sync::Arc;

fn config(extra: &str) -> Config {
    let text = format!(
        r#"{{"discovery_addr":"127.0.0.1:31998","global_segment_size":"64mb","shards":2,
            "disk_enabled":false,"metrics_enabled":false{extra}}}"#
    );
    Config::from_json(&text).unwrap()
}

/// Deterministic page content that differs per key and per byte.
fn page(key: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (key.wrapping_mul(31) ^ i.wrapping_mul(7) ^ (i >> 8)) as u8)
        .collect()
}

#[test]
fn set_get_exists_round_trip_is_byte_exact() {
    let node = Node::start(config("")).unwrap();
    assert_eq!(node.shards(), 2);
    let keys: Vec<String> = (0..96).map(|i| format!("page-{i}")).collect();
    let pages: Vec<Vec<u8>> = (0..96).map(|i| page(i, 128 << 10)).collect();
    let refs: Vec<&[u8]> = pages.iter().map(|p| p.as_slice()).collect();
    assert_eq!(node.batch_set_pages(&keys, &refs).unwrap(), vec![true; 96]);
    assert_eq!(node.batch_exists(&keys).unwrap(), 96);

    let mut out: Vec<Vec<u8>> = (0..96).map(|_| vec![0u8; 128 << 10]).collect();
    let mut dsts: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
    assert_eq!(
        node.batch_get_into(&keys, &mut dsts).unwrap(),
        vec![true; 96]
    );
    assert!(out == pages, "every page comes back byte for byte");

    let s = node.stats();
    assert_eq!(s.write_requests, 96);
    assert_eq!(s.read_requests, 96);
    assert_eq!(s.read_hits, 96);
    assert_eq!(s.read_local_hits, 96);
    assert_eq!(s.bytes_read, 96 * (128 << 10));
    assert_eq!(s.bytes_written, 96 * (128 << 10));
    assert_eq!(s.pool_keys, 96);
    assert_eq!(s.exists_pages_found, 96);
    // Both shards got work: keys are spread by hash.
    assert!(node.shard_stats().iter().all(|st| st.pool_keys > 0));
}

#[test]
fn exists_is_the_longest_present_prefix_and_misses_are_false() {
    let node = Node::start(config("")).unwrap();
    let keys = ["a", "b", "c", "d", "e"];
    let data: Vec<Vec<u8>> = (0..5).map(|i| page(i, 4096)).collect();
    // Store a, b, d, e but not c.
    let stored: Vec<&[u8]> = [0, 1, 3, 4].iter().map(|&i| data[i].as_slice()).collect();
    node.batch_set_pages(&["a", "b", "d", "e"], &stored)
        .unwrap();
    assert_eq!(node.batch_exists(&keys).unwrap(), 2);
    assert_eq!(node.batch_exists(&["x"]).unwrap(), 0);
    assert_eq!(node.batch_exists::<&str>(&[]).unwrap(), 0);

    let mut out: Vec<Vec<u8>> = (0..5).map(|_| vec![0xAA; 4096]).collect();
    let mut dsts: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
    assert_eq!(
        node.batch_get_into(&keys, &mut dsts).unwrap(),
        vec![true, true, false, true, true]
    );
    assert!(
        out[2].iter().all(|&b| b == 0xAA),
        "a miss leaves the destination untouched"
    );
    assert_eq!(out[3], data[3]);
    assert_eq!(node.stats().read_misses, 1);
}

#[test]
fn wrong_destination_length_is_a_counted_miss() {
    let node = Node::start(config("")).unwrap();
    node.batch_set_pages(&["k"], &[&page(1, 8192)]).unwrap();
    let mut small = vec![0u8; 4096];
    assert_eq!(
        node.batch_get_into(&["k"], &mut [small.as_mut_slice()])
            .unwrap(),
        vec![false]
    );
    assert!(small.iter().all(|&b| b == 0));
    assert_eq!(node.stats().read_failures, 1);
}

#[test]
fn malformed_batches_are_refused_whole() {
    let node = Node::start(config("")).unwrap();
    let src = [0u8; 16];
    let r = unsafe { node.batch_set(&["a", "b"], &[src.as_ptr()], &[16, 16]) };
    assert!(matches!(
        r,
        Err(BatchError::LengthMismatch {
            keys: 2,
            addrs: 1,
            lens: 2
        })
    ));
    let many: Vec<String> = (0..MAX_BATCH_PAGES + 1).map(|i| i.to_string()).collect();
    assert_eq!(
        node.batch_exists(&many),
        Err(BatchError::TooLarge(MAX_BATCH_PAGES + 1))
    );
    // Null pointer and empty page: per-page failures, the rest of the batch lands.
    let good = page(3, 100);
    let r = unsafe {
        node.batch_set(
            &["null", "empty", "good"],
            &[std::ptr::null(), good.as_ptr(), good.as_ptr()],
            &[100, 0, 100],
        )
    };
    assert_eq!(r.unwrap(), vec![false, false, true]);
    assert_eq!(node.stats().write_failures, 2);
    assert_eq!(node.batch_exists(&["good"]).unwrap(), 1);
}

#[test]
fn namespaces_keep_models_apart() {
    let a = Node::start(config(r#","model_name":"model-a""#)).unwrap();
    let b = Node::start(config(r#","model_name":"model-b""#)).unwrap();
    assert_ne!(a.namespace().hash("k"), b.namespace().hash("k"));
    a.batch_set_pages(&["k"], &[&page(9, 64)]).unwrap();
    assert_eq!(a.batch_exists(&["k"]).unwrap(), 1);
    assert_eq!(b.batch_exists(&["k"]).unwrap(), 0);
}

#[test]
fn pool_evicts_instead_of_overflowing_and_clear_empties_it() {
    // 8 MiB pool, 2 shards, 128 KiB pages: 64 slots in all.
    let node = Node::start(config(
        r#","global_segment_size":"8mb","pool_quarantine_ms":0"#,
    ))
    .unwrap();
    let capacity = node.stats().pool_capacity_bytes;
    assert!(capacity > 0 && capacity <= 8 << 20);
    for round in 0..4 {
        let keys: Vec<String> = (0..64).map(|i| format!("r{round}-{i}")).collect();
        let pages: Vec<Vec<u8>> = (0..64).map(|i| page(round * 64 + i, 128 << 10)).collect();
        let refs: Vec<&[u8]> = pages.iter().map(|p| p.as_slice()).collect();
        assert!(node
            .batch_set_pages(&keys, &refs)
            .unwrap()
            .iter()
            .all(|&ok| ok));
        let s = node.stats();
        assert!(s.pool_bytes_used <= s.pool_capacity_bytes);
        // The newest page of the round is always still there and intact.
        let mut out = vec![0u8; 128 << 10];
        assert_eq!(
            node.batch_get_into(&keys[63..], &mut [out.as_mut_slice()])
                .unwrap(),
            vec![true]
        );
        assert_eq!(out, pages[63]);
    }
    assert!(node.stats().evictions > 0);
    node.clear();
    assert_eq!(node.stats().pool_keys, 0);
    assert_eq!(node.stats().pool_bytes_used, 0);
}

#[test]
fn concurrent_callers_get_their_own_bytes() {
    let node = Arc::new(Node::start(config("")).unwrap());
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let node = Arc::clone(&node);
            std::thread::spawn(move || {
                for b in 0..20 {
                    let keys: Vec<String> = (0..16).map(|i| format!("t{t}-b{b}-{i}")).collect();
                    let pages: Vec<Vec<u8>> = (0..16)
                        .map(|i| page(t * 10_000 + b * 100 + i, 16 << 10))
                        .collect();
                    let refs: Vec<&[u8]> = pages.iter().map(|p| p.as_slice()).collect();
                    assert!(node
                        .batch_set_pages(&keys, &refs)
                        .unwrap()
                        .iter()
                        .all(|&ok| ok));
                    let mut out: Vec<Vec<u8>> = (0..16).map(|_| vec![0u8; 16 << 10]).collect();
                    let mut dsts: Vec<&mut [u8]> =
                        out.iter_mut().map(|v| v.as_mut_slice()).collect();
                    assert!(node
                        .batch_get_into(&keys, &mut dsts)
                        .unwrap()
                        .iter()
                        .all(|&ok| ok));
                    assert!(out == pages);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(node.stats().read_hits, 6 * 20 * 16);
}

#[test]
fn pool_too_small_is_a_clear_error() {
    let err = Node::start(config(r#","global_segment_size":4096,"shards":2"#)).unwrap_err();
    assert!(err.to_string().contains("too small"), "{err}");
}

#[test]
fn require_rdma_without_a_usable_rdma_path_fails_start_with_the_reason() {
    let err = Node::start(config(r#","protocol":"rdma","require_rdma":true"#)).unwrap_err();
    assert!(matches!(err, NodeError::RdmaRequired(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.starts_with("RDMA transport unavailable ("), "{msg}");
    assert!(msg.contains("require_rdma"), "{msg}");
    // Without require_rdma the same node starts and runs on TCP.
    let node = Node::start(config(r#","protocol":"rdma""#)).unwrap();
    assert!(matches!(
        node.transport(),
        crate::rdma::Transport::TcpFallback(_)
    ));
    let node = Node::start(config(r#","protocol":"tcp""#)).unwrap();
    assert_eq!(node.transport(), &crate::rdma::Transport::Tcp);
}

/// A shard that panics while a clear or disk flush waits on it releases the
/// caller (the task's drop answers it): `close()` flushes, so a hang here
/// would hang SGLang's exit and every call queued behind it.
#[test]
fn a_shard_panicking_in_a_flush_or_clear_releases_the_caller() {
    use super::shard::maintenance_test_hooks::PANIC_NEXT;
    for (what, node_id) in [("flush", "panics-in-flush"), ("clear", "panics-in-clear")] {
        // With the disk tier, as a real flush or clear awaits its disk.
        let disk = std::env::temp_dir().join(format!("peercache-{node_id}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&disk);
        let mut c = config(&format!(r#","node_id":"{node_id}","disk_size":"8mb""#));
        c.disk_enabled = true;
        c.disk_path = disk.clone();
        let node = Arc::new(Node::start(c).unwrap());
        *PANIC_NEXT.lock().unwrap() = Some(node_id.to_owned());
        let (tx, rx) = std::sync::mpsc::channel();
        let n = Arc::clone(&node);
        std::thread::spawn(move || {
            if what == "flush" {
                n.flush_disk();
            } else {
                n.clear();
            }
            drop(n);
            let _ = tx.send(());
        });
        // Generous: the bound only tells "returned" from "waits forever".
        rx.recv_timeout(std::time::Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{what}: the caller was never released"));
        assert!(
            PANIC_NEXT.lock().unwrap().is_none(),
            "{what}: the hook fired"
        );
        // The node still answers (the other shard serves its keys; the
        // stopped shard's are misses), and its shutdown does not hang.
        let keys: Vec<String> = (0..16).map(|i| format!("after-{what}-{i}")).collect();
        let pages: Vec<Vec<u8>> = (0..16).map(|i| page(i, 4096)).collect();
        let refs: Vec<&[u8]> = pages.iter().map(|p| p.as_slice()).collect();
        let stored = node.batch_set_pages(&keys, &refs).unwrap();
        assert!(
            stored.contains(&true) && stored.contains(&false),
            "{what}: {stored:?}"
        );
        drop(Arc::try_unwrap(node).expect("the helper thread is done"));
        let _ = std::fs::remove_dir_all(&disk);
    }
}

/// Membership reaches a shard whose inbox is full, without making the
/// poster (discovery's thread) wait: discovery waiting on a stuck shard
/// stops heartbeating, and a view given up on leaves the shard routing on
/// a stale ring. Here every shard of one node blocks while more views are
/// posted than its inbox holds; the last view adds a second node, and once
/// the shards run again the first node's pages are published by that view
/// (the second node finds every one).
#[test]
fn the_newest_membership_reaches_a_shard_whose_inbox_was_full() {
    use super::shard::view_test_hooks::STALLED;
    let node_at = |id: &str| {
        let c = config(&format!(
            r#","node_id":"{id}","local_hostname":"127.0.0.1","control_bind_host":"127.0.0.1","directory_replicas":1"#
        ));
        Node::start(c).unwrap()
    };
    let a = Arc::new(node_at("full-inbox-a"));
    let b = node_at("full-inbox-b");
    b.set_membership(1, vec![a.route(), b.route()]);
    STALLED.lock().unwrap().push("full-inbox-a".to_owned());
    // More views than an inbox holds, each with one wake-up per shard,
    // then the one that matters.
    let views = crate::runtime::RuntimeOptions::default().queue_capacity as u64 + 100;
    let (tx, rx) = std::sync::mpsc::channel();
    let (poster, alone, both) = (Arc::clone(&a), vec![a.route()], vec![a.route(), b.route()]);
    std::thread::spawn(move || {
        for epoch in 1..views {
            poster.set_membership(epoch, alone.clone());
        }
        poster.set_membership(views, both);
        let _ = tx.send(());
    });
    // Generous: the bound only tells "returned" from "waits per view".
    let posted = rx.recv_timeout(Duration::from_secs(60));
    STALLED.lock().unwrap().clear();
    posted.expect("posting views waited on the stalled shards");

    let keys: Vec<String> = (0..64).map(|i| format!("full-inbox-{i}")).collect();
    let pages: Vec<Vec<u8>> = (0..64).map(|i| page(i, 4096)).collect();
    let refs: Vec<&[u8]> = pages.iter().map(|p| p.as_slice()).collect();
    assert_eq!(a.batch_set_pages(&keys, &refs).unwrap(), vec![true; 64]);
    // With a ring of two and one replica, b owns about half the entries,
    // which only a view that names b makes `a` send there.
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.batch_exists(&keys).unwrap() < keys.len() {
        assert!(
            Instant::now() < deadline,
            "b found {} of {} pages: a's shards still route on an older view",
            b.batch_exists(&keys).unwrap(),
            keys.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
