//! The shard-per-core runtime.
//!
//! A node runs N shards. A shard is one OS thread, pinned to one core (chosen
//! by the numa crate near the shard's NIC), running a glommio `LocalExecutor`.
//! Everything a shard owns (its pool range, later its connections, directory
//! part and disk slab) lives in its [`ShardService`] and is touched only by that
//! thread, so none of it needs a lock.
//!
//! Other threads talk to a shard only through its [`Inbox`]: a bounded
//! lock-free queue plus a waker. [`Runtime::submit`] applies back-pressure as a
//! bounded wait when a queue is full, never as an unbounded buffer.

pub mod completion;
pub mod inbox;

pub use completion::BatchCompletion;
pub use inbox::{Inbox, PushError};

use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What runs on a shard: built on the shard's own thread, then handed every
/// job submitted to that shard, in order.
pub trait ShardService: 'static {
    /// The message type other threads submit.
    type Job: Send + 'static;

    /// Handles one job on the shard thread. Synchronous work is done inline;
    /// work that waits (network, disk) is spawned as a glommio task, which is
    /// why the service is shared through an `Rc`.
    fn handle(this: &Rc<Self>, job: Self::Job);

    /// Called once on the shard thread, inside the executor, right after the
    /// service is built: the place to spawn long-lived tasks (an accept loop).
    fn start(this: &Rc<Self>) {
        let _ = this;
    }

    /// Called once on the shard thread when it stops, after its last job.
    /// Long-lived tasks holding the service may never be dropped (the
    /// executor stops polling them), so anything that must be released
    /// (NIC registrations, queue pairs) is released here.
    fn stop(this: &Rc<Self>) {
        let _ = this;
    }

    /// Called once on the shard thread after a panic stopped it, off the
    /// executor (`stop` does not run then). glommio never drops the pending
    /// tasks of a dead executor, so whatever they owe waiting callers must
    /// be answered here, after stopping anything that could still write into
    /// a caller's memory once it is released (RDMA READs those tasks posted).
    fn halt(this: &Rc<Self>) {
        let _ = this;
    }

    /// Answers a job that will never run because its shard stopped after an
    /// internal error (a panic): whoever waits on it must be released. Called
    /// off the shard's executor, on the dead shard's thread.
    fn abandon(job: Self::Job) {
        drop(job);
    }
}

/// Where a shard runs; decided by the numa crate before start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardSite {
    /// Core to pin the shard thread to (`None`: not pinned).
    pub cpu: Option<usize>,
    /// NUMA node of that core / of the shard's NIC, when known.
    pub numa_node: Option<usize>,
    /// RDMA device this shard drives, when it has one.
    pub device: Option<String>,
}

/// Passed to the service factory on the shard thread.
#[derive(Clone, Debug)]
pub struct ShardContext {
    /// Shard number, `0..shards`.
    pub index: usize,
    /// Where the shard runs.
    pub site: ShardSite,
    /// Whether pinning to `site.cpu` succeeded.
    pub pinned: bool,
}

/// Sizing of the runtime.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// Queued jobs per shard before submitters wait.
    pub queue_capacity: usize,
    /// glommio `io_memory` per shard (registered against memlock; keep small).
    pub io_memory_bytes: usize,
    /// Thread name prefix; the shard number is appended.
    pub name: String,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 1024,
            io_memory_bytes: 1 << 20,
            name: "peercache-shard".into(),
        }
    }
}

/// Why the runtime could not start or accept a job.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// A shard thread could not be spawned or its executor built.
    #[error("shard {shard} failed to start: {reason}")]
    ShardStart {
        /// Which shard.
        shard: usize,
        /// What went wrong.
        reason: String,
    },
    /// The shard number does not exist.
    #[error("no shard {0}")]
    NoSuchShard(usize),
    /// The shard's queue stayed full for the whole submit timeout.
    #[error("shard {0} queue stayed full for the whole submit timeout")]
    QueueFull(usize),
    /// The runtime is shutting down.
    #[error("runtime is shutting down")]
    ShuttingDown,
}

/// A running set of shards accepting jobs of type `J`.
pub struct Runtime<J: Send + 'static> {
    inboxes: Vec<Arc<Inbox<J>>>,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
    contexts: Vec<ShardContext>,
}

impl<J: Send + 'static> std::fmt::Debug for Runtime<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("shards", &self.contexts)
            .finish()
    }
}

/// How many jobs a shard handles before letting other tasks on its executor run.
const JOBS_PER_YIELD: usize = 64;

impl<J: Send + 'static> Runtime<J> {
    /// Starts one shard per site. `make` builds each shard's service on that
    /// shard's thread (after pinning, so its memory is first touched on the
    /// right NUMA node). Returns when every shard is ready, or the first error
    /// (shards already started are stopped).
    pub fn start<S, F>(
        sites: Vec<ShardSite>,
        options: RuntimeOptions,
        make: F,
    ) -> Result<Self, RuntimeError>
    where
        S: ShardService<Job = J>,
        F: Fn(&ShardContext) -> Result<S, String> + Send + Sync + 'static,
    {
        assert!(!sites.is_empty(), "a runtime has at least one shard");
        let make = Arc::new(make);
        let mut runtime = Runtime {
            inboxes: Vec::with_capacity(sites.len()),
            threads: std::sync::Mutex::new(Vec::with_capacity(sites.len())),
            contexts: Vec::with_capacity(sites.len()),
        };
        for (index, site) in sites.into_iter().enumerate() {
            let inbox = Arc::new(Inbox::new(options.queue_capacity));
            let (ready_tx, ready_rx) = mpsc::channel();
            let thread_inbox = Arc::clone(&inbox);
            let thread_make = Arc::clone(&make);
            let io_memory = options.io_memory_bytes;
            let name = format!("{}-{index}", options.name);
            let spawned = std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    shard_main(
                        index,
                        site,
                        name,
                        io_memory,
                        thread_inbox,
                        thread_make,
                        ready_tx,
                    )
                });
            let handle = match spawned {
                Ok(h) => h,
                Err(e) => {
                    runtime.shutdown();
                    return Err(RuntimeError::ShardStart {
                        shard: index,
                        reason: e.to_string(),
                    });
                }
            };
            runtime.inboxes.push(inbox);
            runtime
                .threads
                .get_mut()
                .expect("not shared yet")
                .push(handle);
            match ready_rx.recv() {
                Ok(Ok(context)) => runtime.contexts.push(context),
                Ok(Err(reason)) => {
                    runtime.shutdown();
                    return Err(RuntimeError::ShardStart {
                        shard: index,
                        reason,
                    });
                }
                Err(_) => {
                    runtime.shutdown();
                    return Err(RuntimeError::ShardStart {
                        shard: index,
                        reason: "shard thread exited during start-up".into(),
                    });
                }
            }
        }
        Ok(runtime)
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inboxes.len()
    }

    /// Where each shard runs and whether it got pinned.
    pub fn contexts(&self) -> &[ShardContext] {
        &self.contexts
    }

    /// Submits `job` to `shard`, waiting up to `timeout` while the queue is
    /// full (spinning briefly, then sleeping with a growing back-off). On
    /// failure the job is dropped and the error says why; callers turn that
    /// into misses for the pages involved.
    pub fn submit(&self, shard: usize, job: J, timeout: Duration) -> Result<(), (RuntimeError, J)> {
        let Some(inbox) = self.inboxes.get(shard) else {
            return Err((RuntimeError::NoSuchShard(shard), job));
        };
        let mut job = job;
        let mut deadline = None;
        let mut backoff = Duration::from_micros(1);
        loop {
            match inbox.push(job) {
                Ok(()) => return Ok(()),
                Err(PushError::Closing(j)) => return Err((RuntimeError::ShuttingDown, j)),
                Err(PushError::Full(j)) => {
                    job = j;
                    let now = Instant::now();
                    let deadline = *deadline.get_or_insert(now + timeout);
                    if now >= deadline {
                        return Err((RuntimeError::QueueFull(shard), job));
                    }
                    if backoff < Duration::from_micros(16) {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(backoff.min(deadline - now));
                    }
                    backoff = (backoff * 2).min(Duration::from_millis(1));
                }
            }
        }
    }

    /// Stops every shard after it has handled everything already queued, and
    /// joins the threads. Idempotent.
    pub fn shutdown(&self) {
        for inbox in &self.inboxes {
            inbox.close();
        }
        let threads: Vec<JoinHandle<()>> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for handle in threads {
            if handle.join().is_err() {
                tracing::error!("a shard thread panicked; see the panic message above");
            }
        }
    }
}

impl<J: Send + 'static> Drop for Runtime<J> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

type Ready = mpsc::Sender<Result<ShardContext, String>>;

fn shard_main<S, F>(
    index: usize,
    site: ShardSite,
    name: String,
    io_memory: usize,
    inbox: Arc<Inbox<S::Job>>,
    make: Arc<F>,
    ready: Ready,
) where
    S: ShardService,
    F: Fn(&ShardContext) -> Result<S, String>,
{
    let pinned = site.cpu.is_some_and(peercache_numa::pin_current_thread);
    let context = ShardContext {
        index,
        site,
        pinned,
    };
    // Placement::Unbound: pinning is the numa crate's job (it degrades to a
    // logged no-op where the machine refuses), not glommio's.
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .name(&name)
        .io_memory(io_memory)
        .make();
    let executor = match executor {
        Ok(ex) => ex,
        Err(e) => {
            let _ = ready.send(Err(format!("glommio executor: {e}")));
            return;
        }
    };
    let inbox_of_thread = Arc::clone(&inbox);
    // The service, for `halt` after a panic unwound out of the executor.
    let built: Rc<std::cell::OnceCell<Rc<S>>> = Rc::default();
    let built_in_executor = Rc::clone(&built);
    // A panic in a job or a task must not leave callers waiting forever on a
    // shard that no longer runs: it is caught here, the shard stops taking
    // jobs, the service answers what its tasks owed (`halt`), and every job
    // it will never run is answered (a batch part as misses). The node keeps
    // serving from its other shards.
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        executor.run(async move {
            let service = match make(&context) {
                Ok(s) => Rc::new(s),
                Err(reason) => {
                    let _ = ready.send(Err(reason));
                    return;
                }
            };
            let _ = built_in_executor.set(Rc::clone(&service));
            S::start(&service);
            let _ = ready.send(Ok(context));
            loop {
                let mut handled = 0;
                while let Some(job) = inbox.pop() {
                    S::handle(&service, job);
                    handled += 1;
                    if handled % JOBS_PER_YIELD == 0 {
                        glommio::yield_if_needed().await;
                    }
                }
                if inbox.is_closing() {
                    if inbox.is_drained() {
                        break;
                    }
                    // A submitter is mid-push: give it a moment, then drain again.
                    glommio::timer::sleep(Duration::from_micros(50)).await;
                    continue;
                }
                inbox.ready().await;
            }
            S::stop(&service);
            // Let the tasks `stop` cancelled run once more, which drops them.
            glommio::executor().yield_now().await;
        })
    }));
    if ran.is_err() {
        tracing::error!(
            "shard {index} ({name}) stopped after an internal error (the panic is logged above); \
             its pages are misses from now on"
        );
        if let Some(service) = built.get() {
            S::halt(service);
        }
        drop(built);
        // Tasks that were ready may be dropped with the executor (a part
        // answers when dropped); pending ones are not, and `halt` answered
        // those.
        drop(executor);
        abandon_queue::<S>(&inbox_of_thread);
    }
}

/// Closes a stopped shard's inbox and answers every job in it, including
/// any a submitter is pushing right now; later submissions fail at once.
fn abandon_queue<S: ShardService>(inbox: &Inbox<S::Job>) {
    inbox.close();
    loop {
        while let Some(job) = inbox.pop() {
            S::abandon(job);
        }
        if inbox.is_drained() {
            return;
        }
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    /// Test service: records which jobs it saw and completes them.
    struct Counter {
        seen: Arc<Vec<AtomicU64>>,
        handled: Cell<u64>,
    }

    struct CountJob {
        id: usize,
        done: *const BatchCompletion,
    }
    unsafe impl Send for CountJob {}

    impl ShardService for Counter {
        type Job = CountJob;
        fn handle(this: &Rc<Self>, job: CountJob) {
            this.seen[job.id].fetch_add(1, Ordering::Relaxed);
            this.handled.set(this.handled.get() + 1);
            unsafe { (*job.done).part_done() };
        }
    }

    fn sites(n: usize) -> Vec<ShardSite> {
        vec![ShardSite::default(); n]
    }

    #[test]
    fn every_job_completes_exactly_once_under_concurrency() {
        const THREADS: usize = 8;
        const BATCHES: usize = 300;
        let seen = Arc::new(
            (0..THREADS * BATCHES)
                .map(|_| AtomicU64::new(0))
                .collect::<Vec<_>>(),
        );
        let s2 = Arc::clone(&seen);
        let options = RuntimeOptions {
            queue_capacity: 4, // tiny, so submitters hit back-pressure
            ..RuntimeOptions::default()
        };
        let runtime = Arc::new(
            Runtime::start(sites(2), options, move |_| {
                Ok(Counter {
                    seen: Arc::clone(&s2),
                    handled: Cell::new(0),
                })
            })
            .unwrap(),
        );
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let rt = Arc::clone(&runtime);
                std::thread::spawn(move || {
                    for b in 0..BATCHES {
                        let id = t * BATCHES + b;
                        let done = BatchCompletion::new(1);
                        let job = CountJob { id, done: &done };
                        rt.submit(id % 2, job, Duration::from_secs(30))
                            .map_err(|(e, _)| e)
                            .unwrap();
                        done.wait();
                        assert!(done.is_done());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn shutdown_under_load_handles_every_accepted_job() {
        let seen = Arc::new((0..4 * 2000).map(|_| AtomicU64::new(0)).collect::<Vec<_>>());
        let s2 = Arc::clone(&seen);
        let runtime = Runtime::start(sites(2), RuntimeOptions::default(), move |_| {
            Ok(Counter {
                seen: Arc::clone(&s2),
                handled: Cell::new(0),
            })
        })
        .unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let rejected = Arc::new(AtomicUsize::new(0));
        // Raw pointer to the runtime so submitters keep going while the main
        // thread shuts it down; the scope keeps it alive until they finish.
        let rt_ptr = &runtime as *const Runtime<CountJob> as usize;
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (accepted, rejected) = (Arc::clone(&accepted), Arc::clone(&rejected));
                scope.spawn(move || {
                    let rt = unsafe { &*(rt_ptr as *const Runtime<CountJob>) };
                    for b in 0..2000 {
                        let done = BatchCompletion::new(1);
                        let job = CountJob {
                            id: t * 2000 + b,
                            done: &done,
                        };
                        match rt.submit(b % 2, job, Duration::from_secs(30)) {
                            Ok(()) => {
                                done.wait();
                                accepted.fetch_add(1, Ordering::Relaxed);
                            }
                            Err((RuntimeError::ShuttingDown, _)) => {
                                rejected.fetch_add(1, Ordering::Relaxed);
                            }
                            Err((e, _)) => panic!("unexpected {e}"),
                        }
                    }
                });
            }
            std::thread::sleep(Duration::from_millis(5));
            // Close the inboxes while submitters are active: accepted jobs
            // must still run (their callers are blocked on them).
            for inbox in &runtime.inboxes {
                inbox.close();
            }
        });
        runtime.shutdown();
        let handled: u64 = seen.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        assert_eq!(handled as usize, accepted.load(Ordering::Relaxed));
        assert_eq!(
            accepted.load(Ordering::Relaxed) + rejected.load(Ordering::Relaxed),
            8000
        );
        assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) <= 1));
        runtime.shutdown(); // idempotent
    }

    #[test]
    fn factory_error_is_reported_and_started_shards_stop() {
        let err = Runtime::<CountJob>::start(sites(3), RuntimeOptions::default(), |ctx| {
            if ctx.index == 1 {
                Err("no memory for shard 1".to_string())
            } else {
                Ok(Counter {
                    seen: Arc::new(Vec::new()),
                    handled: Cell::new(0),
                })
            }
        })
        .unwrap_err();
        assert!(
            matches!(err, RuntimeError::ShardStart { shard: 1, ref reason } if reason.contains("no memory"))
        );
    }

    #[test]
    fn submit_to_missing_shard_fails() {
        let runtime = Runtime::start(sites(1), RuntimeOptions::default(), |_| {
            Ok(Counter {
                seen: Arc::new(Vec::new()),
                handled: Cell::new(0),
            })
        })
        .unwrap();
        let done = BatchCompletion::new(1);
        let r = runtime.submit(5, CountJob { id: 0, done: &done }, Duration::ZERO);
        assert!(matches!(r, Err((RuntimeError::NoSuchShard(5), _))));
    }

    /// A job whose drop answers its caller, like a store's batch part.
    struct Answered {
        panic: Option<&'static str>,
        done: *const BatchCompletion,
    }
    unsafe impl Send for Answered {}
    impl Drop for Answered {
        fn drop(&mut self) {
            unsafe { (*self.done).part_done() };
        }
    }

    struct Fragile;
    impl ShardService for Fragile {
        type Job = Answered;
        fn handle(_: &Rc<Self>, mut job: Answered) {
            match job.panic.take() {
                Some("in handle") => panic!("test: a job panicked"),
                Some(_) => {
                    // The job waits in a task that panics later.
                    glommio::spawn_local(async move {
                        let _job = job;
                        glommio::timer::sleep(Duration::from_millis(5)).await;
                        panic!("test: a task panicked");
                    })
                    .detach();
                }
                None => drop(job),
            }
        }
    }

    /// Submits a job to `shard` and waits (bounded) until it is answered.
    fn answered(rt: &Runtime<Answered>, shard: usize, panic: Option<&'static str>) -> bool {
        let done = BatchCompletion::new(1);
        let job = Answered { panic, done: &done };
        let accepted = rt.submit(shard, job, Duration::from_secs(5)).is_ok();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done.is_done() {
            assert!(Instant::now() < deadline, "a job was never answered");
            std::thread::sleep(Duration::from_millis(1));
        }
        accepted
    }

    #[test]
    fn a_panicking_shard_answers_every_job_and_the_others_keep_running() {
        for how in ["in handle", "in a task"] {
            let runtime =
                Runtime::start(sites(2), RuntimeOptions::default(), |_| Ok(Fragile)).unwrap();
            assert!(answered(&runtime, 0, None));
            // The panicking job (or the task holding it) is answered...
            answered(&runtime, 0, Some(how));
            // ...and once the shard has stopped, new jobs are refused and
            // answered at once, never left waiting.
            let deadline = Instant::now() + Duration::from_secs(20);
            while answered(&runtime, 0, None) {
                assert!(Instant::now() < deadline, "{how}: the shard never stopped");
            }
            // The other shard is untouched.
            assert!(answered(&runtime, 1, None), "{how}");
            runtime.shutdown();
        }
    }

    /// A job whose drop records whether its shard was halted by then.
    struct Watched {
        halted: Arc<std::sync::atomic::AtomicBool>,
        dropped_after_halt: Arc<std::sync::atomic::AtomicBool>,
        done: *const BatchCompletion,
    }
    unsafe impl Send for Watched {}
    impl Drop for Watched {
        fn drop(&mut self) {
            let halted = self.halted.load(Ordering::SeqCst);
            self.dropped_after_halt.store(halted, Ordering::SeqCst);
            unsafe { (*self.done).part_done() };
        }
    }

    /// Keeps its jobs itself (as a store keeps what it owes), since glommio
    /// never drops the pending tasks of a dead executor.
    struct Halting {
        halted: Arc<std::sync::atomic::AtomicBool>,
        held: std::cell::RefCell<Vec<Watched>>,
    }
    impl ShardService for Halting {
        type Job = Watched;
        fn handle(this: &Rc<Self>, job: Watched) {
            this.held.borrow_mut().push(job);
            // A task waits forever; another panics meanwhile.
            glommio::spawn_local(glommio::timer::sleep(Duration::from_secs(3600))).detach();
            glommio::spawn_local(async {
                glommio::timer::sleep(Duration::from_millis(5)).await;
                panic!("test: another task panicked");
            })
            .detach();
        }
        fn halt(this: &Rc<Self>) {
            this.halted.store(true, Ordering::SeqCst);
            this.held.borrow_mut().clear();
        }
    }

    /// After a panic the service is halted, on its thread: the place where a
    /// store stops its RDMA READs and then answers what its tasks owed.
    #[test]
    fn a_panicked_shard_is_halted_and_answers_what_it_holds() {
        let halted = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let h = Arc::clone(&halted);
        let runtime = Runtime::start(sites(1), RuntimeOptions::default(), move |_| {
            Ok(Halting {
                halted: Arc::clone(&h),
                held: Default::default(),
            })
        })
        .unwrap();
        let done = BatchCompletion::new(1);
        let dropped_after_halt = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let job = Watched {
            halted: Arc::clone(&halted),
            dropped_after_halt: Arc::clone(&dropped_after_halt),
            done: &done,
        };
        assert!(runtime.submit(0, job, Duration::from_secs(5)).is_ok());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done.is_done() {
            assert!(Instant::now() < deadline, "the job was never answered");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            dropped_after_halt.load(Ordering::SeqCst),
            "answered by the halt"
        );
        runtime.shutdown();
    }
}
