//! Rails: one opened RDMA device each, with its MRs and its channels.
//!
//! A rail is one entry of `device_names` (or the single `device_name`, or
//! the first active device). With one shard per NIC (the default when NICs
//! are configured), each shard owns the rail of the NIC on its NUMA node, so
//! its READs land in memory local to both the core and the NIC. When a shard
//! owns several rails, a batch is striped over them by index: page i of a
//! batch goes to rail `i mod rails`. Rails pair by index across nodes (local
//! rail r reads from the peer's rail r), which is why every node of a cluster
//! lists its NICs in the same order (seed 000).

use super::channel::{ChannelPool, ChannelSizes};
use super::registration::{GpuBuffer, RegistrationError, Registry};
use super::verbs::{MrKeys, Verbs, VerbsError, VerbsProvider};
use crate::store::ShardStats;
use std::hash::Hash;
use std::sync::Arc;

/// One rail.
pub struct Rail<V: Verbs, P> {
    /// Position in the node's device list (pairs with the peer's rail of the
    /// same index).
    pub index: usize,
    /// Channels to peers. Declared before `registry` and `device` so QPs are
    /// destroyed before the MRs and the protection domain they use.
    pub channels: ChannelPool<V, P>,
    /// MRs of this rail.
    pub registry: Registry<V>,
    /// The opened device.
    pub device: V,
}

impl<V: Verbs, P> std::fmt::Debug for Rail<V, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rail")
            .field("index", &self.index)
            .field("device", &self.device.name())
            .finish()
    }
}

/// Where a peer's published pool is on one of its rails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RemotePool {
    /// Address of the pool's first byte in the peer's address space.
    pub addr: u64,
    /// The rkey of the pool MR on that rail.
    pub rkey: u32,
}

impl From<MrKeys> for RemotePool {
    fn from(k: MrKeys) -> Self {
        RemotePool {
            addr: k.addr,
            rkey: k.rkey,
        }
    }
}

/// The rails a shard reads through.
pub struct Rails<V: Verbs, P> {
    rails: Vec<Rail<V, P>>,
    stats: Arc<ShardStats>,
}

impl<V: Verbs, P> std::fmt::Debug for Rails<V, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.rails.iter()).finish()
    }
}

/// Opening a rail failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rail {index} ({device}): {source}")]
pub struct RailError {
    /// Rail position.
    pub index: usize,
    /// Device asked for (`first active` when unnamed).
    pub device: String,
    /// The verbs error.
    pub source: VerbsError,
}

impl<V: Verbs, P: Clone + Eq + Hash> Rails<V, P> {
    /// Opens one rail per name in `names` (or the first active device when
    /// `names` is empty) and sets the `rdma_rails` gauge.
    pub fn open<Pr: VerbsProvider<Device = V>>(
        provider: &Pr,
        names: &[String],
        port: u8,
        gid_index: u8,
        max_channels_per_peer: usize,
        sizes: ChannelSizes,
        stats: Arc<ShardStats>,
    ) -> Result<Self, RailError> {
        let wanted: Vec<Option<&str>> = if names.is_empty() {
            vec![None]
        } else {
            names.iter().map(|n| Some(n.as_str())).collect()
        };
        let mut devices = Vec::with_capacity(wanted.len());
        for (index, name) in wanted.into_iter().enumerate() {
            let dev = provider
                .open(name, port, gid_index)
                .map_err(|source| RailError {
                    index,
                    device: name.unwrap_or("first active").to_owned(),
                    source,
                })?;
            devices.push(dev);
        }
        Ok(Self::from_devices(
            devices,
            max_channels_per_peer,
            sizes,
            stats,
        ))
    }

    /// Rails over already opened devices, in order.
    pub fn from_devices(
        devices: Vec<V>,
        max_channels_per_peer: usize,
        sizes: ChannelSizes,
        stats: Arc<ShardStats>,
    ) -> Self {
        let rails: Vec<Rail<V, P>> = devices
            .into_iter()
            .enumerate()
            .map(|(index, device)| Rail {
                index,
                channels: ChannelPool::new(index, max_channels_per_peer, sizes, Arc::clone(&stats)),
                registry: Registry::new(Arc::clone(&stats)),
                device,
            })
            .collect();
        ShardStats::set(&stats.rdma_rails, rails.len() as u64);
        Self { rails, stats }
    }

    /// Closes every rail (channels, then MRs, then the device) and sets the
    /// `rdma_rails` gauge to 0.
    pub fn close(&mut self) {
        self.rails.clear();
        ShardStats::set(&self.stats.rdma_rails, 0);
    }

    /// Number of rails.
    pub fn len(&self) -> usize {
        self.rails.len()
    }

    /// Whether there is no rail.
    pub fn is_empty(&self) -> bool {
        self.rails.is_empty()
    }

    /// Rail `i`.
    pub fn rail(&self, i: usize) -> &Rail<V, P> {
        &self.rails[i]
    }

    /// Rail `i`, mutably.
    pub fn rail_mut(&mut self, i: usize) -> &mut Rail<V, P> {
        &mut self.rails[i]
    }

    /// The rail page `index` of a batch uses when the peer has
    /// `remote_rails` rails: striping by index over the rails both ends have.
    pub fn stripe(&self, index: usize, remote_rails: usize) -> Option<usize> {
        let n = self.rails.len().min(remote_rails);
        (n > 0).then(|| index % n)
    }

    /// Registers the published pool on every rail (REMOTE_READ only), once;
    /// returns what peers need per rail.
    ///
    /// # Safety
    /// The pool must stay mapped for the life of the rails.
    pub unsafe fn register_pool(
        &mut self,
        addr: *mut u8,
        len: usize,
    ) -> Result<Vec<RemotePool>, RegistrationError> {
        let mut out = Vec::with_capacity(self.rails.len());
        for rail in &mut self.rails {
            if let Some(k) = rail.registry.pool_keys() {
                out.push(k.into());
                continue;
            }
            out.push(rail.registry.register_pool(&rail.device, addr, len)?.into());
        }
        Ok(out)
    }

    /// Registers SGLang's host buffer on every rail (LOCAL_WRITE only).
    ///
    /// # Safety
    /// The buffer must stay mapped for the life of the rails.
    pub unsafe fn register_host_buffer(
        &mut self,
        addr: *mut u8,
        len: usize,
    ) -> Result<(), RegistrationError> {
        for rail in &mut self.rails {
            rail.registry
                .register_host_buffer(&rail.device, addr, len)?;
        }
        Ok(())
    }

    /// Registers a GPU buffer on every rail (LOCAL_WRITE only).
    pub fn register_gpu_buffer(&mut self, gpu: GpuBuffer) -> Result<(), RegistrationError> {
        for rail in &mut self.rails {
            rail.registry.register_gpu_buffer(&rail.device, gpu)?;
        }
        Ok(())
    }
}
