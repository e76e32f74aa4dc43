//! Tables and summaries: how the CLI shows a fleet status, preflight
//! checks, a rollout, and what a finished rollout took. Pure functions of
//! domain values; no IO.

use std::fmt::Write as _;

use baton_domain::{Check, FleetStatus, Phase, Rollout, StoredBackup};
use serde::Serialize;

use crate::conn::{BackupList, Pruned, RolloutView};

/// What a finished rollout took, for the end-of-run summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub rollout: String,
    pub target: String,
    pub outcome: String,
    pub order: Vec<String>,
    pub handover_target: Option<String>,
    pub leader_changes: usize,
    /// Per member: from its stop to its last gate, in ms.
    pub step_ms: Vec<(String, u64)>,
    pub total_ms: u64,
    pub backup: BackupLine,
    /// Who started it (`operator/<name>`, or `local`), when recorded.
    pub started_by: Option<String>,
    /// Every control event someone asked for, with who and when.
    pub audit: Vec<baton_domain::Audit>,
}

/// The pre-upgrade backup, as the summary shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BackupLine {
    /// `verified`, `skipped`, `failed`, `pending`, `taking`, `taken`.
    pub state: String,
    pub id: Option<String>,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    pub revision: Option<u64>,
    pub location: Option<String>,
    /// True only when the coordinator re-read every part from the store.
    pub verified: bool,
    /// Why there is none (skipped or failed).
    pub reason: Option<String>,
}

impl BackupLine {
    fn of(state: &baton_domain::BackupState) -> BackupLine {
        use baton_domain::BackupState as B;
        let mut line = BackupLine {
            state: state.name().to_owned(),
            ..BackupLine::default()
        };
        match state {
            B::Pending => {}
            B::Taking { id, .. } | B::Taken { id, .. } => line.id = Some(id.clone()),
            B::Verified(s) => {
                line.id = Some(s.id.clone());
                line.bytes = Some(s.bytes);
                line.sha256 = Some(s.sha256.clone());
                line.revision = Some(s.revision);
                line.location = Some(s.location.clone());
                line.verified = true;
            }
            B::Failed { id, reason } => {
                line.id = Some(id.clone());
                line.reason = Some(reason.clone());
            }
            B::Skipped { reason } => line.reason = Some(reason.clone()),
        }
        line
    }

    /// One line for the table summary.
    pub fn text(&self) -> String {
        match (self.verified, &self.id) {
            (true, Some(id)) => format!(
                "{id}, {} bytes, sha256 {}, revision {}, verified in {}",
                self.bytes.unwrap_or(0),
                self.sha256.as_deref().unwrap_or(""),
                self.revision.unwrap_or(0),
                self.location.as_deref().unwrap_or("")
            ),
            _ => match (&self.id, &self.reason) {
                (Some(id), Some(reason)) => format!("{} {id}: {reason}", self.state),
                (None, Some(reason)) => format!("{}: {reason}", self.state),
                (Some(id), None) => format!("{} {id}", self.state),
                (None, None) => self.state.clone(),
            },
        }
    }
}

pub fn summary(r: &Rollout) -> Summary {
    // A paused rollout has no end yet: its last recorded step is as far as
    // it got.
    let end = r.completed_at.unwrap_or_else(|| {
        let finished = r.members.values().filter_map(|p| p.finished_at);
        let issued = r.commands.values().map(|c| c.issued_at);
        finished.chain(issued).max().unwrap_or(r.started_at)
    });
    Summary {
        rollout: r.id.clone(),
        target: r.target.version.clone(),
        outcome: match r.phase.reason() {
            Some(reason) => format!("{}: {reason}", r.phase.kind()),
            None => r.phase.kind().to_owned(),
        },
        order: r.order.iter().map(|m| m.to_string()).collect(),
        handover_target: r.leader_changes.first().map(|(m, _)| m.to_string()),
        leader_changes: r.leader_changes.len(),
        step_ms: r
            .order
            .iter()
            .filter_map(|m| {
                let p = r.members.get(m)?;
                let d = p.finished_at?.since(p.started_at?);
                Some((
                    m.to_string(),
                    u64::try_from(d.as_millis()).unwrap_or(u64::MAX),
                ))
            })
            .collect(),
        total_ms: u64::try_from(end.since(r.started_at).as_millis()).unwrap_or(u64::MAX),
        backup: BackupLine::of(&r.backup.state),
        started_by: r
            .audit
            .iter()
            .find(|a| a.what == "started")
            .map(|a| a.by.clone()),
        audit: r.audit.clone(),
    }
}

/// What the operator can do next about a paused rollout, true to where each
/// member is: which were put back, which stay on the new release.
pub fn paused_hint(r: &Rollout) -> String {
    use baton_domain::Stage;
    let named = |f: &dyn Fn(&Stage) -> bool| -> Vec<String> {
        r.order
            .iter()
            .filter(|m| r.members.get(*m).is_some_and(|p| f(&p.stage)))
            .map(|m| m.to_string())
            .collect()
    };
    let put_back = named(&|s| matches!(s, Stage::Reverted { .. }));
    let moved = named(&|s| {
        !matches!(
            s,
            Stage::Pending | Stage::Staged | Stage::Reverted { .. } | Stage::Reverting { .. }
        )
    });
    let reverting = named(&|s| matches!(s, Stage::Reverting { .. }));
    let mut out = Vec::new();
    if !put_back.is_empty() {
        out.push(format!(
            "{} failed on {} and {} put back on {}: fix the release, then `baton resume --retry`",
            put_back.join(", "),
            r.target.version,
            if put_back.len() == 1 { "was" } else { "were" },
            r.previous
        ));
    }
    if !reverting.is_empty() {
        out.push(format!(
            "{} did not finish going back to {}: check it first",
            reverting.join(", "),
            r.previous
        ));
    }
    if moved.is_empty() {
        out.push(format!(
            "every member is still on {}; `baton rollback` closes this rollout",
            r.previous
        ));
    } else {
        out.push(format!(
            "{} {} on {}; fix the cause, then `baton resume`, or `baton rollback` to put {} back on {}",
            moved.join(", "),
            if moved.len() == 1 { "is" } else { "are" },
            r.target.version,
            if moved.len() == 1 { "it" } else { "them" },
            r.previous
        ));
    }
    out.join("\nnext: ")
}

/// One line per check, failures first.
pub fn render_checks(checks: &[Check]) -> String {
    let mut out = String::new();
    let mut sorted: Vec<&Check> = checks.iter().collect();
    sorted.sort_by_key(|c| c.ok);
    for c in sorted {
        let member = c.member.as_ref().map_or("-".to_owned(), |m| m.to_string());
        let _ = writeln!(
            out,
            "{} {:<9} {:<8} {}",
            if c.ok { "ok  " } else { "FAIL" },
            c.check,
            member,
            c.detail
        );
    }
    out
}

/// One line per member: stage, and the rollout's phase and wait reason.
pub fn render_rollout(v: &RolloutView) -> String {
    let r = &v.state;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rollout {} -> {}  {}  {}",
        r.id,
        r.target.version,
        match r.phase {
            Phase::Paused { .. } => "PAUSED",
            _ => r.phase.kind(),
        },
        v.waiting_for
    );
    for m in &r.order {
        if let Some(p) = r.members.get(m) {
            let lead = if *m == r.original_leader {
                " (leader at start)"
            } else {
                ""
            };
            let _ = writeln!(out, "  {:<8} {:<12}{}", m, p.stage.name(), lead);
        }
    }
    out
}

fn age(ms: Option<u64>) -> String {
    match ms {
        None => "never".to_owned(),
        Some(ms) if ms < 10_000 => format!("{:.1}s ago", ms as f64 / 1000.0),
        Some(ms) => format!("{}s ago", ms / 1000),
    }
}

/// One row per member: member, role, release, revision, lag, health, last seen.
pub fn render_status(s: &FleetStatus) -> String {
    let mut out = String::new();
    let leader = s.leader.as_ref().map_or("none", |l| l.as_str());
    let _ = writeln!(out, "cluster {}  leader {}", s.cluster, leader);
    let _ = writeln!(
        out,
        "{:<10} {:<10} {:<9} {:>10} {:>8} {:<10} LAST SEEN",
        "MEMBER", "ROLE", "RELEASE", "REVISION", "LAG", "HEALTH"
    );
    for row in &s.members {
        let (role, release, revision, health) = match &row.report {
            Some(r) => (
                r.state.role.to_string(),
                if r.state.release.is_empty() {
                    "-".to_owned()
                } else {
                    r.state.release.clone()
                },
                r.state.applied_revision.to_string(),
                r.state.health.to_string(),
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let lag = row.lag.map_or("-".to_owned(), |l| l.to_string());
        let mut seen = age(row.last_seen_ms_ago);
        if !row.connected {
            seen.push_str(" (agent not connected)");
        } else if !row.fresh {
            seen.push_str(" (stale)");
        }
        let _ = writeln!(
            out,
            "{:<10} {:<10} {:<9} {:>10} {:>8} {:<10} {}",
            row.member, role, release, revision, lag, health, seen
        );
    }
    out
}

/// `bytes` in B, KiB, MiB or GiB.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 3] = ["KiB", "MiB", "GiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (cell, w) in cells.zip(&widths) {
            let _ = write!(text, "{cell:<w$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut out, &mut header.iter().copied());
    for row in rows {
        line(&mut out, &mut row.iter().map(String::as_str));
    }
    out
}

fn backup_rows(backups: &[StoredBackup]) -> Vec<Vec<String>> {
    backups
        .iter()
        .map(|b| {
            let pinned = b.pinned.clone().unwrap_or_else(|| "-".into());
            match &b.complete {
                Some(d) => vec![
                    b.id.clone(),
                    "complete".into(),
                    size(d.bytes),
                    d.revision.to_string(),
                    d.member.clone(),
                    format!("{} (format {})", d.release, d.release_format),
                    d.created_at.rfc3339(),
                    pinned,
                ],
                None => vec![
                    b.id.clone(),
                    "incomplete".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    pinned,
                ],
            }
        })
        .collect()
}

const BACKUP_HEADER: [&str; 8] = [
    "ID", "STATE", "SIZE", "REVISION", "MEMBER", "RELEASE", "CREATED", "PINNED",
];

/// `baton backups list`: one row per backup, newest id last.
pub fn render_backups(l: &BackupList) -> String {
    let mut out = format!(
        "backups in {} (a finalized rollout's stays pinned for {} days):\n",
        l.location, l.keep_days
    );
    if l.backups.is_empty() {
        out.push_str("no backups\n");
        return out;
    }
    out.push_str(&table(&BACKUP_HEADER, &backup_rows(&l.backups)));
    out
}

/// `baton backups prune`: what went (or would) and what stayed, with why.
pub fn render_pruned(p: &Pruned) -> String {
    let verb = if p.dry_run { "would delete" } else { "deleted" };
    let mut out = format!("{verb} {} backup(s) in {}", p.deleted.len(), p.location);
    if p.deleted.is_empty() {
        out.push('\n');
    } else {
        let ids: Vec<&str> = p.deleted.iter().map(|b| b.id.as_str()).collect();
        let _ = writeln!(out, ": {}", ids.join(", "));
    }
    if !p.kept.is_empty() {
        let _ = writeln!(out, "kept {}:", p.kept.len());
        out.push_str(&table(&BACKUP_HEADER, &backup_rows(&p.kept)));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use baton_domain::{
        MemberId, MemberProgress, MemberRow, ReleaseRef, Role, Stage, UnixMs, fixtures,
    };

    use super::*;

    fn rollout(phase: Phase) -> Rollout {
        let (n1, n2) = (MemberId::new("n1").unwrap(), MemberId::new("n2").unwrap());
        let progress = |stage, started: Option<u64>, finished: Option<u64>| MemberProgress {
            stage,
            inflight: None,
            started_at: started.map(UnixMs),
            finished_at: finished.map(UnixMs),
        };
        Rollout {
            audit: Vec::new(),
            id: "r1-v2".into(),
            target: ReleaseRef {
                name: "samplekv".into(),
                version: "v2".into(),
                format_version: 1,
                sha256: String::new(),
            },
            previous: "v1".into(),
            order: vec![n2.clone(), n1.clone()],
            original_leader: n1.clone(),
            phase,
            members: BTreeMap::from([
                (n1.clone(), progress(Stage::Pending, None, None)),
                (n2.clone(), progress(Stage::Done, Some(2), Some(6))),
            ]),
            commands: BTreeMap::new(),
            handover: None,
            leader_changes: vec![(n2.clone(), UnixMs(8))],
            started_at: UnixMs(1),
            completed_at: None,
            backup: baton_domain::RolloutBackup {
                attempts: 1,
                state: baton_domain::BackupState::Verified(baton_domain::BackupSummary {
                    id: "r1-v2-b1".into(),
                    member: n2,
                    bytes: 2048,
                    sha256: "ef".repeat(32),
                    revision: 17,
                    parts: 1,
                    location: "/srv/store".into(),
                    verified_at: UnixMs(2),
                }),
            },
        }
    }

    #[test]
    fn a_rollout_shows_its_phase_and_stages() {
        let paused = Phase::Paused {
            reason: "operator request".into(),
        };
        let view = |phase| RolloutView {
            state: rollout(phase),
            waiting_for: "n2 to catch up".into(),
            version: 0,
        };
        assert_eq!(
            render_rollout(&view(paused.clone())),
            "rollout r1-v2 -> v2  PAUSED  n2 to catch up\n  \
             n2       done        \n  \
             n1       pending      (leader at start)\n"
        );
        assert!(
            render_rollout(&view(Phase::Aborting)).starts_with("rollout r1-v2 -> v2  aborting  ")
        );
        assert!(
            render_rollout(&view(Phase::Pausing {
                reason: "paused by the operator: lunch".into()
            }))
            .starts_with("rollout r1-v2 -> v2  pausing  ")
        );
        let outcomes = [
            Phase::Running,
            paused,
            Phase::Aborting,
            Phase::Completed,
            Phase::Closed {
                reason: "rolled back".into(),
            },
        ]
        .map(|p| summary(&rollout(p)).outcome);
        assert_eq!(
            outcomes,
            [
                "running",
                "paused: operator request",
                "aborting",
                "completed",
                "closed: rolled back"
            ]
        );
        let s = summary(&rollout(Phase::Running));
        assert_eq!(s.order, ["n2", "n1"]);
        assert_eq!(s.handover_target.as_deref(), Some("n2"));
        assert_eq!(
            (s.total_ms, s.step_ms),
            (5, vec![("n2".to_owned(), 4)]),
            "until the last member finished; each from its start to its finish"
        );
        assert_eq!(
            s.backup.text(),
            format!(
                "r1-v2-b1, 2048 bytes, sha256 {}, revision 17, verified in /srv/store",
                "ef".repeat(32)
            )
        );
        let json = serde_json::to_value(&s.backup).unwrap();
        assert_eq!(
            (&json["id"], &json["bytes"], &json["verified"]),
            (
                &serde_json::json!("r1-v2-b1"),
                &serde_json::json!(2048),
                &serde_json::json!(true)
            )
        );
        let skipped = BackupLine::of(&baton_domain::BackupState::Skipped {
            reason: "backup = \"off\" in the policy".into(),
        });
        assert_eq!(skipped.text(), "skipped: backup = \"off\" in the policy");
        assert!(!skipped.verified);
    }

    /// The hint after a pause says where each member really is.
    #[test]
    fn a_paused_hint_is_true_to_each_member() {
        let n1 = MemberId::new("n1").unwrap();
        let n2 = MemberId::new("n2").unwrap();
        let paused = Phase::Paused { reason: "x".into() };
        // n2 finished on v2 and stays there; n1 untouched.
        let hint = paused_hint(&rollout(paused.clone()));
        assert_eq!(
            hint,
            "n2 is on v2; fix the cause, then `baton resume`, or `baton rollback` to put it back on v1"
        );
        assert!(!hint.contains("every member that failed was put back"));
        // The release failed on n2, which was put back: nothing moved.
        let mut failed = rollout(paused.clone());
        failed.members.get_mut(&n2).unwrap().stage = Stage::Reverted {
            reason: "exited".into(),
        };
        assert_eq!(
            paused_hint(&failed),
            "n2 failed on v2 and was put back on v1: fix the release, then `baton resume --retry`\nnext: every member is still on v1; `baton rollback` closes this rollout"
        );
        // A stalled member catching up stays on the new release: say so.
        let mut stalled = rollout(paused);
        stalled.members.get_mut(&n1).unwrap().stage = Stage::CatchingUp { since: UnixMs(9) };
        assert!(
            paused_hint(&stalled).starts_with("n2, n1 are on v2"),
            "{}",
            paused_hint(&stalled)
        );
        // A paused summary counts up to its last step, not 0 ms.
        let mut cut = rollout(Phase::Paused { reason: "x".into() });
        cut.members.get_mut(&n2).unwrap().finished_at = None;
        cut.commands.insert(
            baton_domain::CommandId("r1-v2-1".into()),
            baton_domain::CommandRecord {
                member: n2,
                action: baton_domain::Action::Stop,
                issued_at: UnixMs(41),
                result: None,
            },
        );
        assert_eq!(summary(&cut).total_ms, 40);
    }

    #[test]
    fn renders_one_row_per_member() {
        let n1 = MemberId::new("n1").unwrap();
        let s = FleetStatus {
            cluster: "demo".into(),
            leader: Some(n1.clone()),
            heartbeat_ms: 1000,
            members: vec![
                MemberRow {
                    member: n1.clone(),
                    ever_seen: true,
                    connected: true,
                    fresh: true,
                    last_seen_ms_ago: Some(300),
                    report: Some(fixtures::report("n1", Role::Leader, Some("n1"), 12, 12)),
                    lag: Some(0),
                },
                MemberRow {
                    member: MemberId::new("n2").unwrap(),
                    ever_seen: false,
                    connected: false,
                    fresh: false,
                    last_seen_ms_ago: None,
                    report: None,
                    lag: None,
                },
            ],
        };
        let text = render_status(&s);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(
            lines[2].starts_with("n1")
                && lines[2].contains("leader")
                && lines[2].contains("0.3s ago")
        );
        assert!(lines[3].contains("never (agent not connected)"), "{text}");
    }

    #[test]
    fn backups_render_as_aligned_rows_with_their_pins() {
        use baton_domain::{StoredBackup, StoredBackupDetail};
        let list = crate::BackupList {
            location: "/srv/store".into(),
            keep_days: 7,
            backups: vec![
                StoredBackup {
                    id: "r1-v2-b1".into(),
                    rollout: Some("r1-v2".into()),
                    complete: Some(StoredBackupDetail {
                        member: "orders-kv-0".into(),
                        adapter: "samplekv".into(),
                        bytes: 3 * 1024 * 1024 + 512 * 1024,
                        sha256: "a".repeat(64),
                        revision: 1042,
                        release: "v1".into(),
                        release_format: 1,
                        parts: 1,
                        created_at: UnixMs(1_700_000_000_123),
                        baton_version: "0.1.0".into(),
                    }),
                    pinned: Some("rollout r1-v2 is running; pinned until it is finalized".into()),
                },
                StoredBackup {
                    id: "r0-v1-b1".into(),
                    rollout: Some("r0-v1".into()),
                    complete: None,
                    pinned: None,
                },
            ],
        };
        let text = render_backups(&list);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "backups in /srv/store (a finalized rollout's stays pinned for 7 days):"
        );
        let col = |line: &str, word: &str| line.find(word).unwrap();
        assert_eq!(
            col(lines[1], "PINNED"),
            col(lines[2], "rollout r1-v2 is running")
        );
        assert_eq!(col(lines[1], "SIZE"), col(lines[2], "3.5 MiB"));
        assert!(lines[2].contains("2023-11-14T22:13:20.123Z"));
        assert!(lines[2].contains("v1 (format 1)"));
        assert!(lines[3].starts_with("r0-v1-b1  incomplete"));
        assert_eq!(size(1023), "1023 B");
        assert_eq!(size(1024), "1.0 KiB");
        assert_eq!(size(5 << 30), "5.0 GiB");
    }
}
