//! Real etcd: roll a live 3.4.23 cluster to 3.5.1 under baton, with a writer
//! through the etcd API at >= 100 writes/s; then check the version rules
//! against the upgraded cluster. One cluster serves its clients only over
//! TLS with client certificates required, and the agents read and upgrade
//! it through `[target.tls]`.

use std::time::Duration;

use anyhow::Result;
use baton_harness::etcd::{
    ETCD_34, EtcdCluster, EtcdLoad, EtcdOptions, EtcdTls, assert_version, etcd_35, etcd_verify,
    etcd_writer,
};
use tokio_util::sync::CancellationToken;

const POLICY: &str = "tolerable_lag = 200\nhealth_timeout_ms = 30000\ncatchup_timeout_ms = 30000\nhandover_timeout_ms = 5000\n";

/// Starts an upgrade to 3.5.1, aborts it once the first member is done, and
/// waits for the rollout to pause. Returns that member and the final
/// `baton watch` JSON.
async fn abort_after_first_member(cluster: &EtcdCluster) -> Result<(String, serde_json::Value)> {
    let (code, _, stderr) = tokio::task::block_in_place(|| {
        cluster.baton_json(&["upgrade", "--to", "3.5.1", "--detach"])
    })?;
    assert_eq!(code, 0, "{stderr}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let first = loop {
        let (_, r, _) = tokio::task::block_in_place(|| cluster.baton_json(&["rollout"]))?;
        let first = r["state"]["order"][0]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if r["state"]["members"][&first]["stage"]["stage"] == "done" {
            break first;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "first member never finished: {r:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (code, _, stderr) = tokio::task::block_in_place(|| cluster.baton_json(&["abort"]))?;
    assert_eq!(code, 0, "{stderr}");
    let (code, out, _) = tokio::task::block_in_place(|| cluster.baton_json(&["watch"]))?;
    assert_eq!(code, 3, "abort pauses the rollout: {out:#}");
    Ok((first, out))
}

async fn full_upgrade(n: usize) -> Result<EtcdCluster> {
    let e35 = etcd_35()?;
    assert_version(&e35, "3.5.1")?;
    assert_version(std::path::Path::new(ETCD_34), "3.4.23")?;
    let cluster = EtcdCluster::start(n, POLICY).await?;
    cluster.publish("3.5.1", &e35)?;
    let before = cluster.status()?;
    let leader = before.leader.clone().expect("a leader").to_string();

    let load = EtcdLoad::start(&cluster, "w-", 120).await?;
    let (code, out, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "3.5.1"]))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.finish().await?;
    assert_eq!(code, 0, "upgrade: {stderr} {out:#}");
    let lost = etcd_verify(&cluster.clients(), &report).await?;

    // Every member reports 3.5.1, and the cluster version follows to 3.5.
    cluster
        .wait_status(
            "every member on 3.5.1 and cluster version 3.5",
            Duration::from_secs(30),
            |s| {
                s.members.iter().all(|m| {
                    m.report.as_ref().is_some_and(|r| {
                        r.state.release == "3.5.1" && r.state.cluster_version.starts_with("3.5")
                    })
                })
            },
        )
        .await?;
    let order: Vec<String> = serde_json::from_value(out["summary"]["order"].clone())?;
    assert_eq!(
        order.last(),
        Some(&leader),
        "the leader at the start went last"
    );
    let rate = report.acked.len() as f64 * 1000.0 / report.duration_ms.max(1) as f64;
    assert!(rate >= 100.0, "writer ran at {rate:.0}/s");
    assert_eq!(
        report.leader_changes(),
        1,
        "exactly one leader change (raft terms seen: {:?})",
        report.terms
    );
    assert_eq!(lost, Vec::<String>::new(), "no acked write lost");
    eprintln!(
        "{n} etcd members: total {} ms, acked {}, failed {}, max gap {} ms, terms {:?}",
        out["summary"]["total_ms"],
        report.acked.len(),
        report.failed,
        report.max_write_gap_ms,
        report.terms
    );
    Ok(cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_go_from_3_4_to_3_5_and_version_rules_hold() -> Result<()> {
    let cluster = full_upgrade(3).await?;

    // The cluster version is 3.5 now: going back to 3.4.23 is refused before
    // anything is touched, and the message says why. (3.4.23 is in the
    // store since the start; releases are immutable, so it is not
    // published again.)
    let (code, out, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "3.4.23"]))?;
    assert_eq!(code, 2, "{stderr} {out:#}");
    let why: Vec<String> = out["checks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter(|c| c["check"] == "version-path" && c["ok"] == false)
        .map(|c| c["detail"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(why.len(), 3, "every member refuses: {out:#}");
    assert!(
        why[0].contains("the cluster version is 3.5")
            && why[0].contains("3.4.23 would be a downgrade"),
        "{why:?}"
    );

    // A path that skips a minor release (a made-up 3.7.0) is refused too.
    cluster.publish("3.7.0", &etcd_35()?)?;
    let (code, out, _) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "3.7.0"]))?;
    assert_eq!(code, 2);
    let text = out["checks"].to_string();
    assert!(
        text.contains("3.5.1 -> 3.7.0 skips minor release 3.6"),
        "{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_go_from_3_4_to_3_5() -> Result<()> {
    full_upgrade(5).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_half_way_leaves_a_healthy_mixed_cluster_and_resume_finishes() -> Result<()> {
    let e35 = etcd_35()?;
    assert_version(&e35, "3.5.1")?;
    let cluster = EtcdCluster::start(3, POLICY).await?;
    cluster.publish("3.5.1", &e35)?;
    let load = EtcdLoad::start(&cluster, "a-", 100).await?;
    let (_, out) = abort_after_first_member(&cluster).await?;
    let state = &out["rollout"]["state"];
    assert!(
        state["phase"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("aborted")
    );
    let leader_at_start = state["original_leader"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // A healthy, mixed 3.4/3.5 cluster: one leader, everyone serving, the
    // old leader still on 3.4.23.
    let mixed = cluster
        .wait_status("healthy and mixed", Duration::from_secs(30), |s| {
            s.leader.is_some()
                && s.members.iter().all(|m| {
                    m.report
                        .as_ref()
                        .is_some_and(|r| r.state.health == baton_domain::Health::Healthy)
                })
        })
        .await?;
    let releases: Vec<String> = mixed
        .members
        .iter()
        .map(|m| {
            m.report
                .as_ref()
                .map(|r| r.state.release.clone())
                .unwrap_or_default()
        })
        .collect();
    assert!(
        releases.iter().any(|r| r == "3.5.1") && releases.iter().any(|r| r == "3.4.23"),
        "{releases:?}"
    );
    let old_leader_row = mixed
        .members
        .iter()
        .find(|m| m.member.as_str() == leader_at_start)
        .expect("row");
    assert_eq!(
        old_leader_row
            .report
            .as_ref()
            .map(|r| r.state.release.as_str()),
        Some("3.4.23")
    );
    assert!(mixed.members.iter().all(|m| {
        m.report
            .as_ref()
            .is_some_and(|r| r.state.cluster_version.starts_with("3.4"))
    }));

    let (code, _, stderr) = tokio::task::block_in_place(|| cluster.baton_json(&["resume"]))?;
    assert_eq!(code, 0, "{stderr}");
    let (code, out, stderr) = tokio::task::block_in_place(|| cluster.baton_json(&["watch"]))?;
    assert_eq!(code, 0, "resume finishes: {stderr} {out:#}");
    let report = load.finish().await?;
    let lost = etcd_verify(&cluster.clients(), &report).await?;
    assert_eq!(lost, Vec::<String>::new());
    cluster
        .wait_status("all on 3.5.1", Duration::from_secs(30), |s| {
            s.members.iter().all(|m| {
                m.report
                    .as_ref()
                    .is_some_and(|r| r.state.release == "3.5.1")
            })
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_the_cluster_version_moves_an_upgraded_member_rolls_back_to_3_4() -> Result<()> {
    let e35 = etcd_35()?;
    assert_version(&e35, "3.5.1")?;
    let cluster = EtcdCluster::start(3, POLICY).await?;
    cluster.publish("3.5.1", &e35)?;
    let load = EtcdLoad::start(&cluster, "r-", 100).await?;
    let (first, _) = abort_after_first_member(&cluster).await?;
    let mixed = cluster.status()?;
    assert!(mixed.members.iter().all(|m| {
        m.report
            .as_ref()
            .is_some_and(|r| r.state.cluster_version.starts_with("3.4"))
    }));
    let upgraded: Vec<String> = mixed
        .members
        .iter()
        .filter(|m| {
            m.report
                .as_ref()
                .is_some_and(|r| r.state.release == "3.5.1")
        })
        .map(|m| m.member.to_string())
        .collect();
    assert!(upgraded.contains(&first), "{upgraded:?}");

    // Roll back: only the upgraded members move, in reverse order, leader last.
    let (code, out, stderr) = tokio::task::block_in_place(|| cluster.baton_json(&["rollback"]))?;
    assert_eq!(code, 0, "rollback: {stderr} {out:#}");
    let order: Vec<String> = serde_json::from_value(out["summary"]["order"].clone())?;
    let mut expected = upgraded.clone();
    expected.sort();
    let mut got = order.clone();
    got.sort();
    assert_eq!(
        got, expected,
        "the rollback touched exactly the upgraded members"
    );
    let report = load.finish().await?;
    let lost = etcd_verify(&cluster.clients(), &report).await?;
    assert_eq!(lost, Vec::<String>::new());
    cluster
        .wait_status("all back on 3.4.23", Duration::from_secs(30), |s| {
            s.leader.is_some()
                && s.members.iter().all(|m| {
                    m.report.as_ref().is_some_and(|r| {
                        r.state.release == "3.4.23"
                            && r.state.cluster_version.starts_with("3.4")
                            && r.state.health == baton_domain::Health::Healthy
                    })
                })
        })
        .await?;
    let (_, history, _) = cluster.baton_json(&["history"])?;
    let outcomes: Vec<String> = history
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|h| h["outcome"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(outcomes.len(), 2, "{history:#}");
    assert!(
        outcomes[0].starts_with("closed: rolled back by r2-rollback-to-3.4.23"),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1], "completed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_streams_to_a_file_and_verifies() -> Result<()> {
    let cluster = EtcdCluster::start(3, POLICY).await?;
    let stop = CancellationToken::new();
    let report = etcd_writer(cluster.clients(), "s-".into(), 200, 100, stop).await;
    assert_eq!(report.acked.len(), 100);
    // The snapshot comes from member 1, which may be a follower a few
    // entries behind the acks: a linearizable read through it returns only
    // once it has applied everything committed, so the snapshot holds
    // every acked write.
    let mut follower = etcd_client::Client::connect(
        [format!("http://{}", cluster.clients()[1])],
        Some(etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(5))),
    )
    .await?;
    let read = follower.get("s-", None).await?;
    let applied = read.header().map_or(0, |h| h.revision());
    assert!(applied > 100, "member 1 applied revision {applied}");
    let target =
        baton_agent::adapter::EtcdTarget::new(&cluster.clients()[1], Duration::from_secs(10));
    let dest = cluster.dir.path().join("backup.db");
    let snap = target.snapshot_to(&dest).await?;
    assert!(snap.bytes > 0 && dest.exists());
    assert_eq!(baton_store::sha256_file(&dest)?, snap.sha256);
    // etcd's own tool reads it back and sees the writes.
    let out = std::process::Command::new("/usr/bin/etcdctl")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&dest)
        .env("ETCDCTL_API", "3")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(status["revision"].as_u64().unwrap_or(0) > 100, "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_mode_upgrades_with_the_operators_own_start_and_stop_commands() -> Result<()> {
    let e35 = etcd_35()?;
    assert_version(&e35, "3.5.1")?;
    let cluster = EtcdCluster::start_with(3, POLICY, true).await?;
    cluster.publish("3.5.1", &e35)?;
    let leader = cluster.status()?.leader.expect("leader").to_string();
    let (code, out, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "3.5.1"]))?;
    assert_eq!(code, 0, "upgrade in exec mode: {stderr} {out:#}");
    let order: Vec<String> = serde_json::from_value(out["summary"]["order"].clone())?;
    assert_eq!(order.last(), Some(&leader));
    cluster
        .wait_status("all on 3.5.1", Duration::from_secs(30), |s| {
            s.members.iter().all(|m| {
                m.report
                    .as_ref()
                    .is_some_and(|r| r.state.release == "3.5.1")
            })
        })
        .await?;
    // The agents ran the operator's scripts, not a supervisor.
    let state = &out["rollout"]["state"]["commands"];
    let details: Vec<String> = state
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|c| c["result"]["Ok"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    assert!(
        details
            .iter()
            .any(|d| d.contains("start.sh") && d.contains("exited 0")),
        "{details:?}"
    );
    assert!(
        details
            .iter()
            .any(|d| d.contains("stop.sh") && d.contains("exited 0")),
        "{details:?}"
    );
    Ok(())
}

/// A CA, etcd's server certificate (for 127.0.0.1) and the agents' client
/// certificate, written as PEM files under `dir`.
fn etcd_pki(dir: &std::path::Path) -> Result<EtcdTls> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let path = |f: &str| dir.join(f);
    std::fs::write(path("ca.crt"), ca_cert.pem())?;
    let issuer = Issuer::new(ca, ca_key);
    for (name, sans) in [
        (
            "server",
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
        ),
        ("agent", vec!["baton-agent".to_owned()]),
    ] {
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(sans)?.signed_by(&key, &issuer)?;
        std::fs::write(path(&format!("{name}.crt")), cert.pem())?;
        std::fs::write(path(&format!("{name}.key")), key.serialize_pem())?;
    }
    Ok(EtcdTls {
        ca: path("ca.crt"),
        server_cert: path("server.crt"),
        server_key: path("server.key"),
        client_cert: path("agent.crt"),
        client_key: path("agent.key"),
    })
}

/// A client of the test's own, over TLS with the agents' certificate.
async fn tls_client(cluster: &EtcdCluster, tls: &EtcdTls) -> Result<etcd_client::Client> {
    use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
    let endpoints: Vec<String> = cluster
        .clients()
        .iter()
        .map(|c| format!("https://{c}"))
        .collect();
    let options = ConnectOptions::new()
        .with_timeout(Duration::from_secs(2))
        .with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(std::fs::read(&tls.ca)?))
                .identity(Identity::from_pem(
                    std::fs::read(&tls.client_cert)?,
                    std::fs::read(&tls.client_key)?,
                )),
        );
    Ok(etcd_client::Client::connect(endpoints, Some(options)).await?)
}

/// The etcd adapter as member `i`'s agent would build it from its config
/// file, after `edit` (e.g. dropping the client certificate).
fn adapter_from_agent_config(
    cluster: &EtcdCluster,
    i: usize,
    edit: impl Fn(&str) -> String,
) -> Result<baton_agent::adapter::EtcdTarget> {
    use baton_agent::adapter::etcd::EtcdConfig;
    use baton_agent::config::AgentConfig;
    let path = &cluster.members[i].agent_config;
    let text = edit(&std::fs::read_to_string(path)?);
    let config = AgentConfig::from_toml(&text, path, &Default::default())?;
    let mut target = toml::from_str::<toml::Table>(&text)?
        .remove("target")
        .and_then(|t| t.as_table().cloned())
        .ok_or_else(|| anyhow::anyhow!("member {i}'s agent config has no [target]"))?;
    anyhow::ensure!(
        target
            .remove("kind")
            .and_then(|k| k.as_str().map(str::to_owned))
            .as_deref()
            == Some("etcd"),
        "member {i}'s agent is not configured for etcd"
    );
    let etcd = EtcdConfig::from_table(target)?;
    anyhow::ensure!(etcd.tls.is_some(), "[target.tls] is set");
    Ok(baton_agent::adapter::EtcdTarget::from_config(
        &config.member,
        &etcd,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_that_requires_client_certificates_is_read_and_upgraded_over_tls() -> Result<()> {
    use baton_agent::adapter::Adapter;
    use baton_domain::Role;
    let e35 = etcd_35()?;
    assert_version(&e35, "3.5.1")?;
    assert_version(std::path::Path::new(ETCD_34), "3.4.23")?;
    let pki = tempfile::tempdir()?;
    let tls = etcd_pki(pki.path())?;
    // `start` waits until every agent reports its member healthy with one
    // leader: each read Status, MemberList and /version through TLS.
    let cluster = EtcdCluster::start_opts(
        3,
        POLICY,
        EtcdOptions {
            tls: Some(tls.clone()),
            ..EtcdOptions::default()
        },
    )
    .await?;
    let before = cluster.status()?;
    let leader = before.leader.clone().expect("a leader").to_string();
    let roles: Vec<Role> = before
        .members
        .iter()
        .filter_map(|m| m.report.as_ref().map(|r| r.state.role))
        .collect();
    assert_eq!(
        (
            roles.iter().filter(|r| **r == Role::Leader).count(),
            roles.iter().filter(|r| **r == Role::Follower).count()
        ),
        (1, 2),
        "one leader, two followers: {roles:?}"
    );
    for m in &before.members {
        let r = m.report.as_ref().expect("a report");
        assert!(r.state.applied_revision > 0, "{}: {r:?}", m.member);
        assert!(
            m.lag.is_some_and(|lag| lag <= 200),
            "{}: lag {:?}",
            m.member,
            m.lag
        );
        assert_eq!(r.state.release, "3.4.23");
        assert!(r.state.cluster_version.starts_with("3.4"), "{r:?}");
    }

    // etcd really insists: plaintext gets nowhere, and neither does TLS
    // without the client certificate; the adapter says which member and why.
    let plain =
        baton_agent::adapter::EtcdTarget::new(&cluster.clients()[0], Duration::from_secs(2));
    assert!(plain.poll().await.is_err(), "etcd answered plaintext");
    let no_cert = adapter_from_agent_config(&cluster, 0, |t| {
        t.lines()
            .filter(|l| !l.starts_with("cert = ") && !l.starts_with("key = "))
            .map(|l| format!("{l}\n"))
            .collect()
    })?;
    let err = no_cert
        .poll()
        .await
        .expect_err("read without a client cert")
        .to_string();
    eprintln!("without a client certificate: {err}");
    assert!(
        err.contains("etcd member n1 at https://127.0.0.1:")
            && err.contains("TLS handshake failed")
            && err.contains("because this client sent no certificate")
            && err.contains("--client-cert-auth")
            && err.contains("[target.tls] cert and key"),
        "{err}"
    );

    // Writes through TLS, then a real rollout to 3.5.1 (handovers by
    // MoveLeader over TLS), and every write still there.
    let mut client = tls_client(&cluster, &tls).await?;
    for i in 0..50 {
        client.put(format!("t-{i:03}"), "x", None).await?;
    }
    cluster.publish("3.5.1", &e35)?;
    let (code, out, stderr) =
        tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", "3.5.1"]))?;
    assert_eq!(code, 0, "upgrade over TLS: {stderr} {out:#}");
    let order: Vec<String> = serde_json::from_value(out["summary"]["order"].clone())?;
    assert_eq!(order.last(), Some(&leader), "the leader went last");
    let after = cluster
        .wait_status(
            "every member on 3.5.1 and cluster version 3.5, over TLS",
            Duration::from_secs(30),
            |s| {
                s.leader.is_some()
                    && s.members.iter().all(|m| {
                        m.report.as_ref().is_some_and(|r| {
                            r.state.release == "3.5.1"
                                && r.state.cluster_version.starts_with("3.5")
                                && r.state.health == baton_domain::Health::Healthy
                        })
                    })
            },
        )
        .await?;
    assert_ne!(
        after.leader.as_ref().map(ToString::to_string),
        Some(leader.clone()),
        "leadership was handed over"
    );
    let got = client
        .get("t-", Some(etcd_client::GetOptions::new().with_prefix()))
        .await?;
    assert_eq!(got.kvs().len(), 50, "no write lost in the rollout");

    // A snapshot over TLS, verified, that etcd's own tool reads.
    let adapter = adapter_from_agent_config(&cluster, 1, str::to_owned)?;
    let dest = cluster.dir.path().join("tls-backup.db");
    let snap = adapter.snapshot_to(&dest).await?;
    assert_eq!(baton_store::sha256_file(&dest)?, snap.sha256);
    let out = std::process::Command::new("/usr/bin/etcdctl")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&dest)
        .env("ETCDCTL_API", "3")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(status["revision"].as_u64().unwrap_or(0) > 50, "{status}");
    Ok(())
}
