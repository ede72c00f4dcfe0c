//! The systematic SGLang-HiCache benchmark (seed 004): `latency`,
//! `throughput`, `saturation`, `suite`, and the two-host halves `serve` /
//! `drive`.
//!
//! It models PD disaggregation the way SGLang drives a storage backend: a
//! producer node ("prefill", the `serve` process) publishes a working set of
//! KV pages; a consumer ("decode", this process or a `drive` run on another
//! host) probes them with `exists` and loads them with `get`, and also
//! publishes fresh pages with `set`. Pages follow SGLang's object layout:
//! `--layout mla` stores one object per page, `--layout mha` a K and a V
//! object of half a page each, under the component names a TP-rank-0
//! PeerCacheStore uses, so a Python consumer reads the same objects.
//!
//! Two front ends drive the consumer: `--frontend rust` calls the engine's
//! `Node` directly from Rust threads; `--frontend python` runs
//! `peercache.bench_driver`, which calls `PeerCacheStore.batch_get_v1` (etc.)
//! from Python threads exactly as SGLang's cache controller does. The suite
//! runs both for `get`, so the front end's cost is their difference.
//!
//! Every point reports pages/s, tokens/s, GB/s (10^9, payload actually moved),
//! per-batch-call latency p50/p95/p99/p999/max (hdrhistogram) and hit %.
//! Results go to `<out-dir>/hicache-<mode>-<tag>-<timestamp>.{json,md}` with
//! the `host` and `meta` blocks seed 004 asks to publish with any figure.

use crate::aligned::AlignedBuf;
use crate::micro::host_info;
use crate::mooncake::{self, TransferEngineBench};
use crate::remote::{
    pct, raw_tcp_gbps, raw_tcp_round_trips, rss_bytes, serve_raw_references, sweep,
};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use peercache_engine::config::addr::parse_host_list;
use peercache_engine::config::{HostPort, DEFAULT_DISCOVERY_PORT};
use peercache_engine::keys::RankKeys;
use peercache_engine::{Config, Node};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Namespace of every benchmark node (producer and consumers must agree).
pub const MODEL: &str = "peercache-bench-hicache";

/// SGLang's two KV object layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Layout {
    /// One latent object per page (DeepSeek-style MLA).
    Mla,
    /// A K and a V object per page, half the page each.
    Mha,
}

/// What one point measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Op {
    Get,
    Set,
    Exists,
}

/// Which API the consumer calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Frontend {
    /// The engine's `Node` from Rust threads.
    Rust,
    /// `PeerCacheStore` v1 calls from Python threads (`peercache.bench_driver`).
    Python,
}

/// Options shared by every mode (seed 004's flags).
#[derive(Args, Debug, Clone)]
pub struct HicacheArgs {
    /// Data plane: `tcp` or `rdma`. Default: `rdma` when `--device-name` or
    /// `--devices` names a device, else `tcp`. An RDMA run needs the RDMA
    /// transport (a build with the `ibverbs` feature and a usable device) and
    /// fails with the reason when it is missing rather than measure TCP.
    #[arg(long)]
    pub protocol: Option<String>,
    /// RDMA device of a single-rail run (e.g. mlx5_0).
    #[arg(long, default_value = "")]
    pub device_name: String,
    /// RDMA devices of a multi-rail run, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Object layout of a page.
    #[arg(long, value_enum, default_value_t = Layout::Mla)]
    pub layout: Layout,
    /// Bytes of one logical page (all its objects together).
    #[arg(long, default_value_t = 131072)]
    pub page_size: usize,
    /// Tokens per page (tokens/s = pages/s x this).
    #[arg(long, default_value_t = 64)]
    pub tokens_per_page: usize,
    /// Pages per batch call.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Concurrency sweep (consumer threads) of `saturation`, `suite`,
    /// `compare` and `drive`, comma-separated.
    #[arg(long, default_value = "1,2,4,8", value_delimiter = ',')]
    pub concurrencies: Vec<usize>,
    /// Threads of a `throughput` run (the sweeping modes, `drive` included,
    /// use `--concurrencies`).
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Operation of a `throughput` / `saturation` / `drive` run.
    #[arg(long, value_enum, default_value_t = Op::Get)]
    pub op: Op,
    /// Seconds measured per point.
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// Seconds run before measuring each point.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Pages the producer publishes (and the consumer reads).
    #[arg(long, default_value_t = 1024)]
    pub working_set: usize,
    /// Consumer processes (seed 003's reader processes; `--readers` is the
    /// same option). Each runs the point's threads against the producer at
    /// the same moment; pages/s and GB/s are summed, latencies merged. Rust
    /// front end only.
    #[arg(long, visible_alias = "readers", default_value_t = 1)]
    pub processes: usize,
    /// max_channels_per_peer of the consumer.
    #[arg(long, default_value_t = 16)]
    pub max_channels: usize,
    /// directory_read_cache_ttl (seconds) of the consumer.
    #[arg(long, default_value_t = 0.0)]
    pub dir_cache_ttl: f64,
    /// Discovery of an already running producer (`serve` on another host);
    /// unset: start a producer process on this host.
    #[arg(long)]
    pub discovery_addr: Option<String>,
    /// Address this host's nodes advertise to peers and bind their control
    /// listener on. Default: 127.0.0.1 when the run stays on this host (no
    /// `--discovery-addr`, or a loopback one); otherwise the nodes advertise
    /// the address that routes to the discovery head and listen on 0.0.0.0,
    /// as does `serve`'s raw TCP reference.
    #[arg(long)]
    pub local_host: Option<String>,
    /// Label in the output file names. Default: the protocol.
    #[arg(long)]
    pub tag: Option<String>,
    /// Use GPU memory as the destination (GPUDirect).
    #[arg(long)]
    pub gpu: bool,
    /// Which API drives the consumer.
    #[arg(long, value_enum, default_value_t = Frontend::Rust)]
    pub frontend: Frontend,
    /// Python interpreter for `--frontend python` (default: $PEERCACHE_PYTHON, else python3).
    #[arg(long)]
    pub python: Option<String>,
    /// Shards per node. 0 (the default) lets each node choose, as a
    /// deployed node does (`shards: 0`: one per RDMA device, else
    /// min(usable CPUs, 4)); the JSON's `shards_per_node` is the count used.
    #[arg(long, default_value_t = 0)]
    pub shards: usize,
    /// directory_replicas of every node. The default 2 makes both nodes of a
    /// two-process run owners of every key (lookups stay local); 1 puts half
    /// the keys' directory entries on the other process, as in a large cluster.
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    /// Directory for the result files.
    #[arg(long, default_value = "peercache-bench-results")]
    pub out_dir: String,
    /// `suite` and `compare`: after the sweep, measure N paired rounds of the
    /// raw TCP stream reference and a get at the get PEAK's concurrency, back
    /// to back (alternating which goes first), and report each round's ratio
    /// and their median. On a shared machine the reference and the sweep are
    /// otherwise seconds apart and see different load; 0 turns this off.
    #[arg(long, default_value_t = 0)]
    pub paired_rounds: usize,
}

/// One measured point.
#[derive(Debug, Clone)]
pub struct Row {
    pub op: Op,
    pub frontend: Frontend,
    pub concurrency: usize,
    pub batch: usize,
    pub pages_per_s: f64,
    pub gbps: f64,
    pub hit_pct: f64,
    pub hist: Histogram<u64>,
}

impl Row {
    /// The progress line of a finished point; `note` says how it was run.
    fn report_progress(&self, note: &str) {
        progress(&format!(
            "  -> {:.0} pages/s, {:.3} GB/s, p50 {:.0} us, p99 {:.0} us, hit {:.1}%{note}",
            self.pages_per_s,
            self.gbps,
            pct(&self.hist, 0.5),
            pct(&self.hist, 0.99),
            self.hit_pct
        ));
    }

    fn to_json(&self, tokens_per_page: usize) -> Value {
        json!({
            "op": format!("{:?}", self.op).to_lowercase(),
            "frontend": format!("{:?}", self.frontend).to_lowercase(),
            "concurrency": self.concurrency,
            "batch": self.batch,
            "pages_per_s": self.pages_per_s,
            "tokens_per_s": self.pages_per_s * tokens_per_page as f64,
            "gbps": self.gbps,
            "hit_pct": self.hit_pct,
            "calls": self.hist.len(),
            "p50_us": pct(&self.hist, 0.5),
            "p95_us": pct(&self.hist, 0.95),
            "p99_us": pct(&self.hist, 0.99),
            "p999_us": pct(&self.hist, 0.999),
            "max_us": self.hist.max() as f64,
        })
    }

    fn md(&self, args: &HicacheArgs, peak: bool) -> String {
        format!(
            "| {}{} | {} | {:?} | {} | {} | {} | {:.0} | {:.0} | {:.3} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} |",
            format!("{:?}", self.op).to_lowercase(),
            if peak { " (PEAK)" } else { "" },
            format!("{:?}", self.frontend).to_lowercase(),
            args.layout,
            args.page_size,
            self.batch,
            self.concurrency,
            self.pages_per_s,
            self.pages_per_s * args.tokens_per_page as f64,
            self.gbps,
            pct(&self.hist, 0.5),
            pct(&self.hist, 0.95),
            pct(&self.hist, 0.99),
            pct(&self.hist, 0.999),
            self.hist.max() as f64,
            self.hit_pct,
        )
    }
}

/// One paired round (`--paired-rounds`): the raw TCP stream reference and a
/// get at the same concurrency, measured back to back.
#[derive(Debug, Clone)]
pub struct Pair {
    pub frontend: Frontend,
    pub concurrency: usize,
    pub raw_tcp_gbps: f64,
    pub get_gbps: f64,
    /// Which of the two ran first in this round.
    pub reference_first: bool,
}

impl Pair {
    fn ratio(&self) -> f64 {
        self.get_gbps / self.raw_tcp_gbps.max(1e-12)
    }

    fn to_json(&self) -> Value {
        json!({
            "frontend": format!("{:?}", self.frontend).to_lowercase(),
            "concurrency": self.concurrency,
            "raw_tcp_gbps": self.raw_tcp_gbps,
            "get_gbps": self.get_gbps,
            "get_vs_raw_tcp": self.ratio(),
            "reference_first": self.reference_first,
        })
    }
}

/// Header of the Markdown (and console) table of [`Row::md`] rows.
const MD_TABLE_HEADER: &str = "| op | frontend | layout | page B | batch | threads | pages/s | tokens/s | GB/s | p50 µs | p95 µs | p99 µs | p999 µs | max µs | hit % |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";

/// The median of `values` (the mean of the middle two for an even count).
fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// `args.paired_rounds` rounds of (raw TCP stream, `get(concurrency)`) at
/// the concurrency of the fastest get row of `frontend` in `rows`; none when
/// the sweep has no such row or the run has no raw TCP server (`raw`).
/// The order alternates (the reference first in rounds 1, 3, ...) so that a
/// load that rises or falls during the rounds favours neither side.
fn paired_rounds(
    args: &HicacheArgs,
    raw: Option<(&str, u16)>,
    rows: &[Row],
    frontend: Frontend,
    mut get: impl FnMut(usize) -> Result<Row, String>,
) -> Result<Vec<Pair>, String> {
    let peak = rows
        .iter()
        .filter(|r| r.op == Op::Get && r.frontend == frontend && r.batch == args.batch_size)
        .max_by(|a, b| a.pages_per_s.total_cmp(&b.pages_per_s));
    let (Some(raw), Some(peak)) = (raw, peak) else {
        return Ok(Vec::new());
    };
    let concurrency = peak.concurrency;
    let mut pairs = Vec::with_capacity(args.paired_rounds);
    for round in 0..args.paired_rounds {
        progress(&format!(
            "paired round {}/{} ({frontend:?} get at concurrency {concurrency} and the raw TCP stream) ...",
            round + 1,
            args.paired_rounds
        ));
        let reference = || {
            raw_tcp_gbps(
                raw,
                args.page_size,
                args.page_size * args.batch_size,
                args.warmup,
                args.duration,
            )
        };
        let reference_first = round % 2 == 0;
        let (raw, got) = if reference_first {
            let raw = reference()?;
            (raw, get(concurrency)?.gbps)
        } else {
            let got = get(concurrency)?.gbps;
            (reference()?, got)
        };
        let pair = Pair {
            frontend,
            concurrency,
            raw_tcp_gbps: raw,
            get_gbps: got,
            reference_first,
        };
        progress(&format!(
            "  -> raw TCP {raw:.3} GB/s, get {got:.3} GB/s: {:.0}%",
            100.0 * pair.ratio()
        ));
        pairs.push(pair);
    }
    Ok(pairs)
}

impl HicacheArgs {
    /// Refuses what this build cannot measure, with what is missing.
    pub fn check(&self) -> Result<(), String> {
        if self.gpu {
            return Err(
                "--gpu: this build has no GPU support (no CUDA, no GPUDirect \
                        registration); run without --gpu to measure host memory"
                    .into(),
            );
        }
        if !matches!(self.protocol(), "tcp" | "rdma") {
            return Err(format!(
                "--protocol {}: expected tcp or rdma",
                self.protocol()
            ));
        }
        if self.processes == 0 {
            return Err("--processes must be >= 1".into());
        }
        if self.processes > 1 && self.frontend == Frontend::Python {
            return Err(
                "--processes > 1 drives the Rust front end only: several Python \
                        consumers are several `--frontend python` runs"
                    .into(),
            );
        }
        if self.page_size == 0 || self.batch_size == 0 || self.tokens_per_page == 0 {
            return Err("--page-size, --batch-size and --tokens-per-page must be > 0".into());
        }
        if self.layout == Layout::Mha && !self.page_size.is_multiple_of(2) {
            return Err("--layout mha splits a page into K and V: --page-size must be even".into());
        }
        if self.working_set < self.batch_size {
            return Err("--working-set must be at least --batch-size".into());
        }
        if self.concurrencies.is_empty() || self.concurrencies.contains(&0) || self.concurrency == 0
        {
            return Err("concurrencies must be >= 1".into());
        }
        Ok(())
    }

    /// The data plane of this run: `--protocol`, else `rdma` when a device is
    /// named (seed 004's commands name one and mean RDMA), else `tcp`.
    pub fn protocol(&self) -> &str {
        protocol_or_default(
            self.protocol.as_deref(),
            !self.device_name.is_empty() || !self.devices.is_empty(),
        )
    }

    /// Label of the output files: `--tag`, else the protocol.
    fn tag(&self) -> &str {
        self.tag.as_deref().unwrap_or(self.protocol())
    }

    /// Where this host's nodes are reached (see [`resolve_local_host`]).
    fn local_host(&self) -> LocalHost {
        resolve_local_host(self.local_host.as_deref(), self.discovery_addr.as_deref())
    }

    fn rank(&self) -> RankKeys {
        RankKeys::new(0, 1, 0, 1, self.layout == Layout::Mla).expect("rank 0 of 1")
    }

    /// The flags every process of a run must agree on (the producer's
    /// objects and the cluster's settings), for the child processes it starts.
    fn shared_flags(&self) -> Vec<String> {
        let mut flags = vec![
            ("--layout", format!("{:?}", self.layout).to_lowercase()),
            ("--page-size", self.page_size.to_string()),
            ("--working-set", self.working_set.to_string()),
            ("--shards", self.shards.to_string()),
            ("--replicas", self.replicas.to_string()),
            ("--protocol", self.protocol().to_string()),
        ];
        // Only a given --local-host: a child resolves the default from its
        // own discovery address, which stays on this host exactly when ours does.
        if let Some(host) = &self.local_host {
            flags.push(("--local-host", host.clone()));
        }
        if !self.device_name.is_empty() {
            flags.push(("--device-name", self.device_name.clone()));
        }
        if !self.devices.is_empty() {
            flags.push(("--devices", self.devices.join(",")));
        }
        flags
            .into_iter()
            .flat_map(|(flag, value)| [flag.to_string(), value])
            .collect()
    }

    /// Bytes of one stored object.
    fn object_bytes(&self) -> usize {
        self.page_size / self.rank().components()
    }

    /// Object names of page key `key` (what PeerCacheStore's v1 calls use).
    fn objects(&self, key: &str) -> Vec<String> {
        self.rank().component_keys(key)
    }

    fn node_config(&self, discovery: &str, node_id: &str, pool: usize) -> Result<Config, String> {
        let host = self.local_host();
        let mut config = json!({
            "discovery_addr": discovery,
            "node_id": node_id,
            "global_segment_size": pool,
            "shards": self.shards,
            // null: the engine's automatic address.
            "local_hostname": host.advertised,
            "control_bind_host": host.bind,
            "model_name": MODEL,
            "max_channels_per_peer": self.max_channels,
            "directory_replicas": self.replicas,
            "directory_read_cache_ttl": self.dir_cache_ttl,
            "heartbeat_interval": 0.5,
            "member_ttl": 3,
            "disk_enabled": false,
            "metrics_enabled": false,
            "protocol": self.protocol(),
            // An RDMA run never silently measures the TCP fallback: its
            // nodes fail to start without a usable device.
            "require_rdma": self.protocol() == "rdma",
            "device_name": self.device_name,
        });
        if !self.devices.is_empty() {
            config["device_names"] = json!(self.devices.join(","));
        }
        Config::from_json(&config.to_string()).map_err(|e| e.to_string())
    }

    /// Destination region per consumer thread: the working set's size, at
    /// most 64 MiB, at least one batch.
    fn dst_region_bytes(&self) -> usize {
        let batch = self.batch_size * self.page_size;
        let region = (self.working_set * self.page_size).min(64 << 20).max(batch);
        region / batch * batch
    }

    fn pool_bytes(&self) -> usize {
        self.working_set * self.page_size * 2 + (64 << 20)
    }
}

/// `given` (`--protocol`), else `rdma` when the run names a device, else `tcp`.
pub(crate) fn protocol_or_default(given: Option<&str>, device_named: bool) -> &str {
    match given {
        Some(protocol) => protocol,
        None if device_named => "rdma",
        None => "tcp",
    }
}

/// Where a node of this run is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LocalHost {
    /// The node's `local_hostname`; `None` lets the engine advertise the
    /// address that routes to the discovery head.
    advertised: Option<String>,
    /// The node's `control_bind_host`, and where `serve` listens for the raw
    /// TCP reference.
    bind: String,
}

/// Where this host's nodes are reached, from `--local-host` (`given`) and
/// `--discovery-addr`: the given host when there is one; 127.0.0.1 when the
/// run stays on this host (no discovery address, or a loopback one);
/// otherwise the engine's automatic address and every interface, so that
/// peers on other hosts reach the node.
fn resolve_local_host(given: Option<&str>, discovery: Option<&str>) -> LocalHost {
    let on = |host: &str| LocalHost {
        advertised: Some(host.to_string()),
        bind: host.to_string(),
    };
    if let Some(host) = given {
        return on(host);
    }
    let stays_on_this_host = match discovery {
        None => true,
        // The head is the first entry, as the engine reads it.
        Some(d) => parse_host_list(d, DEFAULT_DISCOVERY_PORT)
            .ok()
            .and_then(|heads| heads.into_iter().next())
            .is_some_and(|head| {
                head.host.eq_ignore_ascii_case("localhost")
                    || head.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
            }),
    };
    if stays_on_this_host {
        on("127.0.0.1")
    } else {
        LocalHost {
            advertised: None,
            bind: "0.0.0.0".into(),
        }
    }
}

/// Working-set page key `i`.
pub fn ws_key(i: usize) -> String {
    format!("hc-{i}")
}

/// The producer role: publishes the working set, serves a raw TCP page
/// stream (the same-run reference), prints `READY <discovery> <raw port>`,
/// and runs until SIGINT or SIGTERM, or until stdin ends when stdin is a
/// pipe or the terminal it runs in the foreground of (see [`StdinWatch`]).
/// Dropping the node on the way out deregisters it.
pub fn serve(args: &HicacheArgs, meta_port: Option<u16>) -> Result<(), String> {
    args.check()?;
    // Before the node starts: a signal while it publishes still stops it
    // through the drop below.
    stop_on_signals();
    let host = args.local_host();
    let discovery = match &args.discovery_addr {
        Some(d) => d.clone(),
        // No discovery address: the run stays on this host, so `bind` is
        // the given --local-host or 127.0.0.1.
        None => HostPort {
            host: host.bind.clone(),
            port: meta_port.unwrap_or(DEFAULT_DISCOVERY_PORT),
        }
        .to_string(),
    };
    let node =
        Node::start_cluster(args.node_config(&discovery, "bench-producer", args.pool_bytes())?)
            .map_err(|e| e.to_string())?;
    let obj = args.object_bytes();
    let mut src = AlignedBuf::new(args.working_set * args.page_size);
    src.fill_pattern(7);
    for chunk in (0..args.working_set).collect::<Vec<_>>().chunks(64) {
        let mut keys = Vec::new();
        let mut pages: Vec<&[u8]> = Vec::new();
        for &i in chunk {
            for (c, name) in args.objects(&ws_key(i)).into_iter().enumerate() {
                let at = i * args.page_size + c * obj;
                keys.push(name);
                pages.push(&src.as_slice()[at..at + obj]);
            }
        }
        let ok = node
            .batch_set_pages(&keys, &pages)
            .map_err(|e| e.to_string())?;
        if !ok.iter().all(|&b| b) {
            return Err("the producer could not publish its working set".into());
        }
    }
    let raw = TcpListener::bind((host.bind.as_str(), 0))
        .map_err(|e| format!("raw TCP reference on {}: {e}", host.bind))?;
    let raw_port = raw.local_addr().map_err(|e| e.to_string())?.port();
    serve_raw_references(raw, args.page_size);
    println!("READY {discovery} {raw_port}");
    std::io::stdout().flush().ok();
    let stdin = StdinWatch::of_stdin();
    eprintln!(
        "serve: published {} pages ({:?}, {} B) on {discovery}; raw TCP reference on {}:{raw_port}; {}",
        args.working_set,
        args.layout,
        args.page_size,
        host.bind,
        match stdin {
            StdinWatch::Ignored => "runs until SIGINT or SIGTERM",
            StdinWatch::Pipe | StdinWatch::Terminal => {
                "runs until stdin ends, SIGINT or SIGTERM"
            }
        }
    );
    wait_for_stop(stdin);
    drop(node);
    Ok(())
}

/// Set by SIGINT and SIGTERM once [`stop_on_signals`] ran.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set [`STOP_REQUESTED`] instead of killing the
/// process, so that `serve` can drop its node (deregister) before it exits.
fn stop_on_signals() {
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(
            libc::SIGINT,
            request_stop as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            request_stop as *const () as libc::sighandler_t,
        );
    }
}

/// Whether the end of stdin stops `serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StdinWatch {
    /// A pipe (FIFO): its writer closing is the signal to stop (the runs
    /// that start a producer, perf-scripts/full-machine.sh).
    Pipe,
    /// A terminal: Ctrl-D stops it, read only while this process is in the
    /// terminal's foreground (a background read would stop the process with
    /// SIGTTIN).
    Terminal,
    /// Anything else: /dev/null of a job started with `&` from a script
    /// ends at once, a file ends after its last byte; neither means "stop".
    Ignored,
}

impl StdinWatch {
    fn of_stdin() -> Self {
        // SAFETY: isatty and fstat only read the state of fd 0 (fstat into a
        // zeroed stat it owns); an invalid fd is an error return.
        unsafe {
            if libc::isatty(libc::STDIN_FILENO) == 1 {
                return StdinWatch::Terminal;
            }
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(libc::STDIN_FILENO, &mut st) == 0
                && st.st_mode & libc::S_IFMT == libc::S_IFIFO
            {
                return StdinWatch::Pipe;
            }
        }
        StdinWatch::Ignored
    }

    /// Whether stdin may be read now.
    fn readable_now(self) -> bool {
        match self {
            StdinWatch::Pipe => true,
            // SAFETY: both only query the process and fd 0.
            StdinWatch::Terminal => unsafe {
                libc::tcgetpgrp(libc::STDIN_FILENO) == libc::getpgrp()
            },
            StdinWatch::Ignored => false,
        }
    }
}

/// Returns once [`STOP_REQUESTED`] is set or, as `stdin` says, stdin ends.
/// Stdin is polled with a timeout rather than read in a blocking thread, so
/// that a signal is noticed within [`STOP_POLL_MS`].
fn wait_for_stop(stdin: StdinWatch) {
    let mut sink = [0u8; 4096];
    while !STOP_REQUESTED.load(Ordering::SeqCst) {
        if !stdin.readable_now() {
            std::thread::sleep(Duration::from_millis(STOP_POLL_MS as u64));
            continue;
        }
        let mut fd = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, owned by this frame.
        if unsafe { libc::poll(&mut fd, 1, STOP_POLL_MS) } <= 0 {
            continue;
        }
        // Readable (or hung up): whatever arrives is discarded; the end of
        // the input, or a read error other than an interruption, stops.
        match std::io::stdin().read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Longest wait of `serve` between checks for a stop request, ms.
const STOP_POLL_MS: libc::c_int = 50;

/// A producer process started by this run.
struct Producer {
    child: Child,
    discovery: String,
    /// Its raw TCP references: the discovery host (the producer listens on
    /// the host it is reached on) and the port of its `READY` line.
    raw: (String, u16),
}

impl Producer {
    fn raw(&self) -> (&str, u16) {
        (&self.raw.0, self.raw.1)
    }
}

impl Drop for Producer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_producer(args: &HicacheArgs) -> Result<Producer, String> {
    let meta_port = TcpListener::bind((args.local_host().bind.as_str(), 0))
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let mut child = crate::self_command()?
        .args(["serve", "--meta-port", &meta_port.to_string()])
        .args(args.shared_flags())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the producer process: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let mut parts = line.split_whitespace();
    let ready = match (
        parts.next(),
        parts.next(),
        parts.next().and_then(|p| p.parse().ok()),
    ) {
        (Some("READY"), Some(discovery), Some(raw_port)) => {
            parse_host_list(discovery, DEFAULT_DISCOVERY_PORT)
                .ok()
                .and_then(|heads| heads.into_iter().next())
                .map(|head| (discovery.to_string(), (head.host, raw_port)))
        }
        _ => None,
    };
    match ready {
        Some((discovery, raw)) => Ok(Producer {
            child,
            discovery,
            raw,
        }),
        None => {
            let _ = child.kill();
            Err(format!("the producer did not start: {line:?}"))
        }
    }
}

/// The consumer side of a run: a node joined to the producer, the working
/// set's object names, destination buffers.
struct Consumer<'a> {
    args: &'a HicacheArgs,
    node: Node,
    objects: Vec<String>,
    dst: AlignedBuf,
    max_threads: usize,
    set_round: AtomicU64,
}

impl<'a> Consumer<'a> {
    fn start(args: &'a HicacheArgs, discovery: &str, max_threads: usize) -> Result<Self, String> {
        // One id per process: several consumers (--processes) join together.
        let node_id = format!("bench-consumer-{}", std::process::id());
        let node = Node::start_cluster(args.node_config(discovery, &node_id, args.pool_bytes())?)
            .map_err(|e| e.to_string())?;
        let objects: Vec<String> = (0..args.working_set)
            .flat_map(|i| args.objects(&ws_key(i)))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        progress(&format!(
            "waiting for the producer's {} pages ...",
            args.working_set
        ));
        let all_present = |node: &Node| -> Result<bool, String> {
            // In chunks: one call is limited to MAX_BATCH_PAGES objects.
            for chunk in objects.chunks(8192) {
                if node.batch_exists(chunk).map_err(|e| e.to_string())? < chunk.len() {
                    return Ok(false);
                }
            }
            Ok(true)
        };
        while node.members() < 2 || !all_present(&node)? {
            if Instant::now() > deadline {
                // Opens with the symptom seed 000's troubleshooting table
                // lists, then says which of its two causes it is.
                return Err(if node.members() < 2 {
                    format!(
                        "timed out waiting for the producer: no producer joined through \
                         {discovery} in 60 s ({} member(s)); is the discovery port open \
                         between the hosts, and do both sides use the same --discovery-addr?",
                        node.members()
                    )
                } else {
                    format!(
                        "timed out waiting for the producer: the consumer never saw the \
                         producer's working set at {discovery} (same --layout, --page-size, \
                         --working-set on both sides?)"
                    )
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Consumer {
            dst: AlignedBuf::new(args.dst_region_bytes() * max_threads),
            args,
            node,
            objects,
            max_threads,
            set_round: AtomicU64::new(0),
        })
    }

    /// One batch call of `op` by thread `t`: (pages, pages hit, bytes moved).
    fn call(&self, op: Op, t: usize, round: u64, batch: usize) -> (u64, u64, u64) {
        let a = self.args;
        let per = a.rank().components();
        let obj = a.object_bytes();
        let pages_in_ws = a.working_set;
        let first = ((round as usize) * batch + t * 7919) % (pages_in_ws - batch + 1);
        let names = &self.objects[first * per..(first + batch) * per];
        match op {
            Op::Get => {
                // Like SGLang's host pool, destinations move around a large
                // region (cold in cache), not one hot batch-sized buffer.
                let region = a.dst_region_bytes();
                let slots = region / (a.batch_size * a.page_size);
                let base = t * region + (round as usize % slots) * a.batch_size * a.page_size;
                let dsts: Vec<*mut u8> = (0..batch * per)
                    // SAFETY: thread t's own region of the destination buffer.
                    .map(|j| unsafe { self.dst.ptr().add(base + j * obj) })
                    .collect();
                let lens = vec![obj; batch * per];
                // SAFETY: distinct object-sized slots of a live buffer.
                let ok = unsafe { self.node.batch_get(names, &dsts, &lens) }.unwrap_or_default();
                let hit = ok.chunks(per).filter(|p| p.iter().all(|&x| x)).count() as u64;
                (batch as u64, hit, hit * a.page_size as u64)
            }
            Op::Exists => {
                let ok = self.node.batch_exists_each(names).unwrap_or_default();
                let hit = ok.chunks(per).filter(|p| p.iter().all(|&x| x)).count() as u64;
                (batch as u64, hit, 0)
            }
            Op::Set => {
                let n = self.set_round.fetch_add(1, Ordering::Relaxed);
                let keys: Vec<String> = (0..batch)
                    .flat_map(|i| a.objects(&format!("set-{}-{n}-{i}", std::process::id())))
                    .collect();
                let base = t * a.dst_region_bytes();
                let srcs: Vec<*const u8> = (0..batch * per)
                    // SAFETY: as for get; read only.
                    .map(|j| unsafe { self.dst.ptr().add(base + j * obj) as *const u8 })
                    .collect();
                let lens = vec![obj; batch * per];
                // SAFETY: live source slots.
                let ok = unsafe { self.node.batch_set(&keys, &srcs, &lens) }.unwrap_or_default();
                let done = ok.chunks(per).filter(|p| p.iter().all(|&x| x)).count() as u64;
                (batch as u64, done, done * a.page_size as u64)
            }
        }
    }

    fn point(
        &self,
        op: Op,
        frontend: Frontend,
        threads: usize,
        batch: usize,
    ) -> Result<Row, String> {
        let a = self.args;
        progress(&format!(
            "{op:?} frontend={frontend:?} concurrency={threads} batch={batch}: {:.0}+{:.0} s",
            a.warmup, a.duration
        ));
        if frontend == Frontend::Python {
            return Err("Python points run before the Rust consumer starts".into());
        }
        if threads > self.max_threads {
            return Err(format!(
                "concurrency {threads} above the prepared {}",
                self.max_threads
            ));
        }
        let (gbps, pages_per_s, hit_ratio, hist) = sweep(threads, a.warmup, a.duration, |t, r| {
            self.call(op, t, r, batch)
        });
        let row = Row {
            op,
            frontend,
            concurrency: threads,
            batch,
            pages_per_s,
            gbps,
            hit_pct: 100.0 * hit_ratio,
            hist,
        };
        row.report_progress("");
        Ok(row)
    }
}

pub(crate) fn progress(msg: &str) {
    eprintln!("peercache-bench: {msg}");
}

/// Runs one point through `peercache.bench_driver` (PeerCacheStore from
/// Python threads) and reads its JSON answer.
fn python_point(
    a: &HicacheArgs,
    discovery: &str,
    op: Op,
    threads: usize,
    batch: usize,
) -> Result<Row, String> {
    let python = a
        .python
        .clone()
        .or_else(|| std::env::var("PEERCACHE_PYTHON").ok())
        .unwrap_or_else(|| "python3".into());
    let spec = json!({
        "discovery_addr": discovery,
        // bench_driver sets local_hostname and control_bind_host to it; null
        // leaves both to the engine, as the Rust nodes' `LocalHost` does.
        "local_host": a.local_host().advertised,
        "model_name": MODEL,
        "layout": format!("{:?}", a.layout).to_lowercase(),
        "page_size": a.page_size,
        "tokens_per_page": a.tokens_per_page,
        "working_set": a.working_set,
        "op": format!("{op:?}").to_lowercase(),
        "threads": threads,
        "batch": batch,
        "duration": a.duration,
        "warmup": a.warmup,
        "shards": a.shards,
        "max_channels": a.max_channels,
        "replicas": a.replicas,
        "dir_cache_ttl": a.dir_cache_ttl,
        "protocol": a.protocol(),
        "device_name": a.device_name,
        "device_names": a.devices.join(","),
    });
    let out = std::process::Command::new(&python)
        .args(["-m", "peercache.bench_driver", &spec.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {python} -m peercache.bench_driver: {e} (install the peercache package into that interpreter, or pass --python)"))?;
    if !out.status.success() {
        return Err(format!("peercache.bench_driver failed ({})", out.status));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or("peercache.bench_driver printed no result")?;
    let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for us in v["latencies_us"].as_array().ok_or("no latencies")? {
        let _ = hist.record(us.as_f64().unwrap_or(1.0).max(1.0) as u64);
    }
    let elapsed = v["elapsed_s"].as_f64().unwrap_or(0.0).max(1e-9);
    let pages = v["pages"].as_f64().unwrap_or(0.0);
    let hits = v["hits"].as_f64().unwrap_or(0.0);
    let row = Row {
        op,
        frontend: Frontend::Python,
        concurrency: threads,
        batch,
        pages_per_s: pages / elapsed,
        gbps: v["bytes"].as_f64().unwrap_or(0.0) / elapsed / 1e9,
        hit_pct: if pages > 0.0 {
            100.0 * hits / pages
        } else {
            0.0
        },
        hist,
    };
    row.report_progress(" (python)");
    Ok(row)
}

/// The modes that produce result files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Latency,
    Throughput,
    Saturation,
    Suite,
    Drive,
    Compare,
}

/// Runs `mode`: starts (or joins) the producer, measures, writes the files.
pub fn run(args: &HicacheArgs, mode: Mode) -> Result<(), String> {
    run_with(args, mode, None)
}

/// [`run`]; `compare` passes its transfer_engine_bench (located once for all
/// block sizes, or why it is not available) to measure after the sweep.
fn run_with(
    args: &HicacheArgs,
    mode: Mode,
    teb: Option<&Result<TransferEngineBench, String>>,
) -> Result<(), String> {
    args.check()?;
    if args.protocol() == "tcp" {
        progress("protocol tcp: a functional run, not a performance scenario (seed 004); name an RDMA device (--device-name / --devices) for figures to publish");
    }
    if args.paired_rounds > 0 {
        if !matches!(mode, Mode::Suite | Mode::Compare) {
            return Err(
                "--paired-rounds: only `suite` and `compare` measure the raw TCP stream reference"
                    .into(),
            );
        }
        // The reference is served by the producer process this run starts.
        if args.discovery_addr.is_some() {
            return Err("--paired-rounds needs the producer this run starts (its raw TCP server): drop --discovery-addr".into());
        }
    }
    let producer = match &args.discovery_addr {
        Some(_) => None,
        None => {
            if mode == Mode::Drive {
                return Err("drive needs --discovery-addr of a running `serve`".into());
            }
            progress("starting the producer process ...");
            Some(start_producer(args)?)
        }
    };
    let discovery = producer
        .as_ref()
        .map(|p| p.discovery.clone())
        .or_else(|| args.discovery_addr.clone())
        .expect("one of the two");
    let max_threads = args
        .concurrencies
        .iter()
        .copied()
        .chain([args.concurrency, 1])
        .max()
        .unwrap_or(1);
    // Every point, in order: (op, front end, concurrency, batch).
    let mut plan: Vec<(Op, Frontend, usize, usize)> = Vec::new();
    match mode {
        Mode::Latency => plan.push((Op::Get, args.frontend, 1, 1)),
        Mode::Throughput => plan.push((args.op, args.frontend, args.concurrency, args.batch_size)),
        Mode::Saturation | Mode::Drive => plan.extend(
            args.concurrencies
                .iter()
                .map(|&c| (args.op, args.frontend, c, args.batch_size)),
        ),
        Mode::Suite => {
            plan.push((Op::Get, Frontend::Rust, 1, 1));
            for op in [Op::Get, Op::Set, Op::Exists] {
                plan.extend(
                    args.concurrencies
                        .iter()
                        .map(|&c| (op, Frontend::Rust, c, args.batch_size)),
                );
            }
            plan.extend(
                args.concurrencies
                    .iter()
                    .map(|&c| (Op::Get, Frontend::Python, c, args.batch_size)),
            );
        }
        Mode::Compare => plan.extend(
            args.concurrencies
                .iter()
                .map(|&c| (Op::Get, args.frontend, c, args.batch_size)),
        ),
    }
    let mut rows: Vec<Row> = Vec::new();
    // Python points first, before this process's consumer node joins: the
    // Python consumer then meets the same two-node cluster (same directory
    // placement) the Rust consumer meets afterwards.
    for &(op, fe, c, b) in plan.iter().filter(|p| p.1 == Frontend::Python) {
        progress(&format!(
            "{op:?} frontend=Python concurrency={c} batch={b}: {:.0}+{:.0} s",
            args.warmup, args.duration
        ));
        debug_assert_eq!(fe, Frontend::Python);
        rows.push(python_point(args, &discovery, op, c, b)?);
    }
    let raw = producer.as_ref().map(Producer::raw);
    let mut pairs = paired_rounds(args, raw, &rows, Frontend::Python, |c| {
        python_point(args, &discovery, Op::Get, c, args.batch_size)
    })?;
    let consumer = Consumer::start(args, &discovery, max_threads)?;
    let mut references = serde_json::Map::new();
    let mut peak_rss = rss_bytes();
    let rust_point = |op, c, b| {
        if args.processes > 1 {
            multi_process_point(args, &discovery, op, c, b)
        } else {
            consumer.point(op, Frontend::Rust, c, b)
        }
    };
    for &(op, _, c, b) in plan.iter().filter(|p| p.1 == Frontend::Rust) {
        rows.push(rust_point(op, c, b)?);
        peak_rss = peak_rss.max(rss_bytes());
    }
    pairs.extend(paired_rounds(args, raw, &rows, Frontend::Rust, |c| {
        rust_point(Op::Get, c, args.batch_size)
    })?);
    peak_rss = peak_rss.max(rss_bytes());
    // The round trip references land where thread 0 of the consumer puts its
    // batches: at the start of each batch-sized slot of its destination region.
    let batch_bytes = args.batch_size * args.page_size;
    let places = (args.dst_region_bytes() / batch_bytes, batch_bytes);
    if let Some(p) = producer
        .as_ref()
        .filter(|_| matches!(mode, Mode::Suite | Mode::Latency))
    {
        progress("raw TCP round trip reference (one page per request, one connection) ...");
        // One page per slot, as the batch-1 gets land.
        let rt = raw_tcp_round_trips(
            p.raw(),
            (args.page_size, 1),
            &consumer.dst,
            places,
            args.warmup,
            args.duration,
        )?;
        references.insert("raw_tcp_round_trip_p50_us".into(), json!(pct(&rt, 0.5)));
        references.insert("raw_tcp_round_trip_p99_us".into(), json!(pct(&rt, 0.99)));
    }
    if matches!(mode, Mode::Suite | Mode::Compare) {
        if let Some(p) = &producer {
            progress("raw TCP stream reference (same page size, one connection) ...");
            let raw = raw_tcp_gbps(
                p.raw(),
                args.page_size,
                batch_bytes,
                args.warmup,
                args.duration,
            )?;
            references.insert("raw_tcp_gbps".into(), json!(raw));
        }
        let c1_get = rows
            .iter()
            .any(|r| r.op == Op::Get && r.concurrency == 1 && r.batch == args.batch_size);
        if let Some(p) = producer.as_ref().filter(|_| c1_get) {
            progress(
                "raw TCP batch round trip reference (one batch per request, one connection) ...",
            );
            // The tail the host itself gives a transfer of one batch's bytes:
            // the reference for the get's p99 against its p50 at concurrency 1.
            let rt = raw_tcp_round_trips(
                p.raw(),
                (args.page_size, args.batch_size),
                &consumer.dst,
                places,
                args.warmup,
                args.duration,
            )?;
            let (p50, p99) = (pct(&rt, 0.5), pct(&rt, 0.99));
            references.insert("raw_tcp_batch_round_trip_p50_us".into(), json!(p50));
            references.insert("raw_tcp_batch_round_trip_p99_us".into(), json!(p99));
            references.insert(
                "raw_tcp_batch_round_trip_p99_over_p50".into(),
                json!(p99 / p50.max(1.0)),
            );
        }
        progress("memcpy reference (same bytes per batch) ...");
        references.insert("memcpy_gbps".into(), json!(memcpy_gbps(args)));
        match teb {
            Some(located) => mooncake_reference(args, located, &rows, &mut references),
            None => {
                let status = match TransferEngineBench::locate(None) {
                    Ok(teb) => format!(
                        "available: {} (`peercache-bench compare` measures it beside PeerCache)",
                        teb.path.display()
                    ),
                    Err(why) => format!("not available: {why}"),
                };
                references.insert("mooncake".into(), json!(status));
            }
        }
    }
    peak_rss = peak_rss.max(rss_bytes());
    let stats = consumer.node.stats();
    // The benchmark's own page buffers are not the node's memory.
    let bench_buffers = consumer.dst.len();
    report(
        args,
        mode,
        Measured {
            rows: &rows,
            pairs: &pairs,
            references,
            shards_per_node: consumer.node.shards(),
        },
        (peak_rss, bench_buffers),
        consumer.node.pool_bytes(),
        &stats,
    )?;
    drop(consumer);
    drop(producer);
    Ok(())
}

/// memcpy of one batch's bytes, one thread, same duration: the local reference.
fn memcpy_gbps(args: &HicacheArgs) -> f64 {
    let bytes = args.batch_size * args.page_size;
    let src = {
        let mut b = AlignedBuf::new(bytes);
        b.fill_pattern(3);
        b
    };
    let dst = AlignedBuf::new(bytes);
    let (gbps, _, _, _) = sweep(1, args.warmup, args.duration, |_, _| {
        // SAFETY: two distinct live buffers of `bytes` bytes.
        unsafe { std::ptr::copy_nonoverlapping(src.ptr(), dst.ptr(), bytes) };
        std::hint::black_box(dst.ptr());
        (args.batch_size as u64, args.batch_size as u64, bytes as u64)
    });
    gbps
}

/// `compare`'s Mooncake reference: transfer_engine_bench reading blocks of
/// this run's page size, in batches of its batch size, on as many threads as
/// the get PEAK, from a target it starts on 127.0.0.1. Records
/// `mooncake_gbps`, and in `mooncake` what ran or why nothing did: a missing
/// or failing Mooncake does not cost the PeerCache figures of the run.
fn mooncake_reference(
    args: &HicacheArgs,
    located: &Result<TransferEngineBench, String>,
    rows: &[Row],
    references: &mut serde_json::Map<String, Value>,
) {
    let teb = match located {
        Ok(teb) => teb,
        Err(why) => {
            references.insert("mooncake".into(), json!(format!("not run: {why}")));
            return;
        }
    };
    let threads = rows
        .iter()
        .filter(|r| r.op == Op::Get && r.frontend == args.frontend && r.batch == args.batch_size)
        .max_by(|a, b| a.pages_per_s.total_cmp(&b.pages_per_s))
        .map_or(1, |peak| peak.concurrency);
    let setup = mooncake::Setup {
        protocol: args.protocol().to_string(),
        device_name: if args.devices.is_empty() {
            args.device_name.clone()
        } else {
            args.devices.join(",")
        },
        batch_size: args.batch_size,
        threads,
        // Mooncake measures whole seconds.
        duration_s: args.duration.ceil().max(1.0) as u32,
        segment_id: None,
        log_prefix: format!(
            "{}/hicache-compare-{}-{}-mooncake",
            args.out_dir,
            args.tag(),
            unix_time()
        )
        .into(),
    };
    match mooncake::measure(teb, &setup, &[args.page_size]) {
        Ok(measured) => {
            let run = &measured.runs[0];
            references.insert("mooncake_gbps".into(), json!(run.summary.gbps));
            references.insert(
                "mooncake".into(),
                json!(format!(
                    "{}: read, {} B blocks, batch {}, {threads} threads, {} s, {}; log {}",
                    teb.path.display(),
                    run.block_size,
                    setup.batch_size,
                    setup.duration_s,
                    setup.protocol,
                    run.log.display()
                )),
            );
        }
        Err(e) => {
            progress(&format!("Mooncake failed: {e}"));
            references.insert("mooncake".into(), json!(format!("failed: {e}")));
        }
    }
}

/// Seconds since the Unix epoch: the timestamp of result file names.
pub(crate) fn unix_time() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// The host as the Markdown files' header line names it, from a
/// [`host_block`]: `host <cpu> (<n> cpus, kernel <release>)`.
pub(crate) fn host_line(host: &Value) -> String {
    format!(
        "host {} ({} cpus, kernel {})",
        host["cpu"].as_str().unwrap_or(""),
        host["cpus"],
        host["kernel"].as_str().unwrap_or("")
    )
}

/// The `host` block of a result file: CPU, cpus, kernel, hostname.
pub(crate) fn host_block() -> Value {
    let mut host = host_info();
    host["hostname"] = json!(std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap_or_default()
        .trim());
    host
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Latency => "latency",
        Mode::Throughput => "throughput",
        Mode::Saturation => "saturation",
        Mode::Suite => "suite",
        Mode::Drive => "drive",
        Mode::Compare => "compare",
    }
}

/// What a run measured, for [`report`].
struct Measured<'a> {
    /// The sweep's points, in order.
    rows: &'a [Row],
    /// `--paired-rounds` rounds.
    pairs: &'a [Pair],
    /// Same-run references by name (`raw_tcp_gbps`, `memcpy_gbps`, ...).
    references: serde_json::Map<String, Value>,
    /// Shards the consumer node runs (`--shards`, or its own choice for 0).
    shards_per_node: usize,
}

/// Writes the JSON and Markdown files.
fn report(
    args: &HicacheArgs,
    mode: Mode,
    measured: Measured<'_>,
    (peak_rss, bench_buffers): (u64, usize),
    pool_bytes: usize,
    stats: &peercache_engine::NodeStats,
) -> Result<(), String> {
    let Measured {
        rows,
        pairs,
        references,
        shards_per_node,
    } = measured;
    // PEAK: the row with the highest throughput per (op, frontend, batch > 1).
    let mut peaks: Vec<usize> = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        if r.batch == 1 && mode != Mode::Latency {
            continue;
        }
        match peaks.iter_mut().find(|&&mut j| {
            rows[j].op == r.op && rows[j].frontend == r.frontend && rows[j].batch == r.batch
        }) {
            Some(j) if rows[*j].pages_per_s < r.pages_per_s => *j = i,
            Some(_) => {}
            None => peaks.push(i),
        }
    }
    let mut ratios = serde_json::Map::new();
    let peak_of = |op: Op, fe: Frontend| {
        peaks
            .iter()
            .map(|&j| &rows[j])
            .find(|r| r.op == op && r.frontend == fe && r.batch == args.batch_size)
    };
    if let (Some(raw), Some(get)) = (
        references.get("raw_tcp_gbps").and_then(Value::as_f64),
        peak_of(Op::Get, Frontend::Rust),
    ) {
        ratios.insert("get_peak_vs_raw_tcp".into(), json!(get.gbps / raw));
    }
    if let (Some(raw), Some(get)) = (
        references.get("raw_tcp_gbps").and_then(Value::as_f64),
        peak_of(Op::Get, Frontend::Python),
    ) {
        ratios.insert("python_get_peak_vs_raw_tcp".into(), json!(get.gbps / raw));
    }
    if let (Some(py), Some(rs)) = (
        peak_of(Op::Get, Frontend::Python),
        peak_of(Op::Get, Frontend::Rust),
    ) {
        ratios.insert(
            "python_frontend_overhead".into(),
            json!(1.0 - py.gbps / rs.gbps),
        );
    }
    let mooncake_gbps = references
        .get("mooncake_gbps")
        .and_then(Value::as_f64)
        .filter(|&m| m > 0.0);
    if let (Some(m), Some(get)) = (mooncake_gbps, peak_of(Op::Get, args.frontend)) {
        ratios.insert("get_peak_vs_mooncake".into(), json!(get.gbps / m));
    }
    if let (Some(m), Some(set)) = (
        references.get("memcpy_gbps").and_then(Value::as_f64),
        peak_of(Op::Set, Frontend::Rust),
    ) {
        ratios.insert("set_peak_vs_memcpy".into(), json!(set.gbps / m));
    }
    if let (Some(rt), Some(b1)) = (
        references
            .get("raw_tcp_round_trip_p50_us")
            .and_then(Value::as_f64),
        rows.iter().find(|r| r.op == Op::Get && r.batch == 1),
    ) {
        ratios.insert(
            "get_batch1_p50_over_raw_tcp_round_trip".into(),
            json!(pct(&b1.hist, 0.5) / rt.max(1.0)),
        );
    }
    for (frontend, name) in [
        (Frontend::Rust, "get_peak_vs_raw_tcp_paired_median"),
        (Frontend::Python, "python_get_peak_vs_raw_tcp_paired_median"),
    ] {
        let of_frontend = pairs.iter().filter(|p| p.frontend == frontend);
        if let Some(m) = median(of_frontend.map(Pair::ratio).collect()) {
            ratios.insert(name.into(), json!(m));
        }
    }
    let c1 = rows
        .iter()
        .find(|r| r.op == Op::Get && r.concurrency == 1 && r.batch == args.batch_size);
    if let Some(r) = c1 {
        ratios.insert(
            "get_c1_p99_over_p50".into(),
            json!(pct(&r.hist, 0.99) / pct(&r.hist, 0.5).max(1.0)),
        );
    }
    let stamp = unix_time();
    let host = host_block();
    let value = json!({
        "mode": mode_name(mode),
        "tag": args.tag(),
        "timestamp": stamp,
        "host": host,
        "meta": {
            "protocol": args.protocol(),
            "devices": if args.devices.is_empty() { vec![args.device_name.clone()] } else { args.devices.clone() },
            "layout": format!("{:?}", args.layout).to_lowercase(),
            "page_size": args.page_size,
            "objects_per_page": args.rank().components(),
            "tokens_per_page": args.tokens_per_page,
            "batch_size": args.batch_size,
            "concurrencies": args.concurrencies,
            "concurrency": args.concurrency,
            "processes": args.processes,
            "working_set": args.working_set,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "max_channels": args.max_channels,
            "dir_cache_ttl": args.dir_cache_ttl,
            "shards": args.shards,
            "shards_per_node": shards_per_node,
            "directory_replicas": args.replicas,
            "paired_rounds": args.paired_rounds,
            "frontend": format!("{:?}", args.frontend).to_lowercase(),
            "build": {
                "version": env!("CARGO_PKG_VERSION"),
                "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            },
        },
        "results": rows.iter().map(|r| r.to_json(args.tokens_per_page)).collect::<Vec<_>>(),
        "peak": peaks.iter().map(|&j| rows[j].to_json(args.tokens_per_page)).collect::<Vec<_>>(),
        "paired": pairs.iter().map(Pair::to_json).collect::<Vec<_>>(),
        "references": references,
        "ratios": ratios,
        "memory": {
            "peak_rss_bytes": peak_rss,
            "pool_bytes": pool_bytes,
            "bench_buffers_bytes": bench_buffers,
            "node_rss_beyond_pool_bytes": peak_rss.saturating_sub(pool_bytes as u64 + bench_buffers as u64),
        },
        "consumer_counters": stats.fields().into_iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
    });
    std::fs::create_dir_all(&args.out_dir).map_err(|e| format!("{}: {e}", args.out_dir))?;
    let base = format!(
        "{}/hicache-{}-{}-{stamp}",
        args.out_dir,
        mode_name(mode),
        args.tag()
    );
    std::fs::write(
        format!("{base}.json"),
        serde_json::to_string_pretty(&value).expect("json"),
    )
    .map_err(|e| format!("{base}.json: {e}"))?;
    let mut md = format!(
        "# peercache-bench {} ({})\n\nprotocol {} · layout {:?} · page {} B · {} tokens/page · batch {} · working set {} pages · {} s + {} s warmup · {}\n\n",
        mode_name(mode),
        args.tag(),
        args.protocol(),
        args.layout,
        args.page_size,
        args.tokens_per_page,
        args.batch_size,
        args.working_set,
        args.duration,
        args.warmup,
        host_line(&value["host"]),
    );
    md.push_str(MD_TABLE_HEADER);
    for (i, r) in rows.iter().enumerate() {
        md.push_str(&r.md(args, peaks.contains(&i)));
        md.push('\n');
    }
    if !pairs.is_empty() {
        md.push_str("\nPaired rounds (the raw TCP stream and a get at the PEAK's concurrency, back to back):\n\n");
        md.push_str(
            "| round | frontend | threads | first | raw TCP GB/s | get GB/s | get / raw TCP |\n",
        );
        md.push_str("|---|---|---|---|---|---|---|\n");
        for (i, p) in pairs.iter().enumerate() {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {:.3} | {:.3} | {:.0} % |\n",
                i + 1,
                format!("{:?}", p.frontend).to_lowercase(),
                p.concurrency,
                if p.reference_first { "raw TCP" } else { "get" },
                p.raw_tcp_gbps,
                p.get_gbps,
                100.0 * p.ratio()
            ));
        }
    }
    if let (Some(m), Some(get)) = (mooncake_gbps, peak_of(Op::Get, args.frontend)) {
        md.push_str(&format!(
            "\nMooncake transfer_engine_bench (read, same block size and batch, {} threads as the get PEAK): {m:.3} GB/s; PeerCache get PEAK: {:.3} GB/s = {:.0} % of Mooncake\n",
            get.concurrency,
            get.gbps,
            100.0 * get.gbps / m
        ));
    }
    if !value["references"]
        .as_object()
        .map(|o| o.is_empty())
        .unwrap_or(true)
    {
        md.push_str(&format!(
            "\nReferences (same run): {}\n",
            value["references"]
        ));
    }
    if !value["ratios"]
        .as_object()
        .map(|o| o.is_empty())
        .unwrap_or(true)
    {
        md.push_str(&format!("\nRatios: {}\n", value["ratios"]));
    }
    md.push_str(&format!(
        "\nMemory of the consumer process: peak RSS {} MiB = pool {} MiB + the benchmark's page buffers {} MiB + {} MiB of node (and benchmark) overhead.\n",
        peak_rss >> 20,
        pool_bytes >> 20,
        bench_buffers >> 20,
        peak_rss.saturating_sub(pool_bytes as u64 + bench_buffers as u64) >> 20
    ));
    std::fs::write(format!("{base}.md"), &md).map_err(|e| format!("{base}.md: {e}"))?;
    print!("{md}");
    progress(&format!("wrote {base}.json and {base}.md"));
    Ok(())
}

/// Options of `compare`.
#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    #[command(flatten)]
    pub hicache: HicacheArgs,
    /// Page sizes to compare at (e.g. 4k,16k,64k,256k,1m); default: --page-size.
    #[arg(long, value_delimiter = ',')]
    pub block_sizes: Vec<String>,
    /// Mooncake's transfer_engine_bench; default: the one on PATH. When it is
    /// missing or does not load, the results say why and the run goes on.
    #[arg(long)]
    pub teb: Option<std::path::PathBuf>,
}

/// Bytes of a `--block-sizes` entry (`4k`, `64k`, `1m`, or bytes).
pub(crate) fn block_size_bytes(size: &str) -> Result<usize, String> {
    let bytes = peercache_engine::config::size::parse_size(size)
        .map_err(|e| format!("--block-sizes {size}: {e}"))?;
    usize::try_from(bytes).map_err(|_| format!("--block-sizes {size}: too large"))
}

/// `compare`: PeerCache remote get against the same-run references (memcpy,
/// a raw TCP stream of the same page size, Mooncake's transfer_engine_bench
/// when it loads here) at each block size.
pub fn compare(args: &CompareArgs) -> Result<(), String> {
    let mooncake = TransferEngineBench::locate(args.teb.as_deref());
    if let Err(why) = &mooncake {
        progress(&format!("Mooncake not run: {why}"));
    }
    if args.block_sizes.is_empty() {
        return run_with(&args.hicache, Mode::Compare, Some(&mooncake));
    }
    for size in &args.block_sizes {
        let mut one = args.hicache.clone();
        one.page_size = block_size_bytes(size)?;
        one.tag = Some(format!("{}-{}", args.hicache.tag(), size));
        run_with(&one, Mode::Compare, Some(&mooncake))?;
    }
    Ok(())
}

/// Options of `serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    #[command(flatten)]
    pub hicache: HicacheArgs,
    /// Host the discovery master on this port of --local-host (127.0.0.1 by
    /// default) when --discovery-addr is not given; default 31998.
    #[arg(long)]
    pub meta_port: Option<u16>,
}

/// Options of the hidden `point-worker` role: one consumer process of a
/// `--processes N` run.
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub hicache: HicacheArgs,
}

/// A consumer process of a multi-process point: joins the producer, prints
/// `READY`, waits for a line on stdin (all workers start together), runs
/// `--op` at `--concurrency` threads, prints one JSON line: pages/s, GB/s,
/// hit ratio and the latency histogram as (µs, count) pairs.
pub fn point_worker(args: &WorkerArgs) -> Result<(), String> {
    let a = &args.hicache;
    let discovery = a
        .discovery_addr
        .clone()
        .ok_or("point-worker needs --discovery-addr")?;
    let consumer = Consumer::start(a, &discovery, a.concurrency)?;
    println!("READY");
    std::io::stdout().flush().ok();
    let mut go = String::new();
    std::io::stdin()
        .read_line(&mut go)
        .map_err(|e| e.to_string())?;
    let (gbps, pages_per_s, hit_ratio, hist) =
        sweep(a.concurrency, a.warmup, a.duration, |t, r| {
            consumer.call(a.op, t, r, a.batch_size)
        });
    let buckets: Vec<(u64, u64)> = hist
        .iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect();
    println!(
        "{}",
        json!({"gbps": gbps, "pages_per_s": pages_per_s, "hit_ratio": hit_ratio, "hist": buckets})
    );
    Ok(())
}

/// Runs one Rust point in `args.processes` consumer processes at once and
/// sums them.
fn multi_process_point(
    args: &HicacheArgs,
    discovery: &str,
    op: Op,
    threads: usize,
    batch: usize,
) -> Result<Row, String> {
    progress(&format!(
        "{op:?} frontend=Rust processes={} concurrency={threads}/process batch={batch}: {:.0}+{:.0} s",
        args.processes, args.warmup, args.duration
    ));
    let mut workers = Vec::new();
    for _ in 0..args.processes {
        let child = crate::self_command()?
            .args([
                "point-worker",
                "--discovery-addr",
                discovery,
                "--op",
                &format!("{op:?}").to_lowercase(),
                "--concurrency",
                &threads.to_string(),
                "--batch-size",
                &batch.to_string(),
                "--duration",
                &args.duration.to_string(),
                "--warmup",
                &args.warmup.to_string(),
                "--max-channels",
                &args.max_channels.to_string(),
                "--dir-cache-ttl",
                &args.dir_cache_ttl.to_string(),
            ])
            .args(args.shared_flags())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start a consumer process: {e}"))?;
        workers.push(Worker::new(child));
    }
    for w in &mut workers {
        let line = w.line()?;
        if line.trim() != "READY" {
            return Err(format!("a consumer process did not start: {line:?}"));
        }
    }
    for w in &mut workers {
        w.go()?;
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let (mut pages_per_s, mut gbps, mut hits) = (0.0, 0.0, 0.0);
    for w in &mut workers {
        let line = w.line()?;
        let v: Value = serde_json::from_str(&line)
            .map_err(|e| format!("a consumer process answered {line:?}: {e}"))?;
        let p = v["pages_per_s"].as_f64().unwrap_or(0.0);
        pages_per_s += p;
        gbps += v["gbps"].as_f64().unwrap_or(0.0);
        hits += p * v["hit_ratio"].as_f64().unwrap_or(0.0);
        for pair in v["hist"].as_array().into_iter().flatten() {
            let (value, count) = (pair[0].as_u64().unwrap_or(1), pair[1].as_u64().unwrap_or(0));
            let _ = hist.record_n(value.max(1), count);
        }
    }
    let row = Row {
        op,
        frontend: Frontend::Rust,
        concurrency: threads * args.processes,
        batch,
        pages_per_s,
        gbps,
        hit_pct: if pages_per_s > 0.0 {
            100.0 * hits / pages_per_s
        } else {
            0.0
        },
        hist,
    };
    row.report_progress(&format!(" over {} processes", args.processes));
    Ok(row)
}

/// A consumer process and its pipes; killed if dropped early.
struct Worker {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Worker {
    fn new(mut child: Child) -> Self {
        let out = BufReader::new(child.stdout.take().expect("piped"));
        Worker { child, out }
    }

    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        self.out.read_line(&mut line).map_err(|e| e.to_string())?;
        Ok(line)
    }

    fn go(&mut self) -> Result<(), String> {
        let stdin = self.child.stdin.as_mut().ok_or("no stdin")?;
        stdin.write_all(b"go\n").map_err(|e| e.to_string())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: HicacheArgs,
    }

    fn parse(flags: &[&str]) -> HicacheArgs {
        Cli::try_parse_from(std::iter::once("bench").chain(flags.iter().copied()))
            .expect("parses")
            .args
    }

    #[test]
    fn a_named_device_makes_rdma_the_default_protocol() {
        for (flags, protocol) in [
            (&[][..], "tcp"),
            (&["--device-name", "mlx5_0"][..], "rdma"),
            (&["--devices", "mlx5_0,mlx5_1"][..], "rdma"),
            (&["--protocol", "tcp", "--device-name", "mlx5_0"][..], "tcp"),
            (&["--protocol", "rdma"][..], "rdma"),
        ] {
            let args = parse(flags);
            assert_eq!(args.protocol(), protocol, "{flags:?}");
            // The label of the result files follows unless --tag is given.
            assert_eq!(args.tag(), protocol, "{flags:?}");
            let config = args.node_config("127.0.0.1:31998", "n", 1 << 20).unwrap();
            assert_eq!(config.require_rdma, protocol == "rdma", "{flags:?}");
        }
        assert_eq!(parse(&["--devices", "mlx5_0", "--tag", "x"]).tag(), "x");
    }

    #[test]
    fn local_host_is_loopback_only_for_a_run_that_stays_on_this_host() {
        let on = |host: &str| LocalHost {
            advertised: Some(host.into()),
            bind: host.into(),
        };
        let automatic = LocalHost {
            advertised: None,
            bind: "0.0.0.0".into(),
        };
        for (given, discovery, expected) in [
            // A given --local-host always wins.
            (Some("127.0.0.2"), None, on("127.0.0.2")),
            (Some("127.0.0.3"), Some("127.0.0.9:31998"), on("127.0.0.3")),
            // Single-host runs: no discovery address, or a loopback one.
            (None, None, on("127.0.0.1")),
            (None, Some("127.0.0.1:31998"), on("127.0.0.1")),
            (None, Some("127.0.0.5"), on("127.0.0.1")),
            (None, Some("localhost:31998"), on("127.0.0.1")),
            (None, Some("[::1]:31998"), on("127.0.0.1")),
            // Seed 003's `serve --discovery-addr 0.0.0.0:31998` and `drive
            // --discovery-addr PRODUCER_IP:31998`: peers on other hosts.
            (None, Some("0.0.0.0:31998"), automatic.clone()),
            (None, Some("producer-a:31998"), automatic.clone()),
            (None, Some("PRODUCER_IP:31998"), automatic.clone()),
            // The head (first entry) decides.
            (None, Some("127.0.0.1:1,producer-a:2"), on("127.0.0.1")),
        ] {
            assert_eq!(
                resolve_local_host(given, discovery),
                expected,
                "{given:?} {discovery:?}"
            );
        }
    }

    #[test]
    fn an_unset_local_host_leaves_the_address_to_the_engine() {
        let args = parse(&["--discovery-addr", "producer-a:31998"]);
        let config = args.node_config("producer-a:31998", "n", 1 << 20).unwrap();
        assert_eq!(config.local_hostname, None);
        assert_eq!(config.control_bind_host, "0.0.0.0");
        let args = parse(&["--discovery-addr", "127.0.0.1:31998"]);
        let config = args.node_config("127.0.0.1:31998", "n", 1 << 20).unwrap();
        assert_eq!(config.local_hostname.as_deref(), Some("127.0.0.1"));
        assert_eq!(config.control_bind_host, "127.0.0.1");
        // Children (producer, consumer processes) get --local-host only when
        // it was given: they resolve the default from their own discovery.
        assert!(!args.shared_flags().contains(&"--local-host".to_string()));
        let given = parse(&["--local-host", "127.0.0.2"]).shared_flags();
        assert!(given.windows(2).any(|w| w == ["--local-host", "127.0.0.2"]));
    }

    #[test]
    fn the_markdown_table_has_a_p95_column_in_every_row() {
        let args = parse(&[]);
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for us in 1..=100 {
            hist.record(us).unwrap();
        }
        let row = Row {
            op: Op::Get,
            frontend: Frontend::Rust,
            concurrency: 2,
            batch: 32,
            pages_per_s: 1000.0,
            gbps: 0.1,
            hit_pct: 100.0,
            hist,
        };
        let mut lines = MD_TABLE_HEADER.lines();
        let header: Vec<&str> = lines.next().unwrap().split('|').map(str::trim).collect();
        let cells: Vec<String> = row
            .md(&args, true)
            .split('|')
            .map(|c| c.trim().to_string())
            .collect();
        let rule = lines.next().unwrap();
        assert_eq!(header.len(), cells.len());
        assert_eq!(rule.matches("---").count(), header.len() - 2);
        let p95 = header.iter().position(|h| *h == "p95 µs").expect("p95");
        assert_eq!(header[p95 - 1], "p50 µs");
        assert_eq!(header[p95 + 1], "p99 µs");
        assert_eq!(cells[p95], "95");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![0.9, 0.7, 0.8]), Some(0.8));
        assert_eq!(median(vec![1.2, 0.6, 0.8, 1.0]), Some(0.9));
    }
}
