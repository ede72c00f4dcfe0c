//! NUMA nodes and the CPUs of each one that this process may run on.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use hwlocality::cpu::binding::CpuBindingFlags;
use hwlocality::cpu::cpuset::CpuSet;
use hwlocality::object::types::ObjectType;
use tracing::{debug, warn};

/// The NUMA nodes of this machine and, for each, the CPUs this process may use.
///
/// Node ids are NUMA node OS indexes (what `numactl --membind` and
/// `/sys/devices/system/node/nodeN` use). CPU ids are Linux CPU numbers (hwloc PU
/// OS indexes, what `taskset` and `sched_setaffinity` take).
///
/// Invariants, established by every constructor: at least one node; every node
/// has at least one CPU; a CPU belongs to exactly one node; nodes are sorted by
/// id. A NUMA node without a usable CPU (memory-only nodes such as CXL, HBM or GPU
/// memory, or a node outside this process's cgroup) is left out: no shard can run
/// there.
///
/// The CPUs of a node are kept in *placement order*, the order in which
/// [`crate::choose_cpus`] hands them out. [`Topology::detect`] puts one hardware
/// thread of every physical core first and the SMT siblings after them, so that
/// shards busy-polling on the same node do not share a core until they must;
/// [`Topology::from_nodes`] keeps the order it is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// NUMA node ids, ascending.
    nodes: Vec<usize>,
    /// `cpus_by_node[i]`: CPUs of `nodes[i]` in placement order; never empty.
    cpus_by_node: Vec<Vec<usize>>,
    /// Every CPU: node by node, in placement order within a node.
    cpus_all: Vec<usize>,
}

/// Why [`Topology::from_nodes`] rejected a node list.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// No node has a CPU, so there is nowhere to run a shard.
    #[error("no NUMA node has a CPU: give at least one node with at least one CPU")]
    NoCpus,
    /// The same node id appears twice.
    #[error("NUMA node {node} is listed twice: list each node once with all of its CPUs")]
    DuplicateNode {
        /// The repeated node id.
        node: usize,
    },
    /// The same CPU id appears twice (in one node or in two).
    #[error(
        "CPU {cpu} is listed in NUMA node {first_node} and again in node {second_node}: \
         a CPU belongs to exactly one node, list it once"
    )]
    DuplicateCpu {
        /// The repeated CPU id.
        cpu: usize,
        /// The node where the CPU was first listed.
        first_node: usize,
        /// The node where it was listed again.
        second_node: usize,
    },
}

/// Set once the "hwloc gave no usable topology" warning has been logged, so that a
/// process calling [`Topology::detect`] repeatedly logs it once.
static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

impl Topology {
    /// Detects the NUMA nodes of this machine and the CPUs this process may use.
    ///
    /// "May use" means allowed by the process's cgroup and present in the calling
    /// thread's affinity mask, so a rank started under `taskset` or
    /// `numactl --cpunodebind` keeps to the CPUs it was given. Call this before
    /// pinning the calling thread: once pinned, its mask is a single CPU.
    ///
    /// When hwloc cannot load a topology or finds no usable CPU, this logs a
    /// warning (once per process) and returns one node, id 0, holding the CPUs of
    /// the calling thread's affinity mask, or `0..available_parallelism` when
    /// even that is unreadable. It never panics.
    pub fn detect() -> Topology {
        let Some(hwloc) = crate::hwloc::topology() else {
            // hwloc::topology() already warned, once.
            return Self::from_affinity();
        };
        match Self::from_hwloc(hwloc) {
            Ok(topology) => {
                debug!(%topology, "NUMA topology from hwloc");
                topology
            }
            Err(reason) => {
                if !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
                    warn!(
                        %reason,
                        "hwloc gave no usable NUMA topology: shards are placed on the \
                         CPUs of this process's affinity mask as one NUMA node"
                    );
                }
                Self::from_affinity()
            }
        }
    }

    /// Builds a topology from `(node id, CPU ids)` pairs, for tests and for
    /// callers that know the machine better than hwloc.
    ///
    /// Nodes may come in any order (they are sorted by id); the CPUs of a node are
    /// kept in the order given, which is the order placement hands them out. Nodes
    /// with no CPU are left out.
    ///
    /// # Errors
    ///
    /// [`TopologyError`] when a node or a CPU is listed twice, or when no node has
    /// a CPU.
    pub fn from_nodes(nodes: Vec<(usize, Vec<usize>)>) -> Result<Topology, TopologyError> {
        let mut nodes = nodes;
        nodes.sort_by_key(|(node, _)| *node);

        let mut node_of_cpu: HashMap<usize, usize> = HashMap::new();
        let mut node_previous: Option<usize> = None;
        let mut topology = Topology {
            nodes: Vec::with_capacity(nodes.len()),
            cpus_by_node: Vec::with_capacity(nodes.len()),
            cpus_all: Vec::new(),
        };
        for (node, cpus) in nodes {
            // Sorted, so a repeated node id sits next to its first occurrence.
            if node_previous == Some(node) {
                return Err(TopologyError::DuplicateNode { node });
            }
            node_previous = Some(node);

            for &cpu in &cpus {
                if let Some(first_node) = node_of_cpu.insert(cpu, node) {
                    return Err(TopologyError::DuplicateCpu {
                        cpu,
                        first_node,
                        second_node: node,
                    });
                }
            }
            if cpus.is_empty() {
                debug!(
                    node,
                    "NUMA node has no usable CPU: left out of the topology"
                );
                continue;
            }
            topology.cpus_all.extend_from_slice(&cpus);
            topology.nodes.push(node);
            topology.cpus_by_node.push(cpus);
        }
        if topology.nodes.is_empty() {
            return Err(TopologyError::NoCpus);
        }
        topology.assert_invariants();
        Ok(topology)
    }

    /// NUMA node ids, ascending; never empty.
    pub fn numa_nodes(&self) -> &[usize] {
        &self.nodes
    }

    /// CPUs of `node` in placement order, or `None` when the topology has no such
    /// node (absent, or without a usable CPU).
    pub fn cpus_of(&self, node: usize) -> Option<&[usize]> {
        let index = self.nodes.binary_search(&node).ok()?;
        Some(&self.cpus_by_node[index])
    }

    /// The node `cpu` belongs to, or `None` when the CPU is not in the topology.
    pub fn node_of_cpu(&self, cpu: usize) -> Option<usize> {
        self.nodes
            .iter()
            .zip(&self.cpus_by_node)
            .find(|(_, cpus)| cpus.contains(&cpu))
            .map(|(&node, _)| node)
    }

    /// Every CPU, node by node (ascending node id), each node's in placement
    /// order; never empty.
    pub fn all_cpus(&self) -> &[usize] {
        &self.cpus_all
    }

    /// True when there is one NUMA node: placement and memory binding then have
    /// nothing to choose.
    pub fn is_single_node(&self) -> bool {
        self.nodes.len() == 1
    }

    /// Each node with its CPUs, ascending node id.
    pub(crate) fn nodes_and_cpus(&self) -> impl Iterator<Item = (usize, &[usize])> {
        self.nodes
            .iter()
            .zip(&self.cpus_by_node)
            .map(|(&node, cpus)| (node, cpus.as_slice()))
    }

    /// Reads hwloc's view: every NUMA node with the CPUs this process may use.
    fn from_hwloc(hwloc: &hwlocality::Topology) -> Result<Topology, String> {
        let mut cpus_usable: CpuSet = hwloc.allowed_cpuset().clone_target();
        match hwloc.cpu_binding(CpuBindingFlags::THREAD) {
            // An affinity mask disjoint from the allowed CPUs would leave nothing;
            // the cgroup's answer is then the better one.
            Ok(binding) if binding.intersects(&cpus_usable) => cpus_usable &= binding,
            Ok(binding) => debug!(
                %binding,
                allowed = %cpus_usable,
                "thread affinity mask has no allowed CPU: ignored"
            ),
            Err(error) => debug!(%error, "thread affinity mask unreadable: ignored"),
        }

        // SMT rank of each PU inside its core: 0 for the first hardware thread,
        // 1 for its sibling, and so on. PUs without a core object keep rank 0.
        let mut smt_rank_of_cpu: HashMap<usize, usize> = HashMap::new();
        for core in hwloc.objects_with_type(ObjectType::Core) {
            if let Some(cpuset) = core.cpuset() {
                for (smt_rank, pu) in cpuset.iter_set().enumerate() {
                    smt_rank_of_cpu.insert(usize::from(pu), smt_rank);
                }
            }
        }

        let mut nodes: Vec<(usize, CpuSet)> = hwloc
            .objects_with_type(ObjectType::NUMANode)
            .filter_map(|node| Some((node.os_index()?, node.cpuset()?.clone_target())))
            .collect();
        nodes.sort_by_key(|(node, _)| *node);

        // Several NUMA nodes can share one cpuset (DRAM plus HBM or CXL memory
        // behind the same package). A CPU goes to the lowest-numbered node that
        // covers it, which on Linux is the DRAM node; the others end up without
        // CPUs and are left out.
        let mut cpus_taken = CpuSet::new();
        let mut nodes_with_cpus: Vec<(usize, Vec<usize>)> = Vec::with_capacity(nodes.len());
        for (node, cpuset) in nodes {
            let cpuset_usable = (cpuset & &cpus_usable) - &cpus_taken;
            cpus_taken |= &cpuset_usable;
            let mut cpus: Vec<usize> = cpuset_usable.iter_set().map(usize::from).collect();
            cpus.sort_by_key(|cpu| (smt_rank_of_cpu.get(cpu).copied().unwrap_or(0), *cpu));
            nodes_with_cpus.push((node, cpus));
        }
        Topology::from_nodes(nodes_with_cpus).map_err(|error| error.to_string())
    }

    /// One node, id 0, holding the calling thread's affinity mask; the fallback
    /// when hwloc is of no help. Infallible: it always yields at least CPU 0.
    fn from_affinity() -> Topology {
        let cpus_affinity: Vec<usize> = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|core| core.id)
            .collect();
        // get_core_ids lists set bits of the mask in ascending order, and the
        // range below is ascending too: no duplicates either way.
        let cpus = if cpus_affinity.is_empty() {
            let cpu_count = std::thread::available_parallelism().map_or(1, usize::from);
            (0..cpu_count).collect()
        } else {
            cpus_affinity
        };
        let topology = Topology {
            nodes: vec![0],
            cpus_by_node: vec![cpus.clone()],
            cpus_all: cpus,
        };
        topology.assert_invariants();
        debug!(%topology, "NUMA topology from the affinity mask");
        topology
    }

    fn assert_invariants(&self) {
        debug_assert!(!self.nodes.is_empty());
        debug_assert_eq!(self.nodes.len(), self.cpus_by_node.len());
        debug_assert!(self.nodes.windows(2).all(|pair| pair[0] < pair[1]));
        debug_assert!(self.cpus_by_node.iter().all(|cpus| !cpus.is_empty()));
        debug_assert_eq!(
            self.cpus_all.len(),
            self.cpus_by_node.iter().map(Vec::len).sum::<usize>()
        );
    }
}

/// One line for logs: `node 0: cpus 0-7; node 1: cpus 8-15`.
///
/// Runs of consecutive CPU ids are folded into `a-b`; the placement order is
/// kept, so an SMT-ordered node reads `0-3,8-11`, not a sorted list.
impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, (node, cpus)) in self.nodes.iter().zip(&self.cpus_by_node).enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "node {node}: cpus ")?;
            let mut run_start = 0;
            while run_start < cpus.len() {
                let mut run_end = run_start;
                while run_end + 1 < cpus.len() && cpus[run_end + 1] == cpus[run_end] + 1 {
                    run_end += 1;
                }
                if run_start > 0 {
                    f.write_str(",")?;
                }
                if run_end == run_start {
                    write!(f, "{}", cpus[run_start])?;
                } else {
                    write!(f, "{}-{}", cpus[run_start], cpus[run_end])?;
                }
                run_start = run_end + 1;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn affinity_cpus() -> HashSet<usize> {
        core_affinity::get_core_ids()
            .expect("sched_getaffinity works on Linux")
            .into_iter()
            .map(|core| core.id)
            .collect()
    }

    #[test]
    fn from_nodes_sorts_nodes_and_keeps_cpu_order() {
        let topology =
            Topology::from_nodes(vec![(1, vec![12, 8, 9]), (0, vec![0, 4, 1]), (3, vec![])])
                .unwrap();
        assert_eq!(topology.numa_nodes(), &[0, 1]);
        assert_eq!(topology.cpus_of(0), Some(&[0, 4, 1][..]));
        assert_eq!(topology.cpus_of(1), Some(&[12, 8, 9][..]));
        assert_eq!(topology.cpus_of(3), None, "a node without CPUs is left out");
        assert_eq!(topology.cpus_of(2), None);
        assert_eq!(topology.all_cpus(), &[0, 4, 1, 12, 8, 9]);
        assert_eq!(topology.node_of_cpu(4), Some(0));
        assert_eq!(topology.node_of_cpu(9), Some(1));
        assert_eq!(topology.node_of_cpu(2), None);
        assert!(!topology.is_single_node());
        assert_eq!(
            topology.to_string(),
            "node 0: cpus 0,4,1; node 1: cpus 12,8-9"
        );
    }

    #[test]
    fn from_nodes_single_node() {
        let topology = Topology::from_nodes(vec![(0, vec![0, 1])]).unwrap();
        assert!(topology.is_single_node());
        assert_eq!(topology.to_string(), "node 0: cpus 0-1");
    }

    #[test]
    fn from_nodes_rejects_bad_lists() {
        assert_eq!(Topology::from_nodes(vec![]), Err(TopologyError::NoCpus));
        assert_eq!(
            Topology::from_nodes(vec![(0, vec![]), (1, vec![])]),
            Err(TopologyError::NoCpus)
        );
        assert_eq!(
            Topology::from_nodes(vec![(1, vec![0]), (1, vec![1])]),
            Err(TopologyError::DuplicateNode { node: 1 })
        );
        assert_eq!(
            Topology::from_nodes(vec![(0, vec![0, 1]), (1, vec![1, 2])]),
            Err(TopologyError::DuplicateCpu {
                cpu: 1,
                first_node: 0,
                second_node: 1
            })
        );
        assert_eq!(
            Topology::from_nodes(vec![(0, vec![3, 3])]),
            Err(TopologyError::DuplicateCpu {
                cpu: 3,
                first_node: 0,
                second_node: 0
            })
        );
    }

    #[test]
    fn detect_finds_usable_cpus_on_this_machine() {
        let topology = Topology::detect();
        assert!(!topology.numa_nodes().is_empty());
        assert!(!topology.all_cpus().is_empty());

        let cpus: HashSet<usize> = topology.all_cpus().iter().copied().collect();
        assert_eq!(
            cpus.len(),
            topology.all_cpus().len(),
            "a CPU is listed once"
        );
        assert!(
            cpus.is_subset(&affinity_cpus()),
            "detected CPUs {cpus:?} must be in the thread's affinity mask"
        );
        for &node in topology.numa_nodes() {
            for &cpu in topology.cpus_of(node).unwrap() {
                assert_eq!(topology.node_of_cpu(cpu), Some(node));
            }
        }
        // Detection is deterministic: a second call sees the same machine.
        assert_eq!(Topology::detect(), topology);
    }

    #[test]
    fn affinity_fallback_is_one_node_of_the_affinity_mask() {
        let topology = Topology::from_affinity();
        assert_eq!(topology.numa_nodes(), &[0]);
        let cpus: HashSet<usize> = topology.all_cpus().iter().copied().collect();
        assert_eq!(cpus, affinity_cpus());
    }

    /// A machine described in hwloc's synthetic syntax; binding calls on it do
    /// nothing, so the calling thread's mask does not filter its CPUs.
    fn synthetic(description: &str) -> hwlocality::Topology {
        hwlocality::Topology::builder()
            .from_synthetic(description)
            .expect("valid synthetic description")
            .build()
            .expect("synthetic topology builds")
    }

    #[test]
    fn hwloc_topology_puts_one_thread_per_core_first() {
        // Siblings numbered next to each other (0 and 1 share a core), as on many
        // AMD and Arm machines: placement order must not hand out 0 then 1.
        let topology = Topology::from_hwloc(&synthetic("pack:2 [numa] core:4 pu:2")).unwrap();
        assert_eq!(topology.numa_nodes(), &[0, 1]);
        assert_eq!(topology.cpus_of(0), Some(&[0, 2, 4, 6, 1, 3, 5, 7][..]));
        assert_eq!(
            topology.cpus_of(1),
            Some(&[8, 10, 12, 14, 9, 11, 13, 15][..])
        );
        assert_eq!(topology.node_of_cpu(9), Some(1));
    }

    #[test]
    fn hwloc_nodes_sharing_cpus_give_them_to_the_lowest_node() {
        // Two memory nodes per package (DRAM plus HBM or CXL): nodes 1 and 3
        // share the CPUs of nodes 0 and 2 and are left out.
        let hwloc = synthetic("pack:2 [numa] [numa] core:2 pu:1");
        assert_eq!(hwloc.nodeset().weight(), Some(4));
        let topology = Topology::from_hwloc(&hwloc).unwrap();
        assert_eq!(topology.numa_nodes(), &[0, 2]);
        assert_eq!(topology.to_string(), "node 0: cpus 0-1; node 2: cpus 2-3");
    }
}
