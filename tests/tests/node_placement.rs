//! Cross-crate: the node places its shards where the numa crate says, offset
//! by the local rank, and pins them on this machine.

use peercache_engine::{Config, Node};
use peercache_numa::Topology;

fn node(shards: usize, local_rank: usize) -> Node {
    let config = Config::from_json(&format!(
        r#"{{"discovery_addr":"127.0.0.1:31998","global_segment_size":"16mb","shards":{shards},
            "local_rank":{local_rank},"disk_enabled":false,"metrics_enabled":false}}"#
    ))
    .unwrap();
    Node::start(config).unwrap()
}

#[test]
fn shards_run_on_distinct_detected_cpus_and_are_pinned() {
    let topology = Topology::detect();
    let cpus = topology.all_cpus().to_vec();
    let shards = cpus.len().min(2);
    let n = node(shards, 0);
    let used: Vec<usize> = n
        .shard_contexts()
        .iter()
        .map(|c| c.site.cpu.unwrap())
        .collect();
    assert_eq!(used.len(), shards);
    for (i, cpu) in used.iter().enumerate() {
        assert!(
            cpus.contains(cpu),
            "shard on cpu {cpu} outside the topology {cpus:?}"
        );
        assert!(!used[..i].contains(cpu), "two shards on cpu {cpu}");
    }
    assert!(
        n.shard_contexts().iter().all(|c| c.pinned),
        "pinning works on this machine"
    );
    assert!(n
        .shard_contexts()
        .iter()
        .all(|c| c.site.numa_node.is_some()));
}

#[test]
fn local_rank_offsets_the_cores_of_co_located_ranks() {
    let cpus = Topology::detect().all_cpus().to_vec();
    let rank0 = node(1, 0);
    let rank1 = node(1, 1);
    let cpu0 = rank0.shard_contexts()[0].site.cpu.unwrap();
    let cpu1 = rank1.shard_contexts()[0].site.cpu.unwrap();
    assert_eq!(cpu0, cpus[0]);
    assert_eq!(cpu1, cpus[1 % cpus.len()]);
    if cpus.len() > 1 {
        assert_ne!(
            cpu0, cpu1,
            "two ranks with one shard each must not share a core"
        );
    }
    // Both nodes serve independently.
    rank0.batch_set_pages(&["k"], &[&[7u8; 4096]]).unwrap();
    assert_eq!(rank0.batch_exists(&["k"]).unwrap(), 1);
    assert_eq!(rank1.batch_exists(&["k"]).unwrap(), 0);
}
