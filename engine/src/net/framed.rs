//! Frames over an async byte stream (a glommio `TcpStream` on a shard).
//!
//! The layout, limits and validation are the wire module's; this file only
//! moves bytes with `await`. Page bytes (the bulk section) are read straight
//! into the caller's destinations and written straight from the pool, never
//! staged in a buffer of ours.
//!
//! Control frames (directory requests and replies, every request a server
//! receives) are read with read-ahead: one receive takes the header, the
//! meta and whatever follows into a small buffer, where the header-then-meta
//! reads would cost two system calls per frame. A frame whose bulk follows
//! is received with [`FramedConn::recv_before_bulk`], which reads exactly
//! its header and meta, so its pages still arrive straight in place.

use crate::wire::{self, FrameHeader, WireError, WireMessage, HEADER_BYTES};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use rkyv::util::AlignedVec;
use std::io;

/// Bytes one read-ahead receive asks for: a header with the meta of a
/// directory reply for a whole batch of pages fits.
const READ_AHEAD_BYTES: usize = 4096;

/// Capacity a connection keeps in its meta and encode buffers between
/// frames. Every frame of a normal batch fits (a directory reply for 32
/// pages is under 2 KiB); a larger one gets a buffer of its own, freed once
/// it is done. Channels stay open for the life of a peer, and without this
/// each would keep the largest frame it ever carried (a few MiB for a full
/// directory reply), times every channel of every peer.
const KEPT_BUFFER_BYTES: usize = 64 << 10;

/// A connection carrying PeerCache frames.
pub struct FramedConn<S> {
    stream: S,
    meta: AlignedVec,
    scratch: Vec<u8>,
    next_request_id: u64,
    /// Bytes received ahead of the frame being read: `ahead[start..end]`.
    ahead: Box<[u8]>,
    ahead_start: usize,
    ahead_end: usize,
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
            ahead: vec![0; READ_AHEAD_BYTES].into_boxed_slice(),
            ahead_start: 0,
            ahead_end: 0,
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
        let written = self.stream.write_all(&self.scratch).await;
        if self.scratch.capacity() > KEPT_BUFFER_BYTES {
            self.scratch = Vec::new();
        }
        written?;
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

    /// Receives the next frame's header and meta (not its bulk), reading
    /// ahead. A clean end of stream before a header is [`WireError::Closed`].
    /// For a frame followed by page bytes use
    /// [`recv_before_bulk`](Self::recv_before_bulk).
    pub async fn recv(&mut self) -> Result<FrameHeader, WireError> {
        self.recv_frame(true).await
    }

    /// Like [`recv`](Self::recv), but reads nothing past the meta: the bulk
    /// that follows is then received straight into its destinations.
    pub async fn recv_before_bulk(&mut self) -> Result<FrameHeader, WireError> {
        self.recv_frame(false).await
    }

    async fn recv_frame(&mut self, read_ahead: bool) -> Result<FrameHeader, WireError> {
        let mut bytes = [0u8; HEADER_BYTES];
        let mut got = self.take_ahead(&mut bytes);
        if got == 0 {
            got = self.read_some(&mut bytes, read_ahead).await?;
            if got == 0 {
                return Err(WireError::Closed);
            }
        }
        self.fill(&mut bytes[got..], read_ahead)
            .await
            .map_err(|e| truncated("header", e))?;
        let header = FrameHeader::parse(&bytes)?;
        let mut meta = std::mem::take(&mut self.meta);
        if meta.capacity() > KEPT_BUFFER_BYTES {
            meta = AlignedVec::new();
        }
        meta.clear();
        let meta_len = header.meta_len as usize;
        let mut filled = Ok(());
        while meta.len() < meta_len && filled.is_ok() {
            let from = meta.len();
            let to = wire::meta_step_end(from, meta_len);
            meta.resize(to, 0);
            filled = self
                .fill(&mut meta.as_mut_slice()[from..to], read_ahead)
                .await
                .map_err(|e| truncated("meta", e));
        }
        self.meta = meta;
        filled?;
        Ok(header)
    }

    /// Copies bytes received ahead into `dst`; returns how many.
    fn take_ahead(&mut self, dst: &mut [u8]) -> usize {
        let n = dst.len().min(self.ahead_end - self.ahead_start);
        dst[..n].copy_from_slice(&self.ahead[self.ahead_start..self.ahead_start + n]);
        self.ahead_start += n;
        n
    }

    /// One receive into `dst` (0 at end of stream). With `read_ahead`, a
    /// short `dst` is served through the read-ahead buffer, which keeps
    /// what arrived beyond it.
    async fn read_some(&mut self, dst: &mut [u8], read_ahead: bool) -> io::Result<usize> {
        if !read_ahead || dst.len() >= self.ahead.len() {
            return self.stream.read(dst).await;
        }
        let n = self.stream.read(&mut self.ahead).await?;
        self.ahead_start = 0;
        self.ahead_end = n;
        Ok(self.take_ahead(dst))
    }

    /// Fills all of `dst`: bytes received ahead first, then the stream.
    async fn fill(&mut self, dst: &mut [u8], read_ahead: bool) -> io::Result<()> {
        let mut got = self.take_ahead(dst);
        while got < dst.len() {
            match self.read_some(&mut dst[got..], read_ahead).await? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => got += n,
            }
        }
        Ok(())
    }

    /// The meta section of the last received frame (16-byte aligned, as
    /// [`wire::decode_meta`] needs).
    pub fn meta(&self) -> &[u8] {
        self.meta.as_slice()
    }

    /// Receives `dst.len()` bulk bytes into `dst` (straight from the
    /// stream, after any bytes a read-ahead already took).
    pub async fn recv_bulk(&mut self, dst: &mut [u8]) -> Result<(), WireError> {
        self.fill(dst, false)
            .await
            .map_err(|e| truncated("bulk", e))
    }

    /// Reads and drops `len_bytes` of bulk, keeping the stream in sync.
    pub async fn discard_bulk(&mut self, mut len_bytes: u64) -> Result<(), WireError> {
        let mut sink = [0u8; 16 << 10];
        while len_bytes > 0 {
            let n = len_bytes.min(sink.len() as u64) as usize;
            self.fill(&mut sink[..n], false)
                .await
                .map_err(|e| truncated("bulk", e))?;
            len_bytes -= n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{DataReadReply, DirGet, DirGetReply, Kind};
    use futures_lite::future::block_on;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// An in-memory stream that hands out at most `chunk` bytes per read and
    /// records where each read started.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        chunk: usize,
        reads: Vec<usize>,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let start = self.pos;
            let n = buf.len().min(self.chunk).min(self.data.len() - start);
            buf[..n].copy_from_slice(&self.data[start..start + n]);
            self.pos += n;
            self.reads.push(start);
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Chunked {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A connection over `data`, handed out at most `chunk` bytes per read.
    fn conn(data: Vec<u8>, chunk: usize) -> FramedConn<Chunked> {
        FramedConn::new(Chunked {
            data,
            pos: 0,
            chunk,
            reads: Vec::new(),
        })
    }

    /// Appends a `DirGetReply` frame of `entries` misses.
    fn push_reply(out: &mut Vec<u8>, request_id: u64, entries: usize) {
        let reply = DirGetReply {
            entries: vec![None; entries],
        };
        wire::encode_frame(&reply, request_id, 0, out).unwrap();
    }

    /// A control frame, a data reply with two pages of bulk, another
    /// control frame: the stream, where the data reply and its first page
    /// start, and the page bytes.
    fn stream() -> (Vec<u8>, usize, usize, Vec<u8>) {
        let mut out = Vec::new();
        let get = DirGet {
            keys: vec![[1; 16], [2; 16], [3; 16]],
        };
        wire::encode_frame(&get, 7, 0, &mut out).unwrap();
        let reply_at = out.len();
        let pages: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let reply = DataReadReply { status: vec![0, 0] };
        wire::encode_frame(&reply, 8, pages.len() as u64, &mut out).unwrap();
        let bulk_at = out.len();
        out.extend_from_slice(&pages);
        push_reply(&mut out, 9, 1);
        (out, reply_at, bulk_at, pages)
    }

    fn read_all(chunk: usize) {
        let (data, _, _, pages) = stream();
        let mut conn = conn(data, chunk);
        block_on(async {
            let h = conn.recv().await.unwrap();
            assert_eq!((h.kind, h.request_id), (Kind::DirGet, 7));
            let get = wire::decode_owned::<DirGet>(conn.meta()).unwrap();
            assert_eq!(get.keys.len(), 3);

            let h = conn.recv_before_bulk().await.unwrap();
            assert_eq!((h.kind, h.request_id), (Kind::DataReadReply, 8));
            let mut first = vec![0u8; 4000];
            let mut second = vec![0u8; pages.len() - 4000];
            conn.recv_bulk(&mut first).await.unwrap();
            conn.recv_bulk(&mut second).await.unwrap();
            assert_eq!([first, second].concat(), pages);

            let h = conn.recv().await.unwrap();
            assert_eq!((h.kind, h.request_id), (Kind::DirGetReply, 9));
            assert!(matches!(conn.recv().await, Err(WireError::Closed)));
        });
    }

    /// A `DirGet` frame of `n` distinct keys.
    fn push_get(out: &mut Vec<u8>, request_id: u64, n: usize) {
        let keys = (0..n as u32)
            .map(|i| {
                let mut k = [0u8; 16];
                k[..4].copy_from_slice(&i.to_le_bytes());
                k
            })
            .collect();
        wire::encode_frame(&DirGet { keys }, request_id, 0, out).unwrap();
    }

    /// A large frame is received whole, through a buffer that grows as its
    /// bytes arrive, and the connection does not keep that buffer (nor the
    /// one a large send encoded into) for the frames after it.
    #[test]
    fn large_frames_arrive_whole_and_their_buffers_are_not_kept() {
        let mut data = Vec::new();
        push_get(&mut data, 1, 20_000); // a 312 KiB meta: several steps
        push_get(&mut data, 2, 3);
        let mut conn = conn(data, 7_000);
        block_on(async {
            let h = conn.recv().await.unwrap();
            assert_eq!(h.request_id, 1);
            let get = wire::decode_owned::<DirGet>(conn.meta()).unwrap();
            assert_eq!(get.keys.len(), 20_000);
            assert!(get
                .keys
                .iter()
                .enumerate()
                .all(|(i, k)| k[..4] == (i as u32).to_le_bytes()));
            conn.recv().await.unwrap();
            assert_eq!(
                wire::decode_owned::<DirGet>(conn.meta())
                    .unwrap()
                    .keys
                    .len(),
                3
            );
            // Literal bounds, not the constants: the point is how much stays.
            assert!(conn.meta.capacity() <= 64 << 10);

            let big = DirGet {
                keys: vec![[7; 16]; 20_000],
            };
            conn.send(&big, 3, &[]).await.unwrap();
            assert!(conn.scratch.capacity() <= 64 << 10);
        });
    }

    /// A header that announces a large meta and then stops costs what
    /// arrived, not what it announced.
    #[test]
    fn an_announced_meta_that_never_comes_is_not_allocated_up_front() {
        let mut data = Vec::new();
        push_get(&mut data, 1, 65_536); // announces 1 MiB of meta
        data.truncate(HEADER_BYTES + 10);
        let mut conn = conn(data, 4096);
        block_on(async {
            let err = conn.recv().await.unwrap_err();
            assert!(
                matches!(
                    err,
                    WireError::Truncated {
                        section: "meta",
                        ..
                    }
                ),
                "{err}"
            );
        });
        assert!(conn.meta.capacity() <= 128 << 10);
    }

    /// Every frame and every page byte arrives intact whatever the size of
    /// the reads the stream gives.
    #[test]
    fn frames_and_bulk_arrive_intact_with_any_read_size() {
        for chunk in [1, 3, 16, 100, 4096, usize::MAX] {
            read_all(chunk);
        }
    }

    /// The frame before bulk is read exactly, even when the stream holds
    /// much more: a read starts where the pages start, so they are received
    /// in place, not through the read-ahead.
    #[test]
    fn the_frame_before_bulk_is_not_read_ahead() {
        let (data, reply_at, bulk_at, pages) = stream();
        let mut conn = conn(data[reply_at..].to_vec(), usize::MAX);
        let bulk_at = bulk_at - reply_at;
        block_on(async {
            conn.recv_before_bulk().await.unwrap();
            let mut got = vec![0u8; pages.len()];
            conn.recv_bulk(&mut got).await.unwrap();
            assert_eq!(got, pages);
        });
        assert_eq!(
            conn.stream.reads[..3],
            [0, HEADER_BYTES, bulk_at],
            "header, meta, then the pages straight into the destination"
        );
    }

    /// A control frame the stream holds whole takes a single read.
    #[test]
    fn a_control_frame_takes_one_read() {
        let mut data = Vec::new();
        push_reply(&mut data, 1, 32);
        let mut conn = conn(data, usize::MAX);
        block_on(async {
            let h = conn.recv().await.unwrap();
            let reply = wire::decode_owned::<DirGetReply>(conn.meta()).unwrap();
            assert_eq!((h.request_id, reply.entries.len()), (1, 32));
        });
        assert_eq!(conn.stream.reads, vec![0]);
    }

    /// Bytes read ahead belong to the next frame and are never lost: two
    /// control frames received in one read are both delivered.
    #[test]
    fn a_read_ahead_keeps_the_next_frame() {
        let mut data = Vec::new();
        push_reply(&mut data, 1, 2);
        push_reply(&mut data, 2, 2);
        let mut conn = conn(data, usize::MAX);
        block_on(async {
            assert_eq!(conn.recv().await.unwrap().request_id, 1);
            assert_eq!(conn.recv().await.unwrap().request_id, 2);
        });
        assert_eq!(conn.stream.reads, vec![0], "both frames came in one read");
    }
}
