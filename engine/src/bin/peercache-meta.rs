//! `peercache-meta`: see [`peercache_engine::cli::meta`].

fn main() {
    std::process::exit(peercache_engine::cli::meta::run(std::env::args_os()));
}
