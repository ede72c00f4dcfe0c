//! `peercache-node`: one PeerCache node in its own process, driven by line
//! commands on stdin, answering one line per command on stdout (logs go to
//! stderr). The multi-process tests and the demo start several of these on
//! 127.0.0.1 and drive them as SGLang ranks on different hosts would.
//!
//! Usage: `peercache-node --config '<extra_config JSON>'`
//!
//! Protocol (one line each way; every answer starts with OK or ERR):
//!
//! | command | answer |
//! |---|---|
//! | `set LEN KEY...` | `OK <flags>` (one 0/1 per key) |
//! | `get LEN KEY...` | `OK <flags> corrupt=<n>` (hits whose bytes differ from the key's page) |
//! | `exists KEY...` | `OK <longest present prefix>` |
//! | `request LEN KEY...` | exists, get the hit prefix, set the rest: `OK hit=<p> total=<n> corrupt=<c>` |
//! | `stats` | `OK <JSON of every counter, plus members and metrics_addr>` |
//! | `members` | `OK <live members>` |
//! | `wait-members N SECS` | `OK <n>` once at least N members are live, else `ERR ...` |
//! | `quit` | `OK bye`, then a clean shutdown (deregisters) |
//!
//! On start it prints `READY <node id> <shard endpoints> metrics=<addr|none>`.
//!
//! Page contents come from `peercache_tests::pages`, so every hit is checked
//! byte for byte.

use peercache_engine::{Config, Node};
use peercache_tests::pages;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: peercache-node --config '<extra_config JSON>'
commands on stdin, one per line (answers: one line, OK ... or ERR ...):
  set LEN KEY...          store pages (content derived from each key)
  get LEN KEY...          read pages, byte-checked: <0/1 per key> corrupt=<n>
  exists KEY...           longest present prefix
  request LEN KEY...      exists, get the hit prefix, set the rest
  stats                   every counter as JSON (plus members, metrics_addr)
  members                 live members
  wait-members N SECS     wait until N members are live
  quit                    deregister and exit";

fn main() {
    peercache_engine::logging::init();
    let args: Vec<String> = std::env::args().collect();
    let config = match args
        .iter()
        .position(|a| a == "--config")
        .and_then(|i| args.get(i + 1))
    {
        Some(json) if !args.iter().any(|a| a == "--help") => json.clone(),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    let config = match Config::from_json(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("peercache-node: {e}");
            std::process::exit(2);
        }
    };
    let mut node = match Node::start_cluster(config) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("peercache-node: {e}");
            std::process::exit(1);
        }
    };
    let endpoints: Vec<String> = node.endpoints().iter().map(|e| e.to_string()).collect();
    println!(
        "READY {} {} metrics={}",
        node.node_id(),
        endpoints.join(","),
        metrics_addr(&node)
    );
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"quit") {
            node.shutdown();
            let _ = writeln!(out, "OK bye");
            let _ = out.flush();
            return;
        }
        let answer = match run(&node, &words) {
            Ok(text) => format!("OK {text}"),
            Err(e) => format!("ERR {e}"),
        };
        if writeln!(out, "{answer}")
            .and_then(|()| out.flush())
            .is_err()
        {
            break; // the driver went away
        }
    }
    node.shutdown();
}

/// The metrics server's bound address, or `none` (disabled, or port taken).
fn metrics_addr(node: &Node) -> String {
    node.metrics_addr()
        .map_or_else(|| "none".to_string(), |a| a.to_string())
}

fn len_arg(words: &[&str]) -> Result<usize, String> {
    words
        .get(1)
        .and_then(|w| w.parse().ok())
        .filter(|&n| n > 0)
        .ok_or_else(|| "expected a page length in bytes after the command".to_string())
}

fn flags(v: &[bool]) -> String {
    v.iter().map(|&b| if b { '1' } else { '0' }).collect()
}

fn set(node: &Node, len: usize, keys: &[&str]) -> Result<Vec<bool>, String> {
    let data: Vec<Vec<u8>> = keys.iter().map(|k| pages::page(k, len)).collect();
    let refs: Vec<&[u8]> = data.iter().map(|p| p.as_slice()).collect();
    node.batch_set_pages(keys, &refs).map_err(|e| e.to_string())
}

/// Gets `keys`; returns the hit flags and how many hits carried wrong bytes.
fn get(node: &Node, len: usize, keys: &[&str]) -> Result<(Vec<bool>, usize), String> {
    let mut bufs: Vec<Vec<u8>> = keys.iter().map(|_| vec![0u8; len]).collect();
    let mut dsts: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
    let ok = node
        .batch_get_into(keys, &mut dsts)
        .map_err(|e| e.to_string())?;
    let corrupt = keys
        .iter()
        .zip(&ok)
        .zip(&bufs)
        .filter(|((k, hit), got)| **hit && !pages::matches(k, got))
        .count();
    Ok((ok, corrupt))
}

fn run(node: &Node, words: &[&str]) -> Result<String, String> {
    match words.first().copied() {
        Some("set") => Ok(flags(&set(node, len_arg(words)?, &words[2..])?)),
        Some("get") => {
            let (ok, corrupt) = get(node, len_arg(words)?, &words[2..])?;
            Ok(format!("{} corrupt={corrupt}", flags(&ok)))
        }
        Some("exists") => node
            .batch_exists(&words[1..])
            .map(|n| n.to_string())
            .map_err(|e| e.to_string()),
        Some("request") => {
            // What SGLang's prefetch + backup do for one request.
            let len = len_arg(words)?;
            let keys = &words[2..];
            let prefix = node.batch_exists(keys).map_err(|e| e.to_string())?;
            let (ok, corrupt) = get(node, len, &keys[..prefix])?;
            let hit = ok.iter().take_while(|&&b| b).count();
            set(node, len, &keys[hit..])?;
            Ok(format!("hit={hit} total={} corrupt={corrupt}", keys.len()))
        }
        Some("stats") => {
            let mut map = serde_json::Map::new();
            map.insert("members".into(), node.members().into());
            map.insert("metrics_addr".into(), metrics_addr(node).into());
            for (name, value) in node.stats().fields() {
                map.insert(name.into(), value.into());
            }
            Ok(serde_json::Value::Object(map).to_string())
        }
        Some("members") => Ok(node.members().to_string()),
        Some("wait-members") => {
            let want: usize = words
                .get(1)
                .and_then(|w| w.parse().ok())
                .ok_or("wait-members N SECS")?;
            let secs: f64 = words.get(2).and_then(|w| w.parse().ok()).unwrap_or(30.0);
            let deadline = Instant::now() + Duration::from_secs_f64(secs);
            loop {
                let have = node.members();
                if have >= want {
                    return Ok(have.to_string());
                }
                if Instant::now() >= deadline {
                    return Err(format!("timeout: {have} of {want} members after {secs} s"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Some(other) => Err(format!("unknown command {other:?}")),
        None => Err("empty command".into()),
    }
}
