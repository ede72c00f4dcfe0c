//! NIC to NUMA node, read from sysfs under an injectable root.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use tracing::debug;

/// Device classes searched, in order: RDMA devices by their verbs name
/// (`mlx5_0`), then network interfaces (`ens1f0np0`, or the netdev of a RoCE
/// port).
const DEVICE_CLASSES: [&str; 2] = ["infiniband", "net"];

/// Longest device name accepted. Interface names stop at 15 bytes (IFNAMSIZ) and
/// verbs device names at 63 (IBV_SYSFS_NAME_MAX); anything longer is not a device.
const DEVICE_NAME_BYTES_MAX: usize = 64;

/// Longest `numa_node` file read. The kernel writes at most 11 bytes ("-1\n" or a
/// node number); the cap keeps a bogus file from being read whole.
const NUMA_NODE_FILE_BYTES_MAX: u64 = 32;

/// A sysfs tree: `/sys` on a real machine, a temporary directory in tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sysfs {
    root: PathBuf,
}

impl Sysfs {
    /// A sysfs tree rooted at `root` (the directory that holds `class/`).
    pub fn new(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    /// This machine's sysfs, `/sys`.
    pub fn system() -> Sysfs {
        Sysfs::new("/sys")
    }

    /// The directory this tree is rooted at.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The NUMA node of NIC `device`, from
    /// `<root>/class/infiniband/<device>/device/numa_node`, or failing that from
    /// `<root>/class/net/<device>/device/numa_node`.
    ///
    /// `None` when neither file holds a node: the device does not exist, the file
    /// is unreadable or malformed, or the kernel wrote `-1` (no NUMA affinity
    /// known, common on single-socket machines and for virtual devices). A name
    /// that is not a plain file name (empty, `.`, `..`, with `/`) is refused, so a
    /// configured name cannot point outside the tree. Each miss is logged at
    /// debug level; callers decide whether an unknown node deserves a warning.
    pub fn nic_numa_node(&self, device: &str) -> Option<usize> {
        let name_is_plain = !device.is_empty()
            && device.len() <= DEVICE_NAME_BYTES_MAX
            && device != "."
            && device != ".."
            && !device.contains(['/', '\0']);
        if !name_is_plain {
            debug!(device, "not a device name: NUMA node unknown");
            return None;
        }

        for class in DEVICE_CLASSES {
            let path = self
                .root
                .join("class")
                .join(class)
                .join(device)
                .join("device")
                .join("numa_node");
            match read_numa_node(&path) {
                Ok(node) => return Some(node),
                Err(reason) => debug!(device, path = %path.display(), %reason, "no NUMA node here"),
            }
        }
        debug!(device, root = %self.root.display(), "NUMA node of device unknown");
        None
    }
}

/// Reads one `numa_node` file: a non-negative node id, or why there is none.
fn read_numa_node(path: &Path) -> Result<usize, String> {
    let mut text = String::new();
    File::open(path)
        .and_then(|file| {
            file.take(NUMA_NODE_FILE_BYTES_MAX)
                .read_to_string(&mut text)
        })
        .map_err(|error| error.to_string())?;
    let value: i64 = text
        .trim()
        .parse()
        .map_err(|_| format!("not a number: {:?}", text.trim()))?;
    // The kernel writes -1 (NUMA_NO_NODE) when firmware gave the device no node.
    usize::try_from(value).map_err(|_| format!("no NUMA affinity ({value})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::FakeSysfs;

    #[test]
    fn reads_infiniband_then_net() {
        let fake = FakeSysfs::two_nodes_eight_nics();
        let sysfs = fake.sysfs();
        for (device, node) in [
            ("mlx5_0", 0),
            ("mlx5_3", 0),
            ("mlx5_4", 1),
            ("mlx5_5", 1),
            // Only under class/net:
            ("mlx5_6", 1),
            ("mlx5_7", 1),
        ] {
            assert_eq!(sysfs.nic_numa_node(device), Some(node), "{device}");
        }
    }

    #[test]
    fn unknown_node_is_none() {
        let fake = FakeSysfs::two_nodes_eight_nics();
        let sysfs = fake.sysfs();
        assert_eq!(sysfs.nic_numa_node("eth_virt"), None, "numa_node is -1");
        assert_eq!(
            sysfs.nic_numa_node("mlx5_bad"),
            None,
            "numa_node is garbage"
        );
        assert_eq!(sysfs.nic_numa_node("mlx5_99"), None, "no such device");
    }

    #[test]
    fn infiniband_wins_over_net_and_minus_one_falls_through() {
        let fake = FakeSysfs::new();
        fake.nic("infiniband", "both", "3\n");
        fake.nic("net", "both", "5\n");
        fake.nic("infiniband", "ib_unknown", "-1\n");
        fake.nic("net", "ib_unknown", "2\n");
        fake.nic("net", "padded", "  7  \n");
        let sysfs = fake.sysfs();
        assert_eq!(sysfs.nic_numa_node("both"), Some(3));
        assert_eq!(sysfs.nic_numa_node("ib_unknown"), Some(2));
        assert_eq!(sysfs.nic_numa_node("padded"), Some(7));
    }

    #[test]
    fn refuses_names_that_leave_the_tree() {
        let fake = FakeSysfs::new();
        // A numa_node file reachable from class/infiniband/<name> only through "..".
        fake.nic("net", "escape", "1\n");
        let sysfs = fake.sysfs();
        assert_eq!(sysfs.nic_numa_node("../net/escape"), None);
        assert_eq!(sysfs.nic_numa_node(".."), None);
        assert_eq!(sysfs.nic_numa_node("."), None);
        assert_eq!(sysfs.nic_numa_node(""), None);
        assert_eq!(sysfs.nic_numa_node(&"x".repeat(65)), None);
        assert_eq!(sysfs.nic_numa_node("escape"), Some(1));
    }

    #[test]
    fn system_root_is_sys() {
        assert_eq!(Sysfs::system().root(), Path::new("/sys"));
        // This machine has no RDMA device; a name that exists nowhere is None.
        assert_eq!(Sysfs::system().nic_numa_node("peercache_no_such_nic"), None);
    }
}
