//! Helpers shared by the CLI tests of `peercache-bench`.

// Each test binary uses its own subset.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// A scratch directory, removed when dropped (also when a test fails).
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for TempDir {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new, empty scratch directory.
pub fn tempdir() -> TempDir {
    let dir = std::env::temp_dir().join(format!(
        "peercache-bench-test-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    TempDir(dir)
}

/// A port free on 127.0.0.1 a moment ago, for a process started later to
/// bind (outside the ephemeral range: see `peercache_engine::cluster::ports`).
pub fn free_port() -> u16 {
    peercache_engine::cluster::ports::free_port_below_ephemeral("127.0.0.1", 0)
        .expect("a free port")
}
