//! The seed runbooks (z4j, Piprio, lazyit) as baton rollouts of a
//! single-member app, end to end: `sqlapp` (SQLite, forward-only
//! migrations at start) supervised by a real agent through the `exec`
//! adapter, a real coordinator with the dir store, and the `baton` CLI.
//! - A good upgrade: `baton plan` lists the agent's own `doctor` check with
//!   its command and the backup before the stop; the backup is taken,
//!   test-restored and verified before the stop; the member is upgraded in place with no handover; the row
//!   counts before the stop equal those after the start; every row written
//!   before is served after; a plain rollback to v1 (which cannot read the
//!   new schema) is refused.
//! - A failed migration: v2's migration fails half way, SQLite rolls it
//!   back, the 3-minute-style health wait (shortened here) fails, the member
//!   goes back to v1 with every row intact, and the rollback hint is printed.
//! - A missing setting: v2 needs `SQLAPP_REDIS_URL`, which the app's
//!   environment lacks; v2's own check fails at staging, naming the
//!   setting, and nothing is stopped.

use std::time::Duration;

use anyhow::{Context, Result};
use baton_domain::Health;
use baton_harness::bin;
use baton_harness::sqlapp::{MEMBER, SqlApp, SqlRelease, V2_SETTING};

fn is_stop(e: &serde_json::Value) -> bool {
    e["event"] == "command_issued" && e["action"]["action"] == "stop"
}

fn position(
    journal: &[serde_json::Value],
    f: impl Fn(&serde_json::Value) -> bool,
) -> Option<usize> {
    journal.iter().position(f)
}

/// The detail a command id's result was journaled with.
fn result_of(journal: &[serde_json::Value], id: &serde_json::Value) -> Option<String> {
    journal
        .iter()
        .find(|e| {
            (e["event"] == "command_succeeded" || e["event"] == "command_failed") && e["id"] == *id
        })
        .and_then(|e| e["detail"].as_str().map(str::to_owned))
}

/// `GET /health` as JSON.
fn health(app: &SqlApp) -> Result<serde_json::Value> {
    let (code, body) = app.http("GET", "/health")?;
    anyhow::ensure!(code == 200, "GET /health answered {code}: {body}");
    Ok(serde_json::from_str(&body)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_upgrade_backs_up_first_and_keeps_every_row() -> Result<()> {
    let app = SqlApp::start("backup = \"required\"\n").await?;
    app.write_dotenv(&[(V2_SETTING, "redis://127.0.0.1:6379")])?;
    app.publish(&SqlRelease::v2())?;
    let names = app.write_items("pre", 20)?;
    let before = app.row_counts()?;
    assert_eq!(before, "items 20\nnotes 0\n");
    assert_eq!(health(&app)?["schema"], 2);

    // The dry run names the agent's own check with its command, and the
    // backup, before the in-place upgrade.
    let (code, plan, stderr) =
        tokio::task::block_in_place(|| app.baton_json(&["plan", "--to", "v2"]))?;
    assert_eq!(code, 0, "plan: {stderr}\n{plan:#}");
    let actions: Vec<&str> = plan["steps"]
        .as_array()
        .context("steps")?
        .iter()
        .map(|s| s["action"].as_str().unwrap_or_default())
        .collect();
    let doctor = format!("{} doctor --db ", bin("sqlapp").display());
    assert!(
        actions.len() == 5
            && actions[0].starts_with("stage v2 on every member")
            && actions[1].starts_with("check the staged v2: doctor (`")
            && actions[1].contains(&doctor)
            && actions[2].starts_with("back up")
            && actions[3].starts_with("upgrade in place"),
        "{plan:#}"
    );
    assert_eq!(plan["steps"][1]["member"], MEMBER, "{plan:#}");

    let (code, out, stderr) =
        tokio::task::block_in_place(|| app.baton_json(&["upgrade", "--to", "v2"]))?;
    assert_eq!(code, 0, "baton upgrade succeeds: {stderr}\n{out:#}");

    // Backed up, test-restored and verified, holding every row written.
    let b = &out["summary"]["backup"];
    assert_eq!(b["state"], "verified", "{out:#}");
    assert_eq!(b["verified"], true);
    assert_eq!(
        b["revision"], 20,
        "the highest item id, read from the backup file"
    );
    let journal = app.journal()?;
    let verified = position(&journal, |e| e["event"] == "backup_verified").context("verified")?;
    let stop = position(&journal, is_stop).context("a stop")?;
    assert!(verified < stop, "the backup was verified before the stop");
    let backup_issued = journal
        .iter()
        .find(|e| e["event"] == "command_issued" && e["action"]["action"] == "backup")
        .context("backup issued")?;
    let taken = result_of(&journal, &backup_issued["id"]).context("backup result")?;
    assert!(
        taken.contains("test-restored into a scratch dir: revision 20"),
        "{taken}"
    );
    // The stored bytes are a database with every row.
    let id = b["id"].as_str().context("backup id")?;
    let dir = app.store_dir.join("backups/e2e").join(id);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json"))?)?;
    let mut bytes = Vec::new();
    for i in 0..manifest["parts"].as_array().context("parts")?.len() {
        bytes.extend(std::fs::read(dir.join(format!("part-{i:05}")))?);
    }
    let copy = app.dir.path().join("from-store.db");
    std::fs::write(&copy, bytes)?;
    let out_status = std::process::Command::new(baton_harness::bin("sqlapp"))
        .args(["status", "--db"])
        .arg(&copy)
        .output()?;
    assert_eq!(String::from_utf8(out_status.stdout)?, before);

    // Upgraded in place: no handover, one stop, and the snapshot taken just
    // before it equals the one after the start.
    assert!(
        !journal
            .iter()
            .any(|e| e["event"] == "command_issued" && e["action"]["action"] == "step_down"),
        "a single member hands over to no one"
    );
    let stops: Vec<_> = journal.iter().filter(|e| is_stop(e)).collect();
    assert_eq!(stops.len(), 1);
    let stopped = result_of(&journal, &stops[0]["id"]).context("stop result")?;
    assert!(
        stopped.contains("snapshot before the stop: items 20, notes 0"),
        "{stopped}"
    );
    assert!(
        app.agent_log()
            .contains("snapshot after the start equals the one taken before the stop"),
        "the agent compared the snapshots"
    );

    // v2 serves every row written before, at schema 3.
    let h = health(&app)?;
    assert_eq!(
        (h["version"].as_str(), h["schema"].as_u64()),
        (Some("v2"), Some(3))
    );
    assert_eq!(app.read_items()?, names);
    assert_eq!(app.row_counts()?, before);
    let s = app.status()?;
    let r = s.members[0].report.as_ref().context("report")?;
    assert_eq!(
        (r.state.release.as_str(), r.state.health),
        ("v2", Health::Healthy)
    );
    assert_eq!(r.state.format_version, 3);

    // Migrations are forward-only: v1 cannot read schema 3, so a plain
    // rollback is refused, naming the member and the formats.
    let (code, out, stderr) = tokio::task::block_in_place(|| app.baton_json(&["rollback"]))?;
    assert_ne!(code, 0, "a rollback across formats is refused: {out:#}");
    let text = format!("{stderr}\n{out}");
    assert!(
        text.contains("member app1 has data format 3 but v1 reads only format 2"),
        "{text}"
    );
    assert_eq!(
        health(&app)?["version"],
        "v2",
        "the refusal touched nothing"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_migration_fails_the_health_wait_and_goes_back_with_every_row() -> Result<()> {
    // The health wait is what catches it (Piprio's); the member's crashes
    // are tolerated so that the wait runs out.
    let app =
        SqlApp::start("backup = \"required\"\nhealth_timeout_ms = 8000\nstart_retries = 1000\n")
            .await?;
    app.write_dotenv(&[(V2_SETTING, "redis://127.0.0.1:6379")])?;
    app.publish(&SqlRelease {
        break_last_migration: true,
        ..SqlRelease::v2()
    })?;
    let names = app.write_items("pre", 15)?;
    let before = app.row_counts()?;

    let (code, out, stderr) =
        tokio::task::block_in_place(|| app.baton_json(&["upgrade", "--to", "v2"]))?;
    assert_eq!(code, 3, "the rollout paused: {stderr}\n{out:#}");
    assert!(
        stderr.contains(&format!(
            "member {MEMBER} did not become healthy on v2 within 8s"
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("next: app1 failed on v2 and was put back on v1"),
        "the rollback hint is printed: {stderr}"
    );
    assert_eq!(out["summary"]["backup"]["state"], "verified", "{out:#}");

    // v2 ran its migration, which failed half way and was rolled back.
    let member_log = std::fs::read_to_string(app.agent_dir.join("member.log"))?;
    assert!(
        member_log.contains("migration 3 (add items.tag) failed")
            && member_log.contains("it was rolled back, the schema stays at 2"),
        "{member_log}"
    );
    // Back on v1, serving, at schema 2, with every row.
    let journal = app.journal()?;
    let failed = position(&journal, |e| e["event"] == "gate_failed").context("gate failed")?;
    assert!(
        journal[failed..]
            .iter()
            .any(|e| e["event"] == "command_issued"
                && e["action"]["action"] == "switch"
                && e["action"]["version"] == "v1"),
        "switched back to v1 after the failed gate"
    );
    let s = app
        .wait_status("app1 healthy on v1", Duration::from_secs(20), |s| {
            s.members[0]
                .report
                .as_ref()
                .is_some_and(|r| r.state.release == "v1" && r.state.health == Health::Healthy)
        })
        .await?;
    assert_eq!(s.leader.as_ref().map(|l| l.as_str()), Some(MEMBER));
    let h = health(&app)?;
    assert_eq!(
        (h["version"].as_str(), h["schema"].as_u64()),
        (Some("v1"), Some(2))
    );
    assert_eq!(app.read_items()?, names);
    assert_eq!(app.row_counts()?, before);

    // Piprio's back-out: restore the pre-upgrade backup too. The paused
    // rollout is closed, the backup put back on v1, every row as before.
    let (code, out, stderr) = tokio::task::block_in_place(|| {
        app.baton_json(&["rollback", "--restore", "--confirm", "e2e"])
    })?;
    assert_eq!(code, 0, "rollback --restore: {stderr}\n{out:#}");
    assert!(stderr.contains("will be lost"), "the loss window: {stderr}");
    let journal = app.journal()?;
    assert!(
        journal.iter().any(|e| e["event"] == "command_succeeded"
            && e["detail"]
                .as_str()
                .is_some_and(|d| d.contains("with the restore command"))),
        "the backup was restored with the app's own restore command"
    );
    app.wait_status(
        "app1 healthy on v1 after the restore",
        Duration::from_secs(20),
        |s| {
            s.members[0]
                .report
                .as_ref()
                .is_some_and(|r| r.state.release == "v1" && r.state.health == Health::Healthy)
        },
    )
    .await?;
    assert_eq!(app.read_items()?, names);
    assert_eq!(app.row_counts()?, before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_setting_is_refused_by_the_releases_check_and_nothing_is_touched() -> Result<()> {
    let app = SqlApp::start("backup = \"required\"\n").await?;
    // No .env, and the agent's environment has no SQLAPP_REDIS_URL.
    app.publish(&SqlRelease::v2())?;
    let names = app.write_items("pre", 5)?;
    let pid = app.member_pid().context("the app's pid")?;

    let (code, out, stderr) =
        tokio::task::block_in_place(|| app.baton_json(&["upgrade", "--to", "v2"]))?;
    assert_eq!(code, 3, "the rollout is refused: {stderr}\n{out:#}");
    let reason = out["rollout"]["state"]["phase"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("check:setting SQLAPP_REDIS_URL failed")
            && reason
                .contains("release v2 requires the setting SQLAPP_REDIS_URL, which is missing")
            && reason.contains("nothing was stopped"),
        "{reason}\n{out:#}"
    );

    // Nothing touched: no stop, the same process on v1, every row served.
    let journal = app.journal()?;
    assert_eq!(position(&journal, is_stop), None, "nothing was stopped");
    assert_eq!(app.member_pid(), Some(pid), "the same app process serves");
    let s = app.status()?;
    let r = s.members[0].report.as_ref().context("report")?;
    assert_eq!(
        (r.state.release.as_str(), r.state.health),
        ("v1", Health::Healthy)
    );
    assert_eq!(
        std::fs::read_link(app.base_dir.join("current"))?,
        std::path::Path::new("releases/v1")
    );
    assert_eq!(app.read_items()?, names);
    assert_eq!(health(&app)?["schema"], 2);

    // With the setting added, resume goes on and upgrades it.
    app.write_dotenv(&[(V2_SETTING, "redis://127.0.0.1:6379")])?;
    let (code, _, stderr) = tokio::task::block_in_place(|| app.baton_json(&["resume"]))?;
    assert_eq!(code, 0, "resume: {stderr}");
    let (code, out, stderr) = tokio::task::block_in_place(|| app.baton_json(&["watch"]))?;
    assert_eq!(code, 0, "watch: {stderr}\n{out:#}");
    assert_eq!(health(&app)?["version"], "v2");
    assert_eq!(app.read_items()?, names);
    Ok(())
}
