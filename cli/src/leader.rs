//! Which coordinator replica to ask. Owns the validated `--coordinator`
//! list ([`Coordinators`]), what a failed attempt means ([`judge`]) and the
//! walk over the replicas for one call ([`Route`]): follow a follower's
//! leader hint, fall through to the next address, back off while an
//! election runs, then give up naming what each replica said.
//!
//! Pure: no IO and no clock (the time spent comes in as an argument).
//! [`crate::conn::OperatorConn`] runs a [`Route`] for every call. It must
//! never send a call again once it may have reached the leader: only
//! connect failures and a replica's UNAVAILABLE (an answer given before
//! accepting the call) are retried for a call that changes the cluster.
//!
//! ```text
//!   CLI                 c1 (follower)           c2 (leader)
//!    |  Upgrade            |                       |
//!    |-------------------->|                       |
//!    |  UNAVAILABLE        |                       |
//!    |  x-baton-leader: http://c2                  |
//!    |<--------------------|                       |
//!    |  Upgrade (same call, at the hint)           |
//!    |-------------------------------------------->|
//!    |  UpgradeResponse                            |
//!    |<--------------------------------------------|
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use tonic::transport::Uri;

/// The metadata key of a follower's UNAVAILABLE that names the leader's
/// operator address (a URL with its scheme): the one the coordinator sets.
pub use baton_proto::LEADER_HINT;

/// The most coordinator addresses `--coordinator` takes.
pub const MAX_COORDINATORS: usize = 7;

/// How a coordinator serves its operator API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        })
    }
}

/// Why `--coordinator` (or `BATON_COORDINATOR`) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidCoordinators {
    #[error(
        "--coordinator is empty; give the coordinator's address, or its replicas' separated by commas (e.g. http://127.0.0.1:7400)"
    )]
    Empty,
    #[error("--coordinator {list:?} has an empty entry; separate the addresses with single commas")]
    EmptyEntry { list: String },
    #[error(
        "coordinator address {addr:?} is not a URL ({detail}); write it as http://HOST:PORT or https://HOST:PORT"
    )]
    NotUrl { addr: String, detail: String },
    #[error(
        "coordinator address {addr:?} has no scheme; write it as http://{addr} or https://{addr}"
    )]
    NoScheme { addr: String },
    #[error("coordinator address {addr:?} has scheme {scheme:?}; use http:// or https://")]
    BadScheme { addr: String, scheme: String },
    #[error("--coordinator: {why}")]
    Plaintext { why: String },
    #[error("coordinator address {addr:?} has a path or query; give only scheme://HOST:PORT")]
    HasPath { addr: String },
    #[error(
        "coordinator addresses mix schemes ({first} and {other}); every replica serves the same, all http:// or all https://"
    )]
    MixedSchemes { first: String, other: String },
    #[error("coordinator address {addr} is listed twice")]
    Duplicate { addr: String },
    #[error(
        "{count} coordinator addresses given; at most {max} (a coordinator runs 1, 3 or 5 replicas)"
    )]
    TooMany { count: usize, max: usize },
}

/// Why a follower's leader hint was not followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefusedHint {
    #[error("it is not an address: {0}")]
    Invalid(InvalidCoordinators),
    #[error("its scheme is {hint}, but the configured addresses use {configured}")]
    Scheme { hint: Scheme, configured: Scheme },
}

/// The coordinator replicas' operator addresses, as `scheme://host:port`:
/// at least one, at most [`MAX_COORDINATORS`], one scheme, no duplicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coordinators {
    scheme: Scheme,
    addrs: Vec<String>,
}

impl Coordinators {
    /// Parses a comma-separated list (one address is a list of one).
    pub fn parse(list: &str) -> Result<Self, InvalidCoordinators> {
        if list.trim().is_empty() {
            return Err(InvalidCoordinators::Empty);
        }
        let entries: Vec<&str> = list.split(',').map(str::trim).collect();
        if entries.iter().any(|e| e.is_empty()) {
            return Err(InvalidCoordinators::EmptyEntry {
                list: list.to_owned(),
            });
        }
        if entries.len() > MAX_COORDINATORS {
            return Err(InvalidCoordinators::TooMany {
                count: entries.len(),
                max: MAX_COORDINATORS,
            });
        }
        let mut scheme = None;
        let mut addrs: Vec<String> = Vec::with_capacity(entries.len());
        for entry in entries {
            let (s, addr) = parse_address(entry)?;
            match scheme {
                None => scheme = Some(s),
                Some(first) if first != s => {
                    return Err(InvalidCoordinators::MixedSchemes {
                        first: addrs[0].clone(),
                        other: addr,
                    });
                }
                Some(_) => {}
            }
            if addrs.contains(&addr) {
                return Err(InvalidCoordinators::Duplicate { addr });
            }
            addrs.push(addr);
        }
        let scheme = scheme.ok_or(InvalidCoordinators::Empty)?;
        Ok(Coordinators { scheme, addrs })
    }

    /// The addresses, in the order given.
    pub fn addrs(&self) -> &[String] {
        &self.addrs
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The address a follower's hint names, if this CLI may follow it: a
    /// valid address with the configured scheme (it need not be listed).
    pub fn leader_hint(&self, hint: &str) -> Result<String, RefusedHint> {
        let (scheme, addr) = parse_address(hint.trim()).map_err(RefusedHint::Invalid)?;
        if scheme != self.scheme {
            return Err(RefusedHint::Scheme {
                hint: scheme,
                configured: self.scheme,
            });
        }
        Ok(addr)
    }
}

/// One address's scheme and its normal form, `scheme://host:port` in
/// lower case without a trailing `/`.
fn parse_address(addr: &str) -> Result<(Scheme, String), InvalidCoordinators> {
    let uri: Uri = addr
        .parse()
        .map_err(
            |e: tonic::codegen::http::uri::InvalidUri| InvalidCoordinators::NotUrl {
                addr: addr.to_owned(),
                detail: e.to_string(),
            },
        )?;
    let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        None => {
            return Err(InvalidCoordinators::NoScheme {
                addr: addr.to_owned(),
            });
        }
        Some("http") => Scheme::Http,
        Some("https") => Scheme::Https,
        Some(other) => {
            return Err(InvalidCoordinators::BadScheme {
                addr: addr.to_owned(),
                scheme: other.to_owned(),
            });
        }
    };
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return Err(InvalidCoordinators::NotUrl {
            addr: addr.to_owned(),
            detail: "no host".into(),
        });
    };
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(InvalidCoordinators::HasPath {
            addr: addr.to_owned(),
        });
    }
    let normal = format!("{scheme}://{}", authority.as_str().to_ascii_lowercase());
    if let Some(why) = baton_net::addr::plaintext_refusal(&normal) {
        return Err(InvalidCoordinators::Plaintext { why });
    }
    Ok((scheme, normal))
}

/// Whether a call may be sent twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// It only reads: sent again after any transport failure.
    Read,
    /// It changes the cluster (upgrade, pause, prune, ...): sent again only
    /// when it surely was not accepted (no connection, or a replica's
    /// UNAVAILABLE).
    Change,
}

/// What one replica said when a call did not succeed there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Said {
    /// No connection could be made.
    Unreachable { detail: String },
    /// UNAVAILABLE, naming the leader.
    Follower { leader: String, message: String },
    /// UNAVAILABLE without a leader hint: an election, or a coordinator that
    /// cannot serve now.
    Unavailable { message: String },
    /// UNAVAILABLE naming a leader this CLI will not follow.
    BadHint {
        hint: String,
        reason: RefusedHint,
        message: String,
    },
    /// The connection broke during a read.
    Dropped { detail: String },
}

impl Said {
    /// Whether a replica answered (so the cluster is up, and worth asking
    /// again after a pause).
    fn answered(&self) -> bool {
        !matches!(self, Said::Unreachable { .. })
    }
}

impl fmt::Display for Said {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Said::Unreachable { detail } => write!(f, "unreachable: {detail}"),
            Said::Follower { leader, message } => {
                write!(f, "a follower, the leader is {leader}: {message}")
            }
            Said::Unavailable { message } => write!(f, "unavailable (no leader named): {message}"),
            Said::BadHint {
                hint,
                reason,
                message,
            } => write!(
                f,
                "named the leader {hint:?}, not followed because {reason}: {message}"
            ),
            Said::Dropped { detail } => write!(f, "the connection broke: {detail}"),
        }
    }
}

/// What a failed attempt means for the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It was not served there: record what was said and go on.
    Retry(Said),
    /// A replica took the call and answered this: it is the call's result.
    Answered,
    /// A change whose connection broke after it was sent: it may have run,
    /// so it is never sent again.
    Interrupted,
}

/// What `status` (a failed attempt of a call with `effect`) means.
///
/// A status with a source was made by the client's transport, not sent by
/// a replica; one whose cause is a `ConnectError` never left this process.
pub fn judge(status: &tonic::Status, effect: Effect) -> Verdict {
    let transport = std::error::Error::source(status);
    let Some(cause) = transport else {
        if status.code() != tonic::Code::Unavailable {
            return Verdict::Answered;
        }
        let message = status.message().to_owned();
        let hint = status
            .metadata()
            .get(LEADER_HINT)
            .map(|v| v.to_str().map(str::to_owned).unwrap_or_default());
        return Verdict::Retry(match hint {
            Some(leader) if !leader.trim().is_empty() => Said::Follower { leader, message },
            _ => Said::Unavailable { message },
        });
    };
    let never_sent =
        std::iter::successors(Some(cause), |e| e.source()).any(|e| e.is::<tonic::ConnectError>());
    let detail = status.message().to_owned();
    match (never_sent, effect) {
        (true, _) => Verdict::Retry(Said::Unreachable { detail }),
        (false, Effect::Read) => Verdict::Retry(Said::Dropped { detail }),
        (false, Effect::Change) => Verdict::Interrupted,
    }
}

/// The pauses between rounds over the replicas while no leader answers:
/// `first`, doubling up to `max_step`, until `budget` has been spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max_step: Duration,
    pub budget: Duration,
}

impl Default for Backoff {
    /// 100 ms doubling to 1 s, for about 5 s: long enough for an election.
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(100),
            max_step: Duration::from_secs(1),
            budget: Duration::from_secs(5),
        }
    }
}

/// The next thing a call does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send the call to this address.
    Try(String),
    /// Pause this long, then go round the replicas again.
    Wait(Duration),
    /// Stop: no replica served it. [`Route::tried`] says what each said.
    GiveUp,
}

/// One call's walk over the replicas. Each round tries the last known
/// leader, then the configured addresses in order; a hint jumps the queue.
/// Another round follows, after a pause, only while some replica answers
/// (the cluster is up but has no leader yet) and the budget lasts.
#[derive(Debug, Clone)]
pub struct Route {
    coordinators: Coordinators,
    /// Tried first in every round (it served the last call).
    leader: Option<String>,
    /// Still to try in this round.
    queue: VecDeque<String>,
    /// What each address said last, in the order first tried.
    tried: Vec<(String, Said)>,
    /// Whether a replica answered in this round.
    answered: bool,
    /// Hints followed in this round (bounded, against two followers that
    /// name each other).
    hops: usize,
    next_pause: Duration,
    backoff: Backoff,
}

impl Route {
    pub fn new(coordinators: &Coordinators, leader: Option<&str>, backoff: Backoff) -> Self {
        let mut route = Route {
            coordinators: coordinators.clone(),
            leader: leader.map(str::to_owned),
            queue: VecDeque::new(),
            tried: Vec::new(),
            answered: false,
            hops: 0,
            next_pause: backoff.first,
            backoff,
        };
        route.refill();
        route
    }

    fn refill(&mut self) {
        self.queue = self.leader.iter().cloned().collect();
        for a in self.coordinators.addrs() {
            if self.leader.as_ref() != Some(a) {
                self.queue.push_back(a.clone());
            }
        }
        self.answered = false;
        self.hops = 0;
    }

    /// What to do next, `elapsed` into the call.
    pub fn next(&mut self, elapsed: Duration) -> Step {
        if let Some(addr) = self.queue.pop_front() {
            return Step::Try(addr);
        }
        if !self.answered || elapsed >= self.backoff.budget {
            return Step::GiveUp;
        }
        let pause = self.next_pause.min(self.backoff.budget - elapsed);
        self.next_pause = (self.next_pause * 2).min(self.backoff.max_step);
        self.refill();
        Step::Wait(pause)
    }

    /// `addr` did not serve the call and said `said`. A hint it may follow
    /// is tried next.
    pub fn failed(&mut self, addr: &str, said: Said) {
        let said = match said {
            Said::Follower { leader, message } => match self.coordinators.leader_hint(&leader) {
                Ok(hinted) => {
                    if hinted != addr && self.hops < 2 * MAX_COORDINATORS {
                        self.hops += 1;
                        self.queue.retain(|q| *q != hinted);
                        self.queue.push_front(hinted);
                    }
                    Said::Follower { leader, message }
                }
                Err(reason) => Said::BadHint {
                    hint: leader,
                    reason,
                    message,
                },
            },
            other => other,
        };
        self.answered |= said.answered();
        match self.tried.iter_mut().find(|(a, _)| a == addr) {
            Some(entry) => entry.1 = said,
            None => self.tried.push((addr.to_owned(), said)),
        }
    }

    /// What each address said last, in the order first tried.
    pub fn tried(self) -> Tried {
        Tried(self.tried)
    }
}

/// Every address a call tried and what each said last, for the error that
/// ends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tried(pub Vec<(String, Said)>);

impl Tried {
    /// Whether any replica answered at all.
    pub fn any_answered(&self) -> bool {
        self.0.iter().any(|(_, s)| s.answered())
    }
}

impl fmt::Display for Tried {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (addr, said)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "; " };
            write!(f, "{sep}{addr} {said}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coords(list: &str) -> Coordinators {
        Coordinators::parse(list).unwrap()
    }

    #[test]
    fn addresses_are_validated() {
        let ok = coords(" http://LOCALHOST:7400/ ,http://127.0.0.2:7400");
        assert_eq!(
            ok.addrs(),
            ["http://localhost:7400", "http://127.0.0.2:7400"]
        );
        assert_eq!(ok.scheme(), Scheme::Http);
        assert_eq!(
            coords("http://127.0.0.1:7400").addrs(),
            ["http://127.0.0.1:7400"]
        );
        let err = |list: &str| Coordinators::parse(list).unwrap_err().to_string();
        let table = [
            ("", "is empty"),
            ("https://a:1,,https://b:1", "has an empty entry"),
            ("https://a:1,", "has an empty entry"),
            (
                "127.0.0.1:7400",
                "has no scheme; write it as http://127.0.0.1:7400",
            ),
            ("ftp://a:1", "has scheme \"ftp\"; use http:// or https://"),
            ("https://a:1/api", "has a path"),
            ("https://a b", "is not a URL"),
            (
                "http://10.1.2.3:7400",
                "plaintext http:// to 10.1.2.3, which is not loopback",
            ),
            (
                "http://coord:7400",
                "plaintext http:// to coord, which is not loopback",
            ),
            (
                "http://127.0.0.1:1,https://b:1",
                "mix schemes (http://127.0.0.1:1 and https://b:1)",
            ),
            ("https://a:1,https://A:1/", "https://a:1 is listed twice"),
            (
                "https://a:1,https://a:2,https://a:3,https://a:4,https://a:5,https://a:6,https://a:7,https://a:8",
                "8 coordinator addresses given; at most 7",
            ),
        ];
        for (list, want) in table {
            let got = err(list);
            assert!(got.contains(want), "{list:?}: {got}");
        }
    }

    #[test]
    fn a_hint_is_followed_only_with_the_configured_scheme() {
        let c = coords("https://c1:7400,https://c2:7400");
        assert_eq!(
            c.leader_hint("https://c9:7401").unwrap(),
            "https://c9:7401",
            "a leader that is not listed is followed"
        );
        assert_eq!(
            c.leader_hint("http://127.0.0.1:7400").unwrap_err(),
            RefusedHint::Scheme {
                hint: Scheme::Http,
                configured: Scheme::Https
            }
        );
        assert!(
            matches!(
                c.leader_hint("http://c2:7400").unwrap_err(),
                RefusedHint::Invalid(InvalidCoordinators::Plaintext { .. })
            ),
            "a follower cannot send the CLI to plaintext off loopback"
        );
        assert!(matches!(
            c.leader_hint("c2:7400").unwrap_err(),
            RefusedHint::Invalid(InvalidCoordinators::NoScheme { .. })
        ));
    }

    fn status_with_hint(hint: &str) -> tonic::Status {
        let mut s = tonic::Status::unavailable("c1 is a follower");
        s.metadata_mut()
            .insert(LEADER_HINT, hint.parse().expect("ascii"));
        s
    }

    #[test]
    fn judge_retries_only_what_was_not_accepted() {
        let follower = status_with_hint("https://c2:7400");
        let election = tonic::Status::unavailable("no leader yet");
        let refused = tonic::Status::failed_precondition("a rollout is running");
        let connect =
            tonic::Status::from_error(Box::new(tonic::ConnectError("connection refused".into())));
        let broke = tonic::Status::from_error(Box::new(std::io::Error::other("closed")));
        assert_eq!(connect.code(), tonic::Code::Unavailable);
        let table = [
            (
                &follower,
                Effect::Change,
                Verdict::Retry(Said::Follower {
                    leader: "https://c2:7400".into(),
                    message: "c1 is a follower".into(),
                }),
            ),
            (
                &election,
                Effect::Change,
                Verdict::Retry(Said::Unavailable {
                    message: "no leader yet".into(),
                }),
            ),
            (&refused, Effect::Change, Verdict::Answered),
            (&refused, Effect::Read, Verdict::Answered),
            (
                &connect,
                Effect::Change,
                Verdict::Retry(Said::Unreachable {
                    detail: connect.message().to_owned(),
                }),
            ),
            (&broke, Effect::Change, Verdict::Interrupted),
            (
                &broke,
                Effect::Read,
                Verdict::Retry(Said::Dropped {
                    detail: broke.message().to_owned(),
                }),
            ),
        ];
        for (status, effect, want) in table {
            assert_eq!(judge(status, effect), want, "{status:?} {effect:?}");
        }
    }

    const NO_PAUSE: Duration = Duration::ZERO;

    fn follower(leader: &str) -> Said {
        Said::Follower {
            leader: leader.into(),
            message: "follower".into(),
        }
    }

    fn unreachable() -> Said {
        Said::Unreachable {
            detail: "refused".into(),
        }
    }

    #[test]
    fn a_route_follows_a_hint_out_of_turn() {
        let c = coords("https://c1:1,https://c2:1,https://c3:1");
        let mut r = Route::new(&c, None, Backoff::default());
        assert_eq!(r.next(NO_PAUSE), Step::Try("https://c1:1".into()));
        r.failed("https://c1:1", follower("https://c3:1"));
        assert_eq!(r.next(NO_PAUSE), Step::Try("https://c3:1".into()));
        r.failed("https://c3:1", unreachable());
        assert_eq!(r.next(NO_PAUSE), Step::Try("https://c2:1".into()));
    }

    #[test]
    fn a_route_starts_at_the_last_leader_and_refuses_a_bad_hint() {
        let c = coords("https://c1:1,https://c2:1");
        let mut r = Route::new(&c, Some("https://c9:1"), Backoff::default());
        assert_eq!(r.next(NO_PAUSE), Step::Try("https://c9:1".into()));
        r.failed("https://c9:1", follower("http://127.0.0.2:1"));
        assert_eq!(r.next(NO_PAUSE), Step::Try("https://c1:1".into()));
        r.failed("https://c1:1", unreachable());
        assert_eq!(r.next(NO_PAUSE), Step::Try("https://c2:1".into()));
        r.failed("https://c2:1", unreachable());
        let budget = Backoff::default().budget;
        assert_eq!(r.next(budget), Step::GiveUp);
        let tried = r.tried();
        assert!(matches!(tried.0[0].1, Said::BadHint { .. }), "{tried}");
        assert!(
            tried
                .to_string()
                .contains("not followed because its scheme is http,"),
            "{tried}"
        );
    }

    #[test]
    fn a_route_pauses_between_rounds_while_a_replica_answers() {
        let c = coords("https://c1:1,https://c2:1");
        let backoff = Backoff {
            first: Duration::from_millis(100),
            max_step: Duration::from_millis(300),
            budget: Duration::from_millis(1000),
        };
        let mut r = Route::new(&c, None, backoff);
        let mut elapsed = Duration::ZERO;
        let mut steps = Vec::new();
        loop {
            match r.next(elapsed) {
                Step::Try(addr) if addr == "https://c1:1" => r.failed(&addr, unreachable()),
                Step::Try(addr) => r.failed(
                    &addr,
                    Said::Unavailable {
                        message: "electing".into(),
                    },
                ),
                Step::Wait(d) => {
                    elapsed += d;
                    steps.push(d.as_millis());
                }
                Step::GiveUp => break,
            }
        }
        assert_eq!(
            steps,
            [100, 200, 300, 300, 100],
            "doubling, capped, to the budget"
        );
        assert_eq!(elapsed, backoff.budget);

        // Nobody answers: no pause, give up after one round.
        let mut r = Route::new(&c, None, backoff);
        assert!(matches!(r.next(NO_PAUSE), Step::Try(_)));
        r.failed("https://c1:1", unreachable());
        assert!(matches!(r.next(NO_PAUSE), Step::Try(_)));
        r.failed("https://c2:1", unreachable());
        assert_eq!(r.next(NO_PAUSE), Step::GiveUp);
    }

    #[test]
    fn two_followers_naming_each_other_do_not_loop_forever() {
        let c = coords("https://c1:1,https://c2:1");
        let mut r = Route::new(&c, None, Backoff::default());
        let mut tries = 0;
        while let Step::Try(addr) = r.next(NO_PAUSE) {
            tries += 1;
            let other = if addr.contains("c1") {
                "https://c2:1"
            } else {
                "https://c1:1"
            };
            r.failed(&addr, follower(other));
            assert!(tries < 100, "a hint loop");
        }
        assert!(tries <= 2 * MAX_COORDINATORS + 2, "{tries}");
    }
}
