//! The notifier: delivers alerts to every sink in the background, so that
//! raising an alert never waits on the network and never holds up a
//! rollout.
//!
//! ```text
//!  notify(alert) ──► queue per sink (FIFO, bounded) ──► one task per sink
//!  (sync, O(sinks))       │ full: drop the oldest        │ send the head;
//!                         │                              │ retry it with backoff
//!  refresh task ──────────┘ every refresh_interval,      │ until delivered, refused
//!                           re-queue active firing       │ or pending too long
//!                           alerts for sinks that        ▼
//!                           need_refresh()            stats()
//! ```
//!
//! Ordering: each sink's queue is strictly FIFO and its head is retried
//! before anything behind it is tried, so a firing notification always
//! reaches a sink before the resolution of the same alert. Delivery is at
//! least once (an answer lost after the sink took the alert means a resend).
//!
//! This module owns queueing, retrying, refreshing and the counts; it does
//! not know any wire format (the sinks do) and never decides which alerts
//! fire (the planner does). Time is `tokio::time`, so tests can pause it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::config::{AlertingConfig, INITIAL_BACKOFF};
use super::{Alert, AlertSink, AlertStatus, SinkError};

/// How the notifier queues, retries and refreshes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotifierSettings {
    /// How often active firing alerts are re-posted to sinks that need it
    /// (Alertmanager forgets them after its `resolve_timeout`, 5 min by
    /// default).
    pub refresh_interval: Duration,
    /// The first retry delay; each further retry doubles it.
    pub initial_backoff: Duration,
    /// The longest retry delay.
    pub max_backoff: Duration,
    /// A notification still undelivered this long after it was queued is
    /// dropped (with an error log).
    pub give_up_after: Duration,
    /// How many notifications may wait per sink behind the one being
    /// delivered; beyond that the oldest waiting one is dropped.
    pub queue_capacity: usize,
}

impl Default for NotifierSettings {
    fn default() -> Self {
        let d = AlertingConfig::default();
        NotifierSettings {
            refresh_interval: d.refresh_interval,
            initial_backoff: INITIAL_BACKOFF,
            max_backoff: d.max_backoff,
            give_up_after: d.give_up_after,
            queue_capacity: 1024,
        }
    }
}

/// Delivery counts for one sink, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SinkStats {
    pub sink: String,
    /// Notifications the sink accepted (refreshes included).
    pub delivered: u64,
    /// Attempts that failed, retryable or not.
    pub failed_attempts: u64,
    /// Notifications given up on: refused, pending too long, or pushed out
    /// of a full queue.
    pub dropped: u64,
    /// Notifications queued or being delivered now.
    pub pending: usize,
}

/// One queued notification.
#[derive(Clone, Debug)]
struct Entry {
    alert: Alert,
    key: String,
    queued_at: Instant,
}

/// One sink's queue and counts.
#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<Entry>,
    /// The key of the notification the sink's task is delivering now.
    in_flight: Option<String>,
    delivered: u64,
    failed_attempts: u64,
    dropped: u64,
}

impl Queue {
    fn holds(&self, key: &str) -> bool {
        self.in_flight.as_deref() == Some(key) || self.waiting.iter().any(|e| e.key == key)
    }

    /// Queues `entry`; returns the oldest waiting entry if that overflowed.
    fn push(&mut self, entry: Entry, capacity: usize) -> Option<Entry> {
        self.waiting.push_back(entry);
        if self.waiting.len() <= capacity {
            return None;
        }
        self.dropped += 1;
        self.waiting.pop_front()
    }
}

#[derive(Debug, Default)]
struct State {
    /// Firing alerts not yet resolved, by key: what a refresh re-posts.
    active: BTreeMap<String, Alert>,
    /// One queue per sink, in the order of `Shared::sinks`.
    queues: Vec<Queue>,
}

#[derive(Debug)]
struct Slot {
    sink: Arc<dyn AlertSink>,
    wake: Notify,
}

#[derive(Debug)]
struct Shared {
    sinks: Vec<Slot>,
    settings: NotifierSettings,
    state: Mutex<State>,
}

impl Shared {
    /// The lock is only held for queue bookkeeping, never across an await;
    /// a panic while holding it leaves consistent-enough counts, so a
    /// poisoned lock is used as is.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn capacity(&self) -> usize {
        self.settings.queue_capacity.max(1)
    }

    /// Queues `alert` for the sinks `wanted` picks, in one critical section
    /// with the active-set update so refreshes and resolutions never
    /// interleave out of order.
    fn enqueue(&self, alert: &Alert, overflowed: &mut Vec<(usize, Entry)>) {
        let entry = Entry {
            key: alert.key(),
            alert: alert.clone(),
            queued_at: Instant::now(),
        };
        let mut state = self.lock();
        match alert.status {
            AlertStatus::Firing => {
                state.active.insert(entry.key.clone(), alert.clone());
            }
            AlertStatus::Resolved => {
                state.active.remove(&entry.key);
            }
        }
        let capacity = self.capacity();
        for (index, queue) in state.queues.iter_mut().enumerate() {
            if let Some(old) = queue.push(entry.clone(), capacity) {
                overflowed.push((index, old));
            }
        }
    }

    /// Takes back a firing alert from before a restart: active again (so
    /// refreshes and its resolution follow), and re-posted only to sinks
    /// that need refreshing; others already have it.
    fn restore(&self, alert: &Alert, overflowed: &mut Vec<(usize, Entry)>) {
        let entry = Entry {
            key: alert.key(),
            alert: alert.clone(),
            queued_at: Instant::now(),
        };
        let capacity = self.capacity();
        let mut state = self.lock();
        state.active.insert(entry.key.clone(), alert.clone());
        for (index, queue) in state.queues.iter_mut().enumerate() {
            if self.sinks[index].sink.needs_refresh()
                && !queue.holds(&entry.key)
                && let Some(old) = queue.push(entry.clone(), capacity)
            {
                overflowed.push((index, old));
            }
        }
    }

    /// Re-queues every active firing alert for sinks that need refreshing,
    /// unless that sink already holds a notification for it.
    fn refresh(&self, overflowed: &mut Vec<(usize, Entry)>) -> usize {
        let now = Instant::now();
        let capacity = self.capacity();
        let mut queued = 0;
        let mut state = self.lock();
        let State { active, queues } = &mut *state;
        for (index, queue) in queues.iter_mut().enumerate() {
            if !self.sinks[index].sink.needs_refresh() {
                continue;
            }
            for (key, alert) in active.iter() {
                if queue.holds(key) {
                    continue;
                }
                let entry = Entry {
                    alert: alert.clone(),
                    key: key.clone(),
                    queued_at: now,
                };
                queued += 1;
                if let Some(old) = queue.push(entry, capacity) {
                    overflowed.push((index, old));
                }
            }
        }
        queued
    }

    fn log_overflow(&self, overflowed: Vec<(usize, Entry)>) {
        for (index, old) in overflowed {
            tracing::error!(
                sink = self.sinks[index].sink.name(),
                key = %old.key,
                status = ?old.alert.status,
                capacity = self.capacity(),
                "alert queue full: dropped the oldest undelivered notification; \
                 the sink has been failing, check it"
            );
        }
    }

    fn wake_all(&self) {
        for slot in &self.sinks {
            slot.wake.notify_one();
        }
    }
}

/// The notifier before it runs: sinks and settings.
#[derive(Debug)]
pub struct Notifier {
    sinks: Vec<Arc<dyn AlertSink>>,
    settings: NotifierSettings,
}

impl Notifier {
    pub fn new(sinks: Vec<Arc<dyn AlertSink>>, settings: NotifierSettings) -> Self {
        Notifier { sinks, settings }
    }

    /// Spawns one delivery task per sink and the refresh task on `tracker`;
    /// they stop at `shutdown` (undelivered notifications are logged and
    /// lost).
    pub fn spawn(self, tracker: &TaskTracker, shutdown: CancellationToken) -> NotifierHandle {
        let state = State {
            active: BTreeMap::new(),
            queues: self.sinks.iter().map(|_| Queue::default()).collect(),
        };
        let shared = Arc::new(Shared {
            sinks: self
                .sinks
                .into_iter()
                .map(|sink| Slot {
                    sink,
                    wake: Notify::new(),
                })
                .collect(),
            settings: self.settings,
            state: Mutex::new(state),
        });
        for index in 0..shared.sinks.len() {
            tracker.spawn(deliver_loop(shared.clone(), index, shutdown.clone()));
        }
        if shared.sinks.iter().any(|s| s.sink.needs_refresh()) {
            tracker.spawn(refresh_loop(shared.clone(), shutdown));
        }
        NotifierHandle { shared }
    }
}

/// What the rest of the coordinator holds to raise and resolve alerts.
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct NotifierHandle {
    shared: Arc<Shared>,
}

impl NotifierHandle {
    /// Queues `alert` for every sink and returns at once: it never awaits,
    /// and only takes a lock held for queue bookkeeping.
    pub fn notify(&self, alert: Alert) {
        tracing::info!(
            key = %alert.key(),
            status = ?alert.status,
            summary = %alert.summary(),
            "alert"
        );
        let mut overflowed = Vec::new();
        self.shared.enqueue(&alert, &mut overflowed);
        self.shared.log_overflow(overflowed);
        self.shared.wake_all();
    }

    /// Takes back `alert`, firing before a restart (see
    /// the journal's firing set): sinks that need refreshing get it again, others are
    /// not told twice; its resolution will reach every sink.
    pub fn restore(&self, alert: Alert) {
        let mut overflowed = Vec::new();
        self.shared.restore(&alert, &mut overflowed);
        self.shared.log_overflow(overflowed);
        self.shared.wake_all();
    }

    /// Per-sink counts, in the configured order of sinks.
    pub fn stats(&self) -> Vec<SinkStats> {
        let state = self.shared.lock();
        self.shared
            .sinks
            .iter()
            .zip(&state.queues)
            .map(|(slot, q)| SinkStats {
                sink: slot.sink.name().to_owned(),
                delivered: q.delivered,
                failed_attempts: q.failed_attempts,
                dropped: q.dropped,
                pending: q.waiting.len() + usize::from(q.in_flight.is_some()),
            })
            .collect()
    }

    /// The firing alerts not yet resolved.
    pub fn active(&self) -> Vec<Alert> {
        self.shared.lock().active.values().cloned().collect()
    }
}

/// How one notification's delivery ended.
enum Outcome {
    Delivered,
    Dropped,
    Cancelled,
}

/// One sink's task: takes the head of its queue and delivers it, forever
/// (until `shutdown`).
async fn deliver_loop(shared: Arc<Shared>, index: usize, shutdown: CancellationToken) {
    let slot = &shared.sinks[index];
    loop {
        let next = {
            let mut state = shared.lock();
            let queue = &mut state.queues[index];
            let next = queue.waiting.pop_front();
            queue.in_flight = next.as_ref().map(|e| e.key.clone());
            next
        };
        let Some(entry) = next else {
            // A notify() between the unlock above and this wait leaves a
            // permit, so no wake-up is lost.
            tokio::select! {
                () = slot.wake.notified() => continue,
                () = shutdown.cancelled() => break,
            }
        };
        let outcome = deliver(&shared, index, &entry, &shutdown).await;
        let mut state = shared.lock();
        let queue = &mut state.queues[index];
        queue.in_flight = None;
        match outcome {
            Outcome::Delivered => queue.delivered += 1,
            Outcome::Dropped => queue.dropped += 1,
            Outcome::Cancelled => {
                // Keep it counted as pending for the shutdown log below.
                queue.waiting.push_front(entry);
                break;
            }
        }
    }
    let pending = shared.lock().queues[index].waiting.len();
    if pending > 0 {
        tracing::warn!(
            sink = slot.sink.name(),
            pending,
            "notifier stopping with undelivered alert notifications"
        );
    }
}

/// Sends `entry` until it is delivered, refused, or has been pending for
/// `give_up_after`. Bounded in time: every failed pass waits at least
/// `min(backoff, time left)` and the pass at the deadline is the last.
async fn deliver(
    shared: &Shared,
    index: usize,
    entry: &Entry,
    shutdown: &CancellationToken,
) -> Outcome {
    let sink = &shared.sinks[index].sink;
    let settings = &shared.settings;
    let deadline = entry.queued_at + settings.give_up_after;
    let mut backoff = settings
        .initial_backoff
        .min(settings.max_backoff)
        .max(Duration::from_millis(1));
    let mut attempts: u64 = 0;
    loop {
        let result = tokio::select! {
            r = sink.send(&entry.alert) => r,
            () = shutdown.cancelled() => return Outcome::Cancelled,
        };
        attempts += 1;
        let error = match result {
            Ok(()) => {
                tracing::debug!(sink = sink.name(), key = %entry.key, attempts, "alert delivered");
                return Outcome::Delivered;
            }
            Err(error) => error,
        };
        shared.lock().queues[index].failed_attempts += 1;
        if !error.is_retryable() {
            log_dropped(sink.name(), entry, &error, "refused; not retried");
            return Outcome::Dropped;
        }
        let now = Instant::now();
        if now >= deadline {
            log_dropped(
                sink.name(),
                entry,
                &error,
                &format!(
                    "still undelivered after {:?} ({attempts} attempts); giving up",
                    settings.give_up_after
                ),
            );
            return Outcome::Dropped;
        }
        let wait = backoff.min(deadline - now);
        tracing::warn!(
            sink = sink.name(),
            key = %entry.key,
            error = %error,
            attempts,
            retry_in = ?wait,
            "alert delivery failed; will retry"
        );
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return Outcome::Cancelled,
        }
        backoff = backoff.saturating_mul(2).min(settings.max_backoff);
    }
}

fn log_dropped(sink: &str, entry: &Entry, error: &SinkError, why: &str) {
    tracing::error!(
        sink,
        key = %entry.key,
        status = ?entry.alert.status,
        error = %error,
        "alert notification dropped: {why}"
    );
}

/// Re-queues active firing alerts every `refresh_interval`.
async fn refresh_loop(shared: Arc<Shared>, shutdown: CancellationToken) {
    let every = shared
        .settings
        .refresh_interval
        .max(Duration::from_millis(1));
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => break,
        }
        let mut overflowed = Vec::new();
        let queued = shared.refresh(&mut overflowed);
        shared.log_overflow(overflowed);
        if queued > 0 {
            tracing::debug!(queued, "re-posting active alerts");
            shared.wake_all();
        }
    }
}

#[cfg(test)]
mod tests;
