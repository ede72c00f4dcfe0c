//! A shard's inbox: the bounded lock-free queue other threads submit to.
//!
//! Why this shape: SGLang calls arrive on Python threads that must not run
//! on the shard's executor. A submitter pushes onto a crossbeam `ArrayQueue`
//! and wakes the shard's intake task through an [`AtomicWaker`]. The waker is
//! only registered while the shard has run out of work, so a busy shard costs
//! a submitter no syscall at all; an idle one is woken through glommio's
//! foreign-wake path, which writes the executor's eventfd only if it sleeps.

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};

/// The queue, doorbell and shutdown state of one shard.
pub struct Inbox<J> {
    queue: ArrayQueue<J>,
    waker: AtomicWaker,
    closing: AtomicBool,
    /// Submitters between their `closing` check and the end of their push:
    /// the shard waits for these to reach zero before its final drain, so no
    /// job is ever left behind in a queue nobody reads.
    submitters_in_flight: AtomicUsize,
}

/// Why a push did not enter the queue.
#[derive(Debug)]
pub enum PushError<J> {
    /// The queue is at capacity; the job is handed back.
    Full(J),
    /// The runtime is shutting down; the job is handed back.
    Closing(J),
}

impl<J> Inbox<J> {
    /// An inbox holding at most `capacity` queued jobs.
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: ArrayQueue::new(capacity.max(1)),
            waker: AtomicWaker::new(),
            closing: AtomicBool::new(false),
            submitters_in_flight: AtomicUsize::new(0),
        }
    }

    /// Tries once to enqueue `job`, and wakes the shard if it is idle.
    pub fn push(&self, job: J) -> Result<(), PushError<J>> {
        self.submitters_in_flight.fetch_add(1, Ordering::SeqCst);
        let result = if self.closing.load(Ordering::SeqCst) {
            Err(PushError::Closing(job))
        } else {
            self.queue.push(job).map_err(PushError::Full)
        };
        // Wake even on Full: the shard may be parked with a full queue only if
        // a wake-up was lost, and waking it is how a full queue drains.
        self.waker.wake();
        self.submitters_in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }

    /// Takes the oldest queued job. Only the owning shard calls this.
    pub fn pop(&self) -> Option<J> {
        self.queue.pop()
    }

    /// Starts shutdown: later pushes fail with [`PushError::Closing`].
    pub fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Whether [`Inbox::close`] was called.
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// True once closing, with no submitter mid-push and nothing queued: the
    /// shard may stop.
    pub fn is_drained(&self) -> bool {
        self.is_closing()
            && self.submitters_in_flight.load(Ordering::SeqCst) == 0
            && self.queue.is_empty()
    }

    /// Number of queued jobs.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no job is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Resolves when a job is queued or shutdown started. Used by the shard's
    /// intake task; registers the waker before the final check so a push that
    /// races with going idle is never missed.
    pub fn ready(&self) -> Ready<'_, J> {
        Ready { inbox: self }
    }
}

/// Future returned by [`Inbox::ready`].
pub struct Ready<'a, J> {
    inbox: &'a Inbox<J>,
}

impl<J> Future for Ready<'_, J> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let inbox = self.inbox;
        if !inbox.queue.is_empty() || inbox.is_closing() {
            return Poll::Ready(());
        }
        inbox.waker.register(cx.waker());
        if !inbox.queue.is_empty() || inbox.is_closing() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}
