//! `peercache-bench remote`: two processes on loopback, through the Rust API.
//!
//! The driver starts a server process (`remote-serve`, this same binary) that
//! runs a producer node holding the working set and, beside it, a plain TCP
//! stream of pages of the same size: the same-run reference for remote get.
//! The driver runs a reader node and measures, in one run:
//! - remote get GB/s and p50/p99 per batch at each concurrency,
//!   and the raw TCP stream (one connection, 128 KiB writes);
//! - exists pages/s on keys whose directory owner is the other process;
//! - set GB/s (pool copy + directory publish) at each concurrency, and a
//!   memcpy of the same bytes;
//! - batch-1 remote get latency, and a raw TCP round trip of one page;
//! - the resident memory a node adds for 1 M directory entries.

use crate::aligned::AlignedBuf;
use clap::Args;
use hdrhistogram::Histogram;
use peercache_engine::cluster::{ClusterView, MemberRoute};
use peercache_engine::directory::NodeRef;
use peercache_engine::keys::Namespace;
use peercache_engine::{Config, Node};
use serde_json::json;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MODEL: &str = "peercache-bench-remote";

/// Options of `peercache-bench remote`.
#[derive(Args, Debug, Clone)]
pub struct RemoteArgs {
    /// Bytes per page.
    #[arg(long, default_value_t = 131072)]
    pub page_size: usize,
    /// Pages per batch call.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Pages published by the server and read by the driver.
    #[arg(long, default_value_t = 2048)]
    pub working_set: usize,
    /// Reader threads to sweep, comma-separated.
    #[arg(long, default_value = "1,2,4,8", value_delimiter = ',')]
    pub concurrencies: Vec<usize>,
    /// Seconds measured per point.
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// Seconds run before measuring each point.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Shards per node. 0 (the default) lets each node choose, as a
    /// deployed node does (`shards: 0`: one per RDMA device, else
    /// min(usable CPUs, 4)); the JSON's `shards_per_node` is the count used.
    #[arg(long, default_value_t = 0)]
    pub shards: usize,
    /// directory_replicas of both nodes (1 keeps half the keys' directory
    /// entries on the other process, as in a large cluster).
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// batch_wait_spin_us of the driver node (see docs/configuration.md).
    #[arg(long, default_value_t = 0)]
    pub wait_spin_us: u64,
    /// local_rank of the server node (the driver is rank 0): with one shard
    /// each, 1 puts the two processes' shards on different cores and 0 on the
    /// same core; with as many shards as cores both use every core.
    #[arg(long, default_value_t = 1)]
    pub server_local_rank: usize,
    /// Skip the 1 M directory entries memory measurement.
    #[arg(long)]
    pub skip_memory: bool,
    /// Free-form label for the output file name.
    #[arg(long, default_value = "loopback")]
    pub tag: String,
    /// Directory for the JSON result.
    #[arg(long, default_value = "peercache-bench-results")]
    pub out_dir: String,
}

/// Options of the hidden server role.
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[arg(long)]
    meta_port: u16,
    #[arg(long)]
    page_size: usize,
    #[arg(long)]
    working_set: usize,
    #[arg(long)]
    shards: usize,
    #[arg(long)]
    replicas: u32,
    #[arg(long)]
    local_rank: usize,
}

fn node_config(
    meta_port: u16,
    node_id: &str,
    pool_bytes: usize,
    shards: usize,
    replicas: u32,
) -> Config {
    Config::from_json(&format!(
        r#"{{"discovery_addr":"127.0.0.1:{meta_port}","node_id":"{node_id}","global_segment_size":{pool_bytes},
            "shards":{shards},"directory_replicas":{replicas},"local_hostname":"127.0.0.1",
            "control_bind_host":"127.0.0.1","meta_bind_host":"127.0.0.1","model_name":"{MODEL}",
            "heartbeat_interval":0.5,"member_ttl":3,"disk_enabled":false,"metrics_enabled":false}}"#
    ))
    .expect("valid benchmark config")
}

fn ws_key(i: usize) -> String {
    format!("ws-{i}")
}

/// The server role: a producer node with the working set, and a raw TCP
/// page stream. Prints `READY <raw port>` and runs until stdin closes.
pub fn serve(args: &ServeArgs) -> Result<(), String> {
    let pool = args.working_set * args.page_size * 2 + (64 << 20);
    let node = Node::start_cluster(node_config(
        args.meta_port,
        "bench-server",
        pool,
        args.shards,
        args.replicas,
    ))
    .map_err(|e| e.to_string())?;
    let mut src = AlignedBuf::new(args.working_set * args.page_size);
    src.fill_pattern(7);
    for chunk in (0..args.working_set).collect::<Vec<_>>().chunks(64) {
        let keys: Vec<String> = chunk.iter().map(|&i| ws_key(i)).collect();
        let pages: Vec<&[u8]> = chunk
            .iter()
            .map(|&i| &src.as_slice()[i * args.page_size..(i + 1) * args.page_size])
            .collect();
        let ok = node
            .batch_set_pages(&keys, &pages)
            .map_err(|e| e.to_string())?;
        if !ok.iter().all(|&b| b) {
            return Err("server could not store its working set".into());
        }
    }
    let raw = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let raw_port = raw.local_addr().map_err(|e| e.to_string())?.port();
    serve_raw_references(raw, args.page_size);
    println!("READY {raw_port}");
    std::io::stdout().flush().ok();
    let mut sink = String::new();
    while std::io::stdin()
        .read_line(&mut sink)
        .map(|n| n > 0)
        .unwrap_or(false)
    {}
    drop(node);
    Ok(())
}

struct Point {
    concurrency: usize,
    gbps: f64,
    pages_per_s: f64,
    hit_ratio: f64,
    hist: Histogram<u64>,
}

pub(crate) fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64
}

/// Runs `threads` workers calling `op(thread, round) -> (pages, hits, bytes)`
/// for warmup + duration; returns throughput and the per-call latency (µs).
pub(crate) fn sweep<F>(
    threads: usize,
    warmup: f64,
    duration: f64,
    op: F,
) -> (f64, f64, f64, Histogram<u64>)
where
    F: Fn(usize, u64) -> (u64, u64, u64) + Sync,
{
    let measuring = AtomicBool::new(false);
    let stop = AtomicBool::new(false);
    let (pages, hits, bytes) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut elapsed = 0.0;
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (op, measuring, stop) = (&op, &measuring, &stop);
                let (pages, hits, bytes) = (&pages, &hits, &bytes);
                s.spawn(move || {
                    let mut h =
                        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                    let mut round = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let t0 = Instant::now();
                        let (p, hi, b) = op(t, round);
                        round += 1;
                        if measuring.load(Ordering::Relaxed) {
                            let _ = h.record(t0.elapsed().as_micros().max(1) as u64);
                            pages.fetch_add(p, Ordering::Relaxed);
                            hits.fetch_add(hi, Ordering::Relaxed);
                            bytes.fetch_add(b, Ordering::Relaxed);
                        }
                    }
                    h
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(warmup));
        measuring.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs_f64(duration));
        measuring.store(false, Ordering::Relaxed);
        elapsed = t0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            hist.add(w.join().expect("worker")).expect("same bounds");
        }
    });
    let p = pages.load(Ordering::Relaxed) as f64;
    let hit_ratio = if p > 0.0 {
        hits.load(Ordering::Relaxed) as f64 / p
    } else {
        0.0
    };
    (
        bytes.load(Ordering::Relaxed) as f64 / elapsed / 1e9,
        p / elapsed,
        hit_ratio,
        hist,
    )
}

/// First byte of a connection to the raw TCP references: stream pages.
const RAW_STREAM: u8 = b'S';
/// First byte of a connection to the raw TCP references: pages per request.
const RAW_REQUEST_REPLY: u8 = b'R';
/// Bytes of one request to the request/reply reference (its page count).
const RAW_REQUEST_BYTES: usize = 8;

/// Most pages one request of the request/reply reference may ask for.
const RAW_MAX_PAGES_PER_REQUEST: u64 = 4096;

/// Serves the raw TCP references on `listener`, one thread per connection.
/// The connection's first byte picks the reference: [`RAW_STREAM`] gets pages
/// of `page` bytes back to back until it closes (the throughput reference);
/// [`RAW_REQUEST_REPLY`] gets, per [`RAW_REQUEST_BYTES`]-byte request, as
/// many pages as the request names (a little-endian u64, 1 to
/// [`RAW_MAX_PAGES_PER_REQUEST`]): the latency references, one round trip
/// between two processes with blocking sockets, no shards, no framing, no
/// lookup.
pub(crate) fn serve_raw_references(listener: TcpListener, page: usize) {
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let _ = stream.set_nodelay(true);
                let block = AlignedBuf::new(page);
                let mut mode = [0u8; 1];
                if stream.read_exact(&mut mode).is_err() {
                    return;
                }
                match mode[0] {
                    RAW_STREAM => while stream.write_all(block.as_slice()).is_ok() {},
                    RAW_REQUEST_REPLY => {
                        let mut request = [0u8; RAW_REQUEST_BYTES];
                        while stream.read_exact(&mut request).is_ok() {
                            let pages =
                                u64::from_le_bytes(request).clamp(1, RAW_MAX_PAGES_PER_REQUEST);
                            if (0..pages).any(|_| stream.write_all(block.as_slice()).is_err()) {
                                break;
                            }
                        }
                    }
                    _ => {}
                }
            });
        }
    });
}

/// The latency reference of a remote get call: per call, send a request to
/// the server process (`server`: host and port of its raw references) and
/// receive `pages` pages of `page` bytes, back to back, into the next of
/// `slots` places `stride` bytes apart at the start of `dst`. With `pages` =
/// 1 it is the floor of a batch-1 get; with a batch's pages, the same bytes
/// as one batch call, whose tail (p99 against p50) is this host's own for
/// that transfer. Callers pass the buffer and places their gets used, so
/// both land in memory that is equally resident and equally cold. Returns
/// the per-call latency histogram (µs).
pub(crate) fn raw_tcp_round_trips(
    server: (&str, u16),
    (page, pages): (usize, usize),
    dst: &AlignedBuf,
    (slots, stride): (usize, usize),
    warmup: f64,
    duration: f64,
) -> Result<Histogram<u64>, String> {
    if pages == 0 || pages as u64 > RAW_MAX_PAGES_PER_REQUEST {
        return Err(format!(
            "round trip reference: {pages} pages per request (1 to {RAW_MAX_PAGES_PER_REQUEST})"
        ));
    }
    let reply = page
        .checked_mul(pages)
        .ok_or_else(|| format!("round trip reference: {pages} pages of {page} B overflow"))?;
    let (slots, stride) = (slots.max(1), stride.max(reply));
    if (slots - 1) * stride + reply > dst.len() {
        return Err(format!(
            "round trip reference: {slots} places of {reply} B, {stride} B apart, do not fit a {} B buffer",
            dst.len()
        ));
    }
    let mut stream = TcpStream::connect(server).map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    // A reply that never completes is an error, not a hung benchmark.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    stream
        .write_all(&[RAW_REQUEST_REPLY])
        .map_err(|e| e.to_string())?;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut round_trip = |i: usize| -> Result<u64, String> {
        // SAFETY: place i of the destination buffer, `reply` bytes long
        // (checked to fit above); nothing else writes the buffer during the call.
        let d =
            unsafe { std::slice::from_raw_parts_mut(dst.ptr().add((i % slots) * stride), reply) };
        let t0 = Instant::now();
        stream
            .write_all(&(pages as u64).to_le_bytes())
            .and_then(|()| stream.read_exact(d))
            .map_err(|e| e.to_string())?;
        Ok(t0.elapsed().as_micros().max(1) as u64)
    };
    let (t, mut i) = (Instant::now(), 0);
    while t.elapsed().as_secs_f64() < warmup {
        round_trip(i)?;
        i += 1;
    }
    let t = Instant::now();
    while t.elapsed().as_secs_f64() < duration {
        let _ = hist.record(round_trip(i)?);
        i += 1;
    }
    Ok(hist)
}

/// The throughput reference of a remote get: GB/s of one connection
/// reading the page stream of the raw references at `server` (host, port)
/// into `ws_bytes` of page slots.
pub(crate) fn raw_tcp_gbps(
    server: (&str, u16),
    page: usize,
    ws_bytes: usize,
    warmup: f64,
    duration: f64,
) -> Result<f64, String> {
    let mut stream = TcpStream::connect(server).map_err(|e| e.to_string())?;
    stream.write_all(&[RAW_STREAM]).map_err(|e| e.to_string())?;
    let dst = AlignedBuf::new(ws_bytes);
    let slots = ws_bytes / page;
    let mut read_page = |i: usize| -> Result<(), String> {
        // SAFETY: slot i of the destination buffer, page bytes long.
        let d = unsafe { std::slice::from_raw_parts_mut(dst.ptr().add((i % slots) * page), page) };
        stream.read_exact(d).map_err(|e| e.to_string())
    };
    let t = Instant::now();
    let mut i = 0;
    while t.elapsed().as_secs_f64() < warmup {
        read_page(i)?;
        i += 1;
    }
    let t = Instant::now();
    let mut bytes = 0u64;
    while t.elapsed().as_secs_f64() < duration {
        read_page(i)?;
        i += 1;
        bytes += page as u64;
    }
    Ok(bytes as f64 / t.elapsed().as_secs_f64() / 1e9)
}

pub(crate) fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Sends `entries` synthetic directory entries (pointing at `producer`) to
/// `endpoint` over the wire protocol, as a producer's publish would.
fn flood_directory(endpoint: SocketAddr, producer: &str, entries: usize) -> Result<(), String> {
    use peercache_engine::wire::{
        self, DirEntry, DirPut, DirPutAck, Hello, HelloAck, Kind, Purpose,
    };
    let mut s = TcpStream::connect(endpoint).map_err(|e| e.to_string())?;
    let mut scratch = Vec::new();
    let mut meta = rkyv::util::AlignedVec::new();
    let hello = Hello {
        protocol_version: wire::PROTOCOL_VERSION,
        node_id: "bench-flood".into(),
        purpose: Purpose::Control,
    };
    wire::write_frame(&mut s, &hello, 1, &[], &mut scratch).map_err(|e| e.to_string())?;
    let h = wire::read_frame(&mut s, &mut meta).map_err(|e| e.to_string())?;
    h.expect_kind(Kind::HelloAck).map_err(|e| e.to_string())?;
    wire::decode_owned::<HelloAck>(&meta).map_err(|e| e.to_string())?;
    // Entries naming any process of the producer: only the directory's size
    // is measured, nothing reads them.
    let node = NodeRef::of(producer, 0).0;
    let mut next = 0u64;
    let mut id = 2;
    while (next as usize) < entries {
        let n = (entries - next as usize).min(16384);
        let put = DirPut {
            entries: (0..n as u64)
                .map(|i| {
                    let k =
                        (next + i).wrapping_mul(0x9E37_79B9_7F4A_7C15) as u128 * 0x1_0000_0001 + 1;
                    let loc = peercache_engine::pool::Location {
                        offset: (next + i) * 4096,
                        generation: 1,
                        len: 131072,
                    };
                    DirEntry::new(peercache_engine::keys::KeyHash(k), node, 0, loc, true)
                })
                .collect(),
        };
        wire::write_frame(&mut s, &put, id, &[], &mut scratch).map_err(|e| e.to_string())?;
        let h = wire::read_frame(&mut s, &mut meta).map_err(|e| e.to_string())?;
        h.expect_kind(Kind::DirPutAck).map_err(|e| e.to_string())?;
        wire::decode_owned::<DirPutAck>(&meta).map_err(|e| e.to_string())?;
        next += n as u64;
        id += 1;
    }
    Ok(())
}

struct Server {
    child: Child,
    raw_port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(args: &RemoteArgs, meta_port: u16) -> Result<Server, String> {
    let mut child = crate::self_command()?
        .args([
            "remote-serve",
            "--meta-port",
            &meta_port.to_string(),
            "--page-size",
            &args.page_size.to_string(),
            "--working-set",
            &args.working_set.to_string(),
            "--shards",
            &args.shards.to_string(),
            "--replicas",
            &args.replicas.to_string(),
            "--local-rank",
            &args.server_local_rank.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the server process: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let raw_port = line
        .strip_prefix("READY ")
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| format!("server did not start: {line:?}"))?;
    Ok(Server { child, raw_port })
}

/// Runs the two-process benchmark.
pub fn run(args: &RemoteArgs) -> Result<(), String> {
    let page = args.page_size;
    let batch = args.batch_size;
    if page == 0 || batch == 0 || args.working_set < batch {
        return Err(
            "--page-size and --batch-size must be > 0 and --working-set >= --batch-size".into(),
        );
    }
    // Outside the ephemeral range, where a shard listener of either node
    // could take it before the meta server binds it.
    let meta_port = peercache_engine::cluster::ports::free_port_below_ephemeral("127.0.0.1", 0)
        .map_err(|e| format!("a discovery port for the two nodes: {e}"))?;
    let server = start_server(args, meta_port)?;
    let ws = args.working_set;
    let ws_bytes = ws * page;
    let pool = ws_bytes * 2 + (64 << 20);
    let node = Node::start_cluster(node_config(
        meta_port,
        "bench-driver",
        pool,
        args.shards,
        args.replicas,
    ))
    .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let keys: Vec<String> = (0..ws).map(ws_key).collect();
    while node.members() < 2 || node.batch_exists(&keys).map_err(|e| e.to_string())? < ws {
        if Instant::now() > deadline {
            return Err("the driver never saw the server's working set".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "remote: page={page} B batch={batch} working_set={ws} shards={} replicas={}",
        node.shards(),
        args.replicas
    );

    eprintln!("remote: raw TCP reference ...");
    let raw = raw_tcp_gbps(
        ("127.0.0.1", server.raw_port),
        page,
        ws_bytes,
        args.warmup,
        args.duration,
    )?;

    let dst = AlignedBuf::new(ws_bytes * args.concurrencies.iter().copied().max().unwrap_or(1));
    let batches = ws / batch;
    let get_batch = |t: usize, round: u64, size: usize| {
        let b = (round as usize * 7 + t * 13) % (ws / size);
        let ks = &keys[b * size..(b + 1) * size];
        let dsts: Vec<*mut u8> = (0..size)
            .map(|i| unsafe { dst.ptr().add(t * ws_bytes + (b * size + i) * page) })
            .collect();
        let lens = vec![page; size];
        let ok = unsafe { node.batch_get(ks, &dsts, &lens) }.expect("well-formed");
        let hits = ok.iter().filter(|&&x| x).count() as u64;
        (size as u64, hits, hits * page as u64)
    };
    let mut points = Vec::new();
    for &c in &args.concurrencies {
        eprintln!("remote: get, {c} thread(s) ...");
        let (gbps, pages_per_s, hit_ratio, hist) =
            sweep(c, args.warmup, args.duration, |t, r| get_batch(t, r, batch));
        points.push(Point {
            concurrency: c,
            gbps,
            pages_per_s,
            hit_ratio,
            hist,
        });
    }
    eprintln!("remote: get, batch 1 ...");
    let (_, _, _, lat1) = sweep(1, args.warmup, args.duration, |t, r| get_batch(t, r, 1));
    eprintln!("remote: raw TCP round trip reference (one page per request) ...");
    // Into thread 0's destinations, where the batch-1 gets just landed.
    let raw_rt = raw_tcp_round_trips(
        ("127.0.0.1", server.raw_port),
        (page, 1),
        &dst,
        (ws, page),
        args.warmup,
        args.duration,
    )?;

    // Exists on keys whose (single or first) directory owner is the server.
    let ns = Namespace::new(MODEL, None);
    let view = ClusterView::new(
        0,
        "bench-driver",
        vec![route("bench-driver"), route("bench-server")],
        160,
        args.replicas as usize,
    );
    let mut owners = Vec::new();
    let remote_owned: Vec<String> = keys
        .iter()
        .filter(|k| {
            view.owners_into(ns.hash(k), &mut owners);
            owners
                .iter()
                .all(|&o| view.route_at(o).node_id == "bench-server")
        })
        .cloned()
        .collect();
    let mut exists = Vec::new();
    if remote_owned.len() >= batch {
        for &c in &args.concurrencies {
            eprintln!(
                "remote: exists ({} remotely owned keys), {c} thread(s) ...",
                remote_owned.len()
            );
            let (_, pages_per_s, _, hist) = sweep(c, args.warmup, args.duration, |t, r| {
                let n = remote_owned.len() / batch;
                let b = (r as usize * 5 + t * 3) % n;
                let found = node
                    .batch_exists(&remote_owned[b * batch..(b + 1) * batch])
                    .expect("well-formed");
                (batch as u64, found as u64, 0)
            });
            exists.push((c, pages_per_s, pct(&hist, 0.5), pct(&hist, 0.99)));
        }
    }

    // Set: fresh keys every batch (pool copy + directory publish) vs memcpy.
    let mut src = AlignedBuf::new(ws_bytes);
    src.fill_pattern(11);
    let set_dst = AlignedBuf::new(ws_bytes);
    unsafe { std::ptr::write_bytes(set_dst.ptr(), 1, ws_bytes) };
    eprintln!("remote: memcpy reference ...");
    let (memcpy, _, _, _) = sweep(1, args.warmup, args.duration, |_, r| {
        let b = r as usize % batches;
        for i in 0..batch {
            let off = (b * batch + i) * page;
            unsafe {
                std::ptr::copy_nonoverlapping(src.ptr().add(off), set_dst.ptr().add(off), page)
            };
        }
        (batch as u64, batch as u64, (batch * page) as u64)
    });
    // One point per concurrency, as for get: a set batch waits for its
    // remote directory owner's acknowledgement, so more writers overlap that
    // round trip with other batches' copies.
    let mut sets = Vec::new();
    for &c in &args.concurrencies {
        eprintln!("remote: set, {c} thread(s) ...");
        let (gbps, _, stored, hist) = sweep(c, args.warmup, args.duration, |t, r| {
            let b = (r as usize + t * 7) % batches;
            // Fresh keys every batch, distinct per thread and per point.
            let ks: Vec<String> = (0..batch).map(|i| format!("set-{c}-{t}-{r}-{i}")).collect();
            let srcs: Vec<*const u8> = (0..batch)
                .map(|i| unsafe { src.ptr().add((b * batch + i) * page) as *const u8 })
                .collect();
            let ok =
                unsafe { node.batch_set(&ks, &srcs, &vec![page; batch]) }.expect("well-formed");
            let n = ok.iter().filter(|&&x| x).count() as u64;
            (batch as u64, n, n * page as u64)
        });
        sets.push((c, gbps, stored, hist));
    }
    let set_peak = sets.iter().max_by(|a, b| a.1.total_cmp(&b.1));
    let set = set_peak.map_or(0.0, |p| p.1);

    let rss_before = rss_bytes();
    let mut dir_bytes_per_entry = None;
    if !args.skip_memory {
        eprintln!("remote: 1 M directory entries ...");
        let endpoints = node.endpoints().to_vec();
        let per = 1_000_000 / endpoints.len();
        for ep in &endpoints {
            flood_directory(*ep, "bench-server", per)?;
        }
        let after = rss_bytes();
        dir_bytes_per_entry =
            Some(after.saturating_sub(rss_before) as f64 / (per * endpoints.len()) as f64);
    }
    let rss_end = rss_bytes();
    // Every byte of the benchmark's own buffers was written, so all of it is
    // resident: get destinations (one working set per thread slot), the set
    // source and the memcpy destination.
    let bench_buffers =
        (ws_bytes * args.concurrencies.iter().copied().max().unwrap_or(1) + 2 * ws_bytes) as u64;
    let node_beyond_pool = rss_end.saturating_sub(node.pool_bytes() as u64 + bench_buffers);
    let stats = node.stats();

    println!("\nremote get, {page} B pages, batch {batch}, 2 processes on 127.0.0.1");
    println!("raw TCP reference (1 connection): {raw:.2} GB/s");
    println!(
        "{:>4} {:>8} {:>7} {:>10} {:>9} {:>9} {:>6}",
        "thr", "GB/s", "vs raw", "pages/s", "p50 µs", "p99 µs", "hit%"
    );
    for p in &points {
        println!(
            "{:>4} {:>8.2} {:>6.0}% {:>10.0} {:>9.0} {:>9.0} {:>6.1}",
            p.concurrency,
            p.gbps,
            100.0 * p.gbps / raw,
            p.pages_per_s,
            pct(&p.hist, 0.5),
            pct(&p.hist, 0.99),
            100.0 * p.hit_ratio
        );
    }
    let peak = points.iter().max_by(|a, b| a.gbps.total_cmp(&b.gbps));
    if let Some(p) = peak {
        println!(
            "PEAK {} thread(s): {:.2} GB/s = {:.0}% of raw TCP",
            p.concurrency,
            p.gbps,
            100.0 * p.gbps / raw
        );
    }
    println!(
        "get batch 1: p50 {:.0} µs, p99 {:.0} µs; raw TCP round trip of one page (same run): p50 {:.0} µs, p99 {:.0} µs; get p50 = {:.2}x the round trip's",
        pct(&lat1, 0.5),
        pct(&lat1, 0.99),
        pct(&raw_rt, 0.5),
        pct(&raw_rt, 0.99),
        pct(&lat1, 0.5) / pct(&raw_rt, 0.5).max(1.0)
    );
    for (c, pps, p50, p99) in &exists {
        println!("exists (remote owner), {c} thread(s): {pps:.0} pages/s, p50 {p50:.0} µs, p99 {p99:.0} µs per batch");
    }
    let exists_peak = exists.iter().max_by(|a, b| a.1.total_cmp(&b.1));
    if let Some((c, pps, _, _)) = exists_peak {
        println!("exists PEAK {c} thread(s): {pps:.0} pages/s");
    }
    for (c, gbps, stored, hist) in &sets {
        println!(
            "set, {c} thread(s): {gbps:.2} GB/s = {:.0}% of memcpy {memcpy:.2} GB/s (p50 {:.0} µs, p99 {:.0} µs per batch, stored {:.1}%)",
            100.0 * gbps / memcpy,
            pct(hist, 0.5),
            pct(hist, 0.99),
            100.0 * stored
        );
    }
    if let Some((c, gbps, _, _)) = set_peak {
        println!(
            "set PEAK {c} thread(s): {gbps:.2} GB/s = {:.0}% of memcpy",
            100.0 * gbps / memcpy
        );
    }
    if let Some(b) = dir_bytes_per_entry {
        println!("directory: {b:.1} resident bytes per entry (1 M entries, RSS delta)");
    }
    println!(
        "driver RSS {:.1} MiB = pool {:.1} MiB + benchmark buffers {:.1} MiB + node beyond its pool {:.1} MiB{}",
        rss_end as f64 / 1048576.0,
        node.pool_bytes() as f64 / 1048576.0,
        bench_buffers as f64 / 1048576.0,
        node_beyond_pool as f64 / 1048576.0,
        if args.skip_memory { "" } else { " (incl. 1 M directory entries)" }
    );

    let result = json!({
        "mode": "remote",
        "tag": args.tag,
        "meta": {
            "page_size": page, "batch_size": batch, "working_set_pages": ws, "shards": args.shards,
            "shards_per_node": node.shards(),
            "directory_replicas": args.replicas, "processes": 2, "protocol": "tcp",
            "batch_wait_spin_us": args.wait_spin_us, "server_local_rank": args.server_local_rank,
            "duration_s": args.duration, "warmup_s": args.warmup,
            "build": if cfg!(debug_assertions) { "debug" } else { "release" },
        },
        "host": crate::micro::host_info(),
        "results": {
            "raw_tcp_gbps": raw,
            "get": points.iter().map(|p| json!({
                "concurrency": p.concurrency, "gbps": p.gbps, "vs_raw_tcp": p.gbps / raw,
                "pages_per_s": p.pages_per_s, "hit_ratio": p.hit_ratio,
                "p50_us": pct(&p.hist, 0.5), "p95_us": pct(&p.hist, 0.95), "p99_us": pct(&p.hist, 0.99),
                "p999_us": pct(&p.hist, 0.999), "max_us": p.hist.max(),
            })).collect::<Vec<_>>(),
            "get_batch1_p50_us": pct(&lat1, 0.5), "get_batch1_p99_us": pct(&lat1, 0.99),
            "raw_tcp_round_trip_p50_us": pct(&raw_rt, 0.5), "raw_tcp_round_trip_p99_us": pct(&raw_rt, 0.99),
            "exists": exists.iter().map(|(c, pps, p50, p99)| json!({
                "concurrency": c, "pages_per_s": pps, "p50_us": p50, "p99_us": p99})).collect::<Vec<_>>(),
            "exists_peak_pages_per_s": exists_peak.map(|p| p.1),
            "set": sets.iter().map(|(c, gbps, stored, hist)| json!({
                "concurrency": c, "gbps": gbps, "vs_memcpy": gbps / memcpy, "stored_ratio": stored,
                "p50_us": pct(hist, 0.5), "p99_us": pct(hist, 0.99)})).collect::<Vec<_>>(),
            // The PEAK of the set points.
            "set_gbps": set, "set_peak_concurrency": set_peak.map(|p| p.0),
            "memcpy_gbps": memcpy, "set_vs_memcpy": set / memcpy,
            "directory_rss_bytes_per_entry": dir_bytes_per_entry,
            "driver_rss_bytes": rss_end, "driver_pool_bytes": node.pool_bytes(),
            "benchmark_buffer_bytes": bench_buffers, "node_rss_beyond_pool_bytes": node_beyond_pool,
            "node_stats": stats.fields().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        },
    });
    std::fs::create_dir_all(&args.out_dir).map_err(|e| format!("{}: {e}", args.out_dir))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let path = format!("{}/remote-{}-{stamp}.json", args.out_dir, args.tag);
    std::fs::write(&path, serde_json::to_string_pretty(&result).expect("json"))
        .map_err(|e| format!("{path}: {e}"))?;
    eprintln!("remote: wrote {path}");
    drop(node);
    drop(server);
    Ok(())
}

fn route(node_id: &str) -> MemberRoute {
    MemberRoute {
        node_id: node_id.to_string(),
        // Ownership follows node ids on the ring; the reference is unused.
        node_ref: NodeRef::of(node_id, 0),
        shard_endpoints: vec![SocketAddr::from(([127, 0, 0, 1], 1))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_reference_receives_every_page_it_asks_for() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        serve_raw_references(listener, 4096);
        // Three places of three pages each: a reply of fewer pages than asked
        // would leave read_exact waiting until the read timeout fails the run.
        let dst = AlignedBuf::new(9 * 4096);
        let hist = raw_tcp_round_trips(
            ("127.0.0.1", port),
            (4096, 3),
            &dst,
            (3, 3 * 4096),
            0.0,
            0.05,
        )
        .unwrap();
        assert!(!hist.is_empty());
    }

    #[test]
    fn round_trip_reference_refuses_what_it_cannot_measure() {
        let dst = AlignedBuf::new(4 * 4096);
        // Checked before connecting: port 1 is never reached.
        let zero = raw_tcp_round_trips(("127.0.0.1", 1), (4096, 0), &dst, (1, 4096), 0.0, 0.0)
            .unwrap_err();
        assert!(zero.contains("pages per request"), "{zero}");
        let big = raw_tcp_round_trips(("127.0.0.1", 1), (4096, 5), &dst, (1, 5 * 4096), 0.0, 0.0)
            .unwrap_err();
        assert!(big.contains("do not fit"), "{big}");
    }
}
