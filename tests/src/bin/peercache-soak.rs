//! `peercache-soak`: a bounded chaos run of a multi-node cluster, for the
//! promise users judge PeerCache on first: a page is never returned with
//! wrong bytes, a failure is a miss and never a hang or a crash.
//!
//! It starts `--nodes` `peercache-node` processes on 127.0.0.1 (`node-1` the
//! discovery head; small pools, so pages are evicted all the time) and runs,
//! on one thread per node, SGLang's per-request pattern against random
//! prefixes of `--documents` page chains: `exists`, get the hit prefix
//! (every page byte-checked by the node against its key), set the rest.
//! Every `--kill-every` seconds one node other than the head (any node with
//! `--kill-head`) is killed with SIGKILL (no deregistration, its pool and
//! directory share gone) and started again under the same `node_id`, while
//! the others keep serving; killing the head also kills the meta port's
//! holder, which another node then takes over. With `--disk SIZE` every
//! node also writes its pages through to a disk tier: pages evicted from a
//! pool come back from disk, and a restarted node finds its pages there and
//! publishes them again.
//!
//! It runs for `--seconds` (at most an hour) and exits non-zero if any page
//! came back with wrong bytes, a command to a live node failed or took
//! longer than the node protocol's timeout, a node that was not being
//! killed died, a restarted node did not rejoin, no hit crossed nodes, or
//! (with `--disk`) no hit was read from a disk.
//! `perf-scripts/soak.sh` builds and runs it.

use clap::Parser;
use peercache_tests::node_process::{free_port, sibling_node_binary, NodeProcess};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "peercache-soak",
    about = "Bounded chaos run: node processes on 127.0.0.1 under a prefix workload, one killed and restarted every few seconds; fails on any wrong byte, hang or unexpected death"
)]
struct Args {
    /// Node processes (node-1 is the discovery head).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=16))]
    nodes: u32,
    /// How long to run, seconds (at most 3600).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    seconds: u64,
    /// Seconds between kills (0: never kill).
    #[arg(long, default_value_t = 10)]
    kill_every: u64,
    /// Kill the discovery head (node-1) in turn too.
    #[arg(long)]
    kill_head: bool,
    /// Page chains the requests take prefixes of.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    documents: u32,
    /// Pages per chain (the longest request).
    #[arg(long, default_value_t = 48, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pages_per_document: u32,
    /// Bytes of one page.
    #[arg(long, default_value_t = 16384, value_parser = clap::value_parser!(u64).range(1..=(4 << 20)))]
    page_bytes: u64,
    /// Published pool per node (`global_segment_size`); the default is
    /// smaller than the working set, so pages are evicted throughout.
    #[arg(long, default_value = "16mb")]
    pool: String,
    /// Turn the disk tier on with this capacity per node (`disk_size`, e.g.
    /// 64mb), under `<log dir>/disk`: pages evicted from a pool are then
    /// read back from disk, and a restarted node finds its pages on disk
    /// again and re-publishes them. Off by default.
    #[arg(long)]
    disk: Option<String>,
    /// Seed of the request stream.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory for the node logs (default: a new directory under the system temp dir).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match soak(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peercache-soak: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What one node's thread saw.
#[derive(Default, Debug)]
struct Tally {
    requests: u64,
    pages: u64,
    hits: u64,
    corrupt: u64,
    kills: u64,
    slowest: Duration,
    remote_hits: u64,
    /// Hits served from a node's disk tier (`read_disk_hits`).
    disk_hits: u64,
}

impl Tally {
    /// Adds the node's own hit counters (a restarted process starts them
    /// from 0, so this runs before every kill and at the end).
    fn count_node_hits(&mut self, node: &mut NodeProcess) -> Result<(), String> {
        self.remote_hits += node.counter("read_remote_hits")?;
        self.disk_hits += node.counter("read_disk_hits")?;
        Ok(())
    }
}

/// Where every node process of the run finds its cluster.
struct Cluster {
    binary: PathBuf,
    logs: PathBuf,
    port: u16,
    pool: String,
    /// `disk_size` per node when the disk tier is on.
    disk: Option<String>,
}

impl Cluster {
    fn config(&self, i: u32) -> String {
        let mut config = serde_json::json!({
            "discovery_addr": format!("127.0.0.1:{}", self.port),
            "node_id": format!("node-{i}"),
            "protocol": "tcp",
            "local_hostname": "127.0.0.1",
            "meta_bind_host": "127.0.0.1",
            "control_bind_host": "127.0.0.1",
            "shards": 1,
            "global_segment_size": self.pool,
            "disk_enabled": false,
            "metrics_enabled": false,
            "heartbeat_interval": 0.25,
            "member_ttl": 1.5,
        });
        if let Some(size) = &self.disk {
            // One directory for all nodes: each keeps its pages in a
            // subdirectory named by its node_id, found again on restart.
            config["disk_enabled"] = true.into();
            config["disk_path"] = self.logs.join("disk").display().to_string().into();
            config["disk_size"] = size.as_str().into();
        }
        config.to_string()
    }

    /// Starts node `i` for the `life`-th time, logging to `node-i.<life>.log`.
    fn start(&self, i: u32, life: u64) -> Result<NodeProcess, String> {
        let log = self.logs.join(format!("node-{i}.{life}.log"));
        NodeProcess::spawn(&self.binary, &self.config(i), Some(&log))
            .map_err(|e| format!("node-{i}: {e} (log {})", log.display()))
    }
}

fn soak(a: &Args) -> Result<(), String> {
    let logs = match &a.log_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("peercache-soak-{}", std::process::id())),
    };
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    if std::env::var_os("PEERCACHE_LOG").is_none() {
        std::env::set_var("PEERCACHE_LOG", "info");
    }
    std::env::set_var("NO_COLOR", "1");
    let cluster = Arc::new(Cluster {
        binary: sibling_node_binary("peercache-soak (bash perf-scripts/soak.sh builds both)")?,
        logs: logs.clone(),
        port: free_port("127.0.0.1"),
        pool: a.pool.clone(),
        disk: a.disk.clone(),
    });
    let n = a.nodes;
    println!(
        "PeerCache soak: {n} nodes on 127.0.0.1 for {} s, a node{} killed and restarted every {} s, disk tier {}; logs in {}",
        a.seconds,
        if a.kill_head { " (the head too)" } else { " other than the head" },
        a.kill_every,
        match &a.disk {
            Some(size) => format!("on ({size} per node)"),
            None => "off".into(),
        },
        logs.display()
    );
    let mut nodes = Vec::new();
    for i in 1..=n {
        nodes.push(cluster.start(i, 0)?);
    }
    for node in nodes.iter_mut() {
        node.wait_members(n as usize, 30)?;
    }
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let failed = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = nodes
        .into_iter()
        .zip(1..)
        .map(|(node, i)| {
            let (a, cluster, failed) = (a.clone(), Arc::clone(&cluster), Arc::clone(&failed));
            std::thread::spawn(move || {
                let result = drive(&a, &cluster, i, node, deadline, &failed);
                if result.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                result
            })
        })
        .collect();
    let mut total = Tally::default();
    let mut errors = Vec::new();
    for (t, i) in threads.into_iter().zip(1..) {
        match t.join() {
            Ok(Ok(tally)) => {
                println!(
                    "node-{i}: {} requests, {} pages, {} hits ({} from another node, {} from its disk), {} kills, slowest command {:.0} ms",
                    tally.requests,
                    tally.pages,
                    tally.hits,
                    tally.remote_hits,
                    tally.disk_hits,
                    tally.kills,
                    tally.slowest.as_secs_f64() * 1e3
                );
                total.requests += tally.requests;
                total.pages += tally.pages;
                total.hits += tally.hits;
                total.corrupt += tally.corrupt;
                total.kills += tally.kills;
                total.remote_hits += tally.remote_hits;
                total.disk_hits += tally.disk_hits;
                total.slowest = total.slowest.max(tally.slowest);
            }
            Ok(Err(e)) => errors.push(format!("node-{i}: {e}")),
            Err(_) => errors.push(format!("node-{i}: its driver thread panicked")),
        }
    }
    println!(
        "total: {} requests, {} pages, {} hits, {} from another node, {} from a disk, {} wrong bytes, {} kills and restarts",
        total.requests,
        total.pages,
        total.hits,
        total.remote_hits,
        total.disk_hits,
        total.corrupt,
        total.kills
    );
    if !errors.is_empty() {
        return Err(errors.join("; "));
    }
    if total.corrupt > 0 {
        return Err(format!(
            "{} pages came back with wrong bytes",
            total.corrupt
        ));
    }
    if total.remote_hits == 0 {
        return Err("no hit crossed nodes: the cluster never shared a page".into());
    }
    if a.disk.is_some() && total.disk_hits == 0 {
        return Err("the disk tier is on but no hit was read from a disk".into());
    }
    println!("no wrong byte, no hang, every node alive or restarted as planned");
    Ok(())
}

/// One node's thread: requests until `deadline`, killing and restarting its
/// node on its turns (node-1, the discovery head, only with --kill-head); quits it cleanly at
/// the end. Stops early when another thread failed.
fn drive(
    a: &Args,
    cluster: &Cluster,
    i: u32,
    mut node: NodeProcess,
    deadline: Instant,
    failed: &AtomicBool,
) -> Result<Tally, String> {
    let mut tally = Tally::default();
    let mut rng = StdRng::seed_from_u64(a.seed ^ u64::from(i).wrapping_mul(0xA076_1D64_78BD_642F));
    // The victims take turns, one every `kill_every` seconds: node i is
    // killed at kill_every * (k * victims + turn) for k = 0, 1, ..., where
    // its turn counts from 1 (node-1 first with --kill-head, else node-2).
    let start = Instant::now();
    let first = if a.kill_head { 1 } else { 2 };
    let victims = u64::from(a.nodes + 1 - first);
    let mut next_kill = (i >= first && a.kill_every > 0)
        .then(|| start + Duration::from_secs(a.kill_every * u64::from(i + 1 - first)));
    let mut life = 0;
    while Instant::now() < deadline && !failed.load(Ordering::Relaxed) {
        if next_kill.is_some_and(|t| Instant::now() >= t) {
            // Counted before the kill: the restarted process starts from 0.
            tally.count_node_hits(&mut node)?;
            node.kill();
            life += 1;
            tally.kills += 1;
            node = cluster.start(i, life)?;
            node.wait_members(a.nodes as usize, 30)
                .map_err(|e| format!("restart {life} did not rejoin the cluster: {e}"))?;
            next_kill = next_kill.map(|t| t + Duration::from_secs(a.kill_every * victims));
            continue;
        }
        let doc = rng.random_range(0..a.documents);
        let len = rng.random_range(1..=a.pages_per_document);
        let keys: Vec<String> = (0..len).map(|p| format!("soak-d{doc}-p{p}")).collect();
        let sent = Instant::now();
        let answer = node
            .command(&format!("request {} {}", a.page_bytes, keys.join(" ")))
            .map_err(|e| format!("request after {} requests: {e}", tally.requests))?;
        tally.slowest = tally.slowest.max(sent.elapsed());
        let field = |name: &str| -> Result<u64, String> {
            answer
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("malformed request answer {answer:?}"))
        };
        tally.requests += 1;
        tally.pages += field("total=")?;
        tally.hits += field("hit=")?;
        tally.corrupt += field("corrupt=")?;
    }
    tally.count_node_hits(&mut node)?;
    node.quit()
        .map_err(|e| format!("did not quit cleanly at the end: {e}"))?;
    Ok(tally)
}
