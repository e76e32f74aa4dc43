//! A replicated coordinator under test, shared by the samplekv
//! [`crate::Cluster`] and the [`crate::etcd::EtcdCluster`]: one config per
//! replica (`[replication]` with every peer), peer traffic through a
//! [`TcpProxy`] per direction so a test can cut a replica off, and the
//! replicas started, killed (SIGKILL by pid), partitioned and asked who
//! leads. Each replica's journal is its own raft log, read by log index.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use crate::proxy::TcpProxy;
use crate::{Proc, bin, read_journal};

/// One coordinator replica of a replicated cluster.
#[derive(Debug)]
pub struct Replica {
    /// Its `[replication]` id (1-based).
    pub id: u64,
    /// Where agents and operators reach it.
    pub url: String,
    pub config: PathBuf,
    pub state_dir: PathBuf,
    pub log: PathBuf,
    pub proc: Option<Proc>,
}

/// Every replica of one coordinator, and the proxies between them. Empty
/// for a lone coordinator (the cluster runs it itself).
#[derive(Debug, Default)]
pub struct Replicas {
    pub list: Vec<Replica>,
    /// The peer proxies, by (from, to) replica id.
    pub peer_proxies: Vec<((u64, u64), TcpProxy)>,
    json_logs: bool,
    /// More logs to show when a wait on the journal fails (the agents'):
    /// set by the cluster that owns these replicas.
    pub extra_logs: Vec<PathBuf>,
}

impl std::ops::Index<usize> for Replicas {
    type Output = Replica;
    fn index(&self, k: usize) -> &Replica {
        &self.list[k]
    }
}

impl std::ops::IndexMut<usize> for Replicas {
    fn index_mut(&mut self, k: usize) -> &mut Replica {
        &mut self.list[k]
    }
}

/// Where replica `id` keeps its state under `dir`: the first one where a
/// lone coordinator would (`coordinator-state`), the others beside it.
pub fn state_dir(dir: &Path, id: u64) -> PathBuf {
    if id == 1 {
        dir.join("coordinator-state")
    } else {
        dir.join(format!("coordinator-state-{id}"))
    }
}

impl Replicas {
    /// Writes one config per port under `dir`: `base(port, state_dir,
    /// first)` (the coordinator's own lines; `first` is the replica that
    /// may also serve metrics) plus a `[replication]` table naming every
    /// peer through its proxy. The first config is `first_config`, where a
    /// lone coordinator's would be. Fewer than two ports: no replicas.
    pub async fn configure(
        dir: &Path,
        first_config: &Path,
        ports: &[u16],
        json_logs: bool,
        base: impl Fn(u16, &Path, bool) -> String,
    ) -> Result<Replicas> {
        let mut out = Replicas {
            json_logs,
            ..Replicas::default()
        };
        if ports.len() < 2 {
            return Ok(out);
        }
        for (i, port) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let mut peers = vec![format!("\"{id}\" = \"http://127.0.0.1:{port}\"")];
            for (j, to) in ports.iter().enumerate() {
                if i == j {
                    continue;
                }
                let p = TcpProxy::start(format!("127.0.0.1:{to}").parse()?).await?;
                peers.push(format!("\"{}\" = \"http://{}\"", j + 1, p.addr));
                out.peer_proxies.push(((id, j as u64 + 1), p));
            }
            let state = state_dir(dir, id);
            let config = if i == 0 {
                first_config.to_path_buf()
            } else {
                dir.join(format!("coordinator-{id}.toml"))
            };
            fs::write(
                &config,
                format!(
                    "{}\n[replication]\nid = {id}\npeers = {{ {} }}\n",
                    base(*port, &state, i == 0),
                    peers.join(", ")
                ),
            )?;
            out.list.push(Replica {
                id,
                url: format!("http://127.0.0.1:{port}"),
                config,
                state_dir: state,
                log: dir.join(format!("coordinator-{id}.log")),
                proc: None,
            });
        }
        Ok(out)
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Starts every replica.
    pub fn start_all(&mut self) -> Result<()> {
        for k in 0..self.list.len() {
            self.start(k)?;
        }
        Ok(())
    }

    /// Starts replica `k` (an index into [`Replicas::list`]).
    pub fn start(&mut self, k: usize) -> Result<()> {
        let json = self.json_logs;
        let r = &mut self.list[k];
        let mut cmd = Command::new(bin("baton-coordinator"));
        cmd.arg("--config")
            .arg(&r.config)
            .env("RUST_LOG", "info,openraft=warn")
            .env("BATON_LOG_FORMAT", if json { "json" } else { "text" });
        r.proc = Some(Proc::spawn(
            &format!("coordinator-{}", r.id),
            &mut cmd,
            &r.log,
        )?);
        Ok(())
    }

    /// Kills replica `k` with SIGKILL (by its pid).
    pub fn kill(&mut self, k: usize) {
        self.list[k].proc.take();
    }

    /// Kills every replica.
    pub fn kill_all(&mut self) {
        for r in &mut self.list {
            r.proc.take();
        }
    }

    /// Cuts (or, with `cut == false`, heals) every peer link to and from
    /// replica `k`; agents and operators still reach it.
    pub fn partition(&self, k: usize, cut: bool) {
        let id = self.list[k].id;
        for ((from, to), p) in &self.peer_proxies {
            if *from == id || *to == id {
                if cut { p.cut() } else { p.heal() }
            }
        }
    }

    /// Which live replica leads now: the one whose operator API answers
    /// (a follower answers UNAVAILABLE). `None` during an election.
    pub async fn leading(&self) -> Option<usize> {
        for (k, r) in self.list.iter().enumerate() {
            if r.proc.is_none() {
                continue;
            }
            let Ok(ep) = tonic::transport::Endpoint::from_shared(r.url.clone()) else {
                continue;
            };
            let ep = ep
                .connect_timeout(Duration::from_millis(300))
                .timeout(Duration::from_millis(800));
            let Ok(channel) = ep.connect().await else {
                continue;
            };
            let mut client = baton_proto::v1::operator_client::OperatorClient::new(channel);
            if client
                .status(baton_proto::v1::StatusRequest::default())
                .await
                .is_ok()
            {
                return Some(k);
            }
        }
        None
    }

    /// Waits (bounded) until some live replica leads.
    pub async fn wait_leading(&self, within: Duration) -> Result<usize> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(k) = self.leading().await {
                return Ok(k);
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("no coordinator replica leads after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The journal entries replica `k` holds (its own raft log).
    pub fn journal(&self, k: usize) -> Result<Vec<serde_json::Value>> {
        read_journal(&self.list[k].state_dir.join("replica/log"))
    }

    /// Waits (bounded) until replica `k`'s own journal holds at least
    /// `entries` entries (a healed replica catching up).
    pub async fn wait_holds(&self, k: usize, entries: usize, within: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let n = self.journal(k)?.len();
            if n >= entries {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "replica {} holds {n} journal entries after {within:?}, not {entries}",
                self.list[k].id
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) until the leading replica's journal satisfies `f`;
    /// returns which replica that is and its journal.
    pub async fn wait_journal(
        &self,
        what: &str,
        within: Duration,
        f: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Result<(usize, Vec<serde_json::Value>)> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let k = self.wait_leading(Duration::from_secs(15)).await?;
            let j = self.journal(k)?;
            if f(&j) {
                return Ok((k, j));
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the journal never showed {what} within {within:?}: {j:#?}\n{}",
                self.log_tails(40)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The last `n` lines of every replica's log and of every extra log,
    /// without terminal colours, for a failure's message.
    pub fn log_tails(&self, n: usize) -> String {
        self.list
            .iter()
            .map(|r| r.log.clone())
            .chain(self.extra_logs.iter().cloned())
            .map(|path| {
                let text =
                    crate::without_colours(&std::fs::read_to_string(&path).unwrap_or_default());
                // A leader cut off from a peer logs a failed heartbeat
                // every 50 ms; those would push everything else out.
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| !l.contains("failed to send a heartbeat"))
                    .collect();
                format!(
                    "----- {} (last {n} lines, failed heartbeats left out)\n{}",
                    path.display(),
                    lines[lines.len().saturating_sub(n)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
