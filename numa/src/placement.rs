//! Which core each shard of a rank runs on; the policy is documented on
//! [`place_shards`].

use std::collections::HashSet;

use tracing::{debug, info, warn};

use crate::{Sysfs, Topology};

/// Most shards placed for one rank; longer requests are cut to this.
///
/// A shard is an OS thread with its own queues and memory: thousands per process
/// is a configuration error, and the bound keeps a typo from allocating without
/// limit.
pub const SHARDS_MAX: usize = 1024;

/// Where one shard runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardPlacement {
    /// Shard index in this rank, `0..shard_count`; with NICs, the index of the
    /// shard's NIC in the device list.
    pub shard: usize,
    /// The NIC this shard drives, as named in the device list; `None` without
    /// NICs.
    pub device: Option<String>,
    /// The NUMA node the shard runs on, which is where its memory belongs: the
    /// NIC's node when sysfs knows it, otherwise the node of `cpu`. `None` only
    /// when `cpu` is not in the topology, which [`place_shards`] never produces.
    pub numa_node: Option<usize>,
    /// The CPU (Linux CPU number) to pin the shard's thread to.
    pub cpu: usize,
}

/// Chooses the CPUs of `shard_count` shards of local rank `local_rank` from the
/// pool `cpus` (in placement order): `(local_rank * shard_count) mod cpus.len()`
/// is the index of the first, and the next ones follow, wrapping around the pool.
/// This is the rank-offset rule of [`place_shards`], usable on any pool.
///
/// The result has `min(shard_count, SHARDS_MAX)` entries, all distinct when
/// `cpus` are and `shard_count <= cpus.len()`; when `shard_count > cpus.len()`
/// cores repeat in pool order and a warning says so. It is empty when `cpus` is
/// empty. Pure: the same arguments always give the same answer, with no overflow
/// for any rank.
pub fn choose_cpus(cpus: &[usize], shard_count: usize, local_rank: usize) -> Vec<usize> {
    let cpu_count = cpus.len();
    if shard_count == 0 || cpu_count == 0 {
        return Vec::new();
    }
    let shard_count = if shard_count > SHARDS_MAX {
        warn!(
            shard_count,
            shard_count_max = SHARDS_MAX,
            "too many shards requested: placing the first {SHARDS_MAX}"
        );
        SHARDS_MAX
    } else {
        shard_count
    };

    // (r * n) mod m without overflow for any r: reduce both factors first and
    // multiply in u128, where (m - 1)^2 always fits.
    let start = ((local_rank % cpu_count) as u128 * (shard_count % cpu_count) as u128
        % cpu_count as u128) as usize;
    assert!(start < cpu_count);

    if shard_count > cpu_count {
        warn!(
            shard_count,
            cpu_count,
            local_rank,
            "more shards than cores: shards share cores, so each runs slower; \
             configure at most {cpu_count} shards here"
        );
    } else if !matches!(
        local_rank.checked_add(1).and_then(|ranks| ranks.checked_mul(shard_count)),
        Some(cores_needed) if cores_needed <= cpu_count
    ) {
        info!(
            shard_count,
            cpu_count,
            local_rank,
            "this rank's cores overlap those of a lower local rank that runs as many \
             shards on them"
        );
    }

    let chosen: Vec<usize> = (0..shard_count)
        .map(|shard| cpus[(start + shard) % cpu_count])
        .collect();
    assert_eq!(chosen.len(), shard_count);
    chosen
}

/// Places the shards of local rank `local_rank`: one shard per entry of
/// `device_names` on that NIC's NUMA node, or, with no device names,
/// `shards_without_nic` shards spread over the machine.
///
/// # Policy
///
/// A shard is a thread that busy-polls its NIC's completion queue and its
/// cross-core queues, so two shards on one core halve each other, and a shard far
/// from its NIC pays a socket hop on every completion. Placement therefore:
///
/// - puts the shard of each NIC on a core of the NIC's NUMA node; NICs of one
///   node get distinct cores of that node, in list order; shard `i` drives
///   `device_names[i]` and `shards_without_nic` is ignored;
/// - without NICs, spreads `shards_without_nic` shards over the cores of the
///   whole machine, node by node ([`Topology::all_cpus`] order);
/// - offsets by the local rank: every SGLang rank of a host runs its own
///   PeerCache process and none knows the others' choices, so rank `r` with `n`
///   shards on a pool of `m` cores starts at core index `(r * n) mod m` of that
///   pool and takes the next `n` cores, wrapping around ([`choose_cpus`]). Ranks
///   with the same shard count get disjoint cores as long as `(r + 1) * n <= m`:
///   8 ranks with one NIC each on a 2 x 8-core host, or 8 NIC-less ranks of 1
///   shard on any 8-core host, never share a core;
/// - when `n > m` the rank's own shards share cores (reused in pool order),
///   logged as one warning per pool; when only ranks overlap (`n <= m < (r + 1) * n`) it
///   is logged at info level;
/// - a NIC whose node sysfs does not know (no entry, or `-1`), or whose node
///   has no CPU this process may use, is placed like a NIC-less shard,
///   machine-wide, on the cores this rank's other NICs left free; that is a
///   warning on a multi-node machine, where it may cost a socket hop per
///   completion, and a debug line on a single-node one, where it costs nothing.
///
/// A node's pool is its CPUs in placement order (see [`Topology`]), so the first
/// shards of a node land on distinct physical cores before any SMT sibling is
/// used.
///
/// The result is ordered by shard index and has `min(count, SHARDS_MAX)`
/// entries; it is empty only when there is nothing to place (`device_names`
/// empty and `shards_without_nic == 0`). It never panics.
pub fn place_shards(
    topology: &Topology,
    sysfs: &Sysfs,
    device_names: &[String],
    shards_without_nic: usize,
    local_rank: usize,
) -> Vec<ShardPlacement> {
    let placements = if device_names.is_empty() {
        place_without_nic(topology, shards_without_nic, local_rank)
    } else {
        place_on_nics(topology, sysfs, device_names, local_rank)
    };
    for placement in &placements {
        debug!(
            local_rank,
            shard = placement.shard,
            device = placement.device.as_deref().unwrap_or("-"),
            numa_node = ?placement.numa_node,
            cpu = placement.cpu,
            "shard placed"
        );
    }
    placements
}

fn place_without_nic(
    topology: &Topology,
    shard_count: usize,
    local_rank: usize,
) -> Vec<ShardPlacement> {
    choose_cpus(topology.all_cpus(), shard_count, local_rank)
        .into_iter()
        .enumerate()
        .map(|(shard, cpu)| ShardPlacement {
            shard,
            device: None,
            numa_node: topology.node_of_cpu(cpu),
            cpu,
        })
        .collect()
}

fn place_on_nics(
    topology: &Topology,
    sysfs: &Sysfs,
    device_names: &[String],
    local_rank: usize,
) -> Vec<ShardPlacement> {
    let devices = if device_names.len() > SHARDS_MAX {
        warn!(
            device_count = device_names.len(),
            shard_count_max = SHARDS_MAX,
            "too many NICs listed: placing shards for the first {SHARDS_MAX}"
        );
        &device_names[..SHARDS_MAX]
    } else {
        device_names
    };
    let node_of_device: Vec<Option<usize>> = devices
        .iter()
        .map(|device| nic_node_in_topology(topology, sysfs, device))
        .collect();

    // (shard index, cpu) for every device, group by group.
    let mut cpu_of_shard: Vec<(usize, usize)> = Vec::with_capacity(devices.len());
    for (node, cpus_node) in topology.nodes_and_cpus() {
        let shards: Vec<usize> = (0..devices.len())
            .filter(|&shard| node_of_device[shard] == Some(node))
            .collect();
        let cpus = choose_cpus(cpus_node, shards.len(), local_rank);
        cpu_of_shard.extend(shards.into_iter().zip(cpus));
    }

    let shards_unknown: Vec<usize> = (0..devices.len())
        .filter(|&shard| node_of_device[shard].is_none())
        .collect();
    if !shards_unknown.is_empty() {
        // Keep this rank's shards apart: skip the cores its NICs with a known
        // node already took, unless that leaves nothing.
        let cpus_taken: HashSet<usize> = cpu_of_shard.iter().map(|&(_, cpu)| cpu).collect();
        let cpus_free: Vec<usize> = topology
            .all_cpus()
            .iter()
            .copied()
            .filter(|cpu| !cpus_taken.contains(cpu))
            .collect();
        let pool = if cpus_free.is_empty() {
            topology.all_cpus()
        } else {
            &cpus_free
        };
        let cpus = choose_cpus(pool, shards_unknown.len(), local_rank);
        cpu_of_shard.extend(shards_unknown.into_iter().zip(cpus));
    }

    // Every device is in exactly one group and every pool is non-empty
    // (a topology invariant), so every shard has its core.
    assert_eq!(cpu_of_shard.len(), devices.len());
    cpu_of_shard.sort_unstable_by_key(|&(shard, _)| shard);
    cpu_of_shard
        .into_iter()
        .map(|(shard, cpu)| ShardPlacement {
            shard,
            device: Some(devices[shard].clone()),
            numa_node: node_of_device[shard].or_else(|| topology.node_of_cpu(cpu)),
            cpu,
        })
        .collect()
}

/// The NUMA node of NIC `device` if sysfs knows it and this process may run on
/// one of its CPUs; `None` sends the NIC's shard to the machine-wide pool.
fn nic_node_in_topology(topology: &Topology, sysfs: &Sysfs, device: &str) -> Option<usize> {
    match sysfs.nic_numa_node(device) {
        Some(node) if topology.cpus_of(node).is_some() => Some(node),
        Some(node) => {
            warn!(
                device,
                numa_node = node,
                topology = %topology,
                "this process may not run on the NIC's NUMA node: its shard runs on \
                 another node, one socket hop from the NIC; allow the node's CPUs \
                 (taskset, cgroup cpuset) to avoid it"
            );
            None
        }
        None if topology.is_single_node() => {
            debug!(
                device,
                "NUMA node of NIC unknown; one NUMA node, so it does not matter"
            );
            None
        }
        None => {
            warn!(
                device,
                sysfs_root = %sysfs.root().display(),
                "NUMA node of NIC unknown (no class/infiniband or class/net entry, or \
                 numa_node is -1): its shard may run one socket hop from the NIC; \
                 check the device name"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{names, two_nodes_eight_cpus, FakeSysfs};

    fn cpus(placements: &[ShardPlacement]) -> Vec<usize> {
        placements.iter().map(|placement| placement.cpu).collect()
    }

    fn nic_shard(shard: usize, device: &str, numa_node: usize, cpu: usize) -> ShardPlacement {
        ShardPlacement {
            shard,
            device: Some(device.to_string()),
            numa_node: Some(numa_node),
            cpu,
        }
    }

    #[test]
    fn choose_cpus_offsets_by_rank() {
        let pool: Vec<usize> = (10..18).collect();
        assert_eq!(choose_cpus(&pool, 2, 0), [10, 11]);
        assert_eq!(choose_cpus(&pool, 2, 1), [12, 13]);
        assert_eq!(choose_cpus(&pool, 2, 3), [16, 17]);
        // Rank 4 wraps to the start of the pool: 4 * 2 mod 8 = 0.
        assert_eq!(choose_cpus(&pool, 2, 4), [10, 11]);
        // A start near the end wraps inside the rank: 3 * 3 mod 8 = 1, then 5 * 3 mod 8 = 7.
        assert_eq!(choose_cpus(&pool, 3, 3), [11, 12, 13]);
        assert_eq!(choose_cpus(&pool, 3, 5), [17, 10, 11]);
    }

    #[test]
    fn choose_cpus_wraps_when_shards_exceed_cores() {
        let pool = [4, 5, 6];
        assert_eq!(choose_cpus(&pool, 5, 0), [4, 5, 6, 4, 5]);
        // 1 * 5 mod 3 = 2.
        assert_eq!(choose_cpus(&pool, 5, 1), [6, 4, 5, 6, 4]);
    }

    #[test]
    fn choose_cpus_edge_cases() {
        assert!(choose_cpus(&[0, 1], 0, 0).is_empty());
        assert!(choose_cpus(&[], 4, 0).is_empty());
        // No overflow for absurd ranks; the start is (r mod m) * (n mod m) mod m.
        let pool: Vec<usize> = (0..7).collect();
        let expected_start = (usize::MAX % 7) * 3 % 7;
        assert_eq!(
            choose_cpus(&pool, 3, usize::MAX),
            [0, 1, 2].map(|i| pool[(expected_start + i) % 7])
        );
        // Requests above the bound are cut to it.
        let chosen = choose_cpus(&pool, usize::MAX, 1);
        assert_eq!(chosen.len(), SHARDS_MAX);
        assert!(chosen.iter().all(|cpu| pool.contains(cpu)));
    }

    #[test]
    fn eight_nics_rank_0_and_rank_1() {
        let topology = two_nodes_eight_cpus();
        let fake = FakeSysfs::two_nodes_eight_nics();
        let devices = names(&[
            "mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3", "mlx5_4", "mlx5_5", "mlx5_6", "mlx5_7",
        ]);

        // Rank 0: four NICs per node start at core index 0 of each node.
        let rank_0 = place_shards(&topology, &fake.sysfs(), &devices, 0, 0);
        assert_eq!(
            rank_0,
            [
                nic_shard(0, "mlx5_0", 0, 0),
                nic_shard(1, "mlx5_1", 0, 1),
                nic_shard(2, "mlx5_2", 0, 2),
                nic_shard(3, "mlx5_3", 0, 3),
                nic_shard(4, "mlx5_4", 1, 8),
                nic_shard(5, "mlx5_5", 1, 9),
                nic_shard(6, "mlx5_6", 1, 10),
                nic_shard(7, "mlx5_7", 1, 11),
            ]
        );

        // Rank 1: 1 * 4 mod 8 = 4, the other half of each node.
        let rank_1 = place_shards(&topology, &fake.sysfs(), &devices, 0, 1);
        assert_eq!(cpus(&rank_1), [4, 5, 6, 7, 12, 13, 14, 15]);
        assert_eq!(
            rank_1.iter().map(|p| p.numa_node).collect::<Vec<_>>(),
            [0, 0, 0, 0, 1, 1, 1, 1].map(Some)
        );
    }

    #[test]
    fn nics_in_any_order_keep_their_node() {
        let topology = two_nodes_eight_cpus();
        let fake = FakeSysfs::two_nodes_eight_nics();
        let devices = names(&["mlx5_6", "mlx5_1", "mlx5_7", "mlx5_0"]);
        let placements = place_shards(&topology, &fake.sysfs(), &devices, 0, 0);
        assert_eq!(
            placements,
            [
                nic_shard(0, "mlx5_6", 1, 8),
                nic_shard(1, "mlx5_1", 0, 0),
                nic_shard(2, "mlx5_7", 1, 9),
                nic_shard(3, "mlx5_0", 0, 1),
            ]
        );
    }

    #[test]
    fn eight_ranks_one_nic_each_get_distinct_cores() {
        let topology = two_nodes_eight_cpus();
        let fake = FakeSysfs::two_nodes_eight_nics();
        let mut cpus_seen = HashSet::new();
        for rank in 0..8 {
            let devices = names(&[&format!("mlx5_{rank}")]);
            let placements = place_shards(&topology, &fake.sysfs(), &devices, 0, rank);
            assert_eq!(placements.len(), 1);
            let placement = &placements[0];
            let node = if rank < 4 { 0 } else { 1 };
            assert_eq!(placement.numa_node, Some(node), "rank {rank}");
            assert_eq!(
                topology.node_of_cpu(placement.cpu),
                Some(node),
                "rank {rank}"
            );
            assert!(cpus_seen.insert(placement.cpu), "rank {rank} reuses a core");
        }
        assert_eq!(cpus_seen.len(), 8);
    }

    #[test]
    fn eight_ranks_without_nic_get_distinct_cores() {
        let topology = two_nodes_eight_cpus();
        let sysfs = FakeSysfs::new().sysfs();
        let mut cpus_all_ranks = Vec::new();
        for rank in 0..8 {
            let placements = place_shards(&topology, &sysfs, &[], 1, rank);
            assert_eq!(
                placements,
                [ShardPlacement {
                    shard: 0,
                    device: None,
                    numa_node: Some(0),
                    cpu: rank
                }]
            );
            cpus_all_ranks.extend(cpus(&placements));
        }
        assert_eq!(cpus_all_ranks, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn without_nic_spreads_over_nodes_with_rank_offset() {
        let topology = two_nodes_eight_cpus();
        let sysfs = FakeSysfs::new().sysfs();
        // Rank 1 of 6 shards: 1 * 6 mod 16 = 6, crossing from node 0 into node 1.
        let placements = place_shards(&topology, &sysfs, &[], 6, 1);
        assert_eq!(cpus(&placements), [6, 7, 8, 9, 10, 11]);
        assert_eq!(
            placements.iter().map(|p| p.numa_node).collect::<Vec<_>>(),
            [0, 0, 1, 1, 1, 1].map(Some)
        );
        assert_eq!(
            placements.iter().map(|p| p.shard).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4, 5]
        );
        assert!(place_shards(&topology, &sysfs, &[], 0, 1).is_empty());
    }

    #[test]
    fn wraps_around_when_shards_exceed_cores() {
        let topology = two_nodes_eight_cpus();
        let sysfs = FakeSysfs::new().sysfs();
        let placements = place_shards(&topology, &sysfs, &[], 20, 0);
        let expected: Vec<usize> = (0..16).chain(0..4).collect();
        assert_eq!(cpus(&placements), expected);

        // Five NICs on a node of two cores: cores are shared in node order.
        let small = Topology::from_nodes(vec![(0, vec![0, 1]), (1, vec![2, 3])]).unwrap();
        let fake = FakeSysfs::two_nodes_eight_nics();
        let devices = names(&["mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3", "mlx5_4"]);
        let placements = place_shards(&small, &fake.sysfs(), &devices, 0, 0);
        assert_eq!(cpus(&placements), [0, 1, 0, 1, 2]);
    }

    #[test]
    fn unknown_nic_goes_to_a_free_core_anywhere() {
        let topology = two_nodes_eight_cpus();
        let fake = FakeSysfs::two_nodes_eight_nics();
        let devices = names(&["mlx5_0", "eth_virt", "mlx5_missing", "mlx5_bad"]);
        let placements = place_shards(&topology, &fake.sysfs(), &devices, 0, 0);
        // mlx5_0 takes core 0 of node 0; the three unknown NICs take the next
        // free cores of the machine-wide pool, not core 0 again.
        assert_eq!(
            placements,
            [
                nic_shard(0, "mlx5_0", 0, 0),
                nic_shard(1, "eth_virt", 0, 1),
                nic_shard(2, "mlx5_missing", 0, 2),
                nic_shard(3, "mlx5_bad", 0, 3),
            ]
        );

        // Rank 1: mlx5_0 on core 1 of node 0 (1 * 1 mod 8); the unknown NICs
        // start at 1 * 3 mod 15 = 3 of the 15 cores left.
        let placements = place_shards(&topology, &fake.sysfs(), &devices, 0, 1);
        assert_eq!(cpus(&placements), [1, 4, 5, 6]);
    }

    #[test]
    fn nic_on_a_node_this_process_cannot_use() {
        // sysfs puts mlx5_4 on node 1; this process only has node 0.
        let topology = Topology::from_nodes(vec![(0, vec![0, 1, 2, 3])]).unwrap();
        let fake = FakeSysfs::two_nodes_eight_nics();
        let devices = names(&["mlx5_4", "mlx5_0"]);
        let placements = place_shards(&topology, &fake.sysfs(), &devices, 0, 0);
        assert_eq!(
            placements,
            [nic_shard(0, "mlx5_4", 0, 1), nic_shard(1, "mlx5_0", 0, 0)]
        );
    }

    #[test]
    fn detected_topology_places_shards_on_its_cpus() {
        let topology = Topology::detect();
        let placements = place_shards(&topology, &Sysfs::system(), &[], 2, 0);
        assert_eq!(placements.len(), 2);
        for placement in &placements {
            assert!(topology.all_cpus().contains(&placement.cpu));
            assert_eq!(placement.numa_node, topology.node_of_cpu(placement.cpu));
        }
    }
}
