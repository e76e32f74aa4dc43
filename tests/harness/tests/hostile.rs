//! The hostile-input suite: a real coordinator (and the real agent and CLI
//! binaries) fed what an attacker or a careless config would send. Each
//! case asserts a clear refusal, a coordinator that stays up, and state
//! that did not change. (Malformed Reports and stray grant requests are in
//! `bad_reports.rs`; impostor certificates in `tls.rs`.)
//!
//! - Streams that never say Hello: at most 16 per peer address wait, each
//!   for 5 s, and an agent from elsewhere still connects meanwhile.
//! - Hellos with megabyte member ids: each refusal echoes at most 128
//!   bytes of it, so the log does not grow with what is sent.
//! - Plaintext off loopback: the agent, the CLI and a replica refuse an
//!   `http://` address that is not loopback, exit 64, naming the key.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton_harness::{LoneCoordinator, agent_get, bin, free_port, init};
use baton_proto::v1::{
    self, AgentMessage, agent_link_client::AgentLinkClient, agent_message,
    operator_client::OperatorClient,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

fn hello(member: &str) -> AgentMessage {
    AgentMessage {
        body: Some(agent_message::Body::Hello(v1::Hello {
            member_id: member.into(),
            cluster_id: "e2e".into(),
            agent_version: "test".into(),
            adapter_kind: "test".into(),
            version_rule: None,
            stage_checks: Vec::new(),
        })),
    }
}

fn report(member: &str) -> AgentMessage {
    AgentMessage {
        body: Some(agent_message::Body::Report(v1::Report {
            member_id: member.into(),
            role: v1::Role::Follower as i32,
            leader_id: "n1".into(),
            committed_revision: 50,
            applied_revision: 50,
            release_version: "v1".into(),
            format_version: 1,
            health: v1::Health::Healthy as i32,
            health_detail: String::new(),
            resources: None,
            timestamp_unix_ms: 1,
            term: 4,
            cluster_version: String::new(),
            process: None,
        })),
    }
}

/// A coordinator for n1, n2 and n3 that exports /metrics.
async fn coordinator() -> Result<(LoneCoordinator, SocketAddr)> {
    let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let c = LoneCoordinator::start_with(
        &["n1", "n2", "n3"],
        200,
        &format!("metrics_listen = \"{metrics}\""),
    )
    .await?;
    Ok((c, metrics))
}

/// A channel to `c` whose connection comes from the loopback address
/// `from` (127.0.0.0/8 is all loopback, so a test can play several hosts).
async fn channel_from(c: &LoneCoordinator, from: [u8; 4]) -> Result<tonic::transport::Channel> {
    Ok(tonic::transport::Endpoint::from_shared(c.url.clone())?
        .local_address(Some(IpAddr::from(from)))
        .connect()
        .await?)
}

/// Opens an agent stream on `ch` that first sends `msgs`, and keeps the
/// sender so the stream stays open. Resolves when the coordinator answers
/// (after the handshake, or with the status that refused it).
async fn open(
    ch: tonic::transport::Channel,
    msgs: Vec<AgentMessage>,
) -> (
    mpsc::Sender<AgentMessage>,
    Result<tonic::Streaming<v1::CoordinatorMessage>, tonic::Status>,
) {
    let (tx, rx) = mpsc::channel(8);
    for m in msgs {
        tx.send(m).await.expect("the receiver is still here");
    }
    let answer = AgentLinkClient::new(ch)
        .connect(ReceiverStream::new(rx))
        .await
        .map(tonic::Response::into_inner);
    (tx, answer)
}

/// The value of the series `series` (name and labels, as exported) in the
/// exposition at `addr`.
async fn metric(addr: SocketAddr, series: &str) -> Result<f64> {
    let body = agent_get(addr, "/metrics").await?;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .with_context(|| format!("no {series} in\n{body}"))?
        .trim()
        .parse()
        .with_context(|| format!("{series} is not a number"))
}

async fn wait_metric(addr: SocketAddr, series: &str, want: f64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = metric(addr, series).await?;
        if got == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{series} stayed {got}, wanted {want}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn members_reporting(c: &LoneCoordinator) -> Result<Vec<String>> {
    let mut op = OperatorClient::new(c.channel().await?);
    let status = op.status(v1::StatusRequest {}).await?.into_inner();
    Ok(status
        .members
        .into_iter()
        .filter(|m| m.connected)
        .map(|m| m.member_id)
        .collect())
}

#[tokio::test]
async fn strangers_that_never_say_hello_are_capped_per_peer_and_cut_off() -> Result<()> {
    const PER_PEER: usize = 16;
    let (mut c, metrics) = coordinator().await?;
    // 16 silent streams from 127.0.0.2, on one connection.
    let stranger = channel_from(&c, [127, 0, 0, 2]).await?;
    let started = Instant::now();
    let silent: Vec<_> = (0..PER_PEER)
        .map(|_| tokio::spawn(open(stranger.clone(), Vec::new())))
        .collect();
    wait_metric(metrics, "baton_agent_streams_in_handshake", PER_PEER as f64).await?;

    // The 17th from the same peer is refused at once, saying why.
    let (_tx, crowded) = open(stranger.clone(), vec![hello("n2"), report("n2")]).await;
    let status = crowded
        .err()
        .context("a 17th stream in handshake was let in")?;
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("127.0.0.2")
            && status.message().contains(&format!("at most {PER_PEER}")),
        "{status:?}"
    );

    // An agent from another address is not crowded out.
    let real = channel_from(&c, [127, 0, 0, 1]).await?;
    let (_n1, session) = open(real, vec![hello("n1"), report("n1")]).await;
    session.context("n1's agent from 127.0.0.1 was refused while 127.0.0.2 crowded in")?;
    assert_eq!(members_reporting(&c).await?, ["n1"]);

    // Each silent stream is closed by its deadline, not before it.
    for s in silent {
        let (_tx, answer) = s.await?;
        let status = answer
            .err()
            .context("a stream that said nothing was let in")?;
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        assert!(status.message().contains("5000 ms"), "{status:?}");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(4900),
        "cut off after {:?}, before the 5 s deadline",
        started.elapsed()
    );
    wait_metric(metrics, "baton_agent_streams_in_handshake", 0.0).await?;
    assert_eq!(
        metric(
            metrics,
            "baton_agent_streams_refused_total{reason=\"silent\"}"
        )
        .await?,
        PER_PEER as f64
    );
    assert_eq!(
        metric(
            metrics,
            "baton_agent_streams_refused_total{reason=\"crowded\"}"
        )
        .await?,
        1.0
    );

    // The slots came back: the same peer may connect again.
    let (_n2, session) = open(stranger, vec![hello("n2"), report("n2")]).await;
    session.context("127.0.0.2 was still refused after its strangers ended")?;
    let mut reporting = members_reporting(&c).await?;
    reporting.sort();
    assert_eq!(reporting, ["n1", "n2"]);
    assert!(c.proc.is_running(), "the coordinator went down");
    Ok(())
}

#[tokio::test]
async fn a_huge_member_id_is_refused_and_echoed_only_in_part() -> Result<()> {
    let (mut c, _metrics) = coordinator().await?;
    let log = c.dir.path().join("coordinator.log");
    let before = fs::metadata(&log)?.len();
    let huge = "n".repeat(1 << 20);
    let ch = c.channel().await?;
    for _ in 0..10 {
        let (_tx, answer) = open(ch.clone(), vec![hello(&huge), report(&huge)]).await;
        let status = answer.err().context("a 1 MiB member id was let in")?;
        assert!(
            status.message().len() < 1024,
            "the refusal echoed {} bytes",
            status.message().len()
        );
    }
    let grown = fs::metadata(&log)?.len() - before;
    assert!(
        grown < 32 * 1024,
        "10 refusals of a 1 MiB member id grew the log by {grown} bytes"
    );
    assert!(members_reporting(&c).await?.is_empty());
    assert!(c.proc.is_running(), "the coordinator went down");
    Ok(())
}

/// Runs `cmd` to its end; its exit code and stderr.
fn run(cmd: &mut Command) -> Result<(Option<i32>, String)> {
    let out = cmd.output()?;
    Ok((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn plaintext_off_loopback_is_refused_by_agent_cli_and_replica() -> Result<()> {
    init();
    let dir = tempfile::tempdir()?;
    let d = dir.path().to_string_lossy();
    let not_loopback = "not loopback";

    let agent = dir.path().join("agent.toml");
    fs::write(
        &agent,
        format!(
            "member_id = \"n1\"\ncluster_id = \"e2e\"\ncoordinator = \"http://10.1.2.3:7400\"\ndata_dir = {d:?}\nstate_dir = {d:?}\n[target]\nkind = \"samplekv\"\naddr = \"127.0.0.1:{}\"\n",
            free_port()
        ),
    )?;
    let (code, stderr) = run(Command::new(bin("baton-agent")).arg("--config").arg(&agent))?;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("`coordinator`") && stderr.contains(not_loopback),
        "{stderr}"
    );

    let (code, stderr) =
        run(Command::new(bin("baton")).args(["--coordinator", "http://10.1.2.3:7400", "status"]))?;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("--coordinator") && stderr.contains(not_loopback),
        "{stderr}"
    );

    let port = free_port();
    let coordinator = dir.path().join("coordinator.toml");
    fs::write(
        &coordinator,
        format!(
            "cluster_id = \"e2e\"\nlisten = \"127.0.0.1:{port}\"\nmembers = [\"n1\"]\nstate_dir = {d:?}\n[replication]\nid = 1\npeers = {{ \"1\" = \"http://127.0.0.1:{port}\", \"2\" = \"http://10.1.2.3:7400\", \"3\" = \"http://10.1.2.4:7400\" }}\n"
        ),
    )?;
    let (code, stderr) = run(Command::new(bin("baton-coordinator"))
        .arg("--config")
        .arg(&coordinator))?;
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("replication.peers") && stderr.contains(not_loopback),
        "{stderr}"
    );
    Ok(())
}
