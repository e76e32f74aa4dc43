//! The samplekv adapter: reads a member's `Kv.Status` over gRPC.
//!
//! samplekv names members by number; baton names them by [`MemberId`]. The
//! adapter maps one to the other with the configured `member_names`, falling
//! back to `n{id}`. It owns that read, that mapping, the member's backup
//! (`Admin.Backup`, a document whose header names its applied index), its
//! restore (the configured `restore_command`, e.g. `samplekv-restore`), and
//! its `[target]` config section ([`SamplekvConfig`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use baton_domain::{Health, MemberId, Role};
use baton_proto::samplekv::{self as wire, admin_client::AdminClient, kv_client::KvClient};
use futures::future::BoxFuture;
use serde::Deserialize;
use tonic::transport::{Channel, Endpoint};

use super::{
    Adapter, AdapterConfig, AdapterError, Backup, BackupFile, MemberState, Registration,
    SectionError,
};

/// The longest a `restore_command` may run.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(300);

/// The last `max` bytes of `s` (on a char boundary).
fn tail(s: &str, max: usize) -> &str {
    let mut from = s.len().saturating_sub(max);
    while !s.is_char_boundary(from) {
        from += 1;
    }
    &s[from..]
}

/// The samplekv row of [`super::REGISTRY`].
pub const REGISTRATION: Registration = Registration {
    kind: "samplekv",
    parse: parse_config,
};

/// `[target]` as written, for `kind = "samplekv"` (the registry takes `kind`
/// out before this adapter sees the table).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    addr: String,
    /// Numeric member id -> baton member id. Defaults to `n{id}`.
    #[serde(default)]
    member_names: BTreeMap<String, String>,
    timeout_ms: Option<u64>,
    /// How long a backup may wait for its answer to begin or for its next
    /// chunk (default 60 s).
    backup_progress_timeout_ms: Option<u64>,
    /// argv that restores the stopped member's data dir from a backup file;
    /// `{file}` and `{data_dir}` are substituted.
    restore_command: Option<Vec<String>>,
    /// Accepted only to refuse it by name: samplekv speaks no TLS.
    tls: Option<toml::Value>,
}

/// A validated samplekv `[target]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SamplekvConfig {
    /// The member's gRPC `host:port`.
    pub addr: String,
    pub member_names: BTreeMap<u64, MemberId>,
    /// Bound on each call to the member.
    pub timeout: Duration,
    /// Bound on a backup's progress: its answer must begin, and each next
    /// chunk arrive, within this long.
    pub backup_progress_timeout: Duration,
    /// `restore_command`: restores a stopped member's data dir
    /// (`samplekv-restore --data-dir {data_dir} --from {file} --peers ...`).
    pub restore_command: Option<Vec<String>>,
}

fn parse_config(table: toml::Table) -> Result<Arc<dyn AdapterConfig>, SectionError> {
    let raw: RawConfig = super::decode(table)?;
    let mut member_names = BTreeMap::new();
    for (k, v) in raw.member_names {
        let id: u64 = k.parse().map_err(|_| {
            SectionError::invalid("target.member_names", format!("key {k:?} is not a u64"))
        })?;
        let name = MemberId::new(v)
            .map_err(|e| SectionError::invalid("target.member_names", e.to_string()))?;
        member_names.insert(id, name);
    }
    if raw.addr.is_empty() {
        return Err(SectionError::invalid("target.addr", "empty"));
    }
    if let Some(argv) = &raw.restore_command {
        if argv.is_empty() || argv[0].is_empty() {
            return Err(SectionError::invalid(
                "target.restore_command",
                "empty; give the restore program and its arguments",
            ));
        }
        if !argv.iter().any(|a| a.contains("{file}")) {
            return Err(SectionError::invalid(
                "target.restore_command",
                "names no {file}: the backup file it restores from",
            ));
        }
    }
    if raw.tls.is_some() {
        return Err(SectionError::invalid(
            "target.tls",
            "the samplekv adapter does not speak TLS; remove [target.tls]",
        ));
    }
    let backup_progress_timeout = match raw.backup_progress_timeout_ms {
        None => BACKUP_PROGRESS_TIMEOUT,
        Some(ms) if (1..=MAX_BACKUP_PROGRESS_TIMEOUT_MS).contains(&ms) => Duration::from_millis(ms),
        Some(ms) => {
            return Err(SectionError::invalid(
                "target.backup_progress_timeout_ms",
                format!(
                    "{ms} is outside 1..={MAX_BACKUP_PROGRESS_TIMEOUT_MS}; a backup that sends nothing for this long fails"
                ),
            ));
        }
    };
    Ok(Arc::new(SamplekvConfig {
        addr: raw.addr,
        member_names,
        timeout: super::timeout(raw.timeout_ms),
        backup_progress_timeout,
        restore_command: raw.restore_command,
    }))
}

impl AdapterConfig for SamplekvConfig {
    fn kind(&self) -> &'static str {
        REGISTRATION.kind
    }

    fn build(&self, _member: &baton_domain::MemberId) -> Result<Arc<dyn Adapter>, AdapterError> {
        let mut adapter =
            SamplekvAdapter::new(&self.addr, self.member_names.clone(), self.timeout)?;
        adapter.restore_command = self.restore_command.clone();
        adapter.backup_progress_timeout = self.backup_progress_timeout;
        Ok(Arc::new(adapter))
    }
}

/// By default, the longest a backup may wait for its answer to begin, or
/// for its next chunk: a member that stops sending for this long (frozen,
/// or wedged) fails the backup (`target.backup_progress_timeout_ms`).
const BACKUP_PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest `target.backup_progress_timeout_ms` accepted: one hour.
const MAX_BACKUP_PROGRESS_TIMEOUT_MS: u64 = 3_600_000;

/// Reads one samplekv member.
#[derive(Debug, Clone)]
pub struct SamplekvAdapter {
    addr: String,
    channel: Channel,
    /// The same member without the per-call deadline: a backup's stream
    /// lasts far longer than a status call (the member copies its map and
    /// streams it as it serializes), so it is bounded by progress instead
    /// (`backup_progress_timeout`).
    backup_channel: Channel,
    backup_progress_timeout: Duration,
    member_names: BTreeMap<u64, MemberId>,
    restore_command: Option<Vec<String>>,
}

impl SamplekvAdapter {
    /// `addr` is `host:port`. The channel connects lazily and reconnects.
    pub fn new(
        addr: &str,
        member_names: BTreeMap<u64, MemberId>,
        timeout: Duration,
    ) -> Result<Self, AdapterError> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| AdapterError::Unreachable {
                addr: addr.to_owned(),
                detail: format!("bad address: {e}"),
            })?
            .connect_timeout(timeout);
        Ok(SamplekvAdapter {
            addr: addr.to_owned(),
            backup_channel: endpoint.connect_lazy(),
            channel: endpoint.timeout(timeout).connect_lazy(),
            member_names,
            restore_command: None,
            backup_progress_timeout: BACKUP_PROGRESS_TIMEOUT,
        })
    }

    fn name_of(&self, id: u64) -> Result<MemberId, AdapterError> {
        if let Some(name) = self.member_names.get(&id) {
            return Ok(name.clone());
        }
        MemberId::new(format!("n{id}")).map_err(|e| self.bad(e.to_string()))
    }

    /// samplekv's numeric id for a baton member id (inverse of `name_of`).
    fn id_of(&self, member: &MemberId) -> Option<u64> {
        self.member_names
            .iter()
            .find(|(_, name)| *name == member)
            .map(|(id, _)| *id)
            .or_else(|| member.as_str().strip_prefix('n')?.parse().ok())
    }

    fn bad(&self, detail: String) -> AdapterError {
        AdapterError::BadAnswer {
            addr: self.addr.clone(),
            kind: "samplekv",
            detail,
        }
    }

    fn convert(&self, s: wire::StatusResponse) -> Result<MemberState, AdapterError> {
        let wire::StatusResponse {
            member_id: _,
            role,
            leader_id,
            term,
            committed_revision,
            applied_revision,
            release_version,
            format_version,
            last_log_index: _,
        } = s;
        let role = match wire::Role::try_from(role) {
            Ok(wire::Role::Leader) => Role::Leader,
            Ok(wire::Role::Follower) => Role::Follower,
            Ok(wire::Role::Candidate) => Role::Candidate,
            Ok(wire::Role::Learner) => Role::Learner,
            Ok(wire::Role::Shutdown) | Ok(wire::Role::Unspecified) => Role::Unknown,
            Err(_) => return Err(self.bad(format!("unknown role value {role}"))),
        };
        let leader = match leader_id {
            0 => None,
            id => Some(self.name_of(id)?),
        };
        // A member that knows no leader cannot serve writes.
        let (health, health_detail) = match (role, &leader) {
            (Role::Unknown, _) => (Health::Degraded, "member is shutting down".to_owned()),
            (_, None) => (Health::Degraded, "member knows no leader".to_owned()),
            _ => (Health::Healthy, String::new()),
        };
        Ok(MemberState {
            role,
            leader,
            // A member may report applied > committed for a moment while its
            // commit index catches up; never report an impossible pair.
            committed_revision: committed_revision.max(applied_revision),
            applied_revision,
            release: release_version,
            format_version,
            term,
            health,
            health_detail,
            cluster_version: String::new(),
        })
    }
}

impl Adapter for SamplekvAdapter {
    fn kind(&self) -> &'static str {
        "samplekv"
    }

    /// samplekv reads any release whose data format it knows.
    fn version_rule(&self) -> baton_domain::VersionRule {
        baton_domain::VersionRule::FormatOnly
    }

    fn poll(&self) -> BoxFuture<'_, Result<MemberState, AdapterError>> {
        Box::pin(async move {
            let mut client = KvClient::new(self.channel.clone());
            let resp = client
                .status(wire::StatusRequest {})
                .await
                .map_err(|status| AdapterError::Unreachable {
                    addr: self.addr.clone(),
                    detail: describe(&status),
                })?;
            self.convert(resp.into_inner())
        })
    }

    fn step_down<'a>(&'a self, to: &'a MemberId) -> BoxFuture<'a, Result<String, AdapterError>> {
        Box::pin(async move {
            let id = self.id_of(to).ok_or_else(|| {
                self.bad(format!(
                    "no samplekv id known for member {to}; set target.member_names"
                ))
            })?;
            let resp = AdminClient::new(self.channel.clone())
                .transfer_leader(wire::TransferLeaderRequest { to_member_id: id })
                .await
                .map_err(|status| AdapterError::Unreachable {
                    addr: self.addr.clone(),
                    detail: describe(&status),
                })?
                .into_inner();
            let wire::TransferLeaderResponse {
                ok,
                detail,
                leader_id,
            } = resp;
            if ok {
                Ok(format!(
                    "asked to hand leadership to {to} (samplekv id {id}); leader now {leader_id}: {detail}"
                ))
            } else {
                Err(AdapterError::Refused {
                    addr: self.addr.clone(),
                    detail,
                })
            }
        })
    }

    /// Streams `Admin.Backup` (one consistent document of the applied
    /// state) into `dest`; the revision is the applied index its header
    /// line names.
    fn backup<'a>(&'a self, dest: &'a Path) -> BoxFuture<'a, Result<Backup, AdapterError>> {
        Box::pin(async move {
            let unreachable = |detail: String| AdapterError::Unreachable {
                addr: self.addr.clone(),
                detail,
            };
            let io = |e: std::io::Error| {
                self.bad(format!(
                    "cannot write the backup to {}: {e}",
                    dest.display()
                ))
            };
            // A backup may be far larger than one status answer: no call
            // deadline here, only that the stream makes progress.
            let progress = self.backup_progress_timeout;
            let stalled = || {
                unreachable(format!(
                    "the backup stream sent nothing for {progress:?} (target.backup_progress_timeout_ms); is the member frozen or overloaded?"
                ))
            };
            let mut admin =
                AdminClient::new(self.backup_channel.clone()).max_decoding_message_size(8 << 20);
            let call = admin.backup(wire::BackupRequest {});
            let mut stream = tokio::time::timeout(progress, call)
                .await
                .map_err(|_| stalled())?
                .map_err(|status| unreachable(describe(&status)))?
                .into_inner();
            let mut file = BackupFile::create(dest).map_err(io)?;
            let mut header = Vec::new();
            while let Some(chunk) = tokio::time::timeout(progress, stream.message())
                .await
                .map_err(|_| stalled())?
                .map_err(|status| unreachable(describe(&status)))?
            {
                if !header.contains(&b'\n') && header.len() < 4096 {
                    header.extend_from_slice(&chunk.data[..chunk.data.len().min(4096)]);
                }
                file.write(&chunk.data).map_err(io)?;
            }
            let line = header
                .split(|b| *b == b'\n')
                .next()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            let (revision, _keys) = samplekv_header(&line).map_err(|e| self.bad(e))?;
            file.finish(revision).map_err(io)
        })
    }

    /// Replays the document entry by entry, streamed from the file (never
    /// held whole): every entry must be a string pair, the keys strictly
    /// increasing (so unique, as a map's are), their count the header's,
    /// and the header's applied index the backup's revision.
    fn test_restore<'a>(
        &'a self,
        backup: &'a Backup,
        _scratch: &'a Path,
    ) -> BoxFuture<'a, Result<String, AdapterError>> {
        Box::pin(async move {
            let path = backup.path.clone();
            let (index, keys) = tokio::task::spawn_blocking(move || {
                let file = std::fs::File::open(&path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                replay_backup(std::io::BufReader::with_capacity(1 << 20, file))
            })
            .await
            .map_err(|e| self.bad(e.to_string()))?
            .map_err(|e| self.bad(e))?;
            if index != backup.revision {
                return Err(self.bad(format!(
                    "the replayed document is at index {index}, the backup says {}",
                    backup.revision
                )));
            }
            Ok(format!(
                "test-restored by replaying every entry: {keys} keys at index {index}"
            ))
        })
    }

    fn restore<'a>(
        &'a self,
        backup: &'a Path,
        revision: u64,
        _release: &'a str,
        data_dir: &'a Path,
    ) -> BoxFuture<'a, Result<String, AdapterError>> {
        Box::pin(async move {
            let Some(template) = &self.restore_command else {
                return Err(AdapterError::RestoreUnsupported {
                    adapter: "samplekv",
                    hint: "set target.restore_command, e.g. [\"/opt/samplekv/bin/samplekv-restore\", \"--data-dir\", \"{data_dir}\", \"--from\", \"{file}\", \"--peers\", \"1=HOST:PORT,...\"]".into(),
                });
            };
            let argv: Vec<String> = template
                .iter()
                .map(|a| {
                    a.replace("{file}", &backup.to_string_lossy())
                        .replace("{data_dir}", &data_dir.to_string_lossy())
                })
                .collect();
            let run = tokio::process::Command::new(&argv[0])
                .args(&argv[1..])
                .kill_on_drop(true)
                .output();
            let out = tokio::time::timeout(RESTORE_TIMEOUT, run)
                .await
                .map_err(|_| {
                    AdapterError::Restore(format!(
                        "{} did not finish within {} s",
                        argv[0],
                        RESTORE_TIMEOUT.as_secs()
                    ))
                })?
                .map_err(|e| AdapterError::Restore(format!("cannot run {}: {e}", argv[0])))?;
            if !out.status.success() {
                let stderr = String::from_utf8_lossy(&out.stderr);
                return Err(AdapterError::Restore(format!(
                    "{} exited with {}: {}",
                    argv[0],
                    out.status,
                    tail(stderr.trim(), 400)
                )));
            }
            let said: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| {
                AdapterError::Restore(format!("{} printed no JSON result: {e}", argv[0]))
            })?;
            let restored = said["applied_index"].as_u64();
            if restored != Some(revision) {
                return Err(AdapterError::Restore(format!(
                    "{} restored index {restored:?}, the backup's manifest says {revision}",
                    argv[0]
                )));
            }
            let aside = said["moved_aside"].as_str().map_or_else(
                || "no earlier data".to_owned(),
                |p| format!("the earlier data kept in {p}"),
            );
            Ok(format!(
                "restored {} keys at index {revision} into {} ({aside})",
                said["keys"],
                data_dir.display()
            ))
        })
    }
}

/// `(applied_index, keys)` from a samplekv backup's first line,
/// `samplekv-backup/1 applied_index=N keys=K`.
fn samplekv_header(line: &str) -> Result<(u64, u64), String> {
    let mut words = line.split_whitespace();
    if words.next() != Some("samplekv-backup/1") {
        return Err(format!(
            "the backup does not start with a samplekv-backup/1 header: {line:?}"
        ));
    }
    let mut field = |name: &str| {
        words
            .next()
            .and_then(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
            .ok_or_else(|| format!("the backup header {line:?} has no {name}"))
    };
    Ok((field("applied_index")?, field("keys")?))
}

/// Reads a samplekv backup document (a `samplekv-backup/1` header line,
/// then one JSON object of string keys to string values) from `reader`,
/// one entry at a time, and returns the header's applied index and key
/// count once the body is proven to match it: string pairs only, keys
/// strictly increasing, as many as the header says, nothing after the
/// object. Memory stays at one entry, whatever the document's size.
fn replay_backup(mut reader: impl std::io::BufRead) -> Result<(u64, u64), String> {
    use std::io::{BufRead as _, Read as _};
    let mut header = Vec::new();
    (&mut reader)
        .take(4096)
        .read_until(b'\n', &mut header)
        .map_err(|e| format!("reading the backup's header: {e}"))?;
    if header.pop() != Some(b'\n') {
        return Err("the backup has no header line (none in its first 4096 bytes)".into());
    }
    let (index, keys) = samplekv_header(&String::from_utf8_lossy(&header))?;

    struct Entries;
    impl<'de> serde::de::Visitor<'de> for Entries {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a map of string keys to string values")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
            let mut count = 0u64;
            let mut last: Option<String> = None;
            while let Some((key, _value)) = map.next_entry::<String, String>()? {
                if last.as_ref().is_some_and(|l| *l >= key) {
                    return Err(serde::de::Error::custom(format!(
                        "key {key:?} after {:?}: keys are not strictly increasing (entry {count})",
                        last.unwrap_or_default()
                    )));
                }
                last = Some(key);
                count += 1;
            }
            Ok(count)
        }
    }
    let mut de = serde_json::Deserializer::from_reader(reader);
    let found = serde::Deserializer::deserialize_map(&mut de, Entries)
        .and_then(|n| de.end().map(|()| n))
        .map_err(|e| format!("the backup's map does not parse: {e}"))?;
    if found != keys {
        return Err(format!(
            "the header says {keys} keys but the map has {found}"
        ));
    }
    Ok((index, keys))
}

/// A gRPC failure in words: the code, the message, and the transport cause.
fn describe(status: &tonic::Status) -> String {
    use std::error::Error;
    let mut text = format!("{:?}", status.code());
    if !status.message().is_empty() {
        text.push_str(": ");
        text.push_str(status.message());
    }
    let mut source = status.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> SamplekvAdapter {
        let names = BTreeMap::from([(2, MemberId::new("beta").unwrap())]);
        SamplekvAdapter::new("127.0.0.1:1", names, Duration::from_millis(100)).unwrap()
    }

    fn status(role: wire::Role, leader: u64) -> wire::StatusResponse {
        wire::StatusResponse {
            member_id: 1,
            role: role as i32,
            leader_id: leader,
            term: 2,
            committed_revision: 10,
            applied_revision: 9,
            release_version: "v1".into(),
            format_version: 1,
            last_log_index: 10,
        }
    }

    #[tokio::test]
    async fn maps_ids_and_health() {
        let t = target();
        let s = t.convert(status(wire::Role::Follower, 2)).unwrap();
        assert_eq!(s.leader.unwrap().as_str(), "beta");
        assert_eq!(s.health, Health::Healthy);
        let s = t.convert(status(wire::Role::Leader, 3)).unwrap();
        assert_eq!(s.leader.unwrap().as_str(), "n3");
        let s = t.convert(status(wire::Role::Candidate, 0)).unwrap();
        assert_eq!(s.health, Health::Degraded);
        let mut bad = status(wire::Role::Follower, 2);
        bad.role = 77;
        assert!(
            t.convert(bad)
                .unwrap_err()
                .to_string()
                .contains("unknown role value 77")
        );
    }

    #[test]
    fn a_backup_replays_only_when_its_body_matches_its_header() {
        let replay = |doc: &str| replay_backup(std::io::Cursor::new(doc.as_bytes().to_vec()));
        let head = "samplekv-backup/1 applied_index=9 keys=2\n";
        assert_eq!(
            replay(&format!("{head}{{\"a\":\"1\",\"b\":\"2\"}}\n")),
            Ok((9, 2))
        );
        for (body, says) in [
            (r#"{"a":"1"}"#, "the header says 2 keys but the map has 1"),
            (r#"{"a":"1","b":"2","c":"3"}"#, "the map has 3"),
            (r#"{"b":"1","a":"2"}"#, "not strictly increasing"),
            (r#"{"a":"1","a":"2"}"#, "not strictly increasing"),
            (r#"{"a":"1","b":2}"#, "does not parse"),
            (r#"{"a":"1","b":"2"} x"#, "does not parse"),
            (r#"{"a":"1","b":"#, "does not parse"),
            (r#"["a","b"]"#, "does not parse"),
        ] {
            let err = replay(&format!("{head}{body}")).unwrap_err();
            assert!(err.contains(says), "{body}: {err}");
        }
        let err = replay("samplekv-backup/2 applied_index=9 keys=0\n{}").unwrap_err();
        assert!(err.contains("samplekv-backup/1 header"), "{err}");
        let err = replay(&"x".repeat(5000)).unwrap_err();
        assert!(err.contains("no header line"), "{err}");
    }

    #[tokio::test]
    async fn test_restore_checks_the_revision_against_the_document() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b");
        std::fs::write(
            &path,
            "samplekv-backup/1 applied_index=7 keys=1\n{\"k\":\"v\"}",
        )
        .unwrap();
        let backup = |revision| Backup {
            path: path.clone(),
            bytes: 0,
            sha256: String::new(),
            revision,
        };
        let said = target().test_restore(&backup(7), dir.path()).await.unwrap();
        assert!(
            said.contains("replaying every entry: 1 keys at index 7"),
            "{said}"
        );
        let err = target()
            .test_restore(&backup(8), dir.path())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("at index 7, the backup says 8"), "{err}");
    }

    #[tokio::test]
    async fn an_absent_member_is_unreachable() {
        let err = target().poll().await.unwrap_err();
        assert!(matches!(err, AdapterError::Unreachable { .. }), "{err}");
    }

    #[tokio::test]
    async fn restore_runs_the_configured_command_and_checks_the_revision() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b");
        std::fs::write(&file, b"doc").unwrap();
        let data = dir.path().join("data");
        let with = |script: &str| {
            let mut t = target();
            t.restore_command = Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                script.into(),
                "{file}".into(),
                "{data_dir}".into(),
            ]);
            t
        };
        let err = target()
            .restore(&file, 7, "v1", &data)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("set target.restore_command"), "{err}");

        let ok = with(
            r#"test -f "$0" && mkdir -p "$1" && echo '{"applied_index": 7, "keys": 3, "moved_aside": null}'"#,
        );
        let done = ok.restore(&file, 7, "v1", &data).await.unwrap();
        assert!(done.contains("restored 3 keys at index 7"), "{done}");
        assert!(data.exists(), "the command got the data dir");
        let err = ok
            .restore(&file, 8, "v1", &data)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("restored index Some(7), the backup's manifest says 8"),
            "{err}"
        );
        let err = with("echo 'disk full' >&2; exit 74")
            .restore(&file, 7, "v1", &data)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("disk full") && err.contains("exit status: 74"),
            "{err}"
        );
    }

    #[test]
    fn a_restore_command_must_name_its_file() {
        let table = |argv: &str| -> toml::Table {
            toml::from_str(&format!(
                "addr = \"127.0.0.1:1\"\nrestore_command = {argv}\n"
            ))
            .unwrap()
        };
        for bad in ["[]", "[\"/bin/restore\", \"--data-dir\", \"{data_dir}\"]"] {
            let err = parse_config(table(bad)).unwrap_err().to_string();
            assert!(err.contains("target.restore_command"), "{err}");
        }
        assert!(parse_config(table("[\"/bin/restore\", \"{file}\"]")).is_ok());
    }

    #[test]
    fn a_backup_progress_bound_must_be_positive_and_at_most_an_hour() {
        let table = |ms: u64| -> toml::Table {
            toml::from_str(&format!(
                "addr = \"127.0.0.1:1\"\nbackup_progress_timeout_ms = {ms}\n"
            ))
            .unwrap()
        };
        for bad in [0, MAX_BACKUP_PROGRESS_TIMEOUT_MS + 1] {
            let err = parse_config(table(bad)).unwrap_err().to_string();
            assert!(
                err.contains("target.backup_progress_timeout_ms") && err.contains("outside"),
                "{err}"
            );
        }
        for good in [1, 1500, MAX_BACKUP_PROGRESS_TIMEOUT_MS] {
            assert!(parse_config(table(good)).is_ok(), "{good}");
        }
    }
}
