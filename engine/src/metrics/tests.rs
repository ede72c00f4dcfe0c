//! A real node's metrics: started with the node, fed by real batch calls,
//! stopped with the node.

use crate::{Config, Node};
use std::io::{Read, Write};
use std::net::SocketAddr;

fn scrape(addr: SocketAddr) -> String {
    let mut conn = std::net::TcpStream::connect(addr).expect("connect to the metrics server");
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("read the answer");
    text
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series}"))
        .parse()
        .expect("a number")
}

#[test]
fn a_node_serves_its_counters_and_latencies_until_shutdown() {
    let config = Config::from_json(
        r#"{"discovery_addr":"127.0.0.1:31998","global_segment_size":"16mb","shards":2,
            "node_id":"m1","disk_enabled":false,"metrics_port":0,"metrics_bind_host":"127.0.0.1"}"#,
    )
    .unwrap();
    let mut node = Node::start(config).unwrap();
    let addr = node.metrics_addr().expect("metrics enabled on a free port");
    assert_ne!(addr.port(), 0, "the bound port, not the configured 0");

    let keys: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    let page = vec![7u8; 4096];
    let pages: Vec<&[u8]> = keys.iter().map(|_| page.as_slice()).collect();
    node.batch_set_pages(&keys, &pages).unwrap();
    node.batch_set_pages(&keys[..1], &pages[..1]).unwrap();
    assert_eq!(node.batch_exists(&keys).unwrap(), 10);
    let mut out = vec![vec![0u8; 4096]; 12];
    let mut dsts: Vec<&mut [u8]> = out.iter_mut().map(|v| v.as_mut_slice()).collect();
    let mut asked = keys.clone();
    asked.extend(["absent-1".to_string(), "absent-2".to_string()]);
    node.batch_get_into(&asked, &mut dsts).unwrap();
    // Empty batches are no operation and are not timed.
    node.batch_exists::<&str>(&[]).unwrap();

    let text = scrape(addr);
    let n = r#"{node="m1"}"#;
    assert_eq!(value(&text, &format!("peercache_write_requests{n}")), 11.0);
    assert_eq!(value(&text, &format!("peercache_read_requests{n}")), 12.0);
    assert_eq!(value(&text, &format!("peercache_read_hits{n}")), 10.0);
    assert_eq!(value(&text, &format!("peercache_read_misses{n}")), 2.0);
    assert_eq!(value(&text, &format!("peercache_bytes_read{n}")), 40960.0);
    assert_eq!(value(&text, &format!("peercache_pool_keys{n}")), 10.0);
    assert_eq!(value(&text, &format!("peercache_members{n}")), 1.0);
    assert_eq!(
        value(&text, &format!("peercache_set_latency_seconds_count{n}")),
        2.0
    );
    assert_eq!(
        value(&text, &format!("peercache_exists_latency_seconds_count{n}")),
        1.0
    );
    // Alone, a get never asks a peer.
    let local = r#"{node="m1",path="local"}"#;
    let remote = r#"{node="m1",path="remote"}"#;
    assert_eq!(
        value(
            &text,
            &format!("peercache_get_latency_seconds_count{local}")
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            &format!("peercache_get_latency_seconds_count{remote}")
        ),
        0.0
    );

    node.shutdown();
    assert_eq!(node.metrics_addr(), None, "stopped with the node");
}

#[test]
fn metrics_disabled_means_no_server() {
    let config = Config::from_json(
        r#"{"discovery_addr":"127.0.0.1:31998","global_segment_size":"16mb","shards":1,
            "disk_enabled":false,"metrics_enabled":false}"#,
    )
    .unwrap();
    let node = Node::start(config).unwrap();
    assert_eq!(node.metrics_addr(), None);
}
