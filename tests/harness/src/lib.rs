//! End-to-end test harness: real samplekv members, real agents and a real
//! coordinator, each a separate process on free loopback ports in a temp dir.
//!
//! Owns process lifetimes: every process is held by a [`Proc`] guard that
//! kills it by pid on drop, so a failing test still cleans up. Members that
//! an agent supervises are killed through the agent's pidfile. On a panic,
//! the tail of every log is printed to help the reader.
//!
//! The binaries come from the workspace target dir; `.ci/run` builds them
//! first with `cargo build --workspace --bins`.

use std::collections::BTreeMap;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

pub mod alertmanager;
pub mod etcd;
pub mod failover;
pub mod load;
pub mod observe;
pub mod proxy;
pub mod quorum;
pub mod replicas;
pub mod s3;
pub mod sqlapp;
pub mod stall;
pub mod wire;
use baton_domain::FleetStatus;
use baton_proto::samplekv::{StatusRequest, StatusResponse, kv_client::KvClient};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Installs the ring crypto provider once for the process: rustls must have
/// exactly one provider (a second, aws-lc-rs, makes tonic's TLS panic).
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The directory holding the workspace's built binaries.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("BATON_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("current exe");
    // A test binary is target/<profile>/deps/<test>; a bin (baton-demo) is
    // target/<profile>/<bin>. Either way: target/<profile>.
    let dir = exe.parent().expect("binary has a directory");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_owned()
    } else {
        dir.to_owned()
    }
}

/// Path of a workspace binary, checked to exist.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range
/// (32768+). A port taken from the ephemeral range with `bind(:0)` and
/// released again can be grabbed by any outgoing connection before the
/// member binds it; seen in benchmark runs as a member that never started.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 12_000;
    const SPAN: u32 = 20_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Spread processes apart by pid, then walk.
    let start = (std::process::id().wrapping_mul(7919)) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = LOW + (start + n) % SPAN;
        let port = u16::try_from(port).expect("port fits");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {LOW}..{}", LOW + SPAN)
}

/// Wall-clock Unix milliseconds now.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A process this harness started; killed by pid (SIGKILL) on drop.
#[derive(Debug)]
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        let out = fs::OpenOptions::new().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("spawn {name}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), sig);
    }

    /// Waits (bounded) for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Result<Option<i32>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{} did not exit within {within:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Prints the last `n` lines of each log that exists (for a failing test).
/// Polls a lone coordinator's journal (`read`, every 20 ms, at most
/// `within`) until `f` finds an entry, and returns it; the error names what
/// was awaited and shows where the journal ends.
pub async fn wait_journal_entry(
    read: impl Fn() -> Result<Vec<serde_json::Value>>,
    what: &str,
    within: Duration,
    f: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let journal = read()?;
        if let Some(e) = journal.iter().find(|e| f(e)) {
            return Ok(e.clone());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: not journaled within {within:?}; the journal ends {:#?}",
            &journal[journal.len().saturating_sub(4)..]
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A journal entry recording a member stopped by a command (SIGTERM).
pub fn is_a_stop(e: &serde_json::Value) -> bool {
    e["event"] == "command_succeeded" && e["detail"].as_str().is_some_and(|d| d.contains("SIGTERM"))
}

/// `text` without its terminal colour codes (`ESC [ … m`).
pub fn without_colours(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) fn print_log_tails(logs: &[PathBuf], n: usize) {
    for l in logs {
        if let Ok(text) = fs::read_to_string(l) {
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(n)..];
            eprintln!(
                "----- {} (last {} lines)\n{}",
                l.display(),
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// Kills a process we did not spawn ourselves (an agent-supervised member)
/// by pid, if it is still alive.
pub(crate) fn kill_pid(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

/// How members are run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberMode {
    /// The harness runs the members; agents only watch.
    External,
    /// Agents run the members from a command template.
    Supervise,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub members: usize,
    pub mode: MemberMode,
    pub heartbeat_ms: u64,
    pub release: String,
    pub format_version: u32,
    /// Extra `[policy]` lines for the coordinator.
    pub policy: String,
    /// Per member index: extra environment for the member process.
    pub member_env: BTreeMap<usize, Vec<(String, String)>>,
    /// Serve the coordinator's `/metrics` on a free loopback port
    /// (`metrics_listen`); see [`Cluster::metrics_addr`].
    pub metrics: bool,
    /// Run the coordinator and agents with `--log-format json`.
    pub json_logs: bool,
    /// Where releases and backups live (a directory by default).
    pub store: StoreSpec,
    /// Extra `[target]` lines for every agent (e.g.
    /// `backup_progress_timeout_ms = 1500\n`).
    pub agent_target: String,
    /// Coordinator replicas (1, 3 or 5). With more than one, peer traffic
    /// runs through a [`proxy::TcpProxy`] per direction, and agents and
    /// the CLI are given every replica's address.
    pub replicas: usize,
    /// Mutual TLS everywhere, with a PKI `baton certs dev` writes to
    /// [`Cluster::pki_dir`]: the coordinator serves https with
    /// `client_ca`, each agent presents `member-<id>.crt`, and the CLI
    /// calls the harness makes present `operator-alice.crt` (an admin).
    /// One replica only.
    pub tls: bool,
}

/// The cluster's `[store]`.
#[derive(Debug, Clone, Default)]
pub enum StoreSpec {
    /// A directory in the cluster's temp dir ([`Cluster::store_dir`]).
    #[default]
    Dir,
    /// An S3 bucket. The coordinator (and `baton release publish
    /// --store-config`, which reads its config) holds the credentials; the
    /// agents hold none (`kind = "coordinator"`) and send what it presigns,
    /// at `agent_endpoint` when set: the same bucket through another
    /// server on the same data, so a test can cut the agents off from S3
    /// alone.
    S3 {
        coordinator: Box<baton_store::s3::S3Settings>,
        agent_endpoint: Option<String>,
    },
}

impl StoreSpec {
    /// The `[store]` table for the coordinator (the secret goes to
    /// `secret_file`, never into the config) or for the agents, or the dir
    /// store at `dir`.
    fn section(&self, for_agents: bool, dir: &Path, secret_file: &Path) -> Result<String> {
        let (s, agent_endpoint) = match self {
            StoreSpec::Dir => {
                return Ok(format!(
                    "[store]\nkind = \"dir\"\npath = {:?}\n",
                    dir.to_string_lossy()
                ));
            }
            StoreSpec::S3 { .. } if for_agents => {
                return Ok("[store]\nkind = \"coordinator\"\n".to_owned());
            }
            StoreSpec::S3 {
                coordinator,
                agent_endpoint,
            } => (coordinator, agent_endpoint),
        };
        use std::os::unix::fs::PermissionsExt;
        fs::write(secret_file, &s.secret_access_key)?;
        fs::set_permissions(secret_file, fs::Permissions::from_mode(0o600))?;
        let agent_endpoint = agent_endpoint
            .as_ref()
            .map(|e| format!("agent_endpoint = {e:?}\n"))
            .unwrap_or_default();
        Ok(format!(
            "[store]\nkind = \"s3\"\nbucket = {:?}\nprefix = {:?}\nendpoint = {:?}\nregion = {:?}\naccess_key_id = {:?}\nsecret_access_key_file = {:?}\n{agent_endpoint}",
            s.bucket,
            s.prefix,
            s.endpoint.clone().unwrap_or_default(),
            s.region,
            s.access_key_id,
            secret_file.to_string_lossy()
        ))
    }
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            members: 3,
            mode: MemberMode::External,
            heartbeat_ms: 300,
            release: "v1".into(),
            format_version: 1,
            policy: String::new(),
            member_env: BTreeMap::new(),
            metrics: false,
            json_logs: false,
            store: StoreSpec::Dir,
            agent_target: String::new(),
            replicas: 1,
            tls: false,
        }
    }
}

impl ClusterSpec {
    /// A cluster whose agents run the members, ready for rollouts.
    pub fn supervised(members: usize) -> Self {
        ClusterSpec {
            members,
            mode: MemberMode::Supervise,
            ..ClusterSpec::default()
        }
    }
}

/// One samplekv member and its agent.
#[derive(Debug)]
pub struct Member {
    /// samplekv's numeric id (1-based).
    pub id: u64,
    /// baton's member id: `n{id}`.
    pub name: String,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Holds `releases/<v>/` and `current`.
    pub base_dir: PathBuf,
    pub agent_dir: PathBuf,
    pub agent_config: PathBuf,
    pub probe_addr: SocketAddr,
    pub proc: Option<Proc>,
    pub agent: Option<Proc>,
}

/// A running cluster with agents and a coordinator. Drop kills everything.
#[derive(Debug)]
pub struct Cluster {
    /// With `spec.replicas > 1`: every replica (and `coordinator` is None).
    pub replicas: replicas::Replicas,
    pub spec: ClusterSpec,
    pub store_dir: PathBuf,
    pub members: Vec<Member>,
    pub coordinator: Option<Proc>,
    pub coordinator_url: String,
    /// TLS flags for every CLI call the harness makes (empty without TLS).
    pub cli_flags: Vec<String>,
    pub coordinator_config: PathBuf,
    /// Where the coordinator serves `/metrics`, when `spec.metrics` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// Keep last: removed after every process is dead.
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts members, a coordinator and agents; waits until `baton status`
    /// shows every member with exactly one agreed leader.
    pub async fn start(spec: ClusterSpec) -> Result<Cluster> {
        init();
        let dir = tempfile::Builder::new().prefix("baton-e2e-").tempdir()?;
        let coord_port = free_port();
        let replica_ports: Vec<u16> = std::iter::once(coord_port)
            .chain((1..spec.replicas).map(|_| free_port()))
            .collect();
        if spec.tls && spec.replicas != 1 {
            bail!("ClusterSpec::tls runs one coordinator replica");
        }
        let scheme = if spec.tls { "https" } else { "http" };
        let replica_urls: Vec<String> = replica_ports
            .iter()
            .map(|p| format!("{scheme}://127.0.0.1:{p}"))
            .collect();
        let coordinator_url = replica_urls.join(",");
        let ports: Vec<u16> = (0..spec.members).map(|_| free_port()).collect();
        let peers = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let names: Vec<String> = (1..=spec.members).map(|i| format!("n{i}")).collect();
        let pki = dir.path().join("pki");
        let (coordinator_tls, cli_flags) = if spec.tls {
            dev_certs(&pki, &names)?;
            let p = |f: &str| pki.join(f).to_string_lossy().into_owned();
            (
                format!(
                    "[operators]\nalice = \"admin\"\n[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
                    p("coordinator.crt"),
                    p("coordinator.key"),
                    p("ca.crt")
                ),
                vec![
                    "--ca-cert".to_owned(),
                    p("ca.crt"),
                    "--cert".to_owned(),
                    p("operator-alice.crt"),
                    "--key".to_owned(),
                    p("operator-alice.key"),
                ],
            )
        } else {
            (String::new(), Vec::new())
        };

        let store_dir = dir.path().join("store");
        fs::create_dir_all(&store_dir)?;
        let coordinator_config = dir.path().join("coordinator.toml");
        let metrics_addr: Option<SocketAddr> = if spec.metrics {
            Some(format!("127.0.0.1:{}", free_port()).parse()?)
        } else {
            None
        };
        let metrics_line = metrics_addr
            .map(|a| format!("metrics_listen = \"{a}\"\n"))
            .unwrap_or_default();
        let coordinator_store =
            spec.store
                .section(false, &store_dir, &dir.path().join("coordinator-s3-secret"))?;
        let agent_store =
            spec.store
                .section(true, &store_dir, &dir.path().join("agent-s3-secret"))?;
        let base = |port: u16, state_dir: &Path, first: bool| {
            format!(
                "{}cluster_id = \"e2e\"\nlisten = \"127.0.0.1:{port}\"\nheartbeat_ms = {}\nmembers = {:?}\nstate_dir = {:?}\nrelease_name = \"samplekv\"\n{coordinator_store}[policy]\n{}\n{coordinator_tls}",
                // Metrics only on the first replica (one port each).
                if first { metrics_line.as_str() } else { "" },
                spec.heartbeat_ms,
                names,
                state_dir.to_string_lossy(),
                spec.policy,
            )
        };
        fs::write(
            &coordinator_config,
            base(coord_port, &replicas::state_dir(dir.path(), 1), true),
        )?;
        // Replicas: one config each, peers reached through the proxies.
        let replicas = replicas::Replicas::configure(
            dir.path(),
            &coordinator_config,
            &replica_ports,
            spec.json_logs,
            base,
        )
        .await?;
        let v1_build = build_release(dir.path(), &spec.release, spec.format_version, false)?;
        let store_flag = store_flag(&spec.store, &store_dir, &coordinator_config);
        publish_release_with(store_flag, &v1_build, &spec.release, spec.format_version)?;

        let mut members = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let id = i as u64 + 1;
            let mdir = dir.path().join(format!("n{id}"));
            let base_dir = mdir.join("base");
            // The first install, as an operator would do it by hand.
            let release_dir = base_dir.join("releases").join(&spec.release);
            copy_dir(&v1_build, &release_dir)?;
            std::os::unix::fs::symlink(
                Path::new("releases").join(&spec.release),
                base_dir.join("current"),
            )?;
            let data_dir = mdir.join("data");
            fs::create_dir_all(&data_dir)?;
            let agent_dir = mdir.join("agent");
            fs::create_dir_all(&agent_dir)?;
            let probe_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
            let command = member_argv(
                "{release_dir}/samplekv",
                id,
                addr,
                &peers,
                "{data_dir}",
                "{release_dir}",
            );
            let env: String = spec
                .member_env
                .get(&i)
                .map(|vars| vars.iter().map(|(k, v)| format!("{k} = {v:?}\n")).collect())
                .unwrap_or_default();
            let run = match spec.mode {
                MemberMode::External => "[run]\nmode = \"external\"\n".to_owned(),
                MemberMode::Supervise => format!(
                    "[run]\nmode = \"supervise\"\nbase_dir = {:?}\ncommand = {:?}\nstop_timeout_ms = 5000\n[run.env]\nRUST_LOG = \"info,openraft=warn\"\n{env}",
                    base_dir.to_string_lossy(),
                    command
                ),
            };
            // `baton restore`: samplekv's own restore tool, with this
            // cluster's peers.
            let restore = [
                bin("samplekv-restore").to_string_lossy().into_owned(),
                "--data-dir".into(),
                "{data_dir}".into(),
                "--from".into(),
                "{file}".into(),
                "--peers".into(),
                peers.clone(),
            ];
            let agent_tls = if spec.tls {
                let p = |f: String| pki.join(f).to_string_lossy().into_owned();
                format!(
                    "\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
                    p("ca.crt".into()),
                    p(format!("member-n{id}.crt")),
                    p(format!("member-n{id}.key"))
                )
            } else {
                String::new()
            };
            let agent_config = agent_dir.join("agent.toml");
            fs::write(
                &agent_config,
                format!(
                    "member_id = \"n{id}\"\ncluster_id = \"e2e\"\ncoordinator = {replica_urls:?}\nheartbeat_ms = {}\npoll_ms = 50\ndata_dir = {:?}\nstate_dir = {:?}\nprobe_listen = \"{probe_addr}\"\n{agent_store}[target]\nkind = \"samplekv\"\naddr = \"{addr}\"\ntimeout_ms = 500\nrestore_command = {restore:?}\n{}{run}{agent_tls}",
                    spec.heartbeat_ms,
                    data_dir.to_string_lossy(),
                    agent_dir.to_string_lossy(),
                    spec.agent_target,
                ),
            )?;
            members.push(Member {
                id,
                name: format!("n{id}"),
                addr,
                data_dir,
                base_dir,
                agent_dir,
                agent_config,
                probe_addr,
                proc: None,
                agent: None,
            });
        }

        let mut cluster = Cluster {
            replicas,
            spec,
            store_dir,
            members,
            coordinator: None,
            coordinator_url,
            coordinator_config,
            metrics_addr,
            cli_flags,
            dir,
        };
        cluster.start_coordinator()?;
        if cluster.spec.mode == MemberMode::External {
            for i in 0..cluster.members.len() {
                cluster.start_member(i, &[])?;
            }
        }
        for i in 0..cluster.members.len() {
            cluster.start_agent(i)?;
        }
        cluster
            .wait_status(
                "every member reported, one agreed leader",
                Duration::from_secs(30),
                |s| {
                    s.leader.is_some()
                        && s.members.iter().all(|m| {
                            m.fresh
                                && m.report
                                    .as_ref()
                                    .is_some_and(|r| r.state.leader == s.leader)
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

    pub fn peers(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.id, m.addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every agent's probe address, by member index.
    pub fn probe_addrs(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.probe_addr).collect()
    }

    pub fn addrs(&self) -> Vec<String> {
        self.members.iter().map(|m| m.addr.to_string()).collect()
    }

    pub fn start_coordinator(&mut self) -> Result<()> {
        if !self.replicas.is_empty() {
            return self.replicas.start_all();
        }
        let log = self.dir.path().join("coordinator.log");
        let mut cmd = Command::new(bin("baton-coordinator"));
        cmd.arg("--config")
            .arg(&self.coordinator_config)
            .env("RUST_LOG", "info")
            .env(
                "BATON_LOG_FORMAT",
                if self.spec.json_logs { "json" } else { "text" },
            );
        self.coordinator = Some(Proc::spawn("coordinator", &mut cmd, &log)?);
        Ok(())
    }

    /// Builds and publishes a samplekv release to the store.
    pub fn publish(&self, version: &str, format_version: u32, fail_start: bool) -> Result<PathBuf> {
        let build = build_release(self.dir.path(), version, format_version, fail_start)?;
        let flag = store_flag(&self.spec.store, &self.store_dir, &self.coordinator_config);
        publish_release_with(flag, &build, version, format_version)?;
        Ok(build)
    }

    /// `baton --output json <args>` against this cluster's coordinator.
    pub fn baton_json(&self, args: &[&str]) -> Result<(i32, serde_json::Value, String)> {
        baton_json_with(&self.coordinator_url, &self.cli_flags, args)
    }

    /// Where `baton certs dev` wrote this cluster's PKI (with
    /// [`ClusterSpec::tls`]).
    pub fn pki_dir(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// The agent-side command journal of member `i` (`/commands`).
    pub async fn agent_commands(&self, i: usize) -> Result<serde_json::Value> {
        agent_commands_at(self.members[i].probe_addr).await
    }

    /// Member `i`'s agent's Prometheus metrics (`/metrics`).
    pub async fn agent_metrics(&self, i: usize) -> Result<String> {
        self.agent_get(i, "/metrics").await
    }

    /// The body of `GET path` on member `i`'s agent probe port.
    async fn agent_get(&self, i: usize, path: &str) -> Result<String> {
        agent_get(self.members[i].probe_addr, path).await
    }

    /// Kills member `i`'s agent (SIGKILL by pid) and starts it again; a
    /// supervised member keeps running and is adopted from its pidfile.
    pub fn restart_agent(&mut self, i: usize) -> Result<()> {
        self.members[i].agent.take();
        self.start_agent(i)
    }

    /// Supervise mode: restarts member `i` under its agent with extra
    /// environment (kills the agent and the member by pid, rewrites the
    /// agent's `[run.env]`, starts the agent, which starts the member).
    pub fn restart_supervised_with_env(&mut self, i: usize, env: &[(&str, &str)]) -> Result<()> {
        let pid = self.member_pid(i);
        drop(self.members[i].agent.take());
        if let Some(pid) = pid {
            kill_pid(pid);
        }
        let path = self.members[i].agent_config.clone();
        let mut text = fs::read_to_string(&path)?;
        for (k, v) in env {
            text.push_str(&format!("{k} = {v:?}\n"));
        }
        fs::write(&path, text)?;
        self.start_agent(i)?;
        self.wait_agent_healthz(i, Duration::from_secs(20))
    }

    /// Waits until agent `i`'s `/healthz` answers 200: the agent runs and
    /// reaches its member.
    pub fn wait_agent_healthz(&self, i: usize, within: Duration) -> Result<()> {
        use std::io::{Read, Write};
        let addr = self.members[i].probe_addr;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let ok = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                .and_then(|mut s| {
                    s.set_read_timeout(Some(Duration::from_millis(500)))?;
                    s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")?;
                    let mut buf = String::new();
                    s.read_to_string(&mut buf)?;
                    Ok(buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200"))
                })
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "agent {} never reported its member reachable on /healthz",
                    self.members[i].name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `GET /metrics` from the coordinator: the body, after checking the
    /// status is 200. Needs `spec.metrics`.
    pub fn scrape_metrics(&self) -> Result<String> {
        use std::io::{Read, Write};
        let Some(addr) = self.metrics_addr else {
            bail!("this cluster was started without ClusterSpec::metrics");
        };
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("connect to the coordinator's /metrics on {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(
            format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        let Some((head, body)) = response.split_once("\r\n\r\n") else {
            bail!("GET {addr}/metrics: no HTTP header end in {response:?}");
        };
        if !head.starts_with("HTTP/1.1 200") {
            bail!("GET {addr}/metrics answered {head:?}");
        }
        Ok(body.to_owned())
    }

    /// Every entry in the coordinator's journal: rollout events and the
    /// alerts that fired or resolved.
    pub fn journal_entries(&self) -> Result<Vec<serde_json::Value>> {
        read_journal(&self.dir.path().join(JOURNAL))
    }

    /// Every rollout event in the coordinator's journal (alert entries,
    /// `{"alert_event": …}`, and the journal's own, `{"journal_event": …}`,
    /// are left out).
    pub fn journal(&self) -> Result<Vec<serde_json::Value>> {
        Ok(self
            .journal_entries()?
            .into_iter()
            .filter(|e| e.get("event").is_some())
            .collect())
    }

    /// The alerts firing as the coordinator's journal records them: each
    /// `fired` entry adds its alert, each `resolved` one removes it (by
    /// alert name and the cluster, member and rollout labels).
    pub fn firing_alerts(&self) -> Result<Vec<serde_json::Value>> {
        let key = |a: &serde_json::Value| {
            ["alertname", "cluster", "member", "rollout"]
                .map(|l| a["labels"][l].as_str().unwrap_or_default().to_owned())
        };
        let mut firing: Vec<serde_json::Value> = Vec::new();
        for e in self.journal_entries()? {
            let alert = &e["alert"];
            match e.get("alert_event").and_then(|k| k.as_str()) {
                Some("fired") => firing.push(alert.clone()),
                Some("resolved") => firing.retain(|a| key(a) != key(alert)),
                Some(other) => bail!("unknown journal alert entry {other:?}: {e}"),
                None => {}
            }
        }
        Ok(firing)
    }

    /// Starts member `i` (0-based) in external mode with extra env vars.
    pub fn start_member(&mut self, i: usize, env: &[(&str, &str)]) -> Result<()> {
        let peers = self.peers();
        let m = &mut self.members[i];
        let release_dir = fs::canonicalize(m.base_dir.join("current"))?;
        let argv = member_argv(
            &release_dir.join("samplekv").to_string_lossy(),
            m.id,
            m.addr,
            &peers,
            &m.data_dir.to_string_lossy(),
            &release_dir.to_string_lossy(),
        );
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]).env("RUST_LOG", "info,openraft=warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let log = m
            .data_dir
            .parent()
            .unwrap_or(&m.data_dir)
            .join("member.log");
        m.proc = Some(Proc::spawn(&m.name, &mut cmd, &log)?);
        Ok(())
    }

    pub fn start_agent(&mut self, i: usize) -> Result<()> {
        let m = &mut self.members[i];
        let mut cmd = Command::new(bin("baton-agent"));
        cmd.arg("--config")
            .arg(&m.agent_config)
            .env("RUST_LOG", "info")
            .env(
                "BATON_LOG_FORMAT",
                if self.spec.json_logs { "json" } else { "text" },
            );
        let log = m.agent_dir.join("agent.log");
        m.agent = Some(Proc::spawn(&format!("agent-{}", m.name), &mut cmd, &log)?);
        Ok(())
    }

    /// The pid of member `i`, whoever started it.
    pub fn member_pid(&self, i: usize) -> Option<i32> {
        let m = &self.members[i];
        if let Some(p) = &m.proc {
            return Some(p.pid() as i32);
        }
        let text = fs::read_to_string(m.agent_dir.join("member.pid")).ok()?;
        text.split_whitespace().next()?.parse().ok()
    }

    /// `baton --output json status`, run as the operator would.
    pub fn status(&self) -> Result<FleetStatus> {
        status_with(&self.coordinator_url, &self.cli_flags)
    }

    /// Polls `baton status` until `f` holds or `within` passes.
    pub async fn wait_status(
        &self,
        what: &str,
        within: Duration,
        f: impl FnMut(&FleetStatus) -> bool,
    ) -> Result<FleetStatus> {
        wait_status_with(&self.coordinator_url, &self.cli_flags, what, within, f).await
    }

    /// Waits (30 s at most) until a leader is known and every member's
    /// report is fresh: the cluster a rollout test starts from.
    pub async fn wait_led_and_fresh(&self) -> Result<FleetStatus> {
        self.wait_status("one leader, all fresh", Duration::from_secs(30), |s| {
            s.leader.is_some() && s.members.iter().all(|m| m.fresh)
        })
        .await
    }

    /// Member `i`'s own `Kv.Status`.
    pub async fn member_status(&self, i: usize) -> Result<StatusResponse> {
        member_status(&self.members[i].addr.to_string()).await
    }

    /// Index of the member that says it leads, per the members themselves.
    pub async fn leader_index(&self) -> Result<usize> {
        for i in 0..self.members.len() {
            if let Ok(s) = self.member_status(i).await
                && s.role == baton_proto::samplekv::Role::Leader as i32
            {
                return Ok(i);
            }
        }
        bail!("no member says it is leader")
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.members.iter().position(|m| m.name == name)
    }

    fn dump_logs(&self) {
        let mut logs: Vec<PathBuf> = vec![self.dir.path().join("coordinator.log")];
        for m in &self.members {
            logs.push(m.agent_dir.join("agent.log"));
            logs.push(m.agent_dir.join("member.log"));
            logs.push(
                m.data_dir
                    .parent()
                    .unwrap_or(&m.data_dir)
                    .join("member.log"),
            );
        }
        print_log_tails(&logs, 25);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        // Agents first, so none restarts a member we are about to kill.
        let supervised: Vec<Option<i32>> = (0..self.members.len())
            .map(|i| self.member_pid(i))
            .collect();
        for m in &mut self.members {
            m.agent.take();
        }
        if self.spec.mode == MemberMode::Supervise {
            for pid in supervised.into_iter().flatten() {
                kill_pid(pid);
            }
        }
        for m in &mut self.members {
            m.proc.take();
        }
        self.coordinator.take();
        self.replicas.kill_all();
    }
}

impl failover::Fleet for Cluster {
    fn replicas(&self) -> &replicas::Replicas {
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
        Cluster::probe_addrs(self)
    }
}

/// The body of `GET path` on an agent's probe port at `addr`.
pub async fn agent_get(addr: SocketAddr, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    stream.read_to_string(&mut buf).await?;
    Ok(buf.split("\r\n\r\n").nth(1).unwrap_or("").to_owned())
}

/// The agent-side command journal (`/commands`) of the agent whose probe
/// port is `addr`.
pub async fn agent_commands_at(addr: SocketAddr) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&agent_get(addr, "/commands").await?)?)
}

/// Runs a `baton` subcommand with `--output json` against the coordinator
/// at `url`; returns the exit code, the last stdout line that is JSON (Null
/// if none) and stderr.
pub fn baton_json_at(url: &str, args: &[&str]) -> Result<(i32, serde_json::Value, String)> {
    baton_json_with(url, &[], args)
}

/// [`baton_json_at`] with `flags` (TLS: `--ca-cert`, `--cert`, `--key`).
pub fn baton_json_with(
    url: &str,
    flags: &[String],
    args: &[&str],
) -> Result<(i32, serde_json::Value, String)> {
    let out = Command::new(bin("baton"))
        .args(["--coordinator", url, "--output", "json"])
        .args(flags)
        .args(args)
        .output()?;
    baton_output(&out)
}

/// A development PKI for cluster `e2e`, its `members` and the operator
/// alice, written to `dir` by `baton certs dev`.
pub fn dev_certs(dir: &Path, members: &[String]) -> Result<()> {
    let out = Command::new(bin("baton"))
        .args([
            "certs",
            "dev",
            "--cluster",
            "e2e",
            "--operator",
            "alice",
            "--out",
        ])
        .arg(dir)
        .arg("--members")
        .arg(members.join(","))
        .output()?;
    if !out.status.success() {
        bail!(
            "baton certs dev failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A finished `baton --output json` run as (exit code, the last stdout line
/// that is JSON or Null, stderr).
pub fn baton_output(out: &std::process::Output) -> Result<(i32, serde_json::Value, String)> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{') || l.starts_with('['))
        .map(serde_json::from_str)
        .transpose()?
        .unwrap_or(serde_json::Value::Null);
    Ok((
        out.status.code().unwrap_or(-1),
        json,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `baton --output json status` against the coordinator at `url`.
pub fn status_at(url: &str) -> Result<FleetStatus> {
    status_with(url, &[])
}

/// [`status_at`] with CLI `flags`.
pub fn status_with(url: &str, flags: &[String]) -> Result<FleetStatus> {
    let (code, json, stderr) = baton_json_with(url, flags, &["status"])?;
    if code != 0 {
        bail!("baton status failed: {stderr}");
    }
    Ok(serde_json::from_value(json)?)
}

/// Polls `baton status` at `url` until `f` holds or `within` passes; the
/// error names what was awaited and shows the last status.
pub async fn wait_status_at(
    url: &str,
    what: &str,
    within: Duration,
    f: impl FnMut(&FleetStatus) -> bool,
) -> Result<FleetStatus> {
    wait_status_with(url, &[], what, within, f).await
}

/// [`wait_status_at`] with CLI `flags`.
pub async fn wait_status_with(
    url: &str,
    flags: &[String],
    what: &str,
    within: Duration,
    mut f: impl FnMut(&FleetStatus) -> bool,
) -> Result<FleetStatus> {
    let deadline = tokio::time::Instant::now() + within;
    let mut last = None;
    loop {
        match status_with(url, flags) {
            Ok(s) if f(&s) => return Ok(s),
            Ok(s) => last = Some(s),
            Err(_) if tokio::time::Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {within:?} waiting for: {what}; last status: {last:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The argv that runs one samplekv member.
pub fn member_argv(
    samplekv: &str,
    id: u64,
    addr: SocketAddr,
    peers: &str,
    data_dir: &str,
    release_dir: &str,
) -> Vec<String> {
    vec![
        samplekv.to_owned(),
        "--id".into(),
        id.to_string(),
        "--listen".into(),
        addr.to_string(),
        "--peers".into(),
        peers.to_owned(),
        "--data-dir".into(),
        data_dir.to_owned(),
        "--release-dir".into(),
        release_dir.to_owned(),
    ]
}

/// A samplekv release directory: the member binary (a launcher for the
/// workspace build, so v1 and v2 come from one build) and its manifest.
pub fn build_release(
    root: &Path,
    version: &str,
    format_version: u32,
    fail_start: bool,
) -> Result<PathBuf> {
    let dir = root.join("builds").join(version);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let launcher = dir.join("samplekv");
    fs::write(
        &launcher,
        format!(
            "#!/bin/sh\nexec {:?} \"$@\"\n",
            bin("samplekv").to_string_lossy()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&launcher, fs::Permissions::from_mode(0o755))?;
    write_manifest(&dir, version, format_version, fail_start)?;
    Ok(dir)
}

/// How `baton release` names the cluster's store: `--store DIR` for a dir
/// store, else `--store-config` with the coordinator's config file.
fn store_flag<'a>(
    spec: &StoreSpec,
    store_dir: &'a Path,
    coordinator_config: &'a Path,
) -> (&'static str, &'a Path) {
    match spec {
        StoreSpec::Dir => ("--store", store_dir),
        StoreSpec::S3 { .. } => ("--store-config", coordinator_config),
    }
}

/// `baton release publish --store DIR`, as an operator runs it.
pub fn publish_release(
    store: &Path,
    build: &Path,
    version: &str,
    format_version: u32,
) -> Result<()> {
    publish_release_with(("--store", store), build, version, format_version)
}

/// `baton release publish` with the store named by `flag` (`--store DIR`
/// or `--store-config FILE`).
pub fn publish_release_with(
    (flag, store): (&str, &Path),
    build: &Path,
    version: &str,
    format_version: u32,
) -> Result<()> {
    let out = Command::new(bin("baton"))
        .args([
            "release",
            "publish",
            "--name",
            "samplekv",
            "--version",
            version,
        ])
        .arg("--format-version")
        .arg(format_version.to_string())
        .arg(flag)
        .arg(store)
        .arg("--from")
        .arg(build)
        .output()?;
    if !out.status.success() {
        bail!(
            "baton release publish failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Copies the directory tree `from` into `to` (a release build, a state
/// dir onto another disk).
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &target)?;
        } else {
            fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

/// Writes a samplekv release manifest.
pub fn write_manifest(
    dir: &Path,
    version: &str,
    format_version: u32,
    fail_start: bool,
) -> Result<()> {
    let m = BTreeMap::from([
        ("name", toml::Value::from("samplekv")),
        ("version", toml::Value::from(version)),
        (
            "format_version",
            toml::Value::from(i64::from(format_version)),
        ),
        ("fail_start", toml::Value::from(fail_start)),
    ]);
    fs::write(dir.join("manifest.toml"), toml::to_string(&m)?)?;
    Ok(())
}

/// A member's own `Kv.Status`.
pub async fn member_status(addr: &str) -> Result<StatusResponse> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(1))
        .connect()
        .await?;
    Ok(KvClient::new(channel)
        .status(StatusRequest {})
        .await?
        .into_inner())
}

/// A coordinator on its own, for protocol tests that play the agents.
#[derive(Debug)]
pub struct LoneCoordinator {
    pub url: String,
    pub addr: SocketAddr,
    pub proc: Proc,
    pub dir: tempfile::TempDir,
}

impl LoneCoordinator {
    pub async fn start(members: &[&str], heartbeat_ms: u64) -> Result<LoneCoordinator> {
        LoneCoordinator::start_with(members, heartbeat_ms, "").await
    }

    /// As [`LoneCoordinator::start`], with `extra` appended to the
    /// top-level keys of its config (`metrics_listen = ...`).
    pub async fn start_with(
        members: &[&str],
        heartbeat_ms: u64,
        extra: &str,
    ) -> Result<LoneCoordinator> {
        init();
        let dir = tempfile::Builder::new().prefix("baton-coord-").tempdir()?;
        let port = free_port();
        let config = dir.path().join("coordinator.toml");
        fs::write(
            &config,
            format!(
                "cluster_id = \"e2e\"\nlisten = \"127.0.0.1:{port}\"\nheartbeat_ms = {heartbeat_ms}\nmembers = {members:?}\n{extra}\n"
            ),
        )?;
        let mut cmd = Command::new(bin("baton-coordinator"));
        cmd.arg("--config").arg(&config);
        let proc = Proc::spawn("coordinator", &mut cmd, &dir.path().join("coordinator.log"))?;
        let url = format!("http://127.0.0.1:{port}");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if tokio::time::Instant::now() > deadline {
                bail!("coordinator did not listen on {addr}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(LoneCoordinator {
            url,
            addr,
            proc,
            dir,
        })
    }

    pub async fn channel(&self) -> Result<tonic::transport::Channel> {
        Ok(tonic::transport::Endpoint::from_shared(self.url.clone())?
            .connect()
            .await?)
    }
}

/// The coordinator's journal (its replica's raft log) under a cluster's dir.
pub const JOURNAL: &str = "coordinator-state/replica/log";

/// The journal entries one raft log record carries (a proposed entry, or
/// every entry of an import), with the log index that carries them; none
/// for a vote, a blank entry or a membership change.
fn journal_entries_of(record: &serde_json::Value) -> Option<(u64, Vec<serde_json::Value>)> {
    let index = record["entry"]["log_id"]["index"].as_u64()?;
    let proposal = &record["entry"]["payload"]["Normal"];
    let entries = if let Some(entry) = proposal.get("entry") {
        vec![entry.clone()]
    } else if let Some(entries) = proposal["import"]["entries"].as_array() {
        entries.clone()
    } else {
        Vec::new()
    };
    Some((index, entries))
}

/// Every entry of the coordinator journal at `path`, decoded, and where
/// the last whole record ends. Read without changing the file: a torn tail
/// may be an append in progress, so only whole records count. A missing
/// journal has no entries.
pub fn read_journal_at(path: &std::path::Path) -> Result<(Vec<serde_json::Value>, u64)> {
    read_journal_after(path, 0)
}

/// The entries of the coordinator journal at `path` from `offset` on (0,
/// or an end [`read_journal_at`] returned), and where the last whole one
/// ends: a tail reads only what is new.
pub fn read_journal_after(
    path: &std::path::Path,
    offset: u64,
) -> Result<(Vec<serde_json::Value>, u64)> {
    let (records, _torn) = baton_store::records::read_after(path, offset)?;
    let end = records.last().map_or(
        offset.max(baton_store::records::MAGIC.len() as u64),
        baton_store::records::Record::end,
    );
    // By log index: a follower's log may cut entries a dead leader never
    // committed and take others at the same index (a `truncate` record).
    let mut by_index: BTreeMap<u64, Vec<serde_json::Value>> = BTreeMap::new();
    for r in &records {
        let record: serde_json::Value = serde_json::from_slice(&r.payload)
            .with_context(|| format!("{}: the record at offset {}", path.display(), r.offset))?;
        if let Some(after) = record.get("truncate") {
            let from = after["after"].as_u64().map_or(0, |a| a + 1);
            by_index.split_off(&from);
        } else if let Some((index, entries)) = journal_entries_of(&record) {
            by_index.insert(index, entries);
        }
    }
    Ok((by_index.into_values().flatten().collect(), end))
}

/// A reader following a lone replica's journal as it grows: each look
/// decodes only the records appended since the one before, so a test can
/// look every millisecond or so.
#[derive(Debug)]
pub struct JournalTail {
    path: PathBuf,
    end: u64,
    entries: Vec<serde_json::Value>,
}

impl JournalTail {
    pub fn new(path: &Path) -> JournalTail {
        JournalTail {
            path: path.to_owned(),
            end: 0,
            entries: Vec::new(),
        }
    }

    /// Reads what was appended since the last look. `false` while a record
    /// is half written: what it says is not known yet (zeros after the last
    /// record are the log's reserve, not a record).
    pub fn look(&mut self) -> Result<bool> {
        use std::io::{Read, Seek};
        // (A lone replica's log never cuts entries, so what is new only
        // ever adds to what was read.)
        let (entries, end) = read_journal_after(&self.path, self.end)?;
        self.entries.extend(entries);
        self.end = end;
        let mut rest = Vec::new();
        let mut f = fs::File::open(&self.path)?;
        f.seek(std::io::SeekFrom::Start(end))?;
        f.read_to_end(&mut rest)?;
        Ok(rest.iter().all(|b| *b == 0))
    }

    /// Every entry read so far.
    pub fn entries(&self) -> &[serde_json::Value] {
        &self.entries
    }
}

/// Every entry of the coordinator journal at `path` (see [`read_journal_at`]).
pub fn read_journal(path: &std::path::Path) -> Result<Vec<serde_json::Value>> {
    Ok(read_journal_at(path)?.0)
}

/// Prints each event of a coordinator journal as milliseconds since the
/// previous one, from `wall0` (when `baton upgrade` was invoked) to `wall1`
/// (when it returned): where a rollout's time goes. The benches' `--timeline`.
pub fn print_timeline(journal: &std::path::Path, wall0: u64, wall1: u64) -> Result<()> {
    let events: Vec<serde_json::Value> = read_journal(journal)?
        .into_iter()
        .filter(|e| e.get("event").is_some())
        .collect();
    let mut commands = std::collections::BTreeMap::new();
    let mut prev = Some(wall0);
    eprintln!("  +   0 ms  (baton upgrade invoked)");
    for e in &events {
        let at = e["at"].as_u64().unwrap_or(0);
        let kind = e["event"].as_str().unwrap_or("?");
        let what = match kind {
            "command_issued" => {
                let action = e["action"]["action"]
                    .as_str()
                    .or_else(|| e["action"].as_str())
                    .unwrap_or("?")
                    .to_owned();
                let label = format!("{} {action}", e["member"].as_str().unwrap_or("?"));
                commands.insert(e["id"].as_str().unwrap_or("").to_owned(), label.clone());
                label
            }
            "command_succeeded" | "command_failed" => commands
                .get(e["id"].as_str().unwrap_or(""))
                .cloned()
                .unwrap_or_default(),
            _ => format!(
                "{} {}",
                e["member"]
                    .as_str()
                    .or_else(|| e["to"].as_str())
                    .unwrap_or(""),
                e["gate"].as_str().unwrap_or("")
            ),
        };
        let delta = prev.map_or(0, |p| at.saturating_sub(p));
        eprintln!(
            "  +{delta:>4} ms  @{:>5}  {kind:<18} {what}",
            at.saturating_sub(wall0)
        );
        prev = Some(at);
    }
    eprintln!(
        "  +{:>4} ms  (baton upgrade returned)",
        wall1.saturating_sub(prev.unwrap_or(wall1))
    );
    Ok(())
}
