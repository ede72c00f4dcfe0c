//! The HiCache benchmark modes end to end: a real producer process and a
//! consumer node on 127.0.0.1, short durations, and the result files' shape.
//! No timing is asserted (the machine is shared): only that each point ran,
//! found every page, and was written down with its host and meta blocks.

mod common;

use common::{free_port, tempdir};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_peercache-bench"))
}

/// Runs a HiCache mode (which writes a JSON and a Markdown file).
fn run_mode(args: &[&str]) -> serde_json::Value {
    run_small(args, true)
}

/// Runs `args` on a small working set for a fraction of a second and returns
/// the JSON result (and checks the Markdown beside it when `with_md`).
fn run_small(args: &[&str], with_md: bool) -> serde_json::Value {
    let dir = tempdir();
    let out = bench()
        .args(args)
        .args([
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
            "--working-set",
            "64",
            "--page-size",
            "16384",
            "--batch-size",
            "8",
            "--out-dir",
        ])
        .arg(&dir)
        .output()
        .expect("run peercache-bench");
    assert!(
        out.status.success(),
        "peercache-bench {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json = std::fs::read_dir(&dir)
        .expect("out dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a JSON result");
    if with_md {
        let md = json.with_extension("md");
        assert!(md.exists(), "the Markdown result is missing");
    }
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("read")).expect("json");
    value
}

#[test]
fn latency_mode_reads_every_page_and_records_host_and_meta() {
    let v = run_mode(&["latency", "--layout", "mha", "--tag", "test"]);
    assert_eq!(v["mode"], "latency");
    assert_eq!(v["meta"]["layout"], "mha");
    assert_eq!(v["meta"]["objects_per_page"], 2);
    assert!(v["host"]["cpus"].as_u64().unwrap() >= 1);
    let rows = v["results"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["op"], "get");
    assert_eq!(rows[0]["batch"], 1);
    assert_eq!(rows[0]["hit_pct"], 100.0);
    assert!(rows[0]["calls"].as_u64().unwrap() > 0);
    assert!(v["memory"]["peak_rss_bytes"].as_u64().unwrap() > 0);
    assert!(v["consumer_counters"]["read_remote_hits"].as_u64().unwrap() > 0);
    // The same-run latency reference: a raw TCP round trip of one page.
    assert!(
        v["references"]["raw_tcp_round_trip_p50_us"]
            .as_f64()
            .unwrap()
            >= 1.0
    );
    assert!(
        v["ratios"]["get_batch1_p50_over_raw_tcp_round_trip"]
            .as_f64()
            .unwrap()
            > 0.0
    );
}

#[test]
fn compare_measures_get_against_the_raw_tcp_stream_and_memcpy() {
    let v = run_mode(&[
        "compare",
        "--concurrencies",
        "1,2",
        "--paired-rounds",
        "3",
        "--tag",
        "compare",
    ]);
    assert_eq!(v["mode"], "compare");
    // --shards defaults to 0: the node picks its count, as a deployed one does.
    assert_eq!(v["meta"]["shards"], 0);
    assert!(v["meta"]["shards_per_node"].as_u64().unwrap() >= 1);
    let rows = v["results"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["hit_pct"] == 100.0));
    assert!(v["references"]["raw_tcp_gbps"].as_f64().unwrap() > 0.0);
    assert!(v["references"]["memcpy_gbps"].as_f64().unwrap() > 0.0);
    assert!(v["ratios"]["get_peak_vs_raw_tcp"].as_f64().unwrap() > 0.0);
    // The sweep has a get at concurrency 1, so the run measured the host's
    // own tail for one batch's bytes: a raw round trip of 32 pages.
    let refs = &v["references"];
    let (p50, p99) = (
        refs["raw_tcp_batch_round_trip_p50_us"].as_f64().unwrap(),
        refs["raw_tcp_batch_round_trip_p99_us"].as_f64().unwrap(),
    );
    assert!(p50 >= 1.0 && p99 >= p50, "{refs}");
    let tail = refs["raw_tcp_batch_round_trip_p99_over_p50"]
        .as_f64()
        .unwrap();
    assert!((tail - p99 / p50).abs() < 1e-9);
    assert!(v["ratios"]["get_c1_p99_over_p50"].as_f64().unwrap() >= 1.0);
    // --paired-rounds: three back-to-back rounds at the PEAK's concurrency, the
    // reference first in rounds 1 and 3, and the median of their ratios.
    let peak_threads = &v["peak"][0]["concurrency"];
    let pairs = v["paired"].as_array().unwrap();
    assert_eq!(pairs.len(), 3);
    let mut ratios = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        assert_eq!(p["frontend"], "rust");
        assert_eq!(&p["concurrency"], peak_threads);
        assert_eq!(p["reference_first"], i % 2 == 0);
        let (raw, get) = (
            p["raw_tcp_gbps"].as_f64().unwrap(),
            p["get_gbps"].as_f64().unwrap(),
        );
        assert!(raw > 0.0 && get > 0.0);
        assert!((p["get_vs_raw_tcp"].as_f64().unwrap() - get / raw).abs() < 1e-9);
        ratios.push(get / raw);
    }
    ratios.sort_by(f64::total_cmp);
    let median = v["ratios"]["get_peak_vs_raw_tcp_paired_median"]
        .as_f64()
        .unwrap();
    assert!((median - ratios[1]).abs() < 1e-9);
}

#[test]
fn paired_rounds_are_refused_where_no_raw_tcp_stream_is_measured() {
    let out = bench()
        .args(["latency", "--paired-rounds", "2", "--duration", "0.1"])
        .output()
        .expect("run peercache-bench");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--paired-rounds"), "{err}");
}

#[test]
fn remote_mode_sweeps_get_exists_and_set_beside_its_references() {
    let v = run_small(
        &[
            "remote",
            "--concurrencies",
            "1,2",
            "--skip-memory",
            "--tag",
            "test",
        ],
        false,
    );
    let r = &v["results"];
    assert!(r["raw_tcp_gbps"].as_f64().unwrap() > 0.0);
    assert!(r["raw_tcp_round_trip_p50_us"].as_f64().unwrap() >= 1.0);
    for (what, points) in [
        ("get", &r["get"]),
        ("exists", &r["exists"]),
        ("set", &r["set"]),
    ] {
        let concurrencies: Vec<u64> = points
            .as_array()
            .unwrap_or_else(|| panic!("{what}: {r}"))
            .iter()
            .map(|p| p["concurrency"].as_u64().unwrap())
            .collect();
        assert_eq!(concurrencies, [1, 2], "{what}");
    }
    for p in r["get"].as_array().unwrap() {
        assert_eq!(p["hit_ratio"], 1.0, "{p}");
    }
    for p in r["set"].as_array().unwrap() {
        assert_eq!(p["stored_ratio"], 1.0, "{p}");
    }
    assert!(r["set_peak_concurrency"].as_u64().is_some());
    assert!(r["exists_peak_pages_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn saturation_of_each_op_has_a_peak_row() {
    for op in ["get", "set", "exists"] {
        let v = run_mode(&[
            "saturation",
            "--op",
            op,
            "--concurrencies",
            "1,2",
            "--tag",
            op,
        ]);
        let rows = v["results"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "{op}");
        for r in rows {
            assert_eq!(r["op"], op);
            assert_eq!(r["hit_pct"], 100.0, "{op}: {r}");
        }
        assert_eq!(v["peak"].as_array().unwrap().len(), 1, "{op}");
    }
}

#[test]
fn what_this_build_cannot_measure_is_refused_by_name() {
    for (flag, value, expected) in [
        ("--gpu", None, "GPU"),
        ("--protocol", Some("rdma"), "RDMA"),
        // A named device means RDMA (seed 004's commands), never a TCP figure.
        ("--device-name", Some("mlx5_0"), "RDMA"),
        ("--processes", Some("0"), "--processes"),
    ] {
        let mut cmd = bench();
        cmd.args(["latency", flag]);
        if let Some(v) = value {
            cmd.arg(v);
        }
        let out = cmd.output().expect("run");
        assert!(!out.status.success(), "{flag} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{flag}: {err}");
    }
}

#[test]
fn several_consumer_processes_are_summed_into_one_row() {
    let v = run_mode(&[
        "saturation",
        "--processes",
        "2",
        "--concurrencies",
        "1",
        "--tag",
        "processes",
    ]);
    let rows = v["results"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    // 2 processes x 1 thread.
    assert_eq!(rows[0]["concurrency"], 2);
    assert_eq!(rows[0]["hit_pct"], 100.0);
    assert!(
        rows[0]["calls"].as_u64().unwrap() >= 2,
        "both processes' calls are merged"
    );
    assert_eq!(v["meta"]["processes"], 2);
}

#[test]
fn a_tcp_run_says_it_is_functional_and_records_its_protocol() {
    let dir = tempdir();
    // A --local-host other than 127.0.0.1 (still loopback): the nodes and
    // the producer's raw TCP reference are reached there, and the consumer
    // connects to the reference at the producer's host.
    let out = bench()
        .args([
            "latency",
            "--local-host",
            "127.0.0.2",
            "--duration",
            "0.2",
            "--warmup",
            "0.1",
            "--working-set",
            "64",
            "--page-size",
            "16384",
            "--out-dir",
        ])
        .arg(&dir)
        .output()
        .expect("run peercache-bench");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("functional run, not a performance scenario"),
        "{err}"
    );
    let json = std::fs::read_dir(&dir)
        .expect("out dir")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a JSON result");
    assert!(
        json.to_string_lossy().contains("hicache-latency-tcp-"),
        "the tag defaults to the protocol: {json:?}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("read")).expect("json");
    assert_eq!(v["meta"]["protocol"], "tcp");
    assert_eq!(v["results"][0]["hit_pct"], 100.0);
    assert!(
        v["references"]["raw_tcp_round_trip_p50_us"]
            .as_f64()
            .unwrap()
            >= 1.0
    );
}

/// Starts `serve` with `stdin` and `flags`; returns
/// it once it printed its READY line.
fn start_serve(stdin: Stdio, flags: &[&str]) -> Child {
    let mut child = bench()
        .arg("serve")
        .args(flags)
        // The working set of `run_small`, so that a `drive` finds it.
        .args([
            "--working-set",
            "64",
            "--batch-size",
            "8",
            "--page-size",
            "16384",
        ])
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start serve");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("read READY");
    assert!(line.starts_with("READY 127.0.0.1:"), "{line:?}");
    child
}

/// Waits up to 10 s for `child` to exit; its exit status.
fn exit_status(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("serve did not stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: sends a signal to our own child process, which is not reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
}

#[test]
fn serve_in_the_background_runs_until_sigterm() {
    // A job started with `&` from a script has /dev/null as stdin: it must
    // not read that as the end of its input.
    let mut child = start_serve(Stdio::null(), &["--meta-port", &free_port().to_string()]);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "serve exited"
    );
    signal(&child, libc::SIGTERM);
    let status = exit_status(&mut child);
    assert_eq!(status.code(), Some(0), "a clean stop, not a kill: {status}");
}

#[test]
fn serve_on_a_pipe_stops_when_it_closes_or_on_sigint() {
    let mut child = start_serve(Stdio::piped(), &["--meta-port", &free_port().to_string()]);
    drop(child.stdin.take());
    assert_eq!(exit_status(&mut child).code(), Some(0));

    let mut child = start_serve(Stdio::piped(), &["--meta-port", &free_port().to_string()]);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "serve exited"
    );
    signal(&child, libc::SIGINT);
    assert_eq!(exit_status(&mut child).code(), Some(0));
}

#[test]
fn drive_sweeps_the_pages_of_a_serve_at_its_discovery_address() {
    // Seed 003's two-host pair, both halves on this host.
    let discovery = format!("127.0.0.1:{}", free_port());
    let mut producer = start_serve(Stdio::piped(), &["--discovery-addr", &discovery]);
    let v = run_mode(&[
        "drive",
        "--discovery-addr",
        &discovery,
        "--concurrencies",
        "1,2",
        "--tag",
        "pair",
    ]);
    drop(producer.stdin.take());
    assert_eq!(exit_status(&mut producer).code(), Some(0));
    assert_eq!(v["mode"], "drive");
    let rows = v["results"].as_array().unwrap();
    let threads: Vec<u64> = rows
        .iter()
        .map(|r| r["concurrency"].as_u64().unwrap())
        .collect();
    assert_eq!(threads, [1, 2]);
    assert!(rows.iter().all(|r| r["hit_pct"] == 100.0), "{rows:?}");
    // perf-scripts/full-machine.sh sums each pair's PEAK row.
    assert_eq!(v["peak"].as_array().unwrap().len(), 1);
}
