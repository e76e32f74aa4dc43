//! Who may call what on the operator API.
//!
//! This module owns operator roles and the one decision every operator
//! call starts with ([`Access::authorize`]): who the caller is, read from
//! its client certificate (`spiffe://<cluster>/operator/<name>`, whose role
//! the config's `[operators]` table gives), and whether that role may make
//! the call. Without `[tls]` the coordinator only ever listens on loopback
//! (the config refuses anything else), and a local caller acts as `admin`.
//! A member's or a replica's certificate can do nothing here.

use std::collections::BTreeMap;

use baton_net::identity::{PartyKind, PeerIdentity, echo};
use serde::Deserialize;
use tonic::{Request, Status};

/// What a caller may do, each role including the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// status, plan, history, rollout (and so watch), the backup listing.
    Viewer,
    /// upgrade, pause, resume, abort, rollback, verifying a backup.
    Operator,
    /// restore, pruning backups.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who made a call, as the journal records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    /// `operator/<name>` for a certificate, `local` on plaintext loopback.
    pub name: String,
    pub role: Role,
}

/// The operator API's access rules.
#[derive(Clone, Debug)]
pub struct Access {
    cluster: String,
    /// Whether the coordinator serves mutual TLS (callers have certificates).
    tls: bool,
    /// Each operator's role, by the name in its certificate.
    operators: BTreeMap<String, Role>,
    /// Bearer tokens: name, sha256 (lowercase hex) and role.
    tokens: BTreeMap<String, (String, Role)>,
}

impl Access {
    pub fn new(cluster: String, tls: bool, operators: BTreeMap<String, Role>) -> Access {
        Access {
            cluster,
            tls,
            operators,
            tokens: BTreeMap::new(),
        }
    }

    /// Also accepts these bearer tokens (name to sha256 and role), over TLS.
    pub fn with_tokens(mut self, tokens: BTreeMap<String, (String, Role)>) -> Access {
        self.tokens = tokens;
        self
    }

    /// The actor a bearer token names: its sha256 compared with each
    /// configured one in constant time.
    fn token_actor(&self, token: &str, call: &str) -> Result<Actor, Status> {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(token.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let mut found = None;
        for (name, (want, role)) in &self.tokens {
            // Every byte compared, whatever matches, so timing tells nothing.
            let same = want
                .bytes()
                .zip(hex.bytes())
                .fold(want.len() ^ hex.len(), |acc, (a, b)| {
                    acc | usize::from(a ^ b)
                });
            if same == 0 {
                found = Some((name, *role));
            }
        }
        let (name, role) = found.ok_or_else(|| {
            Status::unauthenticated(format!(
                "{call} refused: the bearer token matches none in the coordinator's [tokens]; check --token-file"
            ))
        })?;
        Ok(Actor {
            name: format!("token/{name}"),
            role,
        })
    }

    /// The caller of `request`, if its role is at least `need` for `call`;
    /// PERMISSION_DENIED (or UNAUTHENTICATED without a certificate) naming
    /// the caller, the call and what to do otherwise.
    pub fn authorize<T>(
        &self,
        request: &Request<T>,
        need: Role,
        call: &str,
    ) -> Result<Actor, Status> {
        let bearer = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap_or_default().to_owned());
        if !self.tls {
            if bearer.is_some() {
                return Err(Status::permission_denied(format!(
                    "{call} refused: a bearer token is accepted only over TLS, and this coordinator serves plaintext; nothing was done"
                )));
            }
            return Ok(Actor {
                name: "local".into(),
                role: Role::Admin,
            });
        }
        if let Some(value) = bearer {
            let token = value.strip_prefix("Bearer ").ok_or_else(|| {
                Status::unauthenticated(format!(
                    "{call} refused: the authorization header is not `Bearer <token>`"
                ))
            })?;
            let actor = self.token_actor(token.trim(), call)?;
            return self.allowed(actor, need, call);
        }
        let der = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| c.to_vec()));
        self.decide(der.as_deref(), need, call)
    }

    fn decide(&self, der: Option<&[u8]>, need: Role, call: &str) -> Result<Actor, Status> {
        let Some(der) = der else {
            return Err(Status::unauthenticated(format!(
                "{call} refused: no client certificate was presented; give the CLI --cert and --key for an operator certificate (spiffe://{}/operator/<name>)",
                echo(&self.cluster)
            )));
        };
        let id = PeerIdentity::from_der(der)
            .map_err(|e| Status::permission_denied(format!("{call} refused: {e}")))?;
        let Some(op) = id
            .ids(PartyKind::Operator)
            .find(|s| s.cluster == self.cluster)
        else {
            return Err(Status::permission_denied(format!(
                "{call} refused: the client certificate names {}, which is no operator of cluster {}; operators present a certificate for spiffe://{}/operator/<name>",
                id.describe(),
                echo(&self.cluster),
                echo(&self.cluster)
            )));
        };
        let Some(role) = self.operators.get(&op.name).copied() else {
            return Err(Status::permission_denied(format!(
                "{call} refused: operator {} has no role; add it to the coordinator's [operators] table (viewer, operator or admin)",
                echo(&op.name)
            )));
        };
        self.allowed(
            Actor {
                name: format!("operator/{}", op.name),
                role,
            },
            need,
            call,
        )
    }

    /// `actor`, if its role is at least `need`.
    fn allowed(&self, actor: Actor, need: Role, call: &str) -> Result<Actor, Status> {
        if actor.role < need {
            return Err(Status::permission_denied(format!(
                "{call} refused: {} is a {}, and {call} needs {need}; an admin can raise its role in [operators] or [tokens]",
                echo(&actor.name),
                actor.role
            )));
        }
        Ok(actor)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert(uri: &str) -> Vec<u8> {
        let mut p = CertificateParams::new(vec!["n1".to_owned()]).unwrap();
        p.subject_alt_names
            .push(SanType::URI(uri.try_into().unwrap()));
        let key = KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    fn access() -> Access {
        Access::new(
            "kv".into(),
            true,
            BTreeMap::from([
                ("vic".to_owned(), Role::Viewer),
                ("olga".to_owned(), Role::Operator),
                ("ada".to_owned(), Role::Admin),
            ]),
        )
    }

    #[test]
    fn each_role_may_do_what_it_includes_and_no_more() {
        let a = access();
        for (who, role) in [
            ("vic", Role::Viewer),
            ("olga", Role::Operator),
            ("ada", Role::Admin),
        ] {
            let der = cert(&format!("spiffe://kv/operator/{who}"));
            for need in [Role::Viewer, Role::Operator, Role::Admin] {
                let got = a.decide(Some(&der), need, "the call");
                if role >= need {
                    let actor = got.unwrap();
                    assert_eq!(actor.name, format!("operator/{who}"));
                    assert_eq!(actor.role, role);
                } else {
                    let s = got.unwrap_err();
                    assert_eq!(s.code(), tonic::Code::PermissionDenied);
                    assert!(
                        s.message().contains(&format!(
                            "operator/{who} is a {role}, and the call needs {need}"
                        )),
                        "{}",
                        s.message()
                    );
                }
            }
        }
    }

    #[test]
    fn a_member_a_replica_a_stranger_or_another_cluster_can_do_nothing() {
        let a = access();
        for (uri, says) in [
            ("spiffe://kv/member/n1", "spiffe://kv/member/n1"),
            ("spiffe://kv/coordinator/1", "spiffe://kv/coordinator/1"),
            ("spiffe://other/operator/ada", "spiffe://other/operator/ada"),
        ] {
            let s = a
                .decide(Some(&cert(uri)), Role::Viewer, "status")
                .unwrap_err();
            assert_eq!(s.code(), tonic::Code::PermissionDenied, "{uri}");
            assert!(s.message().contains(says), "{}", s.message());
            assert!(
                s.message().contains("no operator of cluster kv"),
                "{}",
                s.message()
            );
        }
        let s = a
            .decide(
                Some(&cert("spiffe://kv/operator/mallory")),
                Role::Viewer,
                "status",
            )
            .unwrap_err();
        assert!(
            s.message().contains("operator mallory has no role"),
            "{}",
            s.message()
        );
        let s = a.decide(None, Role::Viewer, "status").unwrap_err();
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        let s = a.decide(Some(b"junk"), Role::Viewer, "status").unwrap_err();
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn plaintext_loopback_acts_as_admin() {
        let a = Access::new("kv".into(), false, BTreeMap::new());
        let actor = a
            .authorize(&Request::new(()), Role::Admin, "restore")
            .unwrap();
        assert_eq!(actor.name, "local");
        assert_eq!(actor.role, Role::Admin);
    }

    fn sha(token: &str) -> String {
        use sha2::Digest;
        sha2::Sha256::digest(token.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn with_bearer(value: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("authorization", value.parse().unwrap());
        r
    }

    #[test]
    fn bearer_tokens_are_checked_by_their_hash_and_only_over_tls() {
        let tokens = BTreeMap::from([
            ("ci".to_owned(), (sha("s3cret-ci"), Role::Operator)),
            ("bot".to_owned(), (sha("s3cret-bot"), Role::Viewer)),
        ]);
        let a = access().with_tokens(tokens.clone());
        let ci = a
            .authorize(&with_bearer("Bearer s3cret-ci"), Role::Operator, "upgrade")
            .unwrap();
        assert_eq!(ci.name, "token/ci", "the audit names the token");
        assert_eq!(ci.role, Role::Operator);
        let e = a
            .authorize(&with_bearer("Bearer s3cret-bot"), Role::Operator, "upgrade")
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(
            e.message()
                .contains("token/bot is a viewer, and upgrade needs operator"),
            "{e:?}"
        );
        for bad in ["Bearer wrong", "Bearer s3cret-ci2", "s3cret-ci", "Basic x"] {
            let e = a
                .authorize(&with_bearer(bad), Role::Viewer, "status")
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad}: {e:?}");
            assert!(!e.message().contains("s3cret"), "{bad}: echoed the token");
        }
        let plaintext = Access::new("kv".into(), false, BTreeMap::new()).with_tokens(tokens);
        let e = plaintext
            .authorize(&with_bearer("Bearer s3cret-ci"), Role::Viewer, "status")
            .unwrap_err();
        assert!(e.message().contains("only over TLS"), "{e:?}");
    }
}
