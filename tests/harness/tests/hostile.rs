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
use baton_harness::wire::hello;
use baton_harness::{LoneCoordinator, agent_get, bin, free_port, init};
use baton_proto::v1::{
    self, AgentMessage, agent_link_client::AgentLinkClient, agent_message,
    operator_client::OperatorClient,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

/// A follower's Report from `member` (applied 50 of 50).
fn report(member: &str) -> AgentMessage {
    baton_harness::wire::report(member, v1::Role::Follower as i32, 50)
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

/// Sends raw gRPC message bodies (not necessarily protobuf) on an agent
/// stream, as a broken or hostile client would.
mod raw {
    use bytes::{Buf, BufMut};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Debug, Clone, Copy, Default)]
    pub struct Raw;
    #[derive(Debug)]
    pub struct RawEncoder;
    #[derive(Debug)]
    pub struct RawDecoder;

    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = RawEncoder;
        type Decoder = RawDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> RawDecoder {
            RawDecoder
        }
    }

    impl Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for RawDecoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
            let out = src.chunk().to_vec();
            src.advance(out.len());
            Ok(Some(out))
        }
    }

    /// Opens an agent stream that sends `bodies` as they are; the status
    /// the coordinator answered with, or None when it let the stream in.
    pub async fn connect(
        ch: tonic::transport::Channel,
        bodies: Vec<Vec<u8>>,
    ) -> anyhow::Result<Option<tonic::Status>> {
        let mut grpc = tonic::client::Grpc::new(ch);
        grpc.ready().await?;
        let path =
            tonic::codegen::http::uri::PathAndQuery::from_static("/baton.v1.AgentLink/Connect");
        let outbound = tokio_stream::iter(bodies);
        let answer = grpc
            .streaming::<_, Vec<u8>, Vec<u8>, _>(tonic::Request::new(outbound), path, Raw)
            .await;
        Ok(answer.err())
    }
}

fn encoded(m: &AgentMessage) -> Vec<u8> {
    prost::Message::encode_to_vec(m)
}

/// The status view without the ages that grow on their own.
async fn view(c: &LoneCoordinator) -> Result<String> {
    let mut op = OperatorClient::new(c.channel().await?);
    let mut status = op.status(v1::StatusRequest {}).await?.into_inner();
    for m in &mut status.members {
        m.last_seen_ms_ago = 0;
    }
    Ok(format!("{status:?}"))
}

#[tokio::test]
async fn wire_garbage_is_refused_and_changes_nothing() -> Result<()> {
    let (mut c, _metrics) = coordinator().await?;
    // n1 holds a real session all along.
    let ch = c.channel().await?;
    let (_n1, session) = open(ch.clone(), vec![hello("n1"), report("n1")]).await;
    session.context("n1's session")?;
    let before = view(&c).await?;

    let mut wrong_cluster = hello("n2");
    if let Some(agent_message::Body::Hello(h)) = &mut wrong_cluster.body {
        h.cluster_id = "other".into();
    }
    let with_report = |f: &dyn Fn(&mut v1::Report)| {
        let mut r = report("n2");
        if let Some(agent_message::Body::Report(rep)) = &mut r.body {
            f(rep);
        }
        vec![encoded(&hello("n2")), encoded(&r)]
    };
    let mut huge = hello("n2");
    if let Some(agent_message::Body::Hello(h)) = &mut huge.body {
        h.adapter_kind = "x".repeat(5 << 20);
    }
    let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
        (
            "bytes that are not protobuf",
            vec![vec![0xff; 64]],
            "decode",
        ),
        (
            "a truncated message",
            vec![encoded(&hello("n2"))[..5].to_vec()],
            "decode",
        ),
        (
            "a Hello for another cluster",
            vec![encoded(&wrong_cluster), encoded(&report("n2"))],
            "says cluster \"other\", this coordinator runs \"e2e\"",
        ),
        (
            "applied above committed",
            with_report(&|r| {
                r.applied_revision = 60;
                r.committed_revision = 50;
            }),
            "applied revision 60 > committed revision 50",
        ),
        (
            "u64::MAX revisions",
            with_report(&|r| {
                r.applied_revision = u64::MAX;
                r.committed_revision = u64::MAX;
            }),
            "committed revision 18446744073709551615, beyond 9223372036854775807",
        ),
        (
            "an unknown health value",
            with_report(&|r| r.health = 77),
            "unknown health value 77",
        ),
        (
            "a 5 MB message",
            vec![encoded(&huge)],
            "message length too large",
        ),
    ];
    for (what, bodies, want) in cases {
        let status = raw::connect(ch.clone(), bodies)
            .await?
            .with_context(|| format!("{what}: the stream was let in"))?;
        assert!(
            status.message().contains(want) && status.message().len() < 1024,
            "{what}: {:?} should say {want:?}",
            status.message()
        );
        assert_eq!(view(&c).await?, before, "{what}: the view changed");
        assert!(c.proc.is_running(), "{what}: the coordinator went down");
    }
    Ok(())
}

#[tokio::test]
async fn hostile_versions_are_refused_before_anything_runs() -> Result<()> {
    let (mut c, _metrics) = coordinator().await?;
    let long = "v".repeat(10 * 1024);
    for to in [
        "../../etc",
        "",
        "v2/../v1",
        long.as_str(),
        "v1;rm -rf /",
        ".hidden",
    ] {
        for verb in ["plan", "upgrade"] {
            let args: &[&str] = if verb == "plan" {
                &[verb, "--to", to]
            } else {
                &[verb, "--to", to, "--detach"]
            };
            let (code, _, stderr) = baton_harness::baton_json_at(&c.url, args)?;
            assert_ne!(code, 0, "{verb} --to {to:?} was accepted");
            assert!(
                stderr.contains("[A-Za-z0-9._-]") || stderr.contains("empty"),
                "{verb} --to {:?}: {stderr}",
                baton_domain::echo(to)
            );
            assert!(
                stderr.len() < 2048,
                "the refusal echoed {} bytes",
                stderr.len()
            );
        }
    }
    let (code, history, stderr) = baton_harness::baton_json_at(&c.url, &["history"])?;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(history, serde_json::json!([]), "no rollout was started");
    assert!(c.proc.is_running(), "the coordinator went down");
    Ok(())
}

/// A coordinator played by the test: each agent stream that connects is
/// handed over (its inbound messages, and a sender for commands).
mod fake {
    use baton_proto::v1::{self, agent_link_server::AgentLink};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    pub type Session = (
        tonic::Streaming<v1::AgentMessage>,
        mpsc::Sender<Result<v1::CoordinatorMessage, tonic::Status>>,
    );

    #[derive(Debug)]
    pub struct Coordinator(pub mpsc::Sender<Session>);

    #[tonic::async_trait]
    impl AgentLink for Coordinator {
        type ConnectStream = ReceiverStream<Result<v1::CoordinatorMessage, tonic::Status>>;

        async fn connect(
            &self,
            request: tonic::Request<tonic::Streaming<v1::AgentMessage>>,
        ) -> Result<tonic::Response<Self::ConnectStream>, tonic::Status> {
            let (tx, rx) = mpsc::channel(16);
            let _ = self.0.send((request.into_inner(), tx)).await;
            Ok(tonic::Response::new(ReceiverStream::new(rx)))
        }
    }
}

fn command(id: &str, step: v1::command::Step) -> v1::CoordinatorMessage {
    v1::CoordinatorMessage {
        body: Some(v1::coordinator_message::Body::Command(v1::Command {
            id: id.into(),
            step: Some(step),
            ..Default::default()
        })),
    }
}

/// Waits for the next session and its Hello.
async fn next_session(sessions: &mut mpsc::Receiver<fake::Session>) -> Result<fake::Session> {
    let (mut inbound, tx) = tokio::time::timeout(Duration::from_secs(20), sessions.recv())
        .await
        .context("the agent did not connect")?
        .context("the fake coordinator stopped")?;
    let first = inbound.message().await?.context("no Hello")?;
    anyhow::ensure!(
        matches!(first.body, Some(agent_message::Body::Hello(_))),
        "the first message was not a Hello: {first:?}"
    );
    Ok((inbound, tx))
}

/// Every file and link under `dir`, with its target for links.
fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let link = fs::read_link(&p).ok();
            out.push(format!("{} {link:?}", p.display()));
            if link.is_none() && p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A hostile coordinator (a fake, played by this test, with the agent's
/// session) sends path traversal in Stage and Switch, a megabyte command
/// id, and a step_down to a member that does not exist: the agent refuses
/// each, naming it, runs nothing, touches no file, and stays up.
#[tokio::test]
async fn an_agent_refuses_what_a_hostile_coordinator_sends() -> Result<()> {
    init();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (sessions_tx, mut sessions) = mpsc::channel(8);
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(v1::agent_link_server::AgentLinkServer::new(
                fake::Coordinator(sessions_tx),
            ))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let dir = tempfile::tempdir()?;
    let base = dir.path().join("base");
    let v1 = baton_harness::build_release(dir.path(), "v1", 1, false)?;
    baton_harness::copy_dir(&v1, &base.join("releases/v1"))?;
    std::os::unix::fs::symlink("releases/v1", base.join("current"))?;
    let config = dir.path().join("agent.toml");
    // A real one-member samplekv, which the agent runs and which leads.
    let member: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let data = dir.path().join("data");
    fs::create_dir_all(&data)?;
    let argv = baton_harness::member_argv(
        "{release_dir}/samplekv",
        1,
        member,
        &format!("1={member}"),
        "{data_dir}",
        "{release_dir}",
    );
    fs::write(
        &config,
        format!(
            "member_id = \"n1\"\ncluster_id = \"e2e\"\ncoordinator = \"http://{addr}\"\nheartbeat_ms = 200\ndata_dir = {:?}\nstate_dir = {:?}\n[target]\nkind = \"samplekv\"\naddr = \"{member}\"\n[run]\nmode = \"supervise\"\nbase_dir = {:?}\ncommand = {argv:?}\n",
            data.to_string_lossy(),
            dir.path().join("state").to_string_lossy(),
            base.to_string_lossy()
        ),
    )?;
    let log = dir.path().join("agent.log");
    let mut cmd = Command::new(bin("baton-agent"));
    cmd.arg("--config").arg(&config);
    let mut agent = baton_harness::Proc::spawn("agent", &mut cmd, &log)?;
    let before = tree(&base);

    use v1::command::Step;
    let sha = "a".repeat(64);
    let stage = |version: &str| {
        Step::Stage(v1::Stage {
            name: "samplekv".into(),
            version: version.into(),
            format_version: 1,
            sha256: sha.clone(),
        })
    };
    let long_id = "r".repeat(1 << 20);
    let refused: Vec<(&str, v1::CoordinatorMessage, &str)> = vec![
        (
            "a stage of ../../etc",
            command("r1-v2-1", stage("../../etc")),
            "release version \"../../etc\" is not 1 to 128 characters",
        ),
        (
            "a switch to v2/../../x",
            command(
                "r1-v2-2",
                Step::Switch(v1::Switch {
                    version: "v2/../../x".into(),
                }),
            ),
            "release version \"v2/../../x\" is not 1 to 128 characters",
        ),
        (
            "a megabyte command id",
            command(&long_id, Step::Start(v1::Start {})),
            "bytes in all",
        ),
    ];
    for (what, msg, want) in refused {
        let (mut inbound, tx) = next_session(&mut sessions).await?;
        tx.send(Ok(msg)).await?;
        // The agent ends the session on a command it cannot accept.
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match inbound.message().await {
                    Ok(Some(m)) => {
                        if let Some(agent_message::Body::Result(r)) = m.body {
                            return Err(anyhow::anyhow!("{what}: the agent ran it: {r:?}"));
                        }
                    }
                    Ok(None) | Err(_) => return Ok(()),
                }
            }
        })
        .await
        .with_context(|| format!("{what}: the agent kept the session"))?;
        ended?;
        let text = baton_harness::without_colours(&fs::read_to_string(&log)?);
        assert!(text.contains(want), "{what}: the agent log lacks {want:?}");
        assert!(agent.is_running(), "{what}: the agent went down");
    }
    let text = fs::read_to_string(&log)?;
    assert!(
        text.len() < 256 * 1024,
        "the megabyte id was echoed: the log is {} bytes",
        text.len()
    );

    // A step_down to a member that does not exist, once the member leads:
    // run, and refused by the member.
    let (mut inbound, tx) = next_session(&mut sessions).await?;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match inbound.message().await? {
                Some(v1::AgentMessage {
                    body: Some(agent_message::Body::Report(r)),
                }) if r.role == v1::Role::Leader as i32 => return anyhow::Ok(()),
                Some(_) => continue,
                None => anyhow::bail!("the session ended"),
            }
        }
    })
    .await
    .with_context(|| {
        format!(
            "the member never led; agent log:\n{}",
            fs::read_to_string(&log).unwrap_or_default()
        )
    })??;
    tx.send(Ok(command(
        "r1-v2-9",
        Step::StepDown(v1::StepDown {
            to_member_id: "n9".into(),
        }),
    )))
    .await?;
    let result = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match inbound.message().await? {
                Some(v1::AgentMessage {
                    body: Some(agent_message::Body::Result(r)),
                }) => return anyhow::Ok(r),
                Some(_) => continue,
                None => anyhow::bail!("the session ended"),
            }
        }
    })
    .await??;
    assert_eq!(result.id, "r1-v2-9");
    assert_eq!(result.outcome, v1::Outcome::Failed as i32, "{result:?}");
    assert!(
        result.detail.contains("member 9 is not in this cluster"),
        "the member refuses a handover to a stranger: {result:?}"
    );

    assert_eq!(tree(&base), before, "the agent changed its release tree");
    assert!(agent.is_running(), "the agent went down");
    server.abort();
    Ok(())
}

/// A TCP connection to `to` from the loopback address `from`.
async fn connect_from(from: [u8; 4], to: SocketAddr) -> Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    Ok(socket.connect(to).await?)
}

/// Reads until the peer closes (or errors); how long that took.
async fn until_closed(mut s: tokio::net::TcpStream, within: Duration) -> Result<Duration> {
    use tokio::io::AsyncReadExt;
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .context("the connection was never closed")?;
    Ok(t0.elapsed())
}

/// The agent's probe port, fed garbage and a slowloris from one host: the
/// garbage is answered or closed, the slow connections beyond 32 per
/// peer are closed at once and the rest at the 5 s header deadline, and
/// meanwhile a probe from another host is answered. The agent stays up.
#[tokio::test]
async fn the_probe_port_survives_garbage_and_a_slowloris() -> Result<()> {
    use tokio::io::AsyncWriteExt;
    init();
    let dir = tempfile::tempdir()?;
    let probe: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
    let d = dir.path().to_string_lossy();
    let config = dir.path().join("agent.toml");
    fs::write(
        &config,
        format!(
            "member_id = \"n1\"\ncluster_id = \"e2e\"\ncoordinator = \"http://127.0.0.1:{}\"\ndata_dir = {d:?}\nstate_dir = {d:?}\nprobe_listen = \"{probe}\"\n[target]\nkind = \"samplekv\"\naddr = \"127.0.0.1:{}\"\n",
            free_port(),
            free_port()
        ),
    )?;
    let mut cmd = Command::new(bin("baton-agent"));
    cmd.arg("--config").arg(&config);
    let mut agent = baton_harness::Proc::spawn("agent", &mut cmd, &dir.path().join("agent.log"))?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while agent_get(probe, "/healthz").await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the probe port never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Garbage: answered (400) or closed, quickly.
    let mut g = connect_from([127, 0, 0, 1], probe).await?;
    g.write_all(b"\x00\xff\xfeGARBAGE \x01\x02 /\r\n\r\n")
        .await?;
    until_closed(g, Duration::from_secs(10)).await?;

    // A slowloris from 127.0.0.2: headers that never end.
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut s = connect_from([127, 0, 0, 2], probe).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await?;
        slow.push(s);
    }
    let started = Instant::now();
    // Another host is still answered meanwhile.
    let body = agent_get(probe, "/healthz").await?;
    assert!(!body.is_empty(), "no answer to a probe from 127.0.0.1");
    let closes = futures::future::join_all(
        slow.into_iter()
            .map(|s| until_closed(s, Duration::from_secs(20))),
    )
    .await;
    let mut at_once = 0;
    let mut at_deadline = 0;
    for took in closes {
        let took = took?;
        if took < Duration::from_secs(2) {
            at_once += 1;
        } else {
            at_deadline += 1;
        }
    }
    assert_eq!(
        (at_once, at_deadline),
        (8, 32),
        "32 held until the header deadline, 8 closed at once"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(4500),
        "closed before the 5 s header deadline: {:?}",
        started.elapsed()
    );
    assert!(agent.is_running(), "the agent went down");
    agent_get(probe, "/healthz").await?;
    Ok(())
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("no VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kb * 1024)
}

fn report_at(member: &str, applied: u64) -> AgentMessage {
    let mut r = report(member);
    if let Some(agent_message::Body::Report(rep)) = &mut r.body {
        rep.applied_revision = applied;
        rep.committed_revision = applied;
    }
    r
}

/// 20,000 reports in 2 s on one session: all taken, the last one is what
/// the view shows, and the coordinator's memory stays bounded. A second
/// stream for the same member replaces the first, which is told why; the
/// member stays connected once. A long poll asking to wait u32::MAX ms is
/// answered within the 10 s cap.
#[tokio::test]
async fn floods_duplicates_and_absurd_waits_are_bounded() -> Result<()> {
    let (mut c, _metrics) = coordinator().await?;
    let ch = c.channel().await?;
    let (tx, session) = open(ch.clone(), vec![hello("n1"), report_at("n1", 1)]).await;
    let _inbound = session.context("n1's session")?;
    let before = rss(c.proc.pid())?;
    let started = Instant::now();
    const FLOOD: u64 = 20_000;
    for i in 0..FLOOD {
        tx.send(report_at("n1", 2 + i)).await?;
        // 20,000 in 2 s: pace by count against the clock, not by sleeps
        // per message.
        let due = Duration::from_micros(i * 100);
        if let Some(early) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(early).await;
        }
    }
    let last = FLOOD + 1;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut op = OperatorClient::new(ch.clone());
        let status = op.status(v1::StatusRequest {}).await?.into_inner();
        let applied = status.members[0]
            .report
            .as_ref()
            .map(|r| r.applied_revision)
            .unwrap_or_default();
        if applied == last {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the view stopped at applied {applied}, not {last}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let grown = rss(c.proc.pid())?.saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "20,000 reports grew the coordinator by {} MiB",
        grown >> 20
    );

    // Two streams for one member: the newer replaces the older.
    let (_old_tx, old) = open(ch.clone(), vec![hello("n2"), report("n2")]).await;
    let mut old = old.context("n2's first stream")?;
    let (_new_tx, new) = open(ch.clone(), vec![hello("n2"), report("n2")]).await;
    let _new = new.context("n2's second stream")?;
    let ended = tokio::time::timeout(Duration::from_secs(10), old.message())
        .await
        .context("the older stream was kept")?;
    let status = ended
        .err()
        .context("the older stream ended without a status")?;
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert!(
        status.message().contains("replaced by a newer connection"),
        "{status:?}"
    );
    let mut reporting = members_reporting(&c).await?;
    reporting.sort();
    assert_eq!(reporting, ["n1", "n2"]);

    // A long poll that asks to wait forever is answered within the cap.
    let mut op = OperatorClient::new(ch.clone());
    let version = op
        .rollout(v1::RolloutRequest::default())
        .await
        .map(|r| r.into_inner().version)
        .unwrap_or_default();
    let t0 = Instant::now();
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        op.rollout(v1::RolloutRequest {
            rollout_id: String::new(),
            after_version: version,
            wait_ms: u32::MAX,
        }),
    )
    .await
    .context("a long poll of u32::MAX ms was held past 30 s")?;
    let _ = answer;
    assert!(
        t0.elapsed() <= Duration::from_secs(15),
        "held {:?}, past the 10 s cap",
        t0.elapsed()
    );
    assert!(c.proc.is_running(), "the coordinator went down");
    drop(tx);
    Ok(())
}
