//! The agent's Prometheus metrics, served on the probe port at `/metrics`.
//!
//! This module owns the metric names, their help text and how each is read.
//! Nothing here is updated from the agent's loops: on every scrape a
//! `prometheus-client` collector reads the latest published observation, the
//! coordinator link's counters and the command journal, so a value can never
//! be staler than what `/readyz` and the coordinator see. It changes nothing.
//!
//! Every series carries the label `member`. Names (prefix `baton_agent_`):
//! `member_lag`, `member_applied_revision`, `member_committed_revision`,
//! `member_role{role}`, `member_release{release}`, `member_reachable`,
//! `member_healthy`, `member_ready`, `coordinator_connected`,
//! `coordinator_sessions_total`, `reports_sent_total`,
//! `commands_total{action,result}`, `commands_fenced_total`.

use std::collections::BTreeMap;
use std::sync::Arc;

use baton_domain::{Health, MemberId, Role};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::executor::{Executor, JournalEntry};
use crate::link::LinkStats;
use crate::watcher::Observation;

/// The `Content-Type` of [`AgentMetrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every role a member can be seen in, for the one-series-per-role gauge.
const ROLES: [Role; 5] = [
    Role::Leader,
    Role::Follower,
    Role::Candidate,
    Role::Learner,
    Role::Unknown,
];

/// Why the metrics could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("member {member}: cannot encode /metrics: {source}")]
    Encode {
        member: MemberId,
        source: std::fmt::Error,
    },
}

/// The agent's metrics registry.
#[derive(Debug)]
pub struct AgentMetrics {
    member: MemberId,
    registry: Registry,
}

/// What the collector reads on each scrape.
#[derive(Debug)]
pub struct Sources {
    pub member: MemberId,
    /// The watcher's latest observation, read on each scrape.
    pub obs: watch::Receiver<Option<Observation>>,
    /// The coordinator link's counters, read on each scrape.
    pub link: watch::Receiver<LinkStats>,
    pub executor: Arc<Executor>,
    pub tolerable_lag: u64,
}

impl AgentMetrics {
    pub fn new(sources: Sources) -> Self {
        let member = sources.member.clone();
        let mut registry = Registry::with_prefix("baton_agent");
        registry.register_collector(Box::new(sources));
        AgentMetrics { member, registry }
    }

    /// The OpenMetrics text for one scrape.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry).map_err(|source| {
            MetricsError::Encode {
                member: self.member.clone(),
                source,
            }
        })?;
        Ok(text)
    }
}

/// Finished commands in the journal, by action and result. A command
/// still running (or cut off by an agent crash) is not counted yet.
fn command_counts(entries: &[JournalEntry]) -> BTreeMap<(&'static str, &'static str), u64> {
    let mut counts = BTreeMap::new();
    for e in entries {
        let result = match &e.result {
            Some(Ok(_)) => "ok",
            Some(Err(_)) => "failed",
            None => continue,
        };
        *counts.entry((e.action.kind(), result)).or_insert(0) += 1;
    }
    counts
}

fn flag(b: bool) -> i64 {
    i64::from(b)
}

fn revision(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// One gauge family: `series` are (extra labels, value).
fn gauges<const N: usize>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[([(&str, &str); N], i64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

/// One counter family (the text gets the `_total` suffix).
fn counters<const N: usize>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[([(&str, &str); N], u64)],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(*value).encode(family.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let obs = self.obs.borrow().clone();
        let link = self.link.borrow().clone();
        let entries = self.executor.entries();
        let m = self.member.as_str();
        let one = |v: i64| vec![([("member", m)], v)];
        let state = obs.as_ref().map(|o| &o.state);

        let lag = state.map(crate::probes::readiness::lag);
        gauges(
            &mut encoder,
            "member_lag",
            "Revisions the member has committed but not yet applied, as of the agent's last read (what /readyz compares to tolerable_lag).",
            &lag.map(|l| one(revision(l))).unwrap_or_default(),
        )?;
        gauges(
            &mut encoder,
            "member_applied_revision",
            "The last revision the member has applied, as of the agent's last read.",
            &state
                .map(|s| one(revision(s.applied_revision)))
                .unwrap_or_default(),
        )?;
        gauges(
            &mut encoder,
            "member_committed_revision",
            "The last revision the member knows to be committed, as of the agent's last read.",
            &state
                .map(|s| one(revision(s.committed_revision)))
                .unwrap_or_default(),
        )?;
        let role_names: Vec<String> = ROLES.iter().map(Role::to_string).collect();
        let roles: Vec<([(&str, &str); 2], i64)> = match state {
            None => Vec::new(),
            Some(s) => ROLES
                .iter()
                .zip(&role_names)
                .map(|(r, name)| ([("member", m), ("role", name.as_str())], flag(s.role == *r)))
                .collect(),
        };
        gauges(
            &mut encoder,
            "member_role",
            "1 for the role the member is in (leader, follower, candidate, learner, unknown), 0 for the others.",
            &roles,
        )?;
        let release: Vec<([(&str, &str); 2], i64)> = match state {
            Some(s) if !s.release.is_empty() => {
                vec![([("member", m), ("release", s.release.as_str())], 1)]
            }
            _ => Vec::new(),
        };
        gauges(
            &mut encoder,
            "member_release",
            "Always 1; the release label is the release the member says it runs.",
            &release,
        )?;
        gauges(
            &mut encoder,
            "member_reachable",
            "1 while the agent can read its member, 0 otherwise (/healthz).",
            &one(flag(obs.as_ref().is_some_and(|o| o.reachable))),
        )?;
        gauges(
            &mut encoder,
            "member_healthy",
            "1 while the member answers and serves (knows a leader), 0 otherwise.",
            &one(flag(state.is_some_and(|s| s.health == Health::Healthy))),
        )?;
        let ready =
            crate::probes::readiness::readyz(&self.member, obs.as_ref(), self.tolerable_lag)
                .is_ok();
        gauges(
            &mut encoder,
            "member_ready",
            "1 while /readyz passes: the member serves and its lag is within tolerable_lag.",
            &one(flag(ready)),
        )?;
        gauges(
            &mut encoder,
            "coordinator_connected",
            "1 while the agent has a live stream to any coordinator replica, 0 otherwise.",
            &one(flag(link.connected)),
        )?;
        counters(
            &mut encoder,
            "coordinator_sessions",
            "Streams to the coordinator opened since the agent started.",
            &[([("member", m)], link.sessions)],
        )?;
        counters(
            &mut encoder,
            "reports_sent",
            "Reports sent to the coordinator since the agent started.",
            &[([("member", m)], link.reports_sent)],
        )?;
        let counts = command_counts(&entries);
        let commands: Vec<([(&str, &str); 3], u64)> = counts
            .iter()
            .map(|((action, result), n)| {
                ([("member", m), ("action", action), ("result", result)], *n)
            })
            .collect();
        counters(
            &mut encoder,
            "commands",
            "Coordinator commands this member's journal holds as finished, by action and result (ok or failed); a repeated id is not counted again.",
            &commands,
        )?;
        counters(
            &mut encoder,
            "commands_fenced",
            "Coordinator commands refused since the agent started because they came from a deposed coordinator leader (a term older than one this member already took commands from, in the same journal); nothing ran for them.",
            &[([("member", m)], self.executor.fenced_total())],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use baton_domain::{Action, AgentCommand, CommandId};

    use super::*;
    use crate::adapter::MemberState;
    use crate::adapter::fake::FakeAdapter;

    fn observation(applied: u64, committed: u64) -> Observation {
        let mut state = MemberState::unreachable(String::new());
        state.role = Role::Follower;
        state.health = Health::Healthy;
        state.release = "v1.2".into();
        state.applied_revision = applied;
        state.committed_revision = committed;
        Observation {
            state,
            reachable: true,
            at: tokio::time::Instant::now(),
        }
    }

    /// The value of the series whose name and labels start the line.
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[tokio::test]
    async fn a_scrape_reads_the_member_the_link_and_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let target = Arc::new(FakeAdapter::default());
        let member = MemberId::new("n3").unwrap();
        let executor = Arc::new(
            Executor::open(
                member.clone(),
                dir.path(),
                target,
                Box::new(crate::runner::External {
                    member: member.clone(),
                }),
                None,
            )
            .unwrap(),
        );
        let step = |id: &str| AgentCommand {
            id: CommandId(id.into()),
            action: Action::StepDown {
                to: MemberId::new("n1").unwrap(),
            },
            stop_timeout_ms: None,
            even_if_leader: false,
            fence: None,
        };
        executor.run(step("c-1")).await;
        executor.run(step("c-1")).await; // a repeat: not counted twice
        executor
            .run(AgentCommand {
                id: CommandId("c-2".into()),
                action: Action::Stop,
                stop_timeout_ms: None,
                even_if_leader: false,
                fence: None,
            })
            .await; // external mode: fails
        let fenced = |id: &str, term| AgentCommand {
            fence: Some(baton_domain::Fence {
                journal: "j-1".into(),
                term,
            }),
            ..step(id)
        };
        executor.run(fenced("c-3", 4)).await;
        executor.run(fenced("c-4", 3)).await; // a deposed leader: refused
        executor.run(fenced("c-3", 2)).await; // refused too, known id or not

        let (obs_tx, obs) = watch::channel(None);
        let (link_tx, link) = watch::channel(LinkStats::default());
        let metrics = AgentMetrics::new(Sources {
            member,
            obs,
            link,
            executor,
            tolerable_lag: 10,
        });

        let before = metrics.encode().unwrap();
        assert_eq!(
            value(&before, "baton_agent_member_reachable{member=\"n3\"}"),
            Some(0.0)
        );
        assert_eq!(
            value(&before, "baton_agent_member_lag{member=\"n3\"}"),
            None
        );

        obs_tx.send_replace(Some(observation(100, 512)));
        link_tx.send_modify(|l| {
            l.connected = true;
            l.sessions = 2;
            l.reports_sent = 7;
        });
        let text = metrics.encode().unwrap();
        let expect = [
            ("baton_agent_member_lag{member=\"n3\"}", 412.0),
            ("baton_agent_member_applied_revision{member=\"n3\"}", 100.0),
            (
                "baton_agent_member_committed_revision{member=\"n3\"}",
                512.0,
            ),
            (
                "baton_agent_member_role{member=\"n3\",role=\"follower\"}",
                1.0,
            ),
            (
                "baton_agent_member_role{member=\"n3\",role=\"leader\"}",
                0.0,
            ),
            (
                "baton_agent_member_release{member=\"n3\",release=\"v1.2\"}",
                1.0,
            ),
            ("baton_agent_member_reachable{member=\"n3\"}", 1.0),
            ("baton_agent_member_healthy{member=\"n3\"}", 1.0),
            ("baton_agent_member_ready{member=\"n3\"}", 0.0),
            ("baton_agent_coordinator_connected{member=\"n3\"}", 1.0),
            ("baton_agent_coordinator_sessions_total{member=\"n3\"}", 2.0),
            ("baton_agent_reports_sent_total{member=\"n3\"}", 7.0),
            (
                "baton_agent_commands_total{member=\"n3\",action=\"step_down\",result=\"ok\"}",
                2.0,
            ),
            ("baton_agent_commands_fenced_total{member=\"n3\"}", 2.0),
            (
                "baton_agent_commands_total{member=\"n3\",action=\"stop\",result=\"failed\"}",
                1.0,
            ),
        ];
        for (series, want) in expect {
            assert_eq!(value(&text, series), Some(want), "{series} in\n{text}");
        }
        // Every family says what it is.
        for name in [
            "member_lag",
            "member_role",
            "member_release",
            "commands",
            "commands_fenced",
            "coordinator_connected",
        ] {
            assert!(
                text.contains(&format!("# HELP baton_agent_{name} ")),
                "{name}"
            );
            assert!(
                text.contains(&format!("# TYPE baton_agent_{name} ")),
                "{name}"
            );
        }
        assert!(text.ends_with("# EOF\n"));

        // Caught up: ready. A new release replaces the old series.
        let mut caught_up = observation(512, 512);
        caught_up.state.release = "v1.3".into();
        obs_tx.send_replace(Some(caught_up));
        let text = metrics.encode().unwrap();
        assert_eq!(
            value(&text, "baton_agent_member_ready{member=\"n3\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "baton_agent_member_lag{member=\"n3\"}"),
            Some(0.0)
        );
        assert!(!text.contains("release=\"v1.2\""), "{text}");
        assert!(text.contains("release=\"v1.3\""), "{text}");
    }
}
