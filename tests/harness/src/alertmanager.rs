//! A real Alertmanager 0.25 (Debian's `prometheus-alertmanager`) on
//! 127.0.0.1, and the webhook receiver it notifies: a listener in the test
//! that records every JSON body it is sent.
//!
//! Alertmanager is started with `--cluster.listen-address=` (empty: no
//! gossip port on 0.0.0.0), a private storage dir, and a route that sends
//! every alert to the receiver with `send_resolved: true`. It is killed by
//! pid on drop, like every process the harness starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

use crate::{Proc, free_port};

/// Debian's Alertmanager binary (absolute: never whatever is on PATH).
pub const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

/// Checks the binary exists and is 0.25.
pub fn assert_alertmanager() -> Result<()> {
    let out = Command::new(ALERTMANAGER)
        .arg("--version")
        .output()
        .with_context(|| {
            format!("{ALERTMANAGER} is missing; .ci/run installs prometheus-alertmanager")
        })?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !text.contains("version 0.25.") {
        bail!("{ALERTMANAGER} is not 0.25: {text}");
    }
    Ok(())
}

/// One Alertmanager process.
#[derive(Debug)]
pub struct Alertmanager {
    proc: Option<Proc>,
    pub port: u16,
    dir: PathBuf,
    config: PathBuf,
}

impl Alertmanager {
    /// Starts Alertmanager routing everything to `receiver_url`, and waits
    /// until it answers `/-/ready`.
    pub async fn start(dir: &std::path::Path, receiver_url: &str) -> Result<Alertmanager> {
        assert_alertmanager()?;
        let dir = dir.join("alertmanager");
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("alertmanager.yml");
        // group_wait 0s: notify as soon as an alert arrives; group_interval
        // 1s: resolutions go out within a second of arriving.
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: test\n  group_by: ['alertname', 'cluster', 'member', 'rollout']\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: test\n    webhook_configs:\n      - url: '{receiver_url}'\n        send_resolved: true\n"
            ),
        )?;
        let mut am = Alertmanager {
            proc: None,
            port: free_port(),
            dir,
            config,
        };
        am.restart().await?;
        Ok(am)
    }

    /// The base URL sinks post to.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills it by pid (for a "sink is down" test).
    pub fn stop(&mut self) {
        drop(self.proc.take());
    }

    /// Starts it again on the same port and storage.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop();
        let mut cmd = Command::new(ALERTMANAGER);
        cmd.arg(format!("--config.file={}", self.config.display()))
            .arg(format!(
                "--storage.path={}",
                self.dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
            .arg("--cluster.listen-address=")
            .arg("--log.level=debug");
        self.proc = Some(Proc::spawn(
            "alertmanager",
            &mut cmd,
            &self.dir.join("alertmanager.log"),
        )?);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = http_get(&format!("127.0.0.1:{}", self.port), "/-/ready").await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(self.dir.join("alertmanager.log")).unwrap_or_default();
                bail!(
                    "alertmanager on port {} never became ready:\n{log}",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The alerts Alertmanager holds now (`GET /api/v2/alerts`).
    pub async fn alerts(&self) -> Result<Value> {
        let (code, body) = http_get(&format!("127.0.0.1:{}", self.port), "/api/v2/alerts").await?;
        if code != 200 {
            bail!("GET /api/v2/alerts answered {code}: {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("alertmanager.log")).unwrap_or_default()
    }
}

/// A minimal HTTP/1.0 GET; returns the status code and body.
pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(2), io)
        .await
        .context("GET timed out")??;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP body")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("bad status line")?;
    Ok((code, body.to_owned()))
}

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    /// When it arrived, in Unix milliseconds (comparable with the
    /// coordinator journal's `at`).
    pub at_unix_ms: u64,
}

/// An HTTP listener on 127.0.0.1 that records every POSTed JSON body and
/// answers with a fixed status (202 by default). Stops on drop.
#[derive(Debug)]
pub struct Receiver {
    pub addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<Mutex<u16>>,
    stop: CancellationToken,
}

impl Receiver {
    pub async fn start() -> Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let got = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(Mutex::new(202u16));
        let stop = CancellationToken::new();
        let (g, st, s) = (got.clone(), status.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    () = s.cancelled() => return,
                    c = listener.accept() => c,
                };
                let Ok((stream, _)) = conn else { continue };
                let (g, st) = (g.clone(), st.clone());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(5), serve_one(stream, g, st))
                        .await;
                });
            }
        });
        Ok(Receiver {
            addr,
            got,
            status,
            stop,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Answer with `code` from now on.
    pub fn answer(&self, code: u16) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = code;
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits (bounded) until `pred` holds for what was received.
    pub async fn wait_for(
        &self,
        what: &str,
        within: Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Result<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self.received();
            if pred(&got) {
                return Ok(got);
            }
            if tokio::time::Instant::now() > deadline {
                let bodies: Vec<String> = got.iter().map(|r| r.body.to_string()).collect();
                bail!(
                    "receiver never got {what} within {within:?}; got:\n{}",
                    bodies.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn serve_one(
    stream: tokio::net::TcpStream,
    got: Arc<Mutex<Vec<Received>>>,
    status: Arc<Mutex<u16>>,
) -> Result<()> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut headers = Vec::new();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).await? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_owned());
            if k == "content-length" {
                len = v.parse().unwrap_or(0);
            }
            headers.push((k, v));
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).await?;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let code = *status.lock().unwrap_or_else(|p| p.into_inner());
    if (200..300).contains(&code) {
        got.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Received {
                path,
                headers,
                body,
                at_unix_ms: crate::unix_ms(),
            });
    }
    let reply = format!(
        "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    let mut stream = reader.into_inner();
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

impl Receiver {
    /// Waits (bounded) for an Alertmanager notification of alert `name`
    /// with `status` (`firing` or `resolved`); returns all received so far.
    pub async fn wait_for_am(
        &self,
        name: &str,
        status: &str,
        within: Duration,
    ) -> Result<Vec<Received>> {
        self.wait_for(&format!("a {status} {name}"), within, |g| {
            am_count(g, name, status) > 0
        })
        .await
    }
}

/// How many alerts named `name` with `status` the notifications in `got`
/// carry.
pub fn am_count(got: &[Received], name: &str, status: &str) -> usize {
    am_notifications(got, name)
        .iter()
        .filter(|(s, _)| s == status)
        .count()
}

/// The first notification in `got` carrying alert `name` with `status`,
/// and that alert.
pub fn am_first<'a>(
    got: &'a [Received],
    name: &str,
    status: &str,
) -> Option<(&'a Received, Value)> {
    got.iter().find_map(|r| {
        am_notifications(std::slice::from_ref(r), name)
            .into_iter()
            .find(|(s, _)| s == status)
            .map(|(_, a)| (r, a))
    })
}

/// The Alertmanager webhook notifications in `got` for alert `name`, as
/// (status, alert) pairs, one per alert in each notification.
pub fn am_notifications(got: &[Received], name: &str) -> Vec<(String, Value)> {
    got.iter()
        .filter_map(|r| r.body.get("alerts").and_then(Value::as_array))
        .flatten()
        .filter(|a| a["labels"]["alertname"] == name)
        .map(|a| (a["status"].as_str().unwrap_or("").to_owned(), a.clone()))
        .collect()
}
