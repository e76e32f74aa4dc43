//! On-node probes, all on the agent's one probe port.
//!
//! - `/healthz` answers 200 while the agent runs and can reach its member.
//! - `/readyz` answers 200 while the member serves (healthy, knows a leader)
//!   and its own lag (`committed - applied`) is at most `tolerable_lag`.
//! - gRPC health (`grpc.health.v1.Health`, over h2c on the same listener):
//!   services `""` and `baton.agent` are SERVING exactly while `/readyz`
//!   would answer 200, updated as observations change.
//! - `/metrics` (see [`crate::metrics`]) and `/commands` (the journal).
//!
//! Each non-200 body is one line naming the member, the reason and the
//! numbers. The verdicts are pure functions of the latest observation and
//! live in [`readiness`]; this module serves them, only reads what the
//! watcher published and changes nothing. [`client`] is what
//! `baton-agent probe` runs.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use baton_domain::MemberId;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub mod client;
pub mod readiness;

pub use readiness::{ProbeError, healthz, lag, readyz};

use crate::executor::Executor;
use crate::metrics::AgentMetrics;
use crate::watcher::Observation;

/// The gRPC health service name that stands for this agent's member.
pub const GRPC_SERVICE: &str = "baton.agent";

/// gRPC health's word for a readiness verdict.
pub fn serving_status<T, E>(verdict: &Result<T, E>) -> ServingStatus {
    match verdict {
        Ok(_) => ServingStatus::Serving,
        Err(_) => ServingStatus::NotServing,
    }
}

fn answer(r: Result<String, ProbeError>) -> (StatusCode, String) {
    match r {
        Ok(line) => (StatusCode::OK, line + "\n"),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string() + "\n"),
    }
}

/// Everything the probe server reads.
#[derive(Clone, Debug)]
pub struct ProbeContext {
    pub member: MemberId,
    /// The watcher's latest observation, which every verdict is judged on.
    pub obs: watch::Receiver<Option<Observation>>,
    pub executor: Arc<Executor>,
    pub tolerable_lag: u64,
    pub metrics: Arc<AgentMetrics>,
}

async fn get_healthz(State(c): State<ProbeContext>) -> (StatusCode, String) {
    answer(healthz(&c.member, c.obs.borrow().as_ref()))
}

async fn get_readyz(State(c): State<ProbeContext>) -> (StatusCode, String) {
    answer(readyz(&c.member, c.obs.borrow().as_ref(), c.tolerable_lag))
}

async fn get_metrics(State(c): State<ProbeContext>) -> axum::response::Response {
    match c.metrics.encode() {
        Ok(body) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The route prefix a tonic service answers under.
fn grpc_route<S: NamedService>(_: &S) -> String {
    format!("/{}/{{*rest}}", S::NAME)
}

/// Keeps gRPC health in step with `/readyz` until `shutdown`.
async fn track_readiness(reporter: HealthReporter, ctx: ProbeContext, shutdown: CancellationToken) {
    let mut obs = ctx.obs.clone();
    let mut last = None;
    loop {
        let status = serving_status(&readyz(
            &ctx.member,
            obs.borrow_and_update().as_ref(),
            ctx.tolerable_lag,
        ));
        if last != Some(status) {
            for service in ["", GRPC_SERVICE] {
                reporter.set_service_status(service, status).await;
            }
            tracing::debug!(member = %ctx.member, ?status, "gRPC health changed");
            last = Some(status);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = obs.changed() => {
                if changed.is_err() {
                    // The watcher stopped: the agent is shutting down.
                    for service in ["", GRPC_SERVICE] {
                        reporter.set_service_status(service, ServingStatus::NotServing).await;
                    }
                    return;
                }
            }
        }
    }
}

/// Serves HTTP/1 probes and h2c gRPC health on one already-bound listener
/// until `shutdown`, within [`baton_net::serve`]'s limits.
pub async fn serve(
    listener: TcpListener,
    ctx: ProbeContext,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    // Not serving until the first observation says otherwise.
    for service in ["", GRPC_SERVICE] {
        reporter
            .set_service_status(service, ServingStatus::NotServing)
            .await;
    }
    let tracker = tokio::spawn(track_readiness(reporter, ctx.clone(), shutdown.clone()));
    let app = Router::new()
        .route("/healthz", get(get_healthz))
        .route("/readyz", get(get_readyz))
        .route("/metrics", get(get_metrics))
        // The command journal: each id with how many times it ran here.
        .route(
            "/commands",
            get(|State(c): State<ProbeContext>| async move { axum::Json(c.executor.entries()) }),
        )
        .route_service(&grpc_route(&health), health)
        .with_state(ctx);
    // Bounded: a header deadline, a connection lifetime and per-peer caps,
    // so a slowloris cannot starve the kubelet's or systemd's probes.
    let served = baton_net::serve::serve(listener, app, "probe port", shutdown).await;
    tracker.abort();
    served
}

/// The address a probe listener is bound to, for logs.
pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}/healthz")
}

#[cfg(test)]
mod tests {
    use baton_domain::{Health, Role};

    use super::*;
    use crate::adapter::MemberState;

    fn member() -> MemberId {
        MemberId::new("n2").unwrap()
    }

    fn observed(health: Health, applied: u64, committed: u64) -> Observation {
        let mut state = MemberState::unreachable(String::new());
        state.role = Role::Follower;
        state.health = health;
        state.health_detail = match health {
            Health::Healthy => String::new(),
            _ => "member knows no leader".into(),
        };
        state.applied_revision = applied;
        state.committed_revision = committed;
        Observation {
            state,
            reachable: true,
            at: tokio::time::Instant::now(),
        }
    }

    fn unreachable() -> Observation {
        Observation {
            state: MemberState::unreachable(
                "member at 127.0.0.1:7102 is unreachable: connection refused".into(),
            ),
            reachable: false,
            at: tokio::time::Instant::now(),
        }
    }

    #[test]
    fn readyz_verdicts() {
        let m = member();
        // (observation, tolerable_lag, expected line, passes)
        let cases: Vec<(Option<Observation>, u64, &str, bool)> = vec![
            (
                Some(observed(Health::Healthy, 100, 100)),
                10,
                "member n2: ready: serving as follower, lag 0 <= tolerable_lag 10 (applied 100, committed 100)",
                true,
            ),
            (
                Some(observed(Health::Healthy, 90, 100)),
                10,
                "member n2: ready: serving as follower, lag 10 <= tolerable_lag 10 (applied 90, committed 100)",
                true,
            ),
            (
                Some(observed(Health::Healthy, 100, 512)),
                10,
                "member n2: not ready: lag 412 > tolerable_lag 10 (applied 100, committed 512)",
                false,
            ),
            (
                Some(observed(Health::Healthy, 99, 100)),
                0,
                "member n2: not ready: lag 1 > tolerable_lag 0 (applied 99, committed 100)",
                false,
            ),
            (
                Some(observed(Health::Degraded, 100, 100)),
                10,
                "member n2: not ready: degraded: member knows no leader",
                false,
            ),
            (
                Some(unreachable()),
                10,
                "member n2: unreachable: member at 127.0.0.1:7102 is unreachable: connection refused; check that the member runs and listens at the agent's target.addr",
                false,
            ),
            (
                None,
                10,
                "member n2: not read yet: the agent has not polled it since it started; wait one poll_ms",
                false,
            ),
        ];
        for (obs, tolerable, line, passes) in cases {
            let got = readyz(&m, obs.as_ref(), tolerable);
            let text = match &got {
                Ok(l) => l.clone(),
                Err(e) => e.to_string(),
            };
            assert_eq!(text, line);
            assert_eq!(got.is_ok(), passes, "{line}");
            let want = if passes {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            assert_eq!(serving_status(&got), want, "{line}");
        }
    }

    #[test]
    fn healthz_passes_while_the_member_answers_even_if_not_ready() {
        let m = member();
        let lagging = observed(Health::Healthy, 0, 500);
        assert_eq!(
            healthz(&m, Some(&lagging)).unwrap(),
            "member n2: agent running, member reachable (healthy)"
        );
        let degraded = observed(Health::Degraded, 5, 5);
        assert!(healthz(&m, Some(&degraded)).is_ok());
        assert!(readyz(&m, Some(&degraded), 10).is_err());
        assert!(matches!(
            healthz(&m, Some(&unreachable())),
            Err(ProbeError::Unreachable { .. })
        ));
        assert!(matches!(
            healthz(&m, None),
            Err(ProbeError::NotReadYet { .. })
        ));
        let (code, body) = answer(healthz(&m, Some(&unreachable())));
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("member n2: unreachable: ") && body.ends_with('\n'));
    }

    /// One listener answers HTTP/1 probes and h2c gRPC health, and gRPC
    /// health follows the observations.
    #[tokio::test]
    async fn http_probes_and_grpc_health_share_the_port() {
        use std::time::Duration;

        use tonic_health::pb::health_check_response::ServingStatus as Wire;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

        use super::client::{Probe, check};
        use crate::adapter::fake::FakeAdapter;
        use crate::metrics::{AgentMetrics, Sources};

        let dir = tempfile::tempdir().unwrap();
        let m = member();
        let executor = Arc::new(
            Executor::open(
                m.clone(),
                dir.path(),
                Arc::new(FakeAdapter::default()),
                Box::new(crate::runner::External { member: m.clone() }),
                None,
            )
            .unwrap(),
        );
        let (obs_tx, obs) = watch::channel(Some(observed(Health::Healthy, 100, 100)));
        let (_link_tx, link) = watch::channel(crate::link::LinkStats::default());
        let metrics = Arc::new(AgentMetrics::new(Sources {
            member: m.clone(),
            obs: obs.clone(),
            link,
            executor: executor.clone(),
            tolerable_lag: 10,
        }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            ProbeContext {
                member: m,
                obs,
                executor,
                tolerable_lag: 10,
                metrics,
            },
            shutdown.clone(),
        ));

        let timeout = Duration::from_secs(2);
        let ready = check(&url, Probe::Ready, timeout).await.unwrap();
        assert!(ready.pass, "{ready:?}");
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let grpc = HealthClient::new(channel.clone());
        let status = |service: &str| {
            let mut grpc = grpc.clone();
            let service = service.to_owned();
            async move {
                grpc.check(HealthCheckRequest { service })
                    .await
                    .unwrap()
                    .into_inner()
                    .status()
            }
        };
        // Polls until `service` reports `want` (the tracker runs apart).
        let wait_for = |service: &'static str, want: Wire| {
            let status = &status;
            async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                loop {
                    let got = status(service).await;
                    if got == want {
                        return;
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "{service:?} stayed {got:?}, wanted {want:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        wait_for("", Wire::Serving).await;
        wait_for(GRPC_SERVICE, Wire::Serving).await;

        obs_tx.send_replace(Some(observed(Health::Healthy, 100, 512)));
        let lagging = check(&url, Probe::Ready, timeout).await.unwrap();
        assert!(!lagging.pass);
        assert_eq!(
            lagging.line,
            "member n2: not ready: lag 412 > tolerable_lag 10 (applied 100, committed 512)"
        );
        assert!(check(&url, Probe::Health, timeout).await.unwrap().pass);
        wait_for("", Wire::NotServing).await;
        wait_for(GRPC_SERVICE, Wire::NotServing).await;
        let unknown = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: "nosuch".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);

        obs_tx.send_replace(Some(unreachable()));
        let down = check(&url, Probe::Health, timeout).await.unwrap();
        assert!(!down.pass && down.line.starts_with("member n2: unreachable"));

        obs_tx.send_replace(Some(observed(Health::Healthy, 512, 512)));
        wait_for(GRPC_SERVICE, Wire::Serving).await;
        assert!(check(&url, Probe::Ready, timeout).await.unwrap().pass);

        // /metrics on the same port, an unknown path is a plain 404.
        let mut http = tokio::net::TcpStream::connect(&url[7..]).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        http.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        http.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.0 200"), "{text}");
        assert!(
            text.contains("baton_agent_member_lag{member=\"n2\"} 0"),
            "{text}"
        );
        let mut http = tokio::net::TcpStream::connect(&url[7..]).await.unwrap();
        http.write_all(b"GET /nope HTTP/1.0\r\n\r\n").await.unwrap();
        let mut text = String::new();
        http.read_to_string(&mut text).await.unwrap();
        assert!(text.starts_with("HTTP/1.0 404"), "{text}");

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the probe server stops on shutdown")
            .unwrap()
            .unwrap();
    }

    mod client_args {
        use std::collections::BTreeMap;
        use std::path::Path;

        use crate::probes::client::*;

        const CONFIG: &str = r#"
member_id = "n1"
cluster_id = "demo"
coordinator = "http://127.0.0.1:7400"
data_dir = "/tmp/d"
state_dir = "/tmp/s"
probe_listen = "0.0.0.0:7480"
[target]
kind = "samplekv"
addr = "127.0.0.1:7101"
"#;

        fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("agent.toml");
            std::fs::write(&path, text).unwrap();
            (dir, path)
        }

        #[test]
        fn the_url_comes_from_the_flag_or_the_config() {
            let none = BTreeMap::new();
            assert_eq!(
                base_url(Some("http://127.0.0.1:9/"), None, &none).unwrap(),
                "http://127.0.0.1:9"
            );
            let (_dir, path) = write(CONFIG);
            // A wildcard listen address is probed on loopback.
            assert_eq!(
                base_url(None, Some(&path), &none).unwrap(),
                "http://127.0.0.1:7480"
            );
            // The same env overrides as the agent's own.
            let env = BTreeMap::from([(
                "BATON_AGENT_PROBE_LISTEN".to_owned(),
                "[::]:7481".to_owned(),
            )]);
            assert_eq!(
                base_url(None, Some(&path), &env).unwrap(),
                "http://[::1]:7481"
            );
            // The flag wins over a config.
            assert_eq!(
                base_url(Some("http://127.0.0.1:9"), Some(&path), &none).unwrap(),
                "http://127.0.0.1:9"
            );
        }

        #[test]
        fn bad_arguments_are_usage_errors_that_say_what_to_do() {
            let none = BTreeMap::new();
            let cases: Vec<(Result<String, ClientError>, &str)> = vec![
                (base_url(None, None, &none), "give --config FILE"),
                (
                    base_url(Some("https://127.0.0.1:9"), None, &none),
                    "plain http",
                ),
                (base_url(Some("http://127.0.0.1"), None, &none), "no port"),
                (
                    base_url(Some("http://127.0.0.1:9/readyz"), None, &none),
                    "base URL only",
                ),
                (base_url(Some("not a url"), None, &none), "expected http://"),
                (
                    base_url(None, Some(Path::new("/nonexistent/agent.toml")), &none),
                    "cannot read config file /nonexistent/agent.toml",
                ),
                (
                    base_url(None, Some(&write(&CONFIG.replace(":7480", ":0")).1), &none),
                    "has port 0",
                ),
                (
                    base_url(
                        None,
                        Some(&write(&CONFIG.replace("member_id", "member")).1),
                        &none,
                    ),
                    "not valid TOML for the agent",
                ),
            ];
            for (got, want) in cases {
                let err = got.unwrap_err();
                assert!(err.is_usage(), "{err}");
                assert!(err.to_string().contains(want), "{err} should say {want:?}");
            }
        }

        #[tokio::test]
        async fn a_silent_port_is_not_answering_within_the_timeout() {
            // Bound but never accepted from: the connect succeeds (backlog),
            // the answer never comes.
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let started = tokio::time::Instant::now();
            let err = check(&url, Probe::Ready, std::time::Duration::from_millis(300))
                .await
                .unwrap_err();
            assert!(!err.is_usage());
            assert!(
                err.to_string()
                    .starts_with(&format!("agent not answering at {}", &url[7..]))
                    && err.to_string().contains("no answer within 300ms"),
                "{err}"
            );
            assert!(started.elapsed() < std::time::Duration::from_secs(2));
            drop(listener);
            let err = check(&url, Probe::Health, std::time::Duration::from_secs(2))
                .await
                .unwrap_err();
            assert!(err.to_string().contains("cannot connect"), "{err}");
        }
    }
}
