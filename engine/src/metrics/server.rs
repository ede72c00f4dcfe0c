//! The metrics HTTP server: `/metrics`, `/healthz` and the dashboard at `/`.
//!
//! It runs on one thread of its own (`peercache-metrics`), never on a shard:
//! a scrape sums counters and encodes text, which must not delay a batch.
//! HTTP parsing is tiny_http's.
//!
//! Several ranks of one host share `metrics_port`. The first to bind serves
//! it; the others log one warning and run without a metrics server, because
//! metrics must never stop a rank from starting.

use super::collector::{MetricsSource, NodeCollector};
use prometheus::{Encoder, Registry, TextEncoder};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::thread::JoinHandle;

/// The dashboard page, embedded so the node needs no files at run time.
const DASHBOARD: &str = include_str!("dashboard.html");

/// What the server serves.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// `metrics_bind_host`.
    pub host: String,
    /// `metrics_port` (0: any free port).
    pub port: u16,
    /// `metrics_dashboard`: serve the dashboard at `/`.
    pub dashboard: bool,
}

/// A running metrics server; stopped on drop.
pub struct MetricsServer {
    addr: SocketAddr,
    /// The listener's registration with `crate::fork`, dropped before the
    /// listener can close (`stop`).
    closed_in_children: Option<crate::fork::ClosedInChildren>,
    /// None once stopped; dropping the last handle closes the listener.
    http: Option<Arc<tiny_http::Server>>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MetricsServer {
    /// Binds and starts serving. Returns `None`, after one warning, when the
    /// port cannot be bound (taken by a co-located rank, or a bad host): the
    /// node runs on without metrics.
    pub fn start(options: &ServerOptions, source: Arc<MetricsSource>) -> Option<MetricsServer> {
        let ServerOptions { host, port, .. } = options;
        let listener = match TcpListener::bind((host.as_str(), *port)) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::warn!(
                    "metrics port {host}:{port} is already in use (another rank on this host serves it); this rank runs without a metrics server"
                );
                return None;
            }
            Err(e) => {
                tracing::warn!(
                    "cannot bind the metrics server on {host}:{port}: {e}; running without metrics (check metrics_bind_host / metrics_port)"
                );
                return None;
            }
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("metrics listener address: {e}; running without metrics");
                return None;
            }
        };
        let registry = Registry::new();
        let registered =
            NodeCollector::new(source).and_then(|collector| registry.register(Box::new(collector)));
        if let Err(e) = registered {
            // Only a naming bug can get here; say so rather than serve nothing.
            tracing::warn!("metrics collector refused: {e}; running without metrics");
            return None;
        }
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let http = match tiny_http::Server::from_listener(listener, None) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                tracing::warn!("cannot start the metrics server on {addr}: {e}");
                return None;
            }
        };
        let serving = Arc::clone(&http);
        let dashboard = options.dashboard;
        let thread = std::thread::Builder::new()
            .name("peercache-metrics".into())
            .spawn(move || serve(&serving, &registry, dashboard));
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!("cannot start the metrics thread: {e}; running without metrics");
                return None;
            }
        };
        let shown = if addr.ip().is_unspecified() {
            // 0.0.0.0 is not an address to browse to; the port is what matters.
            format!("{host}:{}", addr.port())
        } else {
            addr.to_string()
        };
        tracing::info!(
            "metrics on http://{shown}/metrics{}",
            if dashboard {
                format!(" (dashboard http://{shown}/)")
            } else {
                String::new()
            }
        );
        // Last, once nothing can fail any more: each early return above
        // closes the listener, which must not stay registered.
        let closed_in_children = crate::fork::close_in_children(fd, "metrics listener");
        Some(MetricsServer {
            addr,
            closed_in_children,
            http: Some(http),
            thread: Some(thread),
        })
    }

    /// The address actually bound (the real port when `metrics_port` is 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends the serving thread and joins it. Idempotent.
    pub fn stop(&mut self) {
        // First: tiny_http closes the listener on its own thread once told.
        self.closed_in_children = None;
        let Some(http) = self.http.take() else {
            return;
        };
        http.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        // The serving thread's handle is gone with the thread, so this drops
        // the server, which tells tiny_http's accept thread to close.
        drop(http);
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(http: &tiny_http::Server, registry: &Registry, dashboard: bool) {
    // Ends when `stop` unblocks the server.
    for request in http.incoming_requests() {
        let path = request.url().split('?').next().unwrap_or("");
        let (status, content_type, body) = match (request.method(), path) {
            (tiny_http::Method::Get, "/metrics") => {
                let encoder = TextEncoder::new();
                let mut text = Vec::new();
                match encoder.encode(&registry.gather(), &mut text) {
                    Ok(()) => (200, encoder.format_type().to_string(), text),
                    Err(e) => (500, "text/plain".into(), format!("{e}\n").into_bytes()),
                }
            }
            (tiny_http::Method::Get, "/healthz") => (200, "text/plain".into(), b"ok\n".to_vec()),
            (tiny_http::Method::Get, "/") if dashboard => (
                200,
                "text/html; charset=utf-8".into(),
                DASHBOARD.as_bytes().to_vec(),
            ),
            (tiny_http::Method::Get, _) => (
                404,
                "text/plain".into(),
                format!(
                    "not found: {path}\nserved here: /metrics, /healthz{}\n",
                    if dashboard { ", /" } else { "" }
                )
                .into_bytes(),
            ),
            _ => (405, "text/plain".into(), b"only GET is served\n".to_vec()),
        };
        let header = tiny_http::Header::from_bytes("Content-Type", content_type)
            .expect("static header names and values are valid");
        let response = tiny_http::Response::from_data(body)
            .with_status_code(status)
            .with_header(header);
        if let Err(e) = request.respond(response) {
            tracing::debug!("metrics: response not sent: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::latency::LatencyRecorders;
    use crate::store::stats::ShardStats;
    use std::io::{Read, Write};
    use std::sync::atomic::AtomicUsize;

    fn source() -> Arc<MetricsSource> {
        Arc::new(MetricsSource {
            node_id: "srv".into(),
            shards: vec![Arc::new(ShardStats::default())],
            latency: LatencyRecorders::new(),
            members: Arc::new(AtomicUsize::new(1)),
        })
    }

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut conn = std::net::TcpStream::connect(addr).expect("connect");
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        conn.read_to_string(&mut text).expect("read");
        text
    }

    fn options(port: u16, dashboard: bool) -> ServerOptions {
        ServerOptions {
            host: "127.0.0.1".into(),
            port,
            dashboard,
        }
    }

    #[test]
    fn serves_metrics_health_and_dashboard() {
        let mut server = MetricsServer::start(&options(0, true), source()).expect("bind");
        let metrics = get(server.addr(), "/metrics");
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
        assert!(metrics.contains("peercache_members{node=\"srv\"} 1"));
        assert!(get(server.addr(), "/healthz").ends_with("ok\n"));
        let page = get(server.addr(), "/");
        assert!(page.contains("text/html") && page.contains("<html"));
        assert!(get(server.addr(), "/nope").starts_with("HTTP/1.1 404"));
        server.stop();
        server.stop(); // idempotent
    }

    #[test]
    fn no_dashboard_when_disabled() {
        let server = MetricsServer::start(&options(0, false), source()).expect("bind");
        assert!(get(server.addr(), "/").starts_with("HTTP/1.1 404"));
        assert!(get(server.addr(), "/metrics").starts_with("HTTP/1.1 200"));
    }

    #[test]
    fn a_taken_port_gives_no_server_instead_of_failing() {
        let first = MetricsServer::start(&options(0, true), source()).expect("bind");
        assert!(MetricsServer::start(&options(first.addr().port(), true), source()).is_none());
    }
}
