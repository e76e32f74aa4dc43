//! Watching a cluster from outside while a test disturbs it: an
//! [`Observer`] that counts the members down every 10 ms, a [`JournalTail`]
//! that sees each coordinator journal line appear (with the Unix ms it was
//! first seen: alert entries carry no time of their own), and [`Frozen`], a
//! guard for members the test stopped with SIGSTOP.
//!
//! Down is ground truth kept by the test: a member whose port refuses a
//! connection, or one the test froze itself ([`Observer::freeze`]): its
//! apply paused (it is not caught up) or its process SIGSTOPped (its port
//! still accepts connections into the kernel backlog, so only the test
//! knows it is down).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{Cluster, unix_ms};

/// How often the observer looks.
pub const OBSERVE_EVERY: Duration = Duration::from_millis(10);

/// One continuous stretch in which a member was down, in Unix ms: from the
/// first sample that saw it down to the first that saw it up again (or the
/// last sample, if it was still down when the observer stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spell {
    pub member: usize,
    pub from: u64,
    pub to: u64,
}

impl Spell {
    pub fn ms(&self) -> u64 {
        self.to.saturating_sub(self.from)
    }
}

#[derive(Debug, Default)]
struct Seen {
    frozen: BTreeSet<usize>,
    samples: u64,
    max_down: usize,
    /// Every sample in which two or more members were down: when, and which.
    multi_down: Vec<(u64, Vec<usize>)>,
    open: BTreeMap<usize, u64>,
    spells: Vec<Spell>,
}

/// Samples every member every [`OBSERVE_EVERY`] until [`Observer::finish`]
/// (bounded: 10 minutes of samples).
#[derive(Debug)]
pub struct Observer {
    names: Vec<String>,
    seen: Arc<Mutex<Seen>>,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// What the observer saw, once stopped.
#[derive(Debug, Clone)]
pub struct Observed {
    pub names: Vec<String>,
    pub samples: u64,
    pub max_down: usize,
    pub multi_down: Vec<(u64, Vec<usize>)>,
    pub spells: Vec<Spell>,
}

impl Observed {
    /// The longest down spell of member `i` that overlaps `from..=to`.
    pub fn longest_spell(&self, i: usize, from: u64, to: u64) -> Option<Spell> {
        self.spells
            .iter()
            .filter(|s| s.member == i && s.to >= from && s.from <= to)
            .max_by_key(|s| s.ms())
            .copied()
    }

    /// The longest down spell of any member overlapping `from..=to`.
    pub fn longest_any(&self, from: u64, to: u64) -> Option<Spell> {
        (0..self.names.len())
            .filter_map(|i| self.longest_spell(i, from, to))
            .max_by_key(Spell::ms)
    }

    /// Asserts the observer never saw two members down at once; the panic
    /// names when and which.
    pub fn assert_never_two_down(&self) {
        if let Some((at, which)) = self.multi_down.first() {
            let names: Vec<&str> = which.iter().map(|i| self.names[*i].as_str()).collect();
            panic!(
                "the observer saw {} members down at once ({} samples of {} with 2+ down; first at unix ms {at}: {names:?}); spells: {:?}",
                self.max_down,
                self.multi_down.len(),
                self.samples,
                self.spells
            );
        }
        assert!(self.samples > 0, "the observer never sampled");
    }
}

impl Observer {
    pub fn start(cluster: &Cluster) -> Observer {
        let addrs = cluster.addrs();
        let names = cluster.members.iter().map(|m| m.name.clone()).collect();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = CancellationToken::new();
        let task = {
            let (seen, stop) = (seen.clone(), stop.clone());
            tokio::spawn(async move {
                // Bounded: the stop token, or 60,000 samples.
                for _ in 0..60_000 {
                    if stop.is_cancelled() {
                        break;
                    }
                    let mut refused = Vec::new();
                    let frozen = seen.lock().expect("observer lock").frozen.clone();
                    for (i, a) in addrs.iter().enumerate() {
                        // Down anyway; and a SIGSTOPped member's accept
                        // queue would fill with our connections.
                        if frozen.contains(&i) {
                            continue;
                        }
                        // Refused means not listening. A slow answer on a
                        // loaded machine is not an outage, and neither is
                        // a failure on our side of the connect (no free
                        // ephemeral port, EADDRNOTAVAIL, after this probe
                        // and a long suite's load have left tens of
                        // thousands of sockets in TIME_WAIT): that says
                        // nothing about the member, so it is not counted.
                        let c = tokio::time::timeout(
                            Duration::from_millis(500),
                            tokio::net::TcpStream::connect(a.as_str()),
                        )
                        .await;
                        if let Ok(Err(e)) = &c
                            && e.kind() == std::io::ErrorKind::ConnectionRefused
                        {
                            refused.push(i);
                        }
                    }
                    let now = unix_ms();
                    {
                        let mut s = seen.lock().expect("observer lock");
                        let down: BTreeSet<usize> = refused
                            .iter()
                            .copied()
                            .chain(s.frozen.iter().copied())
                            .collect();
                        s.samples += 1;
                        s.max_down = s.max_down.max(down.len());
                        if down.len() >= 2 {
                            s.multi_down.push((now, down.iter().copied().collect()));
                        }
                        for i in 0..addrs.len() {
                            if down.contains(&i) {
                                s.open.entry(i).or_insert(now);
                            } else if let Some(from) = s.open.remove(&i) {
                                s.spells.push(Spell {
                                    member: i,
                                    from,
                                    to: now,
                                });
                            }
                        }
                    }
                    tokio::time::sleep(OBSERVE_EVERY).await;
                }
                let now = unix_ms();
                let mut s = seen.lock().expect("observer lock");
                let open: Vec<(usize, u64)> = std::mem::take(&mut s.open).into_iter().collect();
                for (member, from) in open {
                    s.spells.push(Spell {
                        member,
                        from,
                        to: now,
                    });
                }
            })
        };
        Observer {
            names,
            seen,
            stop,
            task: Some(task),
        }
    }

    /// From now on member `i` counts as down: the test froze it. Call it
    /// before freezing, so the observer is never behind the truth.
    pub fn freeze(&self, i: usize) {
        self.seen.lock().expect("observer lock").frozen.insert(i);
    }

    /// Member `i` is no longer frozen by the test. Call it after thawing.
    pub fn thaw(&self, i: usize) {
        self.seen.lock().expect("observer lock").frozen.remove(&i);
    }

    /// The largest number of members seen down at once so far.
    pub fn max_down(&self) -> usize {
        self.seen.lock().expect("observer lock").max_down
    }

    /// Whether any member is down at this moment (per the last sample).
    pub fn any_down_now(&self) -> bool {
        !self.seen.lock().expect("observer lock").open.is_empty()
    }

    /// What was seen so far; a member down now has a spell up to now.
    pub fn snapshot(&self) -> Observed {
        let now = unix_ms();
        let s = self.seen.lock().expect("observer lock");
        let mut spells = s.spells.clone();
        spells.extend(s.open.iter().map(|(m, from)| Spell {
            member: *m,
            from: *from,
            to: now,
        }));
        Observed {
            names: self.names.clone(),
            samples: s.samples,
            max_down: s.max_down,
            multi_down: s.multi_down.clone(),
            spells,
        }
    }

    /// Stops sampling; returns what was seen.
    pub async fn finish(mut self) -> Result<Observed> {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            task.await?;
        }
        let s = self.seen.lock().expect("observer lock");
        Ok(Observed {
            names: self.names.clone(),
            samples: s.samples,
            max_down: s.max_down,
            multi_down: s.multi_down.clone(),
            spells: s.spells.clone(),
        })
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A journal line and the Unix ms this test first saw it.
#[derive(Debug, Clone)]
pub struct Line {
    pub seen: u64,
    pub entry: Value,
}

/// Reads the coordinator's journal every 10 ms and keeps each complete line
/// with the time it first appeared.
#[derive(Debug)]
pub struct JournalTail {
    path: PathBuf,
    entries: Arc<Mutex<Vec<Line>>>,
    /// Bytes of the file read so far.
    offset: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl JournalTail {
    pub fn start(cluster: &Cluster) -> JournalTail {
        Self::start_at(cluster.dir.path().join(crate::JOURNAL))
    }

    pub fn start_at(path: PathBuf) -> JournalTail {
        let entries = Arc::new(Mutex::new(Vec::new()));
        let read = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        {
            let (entries, stop, read, path) =
                (entries.clone(), stop.clone(), read.clone(), path.clone());
            tokio::spawn(async move {
                let mut offset = 0u64;
                // Bounded: the stop token, or 60,000 reads (10 minutes).
                for _ in 0..60_000 {
                    if stop.is_cancelled() {
                        return;
                    }
                    // Only whole records, and only the new ones; one being
                    // written waits.
                    if let Ok((fresh, end)) = crate::read_journal_after(&path, offset)
                        && !fresh.is_empty()
                    {
                        let now = unix_ms();
                        let mut got = entries.lock().expect("journal lock");
                        got.extend(fresh.into_iter().map(|entry| Line { seen: now, entry }));
                        offset = end;
                        read.store(end as usize, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            });
        }
        JournalTail {
            path,
            entries,
            offset: read,
            stop,
        }
    }

    /// Waits (bounded) until every line written before this call was read;
    /// returns how many entries that is (an index to search from).
    pub async fn settle(&self) -> usize {
        // The end of the last whole record (the file runs on past it: the
        // journal's reserve).
        let len = crate::read_journal_at(&self.path).map_or(0, |(_, end)| end as usize);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while self.offset.load(Ordering::SeqCst) < len && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.len()
    }

    /// How many entries were seen so far (an index to search from).
    pub fn len(&self) -> usize {
        self.entries.lock().expect("journal lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every entry seen so far from index `from`.
    pub fn since(&self, from: usize) -> Vec<Line> {
        let e = self.entries.lock().expect("journal lock");
        e.get(from..).map(<[Line]>::to_vec).unwrap_or_default()
    }

    /// The first entry from index `from` for which `f` holds, if seen yet.
    pub fn find(&self, from: usize, f: impl Fn(&Value) -> bool) -> Option<Line> {
        let e = self.entries.lock().expect("journal lock");
        e.get(from..)?.iter().find(|s| f(&s.entry)).cloned()
    }

    /// Waits (bounded) for an entry from index `from` for which `f` holds.
    pub async fn wait_for(
        &self,
        what: &str,
        from: usize,
        within: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Result<Line> {
        match self.wait_maybe(from, within, f).await {
            Some(s) => Ok(s),
            None => bail!(
                "the journal never showed {what} within {within:?}; seen since: {:#?}",
                self.since(from)
                    .iter()
                    .map(|s| s.entry.clone())
                    .collect::<Vec<_>>()
            ),
        }
    }

    /// As [`JournalTail::wait_for`], but None when it did not appear.
    pub async fn wait_maybe(
        &self,
        from: usize,
        within: Duration,
        f: impl Fn(&Value) -> bool,
    ) -> Option<Line> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(s) = self.find(from, &f) {
                return Some(s);
            }
            if tokio::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for JournalTail {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The entries of one rollout: from its `started` event (at or after index
/// `from`) up to the next `started`.
pub fn rollout_entries(all: &[Line]) -> Vec<Value> {
    let Some(start) = all.iter().position(|s| s.entry["event"] == "started") else {
        return Vec::new();
    };
    let rest = &all[start..];
    let end = rest
        .iter()
        .skip(1)
        .position(|s| s.entry["event"] == "started")
        .map_or(rest.len(), |p| p + 1);
    rest[..end].iter().map(|s| s.entry.clone()).collect()
}

/// Is `e` a `command_issued` of `action` (`stage`, `stop`, `switch`,
/// `start`, `step_down`) for `member`?
pub fn is_issued(e: &Value, member: &str, action: &str) -> bool {
    e["event"] == "command_issued" && e["member"] == member && e["action"]["action"] == action
}

/// The `command_succeeded` or `command_failed` entry that finished command
/// `id`, if any.
pub fn finished<'a>(entries: &'a [Value], id: &Value) -> Option<&'a Value> {
    entries.iter().find(|e| {
        (e["event"] == "command_succeeded" || e["event"] == "command_failed") && e["id"] == *id
    })
}

/// Is `e` an alert entry that fires `alertname` for `member`?
pub fn is_page(e: &Value, names: &[&str], member: &str) -> bool {
    e["alert_event"] == "fired"
        && names
            .iter()
            .any(|n| e["alert"]["labels"]["alertname"] == *n)
        && e["alert"]["labels"]["member"] == member
}

/// Members the test SIGSTOPped; each gets SIGCONT when thawed or on drop,
/// even when the test fails.
#[derive(Debug, Default)]
pub struct Frozen(pub Vec<i32>);

impl Frozen {
    /// SIGSTOPs `pid` and remembers it.
    pub fn stop(&mut self, pid: i32) -> Result<()> {
        self.0.push(pid);
        kill(Pid::from_raw(pid), Signal::SIGSTOP)?;
        Ok(())
    }

    /// SIGCONTs every process frozen so far.
    pub fn thaw(&mut self) {
        for pid in self.0.drain(..) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
    }
}

/// One line per journal entry (`at event member action id gate`), for a
/// failing test's message.
pub fn timeline(entries: &[Line]) -> String {
    entries
        .iter()
        .map(|l| {
            let e = &l.entry;
            if let Some(kind) = e["alert_event"].as_str() {
                format!("(seen {}) alert {kind} {}", l.seen, e["alert"]["labels"])
            } else {
                format!(
                    "{} {} {} {} {} {} {}",
                    e["at"],
                    e["event"].as_str().unwrap_or("?"),
                    e["member"].as_str().or(e["to"].as_str()).unwrap_or(""),
                    e["action"]["action"].as_str().unwrap_or(""),
                    e["id"].as_str().unwrap_or(""),
                    e["gate"].as_str().unwrap_or(""),
                    e["reason"].as_str().unwrap_or("")
                )
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits (bounded) until the cluster has settled: every member fresh and
/// healthy, every report naming one leader, and that leader the same a
/// second later. On a loaded machine an election can move the leader just
/// after start-up; a rollout begun then meets a member that became leader
/// under it (its agent refuses the stop, and the rollout pauses).
pub async fn settle(cluster: &Cluster) -> Result<()> {
    let settled = |s: &baton_domain::FleetStatus| {
        s.leader.is_some()
            && s.members.iter().all(|m| {
                m.fresh
                    && m.report.as_ref().is_some_and(|r| {
                        r.state.leader == s.leader
                            && r.state.health == baton_domain::Health::Healthy
                    })
            })
    };
    let mut leader = None;
    for _ in 0..10 {
        let s = cluster
            .wait_status("the cluster settled", Duration::from_secs(30), settled)
            .await?;
        if leader.is_some() && s.leader == leader {
            return Ok(());
        }
        leader = s.leader;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("the leader kept moving for 10 s")
}
