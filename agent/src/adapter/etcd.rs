//! The etcd adapter (3.4 and 3.5): reads a member through etcd's gRPC API
//! (the `etcd-client` crate, on tonic and rustls) on its client URL, with
//! TLS and client certificates when `[target.tls]` is set.
//!
//! This module owns the adapter's config section ([`EtcdConfig`], parsed
//! from [`RawEtcdTls`]), the reads and the handover, and streaming a
//! snapshot to a verified file.
//!
//! - Status: `Maintenance.Status` (member id, leader, raft index, raft
//!   applied index, term, server version, alarms).
//! - The cluster version: `GET /version` (`etcdcluster`) through the shared
//!   HTTP client ([`baton_net::http`]); etcd has no gRPC call for it (3.4
//!   has none at all; 3.5's `Downgrade` answers it only as a side effect).
//! - Health: what etcd's own `/health` checks, without HTTP: no alarm in
//!   Status, a known leader, and a linearizable read (`KV.Range` of one key)
//!   answering. That read goes through raft and stalls for up to a second
//!   around a leader change; so the check waits at most [`HEALTH_WAIT`],
//!   and a slow answer keeps the previous verdict for up to
//!   [`HEALTH_GRACE`]. A leader change is then reported as soon as Status
//!   shows it, not a second later.
//! - Handover: `Maintenance.MoveLeader`.
//! - Snapshot: `Maintenance.Snapshot`, checked against the sha256 etcd
//!   appends ([`EtcdTarget::snapshot_to`]).
//! - Backup: that snapshot streamed into a [`BackupFile`] chunk by chunk;
//!   its revision is read from the finished file by the [`super::bbolt`]
//!   reader, never from a status call made beside it.
//! - Test-restore: the release's own tool (`etcdutl snapshot restore` from
//!   3.5, `etcdctl snapshot restore` before) restores the backup into a
//!   scratch data dir, whose `member/snap/db` must hold the backup's
//!   revision. The tools are found by absolute path ([`RestoreTools`]:
//!   `target.bin_dir`, or `target.etcdutl` / `target.etcdctl`).
//! - Restore (of a stopped member, for `baton restore`): the same tool with
//!   `--name` (this member), `--initial-cluster` and
//!   `--initial-advertise-peer-urls` taken from the snapshot's own
//!   `members` bucket, into a new dir beside the data dir; only when its db
//!   holds the backup's revision is the old data dir moved aside (kept) and
//!   the new one put in its place.
//!
//! etcd names members by uint64 ids; baton names them by the etcd member
//! *name*, which must equal the baton member id (`etcd --name n1`). The
//! id-to-name map comes from `Cluster.MemberList` and is refreshed whenever
//! an unknown id shows up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use baton_domain::{Health, MemberId, Role};
use baton_net::http::{HttpClient, chain};
use baton_net::tls::{ClientTls, HandshakeError, TlsConfigError};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::{Adapter, AdapterError as TargetError, Backup, BackupFile, MemberState, bbolt};

/// How long one poll waits for the health read.
pub const HEALTH_WAIT: Duration = Duration::from_millis(100);
/// How long a verdict stands in for a health read that is slow to answer.
pub const HEALTH_GRACE: Duration = Duration::from_secs(3);

/// The longest a probing handshake waits to learn why a TLS connection
/// failed.
const PROBE_WAIT: Duration = Duration::from_millis(500);

/// The longest a scratch test-restore may run.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Where the release binaries are when `target.bin_dir` is not set: where
/// Debian's `etcd-server` and `etcd-client` put `etcd` and `etcdctl`.
pub const DEFAULT_BIN_DIR: &str = "/usr/bin";

/// The key the health read asks for (as etcd's own `/health` does); it
/// need not exist.
const HEALTH_KEY: &[u8] = b"health";

/// `[target.tls]` as written: the CA that signs etcd's `--cert-file`, and
/// the agent's client certificate and key for an etcd run with
/// `--client-cert-auth`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEtcdTls {
    ca: PathBuf,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    /// The name to verify etcd's certificate against, when it differs from
    /// the host in `addr`.
    domain: Option<String>,
}

/// An invalid etcd config key, named as the operator wrote it.
#[derive(Debug, thiserror::Error)]
#[error("config key `{key}` is invalid: {reason}")]
pub struct EtcdConfigError {
    pub key: &'static str,
    pub reason: String,
}

fn invalid(key: &'static str, reason: impl Into<String>) -> EtcdConfigError {
    EtcdConfigError {
        key,
        reason: reason.into(),
    }
}

/// The etcd adapter's validated settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// The client URL's `host:port` (no scheme: `https` when `tls` is set).
    pub addr: String,
    /// Bound on one request.
    pub timeout: Duration,
    /// TLS to etcd, read and checked at load.
    pub tls: Option<ClientTls>,
    /// The release tools a scratch test-restore runs.
    pub tools: RestoreTools,
}

/// The member's release tools, by absolute path: `etcdutl` restores a
/// 3.5 snapshot, `etcdctl` (with `ETCDCTL_API=3`) a 3.4 one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreTools {
    pub etcdutl: PathBuf,
    pub etcdctl: PathBuf,
}

impl Default for RestoreTools {
    /// Next to a Debian-installed `/usr/bin/etcd`.
    fn default() -> Self {
        RestoreTools::in_dir(Path::new(DEFAULT_BIN_DIR))
    }
}

impl RestoreTools {
    /// Both tools in `dir`, next to the release's `etcd`.
    pub fn in_dir(dir: &Path) -> Self {
        RestoreTools {
            etcdutl: dir.join("etcdutl"),
            etcdctl: dir.join("etcdctl"),
        }
    }

    /// `target.bin_dir` (default [`DEFAULT_BIN_DIR`]), with `target.etcdutl`
    /// and `target.etcdctl` overriding one tool each; every path absolute.
    pub fn from_keys(
        bin_dir: Option<PathBuf>,
        etcdutl: Option<PathBuf>,
        etcdctl: Option<PathBuf>,
    ) -> Result<Self, EtcdConfigError> {
        let absolute = |key: &'static str, p: &Path| {
            if p.is_absolute() {
                Ok(())
            } else {
                Err(invalid(
                    key,
                    format!("{} must be an absolute path", p.display()),
                ))
            }
        };
        let dir = bin_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_BIN_DIR));
        absolute("target.bin_dir", &dir)?;
        let mut tools = RestoreTools::in_dir(&dir);
        if let Some(p) = etcdutl {
            absolute("target.etcdutl", &p)?;
            tools.etcdutl = p;
        }
        if let Some(p) = etcdctl {
            absolute("target.etcdctl", &p)?;
            tools.etcdctl = p;
        }
        Ok(tools)
    }
}

impl EtcdConfig {
    /// Validates `[target]` for `kind = "etcd"`: the PEM files are read and
    /// checked now, so a missing or wrong one fails at start, naming its key.
    pub fn from_raw(
        addr: String,
        timeout: Duration,
        tls: Option<RawEtcdTls>,
    ) -> Result<Self, EtcdConfigError> {
        if addr.is_empty() {
            return Err(invalid("target.addr", "empty"));
        }
        if addr.contains("://") {
            return Err(invalid(
                "target.addr",
                format!(
                    "{addr:?} must be host:port without a scheme; https is used when [target.tls] is set"
                ),
            ));
        }
        let tls = tls.map(load_tls).transpose()?;
        Ok(EtcdConfig {
            addr,
            timeout,
            tls,
            tools: RestoreTools::default(),
        })
    }
}

fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, EtcdConfigError> {
    std::fs::read(path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))
}

fn load_tls(raw: RawEtcdTls) -> Result<ClientTls, EtcdConfigError> {
    let ca_pem = read_pem("target.tls.ca", &raw.ca)?;
    let identity = match (&raw.cert, &raw.key) {
        (Some(cert), Some(key)) => Some((
            read_pem("target.tls.cert", cert)?,
            read_pem("target.tls.key", key)?,
        )),
        (None, None) => None,
        (Some(_), None) => {
            return Err(invalid(
                "target.tls.key",
                "`cert` is set, so `key` must be too",
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                "target.tls.cert",
                "`key` is set, so `cert` must be too",
            ));
        }
    };
    let tls = ClientTls {
        ca_pem,
        identity,
        domain: raw.domain,
        files: None,
    };
    tls.rustls_config().map_err(|e| {
        let key = match e {
            TlsConfigError::BadCa(_) => "target.tls.ca",
            TlsConfigError::BadCert(_) => "target.tls.cert",
            TlsConfigError::BadKey(_) => "target.tls.key",
            TlsConfigError::BadDomain(_) => "target.tls.domain",
            TlsConfigError::Rustls(_) => "target.tls",
        };
        invalid(key, e.to_string())
    })?;
    Ok(tls)
}

/// The connections to one member, made on first use (a tonic channel needs
/// the runtime).
#[derive(Clone)]
struct Clients {
    grpc: etcd_client::Client,
    http: HttpClient,
    version_url: hyper::Uri,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("version_url", &self.version_url)
            .finish_non_exhaustive()
    }
}

/// Reads one etcd member.
#[derive(Debug)]
pub struct EtcdTarget {
    /// Who this is, for messages: `etcd member n1 at https://…`.
    label: String,
    /// The baton member id, which is the etcd member's name (a restore
    /// restores the member of that name); None outside an agent.
    member: Option<String>,
    addr: String,
    timeout: Duration,
    tls: Option<ClientTls>,
    /// The release tools a scratch test-restore runs.
    tools: RestoreTools,
    /// The member's etcd release as the last backup's Status saw it: it
    /// picks the restore tool.
    backup_release: Mutex<Option<String>>,
    /// The gRPC and HTTP clients, built once on first use.
    clients: OnceCell<Clients>,
    /// etcd member id -> member name, refreshed on an unknown id.
    names: Mutex<BTreeMap<u64, String>>,
    /// The last health verdict that arrived in time, and when.
    last_health: Mutex<Option<(Instant, Health, String)>>,
}

/// Whether a transport failure reads like a TLS problem.
fn looks_like_tls(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    [
        "certificate",
        "alert",
        "tls",
        "handshake",
        "invalid peer",
        "unknownissuer",
    ]
    .iter()
    .any(|w| t.contains(w))
}

impl EtcdTarget {
    /// A plain-HTTP(2) etcd at `addr` (`host:port`).
    pub fn new(addr: &str, timeout: Duration) -> Self {
        Self::build(
            format!("etcd at http://{addr}"),
            addr,
            timeout,
            None,
            RestoreTools::default(),
        )
    }

    /// The etcd member's name (the baton member id), for a restore.
    pub fn for_member(mut self, member: &str) -> Self {
        self.member = Some(member.to_owned());
        self
    }

    /// Runs scratch test-restores with `tools` instead of the defaults.
    pub fn with_tools(mut self, tools: RestoreTools) -> Self {
        self.tools = tools;
        self
    }

    /// The adapter for baton member `member`, as configured.
    pub fn from_config(member: &MemberId, config: &EtcdConfig) -> Self {
        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        Self::build(
            format!("etcd member {member} at {scheme}://{}", config.addr),
            &config.addr,
            config.timeout,
            config.tls.clone(),
            config.tools.clone(),
        )
        .for_member(member.as_str())
    }

    fn build(
        label: String,
        addr: &str,
        timeout: Duration,
        tls: Option<ClientTls>,
        tools: RestoreTools,
    ) -> Self {
        EtcdTarget {
            label,
            member: None,
            addr: addr.to_owned(),
            timeout,
            tls,
            tools,
            backup_release: Mutex::new(None),
            clients: OnceCell::new(),
            names: Mutex::new(BTreeMap::new()),
            last_health: Mutex::new(None),
        }
    }

    fn unreachable(&self, detail: impl Into<String>) -> TargetError {
        TargetError::Unreachable {
            addr: self.addr.clone(),
            detail: format!("{}: {}", self.label, detail.into()),
        }
    }

    fn bad(&self, detail: impl Into<String>) -> TargetError {
        TargetError::BadAnswer {
            addr: self.addr.clone(),
            kind: "etcd",
            detail: format!("{}: {}", self.label, detail.into()),
        }
    }

    /// What went wrong with `call`. When TLS is on and the transport
    /// failed, one probing handshake says whether TLS is why (the alert of
    /// an etcd that wants a client certificate can be lost in the reset
    /// that follows it), and the message says what to set.
    async fn describe(&self, call: &str, e: &etcd_client::Error) -> String {
        let (text, transport) = match e {
            etcd_client::Error::GRpcStatus(s) => {
                let mut t = format!("{:?}: {}", s.code(), s.message());
                let source = std::error::Error::source(s);
                if let Some(src) = source {
                    let more = chain(src);
                    if !t.contains(&more) {
                        t.push_str(": ");
                        t.push_str(&more);
                    }
                }
                (t, source.is_some())
            }
            other => (chain(other), true),
        };
        let Some(tls) = &self.tls else {
            let hint = if looks_like_tls(&text) {
                "; etcd seems to want TLS: set [target.tls]"
            } else {
                ""
            };
            return format!("{call} failed: {text}{hint}");
        };
        let verdict = if transport {
            match tls.probe(&self.addr, PROBE_WAIT.min(self.timeout)).await {
                Err(
                    e @ (HandshakeError::Handshake { .. }
                    | HandshakeError::Rejected { .. }
                    | HandshakeError::NoClientCert { .. }
                    | HandshakeError::Config(_)),
                ) => Some(e.to_string()),
                _ => None,
            }
        } else {
            None
        };
        if verdict.is_none() && !looks_like_tls(&text) {
            return format!("{call} failed: {text}");
        }
        let hint = if tls.identity.is_none() {
            "if etcd runs with --client-cert-auth, set [target.tls] cert and key to a client certificate signed by its --trusted-ca-file"
        } else {
            "check that [target.tls] ca signs etcd's --cert-file, and that cert and key are signed by etcd's --trusted-ca-file"
        };
        match verdict {
            Some(why) => format!("{call} failed: TLS handshake failed: {why} ({text}); {hint}"),
            None => format!("{call} failed: TLS handshake failed: {text}; {hint}"),
        }
    }

    /// The transport failed, or etcd refused: both mean the member cannot
    /// be read right now.
    async fn failed(&self, call: &str, e: &etcd_client::Error) -> TargetError {
        self.unreachable(self.describe(call, e).await)
    }

    /// `result` of `call`, its error described by [`Self::failed`].
    async fn check<T>(
        &self,
        call: &str,
        result: Result<T, etcd_client::Error>,
    ) -> Result<T, TargetError> {
        match result {
            Ok(v) => Ok(v),
            Err(e) => Err(self.failed(call, &e).await),
        }
    }

    async fn clients(&self) -> Result<&Clients, TargetError> {
        self.clients
            .get_or_try_init(|| async {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                let url = format!("{scheme}://{}", self.addr);
                let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())
                    .map_err(|e| self.bad(format!("{url:?} is not a usable URL: {e}")))?
                    .connect_timeout(self.timeout)
                    .timeout(self.timeout);
                let http = match &self.tls {
                    Some(tls) => {
                        endpoint = tls
                            .apply(endpoint)
                            .map_err(|e| self.unreachable(format!("TLS setup: {}", chain(&e))))?;
                        HttpClient::with_tls(tls, self.timeout).map_err(|e| e.to_string())
                    }
                    None => HttpClient::with_roots(rustls::RootCertStore::empty(), self.timeout)
                        .map_err(|e| e.to_string()),
                }
                .map_err(|e| self.unreachable(format!("HTTP client setup: {e}")))?
                .with_user_agent(concat!("baton-agent/", env!("CARGO_PKG_VERSION")));
                let channel = etcd_client::Channel::Tonic(endpoint.connect_lazy());
                let grpc = self
                    .check(
                        "connect",
                        etcd_client::Client::from_channel(channel, None).await,
                    )
                    .await?;
                let version_url = baton_net::http::parse_url(&format!("{url}/version"))
                    .map_err(|e| self.bad(e.to_string()))?;
                Ok(Clients {
                    grpc,
                    http,
                    version_url,
                })
            })
            .await
    }

    async fn grpc(&self) -> Result<etcd_client::Client, TargetError> {
        Ok(self.clients().await?.grpc.clone())
    }

    async fn refresh_names(&self) -> Result<(), TargetError> {
        let list = self.grpc().await?.member_list().await;
        let list = self.check("MemberList", list).await?;
        let names = list
            .members()
            .iter()
            .filter(|m| !m.name().is_empty())
            .map(|m| (m.id(), m.name().to_owned()))
            .collect();
        *self.names.lock().unwrap_or_else(|p| p.into_inner()) = names;
        Ok(())
    }

    fn known_name(&self, id: u64) -> Option<String> {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    async fn name_of(&self, id: u64) -> Result<MemberId, TargetError> {
        let name = match self.known_name(id) {
            Some(n) => n,
            None => {
                self.refresh_names().await?;
                self.known_name(id).ok_or_else(|| {
                    self.bad(format!("etcd member id {id:x} is not in the member list"))
                })?
            }
        };
        MemberId::new(name)
            .map_err(|e| self.bad(format!("etcd member name is not a baton member id: {e}")))
    }

    async fn id_of(&self, member: &MemberId) -> Result<u64, TargetError> {
        self.refresh_names().await?;
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(_, name)| name.as_str() == member.as_str())
            .map(|(id, _)| *id)
            .ok_or_else(|| {
                self.bad(format!(
                    "no etcd member is named {member}; run etcd with --name {member}"
                ))
            })
    }

    /// A linearizable read, waiting at most [`HEALTH_WAIT`]; a slower
    /// answer keeps a verdict younger than [`HEALTH_GRACE`].
    async fn health(&self) -> (Health, String) {
        let asked = Instant::now();
        let read = async {
            let mut kv = self.grpc().await?;
            let options = etcd_client::GetOptions::new()
                .with_keys_only()
                .with_limit(1);
            let got = kv.get(HEALTH_KEY, Some(options)).await;
            self.check("the health read (linearizable Range)", got)
                .await
        };
        let verdict = match tokio::time::timeout(HEALTH_WAIT, read).await {
            Ok(Ok(_)) => (Health::Healthy, String::new()),
            Ok(Err(e)) => (Health::Degraded, e.to_string()),
            Err(_) => {
                let last = self
                    .last_health
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                return match last {
                    Some((at, health, detail)) if asked.duration_since(at) <= HEALTH_GRACE => {
                        (health, detail)
                    }
                    _ => (
                        Health::Degraded,
                        format!(
                            "{}: the health read did not answer within {HEALTH_WAIT:?} (none answered in the last {HEALTH_GRACE:?})",
                            self.label
                        ),
                    ),
                };
            }
        };
        *self.last_health.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((asked, verdict.0, verdict.1.clone()));
        verdict
    }

    /// `GET /version`: the cluster version (`etcdcluster`).
    async fn cluster_version(&self) -> Result<String, TargetError> {
        let clients = self.clients().await?;
        let answer = clients
            .http
            .get(&clients.version_url)
            .await
            .map_err(|e| self.unreachable(format!("GET /version: {e}")))?;
        if !answer.status.is_success() {
            return Err(self.unreachable(format!(
                "GET /version answered {}: {}",
                answer.status,
                answer.quoted_body()
            )));
        }
        let v: serde_json::Value = serde_json::from_str(&answer.body)
            .map_err(|e| self.bad(format!("GET /version: the body is not JSON: {e}")))?;
        Ok(v["etcdcluster"].as_str().unwrap_or_default().to_owned())
    }

    async fn read(&self) -> Result<MemberState, TargetError> {
        let st = self.grpc().await?.status().await;
        let st = self.check("Status", st).await?;
        let me = st.header().map(|h| h.member_id()).unwrap_or_default();
        let role = match st.leader() {
            0 => Role::Candidate,
            l if l == me => Role::Leader,
            _ => Role::Follower,
        };
        let leader = match st.leader() {
            0 => None,
            l => Some(self.name_of(l).await?),
        };
        let (version, (health, health_detail)) =
            tokio::join!(self.cluster_version(), self.health());
        let cluster_version = version?;
        let (health, health_detail) = if leader.is_none() {
            (Health::Degraded, "member knows no leader".to_owned())
        } else if !st.errors().is_empty() {
            // etcd's /health fails on any alarm (NOSPACE, CORRUPT).
            (
                Health::Degraded,
                format!("{}: etcd reports {}", self.label, st.errors().join("; ")),
            )
        } else {
            (health, health_detail)
        };
        let committed = st.raft_index();
        let applied = st.raft_applied_index();
        Ok(MemberState {
            role,
            leader,
            committed_revision: committed.max(applied),
            applied_revision: applied,
            release: st.version().to_owned(),
            // etcd's compatibility is a version path, checked in preflight.
            format_version: 0,
            term: st
                .raft_term()
                .max(st.header().map(|h| h.raft_term()).unwrap_or_default()),
            health,
            health_detail,
            cluster_version,
        })
    }
}

/// A snapshot written to disk and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotFile {
    pub path: std::path::PathBuf,
    pub bytes: u64,
    /// Hex sha256 of the whole file, for the backup's manifest.
    pub sha256: String,
}

impl EtcdTarget {
    /// Streams `Maintenance.Snapshot` into `dest` and verifies it: etcd
    /// appends the sha256 of the database to the stream, and a snapshot
    /// whose tail does not match is deleted, never kept. Written to a temp
    /// file, fsynced, then renamed. Each message must come within the
    /// adapter's timeout.
    pub async fn snapshot_to(&self, dest: &Path) -> Result<SnapshotFile, TargetError> {
        let chunks = self.snapshot_chunks().await?;
        self.save_snapshot(chunks, dest).await
    }

    /// `Maintenance.Snapshot` from this member's own endpoint, as a stream
    /// of chunks; each must come within the adapter's timeout.
    async fn snapshot_chunks(
        &self,
    ) -> Result<impl Stream<Item = Result<Vec<u8>, TargetError>> + '_, TargetError> {
        let stream = self.grpc().await?.snapshot().await;
        let stream = self.check("Snapshot", stream).await?;
        Ok(futures::stream::unfold(
            stream,
            move |mut stream| async move {
                let next = match tokio::time::timeout(self.timeout, stream.message()).await {
                    Err(_) => {
                        Err(self
                            .unreachable(format!("Snapshot: no message within {:?}", self.timeout)))
                    }
                    Ok(Err(e)) => Err(self.failed("Snapshot (mid-stream)", &e).await),
                    Ok(Ok(None)) => return None,
                    Ok(Ok(Some(msg))) => Ok(msg.blob().to_vec()),
                };
                Some((next, stream))
            },
        ))
    }

    /// Writes the chunks of a snapshot stream to `dest` (through a temp
    /// file) and keeps it only if its last 32 bytes are the sha256 of the
    /// rest. Any failure deletes the temp file.
    async fn save_snapshot(
        &self,
        chunks: impl Stream<Item = Result<Vec<u8>, TargetError>>,
        dest: &Path,
    ) -> Result<SnapshotFile, TargetError> {
        let tmp = dest.with_extension("partial");
        let result = self.write_snapshot(chunks, dest, &tmp).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result
    }

    async fn write_snapshot(
        &self,
        chunks: impl Stream<Item = Result<Vec<u8>, TargetError>>,
        dest: &Path,
        tmp: &Path,
    ) -> Result<SnapshotFile, TargetError> {
        use sha2::{Digest, Sha256};
        let io_err =
            |e: std::io::Error| self.unreachable(format!("snapshot to {}: {e}", dest.display()));
        let mut file = tokio::fs::File::create(tmp).await.map_err(io_err)?;
        let mut check = AppendedSha256::default();
        let mut whole = Sha256::new();
        let mut chunks = std::pin::pin!(chunks);
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            file.write_all(&chunk).await.map_err(io_err)?;
            whole.update(&chunk);
            check.update(&chunk);
        }
        file.sync_all().await.map_err(io_err)?;
        drop(file);
        let bytes = check.bytes;
        if !check.matches() {
            return Err(self.bad(format!(
                "snapshot of {bytes} bytes failed its sha256 check (etcd's appended checksum does not match); it was deleted"
            )));
        }
        tokio::fs::rename(tmp, dest).await.map_err(io_err)?;
        Ok(SnapshotFile {
            path: dest.to_owned(),
            bytes,
            sha256: whole
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        })
    }
}

/// etcd's snapshot stream ends with the sha256 of everything before it:
/// this hashes the data while holding the last 32 bytes back.
#[derive(Default)]
struct AppendedSha256 {
    db: sha2::Sha256,
    tail: Vec<u8>,
    bytes: u64,
}

impl AppendedSha256 {
    fn update(&mut self, chunk: &[u8]) {
        use sha2::Digest;
        self.bytes += chunk.len() as u64;
        self.tail.extend_from_slice(chunk);
        if self.tail.len() > 32 {
            let keep = self.tail.split_off(self.tail.len() - 32);
            self.db.update(&self.tail);
            self.tail = keep;
        }
    }

    /// Whether the stream ended with the sha256 of the rest.
    fn matches(self) -> bool {
        use sha2::Digest;
        self.tail.len() == 32 && self.db.finalize().as_slice() == self.tail.as_slice()
    }
}

/// A scratch directory, removed when this drops (whatever happened).
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Whether `release` (`3.5.1`) has `etcdutl`: 3.5 and later.
fn has_etcdutl(release: &str) -> Option<bool> {
    let mut parts = release.trim_start_matches('v').split('.');
    let major: u64 = parts.next()?.parse().ok()?;
    let minor: u64 = parts.next()?.parse().ok()?;
    Some(major > 3 || (major == 3 && minor >= 5))
}

/// The revision the etcd database at `path` holds, read off the file.
async fn read_db_revision(path: &Path) -> Result<bbolt::DbRevision, String> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || bbolt::read_revision(&path))
        .await
        .map_err(|e| format!("the bbolt reader failed: {e}"))?
        .map_err(|e| e.to_string())
}

impl EtcdTarget {
    /// Streams the snapshot into `dest` through a [`BackupFile`], checks
    /// etcd's appended sha256, and reads the revision off the finished
    /// file.
    async fn backup_into(&self, file: BackupFile, dest: &Path) -> Result<Backup, TargetError> {
        let mut file = file;
        let io = |e: std::io::Error| {
            self.bad(format!(
                "cannot write the backup to {}: {e}",
                dest.display()
            ))
        };
        let chunks = self.snapshot_chunks().await?;
        let mut chunks = std::pin::pin!(chunks);
        let mut check = AppendedSha256::default();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            file.write(&chunk).map_err(io)?;
            check.update(&chunk);
        }
        let bytes = check.bytes;
        if !check.matches() {
            return Err(self.bad(format!(
                "the snapshot of {bytes} bytes failed its sha256 check (etcd's appended checksum does not match); it was deleted, take the backup again"
            )));
        }
        let db = read_db_revision(dest).await.map_err(|e| {
            self.bad(format!(
                "the snapshot passed etcd's sha256 but is not a readable etcd database ({e}); it was deleted"
            ))
        })?;
        file.finish(db.revision).map_err(io)
    }

    /// The release whose tool restores this member's backups: the one the
    /// last backup saw, or the member's own now.
    async fn restore_release(&self) -> Result<String, TargetError> {
        let known = self
            .backup_release
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(release) = known {
            return Ok(release);
        }
        let st = self.grpc().await?.status().await;
        Ok(self.check("Status", st).await?.version().to_owned())
    }

    /// Runs `tool snapshot restore backup --data-dir data`, bounded by
    /// [`RESTORE_TIMEOUT`]; the error has the tool's own words.
    async fn run_restore(
        &self,
        tool: &Path,
        key: &str,
        backup: &Path,
        data: &Path,
    ) -> Result<(), TargetError> {
        self.run_restore_with(tool, key, backup, data, &[]).await
    }

    /// [`Self::run_restore`] with extra `--flag value` pairs.
    async fn run_restore_with(
        &self,
        tool: &Path,
        key: &str,
        backup: &Path,
        data: &Path,
        extra: &[(&str, &str)],
    ) -> Result<(), TargetError> {
        if !tool.is_file() {
            return Err(self.bad(format!(
                "cannot test-restore: {} does not exist; install the member's release tools there or set target.{key} (or target.bin_dir) to where they are",
                tool.display()
            )));
        }
        let mut cmd = tokio::process::Command::new(tool);
        cmd.env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(backup)
            .arg("--data-dir")
            .arg(data)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        for (flag, value) in extra {
            cmd.arg(flag).arg(value);
        }
        let shown = format!(
            "{} snapshot restore {} --data-dir {}",
            tool.display(),
            backup.display(),
            data.display()
        );
        let out = match tokio::time::timeout(RESTORE_TIMEOUT, cmd.output()).await {
            Err(_) => {
                return Err(self.bad(format!(
                    "`{shown}` did not finish within {RESTORE_TIMEOUT:?}"
                )));
            }
            Ok(Err(e)) => return Err(self.bad(format!("cannot run `{shown}`: {e}"))),
            Ok(Ok(out)) => out,
        };
        if !out.status.success() {
            // The tool's `Error:` lines say why; its log lines (with Go
            // stacks) do not.
            let stderr = String::from_utf8_lossy(&out.stderr);
            let mut why: Vec<&str> = stderr.lines().filter(|l| l.starts_with("Error")).collect();
            if why.is_empty() {
                why.extend(stderr.lines().last());
            }
            return Err(self.bad(format!(
                "`{shown}` failed ({}): {}",
                out.status,
                why.join(" / ")
            )));
        }
        Ok(())
    }

    async fn restore_into(&self, backup: &Backup, dir: &Path) -> Result<String, TargetError> {
        let release = self.restore_release().await?;
        let (tool, key) = match has_etcdutl(&release) {
            Some(true) => (&self.tools.etcdutl, "etcdutl"),
            Some(false) => (&self.tools.etcdctl, "etcdctl"),
            None => {
                return Err(self.bad(format!(
                    "cannot pick a restore tool: the member's release {release:?} is not a version"
                )));
            }
        };
        let data = dir.join("data");
        self.run_restore(tool, key, &backup.path, &data).await?;
        let db_path = data.join("member/snap/db");
        let db = read_db_revision(&db_path).await.map_err(|e| {
            self.bad(format!(
                "the restored member's database cannot be read: {e}"
            ))
        })?;
        if db.revision != backup.revision {
            return Err(self.bad(format!(
                "the restored member's database {} holds revision {}, but the backup {} says revision {}; do not rely on this backup, take it again",
                db_path.display(),
                db.revision,
                backup.path.display(),
                backup.revision
            )));
        }
        Ok(format!(
            "test-restored with {key} {release} into a scratch data dir: revision {} ({} keys) as the backup says",
            db.revision, db.keys
        ))
    }
}

impl EtcdTarget {
    /// `etcdutl` (3.5+) or `etcdctl` (3.4) for data of `release`.
    fn tool_for(&self, release: &str) -> Result<(&Path, &'static str), TargetError> {
        match has_etcdutl(release) {
            Some(true) => Ok((&self.tools.etcdutl, "etcdutl")),
            Some(false) => Ok((&self.tools.etcdctl, "etcdctl")),
            None => Err(self.bad(format!(
                "cannot pick a restore tool: the release {release:?} is not a version"
            ))),
        }
    }

    /// Restores the stopped member's `data_dir` from `backup`: the member of
    /// this name with the peer URLs the snapshot's own `members` bucket
    /// records, into a new dir next to it; its db must hold `revision`;
    /// only then is the old dir moved aside (never deleted) and the new one
    /// put in its place.
    async fn restore_member(
        &self,
        backup: &Path,
        revision: u64,
        release: &str,
        data_dir: &Path,
    ) -> Result<String, TargetError> {
        let Some(name) = self.member.clone() else {
            return Err(
                self.bad("cannot restore: this adapter was built without its member's name")
            );
        };
        let path = backup.to_owned();
        let members = tokio::task::spawn_blocking(move || bbolt::read_members(&path))
            .await
            .map_err(|e| self.bad(format!("the bbolt reader failed: {e}")))?
            .map_err(|e| self.bad(format!("cannot read the backup's members: {e}")))?;
        let Some(own) = members.iter().find(|m| m.name == name) else {
            let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
            return Err(self.bad(format!(
                "the backup's cluster has no member named {name} (it has {names:?}); restore only into the cluster it was taken from"
            )));
        };
        let initial_cluster = members
            .iter()
            .filter(|m| !m.is_learner)
            .flat_map(|m| m.peer_urls.iter().map(move |u| format!("{}={u}", m.name)))
            .collect::<Vec<_>>()
            .join(",");
        let (tool, key) = self.tool_for(release)?;
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let sibling = |what: &str| {
            let mut p = data_dir.as_os_str().to_owned();
            p.push(format!(".{what}-{ms}"));
            PathBuf::from(p)
        };
        let fresh = sibling("restoring");
        let guard = ScratchDir(fresh.clone());
        let peer_urls = own.peer_urls.join(",");
        self.run_restore_with(
            tool,
            key,
            backup,
            &fresh,
            &[
                ("--name", name.as_str()),
                ("--initial-cluster", initial_cluster.as_str()),
                ("--initial-advertise-peer-urls", peer_urls.as_str()),
            ],
        )
        .await?;
        let db_path = fresh.join("member/snap/db");
        let db = read_db_revision(&db_path).await.map_err(|e| {
            self.bad(format!(
                "the restored member's database cannot be read: {e}"
            ))
        })?;
        if db.revision != revision {
            return Err(self.bad(format!(
                "the restored database holds revision {}, the backup's manifest says {revision}; the member's data was not changed",
                db.revision
            )));
        }
        let aside = sibling("pre-restore");
        let moved = match std::fs::rename(data_dir, &aside) {
            Ok(()) => Some(aside),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(self.bad(format!(
                    "cannot move the member's data dir {} aside: {e}; it was not changed",
                    data_dir.display()
                )));
            }
        };
        std::fs::rename(&fresh, data_dir).map_err(|e| {
            self.bad(format!(
                "cannot put the restored data dir in place at {}: {e}; the earlier data is in {}",
                data_dir.display(),
                moved
                    .as_ref()
                    .map_or("(none)".into(), |p| p.display().to_string())
            ))
        })?;
        std::mem::forget(guard);
        Ok(format!(
            "restored member {name} with {key} {release} (initial cluster {initial_cluster}) at revision {} ({} keys) into {}; {}",
            db.revision,
            db.keys,
            data_dir.display(),
            moved.map_or("there was no earlier data".into(), |p| format!(
                "the earlier data is in {}",
                p.display()
            ))
        ))
    }
}

impl Adapter for EtcdTarget {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    /// etcd's own upgrade rule: one minor release at a time, no major
    /// change, never below the cluster version.
    fn version_rule(&self) -> baton_domain::VersionRule {
        baton_domain::VersionRule::SemverOneMinor {
            no_major_change: true,
            not_below_cluster_version: true,
        }
    }

    fn poll(&self) -> BoxFuture<'_, Result<MemberState, TargetError>> {
        Box::pin(self.read())
    }

    fn step_down<'a>(&'a self, to: &'a MemberId) -> BoxFuture<'a, Result<String, TargetError>> {
        Box::pin(async move {
            let target = self.id_of(to).await?;
            match self.grpc().await?.move_leader(target).await {
                Ok(_) => Ok(format!(
                    "moved leadership to {to} (etcd id {target}, hex {target:x})"
                )),
                Err(etcd_client::Error::GRpcStatus(s))
                    if std::error::Error::source(&s).is_none() =>
                {
                    // etcd answered, and said no (not the leader, target
                    // not started, …).
                    Err(TargetError::Refused {
                        addr: self.addr.clone(),
                        detail: format!(
                            "{}: MoveLeader to {to} answered {:?}: {}",
                            self.label,
                            s.code(),
                            s.message()
                        ),
                    })
                }
                Err(e) => Err(self.failed(&format!("MoveLeader to {to}"), &e).await),
            }
        })
    }

    /// `Maintenance.Snapshot` from this member's own endpoint, streamed
    /// into `dest`; the revision is read from the finished file. A failed
    /// backup leaves no file.
    fn backup<'a>(&'a self, dest: &'a Path) -> BoxFuture<'a, Result<Backup, TargetError>> {
        Box::pin(async move {
            // Which release wrote it decides the restore tool.
            let st = self.grpc().await?.status().await;
            let release = self.check("Status", st).await?.version().to_owned();
            let file = BackupFile::create(dest).map_err(|e| {
                self.bad(format!(
                    "cannot create the backup file {}: {e}",
                    dest.display()
                ))
            })?;
            let result = self.backup_into(file, dest).await;
            match &result {
                Ok(_) => {
                    *self
                        .backup_release
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = Some(release);
                }
                Err(_) => {
                    let _ = std::fs::remove_file(dest);
                }
            }
            result
        })
    }

    /// Restores `backup` with the release's own tool into a scratch data
    /// dir under `scratch` (removed afterwards, whatever happens) and
    /// requires its database to hold `backup.revision`.
    fn test_restore<'a>(
        &'a self,
        backup: &'a Backup,
        scratch: &'a Path,
    ) -> BoxFuture<'a, Result<String, TargetError>> {
        Box::pin(async move {
            let stem = backup
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "backup".to_owned());
            let dir = ScratchDir(scratch.join(format!("{stem}.restore")));
            let _ = std::fs::remove_dir_all(&dir.0);
            std::fs::create_dir_all(&dir.0).map_err(|e| {
                self.bad(format!(
                    "cannot create the scratch dir {}: {e}",
                    dir.0.display()
                ))
            })?;
            self.restore_into(backup, &dir.0).await
        })
    }

    fn restore<'a>(
        &'a self,
        backup: &'a Path,
        revision: u64,
        release: &'a str,
        data_dir: &'a Path,
    ) -> BoxFuture<'a, Result<String, TargetError>> {
        Box::pin(self.restore_member(backup, revision, release, data_dir))
    }
}

// The etcd `[target]` section and its registry row.

/// The etcd row of [`super::REGISTRY`].
pub const REGISTRATION: super::Registration = super::Registration {
    kind: "etcd",
    parse: parse_config,
};

/// `[target]` as written, for `kind = "etcd"` (`kind` already taken out).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    addr: String,
    timeout_ms: Option<u64>,
    /// `[target.tls]`, see [`RawEtcdTls`].
    tls: Option<RawEtcdTls>,
    /// The directory of the member's release binaries (`etcd`, `etcdctl`,
    /// `etcdutl`), for the scratch test-restore; see [`RestoreTools`].
    bin_dir: Option<PathBuf>,
    etcdutl: Option<PathBuf>,
    etcdctl: Option<PathBuf>,
}

fn parse_config(
    table: toml::Table,
) -> Result<std::sync::Arc<dyn super::AdapterConfig>, super::SectionError> {
    Ok(std::sync::Arc::new(EtcdConfig::from_table(table)?))
}

impl EtcdConfig {
    /// Validates the `[target]` table of an etcd agent (`kind` already
    /// taken out).
    pub fn from_table(table: toml::Table) -> Result<Self, super::SectionError> {
        let raw: RawConfig = super::decode(table)?;
        let section = |e: EtcdConfigError| super::SectionError::invalid(e.key, e.reason);
        let tools =
            RestoreTools::from_keys(raw.bin_dir, raw.etcdutl, raw.etcdctl).map_err(section)?;
        let mut config = EtcdConfig::from_raw(raw.addr, super::timeout(raw.timeout_ms), raw.tls)
            .map_err(section)?;
        config.tools = tools;
        Ok(config)
    }
}

impl super::AdapterConfig for EtcdConfig {
    fn kind(&self) -> &'static str {
        REGISTRATION.kind
    }

    fn build(&self, member: &MemberId) -> Result<std::sync::Arc<dyn Adapter>, TargetError> {
        Ok(std::sync::Arc::new(EtcdTarget::from_config(member, self)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&[u8]]) -> impl Stream<Item = Result<Vec<u8>, TargetError>> {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(p.to_vec()))
                .collect::<Vec<Result<Vec<u8>, TargetError>>>(),
        )
    }

    #[tokio::test]
    async fn a_snapshot_is_kept_only_if_its_checksum_matches() {
        use sha2::{Digest, Sha256};
        let dir = tempfile::tempdir().unwrap();
        let db = b"pretend this is a bolt database".repeat(100);
        let good: Vec<u8> = [db.clone(), Sha256::digest(&db).to_vec()].concat();
        // The checksum straddles the two messages, as it may on the wire.
        let (a, b) = good.split_at(good.len() - 10);
        let t = EtcdTarget::new("127.0.0.1:1", Duration::from_secs(2));
        let dest = dir.path().join("snap.db");
        let snap = t.save_snapshot(chunks(&[a, b]), &dest).await.unwrap();
        assert_eq!(snap.bytes, good.len() as u64);
        assert_eq!(std::fs::read(&dest).unwrap(), good);
        assert_eq!(
            snap.sha256,
            Sha256::digest(&good)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );

        let mut bad = good.clone();
        bad[10] ^= 1;
        let dest = dir.path().join("bad.db");
        let err = t
            .save_snapshot(chunks(&[&bad]), &dest)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("failed its sha256 check"), "{err}");
        assert!(
            !dest.exists() && !dest.with_extension("partial").exists(),
            "nothing kept"
        );

        // Shorter than a checksum: refused too.
        let dest = dir.path().join("short.db");
        let err = t
            .save_snapshot(chunks(&[b"tiny"]), &dest)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("failed its sha256 check"), "{err}");
        assert!(!dest.exists() && !dest.with_extension("partial").exists());
    }

    #[tokio::test]
    async fn a_stream_that_fails_half_way_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let t = EtcdTarget::new("127.0.0.1:1", Duration::from_secs(2));
        let dest = dir.path().join("snap.db");
        let stream = futures::stream::iter(vec![
            Ok(vec![1u8; 100]),
            Err(t.unreachable("Snapshot (mid-stream) failed: connection reset")),
        ]);
        let err = t.save_snapshot(stream, &dest).await.unwrap_err();
        assert!(err.to_string().contains("connection reset"), "{err}");
        assert!(!dest.exists() && !dest.with_extension("partial").exists());
    }

    #[tokio::test]
    async fn an_absent_member_is_unreachable() {
        let t = EtcdTarget::new("127.0.0.1:1", Duration::from_millis(200));
        assert!(matches!(
            t.poll().await,
            Err(TargetError::Unreachable { .. })
        ));
    }

    #[test]
    fn tls_files_are_read_and_checked_at_load_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let raw = |ca: &Path, cert: Option<&Path>, key: Option<&Path>| RawEtcdTls {
            ca: ca.to_owned(),
            cert: cert.map(Path::to_owned),
            key: key.map(Path::to_owned),
            domain: None,
        };
        let cfg = |tls| EtcdConfig::from_raw("127.0.0.1:2379".into(), Duration::from_secs(1), tls);
        let err = cfg(Some(raw(&missing, None, None))).unwrap_err();
        assert_eq!(err.key, "target.tls.ca");
        assert!(err.reason.contains("nope.pem"), "{err}");
        let err = cfg(Some(raw(&junk, None, None))).unwrap_err();
        assert_eq!(err.key, "target.tls.ca", "{err}");
        let err = cfg(Some(raw(&junk, Some(&junk), None))).unwrap_err();
        assert_eq!(err.key, "target.tls.key", "{err}");
        let err = cfg(Some(raw(&junk, Some(&missing), Some(&junk)))).unwrap_err();
        assert_eq!(err.key, "target.tls.cert", "{err}");

        let err = EtcdConfig::from_raw(
            "https://127.0.0.1:2379".into(),
            Duration::from_secs(1),
            None,
        )
        .unwrap_err();
        assert_eq!(err.key, "target.addr");
        let ok = cfg(None).unwrap();
        assert_eq!(ok.tls, None);
    }

    #[test]
    fn restore_tools_default_next_to_etcd_and_can_be_set() {
        let table = |text: &str| toml::from_str::<toml::Table>(text).unwrap();
        let c = EtcdConfig::from_table(table("addr = \"127.0.0.1:2379\"")).unwrap();
        assert_eq!(c.tools, RestoreTools::in_dir(Path::new("/usr/bin")));
        let c = EtcdConfig::from_table(table(
            "addr = \"h:1\"\nbin_dir = \"/opt/etcd/current\"\netcdctl = \"/x/etcdctl\"",
        ))
        .unwrap();
        assert_eq!(
            c.tools,
            RestoreTools {
                etcdutl: "/opt/etcd/current/etcdutl".into(),
                etcdctl: "/x/etcdctl".into(),
            }
        );
        let err = EtcdConfig::from_table(table("addr = \"h:1\"\netcdutl = \"etcdutl\""))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config key `target.etcdutl` is invalid: etcdutl must be an absolute path"
        );
        let err = EtcdConfig::from_table(table("addr = \"h:1\"\nbin_dir = \"bin\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`target.bin_dir`"), "{err}");
    }

    #[test]
    fn etcdutl_restores_from_3_5_on() {
        assert_eq!(has_etcdutl("3.4.23"), Some(false));
        assert_eq!(has_etcdutl("3.5.1"), Some(true));
        assert_eq!(has_etcdutl("v3.6.0"), Some(true));
        assert_eq!(has_etcdutl("4.0.0"), Some(true));
        assert_eq!(has_etcdutl("2.3.8"), Some(false));
        assert_eq!(has_etcdutl("garbage"), None);
    }

    #[tokio::test]
    async fn a_backup_of_an_absent_member_names_it_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let t = EtcdTarget::new("127.0.0.1:1", Duration::from_millis(200));
        let dest = dir.path().join("b.db");
        let err = t.backup(&dest).await.unwrap_err().to_string();
        assert!(err.contains("etcd at http://127.0.0.1:1"), "{err}");
        assert!(!dest.exists());
    }

    #[test]
    fn tls_problems_get_a_hint() {
        assert!(looks_like_tls("received fatal alert: CertificateRequired"));
        assert!(looks_like_tls("invalid peer certificate: UnknownIssuer"));
        assert!(!looks_like_tls("tcp connect error: Connection refused"));
    }
}
