//! Watching quorum while an etcd cluster rolls: an observer that asks every
//! member for its status every 10 ms and counts how many are down at once,
//! a guard that freezes a member with SIGSTOP (and thaws it on drop), and
//! the coordinator journal lookups the quorum tests time things by, and
//! the checks every etcd rollout test ends with ([`etcd_end_checks`]).
//!
//! A member is down when it is frozen by the test (ground truth), when its
//! last status request failed (refused, an error), or when a request has
//! gone unanswered for longer than [`DOWN_AFTER`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::etcd::{EtcdCluster, EtcdLoad, etcd_call, etcd_verify};
use crate::unix_ms;

/// A status request unanswered this long counts the member down.
pub const DOWN_AFTER: Duration = Duration::from_millis(500);

/// How often the observer looks, and how often each member is asked.
pub const OBSERVE_EVERY: Duration = Duration::from_millis(10);

/// What one member's prober last saw.
#[derive(Debug, Clone, Copy)]
struct Probe {
    /// The last finished request succeeded (true before the first one).
    ok: bool,
    /// When the request in flight began, if one is.
    inflight_since: Option<Instant>,
}

/// Moments when two or more members were down at once.
#[derive(Debug, Clone, Default)]
pub struct ObserverReport {
    /// How many times the observer looked.
    pub looks: u64,
    /// The most members down at one look.
    pub max_down: usize,
    /// Up to 20 looks with two or more down: Unix ms and who was down.
    pub overlaps: Vec<(u64, Vec<String>)>,
    /// Looks at which each member (by index) was down.
    pub down_looks: Vec<u64>,
}

/// The observer and its stop switch; [`QuorumObserver::freeze`] makes a
/// member count as down for as long as the returned guard lives.
#[derive(Debug)]
pub struct QuorumObserver {
    names: Vec<String>,
    frozen: Arc<Vec<AtomicBool>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    looker: tokio::task::JoinHandle<ObserverReport>,
}

impl QuorumObserver {
    /// Starts one prober per member and the observer that counts.
    pub fn start(cluster: &EtcdCluster) -> QuorumObserver {
        let names: Vec<String> = cluster.members.iter().map(|m| m.name.clone()).collect();
        let n = names.len();
        let frozen: Arc<Vec<AtomicBool>> =
            Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
        let stop = CancellationToken::new();
        let probes: Arc<Vec<Mutex<Probe>>> = Arc::new(
            (0..n)
                .map(|_| {
                    Mutex::new(Probe {
                        ok: true,
                        inflight_since: None,
                    })
                })
                .collect(),
        );
        let mut tasks = Vec::new();
        for (i, addr) in cluster.clients().into_iter().enumerate() {
            let (probes, stop) = (probes.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let began = Instant::now();
                    if let Ok(mut p) = probes[i].lock() {
                        p.inflight_since = Some(began);
                    }
                    let ok = etcd_call(
                        &addr,
                        "/v3/maintenance/status",
                        &serde_json::json!({}),
                        Duration::from_secs(2),
                    )
                    .await
                    .is_ok();
                    if let Ok(mut p) = probes[i].lock() {
                        *p = Probe {
                            ok,
                            inflight_since: None,
                        };
                    }
                    tokio::time::sleep_until(began + OBSERVE_EVERY).await;
                }
            }));
        }
        let looker = {
            let (names, frozen, stop) = (names.clone(), frozen.clone(), stop.clone());
            tokio::spawn(async move {
                let mut report = ObserverReport {
                    down_looks: vec![0; n],
                    ..ObserverReport::default()
                };
                let mut every = tokio::time::interval(OBSERVE_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                while !stop.is_cancelled() {
                    every.tick().await;
                    let now = Instant::now();
                    let down: Vec<usize> = (0..n)
                        .filter(|i| {
                            let p = probes[*i].lock().map(|p| *p).unwrap_or(Probe {
                                ok: false,
                                inflight_since: None,
                            });
                            frozen[*i].load(Ordering::SeqCst)
                                || !p.ok
                                || p.inflight_since.is_some_and(|s| now - s > DOWN_AFTER)
                        })
                        .collect();
                    report.looks += 1;
                    for i in &down {
                        report.down_looks[*i] += 1;
                    }
                    report.max_down = report.max_down.max(down.len());
                    if down.len() >= 2 && report.overlaps.len() < 20 {
                        report
                            .overlaps
                            .push((unix_ms(), down.iter().map(|i| names[*i].clone()).collect()));
                    }
                }
                report
            })
        };
        QuorumObserver {
            names,
            frozen,
            stop,
            tasks,
            looker,
        }
    }

    /// SIGSTOPs member `i`'s etcd (pid from its agent's `member.pid`) and
    /// counts it down until the guard thaws it (SIGCONT), also on drop.
    pub fn freeze(&self, cluster: &EtcdCluster, i: usize) -> Result<Frozen> {
        let pid = cluster
            .member_pid_now(i)
            .with_context(|| format!("no member.pid for {}", cluster.members[i].name))?;
        let flag = self.frozen.clone();
        flag[i].store(true, Ordering::SeqCst);
        let at = unix_ms();
        if let Err(e) = kill(Pid::from_raw(pid), Signal::SIGSTOP) {
            flag[i].store(false, Ordering::SeqCst);
            bail!("SIGSTOP {} (pid {pid}): {e}", self.names[i]);
        }
        Ok(Frozen {
            pid,
            index: i,
            flag,
            at,
            thawed: false,
        })
    }

    /// Stops probing and returns what the observer saw.
    pub async fn finish(self) -> Result<ObserverReport> {
        self.stop.cancel();
        for t in self.tasks {
            t.await?;
        }
        Ok(self.looker.await?)
    }
}

/// A member frozen with SIGSTOP; SIGCONT on [`Frozen::thaw`] or drop.
#[derive(Debug)]
pub struct Frozen {
    pub pid: i32,
    pub index: usize,
    flag: Arc<Vec<AtomicBool>>,
    /// Unix ms just before the SIGSTOP.
    pub at: u64,
    thawed: bool,
}

impl Frozen {
    /// SIGCONT; returns the Unix ms just after it.
    pub fn thaw(mut self) -> u64 {
        self.cont();
        unix_ms()
    }

    fn cont(&mut self) {
        if !self.thawed {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGCONT);
            self.flag[self.index].store(false, Ordering::SeqCst);
            self.thawed = true;
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.cont();
    }
}

/// The coordinator held with SIGSTOP: while this lives it decides and
/// sends nothing, so what its journal says stays true. SIGCONT on drop.
#[derive(Debug)]
pub struct Held {
    pid: i32,
}

impl Drop for Held {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.pid), Signal::SIGCONT);
    }
}

impl EtcdCluster {
    /// Holds the coordinator (SIGSTOP) until the guard drops: a test that
    /// must act inside a window the coordinator could close (a member
    /// between two gates) reads the journal and acts while it is held.
    pub fn hold_coordinator(&self) -> Result<Held> {
        let c = self.coordinator.as_ref().context("the coordinator runs")?;
        let pid = i32::try_from(c.pid())?;
        kill(Pid::from_raw(pid), Signal::SIGSTOP)
            .with_context(|| format!("SIGSTOP the coordinator (pid {pid})"))?;
        Ok(Held { pid })
    }

    /// A reader following the coordinator's journal (a lone coordinator's).
    pub fn journal_tail(&self) -> crate::JournalTail {
        crate::JournalTail::new(&self.dir.path().join(crate::JOURNAL))
    }

    /// The pid of member `i`'s etcd, from its agent's `member.pid`.
    pub fn member_pid_now(&self, i: usize) -> Option<i32> {
        let text = std::fs::read_to_string(self.members[i].agent_dir.join("member.pid")).ok()?;
        text.split_whitespace().next()?.parse().ok()
    }

    /// Index of the member named `name`.
    pub fn member_index(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name == name)
    }

    /// Every entry of the coordinator's journal: rollout events
    /// (`{"event": …}`) and alert entries (`{"alert_event": …}`).
    pub fn journal_lines(&self) -> Result<Vec<serde_json::Value>> {
        // A record being written may be torn: only whole records count.
        crate::read_journal(&self.dir.path().join(crate::JOURNAL))
    }

    /// Polls the journal every 5 ms until `f` finds something (bounded by
    /// `within`); the error names what was awaited.
    pub async fn wait_journal<T>(
        &self,
        what: &str,
        within: Duration,
        mut f: impl FnMut(&[serde_json::Value]) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + within;
        loop {
            let entries = self.journal_lines()?;
            if let Some(t) = f(&entries) {
                return Ok(t);
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {within:?} waiting in the journal for: {what}; last entries:\n{}",
                    entries
                        .iter()
                        .rev()
                        .take(12)
                        .rev()
                        .map(|e| e.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// `baton --output json <args>` bounded by `within` (the CLI is killed
    /// by pid if it runs longer): exit code, last JSON line, stderr.
    pub async fn baton_within(
        &self,
        args: &[&str],
        within: Duration,
    ) -> Result<(i32, serde_json::Value, String)> {
        let mut cmd = tokio::process::Command::new(crate::bin("baton"));
        cmd.args(["--coordinator", &self.coordinator_url, "--output", "json"])
            .args(args)
            .kill_on_drop(true);
        let out = tokio::time::timeout(within, cmd.output())
            .await
            .with_context(|| format!("baton {} ran longer than {within:?}", args.join(" ")))??;
        crate::baton_output(&out)
    }
}

/// `GET /version` from one etcd member: (server version, cluster version).
pub async fn etcd_versions(addr: &str, timeout: Duration) -> Result<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET /version HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(timeout, io)
        .await
        .context("etcd /version timed out")??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP body")?;
    anyhow::ensure!(head.contains(" 200 "), "etcd /version answered {head}");
    let v: serde_json::Value = serde_json::from_str(body.trim())?;
    Ok((
        v["etcdserver"].as_str().unwrap_or_default().to_owned(),
        v["etcdcluster"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// A journal event's `at` (Unix ms).
pub fn at(e: &serde_json::Value) -> u64 {
    e["at"].as_u64().unwrap_or(0)
}

/// Whether `e` is a `command_issued` of `action` (`stop`, `stage`, …).
pub fn is_command(e: &serde_json::Value, action: &str) -> bool {
    e["event"] == "command_issued" && (e["action"]["action"] == action || e["action"] == action)
}

/// The end of an etcd rollout test: stops the writer and the observer,
/// and checks every acked write is there, etcd changed leader exactly once
/// and never two members were down.
pub async fn etcd_end_checks(
    cluster: &EtcdCluster,
    load: EtcdLoad,
    observer: QuorumObserver,
) -> Result<()> {
    let seen = observer.finish().await?;
    let report = load.finish().await?;
    let lost = etcd_verify(&cluster.clients(), &report).await?;
    eprintln!(
        "acked {}, failed {}, max gap {} ms, terms {:?}, most down at once {}",
        report.acked.len(),
        report.failed,
        report.max_write_gap_ms,
        report.terms,
        seen.max_down
    );
    assert_eq!(lost, Vec::<String>::new(), "no acknowledged write lost");
    assert_eq!(
        report.leader_changes(),
        1,
        "etcd changed leader exactly once (raft terms seen: {:?})",
        report.terms
    );
    assert!(
        seen.max_down <= 1,
        "never two members down at once: saw {} ({:?})",
        seen.max_down,
        seen.overlaps
    );
    Ok(())
}
