//! The newest membership view, left where every shard of the node takes it.
//!
//! Why not a job carrying the view: discovery runs on its own thread, and a
//! view pushed through a shard's inbox has to wait while that inbox is full
//! (a stalled or flooded shard). Waiting blocks discovery's heartbeats, which
//! can get this live node expired by the masters; giving up drops the view,
//! and the shard then routes directory traffic on a stale ring until the next
//! change. Instead the node posts each view here, which never waits on a
//! shard, and pushes a payload-free wake-up that may be dropped: a shard looks
//! here before every job it handles, so a shard whose inbox was too full for
//! the wake-up still installs the newest view before its next job.
//!
//! Only the newest view matters (each one is the whole membership), so posting
//! replaces; a shard that missed intermediate views goes straight to the last.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::cluster::ClusterView;

/// One node's posted membership views.
#[derive(Debug, Default)]
pub struct ViewMailbox {
    /// Number of views posted so far; a shard compares it with the number of
    /// the view it installed (one atomic load per job, no lock).
    posted: AtomicU64,
    /// The newest view and its number. Locked only to post or take a view,
    /// never on the data path.
    newest: Mutex<Option<(u64, Arc<ClusterView>)>>,
}

impl ViewMailbox {
    /// Posts `view` as the newest one. Returns its number (from 1).
    pub fn post(&self, view: Arc<ClusterView>) -> u64 {
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        let number = self.posted.load(Ordering::Relaxed) + 1;
        *newest = Some((number, view));
        // After the view is in place, so a shard that sees the new number
        // finds at least that view behind the lock. SeqCst, with the load in
        // `newer_than`: the poster stores the number and then finds a full
        // inbox, the shard pops a job and then loads the number, and one of
        // the two must see the other's write, so a shard whose wake-up was
        // refused still sees the view before its next job. Release/Acquire
        // alone does not promise that (it is a store-load pattern).
        self.posted.store(number, Ordering::SeqCst);
        number
    }

    /// The newest view when it is newer than view number `installed`.
    pub fn newer_than(&self, installed: u64) -> Option<(u64, Arc<ClusterView>)> {
        if self.posted.load(Ordering::SeqCst) <= installed {
            return None;
        }
        self.newest
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|&(number, _)| number > installed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(epoch: u64) -> Arc<ClusterView> {
        Arc::new(ClusterView::new(epoch, "me", Vec::new(), 16, 1))
    }

    #[test]
    fn nothing_is_newer_before_a_post() {
        let mailbox = ViewMailbox::default();
        assert!(mailbox.newer_than(0).is_none());
    }

    #[test]
    fn a_shard_behind_gets_only_the_newest_view() {
        let mailbox = ViewMailbox::default();
        assert_eq!(mailbox.post(view(7)), 1);
        assert_eq!(mailbox.post(view(8)), 2);
        assert_eq!(mailbox.post(view(9)), 3);
        let (number, newest) = mailbox.newer_than(0).expect("three views posted");
        assert_eq!((number, newest.epoch()), (3, 9));
        // Installed: nothing newer until the next post.
        assert!(mailbox.newer_than(3).is_none());
        mailbox.post(view(10));
        assert_eq!(
            mailbox.newer_than(3).map(|(n, v)| (n, v.epoch())),
            Some((4, 10))
        );
    }

    #[test]
    fn posts_from_another_thread_are_seen_in_order() {
        let mailbox = Arc::new(ViewMailbox::default());
        let poster = {
            let mailbox = Arc::clone(&mailbox);
            std::thread::spawn(move || {
                for epoch in 1..=2000 {
                    mailbox.post(view(epoch));
                }
            })
        };
        // A taker never sees a number go back, nor a view that does not
        // belong to its number (view n has epoch n here).
        let mut installed = 0;
        while installed < 2000 {
            if let Some((number, v)) = mailbox.newer_than(installed) {
                assert!(number > installed);
                assert_eq!(v.epoch(), number);
                installed = number;
            }
        }
        poster.join().unwrap();
    }
}
