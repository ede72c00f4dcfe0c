//! A child forked (without exec) from a process running a node keeps none of
//! the node's listening sockets: not its shard ports, not the host's meta
//! port it serves, not its metrics port. Otherwise such a child, outliving
//! the node's process, would hold those ports in LISTEN where nobody accepts
//! (see `peercache_engine::fork`).

use peercache_engine::{Config, Node};
use peercache_tests::node_process::free_port;
use std::collections::HashSet;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Inodes of the sockets listening on one of `ports` (IPv4 and IPv6).
fn listening_inodes(ports: &HashSet<u16>) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st ... inode: local_address is
            // HEXADDR:HEXPORT, st 0A is LISTEN, the inode is field 9.
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if fields[3] == "0A" && port.is_some_and(|p| ports.contains(&p)) {
                inodes.insert(fields[9].parse().expect("an inode number"));
            }
        }
    }
    inodes
}

/// This process's descriptors for the sockets `inodes`.
fn descriptors_of(inodes: &HashSet<u64>) -> Vec<RawFd> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let link = std::fs::read_link(entry.path()).ok()?;
            let inode: u64 = link
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            if !inodes.contains(&inode) {
                return None;
            }
            entry.file_name().to_str()?.parse().ok()
        })
        .collect()
}

fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Forks; returns, per descriptor, whether it is open in the child.
fn open_in_child(fds: &[RawFd]) -> Vec<bool> {
    assert!(fds.len() < 8, "the child answers in its exit status");
    // SAFETY: the child calls only fcntl and _exit (async-signal-safe), so
    // forking this multi-threaded process is sound.
    match unsafe { libc::fork() } {
        0 => {
            let bits = fds
                .iter()
                .enumerate()
                .filter(|&(_, &fd)| is_open(fd))
                .fold(0, |bits, (i, _)| bits | (1 << i));
            // SAFETY: ends the child without running the parent's exit path.
            unsafe { libc::_exit(bits) }
        }
        pid => {
            assert!(pid > 0, "fork failed");
            let mut status = 0;
            // SAFETY: waits for the child just forked.
            assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
            assert!(libc::WIFEXITED(status), "the child exited normally");
            let bits = libc::WEXITSTATUS(status);
            (0..fds.len()).map(|i| bits & (1 << i) != 0).collect()
        }
    }
}

#[test]
fn a_forked_child_keeps_none_of_the_nodes_listening_sockets() {
    let meta_port = free_port("127.0.0.1");
    let config = Config::from_json(&format!(
        r#"{{"discovery_addr":"127.0.0.1:{meta_port}","global_segment_size":"16mb","shards":2,
            "node_id":"forked","local_hostname":"127.0.0.1","control_bind_host":"127.0.0.1",
            "disk_enabled":false,"metrics_enabled":true,"metrics_port":0,
            "metrics_bind_host":"127.0.0.1","prefault_pool":false}}"#
    ))
    .unwrap();
    let node = Node::start_cluster(config).unwrap();
    let mut ports: HashSet<u16> = node.endpoints().iter().map(|e| e.port()).collect();
    ports.insert(node.metrics_addr().expect("metrics are on").port());
    ports.insert(meta_port);
    let expected = node.endpoints().len() + 2;
    // The meta server binds on its own thread, shortly after start.
    let deadline = Instant::now() + Duration::from_secs(10);
    let fds = loop {
        let fds = descriptors_of(&listening_inodes(&ports));
        if fds.len() == expected {
            break fds;
        }
        assert!(
            Instant::now() < deadline,
            "found {} of the {expected} listening sockets (ports {ports:?})",
            fds.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    };

    assert_eq!(
        open_in_child(&fds),
        vec![false; fds.len()],
        "the child closed every listener of the node (descriptors {fds:?})"
    );
    assert!(fds.iter().all(|&fd| is_open(fd)), "the parent keeps them");
    // And the node still serves: a set and a get after the fork.
    let key = vec!["after-fork".to_owned()];
    let page = vec![7u8; 4096];
    assert_eq!(node.batch_set_pages(&key, &[&page]).unwrap(), vec![true]);
    assert_eq!(node.batch_exists(&key).unwrap(), 1);
}
