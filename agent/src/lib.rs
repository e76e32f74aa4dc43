//! baton-agent: one per cluster member.
//!
//! ```text
//!  member process          agent                                   each coordinator replica
//!   ▲  ▲ poll, step_down   adapter ◀── watcher (poll_ms; faster while gated)
//!   │  └──────────────────   │ MemberState
//!   │                        ▼
//!   │                 watch<Observation> ──▶ probes (/healthz /readyz gRPC health /metrics)
//!   │                        │
//!   │                        ▼
//!   │                      link ── Hello, Report on change or heartbeat ────────▶│
//!   │                        │◀─ SetCadence (fast during a gate or handover) ────│
//!   │                        │◀─ Command{id, action, fence} ─────────────────────│
//!   │                        ▼
//!   │                    executor: fenced? refuse; journal id (commands.log) ─▶ stored? answer it
//!   │                        │ Stage, Switch ─▶ installer (store ─▶ releases/, current)
//!   └── start, stop ──── runner (supervise | exec | external); StepDown ─▶ adapter
//!                            │ result journaled, then ── Result{id} ─────────────▶│
//! ```
//!
//! A tour of the crate:
//! - [`config`]: the validated agent configuration (TOML + env overrides);
//!   the `[target]` section is parsed by the adapter its `kind` names.
//! - [`adapter`]: the [`adapter::Adapter`] trait and its registry;
//!   [`adapter::samplekv`] and [`adapter::etcd`] read and steer a member.
//! - [`watcher`]: polls the member and publishes the latest observation.
//! - [`link`]: the outbound gRPC streams to the coordinator's replicas, one
//!   session each (Hello, Reports, Commands and their Results).
//! - [`executor`]: runs the coordinator's commands, each id at most once,
//!   behind its fsynced command journal and the leader interlock on Stop.
//! - [`installer`]: stages a release from the store (verified) and switches
//!   the `current` link.
//! - [`runner`]: starts and stops the member process: [`runner::supervise`]
//!   (the agent runs it), [`runner::exec`] (the operator's commands), or
//!   [`runner::External`] (something else runs it).
//! - [`resources`]: CPU, memory and free disk next to the member (sysinfo).
//! - [`probes`]: `/healthz`, `/readyz` and gRPC health on the probe port;
//!   the pure verdicts in [`probes::readiness`], and [`probes::client`],
//!   which `baton-agent probe` runs.
//! - [`metrics`]: the Prometheus `/metrics` on the probe port.
//! - [`cmd`]: the command line: arguments, exit codes, the `probe`
//!   subcommand.
//!
//! [`run`] wires them together; `main` only parses and calls [`cmd::run`].
//! Nothing here calls `process::exit`.

pub mod adapter;
pub mod backup;
pub mod cmd;
pub mod commands;
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

use crate::adapter::AdapterError;
use crate::config::AgentConfig;

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
    Adapter(#[from] AdapterError),
    #[error(transparent)]
    Journal(#[from] executor::JournalError),
    #[error(transparent)]
    Supervisor(#[from] runner::supervise::SupervisorError),
    #[error("member {member}: cannot open the [store] at {location}: {source}")]
    Store {
        member: baton_domain::MemberId,
        location: String,
        source: Box<baton_store::StoreError>,
    },
    #[error("member {member}: probe server failed: {source}")]
    Probes {
        member: baton_domain::MemberId,
        source: std::io::Error,
    },
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
    let adapter = config.target.build(&config.member)?;
    let tracker = TaskTracker::new();

    let process = runner::build(
        &config.member,
        &config.run,
        &config.data_dir,
        &config.state_dir,
        &tracker,
        shutdown.clone(),
    )?;
    // Releases (the installer) and backups both come from the one [store].
    let store_error = |source| AgentError::Store {
        source: Box::new(source),
        member: config.member.clone(),
        location: config
            .store
            .as_ref()
            .map(|s| s.location())
            .unwrap_or_default(),
    };
    let (granter, grant_rx) = link::granter(config.member.clone());
    type Stores = (
        Option<Arc<dyn baton_store::ArtifactStore>>,
        Option<Arc<dyn baton_store::backup::BlobStore>>,
    );
    let (artifacts, blobs): Stores = match &config.store {
        Some(config::AgentStore::Dir(store)) => (
            Some(store.open_artifacts().map_err(store_error)?),
            Some(store.open_blobs().map_err(store_error)?),
        ),
        Some(config::AgentStore::Coordinator { ca_file }) => {
            let pem = match ca_file {
                Some(path) => Some(std::fs::read(path).map_err(|source| {
                    store_error(baton_store::StoreError::Io {
                        path: path.clone(),
                        source,
                    })
                })?),
                None => None,
            };
            let granted = Arc::new(
                baton_store::granted::GrantedStore::new(Arc::new(granter), pem.as_deref())
                    .map_err(store_error)?,
            );
            (Some(granted.clone()), Some(granted))
        }
        None => (None, None),
    };
    let installer = match (process.base_dir(), artifacts) {
        (Some(base_dir), Some(artifacts)) => Some(installer::Installer::new(
            config.member.clone(),
            base_dir.to_owned(),
            config.data_dir.clone(),
            artifacts,
        )),
        _ => None,
    };
    let (obs_tx, obs_rx) = watch::channel(None);
    let mut executor = executor::Executor::open(
        config.member.clone(),
        &config.state_dir,
        adapter.clone(),
        process,
        installer,
    )?
    .with_leader_interlock(obs_rx.clone())
    .with_member_env(match &config.run {
        config::RunMode::Supervise(s) => s.env.clone(),
        config::RunMode::Exec(e) => e.env.clone(),
        config::RunMode::External => Default::default(),
    });
    if let Some(blobs) = blobs {
        executor = executor.with_backups(backup::Backups::new(
            config.member.clone(),
            config.cluster.clone(),
            blobs,
            &config.state_dir,
            &config.data_dir,
        ));
    }
    let executor = Arc::new(executor);

    let (poll, poll_rx) = link::PollControl::new(config.poll);
    tracker.spawn(watcher::run(
        adapter.clone(),
        poll_rx,
        watcher::poll_deadline(config.poll),
        obs_tx,
        shutdown.clone(),
    ));

    let hello = Hello {
        member: config.member.clone(),
        cluster: config.cluster.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        adapter_kind: adapter.kind().to_owned(),
        version_rule: Some(adapter.version_rule()),
        stage_checks: adapter.stage_check_list(),
    };
    let (stats_tx, stats_rx) = watch::channel(link::LinkStats::default());
    tracker.spawn(link::run(
        link::LinkConfig {
            hello,
            coordinators: config.coordinators.clone(),
            heartbeat: config.heartbeat,
            tls: config.tls.clone(),
            poll,
        },
        obs_rx.clone(),
        resources::ResourceReader::new(&config.data_dir, &config.state_dir),
        stats_tx,
        executor.clone(),
        grant_rx,
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
