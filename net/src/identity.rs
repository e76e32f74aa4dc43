//! Who a TLS peer is, read from its certificate.
//!
//! This module owns turning a client certificate (DER, as rustls hands it
//! to the server) into a [`PeerIdentity`]: the SPIFFE-style URI SANs baton
//! issues (`spiffe://<cluster>/member/<id>`, `.../operator/<name>`,
//! `.../coordinator/<name>`) and the DNS SANs. It also decides the one
//! question every listener asks of it: may this certificate speak as that
//! member ([`PeerIdentity::may_be_member`])? What a role may do is the
//! coordinator's business, not this module's.

use std::fmt;

/// Values echoed into errors and logs are cut the one way baton cuts them.
pub use baton_domain::{ECHO_MAX, echo};

/// The kind of party a baton SPIFFE id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartyKind {
    Member,
    Operator,
    Coordinator,
}

impl PartyKind {
    fn path(self) -> &'static str {
        match self {
            PartyKind::Member => "member",
            PartyKind::Operator => "operator",
            PartyKind::Coordinator => "coordinator",
        }
    }
}

/// One `spiffe://<cluster>/<kind>/<name>` id from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    pub cluster: String,
    pub kind: PartyKind,
    pub name: String,
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/{}/{}",
            self.cluster,
            self.kind.path(),
            self.name
        )
    }
}

impl SpiffeId {
    /// Parses a URI SAN; `None` for anything that is not a baton id.
    pub fn parse(uri: &str) -> Option<SpiffeId> {
        let rest = uri.strip_prefix("spiffe://")?;
        let mut parts = rest.split('/');
        let (cluster, kind, name) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || cluster.is_empty() || name.is_empty() {
            return None;
        }
        let kind = match kind {
            "member" => PartyKind::Member,
            "operator" => PartyKind::Operator,
            "coordinator" => PartyKind::Coordinator,
            _ => return None,
        };
        Some(SpiffeId {
            cluster: cluster.to_owned(),
            kind,
            name: name.to_owned(),
        })
    }
}

/// What a peer's certificate says it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Its baton URI SANs.
    pub spiffe: Vec<SpiffeId>,
    /// Its DNS SANs.
    pub dns: Vec<String>,
}

/// Why a certificate may not speak as a party.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the client certificate cannot be read: {0}")]
    Unreadable(String),
    #[error(
        "the client certificate names {names}, not member {claimed}: an agent may speak only for the member its certificate names (a URI SAN spiffe://{cluster}/member/<id> or a DNS SAN equal to the id)"
    )]
    NotThatMember {
        claimed: String,
        cluster: String,
        names: String,
    },
    #[error(
        "the client certificate names {names}, which is no coordinator replica of cluster {cluster}: a replica peer must present a certificate with the URI SAN spiffe://{cluster}/coordinator/<name> (`baton certs dev` writes one)"
    )]
    NotACoordinator { cluster: String, names: String },
    #[error(
        "the client certificate belongs to cluster {theirs} ({id}), not to this cluster {ours}"
    )]
    OtherCluster {
        ours: String,
        theirs: String,
        id: String,
    },
}

impl PeerIdentity {
    /// Reads the SANs of a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<PeerIdentity, IdentityError> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| IdentityError::Unreadable(e.to_string()))?;
        let mut id = PeerIdentity::default();
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::Unreadable(e.to_string()))?;
        for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
            match name {
                GeneralName::URI(uri) => {
                    if let Some(s) = SpiffeId::parse(uri) {
                        id.spiffe.push(s);
                    }
                }
                GeneralName::DNSName(d) => id.dns.push((*d).to_owned()),
                _ => {}
            }
        }
        Ok(id)
    }

    /// Its baton ids of `kind`.
    pub fn ids(&self, kind: PartyKind) -> impl Iterator<Item = &SpiffeId> {
        self.spiffe.iter().filter(move |s| s.kind == kind)
    }

    /// Whether this certificate may speak as member `claimed` of `cluster`.
    /// With a member URI SAN, only that id (of that cluster) is it; without
    /// one, a DNS SAN equal to the id is. A certificate that names an
    /// operator or a coordinator is never a member.
    pub fn may_be_member(&self, cluster: &str, claimed: &str) -> Result<(), IdentityError> {
        let members: Vec<&SpiffeId> = self.ids(PartyKind::Member).collect();
        if let Some(other) = members.iter().find(|s| s.cluster != cluster)
            && !members.iter().any(|s| s.cluster == cluster)
        {
            return Err(IdentityError::OtherCluster {
                ours: echo(cluster),
                theirs: echo(&other.cluster),
                id: echo(&other.to_string()),
            });
        }
        let ok = if members.is_empty() {
            self.spiffe.is_empty() && self.dns.iter().any(|d| d == claimed)
        } else {
            members
                .iter()
                .any(|s| s.cluster == cluster && s.name == claimed)
        };
        if ok {
            return Ok(());
        }
        Err(IdentityError::NotThatMember {
            claimed: echo(claimed),
            cluster: echo(cluster),
            names: self.describe(),
        })
    }

    /// The coordinator replica name this certificate gives in `cluster`:
    /// it must hold `spiffe://<cluster>/coordinator/<name>` and name no
    /// member or operator (a member's or an operator's certificate is never
    /// a replica peer, whatever CA signed it).
    pub fn coordinator_name(&self, cluster: &str) -> Result<&str, IdentityError> {
        let others = self.spiffe.iter().any(|s| s.kind != PartyKind::Coordinator);
        match self
            .ids(PartyKind::Coordinator)
            .find(|s| s.cluster == cluster)
        {
            Some(id) if !others => Ok(&id.name),
            _ => Err(IdentityError::NotACoordinator {
                cluster: echo(cluster),
                names: self.describe(),
            }),
        }
    }

    /// What the certificate names, for messages (each value cut to
    /// [`ECHO_MAX`]; at most a few listed).
    pub fn describe(&self) -> String {
        let mut names: Vec<String> = self
            .spiffe
            .iter()
            .map(|s| echo(&s.to_string()))
            .chain(self.dns.iter().map(|d| format!("DNS:{}", echo(d))))
            .collect();
        if names.is_empty() {
            return "no baton identity (no spiffe:// URI SAN and no DNS SAN)".to_owned();
        }
        if names.len() > 4 {
            let more = names.len() - 4;
            names.truncate(4);
            names.push(format!("and {more} more"));
        }
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert(sans: Vec<SanType>) -> Vec<u8> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    fn dns(s: &str) -> SanType {
        SanType::DnsName(s.try_into().unwrap())
    }

    #[test]
    fn a_member_uri_names_exactly_that_member_of_that_cluster() {
        let id = PeerIdentity::from_der(&cert(vec![uri("spiffe://kv/member/n1")])).unwrap();
        assert_eq!(
            id.spiffe,
            vec![SpiffeId {
                cluster: "kv".into(),
                kind: PartyKind::Member,
                name: "n1".into()
            }]
        );
        assert_eq!(id.may_be_member("kv", "n1"), Ok(()));
        let err = id.may_be_member("kv", "n3").unwrap_err().to_string();
        assert!(
            err.contains("names spiffe://kv/member/n1, not member n3"),
            "{err}"
        );
        let err = id.may_be_member("other", "n1").unwrap_err();
        assert!(matches!(err, IdentityError::OtherCluster { .. }), "{err}");
        assert!(err.to_string().contains("cluster kv"), "{err}");
    }

    #[test]
    fn a_dns_name_equal_to_the_id_is_that_member_unless_a_baton_uri_says_otherwise() {
        let id = PeerIdentity::from_der(&cert(vec![dns("n1")])).unwrap();
        assert_eq!(id.may_be_member("kv", "n1"), Ok(()));
        let err = id.may_be_member("kv", "n3").unwrap_err().to_string();
        assert!(err.contains("DNS:n1, not member n3"), "{err}");
        // A member URI wins over a DNS name.
        let id =
            PeerIdentity::from_der(&cert(vec![uri("spiffe://kv/member/n1"), dns("n3")])).unwrap();
        assert!(id.may_be_member("kv", "n3").is_err());
        // An operator's or a coordinator's certificate is no member, even
        // with a matching DNS name.
        for other in ["spiffe://kv/operator/n1", "spiffe://kv/coordinator/n1"] {
            let id = PeerIdentity::from_der(&cert(vec![uri(other), dns("n1")])).unwrap();
            let err = id.may_be_member("kv", "n1").unwrap_err().to_string();
            assert!(err.contains(other), "{err}");
        }
        let id = PeerIdentity::from_der(&cert(vec![])).unwrap();
        let err = id.may_be_member("kv", "n1").unwrap_err().to_string();
        assert!(err.contains("no baton identity"), "{err}");
    }

    #[test]
    fn only_well_formed_baton_ids_count() {
        for bad in [
            "spiffe://kv/member",
            "spiffe://kv/member/",
            "spiffe:///member/n1",
            "spiffe://kv/member/n1/extra",
            "spiffe://kv/visitor/n1",
            "https://kv/member/n1",
        ] {
            assert_eq!(SpiffeId::parse(bad), None, "{bad}");
        }
        let s = SpiffeId::parse("spiffe://kv/operator/alice").unwrap();
        assert_eq!(s.kind, PartyKind::Operator);
        assert_eq!(s.to_string(), "spiffe://kv/operator/alice");
    }

    #[test]
    fn echoed_values_are_cut_to_128_bytes_on_a_char_boundary() {
        assert_eq!(echo("n1"), "n1");
        let long = "é".repeat(1000);
        let cut = echo(&long);
        assert!(cut.len() < ECHO_MAX + 40, "{}", cut.len());
        assert!(cut.ends_with("… (2000 bytes in all)"), "{cut}");
        let id = PeerIdentity {
            dns: vec!["x".repeat(4 << 20)],
            ..PeerIdentity::default()
        };
        let err = id.may_be_member("kv", &"y".repeat(4 << 20)).unwrap_err();
        assert!(err.to_string().len() < 1024, "{}", err.to_string().len());
    }

    #[test]
    fn garbage_is_unreadable_not_a_panic() {
        for der in [&b""[..], b"\x30\x03\x02\x01", &[0xffu8; 64]] {
            assert!(matches!(
                PeerIdentity::from_der(der),
                Err(IdentityError::Unreadable(_))
            ));
        }
    }
}
