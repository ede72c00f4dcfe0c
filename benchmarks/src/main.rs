//! `peercache-bench`: see the library (`peercache_bench::run_cli`).

fn main() {
    std::process::exit(peercache_bench::run_cli(std::env::args_os()));
}
