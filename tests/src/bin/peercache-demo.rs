//! `peercache-demo`: the multi-node demo (the README's first command, run by
//! `perf-scripts/demo.sh`).
//!
//! It is the demo of the getting-started guide (4 nodes, node 1 the discovery
//! head, a generated-shared-prefix workload spread round-robin over the nodes,
//! then the cache counters of every node) on one machine without GPUs or RDMA:
//!
//! 1. starts 4 `peercache-node` processes on 127.0.0.1 (`node-1` first: it is
//!    the discovery head the others bootstrap from) and waits until every node
//!    sees 4 members;
//! 2. generates a shared-prefix workload: `--groups` groups of
//!    `--prompts-per-group` prompts sharing a `--system-prompt-len`-token
//!    system prompt, each with its own `--question-len`-token question. Token
//!    ids are deterministic; pages of `--tokens-per-page` tokens are keyed the
//!    way SGLang chains page hashes, `key_i = hash(key_{i-1}, tokens of page i)`
//!    (whole pages only), so requests of one group share their leading keys;
//! 3. sends every request, in a shuffled order (`--seed`), round-robin over
//!    the nodes as `request <page bytes> <keys>`: what SGLang does per request
//!    (exists, read the hit prefix, byte-check it, write the rest);
//! 4. runs the same requests again (`--passes`), each shifted to another node,
//!    and prints the hit rate of every pass and each node's counters, scraped
//!    from its `/metrics` endpoint and filtered as seed 000's step 6 does.
//!
//! It exits non-zero if a page read back ever differs from what was written,
//! if pass 2 does not hit more than pass 1, or if no hit crossed nodes.

use clap::Parser;
use peercache_tests::node_process::{free_port, sibling_node_binary, NodeProcess};
use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "peercache-demo",
    about = "Multi-node PeerCache demo: 4 node processes on 127.0.0.1 sharing a prefix workload"
)]
struct Args {
    /// Node processes (node-1 is the discovery head).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=16))]
    nodes: u32,
    /// Groups of prompts sharing one system prompt.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    groups: u32,
    /// Prompts per group.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    prompts_per_group: u32,
    /// System prompt length in tokens (shared by a group).
    #[arg(long, default_value_t = 2048)]
    system_prompt_len: u32,
    /// Question length in tokens (one per prompt).
    #[arg(long, default_value_t = 128)]
    question_len: u32,
    /// Tokens per KV page (SGLang's page size).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    tokens_per_page: u32,
    /// Bytes of one KV page.
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u64).range(1..=(64 << 20)))]
    page_bytes: u64,
    /// Passes over the same requests (each pass shifts every request to the next node).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    passes: u32,
    /// Seed of the token ids and of the request order.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Published pool per node (`global_segment_size`).
    #[arg(long, default_value = "256mb")]
    pool: String,
    /// Directory for the node logs (default: a new directory under the system temp dir).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match demo(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peercache-demo: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One request: its page keys (whole pages of its prompt).
struct Request {
    keys: Vec<String>,
}

/// The generated-shared-prefix workload, in send order.
fn workload(a: &Args) -> Vec<Request> {
    let mut requests = Vec::new();
    for g in 0..a.groups {
        let system: Vec<u32> = (0..a.system_prompt_len)
            .map(|j| token(a.seed, &[0, g, j]))
            .collect();
        for p in 0..a.prompts_per_group {
            let mut tokens = system.clone();
            tokens.extend((0..a.question_len).map(|j| token(a.seed, &[1, g, p, j])));
            requests.push(Request {
                keys: page_keys(&tokens, a.tokens_per_page as usize),
            });
        }
    }
    shuffle(&mut requests, a.seed);
    requests
}

/// A deterministic token id (vocabulary of 32000) for the given coordinates.
fn token(seed: u64, coords: &[u32]) -> u32 {
    let bytes: Vec<u8> = coords.iter().flat_map(|c| c.to_le_bytes()).collect();
    (xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, seed) % 32000) as u32
}

/// SGLang-style chained page keys: each page's key hashes the previous key
/// and the page's tokens, so equal keys mean equal prefixes. A trailing
/// partial page gets no key (only whole pages are stored).
fn page_keys(tokens: &[u32], per_page: usize) -> Vec<String> {
    let mut keys: Vec<String> = Vec::new();
    for page in tokens.chunks_exact(per_page) {
        let mut bytes: Vec<u8> = keys
            .last()
            .map(|k| k.as_bytes().to_vec())
            .unwrap_or_default();
        bytes.extend(page.iter().flat_map(|t| t.to_le_bytes()));
        keys.push(format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes)));
    }
    keys
}

/// Fisher-Yates with a splitmix64 stream seeded by `seed`.
fn shuffle<T>(v: &mut [T], seed: u64) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    for i in (1..v.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}

/// The `peercache-node` binary next to this one.
fn log_dir(a: &Args) -> Result<PathBuf, String> {
    let dir = match &a.log_dir {
        Some(d) => d.clone(),
        None => {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            std::env::temp_dir().join(format!("peercache-demo-{}-{stamp}", std::process::id()))
        }
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

fn node_config(a: &Args, i: u32, discovery_port: u16) -> String {
    serde_json::json!({
        "backend_name": "peercache",
        "module_path": "peercache.store",
        "class_name": "PeerCacheStore",
        "discovery_addr": format!("127.0.0.1:{discovery_port}"),
        "node_id": format!("node-{i}"),
        "protocol": "tcp",
        "local_hostname": "127.0.0.1",
        "meta_bind_host": "127.0.0.1",
        "control_bind_host": "127.0.0.1",
        // All nodes share one host here: spread their shards over its cores.
        "local_rank": i - 1,
        "shards": 1,
        "global_segment_size": a.pool,
        "disk_enabled": false,
        // Each node's /metrics on a free loopback port: the counters shown
        // at the end are scraped from there, as an operator would.
        "metrics_enabled": true,
        "metrics_bind_host": "127.0.0.1",
        "metrics_port": 0,
        "metrics_dashboard": false,
        "heartbeat_interval": 0.5,
        "member_ttl": 3,
    })
    .to_string()
}

/// The text of `GET /metrics` from the node's metrics server.
fn scrape_metrics(addr: SocketAddr) -> Result<String, String> {
    let failed = |e: std::io::Error| format!("scraping http://{addr}/metrics: {e}");
    let mut conn = TcpStream::connect(addr).map_err(failed)?;
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .map_err(failed)?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: demo\r\n\r\n")
        .map_err(failed)?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer).map_err(failed)?;
    match answer.split_once("\r\n\r\n") {
        Some((head, body))
            if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") =>
        {
            Ok(body.to_string())
        }
        _ => Err(format!(
            "scraping http://{addr}/metrics: unexpected answer {:?}",
            answer.lines().next().unwrap_or("")
        )),
    }
}

/// The lines seed 000's `grep -E 'peercache_(members|...)\b'` keeps, in the
/// order of the exposition, with each one's counter name and value.
fn seed_counters(exposition: &str) -> Vec<(&str, &'static str, f64)> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let rest = line.strip_prefix("peercache_")?;
            let name = SHOWN.iter().find(|name| {
                // `\b` after the name: the next character is not a word character.
                rest.strip_prefix(**name).is_some_and(|after| {
                    !after.starts_with(|c: char| c.is_alphanumeric() || c == '_')
                })
            })?;
            let value = line.rsplit(' ').next()?.parse().ok()?;
            Some((line, *name, value))
        })
        .collect()
}

/// The counters of seed 000's step 6, in its order.
const SHOWN: [&str; 7] = [
    "members",
    "write_requests",
    "read_requests",
    "read_hits",
    "read_remote_hits",
    "bytes_read",
    "pool_keys",
];

fn demo(a: &Args) -> Result<(), String> {
    let binary = sibling_node_binary("peercache-demo (bash perf-scripts/demo.sh builds both)")?;
    let logs = log_dir(a)?;
    if std::env::var_os("PEERCACHE_LOG").is_none() {
        std::env::set_var("PEERCACHE_LOG", "info");
    }
    // The node logs go to files: no colour escapes in them.
    std::env::set_var("NO_COLOR", "1");
    let port = free_port("127.0.0.1");
    let n = a.nodes as usize;
    println!(
        "PeerCache demo: {n} nodes on 127.0.0.1 (TCP data plane), node-1 is the discovery head at 127.0.0.1:{port}"
    );
    println!("node logs: {}", logs.display());

    let mut nodes: Vec<NodeProcess> = Vec::new();
    let result = run(a, &binary, &logs, port, &mut nodes);
    // Quit cleanly, the head last; a node that does not exit is killed (Drop).
    let mut quit_errors = Vec::new();
    while let Some(node) = nodes.pop() {
        let id = node.node_id.clone();
        if let Err(e) = node.quit() {
            quit_errors.push(format!("{id}: {e} (killed)"));
        }
    }
    result?;
    if !quit_errors.is_empty() {
        return Err(format!("unclean shutdown: {}", quit_errors.join("; ")));
    }
    println!("all {n} nodes quit cleanly");
    Ok(())
}

fn run(
    a: &Args,
    binary: &Path,
    logs: &Path,
    port: u16,
    nodes: &mut Vec<NodeProcess>,
) -> Result<(), String> {
    let n = a.nodes as usize;
    let t0 = Instant::now();
    for i in 1..=a.nodes {
        let log = logs.join(format!("node-{i}.log"));
        let node = NodeProcess::spawn(binary, &node_config(a, i, port), Some(&log))
            .map_err(|e| format!("node-{i}: {e}{}", log_tail(&log)))?;
        println!(
            "  started {} (control {})",
            node.node_id,
            node.endpoints.join(",")
        );
        nodes.push(node);
    }
    for node in nodes.iter_mut() {
        node.wait_members(n, 30).map_err(|e| {
            format!(
                "{}: the cluster did not form: {e} (see the node logs in {})",
                node.node_id,
                logs.display()
            )
        })?;
    }
    println!(
        "cluster up: every node sees {n} members ({:.1} s)",
        t0.elapsed().as_secs_f64()
    );

    let requests = workload(a);
    let pages_per_request = requests.first().map_or(0, |r| r.keys.len());
    if pages_per_request == 0 {
        return Err("the prompts are shorter than one page: nothing to cache".into());
    }
    let distinct: HashSet<&str> = requests
        .iter()
        .flat_map(|r| r.keys.iter().map(String::as_str))
        .collect();
    let mib = |pages: usize| pages as f64 * a.page_bytes as f64 / (1 << 20) as f64;
    println!(
        "workload: generated shared prefix, {} groups x {} prompts, system prompt {} + question {} tokens",
        a.groups, a.prompts_per_group, a.system_prompt_len, a.question_len
    );
    println!(
        "  {} requests of {pages_per_request} pages ({} tokens, {} KiB each), {} distinct pages ({:.1} MiB), round-robin over {n} nodes",
        requests.len(),
        a.tokens_per_page,
        a.page_bytes / 1024,
        distinct.len(),
        mib(distinct.len()),
    );

    let mut rates = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for pass in 0..a.passes as usize {
        let remote_before = total(nodes, "read_remote_hits")?;
        let started = Instant::now();
        let (mut hit, mut asked, mut corrupt, mut ideal) = (0usize, 0usize, 0usize, 0usize);
        for (i, req) in requests.iter().enumerate() {
            // What a cache that never forgets would hit: the longest prefix
            // of keys written by any earlier request.
            ideal += req
                .keys
                .iter()
                .take_while(|k| seen.contains(k.as_str()))
                .count();
            seen.extend(req.keys.iter().map(String::as_str));
            let node = &mut nodes[(i + pass) % n];
            let answer = node
                .command(&format!("request {} {}", a.page_bytes, req.keys.join(" ")))
                .map_err(|e| format!("{}: request failed: {e}", node.node_id))?;
            let (h, t, c) = parse_request(&answer)
                .ok_or_else(|| format!("{}: malformed answer {answer:?}", node.node_id))?;
            hit += h;
            asked += t;
            corrupt += c;
        }
        let secs = started.elapsed().as_secs_f64();
        let remote = total(nodes, "read_remote_hits")? - remote_before;
        let rate = hit as f64 / asked as f64;
        println!(
            "pass {}: {} requests in {secs:.2} s: hit {hit} of {asked} pages = {:.1}% (a perfect cache: {:.1}%), {remote} read from another node, corrupt {corrupt}",
            pass + 1,
            requests.len(),
            100.0 * rate,
            100.0 * ideal as f64 / asked as f64,
        );
        if corrupt > 0 {
            return Err(format!(
                "pass {}: {corrupt} pages read back with wrong bytes",
                pass + 1
            ));
        }
        rates.push(rate);
    }

    println!();
    let mut remote_nodes = 0;
    let mut remote_hits = 0;
    for node in nodes.iter() {
        let addr = node
            .metrics
            .ok_or_else(|| format!("{}: no metrics endpoint", node.node_id))?;
        println!(
            "== {} (curl -s http://{addr}/metrics | grep -E 'peercache_({})\\b') ==",
            node.node_id,
            SHOWN.join("|")
        );
        let exposition = scrape_metrics(addr)?;
        let shown = seed_counters(&exposition);
        for (line, _, _) in &shown {
            println!("{line}");
        }
        let r = shown
            .iter()
            .find(|(_, name, _)| *name == "read_remote_hits")
            .map_or(0.0, |&(_, _, v)| v) as u64;
        remote_hits += r;
        remote_nodes += usize::from(r > 0);
    }
    println!();
    println!("cross-node hits: {remote_hits} remote hits on {remote_nodes} nodes");
    if rates.len() >= 2 {
        if rates[1] <= rates[0] {
            return Err(format!(
                "pass 2 hit rate {:.1}% is not higher than pass 1's {:.1}%",
                100.0 * rates[1],
                100.0 * rates[0]
            ));
        }
        println!(
            "second pass: hit rate {:.1}% -> {:.1}% (the prefixes are now cached cluster-wide)",
            100.0 * rates[0],
            100.0 * rates[1]
        );
    }
    // Pass 2 sends every request to another node than pass 1 did.
    if remote_hits == 0 && a.passes >= 2 {
        return Err("no hit was read from another node".into());
    }
    Ok(())
}

/// The last lines of a node log, to show why a node failed.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("\n    ");
    if tail.is_empty() {
        format!(" (log: {})", log.display())
    } else {
        format!("; the end of {}:\n    {tail}", log.display())
    }
}

/// Sums one counter over every node.
fn total(nodes: &mut [NodeProcess], name: &str) -> Result<u64, String> {
    let mut sum = 0;
    for node in nodes.iter_mut() {
        sum += node.counter(name)?;
    }
    Ok(sum)
}

/// Parses `hit=<p> total=<n> corrupt=<c>`.
fn parse_request(answer: &str) -> Option<(usize, usize, usize)> {
    let mut hit = None;
    let mut total = None;
    let mut corrupt = None;
    for word in answer.split_whitespace() {
        let (name, value) = word.split_once('=')?;
        let value: usize = value.parse().ok()?;
        match name {
            "hit" => hit = Some(value),
            "total" => total = Some(value),
            "corrupt" => corrupt = Some(value),
            _ => {}
        }
    }
    Some((hit?, total?, corrupt?))
}
