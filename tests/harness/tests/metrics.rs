//! The coordinator's `/metrics` on a live 3-member samplekv cluster: the
//! body is valid Prometheus text (promtool, when installed, and a parse
//! here), and `baton_member_lag`, the applied revision, the role and the
//! agent connection of every member match what `baton status --output json`
//! says at the same moment.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton_domain::{FleetStatus, Role};
use baton_harness::{Cluster, ClusterSpec};
use samplekv::client::Client;

/// One sample line: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the text exposition: `# HELP`/`# TYPE`/`# UNIT` comments, `# EOF`
/// last, and `name{k="v",...} value` samples whose family was declared.
fn parse(text: &str) -> Result<Vec<Sample>> {
    let mut declared = Vec::new();
    let mut samples = Vec::new();
    let mut eof = false;
    for (n, line) in text.lines().enumerate() {
        if eof {
            bail!("line {}: content after # EOF: {line:?}", n + 1);
        }
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (Some(name), Some(kind), None) = (parts.next(), parts.next(), parts.next()) else {
                bail!("line {}: bad TYPE: {line:?}", n + 1);
            };
            if !["gauge", "counter", "histogram"].contains(&kind) {
                bail!("line {}: unexpected type {kind}", n + 1);
            }
            declared.push(name.to_owned());
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        let sample = parse_sample(line).with_context(|| format!("line {}: {line:?}", n + 1))?;
        let family_declared = declared.iter().any(|f| {
            sample.name == *f
                || ["_total", "_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| sample.name == format!("{f}{suffix}"))
        });
        if !family_declared {
            bail!("line {}: sample {} has no # TYPE", n + 1, sample.name);
        }
        samples.push(sample);
    }
    if !eof {
        bail!("the exposition does not end with # EOF");
    }
    Ok(samples)
}

fn parse_sample(line: &str) -> Result<Sample> {
    let name_end = line
        .find(['{', ' '])
        .context("a sample needs a value after its name")?;
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    {
        bail!("bad metric name {name:?}");
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end = loop {
            let Some((i, c)) = chars.next() else {
                bail!("unterminated label set");
            };
            if c == '}' {
                break i;
            }
            if c == ',' {
                continue;
            }
            // key="value", value with \" and \\ escapes.
            let key_start = i;
            let eq = body[key_start..].find('=').context("a label needs =")? + key_start;
            let key = &body[key_start..eq];
            while chars.peek().is_some_and(|(j, _)| *j <= eq) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                bail!("label {key} value is not quoted");
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bail!("dangling escape"),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => bail!("unterminated value of label {key}"),
                }
            }
            if labels.insert(key.to_owned(), value).is_some() {
                bail!("label {key} twice");
            }
        };
        rest = &body[end + 1..];
    }
    let value = rest
        .strip_prefix(' ')
        .context("a single space before the value")?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().with_context(|| format!("value {v:?}"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// `promtool check metrics` on the body, when promtool is installed (CI
/// installs it). promtool 2.42 lints with the classic text parser, which
/// reads an OpenMetrics counter's `foo_total` samples apart from `# TYPE foo
/// counter` and says they have no help: exit 3 with only that complaint is
/// accepted, anything else fails.
fn promtool_check(text: &str) -> Result<()> {
    let promtool = std::path::Path::new("/usr/bin/promtool");
    if !promtool.exists() {
        eprintln!("promtool is not installed; only the parse here checked the exposition");
        return Ok(());
    }
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let problems =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let only_counter_help = problems.lines().all(|l| {
        l.strip_suffix("_total no help text")
            .is_some_and(|name| text.contains(&format!("# TYPE {name} counter\n")))
    });
    if !(out.status.success() || (out.status.code() == Some(3) && only_counter_help)) {
        bail!(
            "promtool check metrics failed ({:?}):\n{problems}\n--- exposition ---\n{text}",
            out.status.code()
        );
    }
    Ok(())
}

fn find<'a>(samples: &'a [Sample], name: &str, member: &str) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == name && s.labels.get("member").map(String::as_str) == Some(member))
        .collect()
}

/// Every per-member claim of the scrape against the status; None if they
/// agree, else what differs.
fn disagreement(samples: &[Sample], status: &FleetStatus) -> Option<String> {
    let mut diffs = Vec::new();
    for row in &status.members {
        let m = row.member.as_str();
        let lag: Vec<f64> = find(samples, "baton_member_lag", m)
            .iter()
            .map(|s| s.value)
            .collect();
        let want_lag: Vec<f64> = row.lag.iter().map(|l| *l as f64).collect();
        if lag != want_lag {
            diffs.push(format!(
                "{m}: baton_member_lag {lag:?}, status {want_lag:?}"
            ));
        }
        let applied: Vec<f64> = find(samples, "baton_member_applied_revision", m)
            .iter()
            .map(|s| s.value)
            .collect();
        let want_applied: Vec<f64> = row
            .report
            .iter()
            .map(|r| r.state.applied_revision as f64)
            .collect();
        if applied != want_applied {
            diffs.push(format!(
                "{m}: baton_member_applied_revision {applied:?}, status {want_applied:?}"
            ));
        }
        let roles: Vec<&str> = find(samples, "baton_member_role", m)
            .iter()
            .filter(|s| s.value == 1.0)
            .filter_map(|s| s.labels.get("role").map(String::as_str))
            .collect();
        let want_role: Vec<String> = row
            .report
            .iter()
            .map(|r| r.state.role.to_string())
            .collect();
        if roles != want_role.iter().map(String::as_str).collect::<Vec<_>>() {
            diffs.push(format!(
                "{m}: baton_member_role {roles:?}, status {want_role:?}"
            ));
        }
        let connected: Vec<f64> = find(samples, "baton_member_agent_connected", m)
            .iter()
            .map(|s| s.value)
            .collect();
        if connected != vec![if row.connected { 1.0 } else { 0.0 }] {
            diffs.push(format!(
                "{m}: baton_member_agent_connected {connected:?}, status connected={}",
                row.connected
            ));
        }
    }
    if diffs.is_empty() {
        None
    } else {
        Some(diffs.join("\n"))
    }
}

#[tokio::test]
async fn metrics_match_baton_status() -> Result<()> {
    let cluster = Cluster::start(ClusterSpec {
        metrics: true,
        ..ClusterSpec::default()
    })
    .await?;
    let client = Client::new(cluster.addrs());
    for i in 0..200 {
        client.put(&format!("metrics-{i:04}"), "x").await?;
    }
    // The revision every member must reach: the leader's own, once the 200
    // writes are acknowledged.
    let written = cluster
        .member_status(cluster.leader_index().await?)
        .await?
        .committed_revision;

    // Writes have stopped: poll until every member's report shows it caught
    // up with them, and one scrape agrees with the status read just after it
    // (a report can land between the two reads, so a disagreement is
    // retried, not failed).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let (text, samples, status) = loop {
        let text = cluster.scrape_metrics()?;
        let status = cluster.status()?;
        let samples = parse(&text)?;
        let caught_up = status.members.iter().all(|m| {
            m.lag == Some(0)
                && m.report
                    .as_ref()
                    .is_some_and(|r| r.state.applied_revision >= written)
        });
        let diff = disagreement(&samples, &status);
        if caught_up && diff.is_none() {
            break (text, samples, status);
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "/metrics never matched baton status: {}\nstatus: {status:#?}\n--- exposition ---\n{text}",
                diff.unwrap_or_else(|| "members not caught up".into())
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    promtool_check(&text)?;

    assert_eq!(status.members.len(), 3);
    for row in &status.members {
        let lag = find(&samples, "baton_member_lag", row.member.as_str());
        assert_eq!(lag.len(), 1, "one lag series for {}: {lag:?}", row.member);
        // Caught up and steady: the lag trend is known and near flat.
        let trend = find(&samples, "baton_member_lag_trend", row.member.as_str());
        assert!(
            trend.len() == 1 && trend[0].value.is_finite() && trend[0].value.abs() < 100.0,
            "one finite lag trend for {}: {trend:?}",
            row.member
        );
        assert_eq!(
            lag[0].labels.get("cluster").map(String::as_str),
            Some("e2e"),
            "{lag:?}"
        );
        let applied = find(
            &samples,
            "baton_member_applied_revision",
            row.member.as_str(),
        );
        assert!(
            applied.len() == 1 && applied.iter().all(|s| s.value >= written as f64),
            "{} applied the 200 writes (revision {written}): {applied:?}",
            row.member
        );
        let release = find(&samples, "baton_member_release_info", row.member.as_str());
        assert_eq!(
            release
                .iter()
                .map(|s| s.labels.get("release").map(String::as_str))
                .collect::<Vec<_>>(),
            vec![Some("v1")],
            "{release:?}"
        );
    }
    let leaders: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == "baton_member_role"
                && s.labels.get("role").map(String::as_str) == Some(&Role::Leader.to_string())
        })
        .collect();
    assert_eq!(leaders.len(), 1, "exactly one leader series: {leaders:?}");
    assert_eq!(
        leaders[0].labels.get("member"),
        status.leader.as_ref().map(|m| m.to_string()).as_ref(),
        "the leader series names the status's leader"
    );
    // No rollout yet: every command counter and every member's stall
    // counter exists at 0 (so rate() sees the first event).
    for row in &status.members {
        let stalls: Vec<f64> = find(&samples, "baton_stalls_total", row.member.as_str())
            .iter()
            .map(|s| s.value)
            .collect();
        assert_eq!(stalls, vec![0.0], "{}: no stall yet", row.member);
    }
    for action in ["stage", "stop", "switch", "start", "step_down"] {
        let sent: Vec<f64> = samples
            .iter()
            .filter(|s| {
                s.name == "baton_commands_sent_total"
                    && s.labels.get("action").map(String::as_str) == Some(action)
            })
            .map(|s| s.value)
            .collect();
        assert_eq!(sent, vec![0.0], "{action}: no command sent yet");
    }
    Ok(())
}

/// The value of the one series `name` with exactly `labels`, if any.
fn value_of(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

/// A clean rollout feeds the driver's series: the phase ends `completed`,
/// every journaled command was sent and counted, and the step histogram has
/// one observation per journaled result, per action.
#[tokio::test]
async fn a_rollout_feeds_the_rollout_metrics() -> Result<()> {
    let cluster = Cluster::start(ClusterSpec {
        metrics: true,
        json_logs: true,
        policy:
            "health_timeout_ms = 20000\ncatchup_timeout_ms = 30000\nhandover_timeout_ms = 5000\n"
                .into(),
        ..ClusterSpec::supervised(3)
    })
    .await?;
    cluster.publish("v2", 1, false)?;
    let before = parse(&cluster.scrape_metrics()?)?;
    assert!(
        before.iter().all(|s| s.name != "baton_rollout_phase"),
        "no rollout, no phase series"
    );
    let (code, out, stderr) = cluster.baton_json(&["upgrade", "--to", "v2"])?;
    assert_eq!(code, 0, "baton upgrade: {stderr}\n{out:#}");

    let text = cluster.scrape_metrics()?;
    let samples = parse(&text)?;
    promtool_check(&text)?;
    let phases: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == "baton_rollout_phase")
        .collect();
    assert_eq!(phases.len(), 1, "one phase series: {phases:?}");
    assert_eq!(
        value_of(
            &samples,
            "baton_rollout_phase",
            &[
                ("cluster", "e2e"),
                ("rollout", "r1-v2"),
                ("phase", "completed")
            ]
        ),
        Some(1.0),
        "{phases:?}"
    );

    // What the journal says was issued and answered, per action.
    let journal = cluster.journal()?;
    let mut action_of = BTreeMap::new();
    let mut issued: BTreeMap<String, f64> = BTreeMap::new();
    let mut answered: BTreeMap<String, f64> = BTreeMap::new();
    let mut failed: BTreeMap<String, f64> = BTreeMap::new();
    for e in &journal {
        let id = e["id"].as_str().unwrap_or_default().to_owned();
        match e["event"].as_str() {
            Some("command_issued") => {
                let action = e["action"]["action"]
                    .as_str()
                    .context("an issued command names its action")?
                    .to_owned();
                *issued.entry(action.clone()).or_default() += 1.0;
                action_of.insert(id, action);
            }
            Some(kind @ ("command_succeeded" | "command_failed")) => {
                let action = action_of
                    .get(&id)
                    .with_context(|| format!("result for unissued {id}"))?
                    .clone();
                *answered.entry(action.clone()).or_default() += 1.0;
                if kind == "command_failed" {
                    *failed.entry(action).or_default() += 1.0;
                }
            }
            _ => {}
        }
    }
    for action in ["stage", "stop", "switch", "start", "step_down"] {
        assert!(
            issued.contains_key(action),
            "a clean rollout issues {action}: {issued:?}"
        );
    }
    for action in ["stage", "stop", "switch", "start", "step_down"] {
        let sent = value_of(&samples, "baton_commands_sent_total", &[("action", action)]);
        let want = issued.get(action).copied().unwrap_or(0.0);
        assert!(
            sent.is_some_and(|v| v >= want),
            "{action}: sent {sent:?} >= issued {want}"
        );
        assert_eq!(
            value_of(
                &samples,
                "baton_rollout_step_duration_seconds_count",
                &[("action", action)]
            ),
            answered.get(action).copied(),
            "{action}: one step observation per journaled result"
        );
        assert_eq!(
            value_of(
                &samples,
                "baton_commands_failed_total",
                &[("action", action)]
            ),
            Some(failed.get(action).copied().unwrap_or(0.0)),
            "{action}: failures as journaled"
        );
        let sum = value_of(
            &samples,
            "baton_rollout_step_duration_seconds_sum",
            &[("action", action)],
        )
        .unwrap_or(-1.0);
        assert!(sum >= 0.0, "{action}: step durations sum to {sum}");
    }

    // `--log-format json`: every coordinator log line is a JSON object, and
    // the driver's lines carry the rollout's span.
    let log = std::fs::read_to_string(cluster.dir.path().join("coordinator.log"))?;
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect::<Result<_>>()?;
    let sent: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "sent command")
        .collect();
    assert!(!sent.is_empty(), "the driver logged its commands");
    assert!(
        sent.iter().all(|l| l["spans"].as_array().is_some_and(|s| s
            .iter()
            .any(|s| s["name"] == "rollout" && s["id"] == "r1-v2"))),
        "every command line is inside the rollout span: {sent:#?}"
    );
    assert!(
        sent.iter().all(|l| l["fields"]["member"].is_string()),
        "and names its member"
    );
    Ok(())
}

#[test]
fn the_parser_refuses_broken_expositions() {
    let good = "# HELP a x\n# TYPE a gauge\na{k=\"v\"} 1\n# EOF\n";
    assert_eq!(parse(good).map(|s| s.len()).ok(), Some(1));
    for bad in [
        "# TYPE a gauge\na{k=\"v\"} 1\n",                // no EOF
        "a 1\n# EOF\n",                                  // undeclared family
        "# TYPE a gauge\na{k=v} 1\n# EOF\n",             // unquoted value
        "# TYPE a gauge\na{k=\"v\" 1\n# EOF\n",          // unterminated set
        "# TYPE a gauge\na{k=\"v\"} one\n# EOF\n",       // not a number
        "# TYPE a gauge\na 1\n# EOF\nb 2\n",             // after EOF
        "# TYPE a gauge\na{k=\"1\",k=\"2\"} 1\n# EOF\n", // label twice
    ] {
        assert!(parse(bad).is_err(), "accepted: {bad:?}");
    }
}
