//! Listening sockets a child forked from this process must not keep.
//!
//! A child forked without exec (Python's `multiprocessing` with the `fork`
//! start method, a library's worker pool) inherits every descriptor, and
//! `SOCK_CLOEXEC` only acts at exec. A listening socket held by such a child
//! outlives this process: when this process dies, the child's copy stays in
//! LISTEN, so connections to a shard's port (bound with `SO_REUSEPORT`, so a
//! restarted node shares it with the orphan) or to the host's meta port queue
//! up where nobody accepts them, and no co-located rank can take the meta port
//! over. So each listener PeerCache opens is registered here while it is
//! open, and a `pthread_atfork` child handler closes the registered
//! descriptors in every forked child. (A clean shutdown of a shard takes its
//! socket out of LISTEN for every holder; the meta and metrics listeners
//! have no such step and rely on this.)
//!
//! The registry is a fixed array of atomics because the child handler runs
//! between `fork` and the child's first instruction, where only
//! async-signal-safe work is allowed: no allocation, no lock (another thread
//! of the parent may have held it at the fork). Each slot keeps the socket's
//! inode next to its descriptor, and the handler closes a descriptor only if
//! `fstat` still finds that socket behind it: a listener closed by code we do
//! not control before its registration was dropped (tiny_http closes the
//! metrics listener on an accept error) may have left its number to an
//! unrelated descriptor, which the child must keep. Connected sockets are not
//! registered: a peer holding one to a dead process is bounded by its request
//! timeout.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Once;

/// Most listeners registered at once. A node registers one per shard, and
/// one each for the meta port and the metrics port it serves; several nodes
/// in one process (tests) share the array. A listener that finds no free
/// slot stays inherited by children, as before this module, and says so.
pub const MAX_LISTENERS: usize = 256;

const FREE: RawFd = -1;

#[allow(clippy::declare_interior_mutable_const)] // only the array initializers
const FREE_SLOT: AtomicI32 = AtomicI32::new(FREE);
#[allow(clippy::declare_interior_mutable_const)]
const NO_INODE: AtomicU64 = AtomicU64::new(0);

/// The registered descriptors (`FREE` when a slot is unused).
static SLOTS: [AtomicI32; MAX_LISTENERS] = [FREE_SLOT; MAX_LISTENERS];
/// The socket inode of each slot's descriptor: written once the slot is
/// claimed, reset to 0 before it is freed.
static INODES: [AtomicU64; MAX_LISTENERS] = [NO_INODE; MAX_LISTENERS];

static INSTALL: Once = Once::new();

/// Keeps `fd` closed in forked children while alive. Drop it before the
/// descriptor is closed where we can; where we cannot (a library closes it),
/// the inode check keeps the child from closing a reused number.
#[derive(Debug)]
pub struct ClosedInChildren {
    slot: usize,
    fd: RawFd,
}

impl Drop for ClosedInChildren {
    fn drop(&mut self) {
        // Inode first: a fork in between finds a mismatch and leaves the
        // descriptor to the child, which is harmless; freeing the slot first
        // could let a new registration's inode be wiped here.
        INODES[self.slot].store(0, Ordering::SeqCst);
        let _ =
            SLOTS[self.slot].compare_exchange(self.fd, FREE, Ordering::SeqCst, Ordering::SeqCst);
    }
}

/// The inode of the file behind `fd` (None when `fd` is not open).
fn inode_of(fd: RawFd) -> Option<u64> {
    let mut stat = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes a whole `stat` on success; read only then.
    (unsafe { libc::fstat(fd, stat.as_mut_ptr()) } == 0)
        .then(|| unsafe { stat.assume_init() }.st_ino)
}

/// Registers the listening socket `fd` to be closed in every child forked
/// from now on, until the returned guard is dropped. `what` names it in the
/// warning when the registry is full (then `None`).
pub fn close_in_children(fd: RawFd, what: &str) -> Option<ClosedInChildren> {
    INSTALL.call_once(|| {
        // SAFETY: registers a handler that only uses atomics, fstat(2) and
        // close(2), all async-signal-safe.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(close_registered_in_child)) };
        if rc != 0 {
            tracing::warn!(
                "pthread_atfork failed ({rc}); a child forked from this process keeps PeerCache's listening sockets"
            );
        }
    });
    let Some(inode) = inode_of(fd) else {
        tracing::warn!(
            "{what}: descriptor {fd} is not open; not registered for closing in forked children"
        );
        return None;
    };
    for (slot, cell) in SLOTS.iter().enumerate() {
        // Claimed before the inode is written, so two registrations never
        // share a slot; until the inode is in place the handler finds a
        // mismatch and leaves the descriptor open (as before registering).
        if cell
            .compare_exchange(FREE, fd, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            INODES[slot].store(inode, Ordering::SeqCst);
            return Some(ClosedInChildren { slot, fd });
        }
    }
    tracing::warn!(
        "{what}: more than {MAX_LISTENERS} listening sockets in this process; a child forked from it keeps this one"
    );
    None
}

/// The `pthread_atfork` child handler: closes every registered descriptor
/// that still refers to the socket it was registered with, in the child only
/// (the parent's stay open).
extern "C" fn close_registered_in_child() {
    for (cell, inode) in SLOTS.iter().zip(&INODES) {
        let fd = cell.swap(FREE, Ordering::SeqCst);
        if fd != FREE && inode_of(fd) == Some(inode.load(Ordering::SeqCst)) {
            // SAFETY: fd is open and is the PeerCache listener registered
            // under it (same inode); closing the child's copy leaves the
            // parent's open.
            unsafe { libc::close(fd) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};

    /// Whether `fd` is open, seen from the calling process.
    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
    }

    /// Forks; the child reports through its exit status whether each of
    /// `fds` is open there. Returns that, one flag per descriptor.
    fn open_in_child(fds: &[RawFd]) -> Vec<bool> {
        assert!(fds.len() < 8);
        // SAFETY: the child calls only fcntl and _exit, both
        // async-signal-safe, so forking this multi-threaded process is sound.
        match unsafe { libc::fork() } {
            0 => {
                let mut bits = 0;
                for (i, &fd) in fds.iter().enumerate() {
                    if is_open(fd) {
                        bits |= 1 << i;
                    }
                }
                unsafe { libc::_exit(bits) }
            }
            pid => {
                assert!(pid > 0, "fork failed");
                let mut status = 0;
                // SAFETY: waits for the child just forked.
                assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
                assert!(libc::WIFEXITED(status));
                let bits = libc::WEXITSTATUS(status);
                (0..fds.len()).map(|i| bits & (1 << i) != 0).collect()
            }
        }
    }

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

    #[test]
    fn a_registered_listener_is_closed_in_a_forked_child_and_only_there() {
        let registered = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let guard = close_in_children(registered.as_raw_fd(), "test listener").unwrap();
        assert_eq!(
            open_in_child(&[registered.as_raw_fd(), other.as_raw_fd()]),
            vec![false, true],
            "the child lost the registered listener and kept the other descriptor"
        );
        assert!(is_open(registered.as_raw_fd()), "the parent keeps it");

        // Unregistered: children keep it again, and the slot is free.
        drop(guard);
        assert_eq!(open_in_child(&[registered.as_raw_fd()]), vec![true]);
        assert!(SLOTS
            .iter()
            .all(|s| s.load(Ordering::SeqCst) != registered.as_raw_fd()));
    }

    /// A registered listener closed behind the registry's back (as a
    /// library may), its number then taken by another file: the child keeps
    /// that file.
    #[test]
    fn a_reused_descriptor_number_is_left_open_in_the_child() {
        use std::os::fd::IntoRawFd;
        let fd = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .into_raw_fd();
        let guard = close_in_children(fd, "test listener").unwrap();
        let mut pipe = [0; 2];
        // SAFETY: plain pipe(2) and dup2(2) on descriptors this test owns;
        // dup2 closes the listener and reuses its number in one step, so no
        // other thread's descriptor can land in between.
        unsafe {
            assert_eq!(libc::pipe(pipe.as_mut_ptr()), 0);
            assert_eq!(libc::dup2(pipe[0], fd), fd);
        }
        assert_eq!(
            open_in_child(&[fd]),
            vec![true],
            "the pipe behind the old number stays open"
        );
        drop(guard);
        // SAFETY: closing the three pipe descriptors this test made.
        unsafe {
            libc::close(fd);
            libc::close(pipe[0]);
            libc::close(pipe[1]);
        }
    }

    /// A child forked (without exec) from a process running a node keeps
    /// none of the node's listening sockets: not its shard ports, not the
    /// host's meta port it serves, not its metrics port.
    #[test]
    fn a_forked_child_keeps_none_of_the_nodes_listening_sockets() {
        let meta_port = crate::cluster::ports::free_port_below_ephemeral("127.0.0.1", 0).unwrap();
        let config = crate::config::Config::from_json(&format!(
            r#"{{"discovery_addr":"127.0.0.1:{meta_port}","global_segment_size":"16mb","shards":2,
                "node_id":"forked","local_hostname":"127.0.0.1","control_bind_host":"127.0.0.1",
                "disk_enabled":false,"metrics_enabled":true,"metrics_port":0,
                "metrics_bind_host":"127.0.0.1","prefault_pool":false}}"#
        ))
        .unwrap();
        let node = crate::store::Node::start_cluster(config).unwrap();
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
}
