//! Every gRPC link goes through rustls: a coordinator with a server
//! certificate and a client CA accepts a real agent that presents its
//! certificate, serves `baton status` over TLS, and refuses a client without
//! a certificate and a plaintext client. Replica processes speak mutual TLS
//! to each other, and one with another CA's certificate gets nothing. An
//! agent may speak only for the member its certificate names: one that
//! claims another member, or whose certificate is another cluster's or an
//! operator's, is refused, and the real member's session is untouched.

use std::fs;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use baton_domain::FleetStatus;
use baton_harness::{Proc, bin, free_port, init, read_journal, without_colours};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    /// A CA, a coordinator certificate (localhost, 127.0.0.1) and n1's.
    fn new() -> Result<Pki> {
        Pki::with(&[
            (
                "coordinator",
                vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            ),
            ("n1", vec!["n1".to_owned()]),
            ("alice", vec!["spiffe://e2e/operator/alice".to_owned()]),
            ("mallory", vec!["spiffe://e2e/operator/mallory".to_owned()]),
            ("vic", vec!["spiffe://e2e/operator/vic".to_owned()]),
        ])
    }

    /// A CA of its own, and one certificate it signs per `(name, SANs)`
    /// (each SAN a DNS name or an IP address, or a URI: `spiffe://...`).
    fn with(certs: &[(&str, Vec<String>)]) -> Result<Pki> {
        let dir = tempfile::tempdir()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;
        fs::write(dir.path().join("ca.crt"), ca_cert.pem())?;
        let pki = Pki {
            dir,
            issuer: Issuer::new(ca, ca_key),
        };
        for (name, sans) in certs {
            pki.issue(name, sans, false)?;
        }
        Ok(pki)
    }

    /// Writes `name.crt` and `name.key`, signed by this CA; `expired`
    /// makes one that was valid only in 2020.
    fn issue(&self, name: &str, sans: &[String], expired: bool) -> Result<()> {
        let key = KeyPair::generate()?;
        let (uris, names): (Vec<String>, Vec<String>) =
            sans.iter().cloned().partition(|s| s.contains("://"));
        let mut params = CertificateParams::new(names)?;
        for u in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(u.as_str().try_into()?));
        }
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        fs::write(self.dir.path().join(format!("{name}.crt")), cert.pem())?;
        fs::write(
            self.dir.path().join(format!("{name}.key")),
            key.serialize_pem(),
        )?;
        Ok(())
    }

    fn path(&self, f: &str) -> String {
        self.dir.path().join(f).to_string_lossy().into_owned()
    }
}

/// A gRPC channel to `url` that trusts `pki`'s CA and presents the
/// certificate `<identity>.crt` (none when `identity` is None).
async fn tls_channel(
    url: &str,
    pki: &Pki,
    identity: Option<&str>,
) -> Result<tonic::transport::Channel> {
    let mut tls = tonic::transport::ClientTlsConfig::new().ca_certificate(
        tonic::transport::Certificate::from_pem(fs::read(pki.path("ca.crt"))?),
    );
    if let Some(name) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            fs::read(pki.path(&format!("{name}.crt")))?,
            fs::read(pki.path(&format!("{name}.key")))?,
        ));
    }
    Ok(tonic::transport::Endpoint::from_shared(url.to_owned())?
        .tls_config(tls)?
        .connect()
        .await?)
}

/// `baton --output json <args>` with `cert`'s certificate and key.
fn baton_as(url: &str, pki: &Pki, cert: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin("baton"))
        .args(["--coordinator", url, "--output", "json", "--ca-cert"])
        .arg(pki.path("ca.crt"))
        .arg("--cert")
        .arg(pki.path(&format!("{cert}.crt")))
        .arg("--key")
        .arg(pki.path(&format!("{cert}.key")))
        .args(args)
        .output()
        .expect("run baton")
}

fn baton_status(url: &str, pki: &Pki, with_cert: bool) -> std::process::Output {
    let mut cmd = Command::new(bin("baton"));
    cmd.args([
        "--coordinator",
        url,
        "--output",
        "json",
        "--ca-cert",
        &pki.path("ca.crt"),
    ]);
    if with_cert {
        cmd.args([
            "--cert",
            &pki.path("alice.crt"),
            "--key",
            &pki.path("alice.key"),
        ]);
    }
    cmd.arg("status").output().expect("run baton")
}

#[tokio::test]
async fn agents_and_operators_speak_mtls() -> Result<()> {
    init();
    let pki = Pki::new()?;
    let port = free_port();
    let config = pki.dir.path().join("coordinator.toml");
    fs::write(
        &config,
        format!(
            "cluster_id = \"e2e\"\nlisten = \"127.0.0.1:{port}\"\nheartbeat_ms = 200\nmembers = [\"n1\"]\n[operators]\nalice = \"admin\"\nvic = \"viewer\"\n[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
            pki.path("coordinator.crt"),
            pki.path("coordinator.key"),
            pki.path("ca.crt")
        ),
    )?;
    let mut cmd = Command::new(bin("baton-coordinator"));
    cmd.arg("--config").arg(&config);
    let _coordinator = Proc::spawn(
        "coordinator",
        &mut cmd,
        &pki.dir.path().join("coordinator.log"),
    )?;
    let url = format!("https://127.0.0.1:{port}");

    // A real agent, with its certificate. Its member is not running, so it
    // reports the member as down, but the session itself must open over TLS.
    let (_agent, _) = spawn_agent(&pki, &url, "n1", "n1", "agent")?;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let out = baton_status(&url, &pki, true);
        if out.status.success() {
            let s: FleetStatus = serde_json::from_slice(&out.stdout)?;
            if s.members[0].connected {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent never connected over mTLS; last: {}{}\ncoordinator log: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(pki.dir.path().join("coordinator.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Roles: a member's certificate, an operator with no role, and a
    // viewer asking to upgrade are each refused, naming who and why.
    for (cert, args, why) in [
        (
            "n1",
            &["status"][..],
            "the client certificate names DNS:n1, which is no operator of cluster e2e",
        ),
        ("mallory", &["status"][..], "operator mallory has no role"),
        (
            "vic",
            &["upgrade", "--to", "v2", "--detach"][..],
            "operator/vic is a viewer, and upgrade needs operator",
        ),
    ] {
        let out = baton_as(&url, &pki, cert, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{cert} {args:?} is refused: {stderr}"
        );
        assert!(stderr.contains(why), "{cert} {args:?}: {stderr}");
    }
    let viewer = baton_as(&url, &pki, "vic", &["status"]);
    assert!(
        viewer.status.success(),
        "a viewer may read the status: {}",
        String::from_utf8_lossy(&viewer.stderr)
    );
    let no_cert = baton_status(&url, &pki, false);
    assert!(
        !no_cert.status.success(),
        "a client without a certificate is refused"
    );
    let plaintext = Command::new(bin("baton"))
        .args([
            "--coordinator",
            &format!("http://127.0.0.1:{port}"),
            "status",
        ])
        .output()?;
    assert!(!plaintext.status.success(), "a plaintext client is refused");
    let msg = String::from_utf8_lossy(&plaintext.stderr);
    assert!(msg.contains("coordinator"), "{msg}");
    Ok(())
}

/// Three replica processes whose `[tls]` has a certificate and a client CA:
/// their raft traffic is mutual TLS. Replicas 1 and 2 share a CA, elect a
/// leader and replicate its first entry (the journal's name) to each
/// other; replica 3's certificate and CA are another CA's, so neither side
/// of a link to it completes a handshake and it receives nothing.
#[tokio::test]
async fn replicas_authenticate_each_other_and_a_stranger_gets_nothing() -> Result<()> {
    init();
    let sans = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "spiffe://e2e/coordinator/main".to_owned(),
    ];
    let pki = Pki::with(&[
        ("coordinator", sans.clone()),
        ("n1", vec!["n1".to_owned()]),
        ("alice", vec!["spiffe://e2e/operator/alice".to_owned()]),
    ])?;
    let stranger = Pki::with(&[("coordinator", sans)])?;
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let url = |k: usize| format!("https://127.0.0.1:{}", ports[k]);
    let peers = (0..3)
        .map(|k| format!("\"{}\" = {:?}", k + 1, url(k)))
        .collect::<Vec<_>>()
        .join(", ");
    let mut procs = Vec::new();
    let mut logs = Vec::new();
    for (k, own) in [&pki, &pki, &stranger].into_iter().enumerate() {
        let id = k + 1;
        let state = pki.dir.path().join(format!("state-{id}"));
        let config = pki.dir.path().join(format!("coordinator-{id}.toml"));
        fs::write(
            &config,
            format!(
                "cluster_id = \"e2e\"\nlisten = \"127.0.0.1:{}\"\nheartbeat_ms = 200\nmembers = [\"n1\"]\nstate_dir = {:?}\n[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n[operators]\nalice = \"admin\"\n[replication]\nid = {id}\npeers = {{ {peers} }}\n",
                ports[k],
                state.to_string_lossy(),
                own.path("coordinator.crt"),
                own.path("coordinator.key"),
                own.path("ca.crt"),
            ),
        )?;
        let mut cmd = Command::new(bin("baton-coordinator"));
        cmd.arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info,openraft=warn");
        let log = pki.dir.path().join(format!("coordinator-{id}.log"));
        procs.push(Proc::spawn(&format!("coordinator-{id}"), &mut cmd, &log)?);
        logs.push((state.join("replica/log"), log));
    }
    let entries = |k: usize| read_journal(&logs[k].0).map(|j| j.len()).unwrap_or(0);
    let show = || {
        logs.iter()
            .map(|(_, log)| fs::read_to_string(log).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n-----\n")
    };
    // 1 and 2 elect a leader over mTLS and both hold its first entry.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while entries(0) == 0 || entries(1) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas 1 and 2 never agreed on an entry over mTLS:\n{}",
            show()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The leader answers an operator with a certificate from its CA.
    let out = baton_status(&format!("{},{}", url(0), url(1)), &pki, true);
    assert!(
        out.status.success(),
        "the leader answers over TLS: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A member's certificate from the same CA: the handshake holds, and
    // the replica refuses the peer call itself, and logs it.
    let ch = tls_channel(&url(0), &pki, Some("n1")).await?;
    let refused = baton_proto::v1::replica_client::ReplicaClient::new(ch)
        .call(baton_proto::v1::PeerRequest {
            call: baton_proto::v1::PeerCall::Vote as i32,
            target: 1,
            cluster: "e2e".into(),
            data: b"{}".to_vec(),
        })
        .await
        .expect_err("a member's certificate is no replica peer");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("which is no coordinator replica of cluster e2e"),
        "{refused:?}"
    );
    assert!(
        plain_log(&logs[0].1).contains("refused a replica call"),
        "replica 1 did not log the refusal"
    );
    // For 2 s (forty of openraft's default 50 ms heartbeats) the stranger
    // gets no entry, while the leader keeps trying to reach it.
    let watch = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < watch {
        assert_eq!(
            entries(2),
            0,
            "a replica with another CA's certificate received entries:\n{}",
            show()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(procs);
    Ok(())
}

/// Writes an agent config for `member` with `cert` (whose member process is
/// not running: it reports it down, but its session opens) and starts it.
fn spawn_agent(
    pki: &Pki,
    url: &str,
    member: &str,
    cert: &str,
    name: &str,
) -> Result<(Proc, std::path::PathBuf)> {
    let dir = pki.dir.path().join(name);
    fs::create_dir_all(&dir)?;
    let config = dir.join("agent.toml");
    fs::write(
        &config,
        format!(
            "member_id = {member:?}\ncluster_id = \"e2e\"\ncoordinator = {url:?}\nheartbeat_ms = 200\npoll_ms = 50\ndata_dir = {:?}\nstate_dir = {:?}\n[target]\nkind = \"samplekv\"\naddr = \"127.0.0.1:{}\"\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            dir.to_string_lossy(),
            dir.to_string_lossy(),
            free_port(),
            pki.path("ca.crt"),
            pki.path(&format!("{cert}.crt")),
            pki.path(&format!("{cert}.key")),
        ),
    )?;
    let mut cmd = Command::new(bin("baton-agent"));
    cmd.arg("--config").arg(&config);
    let log = dir.join("agent.log");
    Ok((Proc::spawn(&format!("agent-{name}"), &mut cmd, &log)?, log))
}

fn plain_log(path: &std::path::Path) -> String {
    without_colours(&fs::read_to_string(path).unwrap_or_default())
}

#[tokio::test]
async fn an_agent_speaks_only_for_the_member_its_certificate_names() -> Result<()> {
    init();
    let pki = Pki::with(&[
        (
            "coordinator",
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
        ),
        ("n1", vec!["spiffe://e2e/member/n1".to_owned()]),
        ("n2", vec!["n2".to_owned()]),
        ("n3", vec!["n3".to_owned()]),
        ("foreign", vec!["spiffe://other/member/n3".to_owned()]),
        ("alice", vec!["spiffe://e2e/operator/alice".to_owned()]),
    ])?;
    let port = free_port();
    let config = pki.dir.path().join("coordinator.toml");
    fs::write(
        &config,
        format!(
            "cluster_id = \"e2e\"\nlisten = \"127.0.0.1:{port}\"\nheartbeat_ms = 200\nmembers = [\"n1\", \"n2\", \"n3\"]\nstate_dir = {:?}\n[operators]\nalice = \"admin\"\n[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
            pki.dir.path().join("state").to_string_lossy(),
            pki.path("coordinator.crt"),
            pki.path("coordinator.key"),
            pki.path("ca.crt")
        ),
    )?;
    let mut cmd = Command::new(bin("baton-coordinator"));
    cmd.arg("--config").arg(&config);
    let coordinator_log = pki.dir.path().join("coordinator.log");
    let _coordinator = Proc::spawn("coordinator", &mut cmd, &coordinator_log)?;
    let url = format!("https://127.0.0.1:{port}");
    let (_n1, _) = spawn_agent(&pki, &url, "n1", "n1", "n1")?;
    let (_n2, _) = spawn_agent(&pki, &url, "n2", "n2", "n2")?;
    let (_n3, n3_log) = spawn_agent(&pki, &url, "n3", "n3", "n3")?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let out = baton_status(&url, &pki, true);
        if out.status.success() {
            let s: FleetStatus = serde_json::from_slice(&out.stdout)?;
            if s.members.iter().all(|m| m.connected) {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agents never connected: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            plain_log(&coordinator_log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let n3_lines = plain_log(&n3_log).lines().count();
    // Three impostors for n3, each a real agent: n1's certificate, another
    // cluster's member certificate, and an operator's certificate.
    let impostors = [
        ("n1", "names spiffe://e2e/member/n1, not member n3"),
        ("foreign", "belongs to cluster other"),
        ("alice", "names spiffe://e2e/operator/alice, not member n3"),
    ];
    let mut running = Vec::new();
    for (cert, _) in &impostors {
        running.push(spawn_agent(
            &pki,
            &url,
            "n3",
            cert,
            &format!("fake-{cert}"),
        )?);
    }
    // Each is refused, naming both ids, again and again as it redials.
    for ((cert, why), (_, log)) in impostors.iter().zip(&running) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let text = plain_log(log);
            let refusals = text
                .lines()
                .filter(|l| l.contains("hello for member n3 refused") && l.contains(why))
                .count();
            if refusals >= 3 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the agent with {cert}'s certificate was refused {refusals} times, not 3, for {why:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            plain_log(log).contains("coordinator refused member n3 (PermissionDenied)"),
            "{}",
            plain_log(log)
        );
    }
    let log = plain_log(&coordinator_log);
    assert!(
        log.lines()
            .any(|l| l.contains("refused agent stream") && l.contains("peer=127.0.0.1:")),
        "the coordinator logs each refusal with the peer's address:\n{log}"
    );
    assert!(
        !log.contains("replaced by a newer connection") && !log.contains("superseded"),
        "the real n3's session was never displaced:\n{log}"
    );
    // The real n3 kept its one session throughout, and still reports.
    let since: Vec<String> = plain_log(&n3_log)
        .lines()
        .skip(n3_lines)
        .filter(|l| l.contains("session ended"))
        .map(str::to_owned)
        .collect();
    assert!(since.is_empty(), "the real n3's session ended: {since:?}");
    let out = baton_status(&url, &pki, true);
    let s: FleetStatus = serde_json::from_slice(&out.stdout)?;
    assert!(
        s.members.iter().all(|m| m.connected && m.fresh),
        "{:?}",
        s.members
    );
    Ok(())
}

/// A `[tls]` file that does not exist is a bad config: exit 64, naming the
/// key and the file, before anything listens.
#[test]
fn a_missing_tls_file_exits_64_naming_its_key() -> Result<()> {
    init();
    let pki = Pki::new()?;
    let missing = pki.dir.path().join("nowhere.key");
    let config = pki.dir.path().join("coordinator.toml");
    fs::write(
        &config,
        format!(
            "cluster_id = \"e2e\"\nlisten = \"127.0.0.1:{}\"\nmembers = [\"n1\"]\n[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
            free_port(),
            pki.path("coordinator.crt"),
            missing.to_string_lossy(),
            pki.path("ca.crt")
        ),
    )?;
    let out = Command::new(bin("baton-coordinator"))
        .arg("--config")
        .arg(&config)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("tls.key") && stderr.contains("nowhere.key"),
        "{stderr}"
    );
    Ok(())
}

/// Starts a mutual-TLS coordinator for n1 whose certificates are `pki`'s,
/// with `tables` (`[operators]`, `[tokens]`) after its `[tls]`; its URL
/// and log.
async fn tls_coordinator(pki: &Pki, tables: &str) -> Result<(Proc, String, std::path::PathBuf)> {
    let port = free_port();
    let config = pki.dir.path().join("coordinator.toml");
    fs::write(
        &config,
        format!(
            "cluster_id = \"e2e\"\nlisten = \"127.0.0.1:{port}\"\nheartbeat_ms = 200\nmembers = [\"n1\"]\n[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n{tables}",
            pki.path("coordinator.crt"),
            pki.path("coordinator.key"),
            pki.path("ca.crt")
        ),
    )?;
    let log = pki.dir.path().join("coordinator.log");
    let mut cmd = Command::new(bin("baton-coordinator"));
    cmd.arg("--config").arg(&config);
    let proc = Proc::spawn("coordinator", &mut cmd, &log)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "coordinator never listened: {}",
            plain_log(&log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((proc, format!("https://127.0.0.1:{port}"), log))
}

/// `baton status` with explicit TLS arguments; exit code and stderr.
fn status_with(url: &str, ca: &str, identity: Option<(&str, &str)>) -> (Option<i32>, String) {
    let mut cmd = Command::new(bin("baton"));
    cmd.args(["--coordinator", url, "--ca-cert", ca]);
    if let Some((cert, key)) = identity {
        cmd.args(["--cert", cert, "--key", key]);
    }
    let out = cmd.arg("status").output().expect("run baton");
    (
        out.status.code(),
        without_colours(&String::from_utf8_lossy(&out.stderr)),
    )
}

/// Every TLS failure is named with its cause and what to do, by the CLI
/// and the agent, and the coordinator logs each refused handshake once per
/// peer and cause per minute, naming the peer's address and the reason.
#[tokio::test]
async fn tls_failures_say_why() -> Result<()> {
    init();
    // The coordinator's certificate names only 127.0.0.1, so "localhost"
    // is a name mismatch.
    let pki = Pki::with(&[
        ("coordinator", vec!["127.0.0.1".to_owned()]),
        ("n1", vec!["n1".to_owned()]),
        ("alice", vec!["spiffe://e2e/operator/alice".to_owned()]),
        ("vic", vec!["spiffe://e2e/operator/vic".to_owned()]),
    ])?;
    pki.issue("old", &["spiffe://e2e/operator/alice".to_owned()], true)?;
    let other = Pki::with(&[("alice", vec!["spiffe://e2e/operator/alice".to_owned()])])?;
    let (mut coordinator, url, log) =
        tls_coordinator(&pki, "[operators]\nalice = \"admin\"\n").await?;
    let (ca, alice) = (
        pki.path("ca.crt"),
        (pki.path("alice.crt"), pki.path("alice.key")),
    );
    let alice = (alice.0.as_str(), alice.1.as_str());

    let (code, ok) = status_with(&url, &ca, Some(alice));
    assert_eq!(code, Some(0), "the right certificates work: {ok}");
    type Case<'a> = (&'a str, (Option<i32>, String), &'a str);
    let cases: Vec<Case> = vec![
        (
            "a CA that did not sign the server",
            status_with(&url, &other.path("ca.crt"), Some(alice)),
            "the server's certificate is not signed by a CA this side trusts (unknown CA); give the CA that signs the server's certificate",
        ),
        (
            "no client certificate",
            status_with(&url, &ca, None),
            "requires a client certificate and none was sent; give --cert and --key",
        ),
        (
            "a client certificate another CA signed",
            status_with(
                &url,
                &ca,
                Some((&other.path("alice.crt"), &other.path("alice.key"))),
            ),
            "the server does not trust this client's certificate (unknown CA)",
        ),
        (
            "an expired client certificate",
            status_with(
                &url,
                &ca,
                Some((&pki.path("old.crt"), &pki.path("old.key"))),
            ),
            "expired at 2020-12-31T00:00:00Z",
        ),
        (
            "a name the server's certificate does not hold",
            status_with(&url.replace("127.0.0.1", "localhost"), &ca, Some(alice)),
            "the server's certificate is for 127.0.0.1, not localhost",
        ),
        (
            "plaintext to the TLS port",
            status_with(&url.replace("https://", "http://"), &ca, Some(alice)),
            "speaks TLS, and this side sent plaintext: use https://",
        ),
        (
            "a key that is not the certificate's",
            status_with(&url, &ca, Some((alice.0, &pki.path("vic.key")))),
            "--ca-cert/--cert/--key:",
        ),
    ];
    for (what, (code, stderr), want) in &cases {
        assert!(
            stderr.contains(want),
            "{what}: wanted {want:?} in: {stderr}"
        );
        assert_ne!(*code, Some(0), "{what}: {stderr}");
    }
    let (code, _) = &cases[6].1;
    assert_eq!(*code, Some(64), "a mismatched key is a usage error");

    // An agent with the wrong CA says why in its log.
    let (_agent, agent_log) = {
        let dir = pki.dir.path().join("agent");
        fs::create_dir_all(&dir)?;
        let config = dir.join("agent.toml");
        fs::write(
            &config,
            format!(
                "member_id = \"n1\"\ncluster_id = \"e2e\"\ncoordinator = {url:?}\nheartbeat_ms = 200\ndata_dir = {:?}\nstate_dir = {:?}\n[target]\nkind = \"samplekv\"\naddr = \"127.0.0.1:{}\"\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
                dir.to_string_lossy(),
                dir.to_string_lossy(),
                free_port(),
                other.path("ca.crt"),
                pki.path("n1.crt"),
                pki.path("n1.key"),
            ),
        )?;
        let mut cmd = Command::new(bin("baton-agent"));
        cmd.arg("--config").arg(&config);
        let log = dir.join("agent.log");
        (Proc::spawn("agent", &mut cmd, &log)?, log)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !plain_log(&agent_log).contains("not signed by a CA this side trusts") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent never said why TLS failed: {}",
            plain_log(&agent_log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The coordinator named the peer and the cause of each kind of refusal,
    // and said each once although the CLI and the agent tried repeatedly.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let refusals = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.contains("refused a TLS handshake"))
            .map(str::to_owned)
            .collect()
    };
    let wanted = [
        "the client sent no certificate",
        "the client's certificate is not signed by a CA this side trusts",
        "the client's certificate expired at 2020-12-31T00:00:00Z",
        "the client spoke plaintext to this TLS port",
    ];
    loop {
        let lines = refusals(&plain_log(&log));
        let missing: Vec<_> = wanted
            .iter()
            .filter(|w| !lines.iter().any(|l| l.contains(*w)))
            .collect();
        if missing.is_empty() {
            for w in wanted {
                let n = lines.iter().filter(|l| l.contains(w)).count();
                assert_eq!(n, 1, "{w:?} logged {n} times: {lines:#?}");
            }
            assert!(
                lines.iter().all(|l| l.contains("peer=127.0.0.1:")),
                "{lines:#?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the coordinator did not log {missing:?}: {lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(coordinator.is_running(), "the coordinator went down");
    Ok(())
}

/// Replaces `to` with `from`'s bytes in one rename, as a deploy tool
/// would, so no reader sees half a file.
fn put(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    let tmp = to.with_extension("new");
    fs::copy(from, &tmp)?;
    fs::rename(&tmp, to)?;
    Ok(())
}

fn put_text(text: &str, to: &std::path::Path) -> Result<()> {
    let tmp = to.with_extension("new");
    fs::write(&tmp, text)?;
    fs::rename(&tmp, to)?;
    Ok(())
}

/// Waits until the coordinator log has more than `seen` lines containing
/// `what`; their count.
async fn wait_log(log: &std::path::Path, what: &str, seen: usize) -> Result<usize> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = plain_log(log).lines().filter(|l| l.contains(what)).count();
        if n > seen {
            return Ok(n);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the coordinator never logged {what:?} (seen {seen}): {}",
            plain_log(log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Certificates rotated to a new CA in the middle of a rollout, without a
/// restart: the coordinator picks up its new certificate and client CA
/// when the files change (and again on SIGHUP), a broken file is refused
/// while it keeps serving, the rollout completes, and once the old CA is
/// dropped every agent connects again with its rotated certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotated_mid_rollout_are_used_and_the_rollout_completes() -> Result<()> {
    use baton_harness::{Cluster, ClusterSpec, dev_certs};
    let spec = ClusterSpec {
        tls: true,
        policy: "tolerable_lag = 50\nhealth_timeout_ms = 20000\ncatchup_timeout_ms = 30000\n"
            .into(),
        ..ClusterSpec::supervised(3)
    };
    let mut cluster = Cluster::start(spec).await?;
    let log = cluster.dir.path().join("coordinator.log");
    let pki = cluster.pki_dir();
    cluster.publish("v2", 1, false)?;
    let (code, _, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "v2", "--detach"]))?;
    assert_eq!(code, 0, "{stderr}");
    cluster
        .wait_status("a first member on v2", Duration::from_secs(60), |s| {
            s.members
                .iter()
                .any(|m| m.report.as_ref().is_some_and(|r| r.state.release == "v2"))
        })
        .await?;

    // Rotate: a new CA, trusted beside the old one for now; every leaf
    // re-issued by it, written over the files the processes were started
    // with.
    let new = cluster.dir.path().join("pki-new");
    let names: Vec<String> = (1..=3).map(|i| format!("n{i}")).collect();
    dev_certs(&new, &names)?;
    let old_ca = fs::read_to_string(pki.join("ca.crt"))?;
    let new_ca = fs::read_to_string(new.join("ca.crt"))?;
    let reloaded = "TLS certificate, key and client CA reloaded";
    let before = plain_log(&log)
        .lines()
        .filter(|l| l.contains(reloaded))
        .count();
    put_text(&format!("{old_ca}{new_ca}"), &pki.join("ca.crt"))?;
    for f in ["member-n1", "member-n2", "member-n3", "operator-alice"] {
        put(&new.join(format!("{f}.crt")), &pki.join(format!("{f}.crt")))?;
        put(&new.join(format!("{f}.key")), &pki.join(format!("{f}.key")))?;
    }
    put(&new.join("coordinator.key"), &pki.join("coordinator.key"))?;
    put(&new.join("coordinator.crt"), &pki.join("coordinator.crt"))?;
    let seen = wait_log(&log, reloaded, before).await?;

    // A client that trusts only the new CA, with a certificate only the
    // new CA signed: served, so both the server certificate and the client
    // CA in use are the new ones. (The two files can land in two reloads.)
    let new_only = |flags: &[&str]| {
        let mut cmd = Command::new(bin("baton"));
        cmd.args([
            "--coordinator",
            &cluster.coordinator_url,
            "--output",
            "json",
        ])
        .arg("--ca-cert")
        .arg(new.join("ca.crt"))
        .arg("--cert")
        .arg(new.join("operator-alice.crt"))
        .arg("--key")
        .arg(new.join("operator-alice.key"))
        .args(flags);
        cmd.output()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let out = new_only(&["status"])?;
        if out.status.success() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated certificates were never served: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A broken key: refused, and the coordinator goes on with what it had.
    let good_key = fs::read_to_string(pki.join("coordinator.key"))?;
    let failed = "TLS reload failed; still serving";
    let fails = plain_log(&log)
        .lines()
        .filter(|l| l.contains(failed))
        .count();
    put_text("not a key\n", &pki.join("coordinator.key"))?;
    wait_log(&log, failed, fails).await?;
    assert!(new_only(&["status"])?.status.success(), "still serving");
    put_text(&good_key, &pki.join("coordinator.key"))?;
    let seen = wait_log(&log, reloaded, seen).await?;
    // SIGHUP reloads too.
    let coordinator = cluster.coordinator.as_ref().expect("coordinator");
    coordinator.signal(nix::sys::signal::Signal::SIGHUP);
    wait_log(&log, "SIGHUP", 0).await?;
    wait_log(&log, reloaded, seen).await?;

    // The rollout completes.
    let (code, _, stderr) = tokio::task::block_in_place(|| cluster.baton_json(&["watch"]))?;
    assert_eq!(
        code, 0,
        "the rollout completes after the rotation: {stderr}"
    );
    cluster
        .wait_status("everyone on v2", Duration::from_secs(30), |s| {
            s.members
                .iter()
                .all(|m| m.fresh && m.report.as_ref().is_some_and(|r| r.state.release == "v2"))
        })
        .await?;

    // Drop the old CA and restart the coordinator, so every agent must
    // connect again: each reads its rotated files (the old ones in memory
    // would trust no server now, and be trusted by none).
    put_text(&new_ca, &pki.join("ca.crt"))?;
    drop(cluster.coordinator.take());
    cluster.start_coordinator()?;
    cluster
        .wait_status(
            "every agent back on the new CA",
            Duration::from_secs(30),
            |s| s.members.iter().all(|m| m.connected && m.fresh),
        )
        .await?;
    Ok(())
}

/// Bearer tokens: stored hashed in `[tokens]`, accepted only over TLS, each
/// acting with its role (and named `token/<name>`); with tokens configured
/// a client may come without a certificate, yet an agent without one is
/// still refused. No token is ever written to the log.
#[tokio::test]
async fn a_bearer_token_acts_with_its_role_and_a_certless_agent_is_still_refused() -> Result<()> {
    use sha2::Digest;
    init();
    let pki = Pki::new()?;
    let hash = |t: &str| -> String {
        sha2::Sha256::digest(t.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let (bot, ci) = ("bot-9f2c41d7a8", "ci-61aa03e5b2");
    let (mut coordinator, url, log) = tls_coordinator(
        &pki,
        &format!(
            "[operators]\nalice = \"admin\"\n[tokens]\nbot = {{ sha256 = \"{}\", role = \"viewer\" }}\nci = {{ sha256 = \"{}\", role = \"operator\" }}\n",
            hash(bot),
            hash(ci)
        ),
    )
    .await?;
    let token_file = |name: &str, token: &str| -> Result<String> {
        let p = pki.dir.path().join(format!("{name}.token"));
        fs::write(&p, format!("{token}\n"))?;
        Ok(p.to_string_lossy().into_owned())
    };
    let with_token = |url: &str, file: &str, args: &[&str]| {
        let out = Command::new(bin("baton"))
            .args(["--coordinator", url, "--ca-cert", &pki.path("ca.crt")])
            .args(["--token-file", file])
            .args(args)
            .output()
            .expect("run baton");
        (
            out.status.code(),
            without_colours(&String::from_utf8_lossy(&out.stderr)),
        )
    };
    let (bot_file, ci_file) = (token_file("bot", bot)?, token_file("ci", ci)?);
    let (code, stderr) = with_token(&url, &bot_file, &["status"]);
    assert_eq!(code, Some(0), "a viewer token reads the status: {stderr}");
    let (code, stderr) = with_token(&url, &bot_file, &["upgrade", "--to", "v2", "--detach"]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("token/bot is a viewer, and upgrade needs operator"),
        "{stderr}"
    );
    let (code, stderr) = with_token(&url, &ci_file, &["plan", "--to", "v2"]);
    assert!(
        !stderr.contains("refused: "),
        "an operator token may plan: {code:?} {stderr}"
    );
    let (code, stderr) = with_token(&url, &token_file("bad", "guess")?, &["status"]);
    assert_ne!(code, Some(0));
    assert!(stderr.contains("matches none"), "{stderr}");
    let (code, stderr) = with_token(&url.replace("https://", "http://"), &bot_file, &["status"]);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("only over TLS"), "{stderr}");
    // Certificates still work beside tokens.
    let out = baton_status(&url, &pki, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An agent without a certificate now completes the handshake, and its
    // Hello is refused.
    let ch = tls_channel(&url, &pki, None).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(baton_harness::wire::hello("n1")).await?;
    let refused = baton_proto::v1::agent_link_client::AgentLinkClient::new(ch)
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("a certless agent was let in");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("no client certificate was presented"),
        "{refused:?}"
    );
    let text = plain_log(&log);
    assert!(
        !text.contains(bot) && !text.contains(ci) && !text.contains("guess"),
        "a token reached the log"
    );
    assert!(coordinator.is_running());
    drop(tx);
    Ok(())
}
