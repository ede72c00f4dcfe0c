//! Networking of a shard: framed connections over glommio streams and the
//! per-peer channel pools that reuse them.

pub mod channels;
pub mod deadline;
pub mod framed;

pub use channels::{ChannelCounters, Channels, Lease, LeaseError};
pub use framed::FramedConn;
