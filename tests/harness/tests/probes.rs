//! The agent's probes against real samplekv members and real agents:
//! `/readyz`, `baton-agent probe --ready` and gRPC health turn "not ready"
//! while a follower's apply is paused and writes flow, and "ready" again
//! once it catches up; `/healthz` and `baton-agent probe` fail while the
//! member process is down (the agent still runs); `/metrics` parses as
//! Prometheus text (and passes `promtool check metrics` when installed)
//! and carries the member's lag. The coordinator answers gRPC health too.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use baton_harness::{Cluster, ClusterSpec};
use nix::sys::signal::Signal;
use samplekv::client::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// The agent's default `[probes] tolerable_lag`.
const TOLERABLE_LAG: u64 = 10;

/// Polls `f` until it yields `Some`, or fails naming `what` after `within`.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + within;
    let mut last = String::new();
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: not within {within:?} (last error: {last})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET path` on the agent's probe port: (status, body).
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let asked = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut text = String::new();
        s.read_to_string(&mut text).await?;
        anyhow::Ok(text)
    };
    let text = tokio::time::timeout(Duration::from_secs(2), asked)
        .await
        .with_context(|| format!("GET {addr}{path}: no answer within 2s"))??;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("GET {addr}{path}: no header end in {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("GET {addr}{path}: no status in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// Runs the real `baton-agent probe` binary: (exit code, stdout line).
async fn probe_cli(args: &[&str], config: &Path) -> Result<(i32, String)> {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new(baton_harness::bin("baton-agent"))
            .arg("probe")
            .args(args)
            .arg("--config")
            .arg(config)
            .env_remove("BATON_AGENT_CONFIG")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("baton-agent probe did not finish within 10s (its own bound is 2s)")??;
    let code = out.status.code().context("baton-agent probe was killed")?;
    Ok((code, String::from_utf8_lossy(&out.stdout).trim().to_owned()))
}

/// gRPC health of `service` at `url` (a fresh h2c connection each time).
async fn grpc_health(url: &str, service: &str) -> Result<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(2))
        .connect()
        .await?;
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(answer.into_inner().status())
}

/// Both of the agent's gRPC health services report `want`.
async fn wait_grpc(url: &str, want: ServingStatus) -> Result<()> {
    eventually(
        &format!("gRPC health at {url} {want:?}"),
        Duration::from_secs(10),
        || async move {
            for service in ["", "baton.agent"] {
                if grpc_health(url, service).await? != want {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
}

/// A minimal OpenMetrics/Prometheus text parse: every sample belongs to a
/// family with HELP and TYPE, every value is a number, the text ends with
/// `# EOF`. Returns series (name with labels) to value.
fn parse_metrics(text: &str) -> Result<BTreeMap<String, f64>> {
    let mut help = Vec::new();
    let mut types = BTreeMap::new();
    let mut samples = BTreeMap::new();
    ensure!(text.ends_with("# EOF\n"), "no `# EOF` at the end");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, h) = rest.split_once(' ').context("HELP without text")?;
            ensure!(!h.trim().is_empty(), "empty HELP for {name}");
            help.push(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, t) = rest.split_once(' ').context("TYPE without a type")?;
            ensure!(
                ["gauge", "counter"].contains(&t),
                "unexpected type {t} for {name}"
            );
            types.insert(name.to_owned(), t.to_owned());
        } else if line == "# EOF" || line.is_empty() {
        } else {
            let (series, value) = line.rsplit_once(' ').context("sample without value")?;
            let value: f64 = value
                .parse()
                .with_context(|| format!("value of {series}"))?;
            let name = series.split('{').next().unwrap_or(series);
            let family = match name.strip_suffix("_total") {
                Some(f) if types.get(f).is_some_and(|t| t == "counter") => f,
                _ => name,
            };
            ensure!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "bad metric name {name}"
            );
            ensure!(help.iter().any(|h| h == family), "{name} has no HELP");
            ensure!(types.contains_key(family), "{name} has no TYPE");
            ensure!(
                samples.insert(series.to_owned(), value).is_none(),
                "{series} twice"
            );
        }
    }
    Ok(samples)
}

/// `promtool check metrics` on `text`, when promtool is installed. promtool
/// lints the Prometheus text format, in which an OpenMetrics counter's
/// `_total` sample looks like a family of its own without HELP; that one
/// artefact is allowed, anything else fails.
fn promtool_check(text: &str) -> Result<()> {
    let promtool = Path::new("/usr/bin/promtool");
    if !promtool.exists() {
        eprintln!("promtool not installed; only the minimal parse ran");
        return Ok(());
    }
    use std::io::Write;
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let code = out.status.code();
    ensure!(
        code == Some(0) || code == Some(3),
        "promtool could not parse /metrics ({code:?}): {report}\n{text}"
    );
    for problem in report.lines().filter(|l| !l.trim().is_empty()) {
        let counter_total = problem
            .strip_suffix(" no help text")
            .and_then(|n| n.strip_suffix("_total"))
            .is_some_and(|family| text.contains(&format!("# TYPE {family} counter\n")));
        ensure!(counter_total, "promtool: {problem}\n{text}");
    }
    Ok(())
}

/// Lag reported on /metrics for `member`.
fn metric_lag(samples: &BTreeMap<String, f64>, member: &str) -> Option<f64> {
    samples
        .get(&format!("baton_agent_member_lag{{member=\"{member}\"}}"))
        .copied()
}

/// Member `i`'s own committed − applied, straight from samplekv.
async fn own_lag(cluster: &Cluster, i: usize) -> Result<u64> {
    let s = cluster.member_status(i).await?;
    Ok(s.committed_revision.saturating_sub(s.applied_revision))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_follow_the_member() -> Result<()> {
    let mut cluster = Cluster::start(ClusterSpec::default()).await?;
    let leader = cluster.leader_index().await?;
    let f = (leader + 1) % cluster.members.len();
    let name = cluster.members[f].name.clone();
    let probe = cluster.members[f].probe_addr;
    let probe_url = format!("http://{probe}");
    let config = cluster.members[f].agent_config.clone();

    // The coordinator's gRPC server answers health too.
    for service in ["", baton_proto::v1::operator_server::SERVICE_NAME] {
        let got = grpc_health(&cluster.coordinator_url, service).await?;
        assert_eq!(got, ServingStatus::Serving, "coordinator {service:?}");
    }

    // A serving follower: ready everywhere.
    eventually("readyz 200", Duration::from_secs(10), || async {
        Ok((get(probe, "/readyz").await?.0 == 200).then_some(()))
    })
    .await?;
    let (code, line) = probe_cli(&["--ready"], &config).await?;
    assert_eq!(code, 0, "{line}");
    assert!(
        line.starts_with(&format!("member {name}: ready: serving as follower")),
        "{line}"
    );
    wait_grpc(&probe_url, ServingStatus::Serving).await?;
    let (status, text) = get(probe, "/metrics").await?;
    assert_eq!(status, 200);
    let samples = parse_metrics(&text)?;
    promtool_check(&text)?;
    assert!(
        metric_lag(&samples, &name).is_some_and(|l| l <= TOLERABLE_LAG as f64),
        "{text}"
    );
    assert_eq!(
        samples.get(&format!(
            "baton_agent_member_role{{member=\"{name}\",role=\"follower\"}}"
        )),
        Some(&1.0),
        "{text}"
    );
    assert_eq!(
        samples.get(&format!(
            "baton_agent_coordinator_connected{{member=\"{name}\"}}"
        )),
        Some(&1.0),
        "{text}"
    );

    // The member process dies (by pid); its agent keeps running.
    let proc = cluster.members[f]
        .proc
        .as_mut()
        .context("external member")?;
    proc.signal(Signal::SIGKILL);
    proc.wait_exit(Duration::from_secs(5))?;
    let down = eventually(
        "healthz 503 while the member is down",
        Duration::from_secs(10),
        || async {
            let (status, body) = get(probe, "/healthz").await?;
            Ok((status == 503).then_some(body))
        },
    )
    .await?;
    assert!(
        down.starts_with(&format!("member {name}: unreachable: ")),
        "{down}"
    );
    let (code, line) = probe_cli(&[], &config).await?;
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with(&format!("member {name}: unreachable")),
        "{line}"
    );
    let (code, _) = probe_cli(&["--ready"], &config).await?;
    assert_eq!(code, 1);
    assert_eq!(get(probe, "/readyz").await?.0, 503);
    wait_grpc(&probe_url, ServingStatus::NotServing).await?;
    assert!(
        cluster.members[f]
            .agent
            .as_mut()
            .is_some_and(|a| a.is_running()),
        "the agent survived its member"
    );

    // Back, with an apply that can be paused.
    let pause = cluster.dir.path().join("pause-apply");
    let pause_env = pause.to_string_lossy().into_owned();
    cluster.start_member(f, &[("SAMPLEKV_PAUSE_APPLY_FILE", pause_env.as_str())])?;
    eventually(
        "ready after the restart",
        Duration::from_secs(30),
        || async { Ok((get(probe, "/readyz").await?.0 == 200).then_some(())) },
    )
    .await?;
    let (code, line) = probe_cli(&[], &config).await?;
    assert_eq!(code, 0, "{line}");
    wait_grpc(&probe_url, ServingStatus::Serving).await?;

    // Pause its apply while writes flow: the member itself shows a growing
    // committed - applied (it learns the leader's commit index).
    std::fs::write(&pause, b"")?;
    let client = Client::new(cluster.addrs());
    for i in 0..20 {
        client.put(&format!("probe-a-{i}"), "x").await?;
    }
    let first = eventually("own lag above 10", Duration::from_secs(10), || async {
        let l = own_lag(&cluster, f).await?;
        Ok((l > TOLERABLE_LAG).then_some(l))
    })
    .await?;
    for i in 0..20 {
        client.put(&format!("probe-b-{i}"), "x").await?;
    }
    let second = eventually("own lag growing", Duration::from_secs(10), || async {
        let l = own_lag(&cluster, f).await?;
        Ok((l >= first + 20).then_some(l))
    })
    .await?;
    eprintln!("{name}: committed - applied {first} after 20 writes, {second} after 40");

    let lagging = eventually(
        "readyz 503 while lagging",
        Duration::from_secs(10),
        || async {
            let (status, body) = get(probe, "/readyz").await?;
            Ok((status == 503 && body.contains("lag")).then_some(body))
        },
    )
    .await?;
    let prefix = format!("member {name}: not ready: lag ");
    assert!(lagging.starts_with(&prefix), "{lagging}");
    let lag: u64 = lagging[prefix.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("lag in {lagging:?}"))?;
    assert!(lag > TOLERABLE_LAG, "{lagging}");
    assert!(
        lagging.contains(&format!("> tolerable_lag {TOLERABLE_LAG} (applied ")),
        "{lagging}"
    );
    let (code, line) = probe_cli(&["--ready"], &config).await?;
    assert_eq!(code, 1, "{line}");
    assert!(line.starts_with(&prefix), "{line}");
    // Still alive and reachable: only readiness failed.
    let (code, line) = probe_cli(&[], &config).await?;
    assert_eq!(code, 0, "{line}");
    wait_grpc(&probe_url, ServingStatus::NotServing).await?;
    let (_, text) = get(probe, "/metrics").await?;
    let samples = parse_metrics(&text)?;
    promtool_check(&text)?;
    let seen = metric_lag(&samples, &name).context("lag on /metrics")?;
    assert!(
        seen > TOLERABLE_LAG as f64,
        "lag {seen} on /metrics\n{text}"
    );
    assert_eq!(
        samples.get(&format!("baton_agent_member_ready{{member=\"{name}\"}}")),
        Some(&0.0),
        "{text}"
    );

    // Un-pause: it applies what it committed and is ready again.
    std::fs::remove_file(&pause)?;
    let back = eventually(
        "readyz 200 after catching up",
        Duration::from_secs(30),
        || async {
            let (status, body) = get(probe, "/readyz").await?;
            Ok((status == 200).then_some(body))
        },
    )
    .await?;
    assert!(
        back.starts_with(&format!("member {name}: ready: ")),
        "{back}"
    );
    let (code, line) = probe_cli(&["--ready"], &config).await?;
    assert_eq!(code, 0, "{line}");
    wait_grpc(&probe_url, ServingStatus::Serving).await?;
    let (_, text) = get(probe, "/metrics").await?;
    let samples = parse_metrics(&text)?;
    assert!(
        metric_lag(&samples, &name).is_some_and(|l| l <= TOLERABLE_LAG as f64),
        "{text}"
    );

    // A config that does not load is a usage error: exit 64.
    let missing = cluster.dir.path().join("no-such-agent.toml");
    let (code, _) = probe_cli(&[], &missing).await?;
    assert_eq!(code, 64);

    // Nobody on the port: "not answering", exit 1.
    drop(cluster.members[f].agent.take());
    let (code, line) = probe_cli(&["--ready"], &config).await?;
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with(&format!("agent not answering at {probe}")),
        "{line}"
    );
    Ok(())
}
