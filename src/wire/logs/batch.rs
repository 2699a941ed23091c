//! The server's log lines reach stdout in batches, not one `write` each.
//!
//! Every admission logs a line; written straight to stdout, each is a system call on the
//! request's path (a measurable share of an admission's CPU under load). Lines collect in
//! memory instead, and a logging thread writes them out at most [`FLUSH_INTERVAL`] after the
//! first one arrives; past [`FLUSH_SIZE`] pending bytes the thread that logs writes the batch
//! itself, so a stalled stdout slows logging down rather than growing memory. The server
//! flushes on shutdown ([`LogGuard`](crate::telemetry::LogGuard)); `panic = "abort"` loses at
//! most the last interval's lines, and the panic message itself goes to stderr unbuffered.
//!
//! Why not `tracing-appender`'s non-blocking writer: it copies each line into its own `Vec`,
//! sends it over a bounded channel to a worker thread that wakes for it, writes it with one
//! `write_all` and flushes whenever the channel runs dry. At the webhook's rate the channel runs
//! dry between most lines, so stdout still gets about one `write` per line, now plus an
//! allocation and a thread wake-up; and the process is pinned to one core under
//! `bench/webhook-load.sh`, so the worker's system calls are the server's. It also drops lines
//! when its queue is full (by default) where this batcher makes the logging thread write. Its
//! guard-based flushing would replace [`LogGuard`](crate::telemetry::LogGuard) but not the
//! batching, which is what holds the numbers; so the batcher stays (some 150 lines with its
//! documentation) and no dependency is added.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// How long a line may wait in memory before it is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(50);
/// Pending bytes at which the logging thread writes the batch itself.
pub const FLUSH_SIZE: usize = 64 * 1024;

/// Log lines on their way to a sink (stdout for the server).
pub struct Batcher {
    pending: Mutex<Vec<u8>>,
    wake: Condvar,
    /// The sink, and the buffer the last batch was written from (kept for its capacity).
    /// Taken before `pending` by whoever writes, so batches reach the sink in order.
    out: Mutex<(Box<dyn Write + Send>, Vec<u8>)>,
    /// The logging thread could not start: every line is written as it comes.
    direct: AtomicBool,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("pending_bytes", &lock(&self.pending).len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves complete lines behind (each is appended whole).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Batcher {
    pub fn new(sink: Box<dyn Write + Send>) -> Arc<Self> {
        Arc::new(Batcher {
            pending: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            out: Mutex::new((sink, Vec::new())),
            direct: AtomicBool::new(false),
        })
    }

    /// Starts the logging thread that writes pending lines out. If it cannot start, lines
    /// are written as they come, as without batching.
    pub fn start(self: &Arc<Self>) -> io::Result<()> {
        let me = self.clone();
        let started = std::thread::Builder::new()
            .name("kura-logs".into())
            .spawn(move || me.run());
        if started.is_err() {
            self.direct.store(true, Ordering::Relaxed);
            let _ = self.flush();
        }
        started.map(drop)
    }

    /// Queues one or more complete lines.
    pub fn push(&self, lines: &[u8]) -> io::Result<()> {
        let mut pending = lock(&self.pending);
        let was_empty = pending.is_empty();
        pending.extend_from_slice(lines);
        let full = pending.len() >= FLUSH_SIZE || self.direct.load(Ordering::Relaxed);
        drop(pending);
        if full {
            return self.flush();
        }
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Writes every pending line to the sink now.
    pub fn flush(&self) -> io::Result<()> {
        let mut out = lock(&self.out);
        let (sink, batch) = &mut *out;
        std::mem::swap(batch, &mut *lock(&self.pending));
        if batch.is_empty() {
            return Ok(());
        }
        let written = sink.write_all(batch).and_then(|()| sink.flush());
        batch.clear();
        written
    }

    fn run(&self) {
        loop {
            let mut pending = lock(&self.pending);
            while pending.is_empty() {
                pending = self
                    .wake
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            drop(pending);
            // Lines that arrive meanwhile join this batch.
            std::thread::sleep(FLUSH_INTERVAL);
            // A sink that fails (stdout closed) has nobody left to tell.
            let _ = self.flush();
        }
    }
}

/// tracing-subscriber's writer for a [`Batcher`]: each event arrives as one complete line.
#[derive(Debug, Clone)]
pub struct Batched(pub Arc<Batcher>);

/// One event's writer.
#[derive(Debug)]
pub struct Line<'a>(&'a Batcher);

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.push(buf)?;
        Ok(buf.len())
    }

    /// Lines are written by the logging thread, in order; flushing one event's writer would
    /// defeat the batching.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Batched {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A sink that records what reached it, and how many writes it took.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<(Vec<u8>, usize)>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let mut s = self.0.lock().expect("lock");
            s.0.extend_from_slice(b);
            s.1 += 1;
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("lock").0.clone()).expect("utf-8")
        }
        fn writes(&self) -> usize {
            self.0.lock().expect("lock").1
        }
    }

    fn line(i: usize) -> String {
        format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(i % 97))
    }

    #[test]
    fn lines_wait_for_a_flush_then_arrive_whole_and_in_order_in_one_write() {
        let sink = Sink::default();
        let b = Batcher::new(Box::new(sink.clone()));
        let expected: String = (0..100).map(line).collect();
        for i in 0..100 {
            b.push(line(i).as_bytes()).expect("push");
        }
        assert_eq!(sink.text(), "", "nothing is written before a flush");
        b.flush().expect("flush");
        assert_eq!(sink.text(), expected);
        assert_eq!(sink.writes(), 1, "one write for the batch");
        b.flush().expect("an empty flush");
        assert_eq!(sink.writes(), 1, "nothing to write, no write");
    }

    #[test]
    fn a_full_batch_is_written_by_the_thread_that_logs() {
        let sink = Sink::default();
        let b = Batcher::new(Box::new(sink.clone()));
        let mut expected = String::new();
        let mut i = 0;
        while expected.len() < FLUSH_SIZE {
            expected.push_str(&line(i));
            b.push(line(i).as_bytes()).expect("push");
            i += 1;
        }
        // No logging thread runs: the push that filled the batch wrote it.
        assert_eq!(sink.text(), expected);
    }

    #[test]
    fn the_logging_thread_writes_lines_from_many_threads_without_a_flush() {
        let sink = Sink::default();
        let b = Batcher::new(Box::new(sink.clone()));
        b.start().expect("thread starts");
        let writers: Vec<_> = (0..4)
            .map(|t| {
                let w = Batched(b.clone());
                std::thread::spawn(move || {
                    use tracing_subscriber::fmt::MakeWriter;
                    for i in 0..500 {
                        w.make_writer()
                            .write_all(format!("t{t} {i}\n").as_bytes())
                            .expect("write");
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.text().lines().count() < 2000 {
            assert!(Instant::now() < deadline, "lines never reached the sink");
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = sink.text();
        for t in 0..4 {
            let mine: Vec<usize> = text
                .lines()
                .filter_map(|l| l.strip_prefix(&format!("t{t} ")))
                .map(|n| n.parse().expect("whole line"))
                .collect();
            assert_eq!(mine, (0..500).collect::<Vec<_>>(), "thread {t}'s lines");
        }
        assert!(
            sink.writes() < 2000,
            "lines were batched ({} writes)",
            sink.writes()
        );
    }
}
