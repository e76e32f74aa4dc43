//! The watchdog: which alerts should be firing, decided from the fleet view,
//! the latest rollout, the policy and the clock.
//!
//! It owns the edge detection (an alert fires once per condition and is
//! resolved once the condition clears), the stall rules, the lag trend and
//! how long a stall has lasted. It does no IO: [`Watchdog::evaluate`]
//! returns the notifications to send, and the coordinator hands them to its
//! sinks.
//!
//! The rules:
//! - `BatonCatchUpStalled`: during a rollout, the member being caught up has
//!   a lag that has not shrunk for `stall_after`, or is still above
//!   `tolerable_lag` after `catchup_timeout`. Outside a rollout (or for any
//!   other member), its lag has stayed above `tolerable_lag` for
//!   `steady_stall_after`. Resolved once a fresh report shows the lag at or
//!   below `tolerable_lag`.
//! - `BatonAgentDown`: no fresh report from the member's agent for
//!   `agent_down_after`. Resolved by the next fresh report.
//! - `BatonRolloutPaused`: the latest rollout is paused (by a gate, a stall
//!   or the operator). Resolved once it runs, completes or is closed.
//! - `BatonGateStalled`: while a rollout moves, a member has not been
//!   serving (healthy on a live report: recent, and seen making progress)
//!   for `stall_after`: frozen, hung, crash-looping, or simply not coming
//!   back. Its `gate` label names what the rollout waits on: `healthy`,
//!   `caught_up`, `soak`, `stop`, `revert`, `handover` (the member being
//!   worked on), `verify` (every member is done), or `others_live` (another
//!   member, which holds the next stop). Resolved once it serves again or
//!   the rollout stops moving (a paused rollout pages as paused).
//! - `BatonRestoreRunning`: the latest rollout is a restore (`baton
//!   restore`), which replaces every member's data, and has not completed
//!   or closed. Resolved once it has.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_domain::MemberId;

use crate::alerts::{
    AGENT_DOWN, AGENT_STATE_DISK_LOW, Alert, CATCH_UP_STALLED, GATE_STALLED, RESTORE_RUNNING,
    ROLLOUT_PAUSED,
};
use crate::decide::stalled_for;
use crate::rollout::{Phase, RolloutState, Stage};
use crate::{Policy, UnixMs, View};

/// How far back the lag trend looks.
pub const TREND_WINDOW: Duration = Duration::from_secs(10);

/// Edge-detecting alert state. One per coordinator.
#[derive(Clone, Debug, Default)]
pub struct Watchdog {
    cluster: String,
    /// Since when each member's lag has been above `tolerable_lag`.
    above_since: BTreeMap<MemberId, UnixMs>,
    /// Since when each member has had no fresh report.
    unheard_since: BTreeMap<MemberId, UnixMs>,
    /// Since when each member has not been serving (healthy and live).
    idle_since: BTreeMap<MemberId, UnixMs>,
    /// Firing alerts by key.
    firing: BTreeMap<String, Alert>,
}

/// The lag slope (per second) of `member`'s samples since `now - window`.
pub fn lag_trend(view: &View, member: &MemberId, now: UnixMs) -> Option<f64> {
    let v = view.members.get(member)?;
    let from = UnixMs(now.0.saturating_sub(duration_ms(TREND_WINDOW)));
    let pts: Vec<(f64, f64)> = v
        .lag_samples
        .iter()
        .filter(|s| s.at >= from)
        .map(|s| (s.at.0 as f64 / 1000.0, s.lag as f64))
        .collect();
    if pts.len() < 2 {
        return None;
    }
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    Some(sxy / sxx)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `+35.2/s (falling behind)`, `-4.0/s (catching up)`, `0.0/s (flat)`.
pub fn describe_trend(trend: Option<f64>) -> String {
    match trend {
        None => "unknown (too few reports)".to_owned(),
        Some(t) if t > 0.05 => format!("+{t:.1}/s (falling behind)"),
        Some(t) if t < -0.05 => format!("{t:.1}/s (catching up)"),
        Some(_) => "0.0/s (flat)".to_owned(),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The rollout's member under catch-up, and since when, if any.
fn catching_up(rollout: Option<&RolloutState>) -> Option<(&RolloutState, &MemberId, UnixMs)> {
    let r = rollout?;
    if matches!(r.phase, Phase::Completed | Phase::Closed { .. }) {
        return None;
    }
    let m = r.current()?;
    match r.members.get(m)?.stage {
        Stage::CatchingUp { since } => Some((r, m, since)),
        _ => None,
    }
}

/// What a moving rollout waits on from member `m` (the `gate` label).
fn gate_of(r: &RolloutState, m: &MemberId) -> &'static str {
    let Some(current) = r.current() else {
        return "verify";
    };
    if current != m {
        return "others_live";
    }
    if r.handover.as_ref().is_some_and(|h| &h.from == m) {
        return "handover";
    }
    match r.members.get(m).map(|p| &p.stage) {
        Some(Stage::Started { .. }) => "healthy",
        Some(Stage::CatchingUp { .. }) => "caught_up",
        Some(Stage::Soaking { .. }) => "soak",
        Some(Stage::Reverting { .. }) => "revert",
        _ => "stop",
    }
}

impl Watchdog {
    pub fn new(cluster: impl Into<String>) -> Self {
        Watchdog {
            cluster: cluster.into(),
            ..Watchdog::default()
        }
    }

    /// Takes back alerts that were firing before a restart: they are not
    /// sent again as new, and are resolved when their condition clears.
    pub fn restore(&mut self, firing: impl IntoIterator<Item = Alert>) {
        for a in firing {
            self.firing.insert(a.key(), a);
        }
    }

    /// The alerts firing now.
    pub fn firing(&self) -> impl Iterator<Item = &Alert> {
        self.firing.values()
    }

    /// How long `member`'s stall (or above-threshold spell) has lasted:
    /// for the member under catch-up, since its lag last shrank; for any
    /// other, since its lag went above `tolerable_lag`.
    fn stalled_for(
        &self,
        view: &View,
        rollout: Option<&RolloutState>,
        policy: &Policy,
        member: &MemberId,
        now: UnixMs,
    ) -> Option<Duration> {
        match catching_up(rollout) {
            Some((_, m, since)) if m == member => {
                stalled_for(view, member, since, policy.tolerable_lag, now)
            }
            _ => self.above_since.get(member).map(|s| now.since(*s)),
        }
    }

    /// Updates the state and returns the notifications to send: a firing
    /// alert for each new condition, a resolved one for each that cleared.
    pub fn evaluate(
        &mut self,
        view: &View,
        rollout: Option<&RolloutState>,
        policy: &Policy,
        now: UnixMs,
    ) -> Vec<Alert> {
        let mut out = Vec::new();
        for (m, v) in &view.members {
            if v.fresh {
                self.unheard_since.remove(m);
                match v.lag {
                    Some(l) if l > policy.tolerable_lag => {
                        self.above_since.entry(m.clone()).or_insert(now);
                    }
                    Some(_) => {
                        self.above_since.remove(m);
                    }
                    None => {}
                }
            } else {
                self.unheard_since.entry(m.clone()).or_insert(now);
            }
        }
        for (m, v) in &view.members {
            if v.serving() {
                self.idle_since.remove(m);
            } else {
                self.idle_since.entry(m.clone()).or_insert(now);
            }
        }
        self.above_since.retain(|m, _| view.members.contains_key(m));
        self.unheard_since
            .retain(|m, _| view.members.contains_key(m));
        self.idle_since.retain(|m, _| view.members.contains_key(m));

        self.agents(view, policy, now, &mut out);
        self.state_disks(view, policy, now, &mut out);
        self.stalls(view, rollout, policy, now, &mut out);
        self.gates(view, rollout, policy, now, &mut out);
        self.paused(rollout, now, &mut out);
        self.restoring(rollout, now, &mut out);
        out
    }

    fn fire(&mut self, alert: Alert, out: &mut Vec<Alert>) {
        if let std::collections::btree_map::Entry::Vacant(slot) = self.firing.entry(alert.key()) {
            slot.insert(alert.clone());
            out.push(alert);
        }
    }

    fn resolve(
        &mut self,
        key: &str,
        now: UnixMs,
        update: impl FnOnce(Alert) -> Alert,
    ) -> Option<Alert> {
        let a = self.firing.remove(key)?;
        Some(update(a.resolved(now)))
    }

    fn keys_named(&self, name: &str) -> Vec<String> {
        self.firing
            .iter()
            .filter(|(_, a)| a.name() == name)
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn agents(&mut self, view: &View, policy: &Policy, now: UnixMs, out: &mut Vec<Alert>) {
        for key in self.keys_named(AGENT_DOWN) {
            let still_down = self
                .firing
                .get(&key)
                .is_some_and(|a| self.unheard_since.keys().any(|m| m.as_str() == a.member()));
            if !still_down && let Some(a) = self.resolve(&key, now, |a| a) {
                out.push(a);
            }
        }
        let down: Vec<(MemberId, UnixMs)> = self
            .unheard_since
            .iter()
            .filter(|(_, since)| now.since(**since) >= policy.agent_down_after)
            .map(|(m, s)| (m.clone(), *s))
            .collect();
        for (m, since) in down {
            let last = view
                .members
                .get(&m)
                .filter(|v| v.report.is_some())
                .map_or("never", |_| "a while ago");
            let alert = Alert::firing(AGENT_DOWN, &self.cluster, Some(m.as_str()), None, since)
                .annotate(
                    "summary",
                    format!(
                        "baton agent of member {m} has not reported for {} (last report: {last})",
                        secs(now.since(since))
                    ),
                )
                .annotate("stalled_for", secs(now.since(since)))
                .annotate(
                    "runbook",
                    format!(
                        "Check that baton-agent runs on member {m}'s node (systemctl status baton-agent / kubectl logs) and can reach the coordinator; rollouts wait while a member is unheard-of."
                    ),
                );
            self.fire(alert, out);
        }
    }

    /// Pages while a member's fresh report shows its agent's state dir
    /// below `policy.min_state_disk_free`; resolves on a fresh report with
    /// room again (or when the member leaves the view). A report of 0 from
    /// an agent too old to measure it counts as low, as in preflight.
    fn state_disks(&mut self, view: &View, policy: &Policy, now: UnixMs, out: &mut Vec<Alert>) {
        let min = policy.min_state_disk_free;
        let free_of = |m: &str| {
            view.members
                .iter()
                .find(|(id, _)| id.as_str() == m)
                .map(|(_, v)| {
                    (
                        v.fresh,
                        v.report.as_ref().map(|r| r.resources.state_disk_free_bytes),
                    )
                })
        };
        for key in self.keys_named(AGENT_STATE_DISK_LOW) {
            let member = self
                .firing
                .get(&key)
                .map(|a| a.member().to_owned())
                .unwrap_or_default();
            let clear = match free_of(&member) {
                None => true,
                Some((true, Some(free))) => free >= min,
                Some(_) => false,
            };
            if clear && let Some(a) = self.resolve(&key, now, |a| a) {
                out.push(a);
            }
        }
        for (m, v) in &view.members {
            let Some(r) = v.report.as_ref().filter(|_| v.fresh) else {
                continue;
            };
            let free = r.resources.state_disk_free_bytes;
            if free >= min {
                continue;
            }
            let alert = Alert::firing(AGENT_STATE_DISK_LOW, &self.cluster, Some(m.as_str()), None, now)
                .annotate(
                    "summary",
                    format!(
                        "member {m}'s agent has {free} bytes free under its state_dir, below {min} (policy.min_state_disk_free_bytes): it refuses a command it cannot journal, and a rollout would stop at this member"
                    ),
                )
                .annotate("free_bytes", free.to_string())
                .annotate(
                    "runbook",
                    format!(
                        "Free space on the filesystem of baton-agent's state_dir on member {m}'s node (df -h there); the member keeps serving meanwhile, and a new rollout's preflight refuses until there is room."
                    ),
                );
            self.fire(alert, out);
        }
    }

    fn stalls(
        &mut self,
        view: &View,
        rollout: Option<&RolloutState>,
        policy: &Policy,
        now: UnixMs,
        out: &mut Vec<Alert>,
    ) {
        // Resolve: a fresh report shows the lag within bounds, or the member
        // left the view.
        for key in self.keys_named(CATCH_UP_STALLED) {
            let Some(name) = self.firing.get(&key).map(|a| a.member().to_owned()) else {
                continue;
            };
            let member = view.members.iter().find(|(m, _)| m.as_str() == name);
            let cleared = match member {
                None => true,
                Some((_, v)) => v.fresh && v.lag.is_some_and(|l| l <= policy.tolerable_lag),
            };
            if cleared {
                let lag = member.and_then(|(_, v)| v.lag);
                if let Some(a) = self.resolve(&key, now, |a| {
                    a.annotate("lag", lag.map_or("unknown".to_owned(), |l| l.to_string()))
                }) {
                    out.push(a);
                }
            }
        }
        let stalled_members: Vec<String> = self
            .firing
            .values()
            .filter(|a| a.name() == CATCH_UP_STALLED)
            .map(|a| a.member().to_owned())
            .collect();
        let under_catch_up = catching_up(rollout);
        for m in view.members.keys() {
            if stalled_members.iter().any(|s| s == m.as_str()) {
                continue;
            }
            let lag = view.members.get(m).and_then(|v| v.lag);
            let stalled = self.stalled_for(view, rollout, policy, m, now);
            // The rule that holds, if any (its words only once it does).
            let found = match under_catch_up {
                Some((r, cm, since)) if cm == m => {
                    let over = lag.is_some_and(|l| l > policy.tolerable_lag);
                    if stalled.is_some_and(|s| s >= policy.stall_after) {
                        Some((
                            Some(r.id.as_str()),
                            format!(
                                "lag has not shrunk for stall_after {}",
                                secs(policy.stall_after)
                            ),
                        ))
                    } else if over && now.since(since) > policy.catchup_timeout {
                        Some((
                            Some(r.id.as_str()),
                            format!(
                                "lag still above tolerable_lag {} after catchup_timeout {}",
                                policy.tolerable_lag,
                                secs(policy.catchup_timeout)
                            ),
                        ))
                    } else {
                        None
                    }
                }
                _ => stalled
                    .is_some_and(|s| s >= policy.steady_stall_after)
                    .then(|| {
                        (
                            None,
                            format!(
                                "lag above tolerable_lag {} for steady_stall_after {}",
                                policy.tolerable_lag,
                                secs(policy.steady_stall_after)
                            ),
                        )
                    }),
            };
            let Some((rollout_id, rule)) = found else {
                continue;
            };
            let stalled_for = stalled.unwrap_or_default();
            let lag_text = lag.map_or("unknown".to_owned(), |l| l.to_string());
            let during = rollout_id.map_or("outside a rollout".to_owned(), |id| {
                format!("during rollout {id}")
            });
            let alert = Alert::firing(
                CATCH_UP_STALLED,
                &self.cluster,
                Some(m.as_str()),
                rollout_id,
                UnixMs(now.0.saturating_sub(duration_ms(stalled_for))),
            )
            .annotate(
                "summary",
                format!(
                    "member {m} catch-up stalled {during}: lag {lag_text}, {rule} (stalled for {})",
                    secs(stalled_for)
                ),
            )
            .annotate("lag", lag_text)
            .annotate("trend", describe_trend(lag_trend(view, m, now)))
            .annotate("stalled_for", secs(stalled_for))
            .annotate(
                "runbook",
                format!(
                    "Member {m} is not applying what the leader commits. Check its disk, CPU and logs, and `baton status` for its applied revision. Once it catches up the alert resolves; then `baton resume` continues a paused rollout, or `baton rollback` returns to the previous release."
                ),
            );
            self.fire(alert, out);
        }
    }

    fn gates(
        &mut self,
        view: &View,
        rollout: Option<&RolloutState>,
        policy: &Policy,
        now: UnixMs,
        out: &mut Vec<Alert>,
    ) {
        let moving = rollout.filter(|r| r.phase.is_moving());
        // A member whose catch-up stall already pages (it answers, its lag
        // does not shrink) is not paged twice for one condition.
        let catch_up_paged: Vec<String> = self
            .firing
            .values()
            .filter(|a| a.name() == CATCH_UP_STALLED)
            .map(|a| a.member().to_owned())
            .collect();
        // Nor is a member under catch-up that answers with a lag above
        // `tolerable_lag`: whether that lag shrinks is the catch-up rule's.
        let under_catch_up = catching_up(rollout).map(|(_, m, _)| m);
        let catch_up_rules = |m: &MemberId| {
            under_catch_up == Some(m)
                && view
                    .members
                    .get(m)
                    .is_some_and(|v| v.healthy() && v.lag.is_some_and(|l| l > policy.tolerable_lag))
        };
        let stalled: BTreeMap<&MemberId, UnixMs> = match moving {
            None => BTreeMap::new(),
            Some(_) => self
                .idle_since
                .iter()
                .filter(|(_, since)| now.since(**since) >= policy.stall_after)
                .filter(|(m, _)| !catch_up_paged.iter().any(|p| p == m.as_str()))
                .filter(|(m, _)| !catch_up_rules(m))
                .map(|(m, s)| (m, *s))
                .collect(),
        };
        let want: Vec<Alert> = match moving {
            None => Vec::new(),
            Some(r) => stalled
                .iter()
                .map(|(m, since)| {
                    let gate = gate_of(r, m);
                    let state = view.members.get(*m).map_or_else(
                        || "unknown".to_owned(),
                        |v| match v.report.as_ref().filter(|_| v.fresh) {
                            None => "no fresh report from its agent".to_owned(),
                            Some(rep) if rep.state.health_detail.is_empty() => format!(
                                "{}, applied revision {} not moving",
                                rep.state.health, rep.state.applied_revision
                            ),
                            Some(rep) => {
                                format!("{}: {}", rep.state.health, rep.state.health_detail)
                            }
                        },
                    );
                    let for_ = secs(now.since(*since));
                    Alert::firing(GATE_STALLED, &self.cluster, Some(m.as_str()), Some(&r.id), *since)
                        .with_label("gate", gate)
                        .annotate(
                            "summary",
                            format!(
                                "member {m} has made no progress for {for_} during rollout {} (waiting on: {gate}): {state}",
                                r.id
                            ),
                        )
                        .annotate("stalled_for", for_)
                        .annotate(
                            "runbook",
                            format!(
                                "Member {m} is not serving: check that its process runs and is not frozen or crash-looping, its disk and logs, and `baton status`. The rollout takes no other member down meanwhile; once {m} serves again the alert resolves and the rollout carries on (`baton pause` holds it, `baton rollback` goes back)."
                            ),
                        )
                })
                .collect(),
        };
        let keys: Vec<String> = want.iter().map(Alert::key).collect();
        for key in self.keys_named(GATE_STALLED) {
            if !keys.contains(&key)
                && let Some(a) = self.resolve(&key, now, |a| a)
            {
                out.push(a);
            }
        }
        for a in want {
            self.fire(a, out);
        }
    }

    fn paused(&mut self, rollout: Option<&RolloutState>, now: UnixMs, out: &mut Vec<Alert>) {
        let paused = rollout.and_then(|r| match &r.phase {
            Phase::Paused { reason } => Some((r, reason)),
            _ => None,
        });
        let want = paused.map(|(r, reason)| {
            Alert::firing(
                ROLLOUT_PAUSED,
                &self.cluster,
                r.current().map(MemberId::as_str),
                Some(r.id.as_str()),
                now,
            )
            .annotate("summary", format!("rollout {} to {} is paused: {reason}", r.id, r.target.version))
            .annotate(
                "runbook",
                "Read the reason, fix the member it names, then `baton resume` (or `baton rollback` to go back).",
            )
        });
        let want_key = want.as_ref().map(Alert::key);
        for key in self.keys_named(ROLLOUT_PAUSED) {
            if Some(&key) != want_key.as_ref()
                && let Some(a) = self.resolve(&key, now, |a| a)
            {
                out.push(a);
            }
        }
        if let Some(a) = want {
            self.fire(a, out);
        }
    }
}

impl Watchdog {
    fn restoring(&mut self, rollout: Option<&RolloutState>, now: UnixMs, out: &mut Vec<Alert>) {
        let want = rollout
            .filter(|r| !r.phase.is_terminal())
            .and_then(|r| Some((r, r.restore.as_ref()?)))
            .map(|(r, plan)| {
                Alert::firing(RESTORE_RUNNING, &self.cluster, None, Some(r.id.as_str()), r.started_at)
                    .annotate(
                        "summary",
                        format!(
                            "restore {} of backup {} (revision {}) onto {} is replacing every member's data ({})",
                            r.id,
                            plan.backup,
                            plan.revision,
                            r.target.version,
                            r.phase.kind()
                        ),
                    )
                    .annotate(
                        "runbook",
                        "An operator started `baton restore`; every member is stopped and restored. Follow it with `baton watch`; if it pauses, fix the member it names and `baton resume`.",
                    )
            });
        let want_key = want.as_ref().map(Alert::key);
        for key in self.keys_named(RESTORE_RUNNING) {
            if Some(&key) != want_key.as_ref()
                && let Some(a) = self.resolve(&key, now, |a| a)
            {
                out.push(a);
            }
        }
        if let Some(a) = want {
            self.fire(a, out);
        }
    }
}
