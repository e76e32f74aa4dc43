//! The demo (`bash deploy/demo.sh --json` runs the same binary in release
//! mode) upgrades its cluster over mutual TLS and ends with its summary as
//! one JSON line, naming who started the rollout.

use std::process::Command;

use anyhow::Result;
use baton_harness::bin;

#[test]
fn the_demo_upgrades_and_prints_a_json_summary() -> Result<()> {
    let out = Command::new(bin("baton-demo")).arg("--json").output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "demo failed: {stderr}\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stdout = String::from_utf8(out.stdout)?;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout is one JSON line: {stdout}");
    let s: serde_json::Value = serde_json::from_str(lines[0])?;
    for key in [
        "members",
        "order",
        "handover_target",
        "leader_changes",
        "max_write_gap_ms",
        "acked_writes",
        "lost_acked_writes",
        "total_s",
    ] {
        assert!(!s[key].is_null(), "summary has {key}: {s}");
    }
    assert_eq!(s["members"], 3);
    assert_eq!(s["order"].as_array().map(Vec::len), Some(3));
    assert_eq!(s["leader_changes"], 1);
    assert_eq!(s["lost_acked_writes"], 0);
    // Backed up to the dir store and verified before the first stop.
    assert_eq!(s["backup"]["verified"], true, "{s}");
    assert!(
        s["backup"]["id"]
            .as_str()
            .is_some_and(|id| id.contains("-b1.")),
        "{s}"
    );
    assert_eq!(
        s["backup"]["sha256"].as_str().map(str::len),
        Some(64),
        "{s}"
    );
    assert!(s["backup"]["bytes"].as_u64().unwrap_or(0) > 0, "{s}");
    assert!(s["acked_writes"].as_u64().unwrap_or(0) > 100, "{s}");
    // Mutual TLS by default, and the journal names who started the rollout:
    // the operator the CLI's certificate names.
    assert_eq!(s["tls"], true, "{s}");
    assert_eq!(s["started_by"], "operator/alice", "{s}");
    assert!(
        stderr.contains("baton upgrade --to v2"),
        "progress goes to stderr: {stderr}"
    );
    Ok(())
}

#[test]
fn the_ha_demo_loses_its_leading_coordinator_mid_rollout_and_still_finishes() -> Result<()> {
    let out = Command::new(bin("baton-demo"))
        .args(["--ha", "--json"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}");
    let stdout = String::from_utf8(out.stdout)?;
    let s: serde_json::Value = serde_json::from_str(stdout.trim())?;
    assert_eq!(s["coordinator_failovers"], 1, "{s}");
    assert!(s["resumed_after_ms"].as_u64().is_some(), "{s}");
    assert_eq!(s["leader_changes"], 1, "{s}");
    assert_eq!(s["lost_acked_writes"], 0, "{s}");
    assert_eq!(s["started_by"], "local", "plaintext loopback: {s}");
    assert!(
        stderr.contains("killed the leading coordinator replica"),
        "{stderr}"
    );
    Ok(())
}
