//! Node directories in use, and reclaiming the ones nobody can use again.
//!
//! Why: a node without a configured `node_id` gets a generated one, so after
//! a restart it writes into a new `disk_path/<node_id>` and can never find
//! the old directory's pages again. Each such directory holds a slab
//! preallocated to `disk_size` (100 GiB by default), so without clean-up
//! every restart of an SGLang rank would leave one more behind until the
//! disk is full.
//!
//! How: every node holds an exclusive `flock` on `<dir>/lock` for its
//! whole life. A node with a generated id only then writes the `GENERATED`
//! marker. At start, every node removes the directories under `disk_path`
//! that carry the marker and whose lock it can take: their node is gone
//! (a crash releases the lock too) and their pages are unreachable.
//! Directories of a configured `node_id` carry no marker and are never
//! removed: a restart with that id finds their pages again. Their lock stops
//! a second running node of the same id (two ranks given one `node_id`)
//! from writing the same slab files: that node does not start.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Marks a directory written by a node with a generated `node_id`.
pub const GENERATED_MARKER: &str = "GENERATED";
/// The file a live node holds its lock on.
pub const LOCK_FILE: &str = "lock";

/// An exclusive lock on a node directory, held until dropped.
#[derive(Debug)]
pub struct DirClaim {
    _lock: File,
}

impl DirClaim {
    /// Closes this process's descriptor of the lock without dropping the
    /// claim: for a forked child that leaks its node (see
    /// `Node::forget_in_fork`), whose copy of the descriptor would otherwise
    /// hold the lock for as long as the child lives.
    pub fn close_in_fork(&self) {
        // SAFETY: the claim is leaked right after (never dropped), so the
        // descriptor is not closed twice, and nothing else uses it.
        unsafe { libc::close(self._lock.as_raw_fd()) };
    }
}

/// Takes `dir`'s lock without waiting; `Ok(None)` when another node (in this
/// process or another) holds it.
fn try_lock(dir: &Path) -> std::io::Result<Option<DirClaim>> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK_FILE))?;
    // SAFETY: plain syscall on a descriptor this function owns. flock locks
    // belong to the open file, so two nodes of one process exclude each
    // other as two processes do.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(DirClaim { _lock: lock }));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Claims `dir` (already created) for a node with a generated id: locks it,
/// then marks it, so a directory is never seen marked and unlocked while its
/// node runs.
pub fn claim_generated(dir: &Path) -> std::io::Result<DirClaim> {
    let claim = try_lock(dir)?.ok_or_else(|| {
        std::io::Error::other(format!("{} is locked by another node", dir.display()))
    })?;
    std::fs::write(
        dir.join(GENERATED_MARKER),
        b"node_id was generated: removed once its node is gone\n",
    )?;
    Ok(claim)
}

/// Claims `dir` (already created) for a node with a configured id;
/// `Ok(None)` when another running node holds it.
pub fn claim_named(dir: &Path) -> std::io::Result<Option<DirClaim>> {
    try_lock(dir)
}

/// Removes the directories under `disk_path` left by nodes with a generated
/// id that no longer run. Returns what was removed. Never fails: a
/// directory that cannot be inspected or removed is left as it is.
pub fn reclaim_abandoned(disk_path: &Path) -> Vec<std::path::PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(disk_path) else {
        return removed;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if !dir.join(GENERATED_MARKER).is_file() {
            continue;
        }
        // Holding the lock while deleting keeps a second starting node from
        // acting on the same directory at the same time.
        let Ok(Some(_claim)) = try_lock(&dir) else {
            continue;
        };
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => removed.push(dir),
            Err(e) => tracing::warn!(
                "disk tier: cannot remove {} (left by a node with a generated node_id that is no longer running): {e}",
                dir.display()
            ),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("peercache-claim-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn node_dir(root: &Path, name: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("shard-0.slab"), b"pages").unwrap();
        dir
    }

    #[test]
    fn only_abandoned_generated_directories_are_removed() {
        let root = scratch("reclaim");
        // A generated-id node that is gone: marked, lock free.
        let gone = node_dir(&root, "10.0.0.1-aaaa");
        drop(claim_generated(&gone).unwrap());
        // A generated-id node still running: marked, lock held.
        let live = node_dir(&root, "10.0.0.1-bbbb");
        let held = claim_generated(&live).unwrap();
        // A configured node_id: no marker, whatever its lock.
        let named = node_dir(&root, "rank-0");

        let removed = reclaim_abandoned(&root);
        assert_eq!(removed, vec![gone.clone()]);
        assert!(!gone.exists());
        assert!(
            live.join("shard-0.slab").is_file(),
            "a live node's pages stay"
        );
        assert!(
            named.join("shard-0.slab").is_file(),
            "a named node's pages stay"
        );

        // Once its node stops, the generated directory goes too.
        drop(held);
        assert_eq!(reclaim_abandoned(&root), vec![live.clone()]);
        assert!(named.exists());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_claimed_directory_cannot_be_claimed_twice() {
        let root = scratch("twice");
        let dir = node_dir(&root, "n");
        let first = claim_generated(&dir).unwrap();
        assert!(claim_generated(&dir).is_err());
        drop(first);
        assert!(claim_generated(&dir).is_ok());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_missing_disk_path_reclaims_nothing() {
        assert!(reclaim_abandoned(Path::new("/nonexistent/peercache-claim")).is_empty());
    }
}
