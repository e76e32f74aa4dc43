//! The load generator and its checker: `run_writer` writes
//! sequence-numbered keys on a fixed schedule (write `n` is due at
//! `start + n / rate`, never "sleep after each write") with a bounded number
//! in flight, and reports what was acknowledged, by which leader, and the
//! longest stretch without an acknowledgement; `verify` reads every
//! acknowledged key back linearizably and lists the lost ones.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientError, PutAck};

/// How the writer runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterConfig {
    /// Writes started per second (0: as fast as `max_in_flight` allows).
    pub rate_per_sec: u32,
    /// Stop after this many writes were started.
    pub max_writes: u64,
    /// Stop starting writes after this long.
    pub max_duration: Duration,
    /// Keys are `{key_prefix}{seq:08}`.
    pub key_prefix: String,
    /// Bound on one put, retries included.
    pub request_timeout: Duration,
    /// At most this many puts in flight at once.
    pub max_in_flight: usize,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            rate_per_sec: 100,
            max_writes: 1_000,
            max_duration: Duration::from_secs(10),
            key_prefix: "w-".to_owned(),
            request_timeout: crate::client::DEFAULT_REQUEST_TIMEOUT,
            max_in_flight: 32,
        }
    }
}

/// One acknowledged write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckedWrite {
    /// The key.
    pub key: String,
    /// The value written.
    pub value: String,
    /// Its log index.
    pub revision: u64,
    /// Its term.
    pub term: u64,
    /// The leader that wrote it.
    pub leader_id: u64,
    /// When the ack arrived, in ms since the writer started.
    pub acked_at_ms: u64,
}

/// What a writer run saw.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterReport {
    /// Writes started.
    pub attempted: u64,
    /// Writes acknowledged (committed).
    pub acked: u64,
    /// Writes that failed or timed out (outcome unknown).
    pub failed: u64,
    /// Every acknowledged write, in log order (by revision).
    pub acked_writes: Vec<AckedWrite>,
    /// Keys whose write was not acknowledged.
    pub failed_keys: Vec<String>,
    /// The longest time between consecutive acks (the first measured from
    /// the start), in ms.
    pub max_write_gap_ms: u64,
    /// How often the leader changed between consecutive acked writes (in
    /// log order).
    pub leader_changes: u64,
    /// The leaders of acked writes in log order, consecutive repeats removed.
    pub leaders_seen: Vec<u64>,
    /// The terms of acked writes in log order, consecutive repeats removed.
    pub terms_seen: Vec<u64>,
    /// How long the run took, in ms.
    pub duration_ms: u64,
    /// When the run started (the zero of `acked_at_ms`), in ms since the
    /// Unix epoch, to line acks up with another process's timestamps.
    #[serde(default)]
    pub started_unix_ms: u64,
    /// Why it stopped: `max_writes`, `max_duration` or `cancelled`.
    pub stopped_by: String,
    /// Up to 10 distinct failure messages.
    pub errors: Vec<String>,
}

/// What reading the acked writes back found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Acked writes checked.
    pub checked: u64,
    /// Keys missing or holding another value: acked writes that were lost.
    pub lost: Vec<String>,
    /// Keys that could not be read at all (not counted as lost).
    pub unreadable: Vec<String>,
}

/// The key of write `seq`.
pub fn key_for(prefix: &str, seq: u64) -> String {
    format!("{prefix}{seq:08}")
}

fn run_tag() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{}", std::process::id(), since_epoch.as_millis())
}

/// When write `seq` is due, relative to the start.
fn due_offset(seq: u64, rate_per_sec: u32) -> Duration {
    if rate_per_sec == 0 {
        return Duration::ZERO;
    }
    let nanos = u128::from(seq) * 1_000_000_000 / u128::from(rate_per_sec);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

type Outcome = (String, String, Result<PutAck, ClientError>, Duration);

/// Writes keys on schedule until `max_writes`, `max_duration` or `stop`;
/// waits for the writes in flight (each bounded by `request_timeout`).
pub async fn run_writer(
    client: &Client,
    cfg: WriterConfig,
    stop: CancellationToken,
) -> WriterReport {
    let client = client.with_request_timeout(cfg.request_timeout);
    let tag = run_tag();
    let started_unix_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let start = Instant::now();
    let end = start + cfg.max_duration;
    let sem = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut stopped_by = "max_writes";
    let mut attempted = 0u64;

    for seq in 0..cfg.max_writes {
        let due = start + due_offset(seq, cfg.rate_per_sec);
        if due >= end || Instant::now() >= end {
            stopped_by = "max_duration";
            break;
        }
        tokio::select! {
            biased;
            () = stop.cancelled() => { stopped_by = "cancelled"; break; }
            () = tokio::time::sleep_until(due) => {}
        }
        let permit = tokio::select! {
            biased;
            () = stop.cancelled() => { stopped_by = "cancelled"; break; }
            () = tokio::time::sleep_until(end) => { stopped_by = "max_duration"; break; }
            p = sem.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        while let Some(done) = tasks.try_join_next() {
            if let Ok(o) = done {
                outcomes.push(o);
            }
        }
        attempted += 1;
        let key = key_for(&cfg.key_prefix, seq);
        let value = format!("{key}@{tag}");
        let c = client.clone();
        tasks.spawn(async move {
            let r = c.put(&key, &value).await;
            drop(permit);
            (key, value, r, start.elapsed())
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(o) = done {
            outcomes.push(o);
        }
    }
    let duration = start.elapsed();
    WriterReport {
        started_unix_ms,
        ..summarize(outcomes, attempted, duration, stopped_by)
    }
}

impl WriterReport {
    /// The longest stretch without an ack inside `[from_ms, to_ms]`
    /// (writer time, as `acked_at_ms`): between consecutive acks in the
    /// window, and from its edges to the first and last of them; the whole
    /// window when no ack falls in it.
    pub fn max_gap_within(&self, from_ms: u64, to_ms: u64) -> u64 {
        self.max_gap_span_within(from_ms, to_ms).0
    }

    /// As [`WriterReport::max_gap_within`], with where that gap begins
    /// (writer time): `(gap, start)`.
    pub fn max_gap_span_within(&self, from_ms: u64, to_ms: u64) -> (u64, u64) {
        let mut times: Vec<u64> = self
            .acked_writes
            .iter()
            .map(|w| w.acked_at_ms)
            .filter(|t| (from_ms..=to_ms).contains(t))
            .collect();
        times.sort_unstable();
        let mut prev = from_ms;
        let mut max_gap = (0, from_ms);
        for t in times {
            if t - prev > max_gap.0 {
                max_gap = (t - prev, prev);
            }
            prev = t;
        }
        if to_ms.saturating_sub(prev) > max_gap.0 {
            max_gap = (to_ms - prev, prev);
        }
        max_gap
    }
}

fn summarize(
    outcomes: Vec<Outcome>,
    attempted: u64,
    duration: Duration,
    stopped_by: &str,
) -> WriterReport {
    let mut report = WriterReport {
        attempted,
        duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
        stopped_by: stopped_by.to_owned(),
        ..WriterReport::default()
    };
    for (key, value, r, at) in outcomes {
        match r {
            Ok(ack) => report.acked_writes.push(AckedWrite {
                key,
                value,
                revision: ack.revision,
                term: ack.term,
                leader_id: ack.leader_id,
                acked_at_ms: u64::try_from(at.as_millis()).unwrap_or(u64::MAX),
            }),
            Err(e) => {
                let msg = e.to_string();
                if report.errors.len() < 10 && !report.errors.contains(&msg) {
                    report.errors.push(msg);
                }
                report.failed_keys.push(key);
            }
        }
    }
    report.failed_keys.sort();
    report.acked_writes.sort_by_key(|w| w.revision);
    report.acked = report.acked_writes.len() as u64;
    report.failed = report.failed_keys.len() as u64;

    let mut ack_times: Vec<u64> = report.acked_writes.iter().map(|w| w.acked_at_ms).collect();
    ack_times.sort_unstable();
    let mut prev = 0u64;
    let mut max_gap = 0u64;
    for t in &ack_times {
        max_gap = max_gap.max(t.saturating_sub(prev));
        prev = *t;
    }
    report.max_write_gap_ms = if ack_times.is_empty() {
        report.duration_ms
    } else {
        max_gap
    };

    for w in &report.acked_writes {
        if report.leaders_seen.last() != Some(&w.leader_id) {
            if !report.leaders_seen.is_empty() {
                report.leader_changes += 1;
            }
            report.leaders_seen.push(w.leader_id);
        }
        if report.terms_seen.last() != Some(&w.term) {
            report.terms_seen.push(w.term);
        }
    }
    report
}

/// Reads every acked write back linearizably (up to 5 tries per key) and
/// lists the keys that are missing or hold another value.
pub async fn verify(client: &Client, report: &WriterReport) -> VerifyReport {
    const TRIES: u32 = 5;
    let checks = futures::stream::iter(report.acked_writes.iter().cloned())
        .map(|w| {
            let c = client.clone();
            async move {
                let mut last = None;
                for attempt in 0..TRIES {
                    match c.get(&w.key, true).await {
                        Ok(v) => return (w, Some(v)),
                        Err(e) => last = Some(e),
                    }
                    if attempt + 1 < TRIES {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                if let Some(e) = last {
                    tracing::warn!(key = %w.key, error = %e, "cannot read back an acked write");
                }
                (w, None)
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let mut out = VerifyReport::default();
    for (w, got) in checks {
        out.checked += 1;
        match got {
            None => out.unreadable.push(w.key),
            Some(Some(v)) if v == w.value => {}
            Some(_) => out.lost.push(w.key),
        }
    }
    out.lost.sort();
    out.unreadable.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(key: &str, rev: u64, term: u64, leader: u64, at_ms: u64) -> Outcome {
        (
            key.to_owned(),
            format!("{key}@t"),
            Ok(PutAck {
                revision: rev,
                term,
                leader_id: leader,
            }),
            Duration::from_millis(at_ms),
        )
    }

    #[test]
    fn summary_counts_changes_in_log_order_and_gaps() {
        let outcomes = vec![
            ok("k2", 11, 1, 1, 30),
            ok("k1", 10, 1, 1, 20),
            // Arrives before k2's ack but was written later, by the new leader.
            ok("k4", 14, 2, 3, 25),
            ok("k5", 15, 2, 3, 400),
            (
                "k3".to_owned(),
                "v".to_owned(),
                Err(ClientError::NoMembers),
                Duration::from_millis(50),
            ),
        ];
        let r = summarize(outcomes, 5, Duration::from_millis(500), "max_writes");
        assert_eq!(r.acked, 4);
        assert_eq!(r.failed, 1);
        assert_eq!(r.failed_keys, vec!["k3".to_owned()]);
        assert_eq!(r.leader_changes, 1);
        assert_eq!(r.leaders_seen, vec![1, 3]);
        assert_eq!(r.terms_seen, vec![1, 2]);
        assert_eq!(r.max_write_gap_ms, 370);
        let revs: Vec<u64> = r.acked_writes.iter().map(|w| w.revision).collect();
        assert_eq!(revs, vec![10, 11, 14, 15]);
    }

    #[test]
    fn no_acks_means_gap_is_whole_run() {
        let r = summarize(Vec::new(), 0, Duration::from_millis(1234), "cancelled");
        assert_eq!(r.max_write_gap_ms, 1234);
        assert_eq!(r.leader_changes, 0);
    }

    #[test]
    fn the_gap_within_a_window_counts_its_edges_and_only_its_acks() {
        let outcomes = vec![
            ok("k1", 1, 1, 1, 10),
            ok("k2", 2, 1, 1, 100),
            ok("k3", 3, 1, 1, 130),
            ok("k4", 4, 1, 1, 400),
        ];
        let r = summarize(outcomes, 4, Duration::from_millis(500), "max_writes");
        // Acks at 100 and 130 in [90, 180]: 90->100, 100->130, 130->180.
        assert_eq!(r.max_gap_within(90, 180), 50);
        // The 10 -> 100 gap lies partly outside [50, 120]: 50->100 counts.
        assert_eq!(r.max_gap_within(50, 120), 50);
        assert_eq!(r.max_gap_within(131, 399), 268, "no ack: the whole window");
        assert_eq!(r.max_gap_within(100, 130), 30);
    }
}
