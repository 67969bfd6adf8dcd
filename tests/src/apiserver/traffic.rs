//! What the operator tests check about a client's traffic: faults aimed at it (a stated share of
//! its writes fail, every watch is dropped on a clock), its request profile (how many requests of
//! each verb, the busiest second: a hot loop shows there), objects created more than once (a child
//! deleted and made again shows there even when the final count is right), and the quiet period
//! after a resource settles.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::ApiServer;
use super::status::ApiError;
use super::store::{Fault, Key, WriteRecord};

/// The faults the operator tests inject into one client's requests, as `(verb, every n-th, error)`:
/// one in three of its patches (server-side applies and status) gets a 500 (an etcd timeout), one
/// in five a 409, one in two of its creates (Events and the objects it creates) a 500.
pub fn write_faults() -> Vec<(&'static str, usize, ApiError)> {
    let timeout = || ApiError::internal("injected: etcdserver: request timed out");
    let conflict = ApiError {
        code: 409,
        reason: "Conflict",
        message: "Operation cannot be fulfilled: the object has been modified; please apply your changes to the \
                  latest version and try again (injected)"
            .into(),
        details: None,
    };
    vec![("patch", 3, timeout()), ("patch", 5, conflict), ("create", 2, timeout())]
}

/// A client's requests over a run, for rate and hot-loop checks.
#[derive(Clone, Debug)]
pub struct RequestProfile {
    /// How many requests it made.
    pub total: usize,
    /// Requests per verb (`watch`, `list`, `get`, `create`, `patch`, …).
    pub by_verb: BTreeMap<&'static str, usize>,
    /// The most requests besides watches it made in one second (counted from its first
    /// request): a reopened watch is the cost of a drop, not a loop.
    pub busiest_second: usize,
    /// The run's length the rates are over.
    pub run_time: Duration,
}

impl RequestProfile {
    /// Requests of `verb`.
    pub fn count(&self, verb: &str) -> usize {
        self.by_verb.get(verb).copied().unwrap_or(0)
    }

    /// Requests per second besides watches (a dropped watch is opened again: that is the cost of
    /// the drop, not a loop).
    pub fn rate_besides_watches(&self) -> f64 {
        (self.total - self.count("watch")) as f64 / self.run_time.as_secs_f64().max(1.0)
    }

    /// Panics unless the client, keeping `streams` watch streams open, behaved as a controller
    /// without a hot loop does under `drops` dropped watch rounds: each stream reopened about once
    /// per drop (at most twice), fewer than three other requests a second, at most 40 in any
    /// second. Measured for the DistillationJob (Intel Xeon, 2 cores, 13 streams): 936 watches over
    /// 71 drops, 1.4 other requests/s, 19 in the busiest second.
    pub fn assert_bounded(&self, drops: usize, streams: usize) {
        self.assert_watches_reopened_once_per_drop(drops, streams);
        let rate = self.rate_besides_watches();
        assert!(rate < 3.0, "{rate:.2} requests/s besides watches: a hot loop ({self})");
        assert!(self.busiest_second <= 40, "{} requests in one second: a hot loop ({self})", self.busiest_second);
    }

    /// Panics unless the client, keeping `streams` watch streams open, under `drops` dropped watch
    /// rounds and faults, behaved as it did on the same work without them (`calm`), give or take
    /// the retries: each stream reopened at most twice per drop, other requests at most twice the
    /// calm rate overall and in the busiest second.
    pub fn assert_bounded_against(&self, calm: &RequestProfile, drops: usize, streams: usize) {
        self.assert_watches_reopened_once_per_drop(drops, streams);
        let (rate, calm_rate) = (self.rate_besides_watches(), calm.rate_besides_watches());
        assert!(
            rate <= 2.0 * calm_rate,
            "{rate:.2} requests/s besides watches against {calm_rate:.2} without faults: a hot loop ({self})"
        );
        assert!(
            self.busiest_second <= 2 * calm.busiest_second.max(10),
            "{} requests in one second against {} without faults: a hot loop ({self})",
            self.busiest_second,
            calm.busiest_second
        );
    }

    fn assert_watches_reopened_once_per_drop(&self, drops: usize, streams: usize) {
        assert!(streams > 0, "the client keeps no watch open: nothing to bound");
        let watches = self.count("watch");
        assert!(
            watches <= 2 * streams * (drops + 1),
            "{watches} watches for {drops} drops of {streams} streams: watches reopened in a loop ({self})"
        );
    }
}

impl std::fmt::Display for RequestProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests in {:.0} s, {:.2}/s besides watches, {} (besides watches) in the busiest second; by verb {:?}",
            self.total,
            self.run_time.as_secs_f64(),
            self.rate_besides_watches(),
            self.busiest_second,
            self.by_verb
        )
    }
}

/// Ends every open watch every `period` until dropped.
pub struct WatchDropper {
    task: tokio::task::JoinHandle<()>,
    rounds: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl WatchDropper {
    /// How many times the watches were dropped so far.
    pub fn rounds(&self) -> usize {
        self.rounds.load(std::sync::atomic::Ordering::Relaxed) as usize
    }
}

impl Drop for WatchDropper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiServer {
    /// Injects [`write_faults`] into the requests of the client with bearer token `user`.
    pub fn inject_write_faults(&self, user: &str) {
        for (verb, every, error) in write_faults() {
            self.inject(Fault {
                verb: Some(verb.into()),
                resource: None,
                name: None,
                user: Some(user.into()),
                every,
                error,
                times: usize::MAX,
            });
        }
    }

    /// The watch streams the client with bearer token `user` keeps open, once the count has held
    /// still for a second (at most 20 s): what one drop of every watch makes it reopen.
    pub async fn watch_streams(&self, user: &str) -> usize {
        let count = || self.state().open_watches.get(user).copied().unwrap_or(0);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut last = count();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = count();
            if (now == last && now > 0) || Instant::now() > deadline {
                return now;
            }
            last = now;
        }
    }

    /// Drops every open watch every `period` (in a task) until the returned value is dropped.
    pub fn drop_watches_every(&self, period: Duration) -> WatchDropper {
        let shared = self.shared.clone();
        let rounds = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = rounds.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                shared.lock().watch_epoch += 1;
                shared.notify();
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        WatchDropper { task, rounds }
    }

    /// The requests of the client with bearer token `user` since `since`, over `run_time`.
    pub fn request_profile(&self, user: &str, since: Instant, run_time: Duration) -> RequestProfile {
        let state = self.state();
        let mine: Vec<_> = state.requests().iter().filter(|r| r.user == user && r.at >= since).collect();
        let mut by_verb = BTreeMap::new();
        let mut per_second: BTreeMap<u64, usize> = BTreeMap::new();
        let first = mine.first().map(|r| r.at).unwrap_or(since);
        for r in &mine {
            *by_verb.entry(r.verb).or_default() += 1;
            if r.verb != "watch" {
                *per_second.entry(r.at.duration_since(first).as_secs()).or_default() += 1;
            }
        }
        RequestProfile {
            total: mine.len(),
            by_verb,
            busiest_second: per_second.values().copied().max().unwrap_or(0),
            run_time,
        }
    }

    /// Objects created more than once under the same name (by anyone), with how many times: a
    /// child deleted and made again, which a final count of children cannot see.
    pub fn created_more_than_once(&self) -> Vec<(Key, usize)> {
        let mut creates: BTreeMap<Key, usize> = BTreeMap::new();
        for w in self.state().writes().iter().filter(|w| w.verb == "create") {
            *creates.entry(w.key.clone()).or_default() += 1;
        }
        creates.into_iter().filter(|(_, n)| *n > 1).collect()
    }

    /// The writes (besides Lease renewals) in a `window` that starts after `settle`: what "quiet"
    /// is checked on once a resource has settled. Empty for a settled operator.
    pub async fn writes_in_quiet_period(&self, settle: Duration, window: Duration) -> Vec<WriteRecord> {
        tokio::time::sleep(settle).await;
        let before = self.state().writes().len();
        tokio::time::sleep(window).await;
        self.state().writes_since(before)
    }
}
