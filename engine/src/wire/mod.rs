//! The on-the-wire format of every PeerCache TCP conversation: discovery,
//! directory and data.
//!
//! This module is pure encode/decode over byte buffers plus blocking
//! `std::io` helpers; sockets, executors and retries belong to the transports.
//!
//! # Frame layout
//!
//! ```text
//! offset  size  field          (all integers little-endian)
//!      0     4  magic          MAGIC ("PeCa")
//!      4     2  version        PROTOCOL_VERSION
//!      6     2  kind           Kind as u16
//!      8     8  request_id     chosen by the requester, echoed by the reply
//!     16     4  meta_len       bytes of the meta section   (<= MAX_META_BYTES)
//!     20     4  bulk_len       bytes of the bulk section   (<= MAX_BULK_BYTES)
//!     24     …  meta           rkyv archive of the message
//!      …     …  bulk           raw page bytes (DataReadReply only)
//! ```
//!
//! Why two sections: the meta section is small and structured, so it is an
//! rkyv archive that the receiver validates (bytecheck) and then reads in
//! place without deserializing. The bulk section is the pages themselves; it
//! travels outside rkyv so that a receiver can `read` it straight into the
//! destination buffers SGLang gave it, with no intermediate copy, after
//! [`BulkPlan`] has proven from the already-validated meta that every byte has
//! a destination of exactly the right size.
//!
//! Why a fixed header: the receiver learns both section lengths from 24 bytes
//! and checks them against the limits *before* allocating anything, so a
//! hostile or confused peer can never make us allocate more than
//! [`MAX_META_BYTES`] or expect more than [`MAX_BULK_BYTES`]. Every list in a
//! message is bounded by [`MAX_BATCH_ITEMS`] on both encode and decode.
//!
//! Request ids let one connection carry many outstanding requests
//! (pipelining): a peer answers in any order and the requester matches replies
//! by id. Any request may be answered with [`ErrorReply`].
//!
//! A frame error ([`WireError`]) other than a mismatch found by [`BulkPlan`]
//! leaves the byte stream out of sync: the connection must be closed. A
//! [`BulkPlan`] rejection happens before any bulk byte is read, so the caller
//! may [`discard_bulk`] and keep the connection.
//!
//! Nothing here panics on any input: every malformed frame is a `WireError`.

mod bulk;
mod codec;
mod error;
mod frame;
mod messages;

#[cfg(test)]
mod tests;

pub use bulk::{BulkDest, BulkPlan, BulkSegment};
pub(crate) use codec::meta_step_end;
pub use codec::{
    decode_meta, decode_owned, discard_bulk, encode_frame, read_frame, write_frame, WireMessage,
};
pub use error::{error_code, WireError};
pub use frame::{FrameHeader, Kind};
pub use messages::{
    node_hash, ArchivedDataRead, ArchivedDataReadReply, ArchivedDeregister, ArchivedDirDelete,
    ArchivedDirDeleteAck, ArchivedDirEntry, ArchivedDirGet, ArchivedDirGetReply, ArchivedDirPut,
    ArchivedDirPutAck, ArchivedEndpoint, ArchivedErrorReply, ArchivedHeartbeat, ArchivedHello,
    ArchivedHelloAck, ArchivedMemberInfo, ArchivedMembersReply, ArchivedMembersRequest,
    ArchivedPurpose, ArchivedReadItem, ArchivedRegister, DataPromote, DataPromoteReply, DataRead,
    DataReadReply, DataValidate, DataValidateReply, Deregister, DirDelete, DirDeleteAck, DirEntry,
    DirGet, DirGetReply, DirPut, DirPutAck, Endpoint, ErrorReply, Heartbeat, Hello, HelloAck,
    MemberInfo, MembersOutcome, MembersReply, MembersRequest, Message, Purpose, QpInfo,
    RdmaConnect, RdmaConnectReply, ReadItem, ReadStatus, Register,
};

/// Bytes of the fixed frame header.
pub const HEADER_BYTES: usize = 24;

/// First four bytes of every frame: `"PeCa"` read as a little-endian `u32`.
///
/// Lets a receiver reject a stray client (HTTP, another protocol, a
/// desynchronised stream) on its first 24 bytes with a clear message.
pub const MAGIC: u32 = u32::from_le_bytes(*b"PeCa");

/// The only protocol version this build speaks. Bump on any change to the
/// header or to an archived message layout; peers of another version are
/// refused with [`WireError::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u16 = 3;

/// Largest meta section accepted or produced (16 MiB).
///
/// The biggest legitimate meta is a directory batch of [`MAX_BATCH_ITEMS`]
/// entries (about 3.5 MiB archived), so this leaves room while still bounding
/// what one frame can make a receiver allocate.
pub const MAX_META_BYTES: u32 = 16 << 20;

/// Largest bulk section accepted or produced (1 GiB): a whole batch of pages
/// from one data node.
pub const MAX_BULK_BYTES: u32 = 1 << 30;

/// Most entries in any list of any message (keys, entries, items, members,
/// endpoints, statuses).
pub const MAX_BATCH_ITEMS: usize = 65_536;

/// Alignment the meta bytes must have when decoded in place (a power of
/// two). Receive into [`rkyv::util::AlignedVec`] (whose default alignment is
/// this) and it holds.
pub const META_ALIGN_BYTES: usize = 16;
