//! Dynamic batching: a bounded queue of tokenized requests, drained by model threads.
//!
//! - HTTP handlers [`Queue::push`] a [`Job`] and await its reply; a full queue refuses at once
//!   (the handler answers 429 with `Retry-After`), so waiting never grows without bound.
//! - A model thread takes the next batch with [`Queue::next_batch`]: the oldest jobs, as many as
//!   fit `max_batch_size` sequences and `max_batch_tokens` padded tokens ([`batch_len`]). When the
//!   batch is not full it waits for more until the oldest job has waited `max_delay`.
//! - Inside a batch, sequences run sorted by length in runs padded to their own longest
//!   ([`plan_runs`]), so one long text does not pad a whole batch.
//!
//! The planning functions are pure; the queue is a mutex and a condition variable. Model compute
//! never runs on the async runtime.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::protocol::Prediction;

/// Limits on what one batch holds.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// Sequences per model run.
    pub max_batch_size: usize,
    /// Padded tokens (sequences × longest) per model run.
    pub max_batch_tokens: usize,
    /// Longest the oldest request waits for others to batch with.
    pub max_delay: Duration,
}

/// Largest share of a run's tokens that may be padding before a longer sequence starts a new run.
pub const MAX_PADDING_SHARE: f64 = 0.2;

/// What a job's requester receives: the prediction, or why the model failed.
pub type Reply = Result<Prediction, String>;

/// One request's sequences, waiting for a model thread.
pub struct Job {
    /// Token ids, one sequence per text.
    pub sequences: Vec<Vec<u32>>,
    /// When it was queued.
    pub enqueued: Instant,
    /// Where the result goes.
    pub reply: tokio::sync::oneshot::Sender<Reply>,
}

impl Job {
    fn longest(&self) -> usize {
        self.sequences.iter().map(Vec::len).max().unwrap_or(0)
    }
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The queue holds `capacity` sequences already.
    #[error("the queue is full ({0} texts waiting)")]
    Full(usize),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    Closed,
}

/// How many jobs from the front of a queue (`(sequences, longest)` each) make the next batch:
/// at least one, then more while the batch stays within `max_batch_size` sequences and
/// `max_batch_tokens` padded tokens.
pub fn batch_len(jobs: impl IntoIterator<Item = (usize, usize)>, limits: &BatchLimits) -> usize {
    let (mut count, mut sequences, mut longest) = (0, 0, 0);
    for (n, len) in jobs {
        let (s, l) = (sequences + n, longest.max(len));
        if count > 0 && (s > limits.max_batch_size || s * l > limits.max_batch_tokens) {
            break;
        }
        (count, sequences, longest) = (count + 1, s, l);
    }
    count
}

/// Runs over `lengths` sorted ascending: consecutive ranges of at most `max_size` sequences and
/// `max_tokens` padded tokens, a new run starting where the next sequence would make more than
/// [`MAX_PADDING_SHARE`] of the run padding.
pub fn plan_runs(lengths: &[usize], max_size: usize, max_tokens: usize) -> Vec<Range<usize>> {
    debug_assert!(lengths.is_sorted());
    let mut runs = Vec::new();
    let (mut start, mut real) = (0, 0);
    for (k, &len) in lengths.iter().enumerate() {
        let size = k - start + 1;
        let padded = size * len;
        let waste = 1.0 - (real + len) as f64 / padded.max(1) as f64;
        if k > start && (size > max_size || padded > max_tokens || waste > MAX_PADDING_SHARE) {
            runs.push(start..k);
            (start, real) = (k, 0);
        }
        real += len;
    }
    if start < lengths.len() {
        runs.push(start..lengths.len());
    }
    runs
}

struct State {
    jobs: VecDeque<Job>,
    /// Sequences in `jobs`.
    queued: usize,
    closed: bool,
}

impl State {
    /// How many of the queued jobs make the next batch ([`batch_len`]).
    fn batch_len(&self, limits: &BatchLimits) -> usize {
        batch_len(self.jobs.iter().map(|j| (j.sequences.len(), j.longest())), limits)
    }
}

/// The bounded queue between HTTP handlers and model threads.
pub struct Queue {
    state: Mutex<State>,
    arrived: Condvar,
    capacity: usize,
}

impl Queue {
    /// A queue that holds at most `capacity` sequences.
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State { jobs: VecDeque::new(), queued: 0, closed: false }),
            arrived: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most sequences it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sequences waiting.
    pub fn depth(&self) -> usize {
        self.lock().queued
    }

    /// Queues `job`, or refuses it at once when it would overfill the queue (an empty queue takes
    /// any job: the request size is bounded before it gets here) or the queue is closed.
    pub fn push(&self, job: Job) -> Result<usize, (PushError, Job)> {
        let mut state = self.lock();
        if state.closed {
            return Err((PushError::Closed, job));
        }
        let n = job.sequences.len();
        if state.queued > 0 && state.queued + n > self.capacity {
            return Err((PushError::Full(state.queued), job));
        }
        state.queued += n;
        state.jobs.push_back(job);
        let depth = state.queued;
        drop(state);
        self.arrived.notify_one();
        Ok(depth)
    }

    /// Stops taking jobs; model threads drain what is queued, then [`Queue::next_batch`] returns
    /// `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.arrived.notify_all();
    }

    /// Blocks until a batch is ready and takes it, with the queue's depth after; `None` once the
    /// queue is closed and empty.
    pub fn next_batch(&self, limits: &BatchLimits) -> Option<(Vec<Job>, usize)> {
        let mut state = self.lock();
        while state.jobs.is_empty() {
            if state.closed {
                return None;
            }
            state = self.arrived.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if !limits.max_delay.is_zero() {
            let deadline = state.jobs[0].enqueued + limits.max_delay;
            loop {
                let now = Instant::now();
                // Something is left out (the batch is full or over budget), everything queued
                // already fills it, or the oldest has waited long enough.
                let n = state.batch_len(limits);
                if n < state.jobs.len() || state.queued >= limits.max_batch_size || now >= deadline || state.closed {
                    break;
                }
                state = self.arrived.wait_timeout(state, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
                if state.jobs.is_empty() {
                    // Another model thread took them while this one waited.
                    drop(state);
                    return self.next_batch(limits);
                }
            }
        }
        let n = state.batch_len(limits);
        let batch: Vec<Job> = state.jobs.drain(..n).collect();
        state.queued -= batch.iter().map(|j| j.sequences.len()).sum::<usize>();
        let depth = state.queued;
        if !state.jobs.is_empty() {
            // Let another model thread start on what is left.
            self.arrived.notify_one();
        }
        Some((batch, depth))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: BatchLimits = BatchLimits { max_batch_size: 4, max_batch_tokens: 40, max_delay: Duration::ZERO };

    fn job(lengths: &[usize]) -> (Job, tokio::sync::oneshot::Receiver<Reply>) {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let sequences = lengths.iter().map(|&n| vec![1; n]).collect();
        (Job { sequences, enqueued: Instant::now(), reply }, rx)
    }

    #[test]
    fn a_batch_stops_at_its_size_or_token_budget_and_always_takes_one() {
        assert_eq!(batch_len([(1, 5), (1, 5), (1, 5), (1, 5), (1, 5)], &LIMITS), 4);
        assert_eq!(batch_len([(2, 5), (3, 5)], &LIMITS), 1, "2 + 3 sequences exceed 4");
        // 3 sequences padded to 12 = 36 tokens fit; a fourth padded to 12 = 48 does not.
        assert_eq!(batch_len([(1, 3), (1, 12), (1, 2), (1, 2)], &LIMITS), 3);
        assert_eq!(batch_len([(9, 50)], &LIMITS), 1, "an oversized job still runs, alone");
        assert_eq!(batch_len([], &LIMITS), 0);
    }

    #[test]
    fn runs_split_where_padding_would_dominate() {
        // Similar lengths share a run; a much longer one starts its own.
        assert_eq!(plan_runs(&[10, 10, 11, 12], 32, 1000), vec![(0..4)]);
        assert_eq!(plan_runs(&[5, 6, 40], 32, 1000), [0..2, 2..3]);
        assert_eq!(plan_runs(&[8, 8, 8, 8, 8], 2, 1000), [0..2, 2..4, 4..5]);
        assert_eq!(plan_runs(&[8, 8, 8, 8], 32, 16), [0..2, 2..4]);
        assert_eq!(plan_runs(&[], 32, 1000), Vec::<Range<usize>>::new());
        // Every run's padding share is within the bound, and runs cover everything in order.
        let lengths: Vec<usize> = (0..200).map(|k| 3 + (k * k) % 61).collect::<Vec<_>>();
        let mut sorted = lengths.clone();
        sorted.sort();
        let runs = plan_runs(&sorted, 32, 2048);
        assert_eq!(runs.first().unwrap().start, 0);
        assert_eq!(runs.last().unwrap().end, sorted.len());
        for pair in runs.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        for r in &runs {
            let run = &sorted[r.clone()];
            let padded = run.len() * run[run.len() - 1];
            let real: usize = run.iter().sum();
            assert!(run.len() <= 32 && padded <= 2048, "{r:?}");
            assert!(run.len() == 1 || 1.0 - real as f64 / padded as f64 <= MAX_PADDING_SHARE + 1e-9, "{r:?}: {run:?}");
        }
    }

    #[test]
    fn a_full_queue_refuses_and_a_closed_one_drains_then_ends() {
        let queue = Queue::new(3);
        let (a, _ra) = job(&[4, 4]);
        let (b, _rb) = job(&[4]);
        let (c, _rc) = job(&[4]);
        assert_eq!(queue.push(a).ok(), Some(2));
        assert_eq!(queue.push(b).ok(), Some(3));
        assert_eq!(queue.push(c).err().map(|e| e.0), Some(PushError::Full(3)));
        assert_eq!(queue.depth(), 3);
        queue.close();
        let (d, _rd) = job(&[1]);
        assert_eq!(queue.push(d).err().map(|e| e.0), Some(PushError::Closed));
        let (batch, depth) = queue.next_batch(&LIMITS).unwrap();
        assert_eq!((batch.len(), depth), (2, 0), "both queued jobs fit one batch of 4");
        assert!(queue.next_batch(&LIMITS).is_none());
    }

    #[test]
    fn an_empty_queue_takes_a_job_larger_than_its_capacity() {
        let queue = Queue::new(2);
        let (a, _ra) = job(&[1, 1, 1, 1, 1]);
        assert!(queue.push(a).is_ok());
    }

    #[test]
    fn a_partial_batch_waits_for_company_until_the_oldest_has_waited_max_delay() {
        let queue = std::sync::Arc::new(Queue::new(16));
        // Generous, so that a loaded machine still brings the second request in time.
        let limits = BatchLimits { max_delay: Duration::from_secs(5), ..LIMITS };
        let (a, _ra) = job(&[3]);
        queue.push(a).ok().unwrap();
        let q = queue.clone();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let (b, rb) = job(&[3]);
            q.push(b).ok().unwrap();
            rb
        });
        let (batch, _) = queue.next_batch(&limits).unwrap();
        let _rb = late.join().unwrap();
        assert_eq!(batch.len(), 2, "the second request, 50 ms later, joined the first's batch");
        // Alone, a job leaves once max_delay has passed since it was queued.
        let limits = BatchLimits { max_delay: Duration::from_millis(200), ..LIMITS };
        let (c, _rc) = job(&[3]);
        let queued = c.enqueued;
        queue.push(c).ok().unwrap();
        let (batch, _) = queue.next_batch(&limits).unwrap();
        assert_eq!(batch.len(), 1);
        assert!(queued.elapsed() >= limits.max_delay, "it waited for company");
    }

    #[test]
    fn without_a_delay_a_batch_is_what_queued_meanwhile() {
        let queue = Queue::new(16);
        for _ in 0..6 {
            let (j, rx) = job(&[2]);
            std::mem::forget(rx);
            queue.push(j).ok().unwrap();
        }
        assert_eq!(queue.next_batch(&LIMITS).unwrap().0.len(), 4);
        let (rest, depth) = queue.next_batch(&LIMITS).unwrap();
        assert_eq!((rest.len(), depth), (2, 0));
    }
}
