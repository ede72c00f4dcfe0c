//! Metrics: what a node counts, how it is exported, and where it is served.
//!
//! - `latency`: per-thread batch-call latency histograms (single writer each);
//! - `collector`: the Prometheus collector summing shards and threads at
//!   scrape time;
//! - `server`: the HTTP server (`/metrics`, `/healthz`, the dashboard at `/`)
//!   on its own thread.
//!
//! The counters themselves live with the shards (`store/stats.rs`). See
//! docs/metrics.md for every exported name.

pub mod collector;
pub mod latency;
pub mod server;

pub use collector::{exposed_names, MetricsSnapshot, MetricsSource, NodeCollector};
pub use latency::{HistogramSnapshot, LatencyOp, LatencyRecorders};
pub use server::{MetricsServer, ServerOptions};

#[cfg(test)]
mod tests;
