//! `peercache-soak` in miniature: a few seconds of the prefix workload on 3
//! node processes with a node (the discovery head included) killed and
//! restarted (same node_id) every 2 s.
//! The real run is `perf-scripts/soak.sh`; this keeps it working and keeps
//! the promise it checks: no page with wrong bytes across restarts.

use std::process::Command;

#[test]
fn a_short_soak_with_restarts_returns_no_wrong_byte() {
    let logs = std::env::temp_dir().join(format!("peercache-soak-test-{}", std::process::id()));
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
        .arg("--log-dir")
        .arg(&logs)
        .output()
        .expect("the soak runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
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
}
