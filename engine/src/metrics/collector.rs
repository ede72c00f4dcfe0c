//! The Prometheus view of a node: a [`prometheus::core::Collector`] that, on
//! each scrape, sums the shards' counters and the callers' latency histograms
//! and builds the metric families from that one snapshot.
//!
//! Nothing here is on the data path. The shards and callers only write their
//! own single-writer counters; all the adding-up happens at scrape time, a few
//! times a minute.

use super::latency::{HistogramSnapshot, LatencyOp, LatencyRecorders, BUCKET_BOUNDS_NS};
use crate::store::stats::{FieldKind, NodeStats, ShardStats};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Prefix of every metric name.
pub const PREFIX: &str = "peercache_";

/// Where a node's numbers live; the collector reads them at scrape time.
#[derive(Debug)]
pub struct MetricsSource {
    /// Value of the `node` label.
    pub node_id: String,
    /// Every shard's counters.
    pub shards: Vec<Arc<ShardStats>>,
    /// The callers' latency histograms.
    pub latency: Arc<LatencyRecorders>,
    /// Live cluster members, kept current by the membership callback (1 for
    /// a node without discovery).
    pub members: Arc<AtomicUsize>,
}

/// Everything one scrape reports, read once.
#[derive(Debug, Clone, Default)]
pub struct MetricsSnapshot {
    /// Counters summed over the shards.
    pub stats: NodeStats,
    /// Live cluster members.
    pub members: u64,
    /// Dedicated storage servers in the cluster. No storage role exists yet
    /// (`mode` is p2p only), so there are none and this is 0.
    pub storage_nodes: u64,
    /// Latency histograms in [`LatencyOp::ALL`] order.
    pub latency: [HistogramSnapshot; 4],
}

impl MetricsSource {
    /// Reads every counter and histogram now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let mut stats = NodeStats::default();
        for shard in &self.shards {
            stats += shard.snapshot();
        }
        MetricsSnapshot {
            stats,
            members: self.members.load(Ordering::Relaxed) as u64,
            storage_nodes: 0,
            latency: self.latency.snapshot(),
        }
    }
}

/// A family's name, help and type, before any value.
struct Shape {
    name: String,
    help: String,
    kind: MetricType,
    /// Labels besides `node`.
    labels: Vec<&'static str>,
}

/// A histogram family and the operations it shows.
struct HistogramFamily {
    name: &'static str,
    help: &'static str,
    /// (operation, value of the `path` label; empty: no `path` label).
    series: &'static [(LatencyOp, &'static str)],
}

const HISTOGRAMS: [HistogramFamily; 3] = [
    HistogramFamily {
        name: "set_latency_seconds",
        help: "Latency of batch_set calls, from the call to the last shard done.",
        series: &[(LatencyOp::Set, "")],
    },
    HistogramFamily {
        name: "get_latency_seconds",
        help: "Latency of batch_get calls; path=local when no peer was asked, remote when at least one was.",
        series: &[(LatencyOp::GetLocal, "local"), (LatencyOp::GetRemote, "remote")],
    },
    HistogramFamily {
        name: "exists_latency_seconds",
        help: "Latency of batch_exists calls.",
        series: &[(LatencyOp::Exists, "")],
    },
];

/// Every family a node exports, in output order.
fn shapes() -> Vec<Shape> {
    let gauge = |name: &str, help: &str| Shape {
        name: format!("{PREFIX}{name}"),
        help: help.to_string(),
        kind: MetricType::GAUGE,
        labels: Vec::new(),
    };
    let mut out = vec![
        gauge(
            "members",
            "Live nodes in the cluster, as discovery sees them.",
        ),
        gauge(
            "storage_nodes",
            "Dedicated storage servers in the cluster (0: no storage role exists yet).",
        ),
        gauge(
            "read_hit_ratio",
            "read_hits / read_requests since the node started (0 before the first read).",
        ),
    ];
    for info in NodeStats::INFO {
        let (name, kind) = match info.kind {
            // No `_total` suffix: seed 000's operators grep for the names
            // as the seeds write them (`peercache_read_hits\b`), and the
            // text format does not require it.
            FieldKind::Counter => (format!("{PREFIX}{}", info.name), MetricType::COUNTER),
            FieldKind::Gauge | FieldKind::Status => {
                (format!("{PREFIX}{}", info.name), MetricType::GAUGE)
            }
        };
        out.push(Shape {
            name,
            help: info.help.trim().to_string(),
            kind,
            labels: Vec::new(),
        });
    }
    for family in &HISTOGRAMS {
        out.push(Shape {
            name: format!("{PREFIX}{}", family.name),
            help: family.help.to_string(),
            kind: MetricType::HISTOGRAM,
            labels: if family.series.len() > 1 {
                vec!["path"]
            } else {
                Vec::new()
            },
        });
    }
    out
}

/// Every metric name a node exposes (histograms by their family name), for
/// the documentation check and the multi-process test.
pub fn exposed_names() -> Vec<String> {
    shapes().into_iter().map(|s| s.name).collect()
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut pair = LabelPair::default();
    pair.set_name(name.to_string());
    pair.set_value(value.to_string());
    pair
}

fn scalar(node: &str, kind: MetricType, value: f64) -> Metric {
    let mut metric = Metric::default();
    metric.set_label(vec![label("node", node)]);
    if kind == MetricType::COUNTER {
        let mut c = Counter::default();
        c.set_value(value);
        metric.set_counter(c);
    } else {
        let mut g = Gauge::default();
        g.set_value(value);
        metric.set_gauge(g);
    }
    metric
}

fn histogram(node: &str, path: &str, h: &HistogramSnapshot) -> Metric {
    let mut cumulative = 0;
    let buckets = BUCKET_BOUNDS_NS
        .iter()
        .zip(&h.buckets)
        .map(|(&bound, &n)| {
            cumulative += n;
            let mut b = Bucket::default();
            b.set_upper_bound(bound as f64 / 1e9);
            b.set_cumulative_count(cumulative);
            b
        })
        .collect();
    let mut proto = Histogram::default();
    proto.set_bucket(buckets);
    proto.set_sample_count(h.count());
    proto.set_sample_sum(h.sum_ns as f64 / 1e9);
    let mut metric = Metric::default();
    let mut labels = vec![label("node", node)];
    if !path.is_empty() {
        labels.push(label("path", path));
    }
    metric.set_label(labels);
    metric.set_histogram(proto);
    metric
}

/// Builds every family from one snapshot.
pub fn families(node: &str, snap: &MetricsSnapshot) -> Vec<MetricFamily> {
    let s = &snap.stats;
    let ratio = if s.read_requests == 0 {
        0.0
    } else {
        s.read_hits as f64 / s.read_requests as f64
    };
    let mut values: Vec<f64> = vec![snap.members as f64, snap.storage_nodes as f64, ratio];
    values.extend(s.fields().iter().map(|&(_, v)| v as f64));
    let mut histograms = HISTOGRAMS.iter();
    let mut values = values.into_iter();
    shapes()
        .into_iter()
        .map(|shape| {
            let metrics = if shape.kind == MetricType::HISTOGRAM {
                let family = histograms.next().expect("one shape per histogram");
                family
                    .series
                    .iter()
                    .map(|&(op, path)| {
                        let at = LatencyOp::ALL.iter().position(|&o| o == op).expect("op");
                        histogram(node, path, &snap.latency[at])
                    })
                    .collect()
            } else {
                let value = values.next().expect("one value per scalar shape");
                vec![scalar(node, shape.kind, value)]
            };
            let mut family = MetricFamily::default();
            family.set_name(shape.name);
            family.set_help(shape.help);
            family.set_field_type(shape.kind);
            family.set_metric(metrics);
            family
        })
        .collect()
}

/// The collector registered with the node's Prometheus registry.
pub struct NodeCollector {
    source: Arc<MetricsSource>,
    descs: Vec<Desc>,
}

impl NodeCollector {
    /// A collector over `source`.
    pub fn new(source: Arc<MetricsSource>) -> prometheus::Result<Self> {
        let descs = shapes()
            .into_iter()
            .map(|shape| {
                Desc::new(
                    shape.name,
                    shape.help,
                    std::iter::once("node")
                        .chain(shape.labels)
                        .map(str::to_string)
                        .collect(),
                    HashMap::new(),
                )
            })
            .collect::<prometheus::Result<_>>()?;
        Ok(Self { source, descs })
    }
}

impl Collector for NodeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        families(&self.source.node_id, &self.source.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, Registry, TextEncoder};
    use std::time::Duration;

    fn source(shards: usize) -> Arc<MetricsSource> {
        Arc::new(MetricsSource {
            node_id: "n1".into(),
            shards: (0..shards)
                .map(|_| Arc::new(ShardStats::default()))
                .collect(),
            latency: LatencyRecorders::new(),
            members: Arc::new(AtomicUsize::new(3)),
        })
    }

    fn scrape(source: &Arc<MetricsSource>) -> String {
        let registry = Registry::new();
        registry
            .register(Box::new(
                NodeCollector::new(Arc::clone(source)).expect("valid descs"),
            ))
            .expect("register");
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&registry.gather(), &mut out)
            .expect("encode");
        String::from_utf8(out).expect("utf-8")
    }

    /// The value of the sample line starting with `series` (name and labels).
    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
            .parse()
            .expect("a number")
    }

    #[test]
    fn sums_shards_and_names_counters_as_the_seeds_do() {
        let src = source(2);
        ShardStats::bump(&src.shards[0].read_requests, 3);
        ShardStats::bump(&src.shards[1].read_requests, 5);
        ShardStats::bump(&src.shards[0].read_hits, 2);
        ShardStats::bump(&src.shards[1].read_hits, 4);
        ShardStats::set(&src.shards[0].pool_keys, 7);
        ShardStats::set(&src.shards[1].pool_keys, 1);
        let text = scrape(&src);
        assert_eq!(value(&text, r#"peercache_read_requests{node="n1"}"#), 8.0);
        assert_eq!(value(&text, r#"peercache_read_hits{node="n1"}"#), 6.0);
        assert_eq!(value(&text, r#"peercache_pool_keys{node="n1"}"#), 8.0);
        assert_eq!(value(&text, r#"peercache_members{node="n1"}"#), 3.0);
        assert_eq!(value(&text, r#"peercache_read_hit_ratio{node="n1"}"#), 0.75);
        assert!(text.contains("# TYPE peercache_read_hits counter"));
        assert!(text.contains("# TYPE peercache_pool_keys gauge"));
        assert!(text.contains("# HELP peercache_read_hits Pages `batch_get` delivered."));
    }

    #[test]
    fn a_status_reports_the_largest_shard_code_not_a_sum() {
        let src = source(3);
        ShardStats::set(&src.shards[0].rdma_last_wc_status, 12);
        ShardStats::set(&src.shards[2].rdma_last_wc_status, 10);
        let text = scrape(&src);
        assert_eq!(
            value(&text, r#"peercache_rdma_last_wc_status{node="n1"}"#),
            12.0
        );
    }

    #[test]
    fn every_name_is_exposed_once() {
        let text = scrape(&source(1));
        let names = exposed_names();
        for name in &names {
            let typed = format!("# TYPE {name} ");
            assert_eq!(text.matches(&typed).count(), 1, "{name}");
        }
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
    }

    #[test]
    fn histograms_are_cumulative_with_count_and_sum() {
        let src = source(1);
        src.latency
            .record(LatencyOp::GetRemote, Duration::from_micros(40));
        src.latency
            .record(LatencyOp::GetRemote, Duration::from_micros(400));
        src.latency
            .record(LatencyOp::GetLocal, Duration::from_micros(20));
        let text = scrape(&src);
        let remote = r#"node="n1",path="remote""#;
        assert_eq!(
            value(
                &text,
                &format!(r#"peercache_get_latency_seconds_bucket{{{remote},le="0.00005"}}"#)
            ),
            1.0
        );
        assert_eq!(
            value(
                &text,
                &format!(r#"peercache_get_latency_seconds_bucket{{{remote},le="0.0005"}}"#)
            ),
            2.0
        );
        assert_eq!(
            value(
                &text,
                &format!(r#"peercache_get_latency_seconds_bucket{{{remote},le="+Inf"}}"#)
            ),
            2.0
        );
        assert_eq!(
            value(
                &text,
                &format!("peercache_get_latency_seconds_count{{{remote}}}")
            ),
            2.0
        );
        let sum = value(
            &text,
            &format!("peercache_get_latency_seconds_sum{{{remote}}}"),
        );
        assert!((sum - 0.00044).abs() < 1e-12, "{sum}");
        assert_eq!(
            value(
                &text,
                r#"peercache_get_latency_seconds_count{node="n1",path="local"}"#
            ),
            1.0
        );
        assert_eq!(
            value(&text, r#"peercache_set_latency_seconds_count{node="n1"}"#),
            0.0
        );
    }

    #[test]
    fn docs_list_every_exposed_name() {
        let doc = include_str!("../../../docs/metrics.md");
        for name in exposed_names() {
            assert!(
                doc.contains(&format!("`{name}`")),
                "docs/metrics.md does not list `{name}`"
            );
        }
    }
}
