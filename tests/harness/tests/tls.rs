//! Every gRPC link goes through rustls: a coordinator with a server
//! certificate and a client CA accepts a real agent that presents its
//! certificate, serves `baton status` over TLS, and refuses a client without
//! a certificate and a plaintext client. Replica processes speak mutual TLS
//! to each other, and one with another CA's certificate gets nothing.

use std::fs;
use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use baton_domain::FleetStatus;
use baton_harness::{Proc, bin, free_port, init, read_journal};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

struct Pki {
    dir: tempfile::TempDir,
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
        ])
    }

    /// A CA of its own, and one certificate it signs per `(name, SANs)`.
    fn with(certs: &[(&str, Vec<String>)]) -> Result<Pki> {
        let dir = tempfile::tempdir()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;
        fs::write(dir.path().join("ca.crt"), ca_cert.pem())?;
        let issuer = Issuer::new(ca, ca_key);
        for (name, sans) in certs {
            let key = KeyPair::generate()?;
            let cert = CertificateParams::new(sans.clone())?.signed_by(&key, &issuer)?;
            fs::write(dir.path().join(format!("{name}.crt")), cert.pem())?;
            fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem())?;
        }
        Ok(Pki { dir })
    }

    fn path(&self, f: &str) -> String {
        self.dir.path().join(f).to_string_lossy().into_owned()
    }
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
        cmd.args(["--cert", &pki.path("n1.crt"), "--key", &pki.path("n1.key")]);
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
            "cluster_id = \"e2e\"\nlisten = \"127.0.0.1:{port}\"\nheartbeat_ms = 200\nmembers = [\"n1\"]\n[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n",
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
    let agent_dir = pki.dir.path().join("agent");
    fs::create_dir_all(&agent_dir)?;
    let agent_config = agent_dir.join("agent.toml");
    fs::write(
        &agent_config,
        format!(
            "member_id = \"n1\"\ncluster_id = \"e2e\"\ncoordinator = {url:?}\nheartbeat_ms = 200\npoll_ms = 50\ndata_dir = {:?}\nstate_dir = {:?}\n[target]\nkind = \"samplekv\"\naddr = \"127.0.0.1:{}\"\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            agent_dir.to_string_lossy(),
            agent_dir.to_string_lossy(),
            free_port(),
            pki.path("ca.crt"),
            pki.path("n1.crt"),
            pki.path("n1.key"),
        ),
    )?;
    let mut cmd = Command::new(bin("baton-agent"));
    cmd.arg("--config").arg(&agent_config);
    let _agent = Proc::spawn("agent", &mut cmd, &agent_dir.join("agent.log"))?;

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
    let sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let pki = Pki::with(&[("coordinator", sans.clone()), ("n1", vec!["n1".to_owned()])])?;
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
                "cluster_id = \"e2e\"\nlisten = \"127.0.0.1:{}\"\nheartbeat_ms = 200\nmembers = [\"n1\"]\nstate_dir = {:?}\n[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\n[replication]\nid = {id}\npeers = {{ {peers} }}\n",
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
