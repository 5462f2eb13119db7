//! The data plane's cores: a thread per core, each running a single-threaded tokio
//! runtime that accepts and serves connections of its own (the model of nginx's worker
//! processes and of Pingora's runtimes without work stealing).
//!
//! Why not one work-stealing runtime: its workers share one reactor and hand ready
//! connections to each other, so on two cores a forwarded request crossed threads
//! several times (a wake-up, a steal, the reactor's turn) and the sidecar spent about
//! twice the CPU per request it spends on one core (`bench/README.md`, "A runtime per
//! core"). Here a connection is accepted, read, decided, forwarded and answered on one
//! thread, and its upstream connection is that thread's too.
//!
//! - **Placing.** Every core accepts from its own copy of the listening socket, and
//!   keeps what it accepted unless another core has fewer open connections by more
//!   than one: then the connection is handed to the core with the fewest
//!   ([`Cores::seat_from`]; ties go round). Keep-alive connections are few and long, and
//!   50 of them opened at once split unevenly between cores that only accepted for
//!   themselves, the busier core setting the pace (measured); handed over by count, the
//!   cores hold as many. Connections opened and closed by the thousand mostly stay
//!   where they were accepted, so no single thread accepts for all (a hand-over costs
//!   two `epoll_ctl` calls and a wake-up).
//! - **What stays on a core.** A connection, its requests, the tasks hyper spawns for
//!   it (HTTP/2 streams), its timers and the upstream connections it opens (registered
//!   with that core's reactor, and given only to requests on that core: see
//!   `proxy::owned`). Shared state (the snapshot, the caches, the limits) is shared
//!   across cores as before.
//! - **What does not.** The admin listener, reloads, key and directory refreshes and
//!   every other background task run on the process's main runtime; blocking work (a
//!   snapshot build, an access query) on the blocking pools.
//! - **Stopping.** [`Cores::stop`] (or dropping [`Cores`]) ends each core's runtime,
//!   which drops whatever is still running there; the listeners drain first.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

thread_local! {
    /// The index of the core this thread runs, if it runs one.
    static CORE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The core the calling thread runs (`None` off the cores: the main runtime, the
/// blocking pools, tests).
#[must_use]
pub fn current() -> Option<usize> {
    CORE.with(Cell::get)
}

/// The running cores.
#[derive(Debug)]
pub struct Cores {
    handles: Vec<Handle>,
    /// Each core's open connections (see [`Seat`]).
    open: Arc<[AtomicUsize]>,
    /// Where the next look for the least loaded core starts, so that ties go round.
    next: AtomicUsize,
    /// Dropping one's sender ends its core (a lock: stopping takes them all, once).
    stops: Mutex<Vec<oneshot::Sender<()>>>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl Cores {
    /// Start `count` cores (at least one), named `authz-core-<i>`.
    ///
    /// # Errors
    ///
    /// A runtime or a thread that cannot be started (the ones started are stopped).
    pub fn start(count: usize) -> std::io::Result<Self> {
        let (mut handles, mut stops, mut threads) = (Vec::new(), Vec::new(), Vec::new());
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (stop, stopped) = oneshot::channel::<()>();
            handles.push(runtime.handle().clone());
            stops.push(stop);
            let thread = std::thread::Builder::new().name(format!("authz-core-{index}")).spawn(move || {
                CORE.with(|core| core.set(Some(index)));
                // tasks spawned through the handle run while this blocks; a dropped
                // sender ends it, and dropping the runtime drops what is left
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })?;
            threads.push(thread);
        }
        let open = (0..handles.len()).map(|_| AtomicUsize::new(0)).collect();
        Ok(Self { handles, open, next: AtomicUsize::new(0), stops: Mutex::new(stops), threads: Mutex::new(threads) })
    }

    /// How many cores run.
    #[must_use]
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Never: there is at least one core.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Run `future` on core `index` (modulo their number).
    pub fn spawn<F>(&self, index: usize, future: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        #[expect(clippy::indexing_slicing, reason = "the index is taken modulo the length, which is at least one")]
        self.handles[index % self.handles.len()].spawn(future)
    }

    /// A seat for a new connection on the core with the fewest open connections; the
    /// connection holds it until it ends.
    pub fn seat(&self) -> Seat {
        let count = self.open.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let core = (0..count)
            .map(|step| (start.wrapping_add(step)) % count)
            .min_by_key(|&core| self.open.get(core).map_or(usize::MAX, |open| open.load(Ordering::Relaxed)))
            .unwrap_or(0);
        if let Some(open) = self.open.get(core) {
            open.fetch_add(1, Ordering::Relaxed);
        }
        Seat { open: self.open.clone(), core }
    }

    /// A seat on core `here`, which accepted the connection, unless another core has
    /// fewer open connections by more than one: then on the core with the fewest.
    pub fn seat_from(&self, here: usize) -> Seat {
        let open = |core: usize| self.open.get(core).map_or(usize::MAX, |open| open.load(Ordering::Relaxed));
        let fewest = (0..self.open.len()).map(open).min().unwrap_or(0);
        if open(here) <= fewest.saturating_add(1) {
            if let Some(count) = self.open.get(here) {
                count.fetch_add(1, Ordering::Relaxed);
            }
            return Seat { open: self.open.clone(), core: here };
        }
        self.seat()
    }

    /// End every core and wait for its thread (off the async workers).
    pub async fn stop(&self) {
        self.end();
        let threads = self.threads.lock().map(|mut threads| std::mem::take(&mut *threads)).unwrap_or_default();
        let joined = tokio::task::spawn_blocking(move || {
            for thread in threads {
                if thread.join().is_err() {
                    tracing::error!("a data-plane core panicked");
                }
            }
        });
        let _ = joined.await;
    }
}

impl Cores {
    fn end(&self) {
        if let Ok(mut stops) = self.stops.lock() {
            stops.clear();
        }
    }
}

impl Drop for Cores {
    /// The cores end; their threads are not waited for here (see [`Cores::stop`]).
    fn drop(&mut self) {
        self.end();
    }
}

/// A connection's place on a core, counted until it is dropped.
#[derive(Debug)]
pub struct Seat {
    open: Arc<[AtomicUsize]>,
    core: usize,
}

impl Seat {
    /// The core to serve the connection on.
    #[must_use]
    pub fn core(&self) -> usize {
        self.core
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(open) = self.open.get(self.core) {
            open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_core_runs_its_own_thread_and_knows_its_index() {
        let cores = Cores::start(3).unwrap();
        assert_eq!(cores.len(), 3);
        assert_eq!(current(), None, "the test's runtime is not a core");
        let mut seen = Vec::new();
        for index in 0..4 {
            let ran = cores.spawn(index, async { (current(), std::thread::current().name().map(str::to_owned)) });
            seen.push(ran.await.unwrap());
        }
        assert_eq!(seen[0], (Some(0), Some("authz-core-0".to_owned())));
        assert_eq!(seen[2], (Some(2), Some("authz-core-2".to_owned())));
        assert_eq!(seen[3].0, Some(0), "an index past the last wraps around");
        cores.stop().await;
    }

    #[tokio::test]
    async fn stopping_the_cores_drops_what_still_runs_on_them() {
        let cores = Cores::start(1).unwrap();
        let (dropped, was_dropped) = oneshot::channel::<()>();
        let forever = cores.spawn(0, async move {
            let _dropped = dropped;
            std::future::pending::<()>().await;
        });
        cores.stop().await;
        assert!(was_dropped.await.is_err(), "the task's state was dropped with its core");
        assert!(forever.await.unwrap_err().is_cancelled());
    }

    #[test]
    fn a_connection_goes_to_the_core_with_the_fewest_and_ties_go_round() {
        let cores = Cores::start(3).unwrap();
        let seats: Vec<Seat> = (0..6).map(|_| cores.seat()).collect();
        let mut per_core = [0; 3];
        for seat in &seats {
            per_core[seat.core()] += 1;
        }
        assert_eq!(per_core, [2, 2, 2], "evenly, whatever the order");
        // the connections of core 1 end: the next two go there
        let (ended, kept): (Vec<Seat>, Vec<Seat>) = seats.into_iter().partition(|seat| seat.core() == 1);
        drop(ended);
        assert_eq!((cores.seat().core(), cores.seat().core()), (1, 1));
        // a seat dropped is counted out: core 1 is empty again, and first
        assert_eq!(cores.seat().core(), 1);
        drop(kept);
        let firsts: std::collections::HashSet<usize> = (0..3).map(|_| cores.seat().core()).collect();
        assert_eq!(firsts.len(), 3, "with every core empty, ties go round");
    }

    #[test]
    fn a_core_keeps_what_it_accepted_unless_another_has_fewer_by_more_than_one() {
        let cores = Cores::start(2).unwrap();
        let first = cores.seat_from(0);
        let second = cores.seat_from(0);
        assert_eq!((first.core(), second.core()), (0, 0), "one more than the fewest is kept");
        let third = cores.seat_from(0);
        assert_eq!(third.core(), 1, "two more is handed over");
        drop((first, second));
        // core 0 has none open now, core 1 one: it keeps one more, not two
        let fourth = cores.seat_from(1);
        assert_eq!(fourth.core(), 1);
        assert_eq!(cores.seat_from(1).core(), 0, "and the other way");
        drop((third, fourth));
    }

    #[test]
    fn zero_cores_start_one() {
        let cores = Cores::start(0).unwrap();
        assert_eq!(cores.len(), 1);
        assert!(!cores.is_empty());
    }
}
