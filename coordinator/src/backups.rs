//! Backup retention: which of the cluster's stored backups a prune may
//! delete, and why the others stay.
//!
//! A rollout's pre-upgrade backup is pinned while the rollout is not
//! finalized (running, paused: a `rollback --restore` may need it), and for
//! `keep_for` after it completed or closed. A backup whose id names a
//! rollout this coordinator has not journaled is pinned too: it may be the
//! upload of a rollout that started after the history was read, or another
//! coordinator's, and a prune that guesses wrong destroys the only copy.
//! Pure functions over the listing and the rollouts; the operator service
//! does the store IO.

use std::time::Duration;

use baton_domain::{StoredBackup, StoredBackupDetail, UnixMs};
use baton_planner::rollout::RolloutState;
use baton_store::backup::BackupListing;

/// Where the backups are and how long a finalized rollout's stays.
#[derive(Clone, Debug)]
pub struct BackupStore {
    pub store: std::sync::Arc<dyn baton_store::backup::BlobStore>,
    pub cluster: String,
    pub keep_for: Duration,
}

/// The rollout a backup id names: `<rollout>-b<n>.<journal>` (or
/// `<rollout>-b<n>`), as the planner makes them.
pub fn rollout_of(id: &str) -> Option<&str> {
    let id = match id.rsplit_once('.') {
        Some((head, journal))
            if !journal.is_empty() && journal.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            head
        }
        _ => id,
    };
    let (rollout, n) = id.rsplit_once("-b")?;
    (!rollout.is_empty() && !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .then_some(rollout)
}

fn day_of(ms: u64) -> String {
    crate::alerts::rfc3339(UnixMs(ms))
}

/// Why retention keeps backup `id` at `now`; None when nothing does.
fn pin(id: &str, rollouts: &[&RolloutState], now: UnixMs, keep_for: Duration) -> Option<String> {
    let Some(name) = rollout_of(id) else {
        return Some(
            "its id names no rollout (not <rollout>-b<n>), so baton did not take it; delete it with the store's own tools if it is not needed"
                .to_owned(),
        );
    };
    let Some(r) = rollouts.iter().find(|r| r.id == name) else {
        return Some(format!(
            "rollout {name} is not in this coordinator's journal"
        ));
    };
    if !r.phase.is_terminal() {
        return Some(format!(
            "rollout {name} is {}; pinned until it is finalized",
            r.phase.kind()
        ));
    }
    // Done without a completion time (closed before it began): from its start.
    let finished = r.completed_at.unwrap_or(r.started_at).0;
    let until = finished.saturating_add(keep_for.as_millis() as u64);
    (now.0 < until).then(|| {
        format!(
            "rollout {name} was finalized at {}; pinned until {} (backup_keep_days)",
            day_of(finished),
            day_of(until)
        )
    })
}

/// The listing as the operator sees it, each backup with its pin.
pub fn stored(
    listings: Vec<BackupListing>,
    rollouts: &[&RolloutState],
    now: UnixMs,
    keep_for: Duration,
) -> Vec<StoredBackup> {
    listings
        .into_iter()
        .map(|BackupListing { id, manifest }| StoredBackup {
            rollout: rollout_of(&id).map(str::to_owned),
            pinned: pin(&id, rollouts, now, keep_for),
            complete: manifest.map(|m| StoredBackupDetail {
                member: m.member,
                adapter: m.adapter,
                bytes: m.bytes,
                sha256: m.sha256,
                revision: m.revision,
                release: m.release,
                release_format: m.release_format,
                parts: m.parts.len() as u32,
                created_at: UnixMs(m.created_unix_ms),
                baton_version: m.baton_version,
            }),
            id,
        })
        .collect()
}

/// What a prune deletes and what it keeps (each kept one says why in
/// `pinned`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrunePlan {
    pub delete: Vec<StoredBackup>,
    pub keep: Vec<StoredBackup>,
}

/// Keeps the `keep` newest complete backups and every pinned one; deletes
/// the rest, including incomplete leftovers of failed uploads that nothing
/// pins. Never deletes a pinned backup.
pub fn prune_plan(mut backups: Vec<StoredBackup>, keep: usize) -> PrunePlan {
    // Newest first; incomplete ones (no time) last.
    backups
        .sort_by_key(|b| std::cmp::Reverse(b.complete.as_ref().map_or(0, |d| d.created_at.0 + 1)));
    let mut plan = PrunePlan {
        delete: Vec::new(),
        keep: Vec::new(),
    };
    let mut newest = 0;
    for mut b in backups {
        if b.complete.is_some() && newest < keep {
            newest += 1;
            if b.pinned.is_none() {
                b.pinned = Some(format!(
                    "one of the newest {keep} complete backups (--keep)"
                ));
            }
            plan.keep.push(b);
        } else if b.pinned.is_some() {
            plan.keep.push(b);
        } else {
            plan.delete.push(b);
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use baton_domain::{MemberId, Phase, ReleaseRef};
    use baton_planner::rollout::Event;
    use baton_store::backup::BackupManifest;

    use super::*;

    const DAY: u64 = 86_400_000;

    fn manifest(id: &str, created: u64) -> BackupManifest {
        BackupManifest {
            format: 1,
            cluster: "c1".into(),
            id: id.into(),
            member: "n2".into(),
            adapter: "samplekv".into(),
            revision: 7,
            release: "v1".into(),
            release_format: 1,
            baton_version: "0.1.0".into(),
            created_unix_ms: created,
            bytes: 3,
            sha256: "a".repeat(64),
            part_size: 8,
            parts: vec![],
        }
    }

    fn listing(id: &str, created: Option<u64>) -> BackupListing {
        BackupListing {
            id: id.into(),
            manifest: created.map(|t| manifest(id, t)),
        }
    }

    fn rollout(id: &str, phase: Phase, completed: Option<u64>) -> RolloutState {
        let n = |s: &str| MemberId::new(s).unwrap();
        let mut r = RolloutState::start(&Event::Started {
            by: None,
            id: id.into(),
            target: ReleaseRef {
                name: "kv".into(),
                version: "v2".into(),
                format_version: 1,
                sha256: "b".repeat(64),
            },
            previous: "v1".into(),
            order: vec![n("n2"), n("n3"), n("n1")],
            leader: n("n1"),
            at: UnixMs(0),
            journal: None,
        })
        .unwrap();
        r.phase = phase;
        r.completed_at = completed.map(UnixMs);
        r
    }

    #[test]
    fn ids_name_their_rollout() {
        assert_eq!(rollout_of("r1-v2-b1"), Some("r1-v2"));
        assert_eq!(rollout_of("r12-v3-b10"), Some("r12-v3"));
        assert_eq!(rollout_of("r1-v2-b1.5f3a9c1e07d2"), Some("r1-v2"));
        assert_eq!(rollout_of("r1-3.5.1-b2.5f3a9c1e07d2"), Some("r1-3.5.1"));
        assert_eq!(rollout_of("r1-3.5.1-b2"), Some("r1-3.5.1"));
        assert_eq!(rollout_of("r1-v2-bx"), None);
        assert_eq!(rollout_of("-b1"), None);
        assert_eq!(rollout_of("manual"), None);
    }

    #[test]
    fn pins_follow_the_rollout_and_the_keep_window() {
        let running = rollout("r3-v4", Phase::Running, None);
        let paused = rollout("r2-v3", Phase::Paused { reason: "x".into() }, None);
        let old = rollout("r1-v2", Phase::Completed, Some(DAY));
        let rollouts = [&running, &paused, &old];
        let keep = Duration::from_millis(7 * DAY);
        let got = stored(
            vec![
                listing("r1-v2-b1", Some(DAY)),
                listing("r2-v3-b1", Some(2 * DAY)),
                listing("r3-v4-b2", None),
                listing("r9-v9-b1", Some(3 * DAY)),
                listing("manual", Some(3 * DAY)),
            ],
            &rollouts,
            UnixMs(5 * DAY),
            keep,
        );
        let pins: Vec<_> = got.iter().map(|b| b.pinned.clone()).collect();
        assert!(
            pins[0].as_deref().unwrap().contains(
                "finalized at 1970-01-02T00:00:00.000Z; pinned until 1970-01-09T00:00:00.000Z"
            ),
            "{pins:?}"
        );
        assert!(
            pins[1]
                .as_deref()
                .unwrap()
                .contains("rollout r2-v3 is paused"),
            "{pins:?}"
        );
        assert!(
            pins[2]
                .as_deref()
                .unwrap()
                .contains("rollout r3-v4 is running"),
            "{pins:?}"
        );
        assert!(
            pins[3]
                .as_deref()
                .unwrap()
                .contains("r9-v9 is not in this coordinator's journal"),
            "{pins:?}"
        );
        assert!(
            pins[4].as_deref().unwrap().contains("names no rollout"),
            "{pins:?}"
        );
        assert_eq!(got[2].complete, None);
        assert_eq!(got[0].rollout.as_deref(), Some("r1-v2"));

        // Eight days after it finished, the old rollout's backup is free.
        let later = stored(
            vec![listing("r1-v2-b1", Some(DAY))],
            &rollouts,
            UnixMs(9 * DAY),
            keep,
        );
        assert_eq!(later[0].pinned, None);
    }

    #[test]
    fn prune_keeps_the_newest_and_every_pinned_one() {
        let free = |id: &str, t: Option<u64>| StoredBackup {
            id: id.into(),
            rollout: None,
            complete: listing(id, t).manifest.map(|m| StoredBackupDetail {
                member: m.member,
                adapter: m.adapter,
                bytes: m.bytes,
                sha256: m.sha256,
                revision: m.revision,
                release: m.release,
                release_format: m.release_format,
                parts: 0,
                created_at: UnixMs(m.created_unix_ms),
                baton_version: m.baton_version,
            }),
            pinned: None,
        };
        let pinned = |id: &str, t: Option<u64>| StoredBackup {
            pinned: Some("rollout is running".into()),
            ..free(id, t)
        };
        let backups = vec![
            free("a", Some(1)),
            pinned("b", Some(2)),
            free("c", Some(3)),
            free("d", Some(4)),
            free("torn", None),
            pinned("uploading", None),
        ];
        let ids = |v: &[StoredBackup]| v.iter().map(|b| b.id.clone()).collect::<Vec<_>>();
        let plan = prune_plan(backups.clone(), 1);
        assert_eq!(ids(&plan.delete), ["c", "a", "torn"]);
        assert_eq!(ids(&plan.keep), ["d", "b", "uploading"]);
        assert!(plan.keep[0].pinned.as_deref().unwrap().contains("newest 1"));
        // keep 0: only pins survive.
        let plan = prune_plan(backups.clone(), 0);
        assert_eq!(ids(&plan.keep), ["b", "uploading"]);
        // keep more than there are: only torn leftovers go.
        let plan = prune_plan(backups, 10);
        assert_eq!(ids(&plan.delete), ["torn"]);
    }
}
