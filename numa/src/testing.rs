//! Test fixtures: a fake sysfs tree and a two-node topology.

use std::fs;

use tempfile::TempDir;

use crate::{Sysfs, Topology};

/// A sysfs tree in a temporary directory, removed when dropped.
pub(crate) struct FakeSysfs {
    dir: TempDir,
}

impl FakeSysfs {
    pub(crate) fn new() -> FakeSysfs {
        FakeSysfs {
            dir: tempfile::tempdir().expect("create a temporary directory"),
        }
    }

    /// Writes `class/<class>/<device>/device/numa_node` with `numa_node` as its
    /// content, exactly as given (the kernel ends it with a newline).
    pub(crate) fn nic(&self, class: &str, device: &str, numa_node: &str) -> &FakeSysfs {
        let dir = self
            .dir
            .path()
            .join("class")
            .join(class)
            .join(device)
            .join("device");
        fs::create_dir_all(&dir).expect("create fake device directory");
        fs::write(dir.join("numa_node"), numa_node).expect("write fake numa_node");
        self
    }

    pub(crate) fn sysfs(&self) -> Sysfs {
        Sysfs::new(self.dir.path())
    }

    /// An 8-NIC host with 2 NUMA nodes: mlx5_0..3 on node 0 and mlx5_4..7 on
    /// node 1, mlx5_6 and mlx5_7 only visible under class/net, plus `eth_virt`
    /// whose node is -1 and `mlx5_bad` whose file is garbage.
    pub(crate) fn two_nodes_eight_nics() -> FakeSysfs {
        let fake = FakeSysfs::new();
        for device in ["mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3"] {
            fake.nic("infiniband", device, "0\n");
        }
        for device in ["mlx5_4", "mlx5_5"] {
            fake.nic("infiniband", device, "1\n");
        }
        for device in ["mlx5_6", "mlx5_7"] {
            fake.nic("net", device, "1\n");
        }
        fake.nic("net", "eth_virt", "-1\n");
        fake.nic("infiniband", "mlx5_bad", "node one\n");
        fake
    }
}

/// Two NUMA nodes of 8 CPUs: node 0 holds CPUs 0..8, node 1 CPUs 8..16.
pub(crate) fn two_nodes_eight_cpus() -> Topology {
    Topology::from_nodes(vec![(0, (0..8).collect()), (1, (8..16).collect())])
        .expect("a valid two-node topology")
}

/// Device names as the engine passes them.
pub(crate) fn names(devices: &[&str]) -> Vec<String> {
    devices.iter().map(|device| device.to_string()).collect()
}
