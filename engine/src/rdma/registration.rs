//! Memory registration rules of one rail.
//!
//! - The published pool is registered once per rail with REMOTE_READ only:
//!   peers may read it, nobody may write it remotely.
//! - SGLang's host buffer (the destination of READs) is registered with
//!   LOCAL_WRITE only, so no peer can ever read or write it.
//! - A destination outside every registered region (a caller that passed a
//!   buffer PeerCache was never told about) is registered on demand, rounded
//!   out to whole 4 KiB pages, and cached, so the next READ into the same
//!   buffer finds it. Each such miss is counted (`rdma_local_reg_misses`) and
//!   the cache size is a gauge (`rdma_lazy_local_mrs`): a growing value means
//!   the host pool was not registered up front. The cache is bounded; past the
//!   bound the page is a miss rather than an unbounded pile of pinned memory.
//!   Lazy MRs are never deregistered while the rail lives, because a READ
//!   still in flight may target them.
//! - GPU memory is registered through `ibv_reg_dmabuf_mr` when the buffer
//!   exposes a dmabuf fd, else as a plain MR of the device address (which
//!   needs nvidia-peermem); a failure names the GPUDirect prerequisite.

use super::verbs::{Access, MemoryRegion, MrKeys, Verbs, VerbsError};
use crate::store::ShardStats;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Granularity of lazy registrations.
const LAZY_ALIGN_BYTES: u64 = 4096;

/// Most lazily registered MRs per rail, merged-away ones included (each pins
/// memory and uses a NIC translation entry).
pub const MAX_LAZY_MRS: usize = 1024;

/// A registration failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    /// The verbs call failed.
    #[error(transparent)]
    Verbs(#[from] VerbsError),
    /// GPU memory could not be registered.
    #[error("cannot register GPU buffer of {len} bytes at {addr:#x}: {source}; GPUDirect RDMA needs a GPUDirect-capable NIC and driver, and either a dmabuf-capable stack (kernel >= 5.12, rdma-core >= 34, the GPU driver exporting dmabuf) or the nvidia-peermem module loaded")]
    Gpu {
        /// Device address.
        addr: u64,
        /// Length.
        len: usize,
        /// The verbs error.
        source: VerbsError,
    },
    /// The lazy cache is full.
    #[error("{MAX_LAZY_MRS} destinations were already registered on demand on this rail; register the host KV pool up front (register_mem_pool_host)")]
    LazyCacheFull,
}

/// A GPU buffer to register as a READ destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuBuffer {
    /// Device virtual address.
    pub addr: u64,
    /// Length in bytes.
    pub len: usize,
    /// dmabuf fd and offset of the buffer in it, when the allocator exports one.
    pub dmabuf: Option<(i32, u64)>,
}

/// The MRs of one rail.
pub struct Registry<V: Verbs> {
    pool: Option<V::Mr>,
    /// Host and GPU buffers registered up front, by start address.
    local: BTreeMap<u64, V::Mr>,
    /// Lazily registered destinations, by start address.
    lazy: BTreeMap<u64, V::Mr>,
    /// Lazy MRs replaced by a merged one; alive until the rail closes.
    retired: Vec<V::Mr>,
    stats: Arc<ShardStats>,
}

impl<V: Verbs> std::fmt::Debug for Registry<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("local", &self.local.len())
            .field("lazy", &self.lazy.len())
            .finish()
    }
}

/// The MR in `map` covering `[addr, addr + len)`, if any.
fn covering<M: MemoryRegion>(map: &BTreeMap<u64, M>, addr: u64, len: u64) -> Option<MrKeys> {
    // Only the region starting last at or below `addr` is looked at. Lazy
    // regions never overlap (they are merged); if a caller registers
    // overlapping buffers, a lookup may miss one and register lazily, which
    // costs an MR but is never wrong.
    let (_, mr) = map.range(..=addr).next_back()?;
    let k = mr.keys();
    (addr + len <= k.addr + k.len as u64).then_some(k)
}

impl<V: Verbs> Registry<V> {
    /// An empty registry counting into `stats`.
    pub fn new(stats: Arc<ShardStats>) -> Self {
        Self {
            pool: None,
            local: BTreeMap::new(),
            lazy: BTreeMap::new(),
            retired: Vec::new(),
            stats,
        }
    }

    /// Registers the published pool with REMOTE_READ only; returns the keys
    /// peers need (rkey, base address).
    ///
    /// # Safety
    /// The pool must stay mapped for the life of the registry.
    pub unsafe fn register_pool(
        &mut self,
        dev: &V,
        addr: *mut u8,
        len: usize,
    ) -> Result<MrKeys, RegistrationError> {
        let mr = dev.register(addr, len, Access::REMOTE_READ)?;
        let keys = mr.keys();
        self.pool = Some(mr);
        Ok(keys)
    }

    /// The pool's keys, once registered.
    pub fn pool_keys(&self) -> Option<MrKeys> {
        self.pool.as_ref().map(|m| m.keys())
    }

    /// Registers a host buffer as a READ destination: LOCAL_WRITE only, so
    /// peers can neither read nor write it.
    ///
    /// # Safety
    /// The buffer must stay mapped for the life of the registry.
    pub unsafe fn register_host_buffer(
        &mut self,
        dev: &V,
        addr: *mut u8,
        len: usize,
    ) -> Result<MrKeys, RegistrationError> {
        let mr = dev.register(addr, len, Access::LOCAL_WRITE)?;
        let keys = mr.keys();
        self.local.insert(keys.addr, mr);
        Ok(keys)
    }

    /// Registers GPU memory as a READ destination (LOCAL_WRITE only):
    /// dmabuf when the buffer has an fd, else a plain MR of the device
    /// address (nvidia-peermem).
    pub fn register_gpu_buffer(
        &mut self,
        dev: &V,
        gpu: GpuBuffer,
    ) -> Result<MrKeys, RegistrationError> {
        let result = match gpu.dmabuf {
            Some((fd, offset)) => {
                dev.register_dmabuf(fd, offset, gpu.len, gpu.addr, Access::LOCAL_WRITE)
            }
            // SAFETY: a device address is not host memory the process could
            // unmap under the NIC; the GPU driver (nvidia-peermem) pins it,
            // or the call fails.
            None => unsafe { dev.register(gpu.addr as *mut u8, gpu.len, Access::LOCAL_WRITE) },
        };
        let mr = result.map_err(|source| RegistrationError::Gpu {
            addr: gpu.addr,
            len: gpu.len,
            source,
        })?;
        let keys = mr.keys();
        self.local.insert(keys.addr, mr);
        Ok(keys)
    }

    /// The lkey for a READ into `[addr, addr + len)`: a registered buffer, or
    /// a lazy registration (counted, cached).
    ///
    /// # Safety
    /// The destination must be mapped memory that stays mapped for the life
    /// of the registry (the caller's batch contract, plus SGLang keeping its
    /// host pool for the process lifetime).
    pub unsafe fn lkey_for(
        &mut self,
        dev: &V,
        addr: u64,
        len: u64,
    ) -> Result<u32, RegistrationError> {
        if let Some(k) =
            covering(&self.local, addr, len).or_else(|| covering(&self.lazy, addr, len))
        {
            return Ok(k.lkey);
        }
        ShardStats::bump(&self.stats.rdma_local_reg_misses, 1);
        if self.lazy.len() + self.retired.len() >= MAX_LAZY_MRS {
            return Err(RegistrationError::LazyCacheFull);
        }
        let start = addr / LAZY_ALIGN_BYTES * LAZY_ALIGN_BYTES;
        let end = (addr + len).div_ceil(LAZY_ALIGN_BYTES) * LAZY_ALIGN_BYTES;
        // Merge with lazy regions this one overlaps or touches, so the map
        // keeps non-overlapping regions (one lookup suffices) and a stray
        // buffer read page by page ends up as one MR. The old MRs are
        // kept alive (not deregistered) until the new one exists, and then
        // dropped: a READ in flight into them holds the same pages, which the
        // new MR pins too.
        let overlapping: Vec<u64> = self
            .lazy
            .range(..=end)
            .filter(|(_, mr)| {
                let k = mr.keys();
                k.addr + k.len as u64 >= start
            })
            .map(|(&a, _)| a)
            .collect();
        let (mut lo, mut hi) = (start, end);
        for a in &overlapping {
            let k = self.lazy[a].keys();
            lo = lo.min(k.addr);
            hi = hi.max(k.addr + k.len as u64);
        }
        let mr = dev.register(lo as *mut u8, (hi - lo) as usize, Access::LOCAL_WRITE)?;
        let lkey = mr.keys().lkey;
        let mut retired = Vec::with_capacity(overlapping.len());
        for a in overlapping {
            retired.extend(self.lazy.remove(&a));
        }
        self.lazy.insert(lo, mr);
        // Retired MRs are kept until the registry drops: deregistering one
        // could fail a READ already posted with its lkey.
        self.retired.extend(retired);
        ShardStats::set(&self.stats.rdma_lazy_local_mrs, self.lazy.len() as u64);
        Ok(lkey)
    }

    /// Lazily registered regions now.
    pub fn lazy_count(&self) -> usize {
        self.lazy.len()
    }
}
