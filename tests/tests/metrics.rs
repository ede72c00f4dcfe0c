//! Metrics of real node processes: a 3-node cluster scraped over HTTP after a
//! known workload, the shared-port fallback of co-located ranks, and the
//! dashboard rendered by a real headless browser.
//!
//! Hosts are loopback addresses (`127.0.0.i`) as in `multiprocess.rs`; every
//! node serves metrics on its own host with `metrics_port` 0 unless a test
//! needs a fixed port, and says where in its READY line.

use peercache_engine::metrics::exposed_names;
use peercache_tests::node_process::{free_port, NodeProcess};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Page size of these tests: 16 KiB.
const PAGE: usize = 16 << 10;

fn host(i: u8) -> String {
    format!("127.0.0.{i}")
}

/// One test's nodes: a meta port free on every host, and their log files
/// (printed when the test fails, removed when it passes).
struct Cluster {
    name: &'static str,
    port: u16,
    dir: PathBuf,
    logs: Vec<PathBuf>,
}

impl Cluster {
    fn new(name: &'static str, hosts: &[u8]) -> Cluster {
        let port = (0..100)
            .map(|_| free_port("127.0.0.1"))
            .find(|&p| {
                hosts
                    .iter()
                    .all(|&h| TcpListener::bind((host(h).as_str(), p)).is_ok())
            })
            .expect("a port free on every test host");
        let dir = std::env::temp_dir().join(format!(
            "peercache-metrics-{name}-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("create the log directory");
        Cluster {
            name,
            port,
            dir,
            logs: Vec::new(),
        }
    }

    /// Starts node `id` on `127.0.0.h`, with discovery headed by 127.0.0.1.
    fn spawn(&mut self, id: &str, h: u8, extra: Value) -> NodeProcess {
        let address = host(h);
        let mut config = json!({
            "discovery_addr": format!("127.0.0.1:{}", self.port),
            "node_id": format!("{}-{id}", self.name),
            "local_hostname": address,
            "control_bind_host": address,
            "meta_bind_host": address,
            "protocol": "tcp",
            "global_segment_size": "32mb",
            "shards": 2,
            "directory_replicas": 2,
            "heartbeat_interval": 0.3,
            "member_ttl": 1.2,
            "disk_enabled": false,
            "metrics_port": 0,
            "metrics_bind_host": address,
        });
        if let (Value::Object(base), Value::Object(more)) = (&mut config, extra) {
            base.extend(more);
        }
        let log = self.dir.join(format!("{id}.log"));
        self.logs.push(log.clone());
        NodeProcess::spawn(
            Path::new(env!("CARGO_BIN_EXE_peercache-node")),
            &config.to_string(),
            Some(&log),
        )
        .unwrap_or_else(|e| panic!("node {id} did not start: {e}"))
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.logs[i]).unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
            return;
        }
        eprintln!("--- {}: node logs ---", self.name);
        for path in &self.logs {
            eprintln!("{}:", path.display());
            for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
                eprintln!("  {line}");
            }
        }
    }
}

fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// One HTTP GET; returns (status code, body).
fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut conn = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("read the answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, body.to_string())
}

/// Samples of a scrape by series (name plus labels as printed).
fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("series value");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

/// The value of `name{node="..."}` (or with more labels after `node`).
fn sample(samples: &HashMap<String, f64>, node: &str, name: &str, more: &str) -> f64 {
    let series = format!(r#"{name}{{node="{node}"{more}}}"#);
    *samples
        .get(&series)
        .unwrap_or_else(|| panic!("no sample {series}"))
}

#[test]
fn a_three_node_cluster_reports_consistent_metrics() {
    let mut cluster = Cluster::new("scrape", &[1, 2, 3]);
    // a asks for RDMA (the default protocol), which this build does not
    // have: it must say so and fall back to TCP.
    let mut a = cluster.spawn("a", 1, json!({"protocol": "rdma"}));
    let mut b = cluster.spawn("b", 2, json!({}));
    let mut c = cluster.spawn("c", 3, json!({}));
    for node in [&mut a, &mut b, &mut c] {
        node.wait_members(3, 30).expect("three members");
    }

    // a writes 32 pages in one call; b reads them (remote), writes 8 pages of
    // its own and reads those (local); c probes a's pages.
    let shared = keys("shared", 32);
    let own = keys("own", 8);
    assert_eq!(a.set(PAGE, &shared).unwrap(), vec![true; 32]);
    let (hits, corrupt) = b.get(PAGE, &shared).unwrap();
    assert_eq!((hits, corrupt), (vec![true; 32], 0));
    assert_eq!(b.set(PAGE, &own).unwrap(), vec![true; 8]);
    let mut asked = own.clone();
    asked.push("never-written".into());
    let (hits, _) = b.get(PAGE, &asked).unwrap();
    assert_eq!(hits.iter().filter(|&&h| h).count(), 8);
    assert_eq!(c.exists(&shared).unwrap(), 32);

    let names = exposed_names();
    let mut scrapes = Vec::new();
    for node in [&mut a, &mut b, &mut c] {
        let addr = node.metrics.expect("every node serves metrics");
        let samples = scrape(addr);
        let id = node.node_id.clone();
        for name in &names {
            let present = samples.keys().any(|series| {
                series.starts_with(&format!("{name}{{"))
                    || series.starts_with(&format!("{name}_count{{"))
            });
            assert!(present, "{id}: {name} missing from /metrics");
        }
        let v = |name: &str| sample(&samples, &id, name, "");
        assert_eq!(v("peercache_members"), 3.0, "{id}");
        assert_eq!(
            v("peercache_read_hits") + v("peercache_read_misses"),
            v("peercache_read_requests"),
            "{id}: hits + misses = requests"
        );
        assert_eq!(
            v("peercache_read_local_hits") + v("peercache_read_remote_hits"),
            v("peercache_read_hits"),
            "{id}"
        );
        // The scrape and the node's own counters agree.
        let stats = node.stats().expect("stats");
        for counter in [
            "read_requests",
            "write_requests",
            "bytes_read",
            "exists_requests",
        ] {
            assert_eq!(
                v(&format!("peercache_{counter}")),
                stats[counter].as_f64().expect("a number"),
                "{id}: {counter}"
            );
        }
        assert_eq!(
            stats["metrics_addr"].as_str(),
            Some(addr.to_string().as_str())
        );
        scrapes.push((id, samples));
    }

    let (a_id, a_samples) = &scrapes[0];
    let (b_id, b_samples) = &scrapes[1];
    let (c_id, c_samples) = &scrapes[2];
    let va = |name: &str| sample(a_samples, a_id, name, "");
    let vb = |name: &str| sample(b_samples, b_id, name, "");
    let vc = |name: &str| sample(c_samples, c_id, name, "");

    assert_eq!(va("peercache_write_requests"), 32.0);
    assert_eq!(va("peercache_bytes_written"), (32 * PAGE) as f64);
    assert_eq!(va("peercache_pool_keys"), 32.0);
    assert_eq!(va("peercache_set_latency_seconds_count"), 1.0);

    assert_eq!(vb("peercache_read_requests"), 41.0);
    assert_eq!(vb("peercache_read_remote_hits"), 32.0);
    assert_eq!(vb("peercache_read_local_hits"), 8.0);
    assert_eq!(vb("peercache_read_misses"), 1.0);
    assert_eq!(vb("peercache_bytes_read"), (40 * PAGE) as f64);
    assert!((vb("peercache_read_hit_ratio") - 40.0 / 41.0).abs() < 1e-9);
    assert_eq!(vb("peercache_set_latency_seconds_count"), 1.0);
    // b's first get asked a, its second asked the directory for the page
    // nobody wrote: both went to peers. The local-only path is checked by
    // the engine's unit test of a lone node.
    let remote = sample(
        b_samples,
        b_id,
        "peercache_get_latency_seconds_count",
        r#",path="remote""#,
    );
    let local = sample(
        b_samples,
        b_id,
        "peercache_get_latency_seconds_count",
        r#",path="local""#,
    );
    assert_eq!((remote, local), (2.0, 0.0));
    let inf = sample(
        b_samples,
        b_id,
        "peercache_get_latency_seconds_bucket",
        r#",path="remote",le="+Inf""#,
    );
    assert_eq!(inf, remote, "+Inf bucket holds every observation");

    assert_eq!(vc("peercache_exists_requests"), 32.0);
    assert_eq!(vc("peercache_exists_pages_found"), 32.0);
    assert_eq!(vc("peercache_exists_latency_seconds_count"), 1.0);
    assert_eq!(vc("peercache_read_requests"), 0.0);

    // Not built yet: honest zeros.
    for (id, samples) in &scrapes {
        for name in ["peercache_rdma_read_timeouts", "peercache_disk_keys"] {
            assert_eq!(sample(samples, id, name, ""), 0.0, "{id}: {name}");
        }
    }

    // Start-up lines an operator looks for.
    let log = cluster.log(0);
    for line in [
        "embedded PeerCache discovery master on",
        &format!("(seeds=['127.0.0.1:{}'], max_masters=", cluster.port),
        "RDMA transport unavailable (",
        "PeerCacheStore up: node=scrape-a rdma=unavailable control=",
        "PeerCacheStore published pool: pool=33554432 bytes",
        &format!("metrics on http://{}/metrics", a.metrics.unwrap()),
        "member joined: scrape-c (",
    ] {
        assert!(log.contains(line), "node a's log lacks {line:?}");
    }
    // Seed 000: the registered-MRs line means SGLang's host pool arrived, so
    // a node that was never handed one must not print it.
    assert!(
        !log.contains("registered MRs"),
        "no host buffer was registered, yet the log says so"
    );
    for node in [a, b, c] {
        node.quit().expect("clean exit");
    }
}

#[test]
fn co_located_ranks_share_the_metrics_port() {
    let mut cluster = Cluster::new("port", &[1]);
    let port = free_port("127.0.0.1");
    let fixed = json!({"metrics_port": port, "metrics_bind_host": "127.0.0.1"});
    let mut first = cluster.spawn("r0", 1, fixed.clone());
    let mut second = cluster.spawn("r1", 1, fixed);
    let expected: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(first.metrics, Some(expected));
    assert_eq!(second.metrics, None, "the port was taken");
    assert!(
        cluster
            .log(1)
            .contains(&format!("metrics port 127.0.0.1:{port} is already in use")),
        "the second rank says why it has no metrics"
    );

    // The second rank still works as a cache, and the first rank's server
    // reports the cluster.
    first.wait_members(2, 30).expect("two members");
    second.wait_members(2, 30).expect("two members");
    let pages = keys("colocated", 4);
    assert_eq!(second.set(PAGE, &pages).unwrap(), vec![true; 4]);
    assert_eq!(first.get(PAGE, &pages).unwrap(), (vec![true; 4], 0));
    let samples = scrape(expected);
    assert_eq!(
        sample(&samples, &first.node_id, "peercache_members", ""),
        2.0
    );
    assert_eq!(http_get(expected, "/healthz"), (200, "ok\n".to_string()));
    first.quit().expect("clean exit");
    second.quit().expect("clean exit");
}

/// The text of the element with `id` in a DOM dump.
fn element_text<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!(r#"id="{id}">"#))
        .unwrap_or_else(|| panic!("no element #{id} in the rendered page"))
        + id.len()
        + 6;
    let end = dom[start..].find('<').expect("element end") + start;
    &dom[start..end]
}

/// Runs chromium with `args`, bounded so a hung browser fails the test.
fn chromium(binary: &Path, profile: &Path, args: &[String]) -> String {
    let mut child = Command::new(binary)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut out = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            assert!(status.success(), "chromium failed: {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().expect("reader")
}

fn find_chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        })
}

#[test]
fn the_dashboard_renders_live_values_in_a_browser() {
    let Some(browser) = find_chromium() else {
        let reason = "no chromium on PATH (install it with .ci/install-system-deps.sh)";
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{reason}");
        }
        eprintln!("skipped: {reason}");
        return;
    };
    let mut cluster = Cluster::new("dashboard", &[1, 2]);
    let mut a = cluster.spawn("a", 1, json!({}));
    let mut b = cluster.spawn("b", 2, json!({}));
    a.wait_members(2, 30).expect("two members");
    b.wait_members(2, 30).expect("two members");
    let pages = keys("dash", 20);
    assert_eq!(a.set(PAGE, &pages).unwrap(), vec![true; 20]);
    let mut asked = pages.clone();
    asked.extend(keys("missing", 5));
    b.get(PAGE, &asked).unwrap();
    let url = format!("http://{}/", b.metrics.expect("b serves metrics"));

    let profile = cluster.dir.join("chromium-profile");
    let dom = chromium(
        &browser,
        &profile,
        &[
            "--virtual-time-budget=6000".into(),
            "--dump-dom".into(),
            url.clone(),
        ],
    );
    assert_eq!(element_text(&dom, "node"), "dashboard-b");
    assert_eq!(element_text(&dom, "members"), "2");
    assert_eq!(element_text(&dom, "read_requests"), "25");
    assert_eq!(element_text(&dom, "hit_rate"), "80.0 %");
    assert_eq!(element_text(&dom, "read_hits_split"), "0 / 20 / 0");
    assert_eq!(element_text(&dom, "bytes_read"), "320.0 KiB");
    assert_eq!(element_text(&dom, "err_read_failures"), "0");
    assert!(
        element_text(&dom, "status").starts_with("updated "),
        "the page scraped /metrics"
    );
    let latency = element_text(&dom, "lat_get_remote");
    assert!(
        latency.contains(" / ") && !latency.contains('–'),
        "remote get latency estimated: {latency:?}"
    );

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-artifacts");
    std::fs::create_dir_all(&artifacts).expect("artifact directory");
    let png = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&png);
    chromium(
        &browser,
        &profile,
        &[
            "--virtual-time-budget=6000".into(),
            "--window-size=1280,900".into(),
            format!("--screenshot={}", png.display()),
            url,
        ],
    );
    let bytes = std::fs::read(&png).expect("the screenshot was written");
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG screenshot");
    eprintln!("dashboard screenshot: {}", png.display());
    a.quit().expect("clean exit");
    b.quit().expect("clean exit");
}
