//! baton-coordinator: the fleet view, the rollout driver, the journal, the
//! operator API, alerts and metrics.
//!
//! A tour of the crate:
//! - [`config`]: the validated coordinator configuration, built from the
//!   subsystems' own sections (e.g. [`alerts::config`]).
//! - [`fleet`]: the FleetView, the latest report per member; no IO, and the
//!   clock is read once, when it is built (every other call takes `now`).
//! - [`agent_link`]: the [`agent_link::AgentLink`] seam and the gRPC service
//!   agents stream reports into.
//! - [`grants`]: the presigned store requests signed for agents, each only
//!   for a command in flight on that member.
//! - [`driver`]: the rollout driver (steps to commands, results to events).
//! - [`journal`]: the journal seam (rollout events and firing alerts,
//!   applied by the journal) and its file and in-memory implementations.
//! - [`operator`]: the gRPC service the `baton` CLI calls.
//! - [`alerts`]: alert sinks (Alertmanager, PagerDuty, webhook) and the
//!   non-blocking, retrying notifier that feeds them.
//! - [`metrics`]: Prometheus metrics and the optional `/metrics` endpoint.
//! - [`error`]: the one mapping from coordinator errors to `tonic::Status`.
//!
//! [`run`] takes an already-bound listener so tests bind `127.0.0.1:0`.

pub mod access;
pub mod agent_link;
pub mod alerts;
pub mod backups;
pub mod config;
pub mod driver;
pub mod error;
pub mod fleet;
pub mod grants;
pub mod journal;
pub mod leadership;
pub mod metrics;
pub mod operator;

use std::sync::{Arc, Mutex};

use baton_proto::v1::{
    agent_link_server::AgentLinkServer, operator_server::OperatorServer,
    replica_server::ReplicaServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::config::{CoordinatorConfig, TlsConfig};
use crate::fleet::FleetView;
use crate::journal::Journal;

/// Why the coordinator stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot read TLS file {path}: {source}")]
    TlsFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    TlsSetup(Box<baton_net::server_tls::ServerTlsError>),
    #[error("gRPC server failed: {0}")]
    Serve(tonic::transport::Error),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    #[error("alerting: {0}")]
    Alerts(#[from] alerts::SinkError),
    #[error("cannot open the [store] at {location}: {source}")]
    Store {
        location: String,
        source: Box<baton_store::StoreError>,
    },
    #[error(transparent)]
    AlertImport(#[from] journal::import::ImportError),
}

fn server_tls(tls: &TlsConfig, tokens: bool) -> Result<baton_net::server_tls::ServerTls, RunError> {
    baton_net::server_tls::ServerTls::load(baton_net::server_tls::ServerTlsFiles {
        cert: tls.cert.clone(),
        key: tls.key.clone(),
        client_ca: tls.client_ca.clone(),
        // With bearer tokens, an operator may come without a certificate;
        // the agent link and the replica service still require one.
        client_cert_optional: tokens,
    })
    .map_err(|e| RunError::TlsSetup(Box::new(e)))
}

/// How often the TLS files are checked for a change.
const TLS_WATCH: std::time::Duration = std::time::Duration::from_secs(2);

/// Reloads `tls` on every SIGHUP until `shutdown`.
fn reload_on_sighup(tls: baton_net::server_tls::ServerTls, shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; TLS files are still reloaded when they change");
                return;
            }
        };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    tls.reload_logged("SIGHUP");
                }
            }
        }
    });
}

/// Serves agents and operators on `listener` until `shutdown`.
pub async fn run(
    config: CoordinatorConfig,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let fleet = Arc::new(Mutex::new(FleetView::new(
        config.cluster.clone(),
        config.members.clone(),
        config.heartbeat,
    )));
    let metrics = metrics::Metrics::new(fleet.clone());
    let metrics_listener = match config.metrics_listen {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let (results_tx, results_rx) = tokio::sync::mpsc::channel(256);
    let peer_tls = match &config.tls {
        Some(tls) if config.replication.peers.len() > 1 => {
            let loaded =
                baton_net::tls::ClientTls::load(&tls.client_ca, Some((&tls.cert, &tls.key)), None)
                    .map_err(|e| RunError::TlsFile {
                        path: e.path.clone(),
                        source: std::io::Error::other(e.to_string()),
                    })?;
            Some(loaded)
        }
        _ => None,
    };
    let journal = Arc::new(
        journal::raft::RaftJournal::open(journal::raft::ReplicaSettings {
            id: config.replication.id,
            peers: config.replication.peers.clone(),
            cluster: config.cluster.clone(),
            state_dir: config.state_dir.clone(),
            tls: peer_tls,
        })
        .await?,
    );
    // A lone replica leads at once (its own majority): serve only once it
    // does, so the first call after start is answered, not pointed at an
    // election. Replicas among peers serve at once and point at the leader.
    if config.replication.peers.len() == 1
        && tokio::time::timeout(std::time::Duration::from_secs(10), journal.lead(&shutdown))
            .await
            .is_err()
    {
        tracing::warn!("the journal has not elected this lone replica in 10 s; serving anyway");
    }
    // Alerts: one queue per sink, retried in the background; the driver's
    // callback only enqueues.
    let tracker = tokio_util::task::TaskTracker::new();
    let sinks = alerts::build_sinks(&config.alerting)?;
    if !sinks.is_empty() {
        let names: Vec<&str> = sinks.iter().map(|s| s.name()).collect();
        tracing::info!(sinks = ?names, "alert sinks configured");
    }
    let notifier = alerts::Notifier::new(sinks, alerts::notifier_settings(&config.alerting))
        .spawn(&tracker, shutdown.clone());
    // Releases and backups open from the one [store].
    let (artifacts, backups) = match &config.store {
        Some(store) => {
            let failed = |source| RunError::Store {
                location: store.location(),
                source: Box::new(source),
            };
            (
                Some(store.open_artifacts().map_err(failed)?),
                Some(store.open_blobs().map_err(failed)?),
            )
        }
        None => (None, None),
    };
    // Agents reach an S3 store through requests signed here.
    let grants = match &config.store {
        Some(store) => grants::Grants::new(
            config.cluster.clone(),
            store.open_presigner().map_err(|source| RunError::Store {
                location: store.location(),
                source: Box::new(source),
            })?,
            backups.clone(),
            store.location(),
        ),
        None => grants::Grants::none(config.cluster.clone()),
    };
    let link = agent_link::AgentLinkService::new(
        fleet.clone(),
        results_tx,
        shutdown.clone(),
        Arc::new(grants),
    )
    .with_identity(config.tls.is_some())
    .with_metrics(metrics.clone());
    let driver_cfg = driver::DriverConfig {
        policy: config.policy.clone(),
        release_name: config.release_name.clone(),
        store: artifacts,
        scratch: config.state_dir.clone(),
        tick: std::time::Duration::from_millis(50),
        backups: backups.clone(),
        cluster: config.cluster.clone(),
    };
    let changes = tokio::sync::watch::channel(1u64).0;
    // One driver per term this replica leads, each built from what the
    // journal applied (and the alerts it holds as firing).
    let make_driver = {
        let (fleet, link, journal, notifier, metrics, changes) = (
            fleet.clone(),
            link.clone(),
            journal.clone(),
            notifier.clone(),
            metrics.clone(),
            changes.clone(),
        );
        let cluster = config.cluster.clone();
        move || {
            let firing: Vec<_> = journal
                .subscribe()
                .borrow()
                .firing
                .values()
                .cloned()
                .collect();
            for a in firing {
                notifier.restore(a);
            }
            let notifier = notifier.clone();
            driver::Driver::new(
                driver_cfg.clone(),
                fleet.clone(),
                Arc::new(link.clone()),
                journal.clone(),
                &cluster,
                Box::new(move |alert| notifier.notify(alert)),
            )
            .with_metrics(metrics.clone())
            .with_changes(changes.clone())
        }
    };
    let (ops_tx, ops_rx) = tokio::sync::mpsc::channel(16);
    let metrics_task = metrics_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving /metrics");
        }
        let serve = metrics::serve(metrics.clone(), listener, shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        })
    });
    let driver_task = tokio::spawn(leadership::drive_while_leading(
        journal.clone(),
        make_driver,
        ops_rx,
        results_rx,
        shutdown.clone(),
    ));
    let operator = operator::OperatorService {
        fleet,
        ops: ops_tx,
        changes: changes.subscribe(),
        backups: backups.map(|store| backups::BackupStore {
            store,
            cluster: config.cluster.clone(),
            keep_for: config.backup_keep,
        }),
        access: access::Access::new(
            config.cluster.clone(),
            config.tls.is_some(),
            config.operators.clone(),
        )
        .with_tokens(config.tokens.clone()),
    };
    let server_tls = config
        .tls
        .as_ref()
        .map(|t| server_tls(t, !config.tokens.is_empty()))
        .transpose()?;
    if let Some(tls) = &server_tls {
        reload_on_sighup(tls.clone(), shutdown.clone());
        tls.watch(TLS_WATCH, shutdown.clone());
    }
    let mut server = Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(cluster = %config.cluster, %addr, members = config.members.len(), "coordinator serving");
    }
    // gRPC health: "" (SERVING from the start) and each service, while it runs.
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AgentLinkServer<agent_link::AgentLinkService>>()
        .await;
    health
        .set_serving::<OperatorServer<operator::OperatorService>>()
        .await;
    let router = server
        .add_service(health_service)
        .add_service(AgentLinkServer::new(link))
        .add_service(OperatorServer::with_interceptor(operator, {
            let journal = journal.clone();
            move |req: tonic::Request<()>| leadership::follower_hint(&journal).map(|()| req)
        }))
        .add_service(
            ReplicaServer::new(journal.replica_service())
                .max_decoding_message_size(journal::raft::peer::MAX_PEER_MESSAGE),
        );
    let served = match server_tls {
        // Handshakes are done (and refusals logged) by baton-net, with the
        // certificates of that moment.
        Some(tls) => {
            let incoming = baton_net::server_tls::accept(listener, tls, shutdown.clone());
            router
                .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned())
                .await
        }
        None => {
            // TCP_NODELAY on every accepted connection: without it a small
            // gRPC reply can sit behind Nagle and the peer's delayed ACK
            // for ~40 ms.
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                |conn| {
                    conn.inspect(|s| {
                        let _ = s.set_nodelay(true);
                    })
                },
            );
            router
                .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned())
                .await
        }
    }
    .map_err(RunError::Serve);
    shutdown.cancel();
    let led = driver_task.await;
    journal.shutdown().await;
    tracker.close();
    // Bounded: a sink mid-request must not stall shutdown.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait()).await;
    if let Some(task) = metrics_task {
        // Bounded: a scraper holding a connection open cannot stall shutdown.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    }
    served?;
    match led {
        Ok(Err(e)) => Err(RunError::Journal(e)),
        _ => Ok(()),
    }
}
