//! Drives a `peercache-node` process over its line protocol (see the binary's
//! docs). Every wait is bounded: a reader thread forwards the node's stdout
//! lines through a channel, so a hung node fails the caller with a timeout
//! instead of hanging it.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::Duration;

/// How long one command may take before the caller gives up.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A running node process.
pub struct NodeProcess {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    /// The node's id, from its READY line.
    pub node_id: String,
    /// Its shards' endpoints, from its READY line.
    pub endpoints: Vec<String>,
    /// Its metrics server's address, from its READY line (None: disabled or
    /// the port was taken).
    pub metrics: Option<std::net::SocketAddr>,
}

impl NodeProcess {
    /// Starts `binary --config <config_json>`, with the node's log (stderr)
    /// going to `log` when given, and waits for its READY line.
    pub fn spawn(binary: &Path, config_json: &str, log: Option<&Path>) -> Result<Self, String> {
        let stderr = match log {
            Some(path) => Stdio::from(
                std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?,
            ),
            None => Stdio::inherit(),
        };
        let mut child = Command::new(binary)
            .arg("--config")
            .arg(config_json)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut node = NodeProcess {
            child,
            stdin,
            lines,
            node_id: String::new(),
            endpoints: Vec::new(),
            metrics: None,
        };
        let ready = node.next_line(COMMAND_TIMEOUT)?;
        let mut words = ready.split_whitespace();
        if words.next() != Some("READY") {
            return Err(format!("expected READY, got {ready:?}"));
        }
        node.node_id = words.next().unwrap_or_default().to_string();
        node.endpoints = words
            .next()
            .unwrap_or_default()
            .split(',')
            .map(str::to_string)
            .collect();
        node.metrics = words
            .next()
            .and_then(|w| w.strip_prefix("metrics="))
            .and_then(|a| a.parse().ok());
        Ok(node)
    }

    fn next_line(&mut self, timeout: Duration) -> Result<String, String> {
        self.lines.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => format!("no answer within {timeout:?}"),
            mpsc::RecvTimeoutError::Disconnected => {
                let status = self.child.try_wait().ok().flatten();
                format!("node process exited ({status:?})")
            }
        })
    }

    /// Sends one command and returns the text after `OK`; `ERR` is an error.
    pub fn command(&mut self, line: &str) -> Result<String, String> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("node stdin: {e}"))?;
        let answer = self.next_line(COMMAND_TIMEOUT)?;
        match answer.split_once(' ') {
            Some(("OK", rest)) => Ok(rest.to_string()),
            Some(("ERR", rest)) => Err(rest.to_string()),
            _ => Err(format!("malformed answer {answer:?}")),
        }
    }

    /// `set`: one flag per key.
    pub fn set(&mut self, len: usize, keys: &[String]) -> Result<Vec<bool>, String> {
        let answer = self.command(&format!("set {len} {}", keys.join(" ")))?;
        Ok(parse_flags(&answer))
    }

    /// `get`: one flag per key, and how many hits carried wrong bytes.
    pub fn get(&mut self, len: usize, keys: &[String]) -> Result<(Vec<bool>, usize), String> {
        let answer = self.command(&format!("get {len} {}", keys.join(" ")))?;
        let (flags, corrupt) = answer
            .split_once(" corrupt=")
            .ok_or("malformed get answer")?;
        Ok((
            parse_flags(flags),
            corrupt.parse().map_err(|_| "malformed corrupt count")?,
        ))
    }

    /// `exists`: the longest present prefix.
    pub fn exists(&mut self, keys: &[String]) -> Result<usize, String> {
        self.command(&format!("exists {}", keys.join(" ")))?
            .parse()
            .map_err(|_| "malformed exists answer".into())
    }

    /// `stats`: every counter by name.
    pub fn stats(&mut self) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        let answer = self.command("stats")?;
        match serde_json::from_str(&answer) {
            Ok(serde_json::Value::Object(map)) => Ok(map),
            _ => Err(format!("malformed stats {answer:?}")),
        }
    }

    /// One counter from `stats`.
    pub fn counter(&mut self, name: &str) -> Result<u64, String> {
        self.stats()?
            .get(name)
            .and_then(|v| v.as_u64())
            .ok_or_else(|| format!("no counter {name}"))
    }

    /// Waits until the node sees at least `n` live members.
    pub fn wait_members(&mut self, n: usize, secs: u64) -> Result<usize, String> {
        self.command(&format!("wait-members {n} {secs}"))?
            .parse()
            .map_err(|_| "malformed members answer".into())
    }

    /// `kill -9`: no clean shutdown, no deregistration.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops (`SIGSTOP`) or resumes (`SIGCONT`) the process: a stopped node
    /// is a hung host to its peers (connections open, nothing answers).
    pub fn signal(&mut self, signal: &str) -> Result<(), String> {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .map_err(|e| format!("kill -{signal}: {e}"))?;
        status
            .success()
            .then_some(())
            .ok_or_else(|| format!("kill -{signal} failed: {status}"))
    }

    /// Asks the node to quit cleanly and waits for it (bounded).
    pub fn quit(mut self) -> Result<(), String> {
        self.command("quit")?;
        for _ in 0..500 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err("node did not exit after quit".into())
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

fn parse_flags(text: &str) -> Vec<bool> {
    text.trim().chars().map(|c| c == '1').collect()
}

/// A TCP port that was free a moment ago on `host` (for a discovery port),
/// below the ephemeral range so no node's port-0 listener can take it
/// first (`peercache_engine::cluster::ports`).
pub fn free_port(host: &str) -> u16 {
    peercache_engine::cluster::ports::free_port_below_ephemeral(host, 0)
        .expect("a free port below the ephemeral range")
}

/// A port P of 127.0.0.1 such that P and P + 1 were both free a moment ago:
/// the `control_port` of a two-shard node (shard i listens on P + i) that a
/// test restarts behind the same endpoints.
pub fn free_port_pair() -> u16 {
    peercache_engine::cluster::ports::free_port_below_ephemeral("127.0.0.1", 1)
        .expect("two consecutive free ports below the ephemeral range")
}

/// The `peercache-node` binary built next to the running executable (the
/// demo and the soak start it); `who` names the caller in the error.
pub fn sibling_node_binary(who: &str) -> Result<std::path::PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot locate this executable: {e}"))?;
    let dir = exe
        .parent()
        .ok_or_else(|| format!("{} has no parent directory", exe.display()))?;
    let bin = dir.join("peercache-node");
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: {who} starts the peercache-node processes that are built next to \
             it; build both with `cargo build --release -p peercache-tests --bins`",
            bin.display()
        ))
    }
}
