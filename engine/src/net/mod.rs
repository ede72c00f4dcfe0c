//! Networking of a shard: channel pools to peers (and, as the cluster work
//! lands, the framed TCP server and client built on `crate::wire`).

pub mod channels;

pub use channels::{ChannelCounters, Channels, Lease, LeaseError};
