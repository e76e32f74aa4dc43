//! `baton-backup-bench`: a backup's upload to S3 against `aws s3 cp` of the
//! same file to the same s3s-fs, side by side, behind BENCHMARKS.md.
//!
//! One s3s-fs, one file of `--mib` MiB (default 256) of incompressible
//! bytes. Each round, in alternating order, runs:
//! - `aws s3 cp` with the same part size and concurrency as baton's upload
//!   (8 MiB parts, 4 at once), path-style;
//! - `baton-backup-bench upload`: a child process that does
//!   `baton_store::backup::upload` to an `S3Store` holding the credentials,
//!   and prints its wall time and its peak RSS (`VmHWM`);
//! - `baton-backup-bench upload-granted`: the same upload through the
//!   `GrantedStore` agents use, every request presigned (here in-process,
//!   where an agent asks the coordinator over its link);
//! - `baton-backup-bench verify`: a child that does what the coordinator
//!   does before the first stop, re-reading every part, with its peak RSS.
//!
//! Prints one JSON line per round and the medians and ratio at the end.
//! Usage: `baton-backup-bench [--rounds N] [--mib M]`.
//!
//! `--in-rollout` measures the backup inside real rollouts instead: one
//! supervised 3-member samplekv cluster whose releases and backups live in
//! that s3s-fs (the agents hold no credentials and send what the
//! coordinator presigns), preloaded with `--mib` MiB of 64 KiB values, and
//! a writer at 100 writes/s throughout. Each round runs `--idle-ms` of
//! plain load, then `baton upgrade --to v{round+2}` with `backup =
//! "required"`, and compares the largest write gap while the backup runs
//! (from the backup command's issue to `backup_verified` in the journal)
//! with the largest in the window of the same length just before the
//! upgrade began. At the end it reads the peak RSS (`VmHWM`) of every agent
//! and of the coordinator, which lived through every round's backup.
//! Every acked write is read back each round.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use baton_harness::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use baton_harness::{Cluster, ClusterSpec, StoreSpec, unix_ms};
use baton_store::StoreError;
use baton_store::backup::BlobStore;
use baton_store::backup::{self, BackupSource};
use baton_store::granted::{Grant, GrantMethod, GrantedStore, Granter};
use baton_store::s3::{S3Settings, S3Store};
use futures::future::BoxFuture;
use samplekv::client::Client;
use samplekv::writer::{WriterConfig, run_writer, verify};
use tokio_util::sync::CancellationToken;

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn num(name: &str, default: u64) -> u64 {
    arg(name).and_then(|n| n.parse().ok()).unwrap_or(default)
}

/// The process's peak resident set, from `/proc/self/status`, in KiB.
fn vm_hwm_kib() -> u64 {
    vm_hwm_kib_of("self")
}

/// Process `pid`'s peak resident set (`VmHWM` in `/proc/<pid>/status`),
/// in KiB; 0 when it cannot be read.
fn vm_hwm_kib_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn settings() -> Result<S3Settings> {
    Ok(S3Settings {
        bucket: arg("--bucket").context("--bucket")?,
        prefix: String::new(),
        endpoint: Some(arg("--endpoint").context("--endpoint")?),
        region: "us-east-1".into(),
        access_key_id: ACCESS_KEY.into(),
        secret_access_key: SECRET_KEY.into(),
        session_token: None,
        presign_endpoint: None,
    })
}

/// Presigns in-process, as the coordinator does for an agent (without the
/// agent link's round trip per request).
#[derive(Debug)]
struct LocalGranter(S3Store);

impl Granter for LocalGranter {
    fn presign<'a>(
        &'a self,
        method: GrantMethod,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Grant, StoreError>> {
        Box::pin(async move {
            let ttl = Duration::from_secs(900);
            let request = match method {
                GrantMethod::Get => self.0.presign_get(key, ttl).await?,
                GrantMethod::Put => self.0.presign_put(key, ttl).await?,
                GrantMethod::Delete => self.0.presign_delete(key, ttl).await?,
            };
            Ok(Grant {
                request,
                location: BlobStore::location(&self.0),
            })
        })
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        self.0.list_blobs(prefix)
    }
}

/// Child mode: one upload or one verify, then a JSON line.
async fn child(mode: &str) -> Result<()> {
    let store = S3Store::new(settings()?)?;
    let id = arg("--id").context("--id")?;
    let t0 = Instant::now();
    let source = || BackupSource {
        cluster: "bench".into(),
        id: id.clone(),
        member: "n1".into(),
        adapter: "bench".into(),
        revision: 1,
        release: "v1".into(),
        release_format: 1,
    };
    let bytes = match mode {
        "upload-granted" => {
            let file = PathBuf::from(arg("--file").context("--file")?);
            let granted = GrantedStore::new(Arc::new(LocalGranter(store)), None)?;
            backup::upload(&granted, &source(), &file).await?.bytes
        }
        "upload" => {
            let file = PathBuf::from(arg("--file").context("--file")?);
            backup::upload(&store, &source(), &file).await?.bytes
        }
        "verify" => backup::verify(&store, "bench", &id).await?.bytes,
        other => bail!("unknown mode {other}"),
    };
    println!(
        "{}",
        serde_json::json!({"ms": t0.elapsed().as_millis() as u64, "bytes": bytes, "vm_hwm_kib": vm_hwm_kib()})
    );
    Ok(())
}

fn run_child(mode: &str, s3: &S3Server, id: &str, file: &Path) -> Result<serde_json::Value> {
    let out = Command::new(std::env::current_exe()?)
        .arg(mode)
        .args([
            "--endpoint",
            &s3.endpoint(),
            "--bucket",
            &s3.bucket,
            "--id",
            id,
        ])
        .arg("--file")
        .arg(file)
        .output()?;
    if !out.status.success() {
        bail!("{mode}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn aws_cp(s3: &S3Server, config: &Path, file: &Path, key: &str) -> Result<u64> {
    let t0 = Instant::now();
    let out = Command::new("aws")
        .env("AWS_CONFIG_FILE", config)
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .args([
            "s3",
            "cp",
            "--only-show-errors",
            "--endpoint-url",
            &s3.endpoint(),
        ])
        .arg(file)
        .arg(format!("s3://{}/{key}", s3.bucket))
        .output()
        .context("running aws (awscli)")?;
    if !out.status.success() {
        bail!("aws s3 cp: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t0.elapsed().as_millis() as u64)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// `mib` MiB of xorshift bytes, so nothing on the way can compress them.
fn write_file(path: &Path, mib: u64) -> Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        f.write_all(&block)?;
    }
    f.flush()?;
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Some(mode) = std::env::args().nth(1).filter(|m| !m.starts_with("--")) {
        return child(&mode).await;
    }
    let rounds = num("--rounds", 3).max(1);
    if std::env::args().any(|a| a == "--in-rollout") {
        let mib = num("--mib", 64).max(1);
        return in_rollout(rounds, mib, num("--idle-ms", 8000)).await;
    }
    let mib = num("--mib", 256).max(1);
    let dir = tempfile::Builder::new()
        .prefix("baton-backup-bench-")
        .tempdir()?;
    let s3 = S3Server::start(dir.path(), "bench").await?;
    let file = dir.path().join("snapshot.db");
    write_file(&file, mib)?;
    // The same part size and concurrency as baton's upload.
    let config = dir.path().join("aws-config");
    std::fs::write(
        &config,
        format!(
            "[default]\ns3 =\n  multipart_chunksize = {}MB\n  multipart_threshold = {}MB\n  max_concurrent_requests = {}\n  addressing_style = path\n",
            backup::PART_SIZE >> 20,
            backup::PART_SIZE >> 20,
            backup::UPLOAD_CONCURRENCY
        ),
    )?;
    rounds_side_by_side(&s3, &config, &file, rounds, mib)
}

/// `rounds` rounds of `aws s3 cp` and baton's upload and verify, in
/// alternating order; prints each round and then the medians.
fn rounds_side_by_side(
    s3: &S3Server,
    config: &Path,
    file: &Path,
    rounds: u64,
    mib: u64,
) -> Result<()> {
    let (mut aws, mut baton, mut verify, mut up_rss, mut verify_rss) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut granted, mut granted_rss) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let id = format!("b{round}");
        let gid = format!("g{round}");
        let one_baton = || -> Result<serde_json::Value> {
            let up = run_child("upload", s3, &id, file)?;
            let ve = run_child("verify", s3, &id, file)?;
            let gr = run_child("upload-granted", s3, &gid, file)?;
            Ok(serde_json::json!({"upload": up, "verify": ve, "upload_granted": gr}))
        };
        let (b, a) = if round % 2 == 0 {
            let b = one_baton()?;
            (b, aws_cp(s3, config, file, &format!("awscp/{round}"))?)
        } else {
            let a = aws_cp(s3, config, file, &format!("awscp/{round}"))?;
            (one_baton()?, a)
        };
        let ms = |v: &serde_json::Value, k: &str| v[k]["ms"].as_u64().unwrap_or(0);
        let rss = |v: &serde_json::Value, k: &str| v[k]["vm_hwm_kib"].as_u64().unwrap_or(0);
        println!(
            "{}",
            serde_json::json!({"round": round, "mib": mib, "aws_cp_ms": a, "baton": b})
        );
        aws.push(a);
        baton.push(ms(&b, "upload"));
        verify.push(ms(&b, "verify"));
        up_rss.push(rss(&b, "upload"));
        verify_rss.push(rss(&b, "verify"));
        granted.push(ms(&b, "upload_granted"));
        granted_rss.push(rss(&b, "upload_granted"));
        // Keep the server's disk bounded: one copy of each at a time.
        let _ = std::fs::remove_dir_all(s3.object_file(&format!("backups/bench/{id}")));
        let _ = std::fs::remove_dir_all(s3.object_file(&format!("backups/bench/{gid}")));
        let _ = std::fs::remove_file(s3.object_file(&format!("awscp/{round}")));
    }
    let (a, b, g) = (median(aws), median(baton), median(granted));
    let mibps = |ms: u64| mib as f64 / (ms.max(1) as f64 / 1000.0);
    println!(
        "{}",
        serde_json::json!({
            "rounds": rounds,
            "mib": mib,
            "median_aws_cp_ms": a,
            "median_baton_upload_ms": b,
            "median_baton_verify_ms": median(verify),
            "aws_cp_mib_per_s": format!("{:.1}", mibps(a)),
            "baton_mib_per_s": format!("{:.1}", mibps(b)),
            "throughput_ratio_baton_over_aws": format!("{:.2}", a as f64 / b.max(1) as f64),
            "median_granted_upload_ms": g,
            "granted_mib_per_s": format!("{:.1}", mibps(g)),
            "throughput_ratio_granted_over_aws": format!("{:.2}", a as f64 / g.max(1) as f64),
            "max_granted_upload_vm_hwm_mib": granted_rss.iter().max().copied().unwrap_or(0) / 1024,
            "max_upload_vm_hwm_mib": up_rss.iter().max().copied().unwrap_or(0) / 1024,
            "max_verify_vm_hwm_mib": verify_rss.iter().max().copied().unwrap_or(0) / 1024,
        })
    );
    Ok(())
}

const ROLLOUT_POLICY: &str = "backup = \"required\"\ntolerable_lag = 50\nhealth_timeout_ms = 30000\ncatchup_timeout_ms = 60000\nhandover_timeout_ms = 10000\nstall_after_ms = 60000\n";

/// Bytes per preloaded value.
const VALUE_BYTES: usize = 64 << 10;

/// Writes `mib` MiB of 64 KiB values (8 puts in flight), so the backup
/// document is at least that large.
async fn preload(client: &Client, mib: u64) -> Result<()> {
    let n = (mib << 20) / VALUE_BYTES as u64;
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        // Printable, incompressible-ish bytes: one of 64 letters per byte.
        let value: String = (0..VALUE_BYTES)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'0' + (x % 64) as u8)
            })
            .collect();
        if tasks.len() >= 8
            && let Some(done) = tasks.join_next().await
        {
            done??;
        }
        let c = client.clone();
        tasks.spawn(async move {
            c.put(&format!("preload-{i:06}"), &value)
                .await
                .map(|_| ())
                .map_err(|e| anyhow::anyhow!("preload write {i}: {e}"))
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// The `at` of the first journal entry at or after `from` that `pick`
/// accepts, with its index.
fn at_of(
    journal: &[serde_json::Value],
    from: usize,
    pick: impl Fn(&serde_json::Value) -> bool,
) -> Option<(usize, u64)> {
    journal
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, e)| pick(e))
        .and_then(|(i, e)| Some((i, e["at"].as_u64()?)))
}

/// `--in-rollout`: see the module docs.
async fn in_rollout(rounds: u64, mib: u64, idle_ms: u64) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("baton-backup-bench-")
        .tempdir()?;
    let s3 = S3Server::start(dir.path(), "bench").await?;
    // samplekv's own Raft snapshots (a full copy of the map) would land in
    // either window at random; keep them out of the measurement.
    let member_env = (0..3)
        .map(|i| {
            (
                i,
                vec![(
                    samplekv::member::ENV_SNAPSHOT_LOGS.to_owned(),
                    "1000000".to_owned(),
                )],
            )
        })
        .collect();
    let spec = ClusterSpec {
        policy: ROLLOUT_POLICY.into(),
        store: StoreSpec::S3 {
            coordinator: Box::new(s3.settings("bench")),
            agent_endpoint: None,
        },
        member_env,
        ..ClusterSpec::supervised(3)
    };
    let cluster = Cluster::start(spec).await?;
    for round in 0..rounds {
        cluster.publish(&format!("v{}", round + 2), 1, false)?;
    }
    cluster.wait_led_and_fresh().await?;
    let client = Client::new(cluster.addrs()).with_request_timeout(Duration::from_secs(10));
    let t0 = Instant::now();
    preload(&client, mib).await?;
    eprintln!("preloaded {mib} MiB in {} ms", t0.elapsed().as_millis());
    cluster.wait_led_and_fresh().await?;

    let (mut idle_gaps, mut backup_gaps, mut windows) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let target = format!("v{}", round + 2);
        let stop = CancellationToken::new();
        let writer = {
            let (client, stop) = (client.clone(), stop.clone());
            let cfg = WriterConfig {
                rate_per_sec: 100,
                max_writes: 60_000,
                max_duration: Duration::from_secs(600),
                key_prefix: format!("r{round}-"),
                request_timeout: Duration::from_secs(2),
                ..WriterConfig::default()
            };
            tokio::spawn(async move { run_writer(&client, cfg, stop).await })
        };
        tokio::time::sleep(Duration::from_millis(idle_ms)).await;
        let upgrade_at = unix_ms();
        let (code, out, stderr) =
            tokio::task::block_in_place(|| cluster.baton_json(&["upgrade", "--to", &target]))?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.cancel();
        let report = writer.await?;
        ensure!(code == 0, "upgrade to {target}: {stderr}\n{out:#}");
        ensure!(
            out["summary"]["backup"]["state"] == "verified",
            "round {round}: no verified backup: {out:#}"
        );
        let checked = verify(&client, &report).await;
        ensure!(
            checked.lost.is_empty() && checked.checked == report.acked,
            "round {round}: lost acked writes: {:?}",
            checked.lost
        );

        let journal = cluster.journal()?;
        let (started, _) = at_of(&journal, 0, |e| {
            e["event"] == "started" && e["target"]["version"] == target.as_str()
        })
        .context("the rollout's started event")?;
        let (issued, b0) = at_of(&journal, started, |e| {
            e["event"] == "command_issued" && e["action"]["action"] == "backup"
        })
        .context("the backup command")?;
        let (_, b1) = at_of(&journal, issued, |e| e["event"] == "backup_verified")
            .context("backup_verified")?;
        let window = b1.saturating_sub(b0);
        ensure!(
            window + 1000 <= idle_ms,
            "round {round}: the backup took {window} ms; give --idle-ms at least {} so the idle window is as long",
            window + 1000
        );
        let zero = report.started_unix_ms;
        let idle_to = upgrade_at.saturating_sub(zero);
        let idle = report.max_gap_within(idle_to - window, idle_to);
        let (during, during_at) =
            report.max_gap_span_within(b0.saturating_sub(zero), b1.saturating_sub(zero));
        // Where the worst gap fell among the backup's own steps, to say
        // which step to blame.
        let steps: Vec<String> = journal
            .iter()
            .filter_map(|e| {
                let at = e["at"].as_u64()?;
                (b0..=b1).contains(&at).then(|| {
                    format!(
                        "+{} {} {}",
                        at - b0,
                        e["event"].as_str().unwrap_or("?"),
                        e["detail"].as_str().unwrap_or("")
                    )
                })
            })
            .collect();
        let bytes = out["summary"]["backup"]["bytes"].as_u64().unwrap_or(0);
        println!(
            "{}",
            serde_json::json!({
                "round": round,
                "backup_bytes": bytes,
                "backup_window_ms": window,
                "max_gap_idle_ms": idle,
                "max_gap_during_backup_ms": during,
                "max_gap_during_backup_begins_ms": (zero + during_at).saturating_sub(b0),
                "backup_steps": steps,
                "acked": report.acked,
                "failed": report.failed,
                "lost": checked.lost.len(),
            })
        );
        idle_gaps.push(idle);
        backup_gaps.push(during);
        windows.push(window);
    }
    let agents: Vec<u64> = cluster
        .members
        .iter()
        .map(|m| {
            m.agent
                .as_ref()
                .map_or(0, |p| vm_hwm_kib_of(&p.pid().to_string()))
        })
        .collect();
    let coordinator = cluster
        .coordinator
        .as_ref()
        .map_or(0, |p| vm_hwm_kib_of(&p.pid().to_string()));
    let (idle, during) = (median(idle_gaps), median(backup_gaps));
    println!(
        "{}",
        serde_json::json!({
            "rounds": rounds,
            "preload_mib": mib,
            "median_backup_window_ms": median(windows),
            "median_max_gap_idle_ms": idle,
            "median_max_gap_during_backup_ms": during,
            "gap_ratio_backup_over_idle": format!("{:.2}", during as f64 / idle.max(1) as f64),
            "agent_vm_hwm_mib": agents.iter().map(|k| k / 1024).collect::<Vec<_>>(),
            "coordinator_vm_hwm_mib": coordinator / 1024,
        })
    );
    Ok(())
}
