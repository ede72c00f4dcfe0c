//! Frames over an async byte stream (a glommio `TcpStream` on a shard).
//!
//! The layout, limits and validation are the wire module's; this file only
//! moves bytes with `await`. Page bytes (the bulk section) are read straight
//! into the caller's destinations and written straight from the pool, never
//! staged in a buffer of ours.

use crate::wire::{self, FrameHeader, WireError, WireMessage, HEADER_BYTES};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use rkyv::util::AlignedVec;
use std::io;

/// A connection carrying PeerCache frames.
pub struct FramedConn<S> {
    stream: S,
    meta: AlignedVec,
    scratch: Vec<u8>,
    next_request_id: u64,
}

impl<S> std::fmt::Debug for FramedConn<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedConn")
            .field("next_request_id", &self.next_request_id)
            .finish()
    }
}

fn truncated(section: &'static str, e: io::Error) -> WireError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        WireError::Truncated {
            section,
            got_bytes: 0,
            expected_bytes: 0,
        }
    } else {
        WireError::Io(e)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> FramedConn<S> {
    /// Wraps a connected stream.
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            meta: AlignedVec::new(),
            scratch: Vec::new(),
            next_request_id: 1,
        }
    }

    /// A fresh request id for this connection.
    pub fn next_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1);
        id
    }

    /// Sends `msg` with `request_id`, followed by the `bulk` slices. The
    /// header and meta go out in one write; each bulk slice is written
    /// directly from where it lives.
    pub async fn send<T: WireMessage>(
        &mut self,
        msg: &T,
        request_id: u64,
        bulk: &[&[u8]],
    ) -> Result<(), WireError> {
        let bulk_len: u64 = bulk.iter().map(|b| b.len() as u64).sum();
        self.scratch.clear();
        wire::encode_frame(msg, request_id, bulk_len, &mut self.scratch)?;
        self.stream.write_all(&self.scratch).await?;
        for part in bulk {
            if !part.is_empty() {
                self.stream.write_all(part).await?;
            }
        }
        Ok(())
    }

    /// Pushes out anything buffered below us.
    pub async fn flush(&mut self) -> Result<(), WireError> {
        self.stream.flush().await?;
        Ok(())
    }

    /// Receives the next frame's header and meta (not its bulk). A clean
    /// end of stream before a header is [`WireError::Closed`].
    pub async fn recv(&mut self) -> Result<FrameHeader, WireError> {
        let mut bytes = [0u8; HEADER_BYTES];
        let first = self.stream.read(&mut bytes).await?;
        if first == 0 {
            return Err(WireError::Closed);
        }
        self.stream
            .read_exact(&mut bytes[first..])
            .await
            .map_err(|e| truncated("header", e))?;
        let header = FrameHeader::parse(&bytes)?;
        self.meta.clear();
        self.meta.resize(header.meta_len as usize, 0);
        self.stream
            .read_exact(self.meta.as_mut_slice())
            .await
            .map_err(|e| truncated("meta", e))?;
        Ok(header)
    }

    /// The meta section of the last received frame (16-byte aligned, as
    /// [`wire::decode_meta`] needs).
    pub fn meta(&self) -> &[u8] {
        self.meta.as_slice()
    }

    /// Receives `dst.len()` bulk bytes into `dst`.
    pub async fn recv_bulk(&mut self, dst: &mut [u8]) -> Result<(), WireError> {
        self.stream
            .read_exact(dst)
            .await
            .map_err(|e| truncated("bulk", e))
    }

    /// Reads and drops `len_bytes` of bulk, keeping the stream in sync.
    pub async fn discard_bulk(&mut self, mut len_bytes: u64) -> Result<(), WireError> {
        let mut sink = [0u8; 16 << 10];
        while len_bytes > 0 {
            let n = len_bytes.min(sink.len() as u64) as usize;
            self.stream
                .read_exact(&mut sink[..n])
                .await
                .map_err(|e| truncated("bulk", e))?;
            len_bytes -= n as u64;
        }
        Ok(())
    }

    /// The underlying stream.
    pub fn stream_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}
