//! The README's main job, small: `peercache-demo` starts real node processes
//! on 127.0.0.1, plays the shared-prefix workload, and prints each node's
//! counters as seed 000's step 6 shows them, scraped from its `/metrics`.

use std::process::Command;

#[test]
fn the_demo_shows_cross_node_hits_in_each_nodes_metrics() {
    let logs = std::env::temp_dir().join(format!("peercache-demo-test-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_peercache-demo"))
        .args(["--nodes", "3", "--groups", "4", "--prompts-per-group", "3"])
        .args(["--system-prompt-len", "256", "--question-len", "64"])
        .args(["--page-bytes", "4096", "--pool", "16mb"])
        .arg("--log-dir")
        .arg(&logs)
        .output()
        .expect("the demo runs");
    let _ = std::fs::remove_dir_all(&logs);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("cross-node hits:"), "{stdout}");
    assert!(stdout.contains("all 3 nodes quit cleanly"), "{stdout}");
    for i in 1..=3 {
        let node = format!("{{node=\"node-{i}\"}}");
        // The grep of seed 000 keeps exactly these seven counters per node.
        let lines: Vec<&str> = stdout
            .lines()
            .filter(|l| l.starts_with("peercache_") && l.contains(&node))
            .collect();
        assert_eq!(lines.len(), 7, "node-{i}: {lines:?}");
        assert!(
            lines.contains(&format!("peercache_members{node} 3").as_str()),
            "{lines:?}"
        );
        let written = lines
            .iter()
            .find(|l| l.starts_with("peercache_write_requests{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .expect("write_requests");
        assert!(written > 0, "node-{i} published nothing: {lines:?}");
    }
}
