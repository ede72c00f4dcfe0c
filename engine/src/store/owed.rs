//! The answers a shard owes to callers waiting on it, given exactly once.
//!
//! Why: a caller of `Node::run`, `Node::clear` or `Node::flush_disk` blocks
//! until every shard has answered its part. A shard answers when the work
//! holding the part ends, or when that work is dropped. After a panic the
//! shard's executor is gone, but glommio does not drop its pending tasks
//! (one asleep on a timer or a socket stays allocated), so the parts they
//! hold would never answer and their callers, SGLang's threads, would wait
//! forever.
//!
//! How: work that runs as a task holds an [`Owed`] instead of the bare
//! completion. The shard keeps every unanswered one in its [`Answers`], and
//! when a panic halts it, [`Answers::answer_all`] answers them all (after the
//! shard stopped its RDMA READs, so nothing lands in a caller's buffer
//! afterwards). Whichever comes first, the drop of the [`Owed`] or
//! `answer_all`, answers; the other finds nothing left to do. A drop during
//! the panic's own unwinding leaves the answer to `answer_all`, which comes
//! after the READs are stopped.

use crate::runtime::BatchCompletion;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

/// The unanswered completions of one shard's running tasks. Used only on
/// that shard's thread.
#[derive(Default, Debug)]
pub struct Answers {
    next: Cell<u64>,
    owed: RefCell<HashMap<u64, *const BatchCompletion>>,
}

impl Answers {
    /// Records that `done` is owed one answer; the returned [`Owed`] gives it
    /// when dropped, unless [`Answers::answer_all`] gave it first.
    ///
    /// # Safety
    /// `done` must stay valid until it has received every answer it waits
    /// for (its caller blocks until then).
    pub unsafe fn owe(self: &Rc<Self>, done: *const BatchCompletion) -> Owed {
        let id = self.next.get();
        self.next.set(id + 1);
        self.owed.borrow_mut().insert(id, done);
        Owed {
            answers: Rc::clone(self),
            id,
        }
    }

    /// Answers everything still owed (a panic halted the shard).
    pub fn answer_all(&self) {
        let owed: Vec<*const BatchCompletion> =
            self.owed.borrow_mut().drain().map(|(_, d)| d).collect();
        for done in owed {
            // SAFETY: still owed, so its caller is still waiting (`owe`).
            unsafe { (*done).part_done() };
        }
    }

    /// Answers still owed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.owed.borrow().len()
    }

    /// Whether nothing is owed.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One answer owed to a waiting caller; given when dropped.
#[derive(Debug)]
pub struct Owed {
    answers: Rc<Answers>,
    id: u64,
}

impl Drop for Owed {
    fn drop(&mut self) {
        // Dropped by a panic unwinding through its task: the shard is about
        // to be halted, and other tasks of the same call may still have RDMA
        // READs posted into the caller's buffers. `answer_all` answers after
        // the halt has stopped them.
        if std::thread::panicking() {
            return;
        }
        let done = self.answers.owed.borrow_mut().remove(&self.id);
        if let Some(done) = done {
            // SAFETY: still owed, so its caller is still waiting (`owe`).
            unsafe { (*done).part_done() };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_answer_is_given_once_by_whichever_comes_first() {
        let answers = Rc::new(Answers::default());
        let done = BatchCompletion::new(3);
        // SAFETY: `done` outlives every answer below.
        let (a, b, c) = unsafe { (answers.owe(&done), answers.owe(&done), answers.owe(&done)) };
        drop(a);
        assert_eq!(answers.len(), 2);
        assert!(!done.is_done());
        // A halt answers the two still owed...
        answers.answer_all();
        assert!(done.is_done());
        assert!(answers.is_empty());
        // ...and their holders' later drops answer nothing (a second answer
        // would trip the completion's "completed twice" assertion).
        drop(b);
        drop(c);
    }

    #[test]
    fn a_drop_while_panicking_leaves_the_answer_to_the_halt() {
        let answers = Rc::new(Answers::default());
        let done = BatchCompletion::new(1);
        // SAFETY: `done` outlives the answer.
        let owed = unsafe { answers.owe(&done) };
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _owed = owed;
            panic!("test: a task panicked");
        }));
        assert!(unwound.is_err());
        assert!(!done.is_done(), "not answered during the unwinding");
        answers.answer_all();
        assert!(done.is_done());
    }
}
