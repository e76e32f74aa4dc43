//! baton-agent: one per cluster member.
//!
//! A tour of the crate:
//! - [`config`]: the validated agent configuration (TOML + env overrides).
//! - [`adapter`]: the adapter trait and the samplekv adapter, which read a member.
//! - [`watcher`]: polls the member and publishes the latest observation.
//! - [`link`]: the outbound gRPC stream to the coordinator (Hello, Reports,
//!   Commands and their Results).
//! - [`runner`]: running the member; [`runner::supervise`] is `supervise` mode, where the agent runs the member process.
//! - [`resources`]: CPU, memory and free disk next to the member (sysinfo).
//! - [`probes`]: `/healthz`, `/readyz` and gRPC health on the probe port,
//!   and the client `baton-agent probe` runs.
//! - [`metrics`]: the Prometheus `/metrics` on the probe port.
//!
//! [`run`] wires them together; `main` only parses, sets up tracing and calls
//! it. Nothing here calls `process::exit`.

pub mod adapter;
pub mod config;
pub mod executor;
pub mod installer;
pub mod link;
pub mod metrics;
pub mod probes;
pub mod resources;
pub mod runner;
pub mod watcher;

use std::sync::Arc;

use baton_domain::Hello;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::adapter::{SamplekvTarget, Target, TargetError};
use crate::config::{AgentConfig, RunMode, StoreConfig, TargetConfig};

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("member {member}: cannot create state dir {path}: {source}")]
    StateDir {
        member: baton_domain::MemberId,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Journal(#[from] executor::JournalError),
    #[error("member {member}: probe server failed: {source}")]
    Probes {
        member: baton_domain::MemberId,
        source: std::io::Error,
    },
}

fn build_target(cfg: &TargetConfig) -> Result<Arc<dyn Target>, TargetError> {
    Ok(match cfg {
        TargetConfig::Samplekv {
            addr,
            member_names,
            timeout,
        } => Arc::new(SamplekvTarget::new(addr, member_names.clone(), *timeout)?),
        TargetConfig::Etcd { addr, timeout } => Arc::new(adapter::EtcdTarget::new(addr, *timeout)),
    })
}

/// Runs the agent until `shutdown`: probes on `probe_listener` (already
/// bound), the member watcher, the supervisor (in `supervise` mode) and the
/// coordinator link.
pub async fn run(
    config: AgentConfig,
    probe_listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|source| AgentError::StateDir {
        member: config.member.clone(),
        path: config.state_dir.clone(),
        source,
    })?;
    let target = build_target(&config.target)?;
    let tracker = TaskTracker::new();

    let supervisor = match &config.run {
        RunMode::Supervise(sup) => Some(runner::supervise::spawn(
            config.member.clone(),
            sup.clone(),
            config.data_dir.clone(),
            config.state_dir.clone(),
            &tracker,
            shutdown.clone(),
        )),
        RunMode::External | RunMode::Exec(_) => None,
    };
    let base_dir = match &config.run {
        RunMode::Supervise(sup) => Some(sup.base_dir.clone()),
        RunMode::Exec(exec) => exec.base_dir.clone(),
        RunMode::External => None,
    };
    let installer = match (base_dir, &config.store) {
        (Some(base_dir), Some(StoreConfig::Dir { path })) => Some(installer::Installer::new(
            config.member.clone(),
            base_dir,
            config.data_dir.clone(),
            Arc::new(baton_store::DirStore::new(path.clone())),
        )),
        _ => None,
    };
    let mode = match config.run {
        RunMode::Supervise(_) => "supervise",
        RunMode::Exec(_) => "exec",
        RunMode::External => "external",
    };
    let exec = match &config.run {
        RunMode::Exec(e) => Some((e.clone(), config.data_dir.clone())),
        _ => None,
    };
    let (obs_tx, obs_rx) = watch::channel(None);
    let executor = Arc::new(
        executor::Executor::open(
            config.member.clone(),
            &config.state_dir,
            target.clone(),
            supervisor,
            installer,
            mode,
        )?
        .with_leader_interlock(obs_rx.clone())
        .with_exec(exec),
    );

    let (poll, poll_rx) = link::PollControl::new(config.poll);
    tracker.spawn(watcher::run(
        target.clone(),
        poll_rx,
        obs_tx,
        shutdown.clone(),
    ));

    let hello = Hello {
        member: config.member.clone(),
        cluster: config.cluster.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        adapter_kind: target.kind().to_owned(),
        version_rule: Some(target.version_rule()),
    };
    let (stats_tx, stats_rx) = watch::channel(link::LinkStats::default());
    tracker.spawn(link::run(
        link::LinkConfig {
            hello,
            coordinator: config.coordinator.clone(),
            heartbeat: config.heartbeat,
            tls: config.tls.clone(),
            poll,
        },
        obs_rx.clone(),
        resources::ResourceReader::new(&config.data_dir),
        stats_tx,
        executor.clone(),
        shutdown.clone(),
    ));

    if let Ok(addr) = probe_listener.local_addr() {
        tracing::info!(member = %config.member, probes = %probes::describe(addr), "agent started");
    }
    let metrics = Arc::new(metrics::AgentMetrics::new(metrics::Sources {
        member: config.member.clone(),
        obs: obs_rx.clone(),
        link: stats_rx,
        executor: executor.clone(),
        tolerable_lag: config.probes.tolerable_lag,
    }));
    let served = probes::serve(
        probe_listener,
        probes::ProbeContext {
            member: config.member.clone(),
            obs: obs_rx,
            executor,
            tolerable_lag: config.probes.tolerable_lag,
            metrics,
        },
        shutdown.clone(),
    )
    .await;
    shutdown.cancel();
    tracker.close();
    tracker.wait().await;
    served.map_err(|source| AgentError::Probes {
        member: config.member,
        source,
    })
}
