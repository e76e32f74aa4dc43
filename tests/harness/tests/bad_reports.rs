//! A malformed Report (unknown role, empty member id, an id that differs from
//! the Hello's) is refused with a clear error, and the FleetView is unchanged.

use std::time::Duration;

use anyhow::Result;
use baton_domain::FleetStatus;
use baton_harness::LoneCoordinator;
use baton_harness::wire::{hello, report};
use baton_proto::v1::{
    self, AgentMessage, agent_link_client::AgentLinkClient, agent_message,
    operator_client::OperatorClient,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Opens a stream, sends `msgs`, and returns the coordinator's verdict on the
/// stream: the status that ended it, or Ok with the open stream's sender.
async fn stream(
    c: &LoneCoordinator,
    msgs: Vec<AgentMessage>,
) -> Result<
    std::result::Result<
        (
            mpsc::Sender<AgentMessage>,
            tonic::Streaming<v1::CoordinatorMessage>,
        ),
        tonic::Status,
    >,
> {
    let (tx, rx) = mpsc::channel(8);
    for m in msgs {
        tx.send(m).await?;
    }
    let mut client = AgentLinkClient::new(c.channel().await?);
    Ok(client
        .connect(ReceiverStream::new(rx))
        .await
        .map(|r| (tx, r.into_inner())))
}

async fn status(c: &LoneCoordinator) -> Result<FleetStatus> {
    let mut op = OperatorClient::new(c.channel().await?);
    Ok(FleetStatus::try_from(
        op.status(v1::StatusRequest {}).await?.into_inner(),
    )?)
}

/// The view with the ever-growing ages blanked out.
fn without_ages(mut s: FleetStatus) -> FleetStatus {
    for m in &mut s.members {
        m.last_seen_ms_ago = m.last_seen_ms_ago.map(|_| 0);
    }
    s
}

#[tokio::test]
async fn malformed_reports_are_refused_and_change_nothing() -> Result<()> {
    let c = LoneCoordinator::start(&["n1", "n2", "n3"], 1000).await?;

    // A legitimate session for n1, held open for the whole test.
    let (_n1_tx, _n1_rx) = stream(
        &c,
        vec![hello("n1"), report("n1", v1::Role::Leader as i32, 50)],
    )
    .await?
    .expect("a valid hello and report open a session");
    let before = without_ages(status(&c).await?);
    assert_eq!(before.leader.as_ref().map(|m| m.as_str()), Some("n1"));
    assert!(before.members[0].connected);
    assert!(!before.members[1].ever_seen);

    let cases: Vec<(&str, Vec<AgentMessage>, tonic::Code, &str)> = vec![
        (
            "unknown role",
            vec![hello("n2"), report("n2", 99, 40)],
            tonic::Code::InvalidArgument,
            "report from member n2 has unknown role value 99",
        ),
        (
            "empty member id in the report",
            vec![hello("n2"), report("", v1::Role::Follower as i32, 40)],
            tonic::Code::InvalidArgument,
            "report has a bad member id: member id is empty",
        ),
        (
            "report id differs from hello id",
            vec![hello("n2"), report("n3", v1::Role::Follower as i32, 40)],
            tonic::Code::InvalidArgument,
            "report names member n3 on a stream that said Hello as n2",
        ),
        (
            "report claims another existing member",
            vec![hello("n2"), report("n1", v1::Role::Follower as i32, 1)],
            tonic::Code::InvalidArgument,
            "report names member n1 on a stream that said Hello as n2",
        ),
        (
            "empty member id in the hello",
            vec![hello(""), report("n2", v1::Role::Follower as i32, 40)],
            tonic::Code::InvalidArgument,
            "hello has a bad member id: member id is empty",
        ),
        (
            "member not in the cluster",
            vec![hello("n9"), report("n9", v1::Role::Follower as i32, 40)],
            tonic::Code::NotFound,
            "member n9 is not in cluster e2e's config",
        ),
        (
            "report before hello",
            vec![report("n2", v1::Role::Follower as i32, 40)],
            tonic::Code::InvalidArgument,
            "agent stream must start with a Hello, got a Report",
        ),
    ];
    for (what, msgs, code, want) in cases {
        let refused = stream(&c, msgs)
            .await?
            .err()
            .unwrap_or_else(|| panic!("{what}: must be refused"));
        assert_eq!(refused.code(), code, "{what}: {}", refused.message());
        assert!(
            refused.message().contains(want),
            "{what}: message {:?} should contain {want:?}",
            refused.message()
        );
        assert_eq!(
            without_ages(status(&c).await?),
            before,
            "{what}: the view must not change"
        );
    }

    // Mid-session: n2 opens properly, then sends a bad report. The stream
    // ends with the reason, and n2's last good report stays as it was.
    let (tx, mut rx) = stream(
        &c,
        vec![hello("n2"), report("n2", v1::Role::Follower as i32, 45)],
    )
    .await?
    .expect("n2 session opens");
    let good = status(&c).await?.members[1].report.clone();
    assert_eq!(good.as_ref().map(|r| r.state.applied_revision), Some(45));
    tx.send(report("n3", v1::Role::Follower as i32, 49)).await?;
    let ended = tokio::time::timeout(Duration::from_secs(5), rx.message())
        .await?
        .expect_err("the coordinator ends the stream");
    assert_eq!(ended.code(), tonic::Code::InvalidArgument);
    assert!(
        ended.message().contains("report names member n3"),
        "{}",
        ended.message()
    );
    let after = status(&c).await?;
    assert_eq!(
        after.members[1].report, good,
        "the bad report changed nothing"
    );
    assert_eq!(after.members[2].report, None);
    assert!(!after.members[1].connected);
    Ok(())
}

/// An agent asking for a presigned request that no command in flight on its
/// member covers gets a refusal naming the member and the key, on the same
/// request id, and its session stays up.
#[tokio::test]
async fn a_grant_no_command_covers_is_refused_naming_the_member_and_the_key() -> Result<()> {
    let c = LoneCoordinator::start(&["n1", "n2", "n3"], 1000).await?;
    let (tx, mut rx) = stream(
        &c,
        vec![hello("n1"), report("n1", v1::Role::Leader as i32, 50)],
    )
    .await?
    .expect("a valid hello and report open a session");
    for (id, method, key) in [
        (7, v1::GrantMethod::Put, "backups/e2e/r1-b1/part-00000"),
        (8, v1::GrantMethod::Get, "samplekv/v2/manifest.toml"),
        (9, v1::GrantMethod::List, "backups/e2e/"),
    ] {
        tx.send(AgentMessage {
            body: Some(agent_message::Body::GrantRequest(v1::GrantRequest {
                request_id: id,
                method: method.into(),
                key: key.into(),
            })),
        })
        .await?;
        let grant = loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), rx.message())
                .await??
                .expect("the stream stays open");
            if let Some(v1::coordinator_message::Body::Grant(g)) = msg.body {
                break g;
            }
        };
        assert_eq!(grant.request_id, id);
        match grant.answer {
            Some(v1::grant::Answer::Refused(why)) => assert!(
                why.contains("member n1") && why.contains(key) && why.contains("not covered"),
                "{why}"
            ),
            other => panic!("{key}: granted without a command in flight: {other:?}"),
        }
    }
    assert!(
        status(&c).await?.members[0].connected,
        "the session is still up"
    );
    Ok(())
}
