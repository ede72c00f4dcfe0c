//! `peercache-soak` in miniature: a few seconds of the prefix workload on 3
//! node processes with a node (the discovery head included) killed and
//! restarted (same node_id) every 2 s, once with pools only and once with
//! the disk tier on (a restarted node then finds its pages on disk again).
//! The real run is `perf-scripts/soak.sh`; this keeps it working and keeps
//! the promise it checks: no page with wrong bytes across restarts.

use std::process::Command;

/// Runs 6 s of the soak with `extra` options; returns its output.
fn short_soak(name: &str, extra: &[&str]) -> String {
    let logs = std::env::temp_dir().join(format!("peercache-{name}-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_peercache-soak"))
        .args([
            "--nodes",
            "3",
            "--seconds",
            "6",
            "--kill-every",
            "2",
            "--kill-head",
        ])
        .args(["--documents", "16", "--pages-per-document", "16"])
        .args(["--page-bytes", "4096", "--pool", "4mb"])
        .args(extra)
        .arg("--log-dir")
        .arg(&logs)
        .output()
        .expect("the soak runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "soak failed (logs in {}):\n{stdout}\n{stderr}",
        logs.display()
    );
    let _ = std::fs::remove_dir_all(&logs);
    assert!(stdout.contains(" 0 wrong bytes,"), "{stdout}");
    let restarts: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("total: "))
        .and_then(|l| {
            l.split(", ")
                .find_map(|f| f.strip_suffix(" kills and restarts"))
        })
        .and_then(|n| n.parse().ok())
        .expect("a total line");
    assert!(restarts >= 2, "{stdout}");
    stdout
}

#[test]
fn a_short_soak_with_restarts_returns_no_wrong_byte() {
    let out = short_soak("soak-test", &[]);
    assert!(out.contains("disk tier off"), "{out}");
}

#[test]
fn a_short_soak_with_the_disk_tier_returns_no_wrong_byte() {
    // 8 MiB of disk per node under a 4 MiB pool: pages evicted from a pool
    // are read back from disk, and a restarted node re-publishes its pages.
    let out = short_soak("soak-disk-test", &["--disk", "8mb"]);
    assert!(out.contains("disk tier on (8mb per node)"), "{out}");
}
