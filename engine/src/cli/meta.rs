//! `peercache-meta`: a dedicated discovery host, for clusters that want one
//! on a machine that does not serve SGLang (seed 001, "Optional"). Nodes point
//! `discovery_addr` at it; it runs the same discovery service every node
//! embeds, with no node of its own. Stops cleanly on SIGINT/SIGTERM.

use clap::Parser;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "peercache-meta",
    version,
    about = "PeerCache dedicated discovery host"
)]
struct Args {
    /// Address to serve discovery on, e.g. 0.0.0.0:31998 or this host's
    /// name with the port (resolved once, at start).
    #[arg(long, default_value = "0.0.0.0:31998", value_parser = parse_bind)]
    bind: SocketAddr,
    /// Seconds before a silent member is pruned (use the nodes' member_ttl).
    #[arg(long, default_value_t = 6.0)]
    member_ttl: f64,
    /// Seconds between attempts to bind while the port is taken.
    #[arg(long, default_value_t = 2.0)]
    retry_interval: f64,
}

/// `HOST:PORT` with HOST an address or a name; a name resolves to its
/// first IPv4 address if it has one (as a node's `meta_bind_host` does).
fn parse_bind(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let addrs = text.to_socket_addrs().map_err(|e| {
        format!("{text} is not HOST:PORT with a host that resolves ({e}); e.g. 0.0.0.0:31998")
    })?;
    crate::cluster::address::preferred_bind_addr(addrs)
        .ok_or_else(|| format!("{text}: the name has no address"))
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Runs `peercache-meta` with `argv` (program name first) until SIGINT or
/// SIGTERM; returns the process exit code. Shared by the Rust binary and the
/// Python console script, which hands it `sys.argv`.
pub fn run<I, T>(argv: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    crate::logging::init();
    let args = match Args::try_parse_from(argv) {
        Ok(args) => args,
        Err(e) => {
            // Help and version are "errors" too, printed with their own exit code.
            let _ = e.print();
            return e.exit_code();
        }
    };
    if !(args.member_ttl > 0.0 && args.retry_interval > 0.0) {
        eprintln!("peercache-meta: --member-ttl and --retry-interval must be positive seconds");
        return 2;
    }
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let forward = Arc::clone(&stop);
    std::thread::spawn(move || loop {
        if STOP.load(Ordering::SeqCst) {
            forward.store(true, Ordering::SeqCst);
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    });
    tracing::info!("peercache-meta serving discovery on {}", args.bind);
    crate::cluster::run_standalone_meta(
        args.bind,
        Duration::from_secs_f64(args.member_ttl),
        Duration::from_secs_f64(args.retry_interval),
        stop,
    );
    tracing::info!("peercache-meta stopped");
    0
}

#[cfg(test)]
mod tests {
    use super::parse_bind;

    #[test]
    fn bind_takes_an_address_or_a_host_name() {
        assert_eq!(
            parse_bind("0.0.0.0:31998").unwrap(),
            "0.0.0.0:31998".parse::<std::net::SocketAddr>().unwrap()
        );
        let named = parse_bind("localhost:31998").unwrap();
        assert!(named.ip().is_loopback() && named.port() == 31998);
        assert!(parse_bind("localhost").unwrap_err().contains("HOST:PORT"));
        assert!(parse_bind("127.0.0.1:99999").is_err());
    }
}
