//! `serve`'s log writer: lines are formatted on the thread that logs them and written to
//! stderr by a thread of their own, so no request waits on a write.
//!
//! **Batches per worker.** A runtime worker keeps the lines it logs in a batch of its
//! own, and hands the batch to the writer thread when it holds [`BATCH_BYTES`], when the
//! worker runs out of work (tokio's park hook calls [`LineWriter::park`]), and at the
//! latest when the writer thread next sweeps the workers' batches (every
//! [`SWEEP_INTERVAL`]). A saturated worker hands over some thirty audit lines at once
//! instead of one: one lock, one wake-up of the writer thread and one `write` for all of
//! them, where a hand-over per line woke the writer for each (it spun and yielded before
//! it slept, on the cores the requests need). An idle worker hands its lines over as soon
//! as it has nothing else to do, so a line waits no longer than the work the worker was
//! busy with. Every other thread (the blocking pool's, the CLI's, the exporter's) hands
//! each line over as it logs it.
//!
//! Lines of one thread keep their order; lines of two workers may reach stderr in the
//! order of their batches rather than of their times, by at most a batch (every line
//! carries its own time).
//!
//! **Bounded.** What waits for the writer thread is bounded in bytes (`limit`, counting a
//! batch until it is written); past it, [`LogOverflow`] decides: `block` makes the logging
//! thread wait for room, `drop` drops the batch and counts its lines. Each worker's batch
//! holds at most [`BATCH_BYTES`] and one line more.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::LogOverflow;

/// How many bytes of lines a worker gathers before it hands them over: about thirty
/// audit lines, a few microseconds' copy.
pub(crate) const BATCH_BYTES: usize = 16 * 1024;

/// How often the writer thread takes what the workers gathered and did not hand over
/// (a worker that stays busy and logs little): the longest a line can wait.
pub(crate) const SWEEP_INTERVAL: Duration = Duration::from_millis(100);

/// A lock that a panic elsewhere does not spoil: what it guards (bytes and counts) is
/// consistent between statements.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn lines_in(batch: &[u8]) -> u64 {
    let n = batch.iter().filter(|b| **b == b'\n').count();
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// What the loggers and the writer thread share.
#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// The writer thread waits here for batches.
    ready: Condvar,
    /// With `block`, loggers wait here for room.
    room: Condvar,
    overflow: LogOverflow,
    /// Bytes that may wait for the writer thread, batches in its hands included.
    limit: usize,
    dropped: AtomicU64,
    /// The workers' batches, which the writer thread sweeps.
    gathered: Mutex<Vec<Arc<Mutex<Vec<u8>>>>>,
}

#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<Vec<u8>>,
    /// Bytes waiting or being written.
    bytes: usize,
    /// The writer thread sleeps (a hand-over wakes it).
    writer_asleep: bool,
    /// Loggers waiting for room.
    blocked: usize,
    /// The guard was dropped: the writer thread writes what is left and stops.
    closed: bool,
}

impl Shared {
    /// Hand `batch` (whole lines) to the writer thread, or wait for room, or drop it.
    fn hand_over(&self, batch: Vec<u8>) {
        if batch.is_empty() {
            return;
        }
        let mut queue = lock(&self.queue);
        // a batch larger than the limit still goes through when nothing else waits
        while queue.bytes > 0 && queue.bytes.saturating_add(batch.len()) > self.limit && !queue.closed {
            if self.overflow == LogOverflow::Drop {
                drop(queue);
                self.dropped.fetch_add(lines_in(&batch), Ordering::Relaxed);
                return;
            }
            queue.blocked += 1;
            queue = self.room.wait(queue).unwrap_or_else(PoisonError::into_inner);
            queue.blocked -= 1;
        }
        if queue.closed {
            // logged after the writer stopped (the process is ending): nowhere to go
            drop(queue);
            self.dropped.fetch_add(lines_in(&batch), Ordering::Relaxed);
            return;
        }
        queue.bytes = queue.bytes.saturating_add(batch.len());
        queue.waiting.push_back(batch);
        let wake = std::mem::take(&mut queue.writer_asleep);
        drop(queue);
        if wake {
            self.ready.notify_one();
        }
    }

    /// Queue what every worker gathered (the sweep). A worker hands a full batch over
    /// before it gathers the next line, so what the sweep finds comes after everything
    /// that worker handed over, and goes behind it.
    fn sweep(&self) {
        for slot in lock(&self.gathered).iter() {
            let mut lines = lock(slot);
            if lines.is_empty() {
                continue;
            }
            let batch = lines.clone();
            lines.clear();
            // the worker's lock is held until its lines are queued, so that nothing it
            // gathers next can be queued before them
            let mut queue = lock(&self.queue);
            queue.bytes = queue.bytes.saturating_add(batch.len());
            queue.waiting.push_back(batch);
        }
    }

    /// The writer thread: write what waits, in the order it was handed over, the
    /// batches that waited together in one write (`sink` buffers); flush when nothing
    /// is left waiting; sweep the workers' batches every `sweep`, and once more when the
    /// guard is dropped.
    fn write_to(&self, mut sink: impl Write, sweep: Duration) {
        let mut swept = Instant::now();
        loop {
            let closing = lock(&self.queue).closed;
            if closing || swept.elapsed() >= sweep {
                self.sweep();
                swept = Instant::now();
            }
            let waiting = std::mem::take(&mut lock(&self.queue).waiting);
            let mut written = 0_usize;
            for batch in &waiting {
                // stderr that fails has no one to tell: the line is lost either way
                let _ = sink.write_all(batch);
                written = written.saturating_add(batch.len());
            }
            drop(waiting);
            let _ = sink.flush();
            let mut queue = lock(&self.queue);
            queue.bytes = queue.bytes.saturating_sub(written);
            if queue.blocked > 0 {
                self.room.notify_all();
            }
            if !queue.waiting.is_empty() {
                continue;
            }
            if closing {
                return;
            }
            if !queue.closed {
                queue.writer_asleep = true;
                let wait = sweep.saturating_sub(swept.elapsed());
                queue = self.ready.wait_timeout(queue, wait).unwrap_or_else(PoisonError::into_inner).0;
                queue.writer_asleep = false;
            }
        }
    }
}

/// A worker thread's batch, and the writer it belongs to.
#[derive(Debug)]
struct ThreadBatch {
    shared: Arc<Shared>,
    lines: Arc<Mutex<Vec<u8>>>,
}

impl Drop for ThreadBatch {
    /// The thread ends: hand over what it gathered, and stop being swept.
    fn drop(&mut self) {
        let lines = std::mem::take(&mut *lock(&self.lines));
        lock(&self.shared.gathered).retain(|slot| !Arc::ptr_eq(slot, &self.lines));
        self.shared.hand_over(lines);
    }
}

thread_local! {
    /// This thread's batch, once it has parked as a worker of a runtime.
    static BATCH: RefCell<Option<ThreadBatch>> = const { RefCell::new(None) };
}

/// Where the subscriber writes `serve`'s lines (a `MakeWriter`): see the module.
#[derive(Debug, Clone)]
pub(crate) struct LineWriter {
    shared: Arc<Shared>,
}

/// Stops the writer thread when dropped, once it has written every line handed over
/// and every worker's batch.
#[derive(Debug)]
pub(crate) struct WriterGuard {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.ready.notify_one();
        self.shared.room.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A writer of lines to `sink` on a thread of its own (see the module): at most `limit`
/// bytes wait for it, and `overflow` says what happens past that; the thread writes
/// through a buffer of `write_bytes` and sweeps the workers' batches every `sweep`.
pub(crate) fn background_writer<W: Write + Send + 'static>(
    sink: W,
    overflow: LogOverflow,
    limit: usize,
    write_bytes: usize,
    sweep: Duration,
) -> std::io::Result<(LineWriter, WriterGuard)> {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::default()),
        ready: Condvar::new(),
        room: Condvar::new(),
        overflow,
        limit,
        dropped: AtomicU64::new(0),
        gathered: Mutex::new(Vec::new()),
    });
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("authz-log-writer".into())
            .spawn(move || shared.write_to(std::io::BufWriter::with_capacity(write_bytes, sink), sweep))?
    };
    Ok((LineWriter { shared: shared.clone() }, WriterGuard { shared, thread: Some(thread) }))
}

impl LineWriter {
    /// Lines dropped so far (`LogOverflow::Drop`, or logged after the writer stopped).
    pub(crate) fn dropped_lines(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// This thread is a runtime worker about to park: from now on it gathers its lines
    /// in a batch of its own, and now hands over what it gathered.
    pub(crate) fn park(&self) {
        let handed = BATCH.with(|cell| {
            let Ok(mut batch) = cell.try_borrow_mut() else { return Vec::new() };
            match &*batch {
                Some(own) if Arc::ptr_eq(&own.shared, &self.shared) => {
                    let mut lines = lock(&own.lines);
                    // a copy of what was gathered: the batch keeps its capacity
                    let handed = lines.clone();
                    lines.clear();
                    handed
                }
                _ => {
                    let lines = Arc::new(Mutex::new(Vec::with_capacity(BATCH_BYTES)));
                    lock(&self.shared.gathered).push(lines.clone());
                    // a batch of another writer (tests) is handed over to it as it goes
                    *batch = Some(ThreadBatch { shared: self.shared.clone(), lines });
                    Vec::new()
                }
            }
        });
        self.shared.hand_over(handed);
    }

    /// One formatted line (the subscriber writes each line in one call).
    fn line(&self, line: &[u8]) {
        let full = BATCH.with(|cell| {
            let Ok(batch) = cell.try_borrow() else { return Err(()) };
            match &*batch {
                Some(own) if Arc::ptr_eq(&own.shared, &self.shared) => {
                    let mut lines = lock(&own.lines);
                    lines.extend_from_slice(line);
                    if lines.len() < BATCH_BYTES {
                        return Ok(None);
                    }
                    let handed = lines.clone();
                    lines.clear();
                    Ok(Some(handed))
                }
                _ => Err(()),
            }
        });
        match full {
            Ok(None) => {}
            Ok(Some(batch)) => self.shared.hand_over(batch),
            Err(()) => self.shared.hand_over(line.to_vec()),
        }
    }
}

impl Write for &LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LineWriter {
    type Writer = &'a LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// A sink that holds every write until it is opened, then keeps what it is given.
    #[derive(Clone, Default)]
    struct Gate {
        open: Arc<(Mutex<bool>, Condvar)>,
        written: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicUsize>,
    }

    impl Gate {
        fn opened() -> Self {
            let gate = Self::default();
            gate.open();
            gate
        }

        fn open(&self) {
            let (lock, cvar) = &*self.open;
            *lock.lock().unwrap() = true;
            cvar.notify_all();
        }

        fn lines(&self) -> usize {
            self.written.lock().unwrap().iter().filter(|b| **b == b'\n').count()
        }

        fn text(&self) -> String {
            String::from_utf8(self.written.lock().unwrap().clone()).unwrap()
        }

        /// Wait up to `within` for `n` lines; how many there were.
        fn wait_for(&self, n: usize, within: Duration) -> usize {
            let deadline = Instant::now() + within;
            while self.lines() < n && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
            self.lines()
        }
    }

    impl Write for Gate {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            let (lock, cvar) = &*self.open;
            let _open = cvar.wait_while(lock.lock().unwrap(), |open| !*open).unwrap();
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.written.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    const NEVER: Duration = Duration::from_secs(3_600);

    fn writer(gate: &Gate, overflow: LogOverflow, limit: usize, write_bytes: usize) -> (LineWriter, WriterGuard) {
        background_writer(gate.clone(), overflow, limit, write_bytes, NEVER).unwrap()
    }

    /// With `drop`, a sink that does not take lines never holds up the thread that logs:
    /// what does not fit is dropped and counted. With `block`, every line arrives.
    #[test]
    fn a_stalled_sink_drops_and_counts_or_holds_every_line() {
        let gate = Gate::default();
        // 128 bytes may wait (16 lines of 8 bytes), and the writer's buffer of 64 bytes
        // holds the lines it took before its write to the stalled sink blocked
        let (writer, guard) = self::writer(&gate, LogOverflow::Drop, 128, 64);
        let started = Instant::now();
        for i in 0..1_000 {
            // one write per line, as the subscriber writes each formatted line
            (&writer).write_all(format!("line {i:03}\n").as_bytes()).unwrap();
        }
        // nothing was written yet, and the thread that logged did not wait for the sink
        assert!(started.elapsed() < Duration::from_secs(5));
        let dropped = usize::try_from(writer.dropped_lines()).unwrap();
        assert!(dropped >= 1_000 - 16 - 8 - 1, "{dropped} dropped");
        gate.open();
        drop(guard);
        assert_eq!(gate.lines() + dropped, 1_000, "every line was written or counted");

        let gate = Gate::default();
        let (writer, guard) = self::writer(&gate, LogOverflow::Block, 128, 64);
        let opener = {
            let gate = gate.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                gate.open();
            })
        };
        for i in 0..1_000 {
            (&writer).write_all(format!("line {i:03}\n").as_bytes()).unwrap();
        }
        assert_eq!(writer.dropped_lines(), 0);
        drop(guard);
        opener.join().unwrap();
        assert_eq!(gate.lines(), 1_000, "block loses nothing");
    }

    /// Lines that waited together reach the sink in one write, not one write each, and
    /// a line that waits alone is written at once.
    #[test]
    fn lines_that_waited_together_are_written_together() {
        let gate = Gate::default();
        let (writer, guard) = writer(&gate, LogOverflow::Block, 1 << 20, 64 * 1024);
        for i in 0..1_000 {
            (&writer).write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        gate.open();
        drop(guard);
        assert_eq!(gate.lines(), 1_000);
        let writes = gate.writes.load(Ordering::Relaxed);
        assert!(writes <= 4, "1,000 lines that waited together took {writes} writes");

        // alone, with the sink open: written without waiting for more
        let gate = Gate::opened();
        let (writer, guard) = self::writer(&gate, LogOverflow::Block, 1 << 20, 64 * 1024);
        (&writer).write_all(b"alone\n").unwrap();
        assert_eq!(gate.wait_for(1, Duration::from_secs(5)), 1, "a line is not held back for company");
        drop(guard);
    }

    /// A worker gathers its lines: they wait until it parks, or until they fill a batch,
    /// and arrive in the order it logged them.
    #[test]
    fn a_worker_hands_its_lines_over_when_it_parks_or_its_batch_fills() {
        let gate = Gate::opened();
        let (writer, guard) = writer(&gate, LogOverflow::Block, 1 << 20, 64 * 1024);
        let worker = {
            let writer = writer.clone();
            let gate = gate.clone();
            std::thread::spawn(move || {
                writer.park(); // the first park: from now on this thread gathers
                for i in 0..10 {
                    (&writer).write_all(format!("gathered {i}\n").as_bytes()).unwrap();
                }
                // gathered, not handed over: the writer never sweeps in this test
                assert_eq!(gate.wait_for(1, Duration::from_millis(300)), 0, "lines were handed over one by one");
                writer.park();
                assert_eq!(gate.wait_for(10, Duration::from_secs(5)), 10, "parking hands the lines over");

                // a full batch goes without a park
                let line = format!("{}\n", "x".repeat(99));
                let lines = BATCH_BYTES / line.len() + 1;
                for _ in 0..lines {
                    (&writer).write_all(line.as_bytes()).unwrap();
                }
                assert_eq!(gate.wait_for(10 + lines, Duration::from_secs(5)), 10 + lines, "a full batch waits");
            })
        };
        worker.join().unwrap();
        drop(guard);
        let text = gate.text();
        let order: Vec<&str> = text.lines().take(10).collect();
        let expected: Vec<String> = (0..10).map(|i| format!("gathered {i}")).collect();
        assert_eq!(order, expected);
    }

    /// What a busy worker gathered and did not hand over is swept by the writer thread.
    #[test]
    fn the_writer_sweeps_what_a_busy_worker_gathered() {
        let gate = Gate::opened();
        let (writer, guard) =
            background_writer(gate.clone(), LogOverflow::Block, 1 << 20, 64 * 1024, Duration::from_millis(20)).unwrap();
        let busy = {
            let writer = writer.clone();
            let gate = gate.clone();
            std::thread::spawn(move || {
                writer.park();
                (&writer).write_all(b"a line of a busy worker\n").unwrap();
                // never parks again while it waits
                gate.wait_for(1, Duration::from_secs(5))
            })
        };
        assert_eq!(busy.join().unwrap(), 1, "the sweep took the line");
        drop(guard);
    }

    /// Many workers and plain threads at once, the writer stopped while they still hold
    /// lines: every line is written exactly once, each thread's in its own order.
    #[test]
    fn every_line_of_every_thread_is_written_once() {
        let gate = Gate::opened();
        let (writer, guard) = writer(&gate, LogOverflow::Block, 64 * 1024, 4 * 1024);
        let threads: Vec<_> = (0..6)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    if t % 2 == 0 {
                        writer.park();
                    }
                    for i in 0..2_000 {
                        (&writer).write_all(format!("{t} {i}\n").as_bytes()).unwrap();
                        if t % 2 == 0 && i % 700 == 0 {
                            writer.park();
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        drop(guard);
        let text = gate.text();
        let mut next = [0_usize; 6];
        for line in text.lines() {
            let (t, i) = line.split_once(' ').unwrap();
            let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[t], "thread {t}'s lines out of order or twice");
            next[t] += 1;
        }
        assert_eq!(next, [2_000; 6], "every line written");
        assert_eq!(writer.dropped_lines(), 0);
    }

    /// A worker's batch dropped whole (`drop`) counts every line in it.
    #[test]
    fn a_dropped_batch_counts_its_lines() {
        let gate = Gate::default();
        let (writer, guard) = writer(&gate, LogOverflow::Drop, 1_024, 64);
        // fill what may wait, from a plain thread, while the sink is stalled
        for i in 0..200 {
            (&writer).write_all(format!("plain {i:03}\n").as_bytes()).unwrap();
        }
        let before = writer.dropped_lines();
        let worker = {
            let writer = writer.clone();
            std::thread::spawn(move || {
                writer.park();
                for i in 0..20 {
                    (&writer).write_all(format!("batch {i:03}\n").as_bytes()).unwrap();
                }
                writer.park();
            })
        };
        worker.join().unwrap();
        assert_eq!(writer.dropped_lines() - before, 20, "the batch's twenty lines, counted");
        gate.open();
        drop(guard);
        assert_eq!(u64::try_from(gate.lines()).unwrap() + writer.dropped_lines(), 220);
    }

    /// In a runtime whose park hook is the writer's, lines logged by tasks are written
    /// once the workers run out of work, with no sweep.
    #[test]
    fn a_runtime_with_the_park_hook_hands_lines_over_when_idle() {
        let gate = Gate::opened();
        let (writer, guard) = writer(&gate, LogOverflow::Block, 1 << 20, 64 * 1024);
        let hook = writer.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .on_thread_park(move || hook.park())
            .build()
            .unwrap();
        // first, every worker parks once (and gathers from then on)
        std::thread::sleep(Duration::from_millis(50));
        let logged = runtime.block_on(async {
            let tasks: Vec<_> = (0..100)
                .map(|i| {
                    let writer = writer.clone();
                    tokio::spawn(async move { (&writer).write_all(format!("task {i}\n").as_bytes()).unwrap() })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            100
        });
        assert_eq!(gate.wait_for(logged, Duration::from_secs(5)), logged);
        drop(runtime);
        drop(guard);
        assert_eq!(gate.lines(), logged, "no line twice");
    }
}
