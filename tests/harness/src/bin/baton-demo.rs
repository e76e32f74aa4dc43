//! `baton-demo`: the one-command demo behind `bash deploy/demo.sh`.
//!
//! Starts a 3-member samplekv cluster with agents and a coordinator in a
//! temp dir, publishes v1 and v2, runs a writer at 100 writes/s, runs
//! `baton upgrade --to v2` with live progress, and prints a summary (with
//! who started the rollout, from the journal's audit trail). Every link is
//! mutual TLS with a PKI from `baton certs dev` (the CLI acts as operator
//! alice), unless `--plaintext` or `--ha` (whose replicas run on plaintext
//! loopback). Every process is killed by pid when it ends, however it ends.

use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use baton_harness::{Cluster, ClusterSpec, bin};
use samplekv::client::Client;
use samplekv::writer::{WriterConfig, run_writer, verify};
use tokio_util::sync::CancellationToken;

struct Args {
    json: bool,
    keep: bool,
    members: usize,
    /// Three coordinator replicas; the leading one is killed mid-rollout.
    ha: bool,
    /// Plaintext on loopback instead of mutual TLS.
    plaintext: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        json: false,
        keep: false,
        members: 3,
        ha: false,
        plaintext: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--json" => a.json = true,
            "--keep" => a.keep = true,
            "--ha" => a.ha = true,
            "--plaintext" => a.plaintext = true,
            "--members" => {
                a.members = it
                    .next()
                    .and_then(|n| n.parse().ok())
                    .filter(|n| (3..=7).contains(n))
                    .ok_or("--members takes a number from 3 to 7")?;
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: baton-demo [--json] [--keep] [--ha] [--plaintext] [--members N]"
                ));
            }
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("baton-demo: {e}");
            return ExitCode::from(64);
        }
    };
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        eprintln!("baton-demo: cannot start the runtime");
        return ExitCode::FAILURE;
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(3),
        Err(e) => {
            eprintln!("baton-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Progress lines go to stderr in --json mode, so stdout is one JSON line.
macro_rules! say {
    ($json:expr, $($t:tt)*) => {
        if $json { eprintln!($($t)*) } else { println!($($t)*) }
    };
}

async fn run(args: Args) -> Result<bool> {
    let spec = ClusterSpec {
        // The default tolerable_lag (10): at 100 writes/s a looser one lets
        // the next follower stop while the previous is still catching up.
        policy: "handover_timeout_ms = 5000\n".into(),
        replicas: if args.ha { 3 } else { 1 },
        tls: !args.ha && !args.plaintext,
        ..ClusterSpec::supervised(args.members)
    };
    let tls = spec.tls;
    say!(
        args.json,
        "starting {} samplekv members, their agents and {} on loopback...",
        args.members,
        if args.ha {
            "three coordinator replicas"
        } else {
            "a coordinator"
        }
    );
    let mut cluster = Cluster::start(spec)
        .await
        .context("starting the sample cluster")?;
    if tls {
        say!(
            args.json,
            "every link is mutual TLS: certificates from `baton certs dev` in {} (the CLI acts as spiffe://e2e/operator/alice, an admin)",
            cluster.pki_dir().display()
        );
    }
    say!(
        args.json,
        "published v1 (running) and v2 to {}",
        cluster.store_dir.display()
    );
    cluster.publish("v2", 1, false)?;
    let status = Command::new(bin("baton"))
        .args(["--coordinator", &cluster.coordinator_url])
        .args(&cluster.cli_flags)
        .arg("status")
        .output()?;
    say!(args.json, "\n{}", String::from_utf8_lossy(&status.stdout));

    let client = Client::new(cluster.addrs());
    let stop = CancellationToken::new();
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        let cfg = WriterConfig {
            rate_per_sec: 100,
            max_writes: 100_000,
            max_duration: Duration::from_secs(300),
            key_prefix: "demo-".into(),
            ..WriterConfig::default()
        };
        tokio::spawn(async move { run_writer(&client, cfg, stop).await })
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    say!(
        args.json,
        "writer running at 100 writes/s; baton upgrade --to v2:\n"
    );

    // Live progress: in table mode the CLI draws it on this terminal; in
    // JSON mode its output is kept, and shown on stderr when it fails. A
    // preflight refusal (exit 2: nothing was touched) is tried again twice,
    // a second apart: on a loaded machine a follower can trail the writer by
    // more than tolerable_lag for a moment. Each refusal is shown.
    let mut attempt = 1;
    let (upgraded, failover) = loop {
        let mut cmd = Command::new(bin("baton"));
        cmd.args(["--coordinator", &cluster.coordinator_url])
            .args(&cluster.cli_flags);
        if args.json {
            cmd.args(["--output", "json"]).stdout(Stdio::piped());
        } else {
            cmd.stdout(Stdio::inherit());
        }
        cmd.args(["upgrade", "--to", "v2"]).stderr(Stdio::inherit());
        let child = cmd.spawn()?;
        let failover = if args.ha {
            Some(kill_the_leading_replica(&mut cluster, args.json).await?)
        } else {
            None
        };
        let out = tokio::task::block_in_place(|| child.wait_with_output())?;
        if args.json && !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        }
        if out.status.code() == Some(2) && failover.is_none() && attempt < 3 {
            say!(
                args.json,
                "preflight refused the upgrade (attempt {attempt} of 3); trying again in 1 s"
            );
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(1000)).await;
            continue;
        }
        break (out.status, failover);
    };
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.cancel();
    let report = writer.await?;
    let checked = verify(&client, &report).await;

    // The rollout's own summary, from the coordinator's journal.
    let history = Command::new(bin("baton"))
        .args(["--coordinator", &cluster.coordinator_url])
        .args(&cluster.cli_flags)
        .args(["--output", "json", "history"])
        .output()?;
    let all: serde_json::Value =
        serde_json::from_slice(&history.stdout).context("baton history --output json")?;
    let result = serde_json::json!({ "summary": all.as_array().and_then(|a| a.last()).cloned().unwrap_or_default() });
    let out = upgraded;
    let summary = &result["summary"];
    let ok = out.success() && checked.lost.is_empty();
    let line = serde_json::json!({
        "ok": ok,
        "members": args.members,
        "order": summary["order"],
        "handover_target": summary["handover_target"],
        "step_ms": summary["step_ms"],
        "leader_changes": report.leader_changes,
        "max_write_gap_ms": report.max_write_gap_ms,
        "acked_writes": report.acked,
        "failed_writes": report.failed,
        "lost_acked_writes": checked.lost.len(),
        "total_s": summary["total_ms"].as_f64().map(|ms| ms / 1000.0),
        "coordinator_failovers": failover.as_ref().map_or(0, |_| 1),
        "tls": tls,
        "started_by": summary["started_by"],
        "resumed_after_ms": failover,
        "backup": {
            "id": summary["backup"]["id"],
            "bytes": summary["backup"]["bytes"],
            "sha256": summary["backup"]["sha256"],
            "verified": summary["backup"]["verified"],
        },
    });
    if args.json {
        println!("{line}");
    } else {
        println!("\nsummary");
        let b = &summary["backup"];
        if b["verified"] == true {
            println!(
                "  backup:             {} ({} bytes, sha256 {}), re-read and verified before the first stop",
                b["id"].as_str().unwrap_or("?"),
                b["bytes"],
                b["sha256"].as_str().unwrap_or("?")
            );
        } else {
            println!(
                "  backup:             {} ({})",
                b["state"].as_str().unwrap_or("none"),
                b["reason"].as_str().unwrap_or("")
            );
        }
        println!(
            "  started by:         {} ({})",
            summary["started_by"].as_str().unwrap_or("?"),
            if tls {
                "from its client certificate, journaled"
            } else {
                "plaintext loopback acts as local admin"
            }
        );
        println!("  order:              {}", summary["order"]);
        println!("  handover target:    {}", summary["handover_target"]);
        if let Some(steps) = summary["step_ms"].as_array() {
            for s in steps {
                println!(
                    "  member {:<6} took {} ms (stop to caught up)",
                    s[0].as_str().unwrap_or("?"),
                    s[1]
                );
            }
        }
        println!(
            "  total:              {:.2} s",
            summary["total_ms"].as_f64().unwrap_or(0.0) / 1000.0
        );
        println!("  largest write gap:  {} ms", report.max_write_gap_ms);
        println!(
            "  acked writes:       {} ({} failed or timed out, not acked)",
            report.acked, report.failed
        );
        println!("  lost acked writes:  {}", checked.lost.len());
        println!("  leader changes:     {}", report.leader_changes);
        if let Some(ms) = failover {
            println!(
                "  coordinator:        1 failover (the leading replica was killed mid-rollout); the next leader journaled the rollout's next event {ms} ms later"
            );
        }
        if !out.success() {
            println!("\nbaton upgrade failed ({out}); see its output above");
        }
    }
    if args.keep {
        say!(
            args.json,
            "\ncluster left running; watch it with:\n  {} --coordinator {} {} status --watch\nCtrl-C here stops everything.",
            bin("baton").display(),
            cluster.coordinator_url,
            cluster.cli_flags.join(" ")
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    Ok(ok)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Once the first follower has been stopped, SIGKILLs the leading
/// coordinator replica; returns how long after the kill a new leader
/// journaled the rollout's next event (the journal's own clock), and
/// brings the dead replica back as a follower.
async fn kill_the_leading_replica(cluster: &mut Cluster, json: bool) -> Result<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let stopped = |j: &[serde_json::Value]| {
        j.iter().any(|e| {
            e["event"] == "command_issued"
                && (e["action"] == "stop" || e["action"]["action"] == "stop")
        })
    };
    let k = loop {
        if let Some(k) = cluster.replicas.leading().await
            && stopped(&cluster.replicas.journal(k)?)
        {
            break k;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the rollout never stopped a member"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    cluster.replicas.kill(k);
    let killed = unix_ms();
    say!(
        json,
        "\n>>> killed the leading coordinator replica {} (kill -9)\n",
        cluster.replicas[k].id
    );
    let resumed = loop {
        if let Some(k2) = cluster.replicas.leading().await
            && let Some(at) = cluster
                .replicas
                .journal(k2)?
                .iter()
                .filter_map(|e| e["at"].as_u64())
                .filter(|at| *at > killed)
                .min()
        {
            break at - killed;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no replica took over"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    cluster.replicas.start(k)?;
    Ok(resumed)
}
