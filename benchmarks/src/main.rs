//! `peercache-bench`: the PeerCache benchmark command.
//!
//! Subcommands so far: `micro` (the data-plane microbenchmark: local set and
//! get through the node store against a plain memcpy of the same bytes,
//! measured in the same run). Every figure it prints is a ratio to a reference
//! taken side by side, because the machines this runs on are shared and noisy.

use clap::{Parser, Subcommand};

mod aligned;
mod micro;

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
}

fn main() {
    peercache_engine::logging::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Micro(args) => micro::run(&args),
    };
    if let Err(e) = result {
        eprintln!("peercache-bench: {e}");
        std::process::exit(1);
    }
}
