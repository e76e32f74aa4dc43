//! Start-up gates of a real `samplekv` process: a `fail_start` release, a
//! data dir in a newer format, a missing or invalid manifest, and an older
//! format that is restamped (with a one-member cluster serving and stopping
//! cleanly on SIGTERM).

mod common;

use std::fs;
use std::time::Duration;

use anyhow::Result;
use common::{Cluster, run_to_exit};
use samplekv::Manifest;

#[tokio::test]
async fn fail_start_manifest_exits_70_quickly_with_message() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let release = dir.path().join("release");
    let mut m = Manifest::new("v9-bad", 1);
    m.fail_start = true;
    m.write_to(&release)?;
    let started = tokio::time::Instant::now();
    let (code, out) =
        run_to_exit(&dir.path().join("data"), &release, Duration::from_secs(10)).await?;
    assert_eq!(code, Some(70), "{out}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        out.contains("fail_start") && out.contains("v9-bad"),
        "{out}"
    );
    Ok(())
}

#[tokio::test]
async fn newer_data_format_exits_78_and_names_both_versions() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let release = dir.path().join("release");
    Manifest::new("v1", 1).write_to(&release)?;
    let data = dir.path().join("data");
    fs::create_dir_all(&data)?;
    fs::write(data.join("FORMAT"), "2\n")?;
    let (code, out) = run_to_exit(&data, &release, Duration::from_secs(10)).await?;
    assert_eq!(code, Some(78), "{out}");
    assert!(out.contains("format version 2"), "{out}");
    assert!(out.contains("format_version 1"), "{out}");
    assert!(out.contains("roll the binary forward"), "{out}");
    assert_eq!(
        fs::read_to_string(data.join("FORMAT"))?.trim(),
        "2",
        "marker untouched"
    );
    Ok(())
}

#[tokio::test]
async fn missing_or_invalid_manifest_exits_65_naming_file_and_key() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let release = dir.path().join("release");
    fs::create_dir_all(&release)?;
    let (code, out) =
        run_to_exit(&dir.path().join("d1"), &release, Duration::from_secs(10)).await?;
    assert_eq!(code, Some(65), "{out}");
    assert!(
        out.contains(&release.join("manifest.toml").display().to_string()),
        "{out}"
    );

    fs::write(
        release.join("manifest.toml"),
        "name = \"samplekv\"\nversion = \"v1\"\n",
    )?;
    let (code, out) =
        run_to_exit(&dir.path().join("d2"), &release, Duration::from_secs(10)).await?;
    assert_eq!(code, Some(65), "{out}");
    assert!(
        out.contains("manifest.toml") && out.contains("format_version"),
        "{out}"
    );
    Ok(())
}

#[tokio::test]
async fn older_format_is_restamped_and_sigterm_exits_0() -> Result<()> {
    let mut c = Cluster::new(1)?;
    Manifest::new("v2", 2).write_to(&c.members[0].release_dir)?;
    fs::create_dir_all(&c.members[0].data_dir)?;
    fs::write(c.members[0].data_dir.join("FORMAT"), "1\n")?;
    c.start(0, &[])?;
    let leader = c.wait_one_leader(Duration::from_secs(15)).await?;
    assert_eq!(leader, 1);
    let st = c.members[0].status().await?;
    assert_eq!((st.release_version.as_str(), st.format_version), ("v2", 2));
    assert_eq!(
        fs::read_to_string(c.members[0].data_dir.join("FORMAT"))?.trim(),
        "2"
    );
    let ack = samplekv::Client::new(c.addrs()).put("solo", "1").await?;
    assert_eq!(ack.leader_id, 1);
    c.members[0].sigterm();
    let code = c.members[0].wait_exit(Duration::from_secs(10)).await?;
    assert_eq!(code, Some(0), "{}", c.members[0].log_text());
    Ok(())
}
