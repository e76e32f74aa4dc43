//! Polls the member through its adapter and publishes the latest state.
//!
//! One task owns the polling cadence; everyone else (the coordinator link, the
//! probes) reads the published [`Observation`] from a `watch` channel. A
//! failed read publishes a `Down` state naming why, never a stale one.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::target::{MemberState, Target};

/// The member's state as of one poll.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub state: MemberState,
    /// True when the adapter could read the member at all.
    pub reachable: bool,
    pub at: Instant,
}

/// Polls `target` every `every` until `shutdown`.
pub async fn run(
    target: Arc<dyn Target>,
    every: Duration,
    tx: watch::Sender<Option<Observation>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let obs = match target.poll().await {
            Ok(state) => Observation {
                state,
                reachable: true,
                at: Instant::now(),
            },
            Err(e) => Observation {
                state: MemberState::unreachable(e.to_string()),
                reachable: false,
                at: Instant::now(),
            },
        };
        tx.send_if_modified(|cur| {
            let changed =
                cur.as_ref().map(|c| (&c.state, c.reachable)) != Some((&obs.state, obs.reachable));
            // Always refresh the time; only wake readers on a real change.
            *cur = Some(obs);
            changed
        });
    }
}
