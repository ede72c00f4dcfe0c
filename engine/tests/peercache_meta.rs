//! The standalone discovery host: nodes that point discovery_addr at a
//! `peercache-meta` process find each other through it and exchange pages.

use peercache_engine::{Config, Node};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn nodes_join_through_a_dedicated_meta_process() {
    let port = free_port();
    let mut meta = Command::new(env!("CARGO_BIN_EXE_peercache-meta"))
        .args(["--bind", &format!("127.0.0.1:{port}"), "--member-ttl", "2"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let config = |id: &str| {
        Config::from_json(&format!(
            r#"{{"discovery_addr":"127.0.0.1:{port}","node_id":"{id}","global_segment_size":"16mb","shards":1,
                "local_hostname":"127.0.0.1","control_bind_host":"127.0.0.1","meta_bind_host":"127.0.0.1",
                "heartbeat_interval":0.3,"member_ttl":2,"disk_enabled":false,"metrics_enabled":false}}"#
        ))
        .unwrap()
    };
    let a = Node::start_cluster(config("meta-a")).unwrap();
    let b = Node::start_cluster(config("meta-b")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.members() < 2 || b.members() < 2 {
        assert!(
            Instant::now() < deadline,
            "members: a={} b={}",
            a.members(),
            b.members()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    a.batch_set_pages(&["k1", "k2"], &[&[1u8; 4096], &[2u8; 4096]])
        .unwrap();
    let mut out = [vec![0u8; 4096], vec![0u8; 4096]];
    let [x, y] = &mut out;
    assert_eq!(
        b.batch_get_into(&["k1", "k2"], &mut [x.as_mut_slice(), y.as_mut_slice()])
            .unwrap(),
        vec![true, true]
    );
    assert!(out[0].iter().all(|&v| v == 1) && out[1].iter().all(|&v| v == 2));
    drop(a);
    drop(b);
    // SIGTERM stops it cleanly.
    unsafe { libc::kill(meta.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = meta.try_wait().unwrap() {
            assert!(status.success(), "peercache-meta exited with {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "peercache-meta did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
