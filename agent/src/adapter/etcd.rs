//! The etcd adapter (3.4 and 3.5): reads a member through etcd's JSON
//! gateway on its client URL.
//!
//! - Status: `POST /v3/maintenance/status` (member id, leader, raft index,
//!   raft applied index, term, server version).
//! - The cluster version: `GET /version` (`etcdcluster`).
//! - Health: `GET /health`, or Status failing. etcd answers `/health` with a
//!   read through raft, which stalls for up to a second around a leader
//!   change; so the health check waits at most [`HEALTH_WAIT`], and a slow
//!   answer keeps the previous verdict for up to [`HEALTH_GRACE`]. A leader
//!   change is then reported as soon as Status shows it, not a second later.
//! - Handover: `POST /v3/maintenance/transfer-leadership` (MoveLeader).
//!
//! etcd names members by uint64 ids (decimal strings in JSON); baton names
//! them by the etcd member *name*, which must equal the baton member id
//! (`etcd --name n1`). The id-to-name map comes from the member list and is
//! refreshed whenever an unknown id shows up.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use baton_domain::{Health, MemberId, Role};
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::{MemberState, Target, TargetError};

/// How long one poll waits for `/health`.
pub const HEALTH_WAIT: Duration = Duration::from_millis(100);
/// How long a verdict stands in for a `/health` that is slow to answer.
pub const HEALTH_GRACE: Duration = Duration::from_secs(3);

/// Reads one etcd member.
#[derive(Debug)]
pub struct EtcdTarget {
    addr: String,
    timeout: Duration,
    /// etcd member id (decimal) -> member name.
    names: Mutex<BTreeMap<String, String>>,
    /// The last `/health` verdict that arrived in time, and when.
    last_health: Mutex<Option<(Instant, Health, String)>>,
}

/// A JSON field that etcd encodes as a decimal string (uint64s) or a number.
fn u64_field(v: &Value, key: &str) -> u64 {
    match &v[key] {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn id_field(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

impl EtcdTarget {
    pub fn new(addr: &str, timeout: Duration) -> Self {
        EtcdTarget {
            addr: addr.to_owned(),
            timeout,
            names: Mutex::new(BTreeMap::new()),
            last_health: Mutex::new(None),
        }
    }

    fn unreachable(&self, detail: impl Into<String>) -> TargetError {
        TargetError::Unreachable {
            addr: self.addr.clone(),
            detail: detail.into(),
        }
    }

    fn bad(&self, detail: impl Into<String>) -> TargetError {
        TargetError::BadAnswer {
            addr: self.addr.clone(),
            kind: "etcd",
            detail: detail.into(),
        }
    }

    /// One HTTP/1.0 request (no chunking, the server closes); returns the
    /// status code and the JSON body.
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), TargetError> {
        let io = async {
            let mut stream = tokio::net::TcpStream::connect(&self.addr).await?;
            let body = body.map(|b| b.to_string()).unwrap_or_default();
            let req = format!(
                "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                self.addr,
                body.len()
            );
            stream.write_all(req.as_bytes()).await?;
            let mut buf = Vec::new();
            stream.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        let buf = tokio::time::timeout(self.timeout, io)
            .await
            .map_err(|_| {
                self.unreachable(format!(
                    "no answer to {method} {path} within {:?}",
                    self.timeout
                ))
            })?
            .map_err(|e| self.unreachable(e.to_string()))?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| self.bad(format!("{method} {path}: no HTTP body")))?;
        let code: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| self.bad(format!("{method} {path}: bad status line")))?;
        let json = serde_json::from_str(body.trim())
            .map_err(|e| self.bad(format!("{method} {path}: body is not JSON: {e}")))?;
        Ok((code, json))
    }

    async fn refresh_names(&self) -> Result<(), TargetError> {
        let (code, list) = self
            .call(
                "POST",
                "/v3/cluster/member/list",
                Some(&serde_json::json!({})),
            )
            .await?;
        if code != 200 {
            return Err(self.bad(format!("member list answered {code}: {list}")));
        }
        let mut names = BTreeMap::new();
        for m in list["members"].as_array().cloned().unwrap_or_default() {
            let name = m["name"].as_str().unwrap_or_default().to_owned();
            if !name.is_empty() {
                names.insert(id_field(&m, "ID"), name);
            }
        }
        *self.names.lock().unwrap_or_else(|p| p.into_inner()) = names;
        Ok(())
    }

    async fn name_of(&self, id: &str) -> Result<MemberId, TargetError> {
        let known = self
            .names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        let name = match known {
            Some(n) => n,
            None => {
                self.refresh_names().await?;
                self.names
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(id)
                    .cloned()
                    .ok_or_else(|| {
                        self.bad(format!("etcd member id {id} is not in the member list"))
                    })?
            }
        };
        MemberId::new(name)
            .map_err(|e| self.bad(format!("etcd member name is not a baton member id: {e}")))
    }

    async fn id_of(&self, member: &MemberId) -> Result<String, TargetError> {
        self.refresh_names().await?;
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|(_, name)| name.as_str() == member.as_str())
            .map(|(id, _)| id.clone())
            .ok_or_else(|| {
                self.bad(format!(
                    "no etcd member is named {member}; run etcd with --name {member}"
                ))
            })
    }

    /// `/health`, waiting at most [`HEALTH_WAIT`]; a slower answer keeps a
    /// verdict younger than [`HEALTH_GRACE`].
    async fn health(&self) -> (Health, String) {
        let asked = Instant::now();
        let verdict = match tokio::time::timeout(HEALTH_WAIT, self.call("GET", "/health", None))
            .await
        {
            Ok(Ok((200, h))) if h["health"] == "true" => (Health::Healthy, String::new()),
            Ok(Ok((code, h))) => (Health::Degraded, format!("/health answered {code}: {h}")),
            Ok(Err(e)) => (Health::Degraded, format!("/health failed: {e}")),
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
                            "/health did not answer within {HEALTH_WAIT:?} (none answered in the last {HEALTH_GRACE:?})"
                        ),
                    ),
                };
            }
        };
        *self.last_health.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((asked, verdict.0, verdict.1.clone()));
        verdict
    }

    async fn read(&self) -> Result<MemberState, TargetError> {
        let (code, st) = self
            .call(
                "POST",
                "/v3/maintenance/status",
                Some(&serde_json::json!({})),
            )
            .await?;
        if code != 200 {
            return Err(self.unreachable(format!("status answered {code}: {st}")));
        }
        let me = id_field(&st["header"], "member_id");
        let leader_id = id_field(&st, "leader");
        let role = match leader_id.as_str() {
            "" | "0" => Role::Candidate,
            l if l == me => Role::Leader,
            _ => Role::Follower,
        };
        let leader = match leader_id.as_str() {
            "" | "0" => None,
            l => Some(self.name_of(l).await?),
        };
        let (version, (health, health_detail)) =
            tokio::join!(self.call("GET", "/version", None), self.health());
        let (_, version) = version?;
        let (health, health_detail) = if leader.is_none() {
            (Health::Degraded, "member knows no leader".to_owned())
        } else {
            (health, health_detail)
        };
        let committed = u64_field(&st, "raftIndex");
        let applied = u64_field(&st, "raftAppliedIndex");
        Ok(MemberState {
            role,
            leader,
            committed_revision: committed.max(applied),
            applied_revision: applied,
            release: st["version"].as_str().unwrap_or_default().to_owned(),
            // etcd's compatibility is a version path, checked in preflight.
            format_version: 0,
            term: u64_field(&st, "raftTerm").max(u64_field(&st["header"], "raft_term")),
            health,
            health_detail,
            cluster_version: version["etcdcluster"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
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

fn b64_value(c: u8) -> Option<u32> {
    Some(u32::from(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    }))
}

/// Standard base64 (with padding), as etcd's gateway encodes `bytes`.
fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= b64_value(*c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

impl EtcdTarget {
    /// Streams `Maintenance.Snapshot` into `dest` and verifies it: etcd
    /// appends the sha256 of the database to the stream, and a snapshot
    /// whose tail does not match is deleted, never kept. Written to a temp
    /// file, fsynced, then renamed.
    pub async fn snapshot_to(&self, dest: &std::path::Path) -> Result<SnapshotFile, TargetError> {
        use sha2::{Digest, Sha256};
        use tokio::io::AsyncBufReadExt;
        let io_err =
            |e: std::io::Error| self.unreachable(format!("snapshot to {}: {e}", dest.display()));
        let mut stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(io_err)?;
        let body = "{}";
        stream
            .write_all(
                format!(
                    "POST /v3/maintenance/snapshot HTTP/1.0\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    self.addr,
                    body.len()
                )
                .as_bytes(),
            )
            .await
            .map_err(io_err)?;
        let mut reader = tokio::io::BufReader::new(stream);
        let mut line = String::new();
        // Status line and headers.
        reader.read_line(&mut line).await.map_err(io_err)?;
        if !line.contains(" 200 ") {
            return Err(self.bad(format!("snapshot answered {}", line.trim())));
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).await.map_err(io_err)? == 0 || line == "\r\n" {
                break;
            }
        }
        let tmp = dest.with_extension("partial");
        let mut file = tokio::fs::File::create(&tmp).await.map_err(io_err)?;
        let mut db_hash = Sha256::new();
        let mut whole = Sha256::new();
        // The last 32 bytes are the checksum, not data: hold them back.
        let mut tail: Vec<u8> = Vec::new();
        let mut bytes = 0u64;
        loop {
            line.clear();
            if reader.read_line(&mut line).await.map_err(io_err)? == 0 {
                break;
            }
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line.trim())
                .map_err(|e| self.bad(format!("snapshot chunk: {e}")))?;
            if let Some(err) = v.get("error") {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(self.bad(format!("snapshot failed mid-stream: {err}")));
            }
            let blob = v["result"]["blob"].as_str().unwrap_or_default();
            let chunk = b64_decode(blob).ok_or_else(|| self.bad("snapshot chunk is not base64"))?;
            file.write_all(&chunk).await.map_err(io_err)?;
            whole.update(&chunk);
            bytes += chunk.len() as u64;
            tail.extend_from_slice(&chunk);
            if tail.len() > 32 {
                let keep = tail.split_off(tail.len() - 32);
                db_hash.update(&tail);
                tail = keep;
            }
        }
        file.sync_all().await.map_err(io_err)?;
        drop(file);
        if tail.len() != 32 || db_hash.finalize().as_slice() != tail.as_slice() {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(self.bad(format!(
                "snapshot of {bytes} bytes failed its sha256 check (etcd's appended checksum does not match); it was deleted"
            )));
        }
        tokio::fs::rename(&tmp, dest).await.map_err(io_err)?;
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

impl Target for EtcdTarget {
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
            // MoveLeader takes the target's id; the gateway wants it as a
            // decimal string (a uint64 does not fit a JSON double).
            let body = serde_json::json!({ "targetID": target });
            let (code, reply) = self
                .call("POST", "/v3/maintenance/transfer-leadership", Some(&body))
                .await?;
            if code == 200 {
                Ok(format!(
                    "moved leadership to {to} (etcd id {target}, hex {:x})",
                    target.parse::<u64>().unwrap_or(0)
                ))
            } else {
                Err(TargetError::Refused {
                    addr: self.addr.clone(),
                    detail: format!(
                        "MoveLeader to {to} answered {code}: {}",
                        reply["message"].as_str().unwrap_or(&reply.to_string())
                    ),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(b64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(b64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(b64_decode("Zg==").unwrap(), b"f");
        assert_eq!(b64_decode("").unwrap(), b"");
        assert!(b64_decode("Z!==").is_none());
    }

    #[test]
    fn uint64_ids_survive_as_strings() {
        let v: Value = serde_json::from_str(r#"{"a":"18446744073709551615","b":7}"#).unwrap();
        assert_eq!(id_field(&v, "a"), "18446744073709551615");
        assert_eq!(u64_field(&v, "a"), u64::MAX);
        assert_eq!(u64_field(&v, "b"), 7);
    }

    /// Serves one canned HTTP answer on a loopback port.
    async fn canned(body: String) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    format!("HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{body}")
                        .as_bytes(),
                )
                .await;
        });
        addr
    }

    fn chunk(bytes: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::new();
        for c in bytes.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                out.push(if i <= c.len() {
                    T[((n >> (18 - 6 * i)) & 63) as usize] as char
                } else {
                    '='
                });
            }
        }
        format!("{{\"result\":{{\"blob\":\"{out}\"}}}}\n")
    }

    #[tokio::test]
    async fn a_snapshot_is_kept_only_if_its_checksum_matches() {
        use sha2::{Digest, Sha256};
        let dir = tempfile::tempdir().unwrap();
        let db = b"pretend this is a bolt database".repeat(100);
        let good: Vec<u8> = [db.clone(), Sha256::digest(&db).to_vec()].concat();
        let (a, b) = good.split_at(1000);
        let t = EtcdTarget::new(&canned(chunk(a) + &chunk(b)).await, Duration::from_secs(2));
        let dest = dir.path().join("snap.db");
        let snap = t.snapshot_to(&dest).await.unwrap();
        assert_eq!(snap.bytes, good.len() as u64);
        assert_eq!(std::fs::read(&dest).unwrap(), good);

        let mut bad = good.clone();
        bad[10] ^= 1;
        let t = EtcdTarget::new(&canned(chunk(&bad)).await, Duration::from_secs(2));
        let dest = dir.path().join("bad.db");
        let err = t.snapshot_to(&dest).await.unwrap_err().to_string();
        assert!(err.contains("failed its sha256 check"), "{err}");
        assert!(
            !dest.exists() && !dest.with_extension("partial").exists(),
            "nothing kept"
        );
    }

    #[tokio::test]
    async fn an_absent_member_is_unreachable() {
        let t = EtcdTarget::new("127.0.0.1:1", Duration::from_millis(200));
        assert!(matches!(
            t.poll().await,
            Err(TargetError::Unreachable { .. })
        ));
    }
}
