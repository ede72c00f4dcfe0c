//! `mooncake`: Mooncake's official `transfer_engine_bench` (seed 004), run
//! at each block size; also the Mooncake reference of `compare`.
//!
//! Its initiator reads `--block_size` blocks from a target, `--batch_size`
//! per batch on each of `--threads` threads, for `--duration` seconds, then
//! logs one summary line (glog, on stderr, as the program never initialises
//! glog):
//!
//! ```text
//! I0101 12:00:00.000000 4242 transfer_engine_bench.cpp:420] Test completed: duration 5.00, batch count 1234, throughput 1.23 GB/s
//! ```
//!
//! The rate is in its `--report_unit` (GB, GiB, Gb, MB, MiB, Mb, KB, KiB or
//! Kb per second); it is converted here to GB/s (10^9 B/s).
//!
//! With `--metadata_server=P2PHANDSHAKE` a target listens on a port it picks
//! itself (not the one of `--local_server_name`) and logs `Transfer Engine
//! RPC using P2P handshake, listening on HOST:PORT`; Mooncake's docs have the
//! initiator's `--segment_id` taken from that line, and so does this module.

use crate::hicache::{
    block_size_bytes, host_block, host_line, progress, protocol_or_default, unix_time,
};
use clap::Args;
use serde_json::json;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Exit code of a `mooncake` run that could not measure because
/// `transfer_engine_bench` is missing or does not load here, so that scripts
/// tell "Mooncake not available" from a failure (1).
pub const EXIT_UNAVAILABLE: i32 = 3;

/// The executable's name, as `pip install mooncake-transfer-engine` installs it.
const TEB: &str = "transfer_engine_bench";

/// How a host gets it, for the messages that say it is missing.
const INSTALL_HINT: &str = "pip install mooncake-transfer-engine installs it";

/// Mooncake's default `--buffer_size` (1 GiB per NUMA node). A target
/// started here gets at least this, and more when the largest block's
/// batches need it: the initiator reads up to block × batch × threads bytes
/// into the target's buffer.
const DEFAULT_BUFFER_BYTES: usize = 1 << 30;

/// How long a started target may take to log its listening address.
const TARGET_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Wait after the target's listening line: it allocates and registers its
/// buffers after logging it and logs nothing once they are registered, and
/// an initiator that opens the segment before that finds no buffer.
const TARGET_SETTLE: Duration = Duration::from_secs(3);

/// How long a target has to exit after SIGTERM before it is killed.
const TARGET_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Time an initiator gets beyond its `--duration` (engine start, handshake,
/// joining its threads) before it is killed as hung.
const INITIATOR_GRACE: Duration = Duration::from_secs(120);

/// Lines of a log quoted in an error.
const TAIL_LINES: usize = 15;

/// Options of `mooncake`.
#[derive(Args, Debug, Clone)]
pub struct MooncakeArgs {
    /// Path of transfer_engine_bench; default: the one on PATH (`pip install
    /// mooncake-transfer-engine` installs it).
    #[arg(long)]
    pub teb: Option<PathBuf>,
    /// Only check that transfer_engine_bench is found and loads: exit 0, or
    /// 3 with the reason.
    #[arg(long)]
    pub check: bool,
    /// Block sizes to read, one initiator run each (e.g. 4k,64k,1m).
    #[arg(long, value_delimiter = ',', default_value = "128k")]
    pub block_sizes: Vec<String>,
    /// Seconds each initiator run measures (Mooncake takes whole seconds).
    #[arg(long, default_value_t = 5)]
    pub duration: u32,
    /// Blocks per batch (Mooncake's --batch_size).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Submission threads of the initiator (Mooncake's --threads).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// `tcp` or `rdma`. Default: `rdma` when `--device-name` names a device,
    /// else `tcp` (as the HiCache modes).
    #[arg(long)]
    pub protocol: Option<String>,
    /// RDMA device(s) of an RDMA run, comma-separated (Mooncake's --device_name).
    #[arg(long, default_value = "")]
    pub device_name: String,
    /// HOST:PORT of an already running target (its `listening on` address);
    /// default: start a target on 127.0.0.1 and stop it afterwards.
    #[arg(long)]
    pub segment_id: Option<String>,
    /// Label in the output file names. Default: the protocol.
    #[arg(long)]
    pub tag: Option<String>,
    /// Directory for the result and log files.
    #[arg(long, default_value = "peercache-bench-results")]
    pub out_dir: String,
}

/// Why `mooncake` did not measure.
#[derive(Debug)]
pub enum RunError {
    /// transfer_engine_bench is missing or does not load here.
    Unavailable(String),
    /// Anything else: bad options, a run that failed or printed no summary.
    Failed(String),
}

/// `mooncake`: the initiator at each `--block-sizes`, against a target
/// started here or `--segment-id`; writes
/// `hicache-mooncake-<tag>-<timestamp>.{json,md}` and prints the table.
pub fn run(args: &MooncakeArgs) -> Result<(), RunError> {
    let mut block_sizes = Vec::new();
    for size in &args.block_sizes {
        block_sizes.push(block_size_bytes(size).map_err(RunError::Failed)?);
    }
    let protocol = protocol_or_default(args.protocol.as_deref(), !args.device_name.is_empty());
    let tag = args.tag.as_deref().unwrap_or(protocol);
    let stamp = unix_time();
    let base = format!("{}/hicache-mooncake-{tag}-{stamp}", args.out_dir);
    let setup = Setup {
        protocol: protocol.to_string(),
        device_name: args.device_name.clone(),
        batch_size: args.batch_size,
        threads: args.threads,
        duration_s: args.duration,
        segment_id: args.segment_id.clone(),
        log_prefix: PathBuf::from(&base),
    };
    setup.check().map_err(RunError::Failed)?;
    let teb = TransferEngineBench::locate(args.teb.as_deref()).map_err(RunError::Unavailable)?;
    if args.check {
        println!("{} loads", teb.path.display());
        return Ok(());
    }
    let measured = measure(&teb, &setup, &block_sizes).map_err(RunError::Failed)?;
    let host = host_block();
    let (target, target_note) = match &setup.segment_id {
        Some(_) => ("remote", "--segment-id"),
        None => ("local", "started by this run"),
    };
    let value = json!({
        "mode": "mooncake",
        "tag": tag,
        "timestamp": stamp,
        "host": host,
        "meta": {
            "tool": TEB,
            "binary": teb.path.display().to_string(),
            "protocol": setup.protocol,
            "device_name": setup.device_name,
            "operation": "read",
            "metadata_server": "P2PHANDSHAKE",
            "segment_id": measured.segment_id,
            "target": target,
            "block_sizes": block_sizes,
            "batch_size": setup.batch_size,
            "threads": setup.threads,
            "duration_s": setup.duration_s,
            "build": {
                "version": env!("CARGO_PKG_VERSION"),
                "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            },
        },
        "runs": measured.runs.iter().map(|r| json!({
            "block_size": r.block_size,
            "batch": setup.batch_size,
            "threads": setup.threads,
            "gbps": r.summary.gbps,
            "reported": r.summary.reported,
            "duration_s": r.summary.duration_s,
            "batch_count": r.summary.batch_count,
            "log": r.log.display().to_string(),
        })).collect::<Vec<_>>(),
    });
    let mut md = format!(
        "# peercache-bench mooncake ({tag})\n\nMooncake {TEB} ({}) · read · protocol {} · target {} ({target_note}) · batch {} · {} threads · {} s per block size · {}\n\n",
        teb.path.display(),
        setup.protocol,
        measured.segment_id,
        setup.batch_size,
        setup.threads,
        setup.duration_s,
        host_line(&value["host"]),
    );
    md.push_str("| block B | batch | threads | GB/s | as reported |\n|---|---|---|---|---|\n");
    for r in &measured.runs {
        md.push_str(&format!(
            "| {} | {} | {} | {:.3} | {} |\n",
            r.block_size, setup.batch_size, setup.threads, r.summary.gbps, r.summary.reported
        ));
    }
    let write =
        |path: String, text: &str| std::fs::write(&path, text).map_err(|e| format!("{path}: {e}"));
    write(
        format!("{base}.json"),
        &serde_json::to_string_pretty(&value).expect("json"),
    )
    .map_err(RunError::Failed)?;
    write(format!("{base}.md"), &md).map_err(RunError::Failed)?;
    print!("{md}");
    progress(&format!("wrote {base}.json and {base}.md"));
    Ok(())
}

/// A transfer_engine_bench that loads on this host.
#[derive(Debug)]
pub struct TransferEngineBench {
    pub path: PathBuf,
    /// Its `--help` text (gflags lists every flag the build defines).
    help: String,
}

impl TransferEngineBench {
    /// `given` (`--teb`), else the one on PATH, if it exists and loads; the
    /// error says what is missing and how to get it.
    pub fn locate(given: Option<&Path>) -> Result<Self, String> {
        let path = match given {
            Some(path) if path.is_file() => {
                std::path::absolute(path).map_err(|e| format!("--teb {}: {e}", path.display()))?
            }
            Some(path) => {
                return Err(format!(
                    "--teb {}: no such file ({TEB} is Mooncake's benchmark; {INSTALL_HINT})",
                    path.display()
                ))
            }
            None => on_path(TEB).ok_or_else(|| {
                format!("{TEB} is not on PATH ({INSTALL_HINT}; or give its path with --teb)")
            })?,
        };
        let out = Command::new(&path)
            .arg("--help")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("{}: cannot run it: {e}", path.display()))?;
        // gflags exits 1 after --help, so the status says nothing; the
        // dynamic loader's own message says it could not start.
        let help = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        let loader_error = help.lines().find(|l| {
            l.contains("error while loading shared libraries") || l.contains("symbol lookup error")
        });
        if let Some(line) = loader_error {
            let hint = if line.contains("libcuda") {
                ": the PyPI wheel of mooncake-transfer-engine links the NVIDIA driver's \
                 libcuda.so.1, so it needs a host with the NVIDIA driver installed (or a \
                 Mooncake built from source without CUDA)"
            } else {
                ": install the library it names"
            };
            return Err(format!(
                "{} cannot load here ({}){hint}",
                path.display(),
                line.trim()
            ));
        }
        Ok(TransferEngineBench { path, help })
    }

    /// Whether this build defines `flag` (gflags lists it as `-flag (...)`).
    fn supports(&self, flag: &str) -> bool {
        let listed = format!("-{flag}");
        self.help
            .split_whitespace()
            .any(|word| word == listed.as_str())
    }

    /// The flags a target and an initiator of `setup` share.
    fn command(&self, setup: &Setup) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.arg(format!("--protocol={}", setup.protocol))
            .arg("--metadata_server=P2PHANDSHAKE")
            .stdin(Stdio::null());
        if !setup.device_name.is_empty() {
            cmd.arg(format!("--device_name={}", setup.device_name));
        }
        // A CUDA build (the PyPI wheel) defaults to GPU memory; PeerCache's
        // figures are host memory to host memory.
        if self.supports("use_vram") {
            cmd.arg("--use_vram=false");
        }
        // The default 2 decimals of GB/s leave small-block TCP rates with
        // two significant digits.
        if self.supports("report_precision") {
            cmd.arg("--report_precision=6");
        }
        cmd
    }
}

/// The first executable `name` in PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// How to run transfer_engine_bench, all but the block size.
#[derive(Debug, Clone)]
pub struct Setup {
    /// `tcp` or `rdma`.
    pub protocol: String,
    /// Mooncake's --device_name (comma-separated for several rails).
    pub device_name: String,
    pub batch_size: usize,
    pub threads: usize,
    pub duration_s: u32,
    /// A running target; `None`: start one on 127.0.0.1.
    pub segment_id: Option<String>,
    /// Path prefix of the log files (`-target.log`, `-initiator-<bytes>.log`).
    pub log_prefix: PathBuf,
}

impl Setup {
    /// Refuses what transfer_engine_bench would reject or misread.
    pub fn check(&self) -> Result<(), String> {
        if !matches!(self.protocol.as_str(), "tcp" | "rdma") {
            return Err(format!(
                "--protocol {}: expected tcp or rdma",
                self.protocol
            ));
        }
        // Mooncake's own default device (mlx5_2) is a guess about its
        // developers' machines.
        if self.protocol == "rdma" && self.device_name.is_empty() {
            return Err("--protocol rdma needs --device-name (e.g. mlx5_0)".into());
        }
        if self.batch_size == 0 || self.threads == 0 || self.duration_s == 0 {
            return Err("--batch-size, --threads and --duration must be >= 1".into());
        }
        if i32::try_from(self.batch_size).is_err()
            || i32::try_from(self.threads).is_err()
            || i32::try_from(self.duration_s).is_err()
        {
            return Err(
                "--batch-size, --threads and --duration must fit Mooncake's 32-bit flags".into(),
            );
        }
        if self.segment_id.as_deref().is_some_and(str::is_empty) {
            return Err("--segment-id: expected HOST:PORT".into());
        }
        Ok(())
    }
}

/// What one initiator run printed.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Seconds the run measured.
    pub duration_s: f64,
    /// Batches completed over all threads.
    pub batch_count: u64,
    /// The rate in GB/s (10^9 B/s).
    pub gbps: f64,
    /// The rate as printed, e.g. `1.23 GB/s`.
    pub reported: String,
}

/// One initiator run.
#[derive(Debug)]
pub struct BlockRun {
    pub block_size: usize,
    pub summary: Summary,
    /// Its output.
    pub log: PathBuf,
}

/// The runs of [`measure`].
#[derive(Debug)]
pub struct Measured {
    /// The target the initiator read from.
    pub segment_id: String,
    pub runs: Vec<BlockRun>,
}

/// Runs the initiator at each of `block_sizes` against `setup`'s target
/// (started here, and stopped on return, when it names none).
pub fn measure(
    teb: &TransferEngineBench,
    setup: &Setup,
    block_sizes: &[usize],
) -> Result<Measured, String> {
    setup.check()?;
    if block_sizes.is_empty() || block_sizes.contains(&0) {
        return Err("block sizes must be > 0".into());
    }
    if let Some(dir) = setup.log_prefix.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let largest = block_sizes.iter().max().copied().unwrap_or(0);
    let (target, segment_id) = match &setup.segment_id {
        Some(remote) => (None, remote.clone()),
        None => {
            let buffer = DEFAULT_BUFFER_BYTES.max(largest * setup.batch_size * setup.threads);
            let target = Target::start(teb, setup, buffer)?;
            let address = target.address.clone();
            (Some(target), address)
        }
    };
    let mut runs = Vec::new();
    for &block_size in block_sizes {
        progress(&format!(
            "Mooncake {TEB}: read {block_size} B blocks from {segment_id}, batch {}, {} threads, {} s ({}) ...",
            setup.batch_size, setup.threads, setup.duration_s, setup.protocol
        ));
        let log = log_path(setup, &format!("initiator-{block_size}"));
        let mut cmd = teb.command(setup);
        cmd.args([
            "--mode=initiator".to_string(),
            format!("--segment_id={segment_id}"),
            "--operation=read".to_string(),
            format!("--block_size={block_size}"),
            format!("--batch_size={}", setup.batch_size),
            format!("--threads={}", setup.threads),
            format!("--duration={}", setup.duration_s),
        ]);
        // Its own handshake address: loopback when the whole run is on this
        // host; Mooncake's default (the hostname) for a remote target.
        if target.is_some() {
            cmd.arg("--local_server_name=127.0.0.1");
        }
        let deadline = Duration::from_secs(setup.duration_s.into()) + INITIATOR_GRACE;
        let status = run_logged(cmd, &log, deadline)?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if !status.success() {
            return Err(format!(
                "the {TEB} initiator ({block_size} B blocks) exited with {status}; the last lines of {}:\n{}",
                log.display(),
                tail(&text)
            ));
        }
        let summary = parse_summary(&text).ok_or_else(|| {
            format!(
                "the {TEB} initiator ({block_size} B blocks) printed no `Test completed: duration D, batch count N, throughput R UNIT/s` line; the last lines of {}:\n{}",
                log.display(),
                tail(&text)
            )
        })?;
        progress(&format!(
            "  -> {:.3} GB/s (reported {})",
            summary.gbps, summary.reported
        ));
        runs.push(BlockRun {
            block_size,
            summary,
            log,
        });
    }
    drop(target);
    Ok(Measured { segment_id, runs })
}

fn log_path(setup: &Setup, role: &str) -> PathBuf {
    let mut name = setup.log_prefix.clone().into_os_string();
    name.push(format!("-{role}.log"));
    PathBuf::from(name)
}

/// The last [`TAIL_LINES`] lines of `text`, indented.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    if lines.is_empty() {
        return "    (empty)".into();
    }
    lines[from..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `cmd` with stdout and stderr in `log`; kills it after `deadline`.
fn run_logged(mut cmd: Command, log: &Path, deadline: Duration) -> Result<ExitStatus, String> {
    let mut child = spawn_logged(&mut cmd, log)?;
    let until = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Ok(status);
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{TEB} did not finish within {} s and was killed; the last lines of {}:\n{}",
                deadline.as_secs(),
                log.display(),
                tail(&std::fs::read_to_string(log).unwrap_or_default())
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child, String> {
    let out = File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    cmd.stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot start {TEB}: {e}"))
}

/// A target process started by [`measure`]; stopped when dropped.
struct Target {
    child: Child,
    /// Where it listens (its `listening on` address).
    address: String,
}

impl Target {
    fn start(
        teb: &TransferEngineBench,
        setup: &Setup,
        buffer_bytes: usize,
    ) -> Result<Self, String> {
        // Versions that bind the requested port use this free one; newer
        // ones pick their own and say which.
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let log = log_path(setup, "target");
        let mut cmd = teb.command(setup);
        cmd.args([
            "--mode=target".to_string(),
            format!("--local_server_name=127.0.0.1:{port}"),
            format!("--buffer_size={buffer_bytes}"),
        ]);
        progress(&format!(
            "starting the Mooncake {TEB} target on 127.0.0.1 (log {}) ...",
            log.display()
        ));
        let mut target = Target {
            child: spawn_logged(&mut cmd, &log)?,
            address: String::new(),
        };
        let failed = |what: String| {
            format!(
                "the {TEB} target {what}; the last lines of {}:\n{}",
                log.display(),
                tail(&std::fs::read_to_string(&log).unwrap_or_default())
            )
        };
        let until = Instant::now() + TARGET_START_TIMEOUT;
        target.address = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(address) = listening_address(&text) {
                break address;
            }
            if let Some(status) = target.child.try_wait().map_err(|e| e.to_string())? {
                return Err(failed(format!("exited with {status} before it listened")));
            }
            if Instant::now() > until {
                return Err(failed(format!(
                    "logged no `listening on HOST:PORT` within {} s",
                    TARGET_START_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(TARGET_SETTLE);
        if let Some(status) = target.child.try_wait().map_err(|e| e.to_string())? {
            return Err(failed(format!("exited with {status}")));
        }
        Ok(target)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        // Already reaped: its pid may belong to another process by now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SIGTERM first: Mooncake's target then unregisters its memory and exits.
        // SAFETY: kill(2) on the pid of a child not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let until = Instant::now() + TARGET_STOP_TIMEOUT;
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `HOST:PORT` of the last `listening on HOST:PORT` in a target's log.
fn listening_address(log: &str) -> Option<String> {
    let line = log.lines().rev().find(|l| l.contains("listening on "))?;
    let after = &line[line.find("listening on ")? + "listening on ".len()..];
    // A barex build appends ", barex use port:N".
    let address = after.split([',', ' ']).next()?.trim();
    let (host, port) = address.rsplit_once(':')?;
    (!host.is_empty() && port.parse::<u16>().is_ok()).then(|| address.to_string())
}

/// Bytes per unit of each rate transfer_engine_bench's `--report_unit` can print.
const RATE_UNITS: [(&str, f64); 9] = [
    ("GB", 1e9),
    ("GiB", 1_073_741_824.0),
    ("Gb", 1e9 / 8.0),
    ("MB", 1e6),
    ("MiB", 1_048_576.0),
    ("Mb", 1e6 / 8.0),
    ("KB", 1e3),
    ("KiB", 1024.0),
    ("Kb", 1e3 / 8.0),
];

/// The last summary line of an initiator's output:
/// `Test completed: duration D, batch count N, throughput R UNIT/s`.
pub fn parse_summary(log: &str) -> Option<Summary> {
    const MARK: &str = "Test completed: ";
    let line = log.lines().rev().find(|l| l.contains(MARK))?;
    let fields = line[line.find(MARK)? + MARK.len()..].trim();
    let mut parts = fields.split(", ");
    let duration_s = parts.next()?.strip_prefix("duration ")?.parse().ok()?;
    let batch_count = parts.next()?.strip_prefix("batch count ")?.parse().ok()?;
    let reported = parts.next()?.strip_prefix("throughput ")?.trim();
    let (value, unit) = reported.split_once(' ')?;
    let value: f64 = value.parse().ok()?;
    let unit = unit.strip_suffix("/s")?;
    let (_, bytes) = RATE_UNITS.iter().find(|(name, _)| *name == unit)?;
    Some(Summary {
        duration_s,
        batch_count,
        gbps: value * bytes / 1e9,
        reported: reported.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(rate: &str) -> String {
        format!(
            "I0101 12:00:00.000000 4242 transfer_engine_bench.cpp:420] Test completed: duration 5.00, batch count 1234, throughput {rate}"
        )
    }

    #[test]
    fn every_unit_of_the_rate_printer_converts_to_gb_per_s() {
        for (rate, gbps) in [
            ("2.50 GB/s", 2.5),
            ("2.00 GiB/s", 2.147483648),
            ("8.00 Gb/s", 1.0),
            ("1500.00 MB/s", 1.5),
            ("1024.00 MiB/s", 1.073741824),
            ("800.00 Mb/s", 0.1),
            ("250000.00 KB/s", 0.25),
            ("1000000.00 KiB/s", 1.024),
            ("8000000.00 Kb/s", 1.0),
        ] {
            let s = parse_summary(&line(rate)).unwrap_or_else(|| panic!("{rate}"));
            assert!((s.gbps - gbps).abs() < 1e-9, "{rate}: {}", s.gbps);
            assert_eq!(s.reported, rate);
            assert_eq!(s.duration_s, 5.0);
            assert_eq!(s.batch_count, 1234);
        }
    }

    #[test]
    fn the_last_summary_counts_and_anything_else_is_none() {
        let log = format!(
            "noise\n{}\n{}\nWorker 0 stopped!\n",
            line("1.00 GB/s"),
            line("3.00 GB/s")
        );
        assert_eq!(parse_summary(&log).unwrap().gbps, 3.0);
        assert_eq!(parse_summary("I0101 Worker 0 stopped!\n"), None);
        // A zero duration prints an empty rate.
        assert_eq!(parse_summary(&line("")), None);
        assert_eq!(parse_summary(&line("1.00 TB/s")), None);
        assert_eq!(parse_summary(&line("1.00 GB")), None);
    }

    #[test]
    fn the_target_address_is_the_one_it_logs() {
        let log = "I0101 transfer_engine.cpp:91] Transfer Engine parseHostNameWithPort. server_name: 127.0.0.1 port: 20000\n\
                   I0101 transfer_engine.cpp:146] Transfer Engine RPC using P2P handshake, listening on 127.0.0.1:16683\n";
        assert_eq!(listening_address(log).as_deref(), Some("127.0.0.1:16683"));
        let barex = "RPC using P2P handshake, listening on 127.0.0.1:15001, barex use port:15002";
        assert_eq!(listening_address(barex).as_deref(), Some("127.0.0.1:15001"));
        assert_eq!(listening_address("listening on :16683"), None);
        assert_eq!(listening_address("starting"), None);
    }

    #[test]
    fn rdma_needs_a_device_and_flags_fit_mooncake() {
        let setup = Setup {
            protocol: "tcp".into(),
            device_name: String::new(),
            batch_size: 32,
            threads: 1,
            duration_s: 5,
            segment_id: None,
            log_prefix: PathBuf::from("x"),
        };
        assert!(setup.check().is_ok());
        let rdma = Setup {
            protocol: "rdma".into(),
            ..setup.clone()
        };
        assert!(rdma.check().unwrap_err().contains("--device-name"));
        let udp = Setup {
            protocol: "udp".into(),
            ..setup.clone()
        };
        assert!(udp.check().is_err());
        let huge = Setup {
            batch_size: 1 << 40,
            ..setup
        };
        assert!(huge.check().is_err());
    }
}
