//! Table tests of the `state-disk` preflight check (the coordinator's
//! state dir and every agent's must have room for their journals), and of
//! the artifact check when a full disk or a failing store left the
//! artifact unverified.

#![allow(clippy::unwrap_used)]

mod common;

use baton_planner::Policy;
use baton_planner::preflight::{ArtifactVerdict, MIN_STATE_DISK_FREE, PreflightInput, preflight};
use common::*;

/// The `state-disk` checks that fail, as (member, detail).
fn refusals(agent_free: &[(&str, u64)], coordinator: Option<u64>) -> Vec<(String, String)> {
    let mut view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    for (m, free) in agent_free {
        let v = view.members.get_mut(&id(m)).unwrap();
        v.report.as_mut().unwrap().resources.state_disk_free_bytes = *free;
    }
    let artifact = ArtifactVerdict::Verified {
        release: target(),
        size: 1,
    };
    preflight(
        &PreflightInput {
            view: &view,
            target_version: "v2",
            artifact: &artifact,
            required_disk: 0,
            allow_mixed: false,
            coordinator_state_free: coordinator,
        },
        &Policy::default(),
    )
    .into_iter()
    .filter(|c| c.check == "state-disk" && !c.ok)
    .map(|c| {
        (
            c.member.map(|m| m.to_string()).unwrap_or_default(),
            c.detail,
        )
    })
    .collect()
}

#[test]
fn every_state_dir_needs_room_for_its_journal() {
    let min = MIN_STATE_DISK_FREE;
    assert_eq!(min, 16 << 20);
    assert_eq!(
        refusals(&[], Some(min)),
        vec![],
        "exactly the minimum passes"
    );
    assert_eq!(Policy::default().min_state_disk_free, min);
    let got = refusals(&[("n2", min - 1)], Some(min));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "n2");
    assert!(
        got[0].1.starts_with(&format!(
            "member n2's agent state_dir has {} bytes free",
            min - 1
        )) && got[0].1.contains("one it cannot journal is refused")
            && got[0].1.contains("policy.min_state_disk_free_bytes"),
        "{got:?}"
    );
    let got = refusals(&[], Some(4096));
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "", "the coordinator's own, with no member");
    assert!(
        got[0]
            .1
            .starts_with("the coordinator's state_dir has 4096 bytes free"),
        "{got:?}"
    );
    // An agent that reports no figure (older than the coordinator) fails
    // closed, and says why.
    let got = refusals(&[("n3", 0)], None);
    assert!(
        got[0].1.contains("an agent older than this coordinator"),
        "{got:?}"
    );
}

/// An artifact the coordinator could not check (its store or its scratch
/// space failed) fails the artifact check as unverified, saying so, and is
/// never called missing.
#[test]
fn an_unverifiable_artifact_fails_as_such_and_not_as_missing() {
    let view = cluster(&[("n1", L, 100), ("n2", F, 100), ("n3", F, 100)]);
    let artifact = ArtifactVerdict::Unverifiable {
        detail: "artifact store I/O on /s/kv/v2/artifact.tar: Input/output error".into(),
    };
    let failed: Vec<String> = preflight(
        &PreflightInput {
            view: &view,
            target_version: "v2",
            artifact: &artifact,
            required_disk: 0,
            allow_mixed: false,
            coordinator_state_free: None,
        },
        &Policy::default(),
    )
    .into_iter()
    .filter(|c| c.check == "artifact" && !c.ok)
    .map(|c| c.detail)
    .collect();
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].starts_with("release v2 could not be verified: artifact store I/O"),
        "{failed:?}"
    );
    assert!(
        !failed[0].contains("not in the artifact store"),
        "{failed:?}"
    );
}
