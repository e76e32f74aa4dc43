//! A real S3 server for the end-to-end tests: s3s-fs 0.14.1 on 127.0.0.1,
//! which checks SigV4 and keeps each bucket as a directory of files.
//!
//! [`S3Server`] owns the process (killed by pid on drop, like every process
//! the harness starts), its data dir and the one bucket it creates. It
//! hands out [`S3Settings`] for an `S3Store`, and the path of an object's
//! file, so a test can corrupt or remove what the store wrote.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use baton_store::s3::S3Settings;

use crate::{Proc, free_port};

/// The test access key id and secret (the server's only user).
pub const ACCESS_KEY: &str = "baton-test-ak";
pub const SECRET_KEY: &str = "baton-test-secret-0123456789";

/// `~/.cargo/bin/s3s-fs`, as `.ci/run` installs it.
pub fn s3s_fs() -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".to_owned());
    PathBuf::from(home).join(".cargo/bin/s3s-fs")
}

/// Checks the binary exists and is 0.14.1.
pub fn assert_s3s_fs() -> Result<()> {
    let bin = s3s_fs();
    let out = Command::new(&bin).arg("--version").output().with_context(|| {
        format!(
            "{} is missing; .ci/run installs it (cargo install s3s-fs@0.14.1 --features binary --locked)",
            bin.display()
        )
    })?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains("s3s-fs 0.14.1") {
        bail!("{} is not 0.14.1: {text}", bin.display());
    }
    Ok(())
}

/// One s3s-fs process with one bucket.
#[derive(Debug)]
pub struct S3Server {
    proc: Option<Proc>,
    pub port: u16,
    pub bucket: String,
    /// The server's root: `<data>/<bucket>/<key>` is an object's file.
    pub data: PathBuf,
    log: PathBuf,
}

impl S3Server {
    /// Starts s3s-fs under `dir` with bucket `bucket` and waits until it
    /// answers HTTP.
    pub async fn start(dir: &Path, bucket: &str) -> Result<S3Server> {
        assert_s3s_fs()?;
        let root = dir.join("s3s-fs");
        let data = root.join("data");
        std::fs::create_dir_all(data.join(bucket))?;
        let mut server = S3Server {
            proc: None,
            port: free_port(),
            bucket: bucket.to_owned(),
            data,
            log: root.join("s3s-fs.log"),
        };
        server.restart().await?;
        Ok(server)
    }

    /// A second s3s-fs process serving the same data (the same bucket) on
    /// a port of its own, logging to `<dir>/s3s-fs-<name>.log`: a separate
    /// path to the one store, which a test can kill alone.
    pub async fn another_on_the_same_data(&self, name: &str) -> Result<S3Server> {
        let mut server = S3Server {
            proc: None,
            port: free_port(),
            bucket: self.bucket.clone(),
            data: self.data.clone(),
            log: self.log.with_file_name(format!("s3s-fs-{name}.log")),
        };
        server.restart().await?;
        Ok(server)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Settings for a store in this server's bucket under `prefix`.
    pub fn settings(&self, prefix: &str) -> S3Settings {
        S3Settings {
            bucket: self.bucket.clone(),
            prefix: prefix.to_owned(),
            endpoint: Some(self.endpoint()),
            region: "us-east-1".to_owned(),
            access_key_id: ACCESS_KEY.to_owned(),
            secret_access_key: SECRET_KEY.to_owned(),
            session_token: None,
            presign_endpoint: None,
        }
    }

    /// The file holding object `key` (a full key, prefix included).
    pub fn object_file(&self, key: &str) -> PathBuf {
        self.data.join(&self.bucket).join(key)
    }

    /// Kills it by pid.
    pub fn stop(&mut self) {
        drop(self.proc.take());
    }

    /// Starts it (again) on the same port and data, and waits (bounded)
    /// until it answers an HTTP request.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        let mut cmd = Command::new(s3s_fs());
        cmd.args(["--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&self.data);
        self.proc = Some(Proc::spawn("s3s-fs", &mut cmd, &self.log)?);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            // Any HTTP answer (an unsigned request is refused) means ready.
            if crate::alertmanager::http_get(&format!("127.0.0.1:{}", self.port), "/")
                .await
                .is_ok()
            {
                return Ok(());
            }
            let exited = self.proc.as_mut().is_some_and(|p| !p.is_running());
            if exited || tokio::time::Instant::now() > deadline {
                bail!(
                    "s3s-fs on port {} never answered{}:\n{}",
                    self.port,
                    if exited { " (it exited)" } else { "" },
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
