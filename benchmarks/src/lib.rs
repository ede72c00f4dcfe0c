//! `peercache-bench`: the PeerCache benchmark command, as a library so the
//! Rust binary and the Python console script run the same code.
//!
//! Subcommands:
//! - `latency`, `throughput`, `saturation`, `suite`, `serve`, `drive`,
//!   `compare`: the systematic SGLang-HiCache benchmark of seed 004
//!   ([`hicache`]): a producer publishes pages in SGLang's object layout, a
//!   consumer probes and loads them through the Rust API or through
//!   `PeerCacheStore` from Python threads;
//! - `mooncake`: Mooncake's official `transfer_engine_bench` at each block
//!   size ([`mooncake`]); exit code 3 when it is missing or does not load;
//! - `micro`: the data-plane microbenchmark (local set and get through the
//!   node store against a plain memcpy of the same bytes);
//! - `remote`: two processes on loopback (remote get against a raw TCP
//!   stream, exists, set against memcpy, batch-1 latency, directory memory);
//! - `disk`: the disk tier's slab write and read against `dd` with O_DIRECT,
//!   and promote latency.
//!
//! Every reference is measured in the same run and figures are reported as
//! ratios to it, because the machines this runs on are shared and noisy.

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::sync::OnceLock;

mod aligned;
mod disk;
mod hicache;
mod micro;
mod mooncake;
mod remote;

// A single-value flag given twice takes its last value, so a script can
// pass its defaults first and the user's options after them (perf-scripts
// do). List flags (--concurrencies, --devices, ...) accumulate instead.
#[derive(Parser, Debug)]
#[command(
    name = "peercache-bench",
    version,
    about = "PeerCache benchmark suite",
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Single in-flight op tail: concurrency 1, batch 1 (per-page latency).
    Latency(hicache::HicacheArgs),
    /// Sustained throughput and tail of one op at one thread model (--op, --concurrency).
    Throughput(hicache::HicacheArgs),
    /// Throughput/latency across --concurrencies for --op, with the PEAK row.
    Saturation(hicache::HicacheArgs),
    /// The full baseline: latency, get/set/exists saturation, the Python front
    /// end, and the same-run references (raw TCP, memcpy).
    Suite(hicache::HicacheArgs),
    /// Producer half of a two-host run: publishes the working set, serves until stopped.
    ///
    /// Prints `READY <discovery> <raw TCP reference port>` once the working
    /// set is published. Stops cleanly (its node deregisters) on SIGINT or
    /// SIGTERM, and also when stdin ends if stdin is a pipe or the terminal it
    /// runs in the foreground of. Any other stdin, such as the /dev/null of a
    /// job a script starts with `&`, is ignored: it then runs until a signal.
    Serve(hicache::ServeArgs),
    /// Consumer half of a two-host run: --discovery-addr of a `serve`; runs --op over --concurrencies.
    Drive(hicache::HicacheArgs),
    /// PeerCache remote get vs same-run references (memcpy, raw TCP; Mooncake when it loads).
    Compare(hicache::CompareArgs),
    /// Mooncake's official transfer_engine_bench (read) at each --block-sizes.
    ///
    /// Exits 3 when transfer_engine_bench is missing or cannot load here
    /// (`pip install mooncake-transfer-engine`; its wheel needs libcuda.so.1).
    Mooncake(mooncake::MooncakeArgs),
    /// One consumer process of a `--processes N` run (started by it; not for direct use).
    #[command(hide = true)]
    PointWorker(hicache::WorkerArgs),
    /// Data-plane microbenchmark: local set/get GB/s vs a same-run memcpy.
    Micro(micro::MicroArgs),
    /// Two processes on loopback: remote get/exists/set vs same-run raw TCP and memcpy.
    Remote(remote::RemoteArgs),
    /// Disk tier: slab write/read GB/s vs same-run dd with O_DIRECT, promote latency.
    Disk(disk::DiskArgs),
    /// Server role of `remote` (started by it; not for direct use).
    #[command(hide = true)]
    RemoteServe(remote::ServeArgs),
}

/// How to start this program again (benchmarks that need a second process
/// start it this way). Unset: this executable.
static SELF_COMMAND: OnceLock<Vec<OsString>> = OnceLock::new();

/// Sets the command that re-invokes `peercache-bench` (program, then any
/// leading arguments), for hosts where this code is not its own executable
/// (the Python console script runs inside the interpreter).
pub fn set_self_command(command: Vec<OsString>) {
    let _ = SELF_COMMAND.set(command);
}

/// The command that starts `peercache-bench` again.
pub(crate) fn self_command() -> Result<std::process::Command, String> {
    match SELF_COMMAND.get() {
        Some(cmd) if !cmd.is_empty() => {
            let mut c = std::process::Command::new(&cmd[0]);
            c.args(&cmd[1..]);
            Ok(c)
        }
        _ => Ok(std::process::Command::new(
            std::env::current_exe().map_err(|e| e.to_string())?,
        )),
    }
}

/// Runs `peercache-bench` with `argv` (program name first); returns the
/// process exit code.
pub fn run_cli<I, T>(argv: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    peercache_engine::logging::init();
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    let result = match cli.command {
        Command::Latency(args) => hicache::run(&args, hicache::Mode::Latency),
        Command::Throughput(args) => hicache::run(&args, hicache::Mode::Throughput),
        Command::Saturation(args) => hicache::run(&args, hicache::Mode::Saturation),
        Command::Suite(args) => hicache::run(&args, hicache::Mode::Suite),
        Command::Serve(args) => hicache::serve(&args.hicache, args.meta_port),
        Command::Drive(args) => hicache::run(&args, hicache::Mode::Drive),
        Command::Compare(args) => hicache::compare(&args),
        Command::Mooncake(args) => match mooncake::run(&args) {
            Ok(()) => Ok(()),
            Err(mooncake::RunError::Failed(e)) => Err(e),
            Err(mooncake::RunError::Unavailable(why)) => {
                eprintln!("peercache-bench: Mooncake not available: {why}");
                return mooncake::EXIT_UNAVAILABLE;
            }
        },
        Command::PointWorker(args) => hicache::point_worker(&args),
        Command::Micro(args) => micro::run(&args),
        Command::Remote(args) => remote::run(&args),
        Command::RemoteServe(args) => remote::serve(&args),
        Command::Disk(args) => disk::run(&args),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("peercache-bench: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_given_twice_takes_its_last_value_and_lists_accumulate() {
        let cli = Cli::try_parse_from([
            "peercache-bench",
            "throughput",
            "--duration",
            "2",
            "--warmup",
            "1",
            "--duration",
            "0.5",
            "--concurrencies",
            "1,2",
            "--concurrencies",
            "8",
        ])
        .expect("parses");
        match cli.command {
            Command::Throughput(args) => {
                assert_eq!(args.duration, 0.5);
                assert_eq!(args.warmup, 1.0);
                assert_eq!(args.concurrencies, [1, 2, 8], "lists accumulate");
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}
