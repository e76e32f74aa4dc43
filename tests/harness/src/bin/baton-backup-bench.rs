//! `baton-backup-bench`: a backup's upload to S3 against `aws s3 cp` of the
//! same file to the same s3s-fs, side by side, behind BENCHMARKS.md.
//!
//! One s3s-fs, one file of `--mib` MiB (default 256) of incompressible
//! bytes. Each round, in alternating order, runs:
//! - `aws s3 cp` with the same part size and concurrency as baton's upload
//!   (8 MiB parts, 4 at once), path-style;
//! - `baton-backup-bench upload`: a child process that does what an agent
//!   does, `baton_store::backup::upload` to an `S3Store`, and prints its
//!   wall time and its peak RSS (`VmHWM`);
//! - `baton-backup-bench verify`: a child that does what the coordinator
//!   does before the first stop, re-reading every part, with its peak RSS.
//!
//! Prints one JSON line per round and the medians and ratio at the end.
//! Usage: `baton-backup-bench [--rounds N] [--mib M]`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use tokio::time::Instant;

use anyhow::{Context, Result, bail};
use baton_harness::s3::{ACCESS_KEY, S3Server, SECRET_KEY};
use baton_store::backup::{self, BackupSource};
use baton_store::s3::{S3Settings, S3Store};

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

fn num(name: &str, default: u64) -> u64 {
    arg(name).and_then(|n| n.parse().ok()).unwrap_or(default)
}

/// The process's peak resident set, from `/proc/self/status`, in KiB.
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
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

/// Child mode: one upload or one verify, then a JSON line.
async fn child(mode: &str) -> Result<()> {
    let store = S3Store::new(settings()?)?;
    let id = arg("--id").context("--id")?;
    let t0 = Instant::now();
    let bytes = match mode {
        "upload" => {
            let file = PathBuf::from(arg("--file").context("--file")?);
            let source = BackupSource {
                cluster: "bench".into(),
                id: id.clone(),
                member: "n1".into(),
                adapter: "bench".into(),
                revision: 1,
                release: "v1".into(),
                release_format: 1,
            };
            backup::upload(&store, &source, &file).await?.bytes
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
    for round in 0..rounds {
        let id = format!("b{round}");
        let one_baton = || -> Result<serde_json::Value> {
            let up = run_child("upload", s3, &id, file)?;
            let ve = run_child("verify", s3, &id, file)?;
            Ok(serde_json::json!({"upload": up, "verify": ve}))
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
        // Keep the server's disk bounded: one copy of each at a time.
        let _ = std::fs::remove_dir_all(s3.object_file(&format!("backups/bench/{id}")));
        let _ = std::fs::remove_file(s3.object_file(&format!("awscp/{round}")));
    }
    let (a, b) = (median(aws), median(baton));
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
            "max_upload_vm_hwm_mib": up_rss.iter().max().copied().unwrap_or(0) / 1024,
            "max_verify_vm_hwm_mib": verify_rss.iter().max().copied().unwrap_or(0) / 1024,
        })
    );
    Ok(())
}
