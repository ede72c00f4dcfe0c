//! `peercache-bench`: the PeerCache benchmark command.
//!
//! Subcommands so far: `micro` (the data-plane microbenchmark: local set and
//! get through the node store against a plain memcpy of the same bytes) and
//! `remote` (two processes on loopback: remote get against a raw TCP stream,
//! exists, set against memcpy, directory memory), each reference measured in
//! the same run. Every figure it prints is a ratio to a reference
//! taken side by side, because the machines this runs on are shared and noisy.

use clap::{Parser, Subcommand};

mod aligned;
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
    /// Server role of `remote` (started by it; not for direct use).
    #[command(hide = true)]
    RemoteServe(remote::ServeArgs),
}

fn main() {
    peercache_engine::logging::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Micro(args) => micro::run(&args),
        Command::Remote(args) => remote::run(&args),
        Command::RemoteServe(args) => remote::serve(&args),
    };
    if let Err(e) = result {
        eprintln!("peercache-bench: {e}");
        std::process::exit(1);
    }
}
