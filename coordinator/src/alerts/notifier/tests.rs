//! The notifier against real local listeners (retries, a sink that comes up
//! late, refusals, refresh) and against fakes under paused time (backoff,
//! give-up, overflow, exact refresh counts).

use std::sync::Arc;
use std::time::Duration;

use baton_planner::UnixMs;
use baton_planner::alerts::{AGENT_DOWN, CATCH_UP_STALLED};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::alerts::http::{HttpClient, parse_url};
use crate::alerts::testing::{FakeSink, RecordingServer, eventually};
use crate::alerts::{AlertmanagerSink, PagerDutySink, WebhookSink, pagerduty};

const WAIT: Duration = Duration::from_secs(10);

/// A running notifier; stops its tasks when dropped.
struct Running {
    handle: NotifierHandle,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn start(sinks: Vec<Arc<dyn AlertSink>>, settings: NotifierSettings) -> Running {
    let tracker = TaskTracker::new();
    let shutdown = CancellationToken::new();
    let handle = Notifier::new(sinks, settings).spawn(&tracker, shutdown.clone());
    tracker.close();
    Running {
        handle,
        tracker,
        shutdown,
    }
}

fn fast() -> NotifierSettings {
    NotifierSettings {
        refresh_interval: Duration::from_secs(3600),
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        give_up_after: Duration::from_secs(60),
        queue_capacity: 16,
    }
}

fn client() -> HttpClient {
    HttpClient::new(Duration::from_secs(2)).unwrap()
}

fn stalled(member: &str) -> Alert {
    Alert::firing(
        CATCH_UP_STALLED,
        "c1",
        Some(member),
        Some("r1"),
        UnixMs(1_700_000_000_000),
    )
    .annotate("lag", "40")
}

fn stats(running: &Running) -> SinkStats {
    running.handle.stats().remove(0)
}

#[tokio::test]
async fn a_503_is_retried_until_delivered_once_and_firing_precedes_resolved() {
    let server = RecordingServer::start(200).await;
    server.script([503, 503]);
    let url = parse_url(&format!("{}/hook", server.base_url())).unwrap();
    let sink = WebhookSink::new("hook".to_owned(), url, client());
    let running = start(vec![Arc::new(sink)], fast());

    let alert = stalled("n2");
    running.handle.notify(alert.clone());
    running
        .handle
        .notify(alert.resolved(UnixMs(1_700_000_050_000)));

    let got = server.wait_for(4, WAIT).await;
    let seen: Vec<(u16, &str)> = got
        .iter()
        .map(|r| (r.answered, r.body["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (503, "firing"),
            (503, "firing"),
            (200, "firing"),
            (200, "resolved")
        ]
    );
    eventually(WAIT, "both notifications counted", || {
        stats(&running).pending == 0
    })
    .await;
    let s = stats(&running);
    assert_eq!(
        (s.delivered, s.failed_attempts, s.dropped),
        (2, 2, 0),
        "{s:?}"
    );
    assert_eq!(server.recorded().len(), 4, "nothing sent twice after a 200");
}

#[tokio::test]
async fn a_sink_that_is_down_gets_the_alert_once_it_comes_up() {
    // Reserve a port, then leave it closed: connections are refused.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = reserved.local_addr().unwrap();
    drop(reserved);
    let url = parse_url(&format!("http://{addr}/v2/enqueue")).unwrap();
    let sink = PagerDutySink::new(
        "pd".to_owned(),
        url,
        pagerduty::RoutingKey::new("k"),
        pagerduty::Severity::Critical,
        client(),
    );
    let running = start(vec![Arc::new(sink)], fast());

    let began = Instant::now();
    running.handle.notify(stalled("n1"));
    assert!(
        began.elapsed() < Duration::from_millis(500),
        "notify must not wait for the sink"
    );
    eventually(WAIT, "two refused connections", || {
        stats(&running).failed_attempts >= 2
    })
    .await;
    let s = stats(&running);
    assert_eq!((s.delivered, s.pending), (0, 1), "{s:?}");

    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let server = RecordingServer::serve(listener, 202);
    let got = server.wait_for(1, WAIT).await;
    assert_eq!(got[0].body["event_action"], "trigger");
    eventually(WAIT, "the delivery counted", || {
        stats(&running).delivered == 1
    })
    .await;
    let s = stats(&running);
    assert_eq!((s.pending, s.dropped), (0, 0), "{s:?}");
    assert_eq!(server.recorded().len(), 1);
}

#[tokio::test]
async fn a_refused_notification_is_dropped_not_retried() {
    let server = RecordingServer::start(200).await;
    server.script([400]);
    let base = parse_url(&server.base_url()).unwrap();
    let sink = AlertmanagerSink::new("am".to_owned(), &base, client()).unwrap();
    let running = start(vec![Arc::new(sink)], fast());

    let alert = stalled("n3");
    running.handle.notify(alert.clone());
    running
        .handle
        .notify(alert.resolved(UnixMs(1_700_000_001_000)));

    // The queue head is retried before anything behind it, so the resolved
    // notification coming second proves the refused one was not retried.
    let got = server.wait_for(2, WAIT).await;
    assert_eq!(got[0].answered, 400);
    assert!(got[0].body[0].get("endsAt").is_none());
    assert_eq!(got[1].answered, 200);
    assert!(got[1].body[0].get("endsAt").is_some());
    eventually(WAIT, "both counted", || stats(&running).pending == 0).await;
    let s = stats(&running);
    assert_eq!(
        (s.delivered, s.failed_attempts, s.dropped),
        (1, 1, 1),
        "{s:?}"
    );
}

#[tokio::test]
async fn alertmanager_gets_refreshes_until_the_alert_resolves() {
    let server = RecordingServer::start(200).await;
    let base = parse_url(&server.base_url()).unwrap();
    let sink = AlertmanagerSink::new("am".to_owned(), &base, client()).unwrap();
    let settings = NotifierSettings {
        refresh_interval: Duration::from_millis(100),
        ..fast()
    };
    let running = start(vec![Arc::new(sink)], settings);
    let member_of = |r: &crate::alerts::testing::Recorded| {
        r.body[0]["labels"]["member"].as_str().unwrap().to_owned()
    };

    let alert = stalled("n1");
    running.handle.notify(alert.clone());
    let got = server.wait_for(3, WAIT).await;
    assert!(got.iter().all(|r| r.body[0].get("endsAt").is_none()));

    running
        .handle
        .notify(alert.resolved(UnixMs(1_700_000_009_000)));
    // A second alert keeps firing: once it has been refreshed twice, at
    // least one refresh happened after the resolution.
    running.handle.notify(stalled("n2"));
    eventually(WAIT, "two posts of the still-firing alert", || {
        server
            .recorded()
            .iter()
            .filter(|r| member_of(r) == "n2")
            .count()
            >= 2
    })
    .await;
    let n1: Vec<bool> = server
        .recorded()
        .iter()
        .filter(|r| member_of(r) == "n1")
        .map(|r| r.body[0].get("endsAt").is_some())
        .collect();
    assert_eq!(
        n1.last(),
        Some(&true),
        "n1 ends resolved and is never re-posted firing: {n1:?}"
    );
    assert_eq!(n1.iter().filter(|resolved| **resolved).count(), 1);
    assert!(running.handle.active().iter().all(|a| a.member() == "n2"));
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_to_the_cap_then_gives_up_and_moves_on() {
    let fake = Arc::new(FakeSink::new("fake", false));
    fake.fail_next(8, true);
    let settings = NotifierSettings {
        initial_backoff: Duration::from_millis(200),
        max_backoff: Duration::from_secs(1),
        give_up_after: Duration::from_secs(5),
        ..fast()
    };
    let running = start(vec![fake.clone()], settings);
    let t0 = Instant::now();
    running.handle.notify(stalled("n1"));
    running.handle.notify(stalled("n2"));

    eventually(
        Duration::from_secs(60),
        "the second alert delivered",
        || stats(&running).delivered == 1,
    )
    .await;
    let offsets: Vec<u128> = fake
        .call_times()
        .iter()
        .map(|t| (*t - t0).as_millis())
        .collect();
    // 200, 400, 800, then capped at 1 s; the last wait is cut to the
    // 5 s deadline, and the attempt at the deadline is the last.
    assert_eq!(
        offsets,
        vec![0, 200, 600, 1400, 2400, 3400, 4400, 5000, 5000]
    );
    let members: Vec<String> = fake.calls().iter().map(|a| a.member().to_owned()).collect();
    assert_eq!(members[..8], vec!["n1".to_owned(); 8]);
    assert_eq!(members[8], "n2");
    let s = stats(&running);
    assert_eq!(
        (s.delivered, s.failed_attempts, s.dropped, s.pending),
        (1, 8, 1, 0),
        "{s:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_drops_the_oldest_waiting_notification() {
    let gate = Arc::new(Semaphore::new(0));
    let fake = Arc::new(FakeSink::new("fake", false).gated(gate.clone()));
    let settings = NotifierSettings {
        queue_capacity: 3,
        ..fast()
    };
    let running = start(vec![fake.clone()], settings);

    running.handle.notify(stalled("n0"));
    eventually(WAIT, "n0 in flight", || fake.calls().len() == 1).await;
    for m in ["n1", "n2", "n3", "n4", "n5"] {
        running.handle.notify(stalled(m));
    }
    let s = stats(&running);
    assert_eq!((s.dropped, s.pending), (2, 4), "{s:?}");

    gate.add_permits(16);
    eventually(WAIT, "the rest delivered", || stats(&running).pending == 0).await;
    let members: Vec<String> = fake.calls().iter().map(|a| a.member().to_owned()).collect();
    assert_eq!(members, ["n0", "n3", "n4", "n5"]);
    assert_eq!(stats(&running).delivered, 4);
}

#[tokio::test(start_paused = true)]
async fn notify_returns_while_a_sink_hangs() {
    let gate = Arc::new(Semaphore::new(0));
    let hung = Arc::new(FakeSink::new("hung", false).gated(gate));
    let healthy = Arc::new(FakeSink::new("healthy", false));
    let running = start(vec![hung.clone(), healthy.clone()], fast());
    for i in 0..10 {
        running.handle.notify(stalled(&format!("n{i}")));
    }
    // The healthy sink is not held up by the hung one.
    eventually(WAIT, "healthy sink got all", || healthy.calls().len() == 10).await;
    let stats = running.handle.stats();
    assert_eq!(stats[0].pending, 10);
    assert_eq!(stats[1].delivered, 10);
}

#[tokio::test(start_paused = true)]
async fn refresh_reposts_active_alerts_to_sinks_that_need_it_until_resolved() {
    let am = Arc::new(FakeSink::new("am", true));
    let pd = Arc::new(FakeSink::new("pd", false));
    let settings = NotifierSettings {
        refresh_interval: Duration::from_secs(60),
        ..fast()
    };
    let running = start(vec![am.clone(), pd.clone()], settings);
    let count = |sink: &FakeSink, member: &str, status: AlertStatus| {
        sink.calls()
            .iter()
            .filter(|a| a.member() == member && a.status == status)
            .count()
    };

    let f = stalled("n1");
    running.handle.notify(f.clone());
    running.handle.notify(stalled("n2"));
    // Refreshes at 60, 120 and 180 s.
    tokio::time::sleep(Duration::from_secs(181)).await;
    assert_eq!(count(&am, "n1", AlertStatus::Firing), 4);
    assert_eq!(count(&am, "n2", AlertStatus::Firing), 4);
    assert_eq!(count(&pd, "n1", AlertStatus::Firing), 1);

    running.handle.notify(f.resolved(UnixMs(1_700_000_200_000)));
    // Refreshes at 240 … 480 s: n2 only.
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(count(&am, "n1", AlertStatus::Firing), 4);
    assert_eq!(count(&am, "n1", AlertStatus::Resolved), 1);
    assert_eq!(count(&am, "n2", AlertStatus::Firing), 9);
    assert_eq!(
        am.calls().iter().rposition(|a| a.member() == "n1"),
        am.calls()
            .iter()
            .position(|a| a.member() == "n1" && a.status == AlertStatus::Resolved),
        "the resolution is n1's last notification"
    );
    assert_eq!(pd.calls().len(), 3, "pd: n1 firing, n2 firing, n1 resolved");
}

#[tokio::test(start_paused = true)]
async fn refreshes_do_not_pile_up_behind_a_failing_sink() {
    let am = Arc::new(FakeSink::new("am", true));
    am.fail_next(1000, true);
    let settings = NotifierSettings {
        refresh_interval: Duration::from_secs(1),
        max_backoff: Duration::from_secs(1),
        give_up_after: Duration::from_secs(3600),
        ..fast()
    };
    let running = start(vec![am.clone()], settings);
    running.handle.notify(stalled("n1"));
    tokio::time::sleep(Duration::from_secs(30)).await;
    let s = stats(&running);
    assert_eq!((s.pending, s.dropped), (1, 0), "{s:?}");
    assert!(s.failed_attempts >= 25, "{s:?}");
}

#[tokio::test]
async fn shutdown_stops_every_task() {
    let running = start(
        vec![
            Arc::new(FakeSink::new("am", true)),
            Arc::new(FakeSink::new("pd", false)),
        ],
        fast(),
    );
    running.handle.notify(stalled("n1"));
    running.shutdown.cancel();
    tokio::time::timeout(WAIT, running.tracker.wait())
        .await
        .expect("notifier tasks end on shutdown");
}

#[tokio::test]
async fn a_resolution_forgets_the_active_alert() {
    let running = start(Vec::new(), fast());
    let a = Alert::firing(AGENT_DOWN, "c1", Some("n1"), None, UnixMs(1));
    running.handle.notify(a.clone());
    assert_eq!(running.handle.active(), vec![a.clone()]);
    running.handle.notify(a.resolved(UnixMs(2)));
    assert!(running.handle.active().is_empty());
    assert!(running.handle.stats().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_restored_alert_is_reposted_only_where_refreshed_and_its_resolution_goes_everywhere() {
    let am = Arc::new(FakeSink::new("am", true));
    let pd = Arc::new(FakeSink::new("pd", false));
    let settings = NotifierSettings {
        refresh_interval: Duration::from_secs(60),
        ..fast()
    };
    let running = start(vec![am.clone(), pd.clone()], settings);
    let f = stalled("n1");
    running.handle.restore(f.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(am.calls(), vec![f.clone()], "Alertmanager is told again");
    assert!(
        pd.calls().is_empty(),
        "PagerDuty already has it: not told twice"
    );
    assert_eq!(running.handle.active(), vec![f.clone()]);
    // Refreshed like any firing alert, then resolved everywhere.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(am.calls().len(), 2);
    let r = f.resolved(UnixMs(1_700_000_100_000));
    running.handle.notify(r.clone());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(am.calls().last(), Some(&r));
    assert_eq!(pd.calls(), vec![r]);
    assert!(running.handle.active().is_empty());
}
