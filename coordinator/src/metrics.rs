//! The coordinator's Prometheus metrics and the `/metrics` endpoint.
//!
//! This module owns one [`Metrics`] value (cheap to clone, shared by the
//! driver and the HTTP server) and its `prometheus-client` registry:
//! - fleet gauges (`baton_member_*`), computed at scrape time from the
//!   [`FleetView`] by a collector, so they are never stale and a member with
//!   no lag figure simply has no `baton_member_lag` series;
//! - rollout series the driver pushes through hooks: the phase of the latest
//!   rollout, step durations, commands sent and failed, stalls and firing
//!   alerts.
//!
//! It must not decide anything: it only reads the view and records what the
//! driver tells it. Label values are bounded (member ids, action and phase
//! kinds, alert names), never free text such as a pause reason.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use baton_domain::{Action, Health, MemberId};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::fleet::FleetView;

/// The content type of the exposition `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the step-duration buckets, seconds: a stage or a switch
/// takes milliseconds, a start with its health wait can take minutes.
const STEP_BUCKETS: [f64; 14] = [
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// Every value the `action` label takes.
pub const ACTION_LABELS: [&str; 5] = ["stage", "stop", "switch", "start", "step_down"];

/// Why the metrics endpoint could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "cannot bind `metrics_listen` {addr}: {source}; pick a free address or remove the key to turn metrics off"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "the metrics endpoint on {addr} stopped: {source}; the coordinator keeps running without it"
    )]
    Serve {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot encode the metrics registry: {0}")]
    Encode(std::fmt::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MemberLabels {
    cluster: String,
    member: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    cluster: String,
    member: String,
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReleaseLabels {
    cluster: String,
    member: String,
    release: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RolloutLabels {
    cluster: String,
    rollout: String,
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

/// The reasons an agent stream is refused before its session opens, as
/// the `reason` label of `baton_agent_streams_refused_total`.
pub const STREAM_REFUSALS: [&str; 5] = ["crowded", "silent", "not_yours", "invalid", "unknown"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    alertname: String,
}

type StepHistogram = Family<ActionLabels, Histogram, fn() -> Histogram>;

fn step_histogram() -> Histogram {
    Histogram::new(STEP_BUCKETS)
}

/// The coordinator's metrics. Clones share one registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    cluster: String,
    registry: Registry,
    rollout_phase: Family<RolloutLabels, Gauge>,
    /// The labels set to 1 in `rollout_phase`, so a change removes them.
    current_phase: Mutex<Option<RolloutLabels>>,
    step_duration: StepHistogram,
    stalls: Family<MemberLabels, Counter>,
    commands_sent: Family<ActionLabels, Counter>,
    commands_failed: Family<ActionLabels, Counter>,
    alerts_firing: Family<AlertLabels, Gauge>,
    handshakes: Gauge,
    streams_refused: Family<RefusalLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("cluster", &self.inner.cluster)
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Metrics for the fleet in `fleet`; its gauges are read at every scrape.
    pub fn new(fleet: Arc<Mutex<FleetView>>) -> Metrics {
        let (cluster, members) = {
            let view = fleet.lock().unwrap_or_else(|p| p.into_inner());
            let members: Vec<MemberId> = view
                .status(Instant::now())
                .members
                .into_iter()
                .map(|row| row.member)
                .collect();
            (view.cluster().to_owned(), members)
        };
        let mut registry = Registry::default();
        let rollout_phase = Family::<RolloutLabels, Gauge>::default();
        registry.register(
            "baton_rollout_phase",
            "1 for the current phase of the latest rollout (running, paused, aborting, completed, closed)",
            rollout_phase.clone(),
        );
        let step_duration = StepHistogram::new_with_constructor(step_histogram);
        registry.register_with_unit(
            "baton_rollout_step_duration",
            "Time from a command's issue to its result, per action",
            Unit::Seconds,
            step_duration.clone(),
        );
        let stalls = Family::<MemberLabels, Counter>::default();
        registry.register(
            "baton_stalls",
            "Catch-up stalls detected (lag not shrinking for stall_after), per member",
            stalls.clone(),
        );
        let commands_sent = Family::<ActionLabels, Counter>::default();
        registry.register(
            "baton_commands_sent",
            "Commands sent to agents, per action (a resend after a reconnect counts again)",
            commands_sent.clone(),
        );
        let commands_failed = Family::<ActionLabels, Counter>::default();
        registry.register(
            "baton_commands_failed",
            "Commands an agent answered with a failure, per action",
            commands_failed.clone(),
        );
        let alerts_firing = Family::<AlertLabels, Gauge>::default();
        registry.register(
            "baton_alerts_firing",
            "Alerts the coordinator currently has firing, per alert name",
            alerts_firing.clone(),
        );
        let handshakes = Gauge::default();
        registry.register(
            "baton_agent_streams_in_handshake",
            "Agent streams that have connected but not yet sent their Hello and first Report",
            handshakes.clone(),
        );
        let streams_refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "baton_agent_streams_refused",
            "Agent streams refused before a session opened, per reason (crowded: too many in handshake; silent: no Hello in time; not_yours: the certificate names another member; invalid: a bad Hello or Report; unknown: not a member of this cluster)",
            streams_refused.clone(),
        );
        for reason in STREAM_REFUSALS {
            streams_refused
                .get_or_create(&RefusalLabels { reason })
                .inc_by(0);
        }
        // Start every counter at 0, so rate() and increase() see the first event.
        for action in ACTION_LABELS {
            let labels = ActionLabels {
                action: action.to_owned(),
            };
            commands_sent.get_or_create(&labels).inc_by(0);
            commands_failed.get_or_create(&labels).inc_by(0);
        }
        for member in &members {
            stalls
                .get_or_create(&MemberLabels {
                    cluster: cluster.clone(),
                    member: member.to_string(),
                })
                .inc_by(0);
        }
        registry.register_collector(Box::new(FleetCollector { fleet }));
        Metrics {
            inner: Arc::new(Inner {
                cluster,
                registry,
                rollout_phase,
                current_phase: Mutex::new(None),
                step_duration,
                stalls,
                commands_sent,
                commands_failed,
                alerts_firing,
                handshakes,
                streams_refused,
            }),
        }
    }

    /// The gauge of agent streams still in their handshake (the agent link
    /// moves it).
    pub fn handshakes(&self) -> Gauge {
        self.inner.handshakes.clone()
    }

    /// Counts an agent stream refused before its session opened; `reason`
    /// is one of [`STREAM_REFUSALS`].
    pub fn stream_refused(&self, reason: &'static str) {
        debug_assert!(STREAM_REFUSALS.contains(&reason), "{reason}");
        self.inner
            .streams_refused
            .get_or_create(&RefusalLabels { reason })
            .inc();
    }

    /// Marks `phase` (a [`baton_domain::Phase::kind`]) as the current phase of
    /// `rollout`, the latest rollout; the previous series is removed.
    pub fn set_rollout_phase(&self, rollout: &str, phase: &str) {
        let labels = RolloutLabels {
            cluster: self.inner.cluster.clone(),
            rollout: rollout.to_owned(),
            phase: phase.to_owned(),
        };
        let mut current = self
            .inner
            .current_phase
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if current.as_ref() == Some(&labels) {
            return;
        }
        self.inner.rollout_phase.get_or_create(&labels).set(1);
        if let Some(old) = current.replace(labels) {
            self.inner.rollout_phase.remove(&old);
        }
    }

    /// Records how long one step (a command, from issue to result) took.
    pub fn observe_step(&self, action: &Action, took: Duration) {
        self.inner
            .step_duration
            .get_or_create(&ActionLabels {
                action: action.kind().to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a command sent to an agent.
    pub fn command_sent(&self, action: &Action) {
        self.inner
            .commands_sent
            .get_or_create(&ActionLabels {
                action: action.kind().to_owned(),
            })
            .inc();
    }

    /// Counts a command its agent answered with a failure.
    pub fn command_failed(&self, action: &Action) {
        self.inner
            .commands_failed
            .get_or_create(&ActionLabels {
                action: action.kind().to_owned(),
            })
            .inc();
    }

    /// Counts a catch-up stall of `member`.
    pub fn stall(&self, member: &MemberId) {
        self.inner
            .stalls
            .get_or_create(&MemberLabels {
                cluster: self.inner.cluster.clone(),
                member: member.to_string(),
            })
            .inc();
    }

    /// Sets how many alerts named `alertname` are firing now (0 when none).
    pub fn set_alerts_firing(&self, alertname: &str, firing: u64) {
        self.inner
            .alerts_firing
            .get_or_create(&AlertLabels {
                alertname: alertname.to_owned(),
            })
            .set(i64::try_from(firing).unwrap_or(i64::MAX));
    }

    /// The exposition, as a scrape would receive it.
    pub fn encode(&self) -> Result<String, MetricsError> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
            .map_err(MetricsError::Encode)?;
        Ok(out)
    }
}

/// Computes the `baton_member_*` gauges from the fleet view at scrape time.
#[derive(Debug)]
struct FleetCollector {
    fleet: Arc<Mutex<FleetView>>,
}

/// One row of the member gauges, copied out of the view.
struct MemberSample {
    labels: MemberLabels,
    lag: Option<u64>,
    /// Lag change per second over the watchdog's trend window.
    trend: Option<f64>,
    applied: Option<u64>,
    role: Option<String>,
    release: Option<String>,
    healthy: Option<bool>,
    last_seen: Option<Duration>,
    connected: bool,
}

/// Writes one gauge family: a series for each member `series` gives one
/// (its labels and value), none for the others.
fn gauge_family<L, V>(
    encoder: &mut DescriptorEncoder,
    (name, help, unit): (&str, &str, Option<&Unit>),
    samples: &[MemberSample],
    series: impl Fn(&MemberSample) -> Option<(L, V)>,
) -> Result<(), std::fmt::Error>
where
    L: EncodeLabelSet,
    V: EncodeGaugeValue,
{
    let mut m = encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for s in samples {
        if let Some((labels, value)) = series(s) {
            m.encode_family(&labels)?.encode_gauge(&value)?;
        }
    }
    Ok(())
}

impl Collector for FleetCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Copy what is needed and release the lock before writing.
        let samples: Vec<MemberSample> = {
            let view = self.fleet.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let status = view.status(now);
            let (planner, at) = view.planner_view(now);
            status
                .members
                .into_iter()
                .map(|row| MemberSample {
                    labels: MemberLabels {
                        cluster: status.cluster.clone(),
                        member: row.member.to_string(),
                    },
                    lag: row.lag,
                    trend: baton_planner::watchdog::lag_trend(&planner, &row.member, at),
                    applied: row.report.as_ref().map(|r| r.state.applied_revision),
                    role: row.report.as_ref().map(|r| r.state.role.to_string()),
                    release: row
                        .report
                        .as_ref()
                        .map(|r| r.state.release.clone())
                        .filter(|r| !r.is_empty()),
                    healthy: row
                        .report
                        .as_ref()
                        .map(|r| r.state.health == Health::Healthy),
                    last_seen: row.last_seen_ms_ago.map(Duration::from_millis),
                    connected: row.connected,
                })
                .collect()
        };

        let e = &mut encoder;
        let own = |s: &MemberSample| s.labels.clone();
        gauge_family(
            e,
            (
                "baton_member_lag",
                "Leader's committed revision minus the member's applied revision; absent when unknown (no fresh leader, member stale or down)",
                None,
            ),
            &samples,
            |s| s.lag.map(|v| (own(s), v)),
        )?;
        gauge_family(
            e,
            (
                "baton_member_lag_trend",
                "Change of the member's lag per second over the last 10 s (least squares); positive means falling behind; absent with fewer than two readings",
                None,
            ),
            &samples,
            |s| s.trend.map(|v| (own(s), v)),
        )?;
        gauge_family(
            e,
            (
                "baton_member_applied_revision",
                "The revision the member has applied, as of its latest report",
                None,
            ),
            &samples,
            |s| s.applied.map(|v| (own(s), v)),
        )?;
        gauge_family(
            e,
            (
                "baton_member_role",
                "1 for the role the member reports (leader, follower, candidate, learner, unknown)",
                None,
            ),
            &samples,
            |s| {
                s.role.as_ref().map(|role| {
                    let labels = RoleLabels {
                        cluster: s.labels.cluster.clone(),
                        member: s.labels.member.clone(),
                        role: role.clone(),
                    };
                    (labels, 1i64)
                })
            },
        )?;
        gauge_family(
            e,
            (
                "baton_member_release_info",
                "1 for the release the member reports running",
                None,
            ),
            &samples,
            |s| {
                s.release.as_ref().map(|release| {
                    let labels = ReleaseLabels {
                        cluster: s.labels.cluster.clone(),
                        member: s.labels.member.clone(),
                        release: release.clone(),
                    };
                    (labels, 1i64)
                })
            },
        )?;
        gauge_family(
            e,
            (
                "baton_member_healthy",
                "1 when the member reports healthy, 0 when degraded or down",
                None,
            ),
            &samples,
            |s| s.healthy.map(|v| (own(s), i64::from(v))),
        )?;
        gauge_family(
            e,
            (
                "baton_member_last_seen",
                "Seconds since the member's agent last sent a valid report; absent when never seen",
                Some(&Unit::Seconds),
            ),
            &samples,
            |s| s.last_seen.map(|age| (own(s), age.as_secs_f64())),
        )?;
        gauge_family(
            e,
            (
                "baton_member_agent_connected",
                "1 while the member's agent has its report stream open, else 0",
                None,
            ),
            &samples,
            |s| Some((own(s), i64::from(s.connected))),
        )?;
        Ok(())
    }
}

/// Binds the metrics endpoint (the `metrics_listen` key).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

async fn scrape(State(metrics): State<Metrics>) -> Response {
    match metrics.encode() {
        Ok(body) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    metrics: Metrics,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), MetricsError> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let app = axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .with_state(metrics);
    baton_net::serve::serve(listener, app, "metrics", shutdown)
        .await
        .map_err(|source| MetricsError::Serve { addr, source })
}

#[cfg(test)]
mod tests {
    use baton_domain::{Hello, Phase, ReleaseRef, Report, Role, fixtures};

    use super::*;

    fn id(s: &str) -> MemberId {
        MemberId::new(s).unwrap()
    }

    fn report(m: &str, role: Role, committed: u64, applied: u64) -> Report {
        fixtures::report(m, role, Some("n1"), committed, applied)
    }

    fn hello(m: &str) -> Hello {
        Hello {
            member: id(m),
            cluster: "demo".into(),
            agent_version: "t".into(),
            adapter_kind: "fake".into(),
            version_rule: None,
            stage_checks: Vec::new(),
        }
    }

    fn fleet() -> Arc<Mutex<FleetView>> {
        Arc::new(Mutex::new(FleetView::new(
            "demo".into(),
            vec![id("n1"), id("n2"), id("n3")],
            Duration::from_secs(1),
        )))
    }

    /// The sample lines (name{labels} value) of an exposition, sorted.
    fn samples(text: &str) -> Vec<String> {
        let mut v: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    }

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn member_gauges_follow_the_fleet_view() {
        let fleet = fleet();
        let metrics = Metrics::new(fleet.clone());
        let t0 = Instant::now();
        {
            let mut v = fleet.lock().unwrap();
            v.open_session(&hello("n1"), report("n1", Role::Leader, 100, 100), t0)
                .unwrap();
            v.open_session(&hello("n2"), report("n2", Role::Follower, 98, 90), t0)
                .unwrap();
        }
        let text = metrics.encode().unwrap();
        assert!(text.ends_with("# EOF\n"), "{text}");
        let lag = |m: &str| {
            value(
                &text,
                &format!("baton_member_lag{{cluster=\"demo\",member=\"{m}\"}}"),
            )
        };
        assert_eq!(lag("n1"), Some(0.0));
        assert_eq!(lag("n2"), Some(10.0));
        assert_eq!(lag("n3"), None, "n3 never reported: no lag series\n{text}");
        assert_eq!(
            value(
                &text,
                "baton_member_applied_revision{cluster=\"demo\",member=\"n2\"}"
            ),
            Some(90.0)
        );
        assert_eq!(
            value(
                &text,
                "baton_member_role{cluster=\"demo\",member=\"n1\",role=\"leader\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                "baton_member_role{cluster=\"demo\",member=\"n2\",role=\"follower\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                "baton_member_release_info{cluster=\"demo\",member=\"n2\",release=\"v1\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &text,
                "baton_member_healthy{cluster=\"demo\",member=\"n1\"}"
            ),
            Some(1.0)
        );
        let connected = |m: &str| {
            value(
                &text,
                &format!("baton_member_agent_connected{{cluster=\"demo\",member=\"{m}\"}}"),
            )
        };
        assert_eq!(
            (connected("n1"), connected("n2"), connected("n3")),
            (Some(1.0), Some(1.0), Some(0.0))
        );
        let seen = value(
            &text,
            "baton_member_last_seen_seconds{cluster=\"demo\",member=\"n1\"}",
        )
        .unwrap();
        assert!((0.0..5.0).contains(&seen), "{seen}");
        assert!(
            !text.contains("baton_member_last_seen_seconds{cluster=\"demo\",member=\"n3\"}"),
            "never seen: no age\n{text}"
        );
        let rows = samples(&text);
        assert_eq!(
            rows.iter()
                .filter(|l| l.starts_with("baton_member_role{"))
                .count(),
            2,
            "one role series per reporting member: {rows:#?}"
        );
    }

    #[test]
    fn a_down_member_loses_its_lag_and_is_unhealthy() {
        let fleet = fleet();
        let metrics = Metrics::new(fleet.clone());
        let t0 = Instant::now();
        {
            let mut v = fleet.lock().unwrap();
            v.open_session(&hello("n1"), report("n1", Role::Leader, 100, 100), t0)
                .unwrap();
            let mut down = report("n2", Role::Unknown, 0, 0);
            down.state.health = Health::Down;
            down.state.release = String::new();
            v.open_session(&hello("n2"), down, t0).unwrap();
        }
        let text = metrics.encode().unwrap();
        assert!(
            !text.contains("baton_member_lag{cluster=\"demo\",member=\"n2\"}"),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                "baton_member_healthy{cluster=\"demo\",member=\"n2\"}"
            ),
            Some(0.0)
        );
        assert!(
            !text.contains("baton_member_release_info{cluster=\"demo\",member=\"n2\""),
            "an unknown release has no info series\n{text}"
        );
    }

    #[test]
    fn the_rollout_phase_series_moves_with_the_phase() {
        let metrics = Metrics::new(fleet());
        let text = metrics.encode().unwrap();
        assert!(
            !text.contains("baton_rollout_phase{"),
            "no rollout yet\n{text}"
        );
        metrics.set_rollout_phase("r1-v2", Phase::Running.kind());
        metrics.set_rollout_phase(
            "r1-v2",
            Phase::Paused {
                reason: "n2 stalled at lag 40".into(),
            }
            .kind(),
        );
        let text = metrics.encode().unwrap();
        let phases: Vec<String> = samples(&text)
            .into_iter()
            .filter(|l| l.starts_with("baton_rollout_phase{"))
            .collect();
        assert_eq!(
            phases,
            vec!["baton_rollout_phase{cluster=\"demo\",rollout=\"r1-v2\",phase=\"paused\"} 1"]
        );
        metrics.set_rollout_phase("r2-rollback-to-v1", Phase::Running.kind());
        let text = metrics.encode().unwrap();
        assert!(!text.contains("rollout=\"r1-v2\""), "{text}");
        assert!(text.contains(
            "baton_rollout_phase{cluster=\"demo\",rollout=\"r2-rollback-to-v1\",phase=\"running\"} 1"
        ));
    }

    #[test]
    fn commands_steps_stalls_and_alerts_are_counted() {
        let metrics = Metrics::new(fleet());
        // Every counter exists at 0 before anything happens.
        let text = metrics.encode().unwrap();
        for action in ACTION_LABELS {
            assert_eq!(
                value(
                    &text,
                    &format!("baton_commands_sent_total{{action=\"{action}\"}}")
                ),
                Some(0.0),
                "{text}"
            );
        }
        assert_eq!(
            value(&text, "baton_stalls_total{cluster=\"demo\",member=\"n3\"}"),
            Some(0.0)
        );

        let stage = Action::Stage {
            release: ReleaseRef {
                name: "samplekv".into(),
                version: "v2".into(),
                format_version: 1,
                sha256: "00".into(),
            },
        };
        metrics.command_sent(&stage);
        metrics.command_sent(&Action::Stop);
        metrics.command_sent(&Action::Stop);
        metrics.command_failed(&Action::Stop);
        metrics.observe_step(&stage, Duration::from_millis(30));
        metrics.observe_step(&Action::Stop, Duration::from_secs(7));
        metrics.stall(&id("n2"));
        metrics.set_alerts_firing("BatonCatchUpStalled", 1);
        let text = metrics.encode().unwrap();
        let v = |s: &str| value(&text, s);
        assert_eq!(v("baton_commands_sent_total{action=\"stage\"}"), Some(1.0));
        assert_eq!(v("baton_commands_sent_total{action=\"stop\"}"), Some(2.0));
        assert_eq!(v("baton_commands_failed_total{action=\"stop\"}"), Some(1.0));
        assert_eq!(
            v("baton_commands_failed_total{action=\"stage\"}"),
            Some(0.0)
        );
        assert_eq!(
            v("baton_stalls_total{cluster=\"demo\",member=\"n2\"}"),
            Some(1.0)
        );
        assert_eq!(
            v("baton_alerts_firing{alertname=\"BatonCatchUpStalled\"}"),
            Some(1.0)
        );
        // 30 ms falls in the 0.05 bucket, not the 0.01 one; 7 s in 10, not 5.
        let bucket = |a: &str, le: &str| {
            v(&format!(
                "baton_rollout_step_duration_seconds_bucket{{le=\"{le}\",action=\"{a}\"}}"
            ))
        };
        assert_eq!(bucket("stage", "0.01"), Some(0.0), "{text}");
        assert_eq!(bucket("stage", "0.05"), Some(1.0), "{text}");
        assert_eq!(bucket("stop", "5.0"), Some(0.0), "{text}");
        assert_eq!(bucket("stop", "10.0"), Some(1.0), "{text}");
        assert_eq!(
            v("baton_rollout_step_duration_seconds_count{action=\"stop\"}"),
            Some(1.0)
        );
        assert!(text.contains("# TYPE baton_rollout_step_duration_seconds histogram"));
        assert!(text.contains("# TYPE baton_stalls counter"));
    }

    #[test]
    fn labels_are_kinds_not_free_text() {
        assert_eq!(Action::StepDown { to: id("n3") }.kind(), "step_down");
        assert_eq!(
            Action::Switch {
                version: "v2".into()
            }
            .kind(),
            "switch"
        );
        assert_eq!(
            Phase::Closed {
                reason: "rolled back by r2".into()
            }
            .kind(),
            "closed"
        );
    }

    #[tokio::test]
    async fn the_endpoint_serves_the_exposition_and_a_taken_port_names_the_key() {
        let metrics = Metrics::new(fleet());
        metrics.command_sent(&Action::Start);
        let listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let err = bind(addr).await.unwrap_err().to_string();
        assert!(
            err.contains("`metrics_listen`") && err.contains(&addr.to_string()),
            "{err}"
        );

        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(metrics, listener, shutdown.clone()));
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        tokio::time::timeout(
            Duration::from_secs(10),
            stream.read_to_string(&mut response),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(
            response
                .to_ascii_lowercase()
                .contains(&format!("content-type: {CONTENT_TYPE}")),
            "{response}"
        );
        assert!(response.contains("baton_commands_sent_total{action=\"start\"} 1"));
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

#[cfg(test)]
mod promtool_tests {
    use std::io::Write;
    use std::process::{Command, Stdio};

    use baton_domain::{Hello, Role, fixtures};

    use super::*;

    /// `promtool check metrics` (CI installs it) accepts a populated
    /// exposition: every family, with samples.
    #[test]
    fn promtool_accepts_the_exposition() {
        let promtool = std::path::Path::new("/usr/bin/promtool");
        if !promtool.exists() {
            eprintln!("skipped: /usr/bin/promtool is not installed (.ci/run installs it)");
            return;
        }
        let n1 = MemberId::new("n1").unwrap();
        let fleet = Arc::new(Mutex::new(FleetView::new(
            "demo".into(),
            vec![n1.clone()],
            Duration::from_secs(1),
        )));
        fleet
            .lock()
            .unwrap()
            .open_session(
                &Hello {
                    member: n1.clone(),
                    cluster: "demo".into(),
                    agent_version: "t".into(),
                    adapter_kind: "fake".into(),
                    version_rule: None,
                    stage_checks: Vec::new(),
                },
                fixtures::report("n1", Role::Leader, Some("n1"), 5, 5),
                Instant::now(),
            )
            .unwrap();
        let metrics = Metrics::new(fleet);
        metrics.set_rollout_phase("r1-v2", "running");
        metrics.command_sent(&Action::Start);
        metrics.observe_step(&Action::Start, Duration::from_secs(2));
        metrics.stall(&n1);
        metrics.set_alerts_firing("BatonAgentDown", 0);
        let text = metrics.encode().unwrap();
        let mut child = Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let problems = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        // promtool 2.42 lints with the classic text parser, which reads an
        // OpenMetrics counter's `foo_total` samples as a family apart from
        // `# TYPE foo counter` and says it has no help. Exit 3 (lint) with
        // only that complaint, about declared counters, is accepted;
        // anything else (a parse error is exit 1) fails.
        let only_counter_help = problems.lines().all(|l| {
            l.strip_suffix("_total no help text")
                .is_some_and(|name| text.contains(&format!("# TYPE {name} counter\n")))
        });
        assert!(
            out.status.success() || (out.status.code() == Some(3) && only_counter_help),
            "promtool check metrics failed ({:?}):\n{problems}\n--- exposition ---\n{text}",
            out.status.code()
        );
    }
}
