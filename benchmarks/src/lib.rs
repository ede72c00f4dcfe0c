//! `peercache-bench`: the PeerCache benchmark command, as a library so the
//! Rust binary and the Python console script run the same code.
//!
//! Subcommands so far: `micro` (the data-plane microbenchmark: local set and
//! get through the node store against a plain memcpy of the same bytes) and
//! `remote` (two processes on loopback: remote get against a raw TCP stream,
//! exists, set against memcpy, directory memory) and `disk` (slab write and
//! read against `dd` with O_DIRECT, promote latency), each reference measured
//! in the same run. Every figure it prints is a ratio to a reference
//! taken side by side, because the machines this runs on are shared and noisy.

use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::sync::OnceLock;

mod aligned;
mod disk;
mod micro;
mod remote;

#[derive(Parser, Debug)]
#[command(name = "peercache-bench", version, about = "PeerCache benchmark suite")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
