//! What can go wrong with a frame, said so that a log line explains it.

use super::frame::Kind;
use super::{MAX_BATCH_ITEMS, META_ALIGN_BYTES, PROTOCOL_VERSION};

/// Error codes carried by [`ErrorReply`](super::ErrorReply).
///
/// Numbers are part of the protocol: never reuse one for another meaning.
pub mod error_code {
    /// The request frame was malformed (failed validation, bad lengths).
    pub const BAD_FRAME: u16 = 1;
    /// The requester speaks a protocol version this node does not.
    pub const UNSUPPORTED_VERSION: u16 = 2;
    /// The message kind is unknown, or not valid on this connection.
    pub const UNKNOWN_KIND: u16 = 3;
    /// A size or batch limit was exceeded.
    pub const TOO_LARGE: u16 = 4;
    /// The request was well formed but not acceptable (e.g. a data request on
    /// a discovery connection, a member with no endpoints).
    pub const BAD_REQUEST: u16 = 5;
    /// This node does not own the keys asked about (its ring view differs
    /// from the requester's); the requester should refresh membership.
    pub const NOT_OWNER: u16 = 6;
    /// The node is starting, draining or overloaded; retry later or elsewhere.
    pub const UNAVAILABLE: u16 = 7;
    /// A bug or an unexpected local failure on the answering node.
    pub const INTERNAL: u16 = 8;
}

/// Why a frame could not be encoded, received or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The first four bytes are not [`MAGIC`](super::MAGIC).
    #[error("bad frame magic {found:#010x} (expected {expected:#010x}): the peer is not speaking the PeerCache protocol or the stream lost sync")]
    BadMagic {
        /// What the frame started with.
        found: u32,
        /// [`MAGIC`](super::MAGIC).
        expected: u32,
    },
    /// The peer speaks another protocol version.
    #[error("unsupported protocol version {found} (we speak {PROTOCOL_VERSION}); run the same PeerCache version on every node")]
    UnsupportedVersion {
        /// The version in the frame header.
        found: u16,
    },
    /// The kind number is not one this version knows (or is reserved).
    #[error("unknown message kind {0:#06x}")]
    UnknownKind(u16),
    /// The frame is of another kind than the caller expected.
    #[error("expected a {expected} frame, got {found}")]
    KindMismatch {
        /// The kind the caller asked for.
        expected: Kind,
        /// The kind in the header.
        found: Kind,
    },
    /// The meta section exceeds [`MAX_META_BYTES`](super::MAX_META_BYTES).
    #[error("meta too large: {len_bytes} > {max_bytes} bytes")]
    MetaTooLarge {
        /// Length of the meta section.
        len_bytes: u64,
        /// The limit.
        max_bytes: u64,
    },
    /// The bulk section exceeds [`MAX_BULK_BYTES`](super::MAX_BULK_BYTES).
    #[error("bulk too large: {len_bytes} > {max_bytes} bytes; split the batch")]
    BulkTooLarge {
        /// Length of the bulk section.
        len_bytes: u64,
        /// The limit.
        max_bytes: u64,
    },
    /// A kind that carries no bulk section announced one.
    #[error("{kind} frames carry no bulk section, but bulk_len is {len_bytes}")]
    UnexpectedBulk {
        /// The frame's kind.
        kind: Kind,
        /// The announced bulk length.
        len_bytes: u32,
    },
    /// A list in the message is longer than [`MAX_BATCH_ITEMS`].
    #[error("batch of {items} items exceeds {MAX_BATCH_ITEMS}; split the batch")]
    BatchTooLarge {
        /// Length of the longest list.
        items: usize,
    },
    /// The meta bytes are not a valid archive of the expected message.
    #[error("archive failed validation: {0}")]
    InvalidArchive(String),
    /// The meta bytes are not aligned for in-place access.
    #[error("meta bytes are not aligned to {META_ALIGN_BYTES} bytes; receive frames into rkyv::util::AlignedVec")]
    MisalignedMeta,
    /// Serialising a message failed (allocation failure in practice).
    #[error("encoding a {kind} message failed: {detail}")]
    Encode {
        /// The message kind.
        kind: Kind,
        /// rkyv's explanation.
        detail: String,
    },
    /// The stream ended in the middle of a frame.
    #[error("truncated frame: {section} needs {expected_bytes} bytes, the stream ended after {got_bytes}")]
    Truncated {
        /// `"header"`, `"meta"` or `"bulk"`.
        section: &'static str,
        /// Bytes of that section received.
        got_bytes: u64,
        /// Bytes of that section announced.
        expected_bytes: u64,
    },
    /// The peer closed the connection cleanly, between two frames.
    #[error("connection closed by the peer")]
    Closed,
    /// A reply's status list does not match the request or the destinations.
    #[error(
        "reply has {statuses} statuses for {items} requested items and {destinations} destinations"
    )]
    ItemCountMismatch {
        /// Statuses in the reply.
        statuses: usize,
        /// Items in the request.
        items: usize,
        /// Destinations supplied by the caller.
        destinations: usize,
    },
    /// A reply status code this version does not know.
    #[error("item {item} has unknown read status {code}")]
    UnknownStatus {
        /// Index of the item.
        item: usize,
        /// The status byte.
        code: u8,
    },
    /// An OK item would not fit its destination exactly.
    #[error("item {item} is {item_len_bytes} bytes but its destination is {dest_len_bytes} bytes")]
    DestinationLenMismatch {
        /// Index of the item.
        item: usize,
        /// Length requested for the item.
        item_len_bytes: u64,
        /// Length of the caller's destination.
        dest_len_bytes: u64,
    },
    /// The announced bulk length is not the sum of the OK items' lengths.
    #[error("reply bulk_len is {bulk_len_bytes} bytes but its OK items add up to {expected_bytes} bytes")]
    BulkLenMismatch {
        /// `bulk_len` from the header.
        bulk_len_bytes: u64,
        /// Sum of the OK items' lengths.
        expected_bytes: u64,
    },
    /// The underlying reader or writer failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl WireError {
    /// The [`error_code`] to put in an [`ErrorReply`](super::ErrorReply)
    /// answering a request that failed with this error.
    pub fn code(&self) -> u16 {
        match self {
            WireError::UnsupportedVersion { .. } => error_code::UNSUPPORTED_VERSION,
            WireError::UnknownKind(_) | WireError::KindMismatch { .. } => error_code::UNKNOWN_KIND,
            WireError::MetaTooLarge { .. }
            | WireError::BulkTooLarge { .. }
            | WireError::BatchTooLarge { .. } => error_code::TOO_LARGE,
            WireError::Encode { .. } | WireError::Io(_) | WireError::Closed => error_code::INTERNAL,
            _ => error_code::BAD_FRAME,
        }
    }

    /// True when the byte stream is still in sync after this error, i.e. the
    /// connection can carry the next frame (after [`discard_bulk`] for
    /// [`BulkPlan`] rejections). Every other error means: close it.
    ///
    /// [`discard_bulk`]: super::discard_bulk
    /// [`BulkPlan`]: super::BulkPlan
    pub fn stream_in_sync(&self) -> bool {
        matches!(
            self,
            WireError::KindMismatch { .. }
                | WireError::BatchTooLarge { .. }
                | WireError::InvalidArchive(_)
                | WireError::MisalignedMeta
                | WireError::ItemCountMismatch { .. }
                | WireError::UnknownStatus { .. }
                | WireError::DestinationLenMismatch { .. }
                | WireError::BulkLenMismatch { .. }
        )
    }
}
