//! `peercache-bench micro`: local set and get through the node store, and a
//! plain single-thread memcpy of the same bytes in the same run.
//!
//! Set writes fresh keys every batch (a set of a key already present is
//! skipped by design, which would measure nothing), so once the pool is full
//! every set also pays for LRU eviction, as in production. Get reads a working
//! set stored beforehand, cycling through it so the bytes come from DRAM, not
//! from cache. The memcpy reference copies page by page between buffers of
//! the same size and alignment, cycling the same way.

use crate::aligned::AlignedBuf;
use clap::Args;
use peercache_engine::{Config, Node};
use serde_json::json;
use std::time::{Duration, Instant};

/// Options of `peercache-bench micro`.
#[derive(Args, Debug)]
pub struct MicroArgs {
    /// Bytes per page.
    #[arg(long, default_value_t = 131072)]
    page_size: usize,
    /// Pages per batch call.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Distinct pages cycled through (keeps the data out of the CPU caches).
    #[arg(long, default_value_t = 2048)]
    working_set: usize,
    /// Seconds measured per operation.
    #[arg(long, default_value_t = 3.0)]
    duration: f64,
    /// Seconds run before measuring each operation.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Shard threads of the node (0 = the node's automatic choice).
    #[arg(long, default_value_t = 0)]
    shards: usize,
    /// batch_wait_spin_us of the node (see docs/configuration.md).
    #[arg(long, default_value_t = 0)]
    wait_spin_us: u64,
    /// Free-form label for the output file name.
    #[arg(long, default_value = "local")]
    tag: String,
    /// Directory for the JSON result.
    #[arg(long, default_value = "peercache-bench-results")]
    out_dir: String,
}

struct Measured {
    bytes: u64,
    seconds: f64,
    calls: u64,
}

impl Measured {
    fn gbps(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e9
    }
}

/// Runs `step` (which returns the bytes it moved) for `warmup`, then for
/// `duration`, and reports the second phase.
fn measure(warmup: f64, duration: f64, mut step: impl FnMut(u64) -> u64) -> Measured {
    let mut round = 0u64;
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < warmup {
        step(round);
        round += 1;
    }
    let (mut bytes, mut calls) = (0u64, 0u64);
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < duration || calls == 0 {
        bytes += step(round);
        round += 1;
        calls += 1;
    }
    Measured {
        bytes,
        seconds: t.elapsed().as_secs_f64(),
        calls,
    }
}

/// Runs the microbenchmark and prints (and saves) the figures.
pub fn run(args: &MicroArgs) -> Result<(), String> {
    if args.page_size == 0 || args.batch_size == 0 || args.working_set < args.batch_size {
        return Err(
            "--page-size and --batch-size must be > 0 and --working-set >= --batch-size".into(),
        );
    }
    let page = args.page_size;
    let batch = args.batch_size;
    let ws = args.working_set / batch * batch;
    let ws_bytes = ws * page;
    // Room for the working set plus headroom for the set phase's fresh keys.
    let pool_bytes = 2 * ws_bytes + (64 << 20);
    let config = Config::from_json(&format!(
        r#"{{"discovery_addr":"127.0.0.1:31998","global_segment_size":{pool_bytes},"shards":{},
            "batch_wait_spin_us":{},"disk_enabled":false,"metrics_enabled":false,
            "model_name":"peercache-bench-micro"}}"#,
        args.shards, args.wait_spin_us
    ))
    .map_err(|e| e.to_string())?;
    let node = Node::start(config).map_err(|e| e.to_string())?;
    eprintln!(
        "micro: page={page} B batch={batch} working_set={ws} pages ({:.0} MiB) shards={} pool={} MiB",
        ws_bytes as f64 / (1 << 20) as f64,
        node.shards(),
        node.pool_bytes() >> 20
    );

    let mut src = AlignedBuf::new(ws_bytes);
    src.fill_pattern(0x5eed);
    let dst = AlignedBuf::new(ws_bytes);
    // Fault the destination in before timing anything.
    unsafe { std::ptr::write_bytes(dst.ptr(), 1, ws_bytes) };
    let lens = vec![page; batch];
    let batches = ws / batch;
    let page_ptrs = |buf: &AlignedBuf, b: usize| -> Vec<*mut u8> {
        (0..batch)
            .map(|i| unsafe { buf.ptr().add((b * batch + i) * page) })
            .collect()
    };

    eprintln!("micro: memcpy reference ...");
    let memcpy = measure(args.warmup, args.duration, |round| {
        let b = round as usize % batches;
        for i in 0..batch {
            let off = (b * batch + i) * page;
            unsafe { std::ptr::copy_nonoverlapping(src.ptr().add(off), dst.ptr().add(off), page) };
        }
        (batch * page) as u64
    });

    eprintln!("micro: local set ...");
    let set = measure(args.warmup, args.duration, |round| {
        let b = round as usize % batches;
        let keys: Vec<String> = (0..batch).map(|i| format!("set-{round}-{i}")).collect();
        let srcs: Vec<*const u8> = page_ptrs(&src, b)
            .into_iter()
            .map(|p| p as *const u8)
            .collect();
        let ok = unsafe { node.batch_set(&keys, &srcs, &lens) }.expect("well-formed batch");
        (ok.iter().filter(|&&x| x).count() * page) as u64
    });

    // Store the working set under stable keys for the get phase.
    node.clear();
    let get_keys: Vec<Vec<String>> = (0..batches)
        .map(|b| (0..batch).map(|i| format!("get-{b}-{i}")).collect())
        .collect();
    for (b, keys) in get_keys.iter().enumerate() {
        let srcs: Vec<*const u8> = page_ptrs(&src, b)
            .into_iter()
            .map(|p| p as *const u8)
            .collect();
        let ok = unsafe { node.batch_set(keys, &srcs, &lens) }.expect("well-formed batch");
        if !ok.iter().all(|&x| x) {
            return Err("the working set does not fit the pool".into());
        }
    }
    eprintln!("micro: local get ...");
    let hits_before = node.stats().read_hits;
    let get = measure(args.warmup, args.duration, |round| {
        let b = round as usize % batches;
        let dsts = page_ptrs(&dst, b);
        let ok = unsafe { node.batch_get(&get_keys[b], &dsts, &lens) }.expect("well-formed batch");
        (ok.iter().filter(|&&x| x).count() * page) as u64
    });
    let read_hits = node.stats().read_hits - hits_before;
    // Spot-check that what get delivered is what set stored.
    if dst.as_slice()[..ws_bytes] != src.as_slice()[..ws_bytes] {
        return Err("get returned bytes that differ from what was set".into());
    }

    let rows = [
        ("memcpy", &memcpy),
        ("local set", &set),
        ("local get", &get),
    ];
    println!(
        "{:<10} {:>9} {:>9} {:>12}",
        "op", "GB/s", "vs memcpy", "batch calls"
    );
    for (name, m) in rows {
        println!(
            "{:<10} {:>9.2} {:>8.0}% {:>12}",
            name,
            m.gbps(),
            100.0 * m.gbps() / memcpy.gbps(),
            m.calls
        );
    }
    let stats = node.stats();
    let result = json!({
        "mode": "micro",
        "tag": args.tag,
        "meta": {
            "page_size": page, "batch_size": batch, "working_set_pages": ws,
            "shards": node.shards(), "pool_bytes": node.pool_bytes(),
            "batch_wait_spin_us": args.wait_spin_us,
            "duration_s": args.duration, "warmup_s": args.warmup,
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        },
        "host": host_info(),
        "results": {
            "memcpy_gbps": memcpy.gbps(),
            "set_gbps": set.gbps(),
            "get_gbps": get.gbps(),
            "set_vs_memcpy": set.gbps() / memcpy.gbps(),
            "get_vs_memcpy": get.gbps() / memcpy.gbps(),
            "get_read_hits": read_hits,
            "evictions": stats.evictions,
            "quarantine_early_reuses": stats.quarantine_early_reuses,
        },
    });
    std::fs::create_dir_all(&args.out_dir).map_err(|e| format!("{}: {e}", args.out_dir))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let path = format!("{}/micro-{}-{stamp}.json", args.out_dir, args.tag);
    std::fs::write(&path, serde_json::to_string_pretty(&result).expect("json"))
        .map_err(|e| format!("{path}: {e}"))?;
    eprintln!("micro: wrote {path}");
    Ok(())
}

/// CPU, core count and kernel of this machine, for result files.
pub fn host_info() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": kernel,
    })
}
