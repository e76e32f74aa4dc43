//! Polls the member through its adapter and publishes the latest state.
//!
//! One task owns the polling cadence; everyone else (the coordinator link, the
//! probes) reads the published [`Observation`] from a `watch` channel. A
//! failed read publishes a `Down` state naming why, never a stale one. A read
//! that does not answer within its deadline (a hung or frozen member) is
//! abandoned and published at once as `Unresponsive`: the link would
//! otherwise keep re-sending the last good state as a heartbeat.

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

/// The longest one read of the member may take: two configured poll
/// intervals, and never under 500 ms. The floor is measured: with seven
/// 3-member etcd clusters and their writers on one 2-core machine, etcd's
/// status reads took over 100 ms, and a tighter deadline called healthy
/// members unresponsive. A frozen member under writes is caught sooner
/// anyway: its agent's reports stop showing progress.
pub fn poll_deadline(poll: Duration) -> Duration {
    (poll * 2).max(Duration::from_millis(500))
}

/// Polls `target` at the interval `every` holds (it may change at any time;
/// a change polls at once) until `shutdown`. A read that takes longer than
/// `deadline` is dropped and published as unresponsive.
pub async fn run(
    target: Arc<dyn Adapter>,
    mut every: watch::Receiver<Duration>,
    deadline: Duration,
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
        let obs = match tokio::time::timeout(deadline, target.poll()).await {
            Ok(Ok(state)) => Observation {
                state,
                reachable: true,
                at: Instant::now(),
            },
            Ok(Err(e)) => Observation {
                state: MemberState::unreachable(e.to_string()),
                reachable: false,
                at: Instant::now(),
            },
            Err(_) => Observation {
                state: MemberState::unresponsive(format!(
                    "unresponsive: the member did not answer a read within {deadline:?} (hung, frozen or overloaded)"
                )),
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
        let task = tokio::spawn(run(
            target.clone(),
            every_rx,
            Duration::from_secs(1),
            tx,
            stop.clone(),
        ));
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

    /// A frozen member (its read never answers) is published as
    /// unresponsive one deadline after the read began, and as itself again
    /// on the first read after it thaws.
    #[tokio::test(start_paused = true)]
    async fn a_read_past_its_deadline_is_published_as_unresponsive() {
        let target = Arc::new(FakeAdapter::default());
        target.set(Some(
            baton_domain::fixtures::report("n1", baton_domain::Role::Follower, Some("n2"), 5, 5)
                .state,
        ));
        let (_every_tx, every_rx) = watch::channel(Duration::from_millis(100));
        let (tx, mut rx) = watch::channel(None);
        let stop = CancellationToken::new();
        let deadline = poll_deadline(Duration::from_millis(100));
        assert_eq!(deadline, Duration::from_millis(500));
        assert_eq!(
            poll_deadline(Duration::from_secs(1)),
            Duration::from_secs(2)
        );
        let task = tokio::spawn(run(target.clone(), every_rx, deadline, tx, stop.clone()));
        let health = |rx: &watch::Receiver<Option<Observation>>| {
            rx.borrow().as_ref().map(|o| o.state.health)
        };
        rx.changed().await.unwrap();
        assert_eq!(health(&rx), Some(baton_domain::Health::Healthy));
        target.hang.store(true, Ordering::SeqCst);
        let frozen_at = Instant::now();
        rx.changed().await.unwrap();
        assert_eq!(health(&rx), Some(baton_domain::Health::Unresponsive));
        let took = frozen_at.elapsed();
        // The next poll starts within one interval of the freeze, and gives
        // up one deadline later.
        assert!(
            took >= deadline && took <= deadline + Duration::from_millis(100),
            "{took:?}"
        );
        let detail = rx.borrow().as_ref().unwrap().state.health_detail.clone();
        assert!(
            detail.contains("unresponsive") && detail.contains("500ms"),
            "{detail}"
        );
        target.hang.store(false, Ordering::SeqCst);
        rx.changed().await.unwrap();
        assert_eq!(health(&rx), Some(baton_domain::Health::Healthy));
        stop.cancel();
        task.await.unwrap();
    }
}
