//! `peercache-bench disk`: the disk tier's slab write and read throughput
//! against `dd` with O_DIRECT and the same block size on the same file
//! system, in the same run, plus the latency of a single-page get served
//! from disk (a promote).
//!
//! - **Slab write**: `set` of every page into a pool large enough to hold
//!   them all (so no write is dropped because its page was evicted first),
//!   then `flush_disk`, which waits for the write-through queue to drain and
//!   fdatasyncs. Payload bytes over the whole time.
//! - **Slab read**: the node is restarted (same `node_id` and directory), so
//!   the pool is empty and the index is rebuilt from the slot headers; then
//!   every page is read with `get` in batches: disk read, checksum, copy into
//!   the pool, copy to the destination.
//! - **Promote latency**: after another restart, one single-page `get` at a
//!   time, end to end (caller thread to shard and back).
//! - **dd**: `dd if=/dev/zero of=F bs=PAGE count=N oflag=direct conv=fdatasync`,
//!   then `dd if=F of=/dev/null bs=PAGE iflag=direct`, timed around the
//!   process.
//!
//! Slab slots carry a 4 KiB header per page, so the slab moves 4 KiB more
//! per page than it counts; the figures count payload bytes only.

use crate::aligned::AlignedBuf;
use crate::micro::host_info;
use clap::Args;
use hdrhistogram::Histogram;
use peercache_engine::{Config, Node};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Options of `peercache-bench disk`.
#[derive(Args, Debug)]
pub struct DiskArgs {
    /// Directory on the file system to measure (the slab and the dd file go
    /// there; both are removed at the end).
    #[arg(long, default_value = "/var/tmp/peercache-bench-disk")]
    dir: PathBuf,
    /// Bytes per page (and dd's block size).
    #[arg(long, default_value_t = 131072)]
    page_size: usize,
    /// Pages written and read.
    #[arg(long, default_value_t = 2048)]
    pages: usize,
    /// Pages per batch call.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Single-page gets timed for the promote latency.
    #[arg(long, default_value_t = 512)]
    promote_samples: usize,
    /// Shard threads of the node.
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Free-form label for the output file name.
    #[arg(long, default_value = "local")]
    tag: String,
    /// Directory for the JSON result.
    #[arg(long, default_value = "peercache-bench-results")]
    out_dir: String,
}

fn start_node(args: &DiskArgs, data: &Path) -> Result<Node, String> {
    let page = args.page_size;
    let pool_bytes = args.pages * page + (64 << 20);
    // Slots are the page plus a 4 KiB header; leave a quarter more for the
    // segment rounding.
    let slot = page.div_ceil(4096) * 4096 + 4096;
    let disk_size = (args.pages * slot) / 4 * 5 + args.shards * (64 << 20);
    let config = Config::from_json(&format!(
        r#"{{"discovery_addr":"127.0.0.1:31998","global_segment_size":{pool_bytes},"shards":{},
            "node_id":"peercache-bench-disk","disk_enabled":true,"disk_path":{},
            "disk_size":{disk_size},"metrics_enabled":false,"model_name":"peercache-bench-disk"}}"#,
        args.shards,
        serde_json::to_string(&data.display().to_string()).expect("json string")
    ))
    .map_err(|e| e.to_string())?;
    Node::start(config).map_err(|e| e.to_string())
}

/// Runs `dd` with `args` and returns its wall time.
fn dd(args: &[String]) -> Result<f64, String> {
    let t = Instant::now();
    let out = Command::new("dd")
        .args(args)
        .output()
        .map_err(|e| format!("dd: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return Err(format!(
            "dd {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(secs)
}

/// Runs the benchmark and prints (and saves) the figures.
pub fn run(args: &DiskArgs) -> Result<(), String> {
    if args.page_size == 0 || args.pages == 0 || args.batch_size == 0 || args.shards == 0 {
        return Err("--page-size, --pages, --batch-size and --shards must be > 0".into());
    }
    let page = args.page_size;
    let n = args.pages / args.batch_size * args.batch_size;
    let bytes = (n * page) as f64;
    let data = args.dir.join("slab");
    let dd_file = args.dir.join("dd.bin");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    eprintln!(
        "disk: page={page} B pages={n} ({:.0} MiB) batch={} shards={} dir={}",
        bytes / (1 << 20) as f64,
        args.batch_size,
        args.shards,
        args.dir.display()
    );

    // dd write first, then the slab write, on the same file system.
    let of = format!("of={}", dd_file.display());
    let dd_write = dd(&[
        "if=/dev/zero".into(),
        of,
        format!("bs={page}"),
        format!("count={n}"),
        "oflag=direct".into(),
        "conv=fdatasync".into(),
    ])?;

    let keys: Vec<String> = (0..n).map(|i| format!("disk-bench-{i}")).collect();
    let mut src = AlignedBuf::new(n * page);
    src.fill_pattern(0xd15c);
    let mut node = start_node(args, &data)?;
    if node.stats().disk_capacity_bytes == 0 {
        return Err(format!(
            "the disk tier did not start in {} (see the log above)",
            data.display()
        ));
    }
    let t = Instant::now();
    for (b, chunk) in keys.chunks(args.batch_size).enumerate() {
        let pages: Vec<&[u8]> = (0..chunk.len())
            .map(|j| {
                let at = (b * args.batch_size + j) * page;
                &src.as_slice()[at..at + page]
            })
            .collect();
        node.batch_set_pages(chunk, &pages)
            .map_err(|e| e.to_string())?;
    }
    node.flush_disk();
    let slab_write = t.elapsed().as_secs_f64();
    let written = node.stats();
    node.shutdown();
    drop(node);

    let if_ = format!("if={}", dd_file.display());
    let dd_read = dd(&[
        if_,
        "of=/dev/null".into(),
        format!("bs={page}"),
        "iflag=direct".into(),
    ])?;
    let _ = std::fs::remove_file(&dd_file);

    let node = start_node(args, &data)?;
    let dst = AlignedBuf::new(args.batch_size * page);
    let t = Instant::now();
    let mut hits = 0usize;
    for chunk in keys.chunks(args.batch_size) {
        let ptrs: Vec<*mut u8> = (0..chunk.len())
            // SAFETY: inside dst, one page apart.
            .map(|j| unsafe { dst.ptr().add(j * page) })
            .collect();
        let lens = vec![page; chunk.len()];
        // SAFETY: distinct page-sized ranges of dst, alive for the call.
        let ok = unsafe { node.batch_get(chunk, &ptrs, &lens) }.map_err(|e| e.to_string())?;
        hits += ok.iter().filter(|&&o| o).count();
    }
    let slab_read = t.elapsed().as_secs_f64();
    let read_stats = node.stats();
    drop(node);

    let node = start_node(args, &data)?;
    let mut latency = Histogram::<u64>::new(3).expect("histogram");
    let mut one = vec![0u8; page];
    let samples = args.promote_samples.min(n);
    let mut promoted = 0usize;
    for i in 0..samples {
        // Spread over the file, not the first pages only.
        let key = &keys[i * n / samples];
        let t = Instant::now();
        let ok = node
            .batch_get_into(&[key], &mut [one.as_mut_slice()])
            .map_err(|e| e.to_string())?;
        let micros = t.elapsed().as_micros() as u64;
        if ok[0] {
            promoted += 1;
            latency.record(micros.max(1)).expect("in range");
        }
    }
    drop(node);
    let _ = std::fs::remove_dir_all(&data);

    let gbps = |secs: f64| bytes / secs / 1e9;
    let (w, r, dw, dr) = (
        gbps(slab_write),
        gbps(slab_read),
        gbps(dd_write),
        gbps(dd_read),
    );
    println!("dd write (oflag=direct)   {dw:7.3} GB/s");
    println!(
        "slab write-through        {w:7.3} GB/s = {:5.1} % of dd  ({} written, {} dropped)",
        100.0 * w / dw,
        written.disk_writes,
        written.disk_write_drops
    );
    println!("dd read (iflag=direct)    {dr:7.3} GB/s");
    println!(
        "slab read (promote)       {r:7.3} GB/s = {:5.1} % of dd  ({hits}/{n} hits)",
        100.0 * r / dr
    );
    println!(
        "promote latency           p50 {} us  p99 {} us  max {} us  ({promoted}/{samples} single-page gets)",
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.99),
        latency.max()
    );
    let result = json!({
        "mode": "disk",
        "tag": args.tag,
        "meta": {
            "page_size": page, "pages": n, "batch_size": args.batch_size,
            "shards": args.shards, "dir": args.dir.display().to_string(),
            "promote_samples": samples,
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        },
        "host": host_info(),
        "results": {
            "dd_write_gbps": dw, "slab_write_gbps": w, "write_vs_dd": w / dw,
            "dd_read_gbps": dr, "slab_read_gbps": r, "read_vs_dd": r / dr,
            "read_hits": hits, "disk_writes": written.disk_writes,
            "disk_write_drops": written.disk_write_drops,
            "read_disk_hits": read_stats.read_disk_hits,
            "promote_p50_us": latency.value_at_quantile(0.5),
            "promote_p99_us": latency.value_at_quantile(0.99),
            "promote_max_us": latency.max(),
        },
    });
    std::fs::create_dir_all(&args.out_dir).map_err(|e| format!("{}: {e}", args.out_dir))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let path = format!("{}/disk-{}-{stamp}.json", args.out_dir, args.tag);
    std::fs::write(&path, serde_json::to_string_pretty(&result).expect("json"))
        .map_err(|e| format!("{path}: {e}"))?;
    eprintln!("disk: wrote {path}");
    Ok(())
}
