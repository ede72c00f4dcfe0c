//! The cluster as the data path sees it: membership views, and the discovery
//! runtime that keeps them current.

pub mod address;
pub mod discovery_io;
pub mod ports;
pub mod view;

pub use address::advertised_host;
pub use discovery_io::{run_standalone_meta, DiscoveryRuntime, MembershipCallback};
pub use view::{ClusterView, MemberRoute};

/// A random-enough u64 (node id suffixes, registry instances) without a
/// random-number crate: std's hasher keys are seeded from the OS per process.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    h.write_u128(nanos);
    h.write_u32(std::process::id());
    h.finish()
}
