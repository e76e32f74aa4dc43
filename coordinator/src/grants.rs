//! Grants: the presigned store requests the coordinator signs for agents.
//!
//! Agents hold no store credentials. For each object a command needs, an
//! agent asks over its link (a `GrantRequest`). This module owns the answer:
//! a request is granted only when a command this coordinator sent to that
//! member, and that has not yet answered, covers the method and the key:
//! - a Stage reads its release's `manifest.toml` and its artifact;
//! - a Backup reads, writes and deletes its own backup's objects
//!   (`part-NNNNN`, `manifest.json`, `COMPLETE`) and lists that backup;
//! - a Restore reads and lists its backup.
//!
//! Each grant is one request, signed for [`GRANT_TTL`] (under the store's
//! 15-minute cap) and asked for just before it is sent, so a long upload
//! never outlives its URLs. Listing is done by the coordinator itself. A
//! refusal names the member, the method, the key and what to do.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use baton_domain::{Action, AgentCommand, CommandId, MemberId};
use baton_proto::v1;
use baton_store::backup::BlobStore;
use baton_store::s3::{Presigned, S3Store};

/// How long a granted request stays valid.
pub const GRANT_TTL: Duration = Duration::from_secs(5 * 60);

/// A command's scope is forgotten this long after it was sent even if its
/// agent never answered (an agent that crashed mid-command).
const SCOPE_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// What one command in flight may touch.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Scope {
    /// A Stage: the release's manifest and its artifact, read only.
    Release { dir: String, artifact: String },
    /// A Backup (writable) or a Restore (read only): the objects under
    /// `backups/<cluster>/<id>/`.
    Backup { prefix: String, writable: bool },
}

/// The object names a backup consists of.
fn backup_object(name: &str) -> bool {
    matches!(name, "manifest.json" | "COMPLETE")
        || name
            .strip_prefix("part-")
            .is_some_and(|n| n.len() >= 5 && n.bytes().all(|b| b.is_ascii_digit()))
}

impl Scope {
    fn of(cluster: &str, action: &Action) -> Option<Scope> {
        match action {
            Action::Stage { release } => Some(Scope::Release {
                dir: format!("{}/{}/", release.name, release.version),
                artifact: format!(
                    "{}/{}/{}.tar",
                    release.name,
                    release.version,
                    release.sha256.to_ascii_lowercase()
                ),
            }),
            Action::Backup { id } => Some(Scope::Backup {
                prefix: format!("backups/{cluster}/{id}/"),
                writable: true,
            }),
            Action::Restore { id } => Some(Scope::Backup {
                prefix: format!("backups/{cluster}/{id}/"),
                writable: false,
            }),
            _ => None,
        }
    }

    fn covers(&self, method: v1::GrantMethod, key: &str) -> bool {
        use v1::GrantMethod as M;
        match self {
            Scope::Release { dir, artifact } => {
                method == M::Get && (key == artifact || key == format!("{dir}manifest.toml"))
            }
            Scope::Backup { prefix, writable } => match method {
                M::List => key == prefix,
                M::Get => key.strip_prefix(prefix.as_str()).is_some_and(backup_object),
                M::Put | M::Delete => {
                    *writable && key.strip_prefix(prefix.as_str()).is_some_and(backup_object)
                }
                M::Unspecified => false,
            },
        }
    }
}

/// Per member: each command in flight, what it may touch, and since when.
type InFlight = HashMap<MemberId, Vec<(CommandId, Scope, Instant)>>;

/// The commands in flight per member, and what signs for them.
#[derive(Debug)]
pub struct Grants {
    cluster: String,
    /// Signs agents' requests (an S3 store, at the agents' endpoint); None
    /// for a dir store, which agents read directly.
    presigner: Option<Arc<S3Store>>,
    /// Lists for agents (the coordinator's own view of the store).
    lister: Option<Arc<dyn BlobStore>>,
    /// The store's location, for messages.
    location: String,
    in_flight: Mutex<InFlight>,
}

impl Grants {
    pub fn new(
        cluster: String,
        presigner: Option<Arc<S3Store>>,
        lister: Option<Arc<dyn BlobStore>>,
        location: String,
    ) -> Self {
        Grants {
            cluster,
            presigner,
            lister,
            location,
            in_flight: Mutex::default(),
        }
    }

    /// No store: nothing is ever granted.
    pub fn none(cluster: String) -> Self {
        Grants::new(cluster, None, None, "(no [store])".to_owned())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InFlight> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `cmd` was sent to `member`: what it needs may now be granted.
    pub fn sent(&self, member: &MemberId, cmd: &AgentCommand) {
        let Some(scope) = Scope::of(&self.cluster, &cmd.action) else {
            return;
        };
        let mut map = self.lock();
        let list = map.entry(member.clone()).or_default();
        list.retain(|(id, _, at)| *id != cmd.id && at.elapsed() < SCOPE_LIFETIME);
        list.push((cmd.id.clone(), scope, Instant::now()));
    }

    /// `member` answered command `id`: nothing more is granted for it.
    pub fn finished(&self, member: &MemberId, id: &CommandId) {
        if let Some(list) = self.lock().get_mut(member) {
            list.retain(|(c, _, _)| c != id);
        }
    }

    fn covered(&self, member: &MemberId, method: v1::GrantMethod, key: &str) -> bool {
        self.lock().get(member).is_some_and(|list| {
            list.iter()
                .any(|(_, scope, at)| at.elapsed() < SCOPE_LIFETIME && scope.covers(method, key))
        })
    }

    /// The answer to `member`'s request.
    pub async fn answer(&self, member: &MemberId, req: &v1::GrantRequest) -> v1::grant::Answer {
        match self.decide(member, req).await {
            Ok(answer) => answer,
            Err(why) => {
                tracing::warn!(member = %member, key = %req.key, "grant refused: {why}");
                v1::grant::Answer::Refused(why)
            }
        }
    }

    async fn decide(
        &self,
        member: &MemberId,
        req: &v1::GrantRequest,
    ) -> Result<v1::grant::Answer, String> {
        let method = v1::GrantMethod::try_from(req.method).unwrap_or(v1::GrantMethod::Unspecified);
        let key = req.key.as_str();
        let verb = method.as_str_name().trim_start_matches("GRANT_METHOD_");
        if method == v1::GrantMethod::Unspecified {
            return Err(format!(
                "member {member}: grant request for {key:?} names no method"
            ));
        }
        if !self.covered(member, method, key) {
            return Err(format!(
                "member {member}: {verb} {key:?} is not covered by any command in flight on this member; the coordinator presigns only what its own Stage, Backup or Restore to this member needs"
            ));
        }
        let Some(presigner) = &self.presigner else {
            return Err(format!(
                "member {member}: the coordinator's store {} cannot presign (it is not S3); give this agent [store] kind = \"dir\" with that path, or give the coordinator an s3 [store]",
                self.location
            ));
        };
        let signed = match method {
            v1::GrantMethod::List => {
                let lister = self.lister.as_ref().ok_or("no store to list")?;
                let keys = lister
                    .list_blobs(key)
                    .await
                    .map_err(|e| format!("member {member}: {e}"))?;
                return Ok(v1::grant::Answer::Keys(v1::KeyList { keys }));
            }
            v1::GrantMethod::Get => presigner.presign_get(key, GRANT_TTL).await,
            v1::GrantMethod::Put => presigner.presign_put(key, GRANT_TTL).await,
            v1::GrantMethod::Delete => presigner.presign_delete(key, GRANT_TTL).await,
            v1::GrantMethod::Unspecified => unreachable!("refused above"),
        }
        .map_err(|e| format!("member {member}: {e}"))?;
        Ok(v1::grant::Answer::Request(to_wire(&signed, &self.location)))
    }
}

fn to_wire(p: &Presigned, location: &str) -> v1::PresignedRequest {
    v1::PresignedRequest {
        method: p.method.clone(),
        url: p.url.clone(),
        headers: p
            .headers
            .iter()
            .map(|(name, value)| v1::Header {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        expires_in_ms: u32::try_from(p.expires_in.as_millis()).unwrap_or(u32::MAX),
        location: location.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_domain::ReleaseRef;
    use v1::GrantMethod as M;

    fn cmd(id: &str, action: Action) -> AgentCommand {
        AgentCommand {
            id: CommandId(id.to_owned()),
            action,
            stop_timeout_ms: None,
            even_if_leader: false,
            fence: None,
        }
    }

    fn stage() -> Action {
        Action::Stage {
            release: ReleaseRef {
                name: "kv".into(),
                version: "v2".into(),
                format_version: 1,
                sha256: "ABC".into(),
            },
        }
    }

    #[test]
    fn only_what_a_command_in_flight_needs_is_covered() {
        let g = Grants::none("c1".into());
        let n1 = MemberId::new("n1").unwrap();
        let n2 = MemberId::new("n2").unwrap();
        g.sent(&n1, &cmd("s", stage()));
        g.sent(&n1, &cmd("b", Action::Backup { id: "r1-b1".into() }));
        g.sent(&n2, &cmd("r", Action::Restore { id: "r1-b1".into() }));
        g.sent(&n2, &cmd("x", Action::Stop));
        for (member, method, key, want) in [
            (&n1, M::Get, "kv/v2/manifest.toml", true),
            (&n1, M::Get, "kv/v2/abc.tar", true),
            (&n1, M::Put, "kv/v2/abc.tar", false),
            (&n1, M::Get, "kv/v3/manifest.toml", false),
            (&n2, M::Get, "kv/v2/abc.tar", false),
            (&n1, M::Put, "backups/c1/r1-b1/part-00003", true),
            (&n1, M::Put, "backups/c1/r1-b1/manifest.json", true),
            (&n1, M::Put, "backups/c1/r1-b1/COMPLETE", true),
            (&n1, M::Delete, "backups/c1/r1-b1/part-00000", true),
            (&n1, M::List, "backups/c1/r1-b1/", true),
            (&n1, M::List, "backups/c1/", false),
            (&n1, M::Put, "backups/c1/r1-b2/part-00000", false),
            (&n1, M::Put, "backups/c1/r1-b1/../r1-b2/part-00000", false),
            (&n1, M::Put, "backups/c1/r1-b1/part-1", false),
            (&n1, M::Put, "backups/c2/r1-b1/part-00000", false),
            (&n2, M::Get, "backups/c1/r1-b1/part-00000", true),
            (&n2, M::Put, "backups/c1/r1-b1/part-00000", false),
            (&n2, M::Delete, "backups/c1/r1-b1/COMPLETE", false),
            (&n1, M::Unspecified, "kv/v2/abc.tar", false),
        ] {
            assert_eq!(
                g.covered(member, method, key),
                want,
                "{member} {method:?} {key}"
            );
        }
        // Answered: no longer covered.
        g.finished(&n1, &CommandId("b".into()));
        assert!(!g.covered(&n1, M::Put, "backups/c1/r1-b1/part-00000"));
        assert!(g.covered(&n1, M::Get, "kv/v2/abc.tar"));
    }

    #[tokio::test]
    async fn refusals_name_the_member_the_key_and_the_way_out() {
        let g = Grants::new("c1".into(), None, None, "/srv/store".into());
        let n1 = MemberId::new("n1").unwrap();
        let ask = |method: M, key: &str| v1::GrantRequest {
            request_id: 1,
            method: method.into(),
            key: key.into(),
        };
        let v1::grant::Answer::Refused(why) = g.answer(&n1, &ask(M::Get, "kv/v2/abc.tar")).await
        else {
            panic!("granted without a command in flight");
        };
        assert!(
            why.contains("member n1")
                && why.contains("GET \"kv/v2/abc.tar\"")
                && why.contains("not covered"),
            "{why}"
        );
        g.sent(&n1, &cmd("s", stage()));
        let v1::grant::Answer::Refused(why) = g.answer(&n1, &ask(M::Get, "kv/v2/abc.tar")).await
        else {
            panic!("a dir store cannot presign");
        };
        assert!(
            why.contains("/srv/store cannot presign") && why.contains("kind = \"dir\""),
            "{why}"
        );
    }
}
