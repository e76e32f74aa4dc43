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

use crate::adapter::{Adapter, MemberState};

/// The member's state as of one poll.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    pub state: MemberState,
    /// True when the adapter could read the member at all.
    pub reachable: bool,
    pub at: Instant,
}

fn ticker(every: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Polls `target` at the interval `every` holds (it may change at any time;
/// a change polls at once) until `shutdown`.
pub async fn run(
    target: Arc<dyn Adapter>,
    mut every: watch::Receiver<Duration>,
    tx: watch::Sender<Option<Observation>>,
    shutdown: CancellationToken,
) {
    let mut tick = ticker(*every.borrow_and_update());
    let mut live = true;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = every.changed(), if live => {
                match changed {
                    // The first tick of a new interval fires at once.
                    Ok(()) => tick = ticker(*every.borrow_and_update()),
                    // Nobody can change it any more: keep the current one.
                    Err(_) => live = false,
                }
                continue;
            }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::adapter::fake::FakeAdapter;

    #[tokio::test(start_paused = true)]
    async fn the_poll_interval_follows_its_control() {
        let target = Arc::new(FakeAdapter::default());
        let (every_tx, every_rx) = watch::channel(Duration::from_millis(100));
        let (tx, _rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(target.clone(), every_rx, tx, stop.clone()));
        // 1 s at 100 ms: the first tick at once, then every 100 ms.
        tokio::time::sleep(Duration::from_millis(1050)).await;
        let slow = target.polls.load(Ordering::SeqCst);
        assert_eq!(slow, 11);
        // 100 ms at 10 ms.
        every_tx.send(Duration::from_millis(10)).unwrap();
        tokio::time::sleep(Duration::from_millis(105)).await;
        assert_eq!(target.polls.load(Ordering::SeqCst) - slow, 11);
        // The control is gone: the last interval stays.
        drop(every_tx);
        let before = target.polls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(target.polls.load(Ordering::SeqCst) - before, 10);
        stop.cancel();
        task.await.unwrap();
    }
}
