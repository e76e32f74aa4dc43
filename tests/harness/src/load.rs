//! The load every samplekv end-to-end test runs: a writer at 100 writes/s
//! whose every acknowledged write is read back at the end, and an observer
//! that records the most members found down at once (not listening) every
//! 15 ms. Plus each agent's command journal, for "ran once" checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use samplekv::client::Client;
use samplekv::writer::{WriterConfig, WriterReport, run_writer, verify};
use tokio_util::sync::CancellationToken;

use crate::Cluster;

/// The writer and the observer, running.
#[allow(missing_debug_implementations)] // join handles of tasks
pub struct Load {
    pub client: Client,
    stop: CancellationToken,
    writer: tokio::task::JoinHandle<WriterReport>,
    observer: tokio::task::JoinHandle<()>,
    max_down: Arc<AtomicUsize>,
}

/// Starts the writer at 100 writes/s and an observer that counts members
/// that do not answer, every 15 ms.
pub fn start_load(cluster: &Cluster) -> Load {
    let client = Client::new(cluster.addrs());
    let stop = CancellationToken::new();
    let cfg = WriterConfig {
        rate_per_sec: 100,
        max_writes: 20_000,
        max_duration: Duration::from_secs(120),
        key_prefix: "roll-".into(),
        ..WriterConfig::default()
    };
    let writer = {
        let (client, stop) = (client.clone(), stop.clone());
        tokio::spawn(async move { run_writer(&client, cfg, stop).await })
    };
    let max_down = Arc::new(AtomicUsize::new(0));
    let observer = {
        let (addrs, stop, max_down) = (cluster.addrs(), stop.clone(), max_down.clone());
        tokio::spawn(async move {
            // Bounded: the stop token, or 10 minutes of 15 ms polls.
            for _ in 0..40_000 {
                if stop.is_cancelled() {
                    return;
                }
                // Down means not listening: a refused connection. A slow
                // answer on a loaded machine is not an outage.
                let mut down = 0;
                for a in &addrs {
                    let c = tokio::time::timeout(
                        Duration::from_millis(500),
                        tokio::net::TcpStream::connect(a.as_str()),
                    )
                    .await;
                    if matches!(c, Ok(Err(_))) {
                        down += 1;
                    }
                }
                max_down.fetch_max(down, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };
    Load {
        client,
        stop,
        writer,
        observer,
        max_down,
    }
}

impl Load {
    /// Stops the load and reads every acked write back: the report, the
    /// keys lost, and the most members seen down at once.
    pub async fn finish(self) -> Result<(WriterReport, Vec<String>, usize)> {
        // A little more load on the finished cluster, then stop.
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.stop.cancel();
        let report = self.writer.await?;
        self.observer.await?;
        let checked = verify(&self.client, &report).await;
        anyhow::ensure!(
            checked.checked == report.acked,
            "every acked write was checked"
        );
        Ok((report, checked.lost, self.max_down.load(Ordering::SeqCst)))
    }
}

/// Every agent's `/commands`, by member index, from the agents' probe
/// addresses.
pub async fn agent_journals(
    probes: &[std::net::SocketAddr],
) -> Result<Vec<(usize, Vec<serde_json::Value>)>> {
    let mut out = Vec::new();
    for (i, addr) in probes.iter().enumerate() {
        let entries = crate::agent_commands_at(*addr)
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default();
        out.push((i, entries));
    }
    Ok(out)
}
