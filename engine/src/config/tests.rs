//! Tests of `extra_config` parsing: defaults, every key, every rejection,
//! warnings and the helpers.

use super::*;
use serde_json::json;

/// Parses `value` merged over a minimal valid object.
fn parse_with(extra: Value) -> Result<Config, ConfigError> {
    let mut object = json!({"discovery_addr": "10.0.0.1:31998"});
    for (k, v) in extra.as_object().expect("test input is an object") {
        object[k] = v.clone();
    }
    Config::from_value(&object)
}

/// Asserts that `extra` is rejected and that the message names `key`.
#[track_caller]
fn assert_rejected(extra: Value, key: &str) -> ConfigError {
    let err = match parse_with(extra.clone()) {
        Ok(_) => panic!("{extra} should be rejected"),
        Err(err) => err,
    };
    assert_eq!(err.key(), Some(key), "{extra}: {err}");
    assert!(
        err.to_string().contains(&format!("\"{key}\"")),
        "{extra}: {err}"
    );
    err
}

fn hp(host: &str, port: u16) -> HostPort {
    HostPort {
        host: host.to_owned(),
        port,
    }
}

#[test]
fn every_default() {
    let c = Config::from_json(r#"{"discovery_addr": "10.0.0.1"}"#).unwrap();
    assert_eq!(c.backend_name, None);
    assert_eq!(c.module_path, None);
    assert_eq!(c.class_name, None);
    assert_eq!(c.discovery_addr, vec![hp("10.0.0.1", 31998)]);
    assert_eq!(c.mode, Mode::P2p);
    assert_eq!(c.write_policy, WritePolicy::Local);
    assert_eq!(c.role, Role::Auto);
    assert_eq!(c.protocol, Protocol::Rdma);
    assert_eq!(c.device_name, "");
    assert!(c.device_names.is_empty());
    assert_eq!(c.ib_port, 1);
    assert_eq!(c.gid_index, 3);
    assert_eq!(c.max_channels_per_peer, 16);
    assert_eq!(c.global_segment_size, 4 * 1024 * 1024 * 1024);
    assert_eq!(c.vnodes, 160);
    assert_eq!(c.directory_replicas, 2);
    assert_eq!(c.directory_read_cache_ttl, 0.0);
    assert_eq!(c.max_masters, 3);
    assert!(c.disk_enabled);
    assert_eq!(c.disk_path, PathBuf::from("/data/peercache/"));
    assert_eq!(c.disk_size, 100 * 1024 * 1024 * 1024);
    assert!(c.metrics_enabled);
    assert_eq!(c.metrics_port, 31997);
    assert_eq!(c.metrics_bind_host, "0.0.0.0");
    assert!(c.metrics_dashboard);
    assert_eq!(c.meta_bind_host, "0.0.0.0");
    assert_eq!(c.local_hostname, None);
    assert_eq!(c.rdma_bind_host, "0.0.0.0");
    assert_eq!(c.rdma_port, 0);
    assert_eq!(c.control_bind_host, "0.0.0.0");
    assert_eq!(c.control_port, 0);
    assert_eq!(c.node_id, None);
    assert_eq!(c.heartbeat_interval, 2.0);
    assert_eq!(c.member_ttl, 6.0);
    assert_eq!(c.shards, 0);
    assert_eq!(c.local_rank, None);
    assert_eq!(c.tp_rank, 0);
    assert_eq!(c.tp_size, 1);
    assert_eq!(c.pp_rank, 0);
    assert_eq!(c.pp_size, 1);
    assert!(!c.is_mla_model);
    assert_eq!(c.model_name, "");
    assert_eq!(c.extra_backend_tag, None);
    assert!(!c.require_rdma);
    assert_eq!(c.pool_quarantine_ms, 200);
    assert_eq!(c.batch_wait_spin_us, 0);
    assert_eq!(c.request_timeout(), std::time::Duration::from_secs(2));
    assert!(c.prefault_pool);
    assert_eq!(c.shard_io_memory, 1024 * 1024);
    assert!(c.sglang_passthrough.is_empty());
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    // Helpers on the defaults.
    assert_eq!(c.heartbeat_interval(), Duration::from_secs(2));
    assert_eq!(c.member_ttl(), Duration::from_secs(6));
    assert_eq!(c.directory_read_cache_ttl(), Duration::ZERO);
    assert_eq!(c.pool_quarantine(), Duration::from_millis(200));
    assert_eq!(c.pool_bytes_per_rank(), 4 << 30);
    assert!(c.rdma_devices().is_empty());
    assert_eq!(c.local_rank(), 0);
    assert_eq!(c.discovery_head(), &hp("10.0.0.1", 31998));
}

#[test]
fn null_means_default() {
    let c = parse_with(json!({"mode": null, "ib_port": null, "disk_size": null, "node_id": null}))
        .unwrap();
    assert_eq!(c.mode, Mode::P2p);
    assert_eq!(c.ib_port, 1);
    assert_eq!(c.disk_size, 100 << 30);
    assert_eq!(c.node_id, None);
}

#[test]
fn every_key_with_a_non_default_value() {
    let c = Config::from_json(
        r#"{
            "backend_name": "peercache",
            "module_path": "peercache.store",
            "class_name": "PeerCacheStore",
            "discovery_addr": "10.0.0.1:4000, 10.0.0.2",
            "mode": "p2p",
            "write_policy": "both",
            "role": "inference",
            "protocol": "tcp",
            "device_name": "mlx5_0",
            "device_names": ["mlx5_0", "mlx5_1"],
            "ib_port": 2,
            "gid_index": 1,
            "max_channels_per_peer": 4,
            "global_segment_size": "8gb",
            "vnodes": 64,
            "directory_replicas": 3,
            "directory_read_cache_ttl": 1.5,
            "max_masters": 5,
            "disk_enabled": false,
            "disk_path": "/mnt/nvme/pc",
            "disk_size": "2tb",
            "metrics_enabled": false,
            "metrics_port": 9100,
            "metrics_bind_host": "127.0.0.1",
            "metrics_dashboard": false,
            "meta_bind_host": "10.0.0.9",
            "local_hostname": "10.0.0.9",
            "rdma_bind_host": "10.0.0.9",
            "rdma_port": 20000,
            "control_bind_host": "::",
            "control_port": 20001,
            "node_id": "node-9",
            "heartbeat_interval": 0.5,
            "member_ttl": "2.5",
            "shards": 4,
            "local_rank": 3,
            "tp_rank": 1,
            "tp_size": 2,
            "pp_rank": 1,
            "pp_size": 2,
            "is_mla_model": true,
            "model_name": "Qwen/Qwen3-8B",
            "extra_backend_tag": "fp8",
            "require_rdma": false,
            "pool_quarantine_ms": 50,
            "batch_wait_spin_us": 80,
            "request_timeout_ms": 500,
            "directory_refresh_interval": 2.5,
            "prefault_pool": "off",
            "shard_io_memory": "4mb"
        }"#,
    )
    .unwrap();
    assert_eq!(c.backend_name.as_deref(), Some("peercache"));
    assert_eq!(c.module_path.as_deref(), Some("peercache.store"));
    assert_eq!(c.class_name.as_deref(), Some("PeerCacheStore"));
    assert_eq!(
        c.discovery_addr,
        vec![hp("10.0.0.1", 4000), hp("10.0.0.2", 31998)]
    );
    assert_eq!(c.mode, Mode::P2p);
    assert_eq!(c.write_policy, WritePolicy::Both);
    assert_eq!(c.role, Role::Inference);
    assert_eq!(c.protocol, Protocol::Tcp);
    assert_eq!(c.device_name, "mlx5_0");
    assert_eq!(c.device_names, vec!["mlx5_0", "mlx5_1"]);
    assert_eq!(c.ib_port, 2);
    assert_eq!(c.gid_index, 1);
    assert_eq!(c.max_channels_per_peer, 4);
    assert_eq!(c.global_segment_size, 8 << 30);
    assert_eq!(c.vnodes, 64);
    assert_eq!(c.directory_replicas, 3);
    assert_eq!(c.directory_read_cache_ttl, 1.5);
    assert_eq!(c.max_masters, 5);
    assert!(!c.disk_enabled);
    assert_eq!(c.disk_path, PathBuf::from("/mnt/nvme/pc"));
    assert_eq!(c.disk_size, 2 << 40);
    assert!(!c.metrics_enabled);
    assert_eq!(c.metrics_port, 9100);
    assert_eq!(c.metrics_bind_host, "127.0.0.1");
    assert!(!c.metrics_dashboard);
    assert_eq!(c.meta_bind_host, "10.0.0.9");
    assert_eq!(c.local_hostname.as_deref(), Some("10.0.0.9"));
    assert_eq!(c.rdma_bind_host, "10.0.0.9");
    assert_eq!(c.rdma_port, 20000);
    assert_eq!(c.control_bind_host, "::");
    assert_eq!(c.control_port, 20001);
    assert_eq!(c.node_id.as_deref(), Some("node-9"));
    assert_eq!(c.heartbeat_interval, 0.5);
    assert_eq!(c.member_ttl, 2.5);
    assert_eq!(c.shards, 4);
    assert_eq!(c.local_rank, Some(3));
    assert_eq!(c.tp_rank, 1);
    assert_eq!(c.tp_size, 2);
    assert_eq!(c.pp_rank, 1);
    assert_eq!(c.pp_size, 2);
    assert!(c.is_mla_model);
    assert_eq!(c.model_name, "Qwen/Qwen3-8B");
    assert_eq!(c.extra_backend_tag.as_deref(), Some("fp8"));
    assert!(!c.require_rdma);
    assert_eq!(c.pool_quarantine_ms, 50);
    assert_eq!(c.batch_wait_spin_us, 80);
    assert_eq!(c.request_timeout_ms, 500);
    assert_eq!(c.directory_refresh_interval(), Duration::from_millis(2500));
    assert!(!c.prefault_pool);
    assert_eq!(c.shard_io_memory, 4 << 20);
    // Parsed, and each named as having no effect in this build.
    let ignored = ["\"write_policy\"", "\"rdma_port\"", "\"rdma_bind_host\""];
    assert_eq!(c.warnings.len(), ignored.len(), "{:?}", c.warnings);
    for (warning, key) in c.warnings.iter().zip(ignored) {
        assert!(warning.contains(key), "{warning}");
    }

    // Helpers.
    assert_eq!(c.heartbeat_interval(), Duration::from_millis(500));
    assert_eq!(c.member_ttl(), Duration::from_millis(2500));
    assert_eq!(c.directory_read_cache_ttl(), Duration::from_millis(1500));
    assert_eq!(c.pool_quarantine(), Duration::from_millis(50));
    assert_eq!(c.pool_bytes_per_rank(), 4 << 30);
    assert_eq!(c.rdma_devices(), vec!["mlx5_0", "mlx5_1"]);
    assert_eq!(c.local_rank(), 3);
}

#[test]
fn require_rdma_true_with_rdma() {
    let c = parse_with(json!({"require_rdma": true, "protocol": "rdma"})).unwrap();
    assert!(c.require_rdma);
}

#[test]
fn seed_001_launch_example_parses() {
    // The extra_config of the getting-started launch command, with a real IP.
    let text = r#"{
        "backend_name": "peercache",
        "module_path": "peercache.store",
        "class_name": "PeerCacheStore",
        "discovery_addr": "192.168.1.10:31998",
        "protocol": "rdma",
        "device_name": "mlx5_0",
        "ib_port": 1,
        "gid_index": 3,
        "global_segment_size": "8gb",
        "disk_enabled": true,
        "disk_path": "/data/peercache/",
        "disk_size": "100gb"
    }"#;
    let c = Config::from_json(text).unwrap();
    assert_eq!(c.discovery_addr, vec![hp("192.168.1.10", 31998)]);
    assert_eq!(c.protocol, Protocol::Rdma);
    assert_eq!(c.rdma_devices(), vec!["mlx5_0"]);
    assert_eq!(c.global_segment_size, 8_589_934_592);
    assert_eq!(c.disk_size, 107_374_182_400);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);

    // The hybrid example names a mode this build does not run: refused at
    // parse time, naming the key and what is missing.
    let err = Config::from_json(
        r#"{"backend_name": "peercache", "module_path": "peercache.store",
            "class_name": "PeerCacheStore", "discovery_addr": "192.168.1.10:31998",
            "mode": "hybrid", "protocol": "rdma", "device_name": "mlx5_0"}"#,
    )
    .unwrap_err();
    assert_eq!(err.key(), Some("mode"));
    assert!(
        err.to_string().contains("peercache-storage-server"),
        "{err}"
    );
}

#[test]
fn storage_modes_and_role_are_refused() {
    for (key, value) in [
        ("mode", "hybrid"),
        ("mode", "centralized"),
        ("role", "storage"),
    ] {
        let err = assert_rejected(json!({ key: value }), key);
        let text = err.to_string();
        assert!(text.contains(&format!("got \"{value}\"")), "{text}");
        assert!(
            text.contains("this build does not include") || text.contains("not part of this build"),
            "{text}"
        );
    }
    assert_eq!(
        parse_with(json!({"role": "inference"})).unwrap().role,
        Role::Inference
    );
}

#[test]
fn seed_000_demo_config_parses() {
    let devs = "mlx5_bond_1,mlx5_bond_2,mlx5_bond_3,mlx5_bond_4,mlx5_bond_5,mlx5_bond_6,mlx5_bond_7,mlx5_bond_8";
    let text = format!(
        r#"{{"backend_name":"peercache","module_path":"peercache.store","class_name":"PeerCacheStore","discovery_addr":"10.1.0.1:31998","protocol":"rdma","device_names":"{devs}","local_hostname":"10.1.0.2","global_segment_size":"16gb","disk_path":"/data/peercache/","disk_size":"100gb"}}"#
    );
    let c = Config::from_json(&text).unwrap();
    assert_eq!(c.device_names.len(), 8);
    assert_eq!(c.device_names[7], "mlx5_bond_8");
    assert_eq!(c.rdma_devices(), c.device_names);
    assert_eq!(c.global_segment_size, 17_179_869_184);
    assert_eq!(c.local_hostname.as_deref(), Some("10.1.0.2"));
}

#[test]
fn seed_placeholder_is_accepted_with_a_warning() {
    let c = parse_with(json!({"discovery_addr": "NODE0_IP:31998"})).unwrap();
    assert_eq!(c.discovery_addr, vec![hp("NODE0_IP", 31998)]);
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("placeholder") && w.contains("NODE0_IP")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn discovery_addr_forms() {
    let list = parse_with(json!({"discovery_addr": ["10.0.0.1:1", "10.0.0.2"]})).unwrap();
    assert_eq!(
        list.discovery_addr,
        vec![hp("10.0.0.1", 1), hp("10.0.0.2", 31998)]
    );
    let seeds = parse_with(json!({"discovery_addr": "ip1:31998,ip2:31998"})).unwrap();
    assert_eq!(
        seeds.discovery_addr,
        vec![hp("ip1", 31998), hp("ip2", 31998)]
    );
    assert_eq!(seeds.discovery_head(), &hp("ip1", 31998));
    let v6 = parse_with(json!({"discovery_addr": "[fd00::1]:7000"})).unwrap();
    assert_eq!(v6.discovery_addr, vec![hp("fd00::1", 7000)]);
    assert_eq!(v6.discovery_addr[0].to_string(), "[fd00::1]:7000");
    let dup = parse_with(json!({"discovery_addr": "a:1,a:1"})).unwrap();
    assert!(
        dup.warnings.iter().any(|w| w.contains("more than once")),
        "{:?}",
        dup.warnings
    );
}

#[test]
fn sizes_bools_ints_and_durations_in_every_form() {
    let cases: &[(Value, u64)] = &[
        (json!(17_179_869_184u64), 17_179_869_184),
        (json!("16gb"), 17_179_869_184),
        (json!("512mb"), 512 << 20),
        (json!("1.5GiB"), 1_610_612_736),
        (json!("100 GB"), 100 << 30),
        (json!("4096"), 4096),
        (json!("64k"), 64 << 10),
        (json!(8.0e9), 8_000_000_000),
    ];
    for (value, bytes) in cases {
        let c = parse_with(json!({ "global_segment_size": value })).unwrap();
        assert_eq!(c.global_segment_size, *bytes, "{value}");
    }
    for (value, expected) in [
        (json!(true), true),
        (json!("yes"), true),
        (json!("ON"), true),
        (json!(1), true),
        (json!("1"), true),
        (json!(false), false),
        (json!("No"), false),
        (json!("off"), false),
        (json!(0), false),
        (json!("0"), false),
    ] {
        let c = parse_with(json!({ "metrics_dashboard": value })).unwrap();
        assert_eq!(c.metrics_dashboard, expected, "{value}");
    }
    let c = parse_with(json!({"vnodes": "320", "ib_port": "2", "rdma_port": "18515"})).unwrap();
    assert_eq!((c.vnodes, c.ib_port, c.rdma_port), (320, 2, 18515));
    let c = parse_with(json!({"heartbeat_interval": "1", "member_ttl": 4})).unwrap();
    assert_eq!((c.heartbeat_interval, c.member_ttl), (1.0, 4.0));
    let c = parse_with(json!({"heartbeat_interval": "500ms", "member_ttl": "2s"})).unwrap();
    assert_eq!((c.heartbeat_interval, c.member_ttl), (0.5, 2.0));
}

#[test]
fn auto_spellings() {
    let c = parse_with(json!({"local_hostname": "auto", "node_id": "AUTO", "local_rank": "auto"}))
        .unwrap();
    assert_eq!(
        (c.local_hostname, c.node_id, c.local_rank),
        (None, None, None)
    );
    let c =
        parse_with(json!({"local_hostname": "", "node_id": "", "extra_backend_tag": ""})).unwrap();
    assert_eq!(
        (c.local_hostname, c.node_id, c.extra_backend_tag),
        (None, None, None)
    );
    let c = parse_with(json!({"device_names": ""})).unwrap();
    assert!(c.device_names.is_empty());
}

#[test]
fn protocol_typo_message() {
    let err = assert_rejected(json!({"protocol": "rdmaa"}), "protocol");
    assert_eq!(
        err.to_string(),
        r#"extra_config key "protocol": got "rdmaa"; expected "rdma" or "tcp" (did you mean "rdma"?)"#
    );
    // Case and spaces are forgiven.
    assert_eq!(
        parse_with(json!({"protocol": " TCP "})).unwrap().protocol,
        Protocol::Tcp
    );
}

#[test]
fn bad_choices() {
    let err = assert_rejected(json!({"mode": "p2"}), "mode");
    assert!(
        err.to_string()
            .contains(r#""p2p", "hybrid" or "centralized""#),
        "{err}"
    );
    assert!(err.to_string().contains(r#"did you mean "p2p""#), "{err}");
    let err = assert_rejected(json!({"mode": "mesh"}), "mode");
    assert!(!err.to_string().contains("did you mean"), "{err}");
    assert_rejected(json!({"write_policy": "remote"}), "write_policy");
    let err = assert_rejected(json!({"role": "infrence"}), "role");
    assert!(
        err.to_string().contains(r#"did you mean "inference""#),
        "{err}"
    );
    assert_rejected(json!({"protocol": 1}), "protocol");
    assert_rejected(json!({"protocol": ["rdma"]}), "protocol");
}

#[test]
fn bad_sizes() {
    let err = assert_rejected(json!({"global_segment_size": "0"}), "global_segment_size");
    assert!(err.to_string().contains("non-zero"), "{err}");
    assert_rejected(json!({"global_segment_size": 0}), "global_segment_size");
    let err = assert_rejected(
        json!({"global_segment_size": ["8gb"]}),
        "global_segment_size",
    );
    assert!(err.to_string().contains("got a list [\"8gb\"]"), "{err}");
    assert_rejected(
        json!({"global_segment_size": "8 gigs"}),
        "global_segment_size",
    );
    let err = assert_rejected(
        json!({"global_segment_size": "8gbb"}),
        "global_segment_size",
    );
    assert!(err.to_string().contains("did you mean \"gb\""), "{err}");
    assert_rejected(json!({"global_segment_size": -1}), "global_segment_size");
    assert_rejected(json!({"global_segment_size": 1.5}), "global_segment_size");
    assert_rejected(json!({"global_segment_size": true}), "global_segment_size");
    assert_rejected(
        json!({"global_segment_size": {"gb": 8}}),
        "global_segment_size",
    );

    let err = assert_rejected(json!({"disk_size": 0}), "disk_size");
    assert!(err.to_string().contains("disk_enabled"), "{err}");
    assert_rejected(
        json!({"disk_size": "0gb", "disk_enabled": true}),
        "disk_size",
    );
    let c = parse_with(json!({"disk_size": 0, "disk_enabled": false})).unwrap();
    assert_eq!(c.disk_size, 0);
    assert_rejected(
        json!({"disk_size": "lots", "disk_enabled": false}),
        "disk_size",
    );
    assert_rejected(json!({"disk_path": ""}), "disk_path");
    assert!(parse_with(json!({"disk_path": "", "disk_enabled": false})).is_ok());

    assert_rejected(json!({"shard_io_memory": "32kb"}), "shard_io_memory");
    assert_rejected(json!({"shard_io_memory": "2gb"}), "shard_io_memory");
    assert_eq!(
        parse_with(json!({"shard_io_memory": "64kb"}))
            .unwrap()
            .shard_io_memory,
        65536
    );
}

#[test]
fn zero_pool_is_refused() {
    let err = assert_rejected(json!({"global_segment_size": 0}), "global_segment_size");
    assert!(err.to_string().contains("\"4gb\""), "{err}");
    let err = parse_with(json!({"global_segment_size": 8192, "tp_size": 4})).unwrap_err();
    assert_eq!(err.key(), Some("global_segment_size"));
    assert!(err.to_string().contains("\"tp_size\""), "{err}");
}

#[test]
fn bad_discovery_addr() {
    for bad in [
        json!(""),
        json!("   "),
        json!(","),
        json!("10.0.0.1:31998,"),
        json!("10.0.0.1:70000"),
        json!("10.0.0.1:0"),
        json!("10.0.0.1:abc"),
        json!("10.0.0.1:"),
        json!("http://10.0.0.1:31998"),
        json!("node a:31998"),
        json!("10.0.0.1/24"),
        json!(31998),
        json!([]),
        json!([1, 2]),
        json!({"host": "a"}),
    ] {
        assert_rejected(json!({ "discovery_addr": bad }), "discovery_addr");
    }
    let err = assert_rejected(
        json!({"discovery_addr": "http://10.0.0.1:31998"}),
        "discovery_addr",
    );
    assert!(err.to_string().contains("http://"), "{err}");
    let err = assert_rejected(
        json!({"discovery_addr": "10.0.0.1:99999"}),
        "discovery_addr",
    );
    assert!(err.to_string().contains("1 to 65535"), "{err}");
}

#[test]
fn missing_discovery_addr() {
    let err = Config::from_json("{}").unwrap_err();
    assert_eq!(err.key(), Some("discovery_addr"));
    assert!(matches!(err, ConfigError::Missing { .. }), "{err}");
    assert!(err.to_string().contains("required"), "{err}");
    let err = Config::from_json(r#"{"discovery_addr": null}"#).unwrap_err();
    assert_eq!(err.key(), Some("discovery_addr"));
    // A misspelt key is pointed out in the error.
    let err = Config::from_json(r#"{"dicovery_addr": "10.0.0.1"}"#).unwrap_err();
    assert!(err.to_string().contains("\"dicovery_addr\""), "{err}");
}

#[test]
fn bad_device_names() {
    let err = assert_rejected(
        json!({"device_names": "mlx5_0,mlx5_1,mlx5_0"}),
        "device_names",
    );
    assert!(
        err.to_string().contains("\"mlx5_0\" is listed twice"),
        "{err}"
    );
    assert_rejected(
        json!({"device_names": ["mlx5_0", "mlx5_0"]}),
        "device_names",
    );
    assert_rejected(json!({"device_names": ["mlx5_0", ""]}), "device_names");
    assert_rejected(json!({"device_names": "mlx5_0,,mlx5_1"}), "device_names");
    assert_rejected(json!({"device_names": "mlx5_0 mlx5_1"}), "device_names");
    assert_rejected(json!({"device_names": [1]}), "device_names");
    assert_rejected(json!({"device_names": 5}), "device_names");
    assert_rejected(json!({"device_name": "mlx5 0"}), "device_name");
    assert_rejected(json!({"device_name": 0}), "device_name");
    let c = parse_with(json!({"device_names": " mlx5_0 , mlx5_1 "})).unwrap();
    assert_eq!(c.device_names, vec!["mlx5_0", "mlx5_1"]);
}

#[test]
fn bad_integers_and_ports() {
    for (key, bad) in [
        ("ib_port", json!(0)),
        ("ib_port", json!(256)),
        ("gid_index", json!(-1)),
        ("gid_index", json!("three")),
        ("max_channels_per_peer", json!(0)),
        ("max_channels_per_peer", json!(1.5)),
        ("vnodes", json!(0)),
        ("vnodes", json!("0")),
        ("directory_replicas", json!(0)),
        ("max_masters", json!(0)),
        ("shards", json!(-1)),
        ("shards", json!(100_000)),
        ("local_rank", json!(-1)),
        ("tp_size", json!(0)),
        ("pp_size", json!(0)),
        ("pool_quarantine_ms", json!(-5)),
        ("pool_quarantine_ms", json!(3_600_000)),
        ("metrics_port", json!(70000)),
        ("metrics_port", json!(-1)),
        ("metrics_port", json!("http")),
        ("rdma_port", json!(65536)),
        ("control_port", json!(100_000)),
        ("control_port", json!([1])),
    ] {
        let err = assert_rejected(json!({ key: bad.clone() }), key);
        let got = value::describe(&bad);
        assert!(err.to_string().contains(&format!("got {got}")), "{err}");
    }
    let err = assert_rejected(json!({"metrics_port": 70000}), "metrics_port");
    assert!(err.to_string().contains("from 0 to 65535"), "{err}");
    assert_eq!(
        parse_with(json!({"metrics_port": 65535}))
            .unwrap()
            .metrics_port,
        65535
    );
}

#[test]
fn bad_bools_strings_and_hosts() {
    assert_rejected(json!({"disk_enabled": "maybe"}), "disk_enabled");
    assert_rejected(json!({"metrics_enabled": 2}), "metrics_enabled");
    assert_rejected(json!({"prefault_pool": []}), "prefault_pool");
    assert_rejected(json!({"batch_wait_spin_us": 10_001}), "batch_wait_spin_us");
    assert_rejected(json!({"request_timeout_ms": 5}), "request_timeout_ms");
    assert_rejected(json!({"request_timeout_ms": 600_001}), "request_timeout_ms");
    assert_rejected(
        json!({"directory_refresh_interval": -1}),
        "directory_refresh_interval",
    );
    assert_rejected(json!({"is_mla_model": "t"}), "is_mla_model");
    assert_rejected(json!({"require_rdma": "sure"}), "require_rdma");
    assert_rejected(json!({"model_name": 7}), "model_name");
    assert_rejected(json!({"backend_name": ["peercache"]}), "backend_name");
    assert_rejected(json!({"disk_path": false}), "disk_path");
    let err = assert_rejected(
        json!({"metrics_bind_host": "0.0.0.0:31997"}),
        "metrics_bind_host",
    );
    assert!(err.to_string().contains("without a port"), "{err}");
    assert_rejected(
        json!({"meta_bind_host": "http://0.0.0.0"}),
        "meta_bind_host",
    );
    assert_rejected(json!({"rdma_bind_host": ""}), "rdma_bind_host");
    assert_rejected(json!({"control_bind_host": "a b"}), "control_bind_host");
    assert_rejected(json!({"local_hostname": "my host"}), "local_hostname");
    assert_rejected(json!({"local_hostname": 10}), "local_hostname");
    assert_rejected(json!({"node_id": "a/b"}), "node_id");
    assert_rejected(json!({"node_id": ".."}), "node_id");
    assert_rejected(json!({"node_id": "x".repeat(129)}), "node_id");
}

#[test]
fn bad_durations() {
    assert_rejected(json!({"heartbeat_interval": 0}), "heartbeat_interval");
    assert_rejected(json!({"heartbeat_interval": -1}), "heartbeat_interval");
    assert_rejected(json!({"heartbeat_interval": "soon"}), "heartbeat_interval");
    assert_rejected(json!({"heartbeat_interval": [2]}), "heartbeat_interval");
    assert_rejected(json!({"member_ttl": "inf"}), "member_ttl");
    assert_rejected(json!({"member_ttl": 1e9}), "member_ttl");
    assert_rejected(
        json!({"directory_read_cache_ttl": -0.5}),
        "directory_read_cache_ttl",
    );
    assert_rejected(
        json!({"directory_read_cache_ttl": true}),
        "directory_read_cache_ttl",
    );
}

#[test]
fn cross_key_rules() {
    let err = assert_rejected(
        json!({"member_ttl": 2.0, "heartbeat_interval": 2.0}),
        "member_ttl",
    );
    assert!(err.to_string().contains("\"heartbeat_interval\""), "{err}");
    assert!(err.to_string().contains("must exceed"), "{err}");
    assert_rejected(json!({"member_ttl": 1.0}), "member_ttl");
    let err = assert_rejected(json!({"tp_rank": 2, "tp_size": 2}), "tp_rank");
    assert!(err.to_string().contains("less than tp_size (2)"), "{err}");
    assert_rejected(json!({"tp_rank": 1}), "tp_rank");
    assert_rejected(json!({"pp_rank": 1, "pp_size": 1}), "pp_rank");
    assert_rejected(
        json!({"require_rdma": true, "protocol": "tcp"}),
        "require_rdma",
    );
}

#[test]
fn top_level_must_be_an_object() {
    for text in ["[]", "\"discovery_addr\"", "42", "null", "true"] {
        let err = Config::from_json(text).unwrap_err();
        assert!(
            matches!(err, ConfigError::NotAnObject { .. }),
            "{text}: {err}"
        );
        assert!(err.to_string().contains("must be a JSON object"), "{err}");
        assert_eq!(err.key(), None);
    }
    for text in ["", "{", "{discovery_addr: 1}", "{'a': 1}"] {
        let err = Config::from_json(text).unwrap_err();
        assert!(matches!(err, ConfigError::Json { .. }), "{text}: {err}");
    }
}

#[test]
fn unknown_keys_warn_with_a_suggestion() {
    let c = parse_with(json!({"dicovery_addr": "x", "globl_segment_size": "1gb", "zzz_qqq": 1}))
        .unwrap();
    assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("\"dicovery_addr\"")
                && w.contains("did you mean \"discovery_addr\"?"))
    );
    assert!(c
        .warnings
        .iter()
        .any(|w| w.contains("\"globl_segment_size\"")
            && w.contains("did you mean \"global_segment_size\"?")));
    let unrelated = c
        .warnings
        .iter()
        .find(|w| w.contains("\"zzz_qqq\""))
        .unwrap();
    assert!(!unrelated.contains("did you mean"), "{unrelated}");
    // The misspelt key had no effect.
    assert_eq!(c.global_segment_size, 4 << 30);
}

#[test]
fn sglang_keys_are_accepted_silently() {
    let c = parse_with(json!({
        "interface_v1": 1,
        "prefetch_threshold": 256,
        "prefetch_timeout_base": 0.5,
        "prefetch_timeout_per_ki_token": 0.25,
        "prefetch_timeout_max": 30.0,
        "hicache_storage_pass_prefix_keys": true,
        "tp_lcm_size": 8
    }))
    .unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.sglang_passthrough.len(), SGLANG_KEYS.len());
    assert_eq!(c.sglang_passthrough["interface_v1"], json!(1));
    assert_eq!(c.sglang_passthrough["tp_lcm_size"], json!(8));
}

#[test]
fn ineffective_settings_warn() {
    for (key, value) in [
        ("rdma_port", json!(18515)),
        ("rdma_bind_host", json!("10.0.0.9")),
    ] {
        let c = parse_with(json!({ key: value })).unwrap();
        assert!(
            c.warnings
                .iter()
                .any(|w| w.contains(&format!("\"{key}\" has no effect"))),
            "{key}: {:?}",
            c.warnings
        );
    }
    assert!(parse_with(json!({"rdma_port": 0}))
        .unwrap()
        .warnings
        .is_empty());
    let c = parse_with(json!({"write_policy": "storage"})).unwrap();
    assert!(c
        .warnings
        .iter()
        .any(|w| w.contains("\"write_policy\"") && w.contains("hybrid")));
    let c = parse_with(json!({"device_name": "mlx5_9", "device_names": "mlx5_0,mlx5_1"})).unwrap();
    assert!(c
        .warnings
        .iter()
        .any(|w| w.contains("\"device_name\"") && w.contains("ignored")));
    assert_eq!(c.rdma_devices(), vec!["mlx5_0", "mlx5_1"]);
    let c = parse_with(json!({"heartbeat_interval": 2, "member_ttl": 3})).unwrap();
    assert!(
        c.warnings.iter().any(|w| w.contains("\"member_ttl\"")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn helpers() {
    let c = parse_with(json!({"global_segment_size": "16gb", "tp_size": 3, "tp_rank": 2})).unwrap();
    let expected = (17_179_869_184u64 / 3) / 4096 * 4096;
    assert_eq!(c.pool_bytes_per_rank(), expected);
    assert_eq!(c.pool_bytes_per_rank() % 4096, 0);
    assert!(c.pool_bytes_per_rank() * 3 <= c.global_segment_size);
    assert_eq!(c.local_rank(), 2);

    let odd = parse_with(json!({"global_segment_size": 10_000})).unwrap();
    assert_eq!(odd.pool_bytes_per_rank(), 8192);

    let single = parse_with(json!({"device_name": "mlx5_3"})).unwrap();
    assert_eq!(single.rdma_devices(), vec!["mlx5_3"]);

    assert_eq!(c.replicas_warning(5), None);
    assert_eq!(c.replicas_warning(2), None);
    assert_eq!(
        c.replicas_warning(1).as_deref(),
        Some("directory_replicas (2) exceeds live members (1): entries get 1 copies")
    );
}

#[test]
fn to_json_value_round_trips() {
    let original = parse_with(json!({
        "discovery_addr": "10.0.0.1:4000,[fd00::2]",
        "write_policy": "both",
        "global_segment_size": "1gb",
        "device_names": "mlx5_0,mlx5_1",
        "heartbeat_interval": 0.25,
        "member_ttl": 1,
        "local_rank": 1,
        "node_id": "n1",
        "interface_v1": 1,
        "disk_size": "1.5gb",
    }))
    .unwrap();
    let value = original.to_json_value();
    assert_eq!(
        value["discovery_addr"],
        json!(["10.0.0.1:4000", "[fd00::2]:31998"])
    );
    assert_eq!(value["write_policy"], json!("both"));
    assert_eq!(value["disk_size"], json!(1_610_612_736u64));
    assert_eq!(value["interface_v1"], json!(1));
    assert_eq!(value["local_hostname"], Value::Null);
    assert!(value.get("warnings").is_none());
    let again = Config::from_value(&value).unwrap();
    assert_eq!(again, original);

    // Every key appears in the output, and nothing else.
    let keys: BTreeSet<&str> = value
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected: BTreeSet<&str> = SEED_KEYS.iter().chain(PEERCACHE_KEYS).copied().collect();
    expected.insert("interface_v1");
    assert_eq!(keys, expected);

    let defaults = parse_with(json!({})).unwrap();
    assert_eq!(
        Config::from_value(&defaults.to_json_value()).unwrap(),
        defaults
    );
}

#[test]
fn key_lists_are_disjoint_and_all_read() {
    let all: Vec<&str> = SEED_KEYS
        .iter()
        .chain(PEERCACHE_KEYS)
        .chain(SGLANG_KEYS)
        .copied()
        .collect();
    let unique: BTreeSet<&str> = all.iter().copied().collect();
    assert_eq!(unique.len(), all.len(), "a key is listed twice");
    // Setting every key to its own default value yields no warnings and the defaults.
    let defaults = parse_with(json!({})).unwrap();
    let mut object = defaults.to_json_value();
    for key in SGLANG_KEYS {
        object[*key] = json!(1);
    }
    let c = Config::from_value(&object).unwrap();
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(c.sglang_passthrough.len(), SGLANG_KEYS.len());
}

#[test]
fn docs_list_every_key() {
    let docs = include_str!("../../../docs/configuration.md");
    for key in SEED_KEYS.iter().chain(PEERCACHE_KEYS).chain(SGLANG_KEYS) {
        assert!(
            docs.contains(&format!("`{key}`")),
            "docs/configuration.md does not mention `{key}`"
        );
    }
}

/// A configured node_id is made unique per TP / PP rank (every rank of an
/// SGLang server gets the same extra_config); a generated one is left to
/// the node.
#[test]
fn a_configured_node_id_gets_the_rank_of_its_process() {
    let id = |extra: &str| {
        Config::from_json(&format!(r#"{{"discovery_addr":"10.0.0.1:31998"{extra}}}"#))
            .unwrap()
            .rank_node_id()
    };
    assert_eq!(id(""), None);
    assert_eq!(id(r#","node_id":"auto","tp_rank":3,"tp_size":8"#), None);
    assert_eq!(id(r#","node_id":"n1""#).as_deref(), Some("n1"));
    assert_eq!(
        id(r#","node_id":"n1","tp_rank":3,"tp_size":8"#).as_deref(),
        Some("n1-tp3")
    );
    assert_eq!(
        id(r#","node_id":"n1","pp_rank":1,"pp_size":2"#).as_deref(),
        Some("n1-pp1")
    );
    assert_eq!(
        id(r#","node_id":"n1","tp_rank":0,"tp_size":2,"pp_rank":1,"pp_size":2"#).as_deref(),
        Some("n1-tp0-pp1")
    );
    // The suffix must still fit discovery's limit on ids.
    let long = "n".repeat(126);
    let err = Config::from_json(&format!(
        r#"{{"discovery_addr":"10.0.0.1:31998","node_id":"{long}","tp_rank":3,"tp_size":8}}"#
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("node_id") && err.contains("shorten node_id"),
        "{err}"
    );
}
