//! Runs the coordinator's commands on the node, each id at most once.
//!
//! This module owns the command journal (`<state_dir>/commands.log`, a
//! checksummed [`baton_store::records`] log): a command is journaled before
//! it runs (a command that cannot be journaled is refused, and nothing is
//! done), and its result is journaled before it is sent, so a repeated id —
//! after a coordinator restart or a reconnect — gets the stored result and
//! nothing runs again. A known id that comes with a different action is
//! refused, never answered from the journal. Commands run one at a time.
//! Per-id run counts are kept so tests and operators can see that nothing
//! ran twice. A `commands.jsonl` from before the checksummed format is
//! imported once.
//!
//! It also fences off deposed coordinator leaders: each journaled command
//! keeps its [`Fence`] (the coordinator journal's id and the sending
//! leader's term), and the executor remembers, per journal id, the newest
//! term it accepted a command under (rebuilt from every journaled record on
//! open). A command with an older term from the same journal is refused
//! before anything else, even for a known id: nothing runs and nothing is
//! journaled. Another journal id starts afresh; a command without a fence
//! (a coordinator that does not fence) is never refused for its term.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_domain::{Action, AgentCommand, CommandId, CommandOutcome, Fence, MemberId};
use serde::{Deserialize, Serialize};

use crate::adapter::Adapter;
use crate::backup::{Backups, SourceRelease};
use crate::installer::Installer;
use crate::runner::MemberProcess;
use crate::watcher::Observation;

/// One line of the command journal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub id: CommandId,
    pub action: Action,
    /// How many times this id was executed on this node (should be 1).
    pub runs: u32,
    pub result: Option<Result<String, String>>,
    /// The fence of the newest delivery it was accepted under: the
    /// coordinator journal's id and the sending leader's term. `None` from
    /// a coordinator that does not fence (and in journals written before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<Fence>,
}

/// What the executor says to one delivery of a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The command's outcome: it ran now or before, or it was refused for
    /// a reason of this member (a full state_dir). Every coordinator
    /// replica may hear it.
    Outcome(CommandOutcome),
    /// A refusal of this delivery alone, for the replica that sent it: a
    /// deposed leader's term, or a known id with another action. Nothing
    /// ran, and the command's own outcome is not this.
    Refused(CommandOutcome),
}

impl Answer {
    pub fn outcome(&self) -> &CommandOutcome {
        match self {
            Answer::Outcome(o) | Answer::Refused(o) => o,
        }
    }

    pub fn into_outcome(self) -> CommandOutcome {
        match self {
            Answer::Outcome(o) | Answer::Refused(o) => o,
        }
    }
}

/// The command journal, under the state dir.
pub const JOURNAL_FILE: &str = "commands.log";
/// The JSON-lines journal of earlier versions, imported once.
pub const LEGACY_JOURNAL_FILE: &str = "commands.jsonl";
/// Space the command journal keeps written past its end: on a full disk,
/// room to journal the commands that bring the member back (a start, a
/// switch back) after the ones that took it down.
pub const JOURNAL_RESERVE: u64 = 16 << 10;

/// Why the journal could not be read at start.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "member {member}: command journal {path} is unreadable at line {line}: {detail}; nothing was imported; restore it from a backup of the state dir, or fix the line"
    )]
    Legacy {
        member: MemberId,
        path: PathBuf,
        line: usize,
        detail: String,
    },
    #[error(
        "member {member}: the command journal cannot be used: {source}; the agent will not start without knowing which commands already ran: restore the file from a backup of the state dir, or free space"
    )]
    Log {
        member: MemberId,
        source: baton_store::records::RecordError,
    },
}

/// Executes commands against the member.
#[derive(Debug)]
pub struct Executor {
    member: MemberId,
    /// The journal on disk; appended under this lock.
    log: Mutex<baton_store::records::RecordLog>,
    /// The journal in memory, by id; shared by `run` and the readers
    /// (`/commands`, metrics, the link's stored-result check).
    entries: Mutex<HashMap<CommandId, JournalEntry>>,
    /// The newest leader term accepted from each coordinator journal, by
    /// journal id: the fence an older term is refused at. Taken after
    /// `entries` when both are held.
    terms: Mutex<HashMap<String, u64>>,
    /// Deliveries refused for an older term since the agent started.
    fenced: AtomicU64,
    /// The command running now (the link asks its grants on the session
    /// that sent it).
    current: Mutex<Option<CommandId>>,
    /// Held while a command runs: one command at a time.
    running: tokio::sync::Mutex<()>,
    adapter: Arc<dyn Adapter>,
    /// Starts and stops the member, in the configured run mode.
    process: Box<dyn MemberProcess>,
    installer: Option<Installer>,
    /// The watcher's latest observation, for the leader interlock on Stop
    /// (and the release a backup records).
    observed: Option<tokio::sync::watch::Receiver<Option<Observation>>>,
    /// Where backups go, when a `[store]` is configured.
    backups: Option<Backups>,
    /// The member's `[run.env]`, which a release's checks see too (they
    /// judge the environment the member will start in).
    member_env: BTreeMap<String, String>,
}

/// The bound on each of a release's own checks.
const RELEASE_CHECK_TIMEOUT: Duration = Duration::from_secs(600);

impl Executor {
    /// Refuses `Stop` while the member's own latest observation says it
    /// leads: the coordinator hands leadership over first, and this is the
    /// second lock on that door.
    pub fn with_leader_interlock(
        mut self,
        observed: tokio::sync::watch::Receiver<Option<Observation>>,
    ) -> Self {
        self.observed = Some(observed);
        self
    }

    /// Takes backups into `backups` (without it, a backup command fails
    /// and says why).
    pub fn with_backups(mut self, backups: Backups) -> Self {
        self.backups = Some(backups);
        self
    }

    /// Gives a release's checks the member's `[run.env]`.
    pub fn with_member_env(mut self, env: BTreeMap<String, String>) -> Self {
        self.member_env = env;
        self
    }

    /// The member process's exits as the runner sees them (the link
    /// reports a change at once).
    pub fn exits(&self) -> tokio::sync::watch::Receiver<crate::runner::supervise::ProcState> {
        self.process.exits()
    }

    pub fn open(
        member: MemberId,
        state_dir: &std::path::Path,
        adapter: Arc<dyn Adapter>,
        process: Box<dyn MemberProcess>,
        installer: Option<Installer>,
    ) -> Result<Self, JournalError> {
        use baton_store::records::{self, RecordError, RecordLog};
        let path = state_dir.join(JOURNAL_FILE);
        let log_err = |source| JournalError::Log {
            member: member.clone(),
            source,
        };
        fs::create_dir_all(state_dir).map_err(|source| {
            log_err(RecordError::Io {
                path: state_dir.to_owned(),
                op: "create",
                source,
            })
        })?;
        let legacy = state_dir.join(LEGACY_JOURNAL_FILE);
        if !path.exists() && legacy.exists() {
            import_legacy(&member, &legacy, &path)?;
        }
        let opened = RecordLog::open(&path).map_err(log_err)?;
        if let Some(torn) = opened.torn {
            tracing::warn!(
                %member, path = %path.display(), offset = torn.offset, bytes = torn.bytes,
                "cut off a torn command-journal tail (an append a crash or a full disk interrupted)"
            );
        }
        let mut entries = HashMap::new();
        // Every record counts for the fence, not only each id's latest: an
        // id re-sent from another journal keeps the first journal's term.
        let mut terms = HashMap::new();
        for r in &opened.records {
            let e: JournalEntry = serde_json::from_slice(&r.payload).map_err(|e| {
                log_err(RecordError::Corrupt {
                    path: path.clone(),
                    offset: r.offset,
                    detail: format!("a record that checks out is not a command entry: {e}"),
                })
            })?;
            raise(&mut terms, e.fence.as_ref());
            entries.insert(e.id.clone(), e);
        }
        if legacy.exists() {
            // Imported by an earlier start that stopped before the rename.
            records::set_aside_imported(&legacy).map_err(|source| {
                log_err(RecordError::Io {
                    path: legacy.clone(),
                    op: "rename",
                    source,
                })
            })?;
        }
        let mut log = opened.log;
        if !log.keep_reserve(JOURNAL_RESERVE).map_err(log_err)? {
            tracing::warn!(%member, path = %path.display(), "the agent's state_dir is full: starting on what is left of the command journal's reserve (the member will not be stopped until there is space)");
        }
        Ok(Executor {
            member,
            log: Mutex::new(log),
            entries: Mutex::new(entries),
            terms: Mutex::new(terms),
            fenced: AtomicU64::new(0),
            current: Mutex::new(None),
            running: tokio::sync::Mutex::new(()),
            adapter,
            process,
            installer,
            observed: None,
            backups: None,
            member_env: BTreeMap::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CommandId, JournalEntry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The journal as it stands (for `/commands` and tests).
    pub fn entries(&self) -> Vec<JournalEntry> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Journals `e` (synced). The error says what failed, for the caller
    /// to put in the command's refusal.
    fn append(&self, e: &JournalEntry) -> Result<(), String> {
        let bytes = serde_json::to_vec(e).map_err(|err| format!("cannot encode it: {err}"))?;
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        log.append(&bytes).map_err(|err| err.to_string())
    }

    /// On a full disk the journal lives on its reserve, kept for bringing
    /// the member back: only a start, a switch or a step-down is taken
    /// then; anything that could take the member down (or needs the disk)
    /// is refused. The reserve is tried again first (the space may be back).
    fn refuse_on_reserve(&self, cmd: &AgentCommand) -> Option<String> {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if !log.low_space() || log.retry_reserve() {
            return None;
        }
        match cmd.action {
            Action::Start | Action::Switch { .. } | Action::StepDown { .. } => None,
            _ => Some(format!(
                "member {}: the agent's state_dir is full (its command journal is down to the reserve kept for bringing the member back); refusing {} ({}), nothing was done: free space under the agent's state_dir, then resume",
                self.member, cmd.id, cmd.action
            )),
        }
    }

    /// The newest term accepted from each coordinator journal (for
    /// `/commands`, tests and operators).
    pub fn terms(&self) -> BTreeMap<String, u64> {
        let terms = self.terms.lock().unwrap_or_else(|p| p.into_inner());
        terms.iter().map(|(j, t)| (j.clone(), *t)).collect()
    }

    /// Deliveries refused since the agent started because they came from
    /// a deposed coordinator leader (metrics).
    pub fn fenced_total(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
    }

    /// The command running now, if any.
    pub fn current(&self) -> Option<CommandId> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Raises the remembered term to `cmd`'s; whether it was newer.
    fn accept_term(&self, cmd: &AgentCommand) -> bool {
        let mut terms = self.terms.lock().unwrap_or_else(|p| p.into_inner());
        raise(&mut terms, cmd.fence.as_ref())
    }

    /// The refusal of a command from a deposed coordinator leader: its
    /// fence's term is older than the newest accepted from its journal.
    fn refuse_deposed(&self, cmd: &AgentCommand) -> Option<CommandOutcome> {
        let fence = cmd.fence.as_ref()?;
        let newest = {
            let terms = self.terms.lock().unwrap_or_else(|p| p.into_inner());
            *terms.get(&fence.journal)?
        };
        if fence.term >= newest {
            return None;
        }
        self.fenced.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            member = %self.member, command = %cmd.id, journal = %fence.journal,
            term = fence.term, newest_term = newest,
            "refused a command from a deposed coordinator leader"
        );
        Some(CommandOutcome {
            id: cmd.id.clone(),
            result: Err(format!(
                "member {}: command {} ({}) comes from term {} of coordinator journal {}, but this member already took commands from its term {}: it came from a deposed coordinator leader; refused, nothing ran",
                self.member, cmd.id, cmd.action, fence.term, fence.journal, newest
            )),
        })
    }

    /// What the journal already says about `cmd`: its stored result when
    /// the same id and action finished before; a refusal when the id is
    /// known with another action (an id is never reused, so this is a
    /// coordinator that lost or replaced its journal, and replaying the
    /// old result would claim work that was not done); `None` otherwise.
    /// A deposed leader's command (an older term than one seen from its
    /// journal) is refused first, even for a known id.
    pub fn stored(&self, cmd: &AgentCommand) -> Option<CommandOutcome> {
        self.answer_stored(cmd).map(Answer::into_outcome)
    }

    /// [`Executor::stored`], saying whether the answer is the command's
    /// outcome or a refusal of this delivery alone. A stored result given
    /// under a newer term raises (and journals) the term.
    pub fn answer_stored(&self, cmd: &AgentCommand) -> Option<Answer> {
        if let Some(refusal) = self.refuse_deposed(cmd) {
            return Some(Answer::Refused(refusal));
        }
        let (outcome, renewed) = {
            let mut entries = self.lock();
            let e = entries.get_mut(&cmd.id)?;
            if e.action != cmd.action {
                let refusal = format!(
                    "member {}: command id {} already ran here as {}, not {}; refusing it (an id is never reused: was the coordinator's journal lost or replaced?); nothing was done",
                    self.member, cmd.id, e.action, cmd.action
                );
                tracing::warn!(member = %self.member, id = %cmd.id, %refusal, "refused a reused command id");
                return Some(Answer::Refused(CommandOutcome {
                    id: cmd.id.clone(),
                    result: Err(refusal),
                }));
            }
            let result = e.result.clone()?;
            // A newer leader re-sends what it finds in flight: its term is
            // remembered, and journaled so that a restart remembers it too.
            // The entry takes the fence when it raised the journal's term,
            // and whenever it is newer than the entry's own (the journal's
            // term may have been raised already, by another command of that
            // leader).
            let raised = self.accept_term(cmd);
            let newer = raised || newer_fence(e.fence.as_ref(), cmd.fence.as_ref());
            let renewed = newer.then(|| {
                e.fence.clone_from(&cmd.fence);
                e.clone()
            });
            let outcome = CommandOutcome {
                id: cmd.id.clone(),
                result,
            };
            (outcome, renewed)
        };
        if let Some(e) = renewed
            && let Err(why) = self.append(&e)
        {
            tracing::warn!(member = %self.member, id = %cmd.id, error = %why, "cannot journal a newer coordinator term (it holds until the agent restarts)");
        }
        Some(Answer::Outcome(outcome))
    }

    /// Runs `cmd` unless its id already ran; returns the (stored) outcome.
    /// A command that cannot be journaled first is refused, not run; so is
    /// one from a deposed coordinator leader.
    pub async fn run(&self, cmd: AgentCommand) -> CommandOutcome {
        self.answer(cmd).await.into_outcome()
    }

    /// [`Executor::run`], saying whether the answer is the command's
    /// outcome or a refusal of this delivery alone.
    pub async fn answer(&self, cmd: AgentCommand) -> Answer {
        let _one_at_a_time = self.running.lock().await;
        if let Some(done) = self.answer_stored(&cmd) {
            if let Answer::Outcome(_) = done {
                tracing::info!(member = %self.member, id = %cmd.id, "repeated command id; answering from the journal");
            }
            return done;
        }
        if let Some(refusal) = self.refuse_on_reserve(&cmd) {
            tracing::warn!(member = %self.member, id = %cmd.id, %refusal, "refused a command: the state_dir is full");
            return Answer::Outcome(CommandOutcome {
                id: cmd.id.clone(),
                result: Err(refusal),
            });
        }
        let (runs, before) = {
            let mut entries = self.lock();
            let before = entries.get(&cmd.id).cloned();
            let e = entries.entry(cmd.id.clone()).or_insert(JournalEntry {
                id: cmd.id.clone(),
                action: cmd.action.clone(),
                runs: 0,
                result: None,
                fence: None,
            });
            // An entry without a result was interrupted by an agent crash;
            // every action is idempotent, so it is safe to run it again.
            e.runs += 1;
            e.fence.clone_from(&cmd.fence);
            (e.clone(), before)
        };
        if let Err(why) = self.append(&runs) {
            // Nothing runs unjournaled: undo the count, refuse.
            let mut entries = self.lock();
            match before {
                Some(b) => entries.insert(cmd.id.clone(), b),
                None => entries.remove(&cmd.id),
            };
            tracing::error!(member = %self.member, id = %cmd.id, error = %why, "cannot journal a command; refused it");
            return Answer::Outcome(CommandOutcome {
                id: cmd.id.clone(),
                result: Err(format!(
                    "member {}: cannot journal command {} ({}) before running it: {why}; refused, nothing was done (free space under the agent's state_dir, then resume)",
                    self.member, cmd.id, cmd.action
                )),
            });
        }
        self.accept_term(&cmd);
        tracing::info!(member = %self.member, id = %cmd.id, action = %cmd.action, "running command");
        let result = {
            let _current = Current::set(&self.current, &cmd.id);
            self.execute(&cmd).await
        };
        match &result {
            Ok(d) => {
                tracing::info!(member = %self.member, id = %cmd.id, detail = %d, "command done")
            }
            Err(d) => {
                tracing::warn!(member = %self.member, id = %cmd.id, detail = %d, "command failed")
            }
        }
        let done = self.lock().get_mut(&cmd.id).map(|e| {
            e.result = Some(result.clone());
            e.clone()
        });
        if let Some(e) = done
            && let Err(why) = self.append(&e)
        {
            // It ran; the coordinator gets the result now. Only a restart
            // before the next append would run it again (every action is
            // idempotent).
            tracing::error!(member = %self.member, id = %cmd.id, error = %why, "cannot journal a command's result");
        }
        Answer::Outcome(CommandOutcome { id: cmd.id, result })
    }

    fn needs_installer(&self) -> Result<&Installer, String> {
        self.installer.as_ref().ok_or_else(|| {
            format!(
                "member {}: no [store] and run.base_dir configured, so releases cannot be staged or switched here",
                self.member
            )
        })
    }

    /// A restore replaces the member's data: refused while the member runs
    /// (supervise mode: its pid) or still answers (other modes).
    async fn refuse_if_serving(&self, id: &str) -> Result<(), String> {
        let member = &self.member;
        match self.process.status() {
            crate::runner::ProcessStatus::Running { pid } => Err(format!(
                "member {member} is running (pid {pid}); refusing to restore backup {id} under it: stop it first"
            )),
            crate::runner::ProcessStatus::Stopped => Ok(()),
            crate::runner::ProcessStatus::Untracked => match self.adapter.poll().await {
                Ok(state) => Err(format!(
                    "member {member} still answers (role {}, release {}); refusing to restore backup {id} under it: stop it first",
                    state.role, state.release
                )),
                Err(_) => Ok(()),
            },
        }
    }

    async fn execute(&self, cmd: &AgentCommand) -> Result<String, String> {
        match &cmd.action {
            Action::Stage { release } => {
                let installer = self.needs_installer()?;
                let staged = installer.stage(release).await.map_err(|e| e.to_string())?;
                let checked = self.check_staged(installer, &release.version).await?;
                Ok(format!("{staged}; {checked}"))
            }
            Action::Switch { version } => self
                .needs_installer()?
                .switch(version)
                .map_err(|e| e.to_string()),
            Action::Stop => {
                // A restore stops the whole cluster: the coordinator says so.
                let leads = !cmd.even_if_leader
                    && self.observed.as_ref().is_some_and(|o| {
                        o.borrow()
                            .as_ref()
                            .is_some_and(|o| o.state.role == baton_domain::Role::Leader)
                    });
                if leads && !self.adapter.single_member() {
                    return Err(format!(
                        "member {} is the leader; refusing to stop it ({})",
                        self.member,
                        baton_domain::LEADER_REFUSAL
                    ));
                }
                let timeout = cmd
                    .stop_timeout_ms
                    .map(|ms| Duration::from_millis(u64::from(ms)));
                let before = self.adapter.before_stop().await.map_err(|e| {
                    format!(
                        "member {}: before stopping it: {e}; it was not stopped",
                        self.member
                    )
                })?;
                let stopped = self.process.stop(timeout).await?;
                Ok(if before.is_empty() {
                    stopped
                } else {
                    format!("{stopped}; {before}")
                })
            }
            Action::Start => {
                let started = self.process.start().await?;
                self.adapter.after_start();
                Ok(started)
            }
            Action::StepDown { to } => self.adapter.step_down(to).await.map_err(|e| e.to_string()),
            Action::Backup { id } => {
                let backups = self.backups.as_ref().ok_or_else(|| {
                    format!(
                        "member {}: no [store] is configured on this agent, so it cannot take backup {id}; configure [store], or set the coordinator's policy backup = \"off\"",
                        self.member
                    )
                })?;
                let release = self
                    .observed
                    .as_ref()
                    .and_then(|o| {
                        o.borrow().as_ref().map(|o| SourceRelease {
                            version: o.state.release.clone(),
                            format_version: o.state.format_version,
                        })
                    })
                    .unwrap_or(SourceRelease {
                        version: String::new(),
                        format_version: 0,
                    });
                backups.take(self.adapter.as_ref(), id, release).await
            }
            Action::Restore { id } => {
                let backups = self.backups.as_ref().ok_or_else(|| {
                    format!(
                        "member {}: no [store] is configured on this agent, so it cannot read backup {id}; configure [store]",
                        self.member
                    )
                })?;
                self.refuse_if_serving(id).await?;
                backups.restore(self.adapter.as_ref(), id).await
            }
        }
    }
}

impl Executor {
    /// Runs the staged release's `checks.toml` and the adapter's own stage
    /// checks, all of them; any failure fails the Stage (before anything
    /// is stopped) naming every failed check.
    async fn check_staged(&self, installer: &Installer, version: &str) -> Result<String, String> {
        let member = &self.member;
        let dir = installer.release_dir(version);
        let data_dir = installer.data_dir().to_owned();
        let release_checks = crate::commands::ReleaseChecks::load(&dir)
            .map_err(|e| format!("member {member}: release {version}'s checks: {e}"))?;
        let (d, r) = (data_dir.to_string_lossy(), dir.to_string_lossy());
        let mut verdicts = crate::commands::run_checks(
            member,
            &release_checks.0,
            &[("release_dir", &r), ("data_dir", &d)],
            &self.member_env,
            RELEASE_CHECK_TIMEOUT,
        )
        .await;
        verdicts.extend(self.adapter.stage_checks(&dir, &data_dir).await);
        let failed: Vec<String> = verdicts
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{} failed: {}", c.check, c.detail))
            .collect();
        if !failed.is_empty() {
            return Err(format!(
                "member {member}: release {version} is staged but {} of its {} check(s) failed, so nothing was stopped: {}; fix it, then `baton resume`",
                failed.len(),
                verdicts.len(),
                failed.join("; ")
            ));
        }
        Ok(match verdicts.len() {
            0 => "no release checks".to_owned(),
            n => format!(
                "{n} check(s) passed ({})",
                verdicts
                    .iter()
                    .map(|c| c.check.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        })
    }
}

/// Whether `new` is a newer fence than an entry's `old`: a newer term of
/// the same journal, or a first fence.
fn newer_fence(old: Option<&Fence>, new: Option<&Fence>) -> bool {
    match (old, new) {
        (Some(old), Some(new)) => old.journal == new.journal && new.term > old.term,
        (None, Some(_)) => true,
        (_, None) => false,
    }
}

/// Raises `terms` to `fence`'s term for its journal; whether it was newer
/// (or the journal new).
fn raise(terms: &mut HashMap<String, u64>, fence: Option<&Fence>) -> bool {
    let Some(fence) = fence else { return false };
    match terms.get_mut(&fence.journal) {
        Some(newest) if *newest >= fence.term => false,
        Some(newest) => {
            *newest = fence.term;
            true
        }
        None => {
            terms.insert(fence.journal.clone(), fence.term);
            true
        }
    }
}

/// Names the command running now for as long as it runs (also when its
/// future is dropped part way).
struct Current<'a>(&'a Mutex<Option<CommandId>>);

impl<'a> Current<'a> {
    fn set(slot: &'a Mutex<Option<CommandId>>, id: &CommandId) -> Self {
        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
        Current(slot)
    }
}

impl Drop for Current<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// Imports the JSON-lines command journal at `legacy` into a new record
/// log at `path` (only a torn last line is dropped; any other bad line
/// refuses, naming it). Each id keeps its latest entry, in order.
fn import_legacy(
    member: &MemberId,
    legacy: &std::path::Path,
    path: &std::path::Path,
) -> Result<(), JournalError> {
    use baton_store::records::{self, RecordError, RecordLog};
    let log_err = |source| JournalError::Log {
        member: member.clone(),
        source,
    };
    let bytes = fs::read(legacy).map_err(|source| {
        log_err(RecordError::Io {
            path: legacy.to_owned(),
            op: "read",
            source,
        })
    })?;
    let (entries, torn) = records::parse_legacy_lines(&bytes, |line| {
        serde_json::from_str::<JournalEntry>(line).map_err(|e| e.to_string())
    })
    .map_err(|(line, detail)| JournalError::Legacy {
        member: member.clone(),
        path: legacy.to_owned(),
        line,
        detail,
    })?;
    if let Some(line) = torn {
        tracing::warn!(%member, path = %legacy.display(), line, "not importing a torn last command-journal line");
    }
    let encoded: Vec<Vec<u8>> = entries
        .iter()
        .map(serde_json::to_vec)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            log_err(RecordError::Io {
                path: path.to_owned(),
                op: "encode an entry for",
                source: std::io::Error::other(e),
            })
        })?;
    let records: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
    RecordLog::create_with(path, &records).map_err(log_err)?;
    tracing::info!(%member, from = %legacy.display(), to = %path.display(), entries = entries.len(), "imported the JSON-lines command journal");
    records::set_aside_imported(legacy)
        .map(drop)
        .map_err(|source| {
            log_err(RecordError::Io {
                path: legacy.to_owned(),
                op: "rename",
                source,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::fake::FakeAdapter;
    use crate::runner::External;
    use crate::runner::exec::Exec;

    fn external() -> Box<dyn MemberProcess> {
        Box::new(External {
            member: MemberId::new("n1").unwrap(),
        })
    }

    fn cmd(id: &str, action: Action) -> AgentCommand {
        AgentCommand {
            id: CommandId(id.into()),
            action,
            stop_timeout_ms: None,
            even_if_leader: false,
            fence: None,
        }
    }

    #[tokio::test]
    async fn each_id_runs_at_most_once_even_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let target = Arc::new(FakeAdapter::default());
        let m = MemberId::new("n1").unwrap();
        let to = MemberId::new("n2").unwrap();
        let ex = Executor::open(m.clone(), dir.path(), target.clone(), external(), None).unwrap();
        let first = ex
            .run(cmd("r-1", Action::StepDown { to: to.clone() }))
            .await;
        assert!(first.result.is_ok());
        assert_eq!(
            ex.run(cmd("r-1", Action::StepDown { to: to.clone() }))
                .await,
            first
        );
        assert_eq!(target.step_downs.lock().unwrap().len(), 1);

        // A new executor over the same journal (an agent restart) remembers.
        let ex = Executor::open(m, dir.path(), target.clone(), external(), None).unwrap();
        assert_eq!(ex.run(cmd("r-1", Action::StepDown { to })).await, first);
        assert_eq!(target.step_downs.lock().unwrap().len(), 1);
        assert_eq!(ex.entries()[0].runs, 1);
    }

    fn fenced(id: &str, journal: &str, term: u64) -> AgentCommand {
        AgentCommand {
            fence: Some(Fence {
                journal: journal.into(),
                term,
            }),
            ..cmd(
                id,
                Action::StepDown {
                    to: MemberId::new("n2").unwrap(),
                },
            )
        }
    }

    #[tokio::test]
    async fn a_deposed_leaders_command_is_refused_and_nothing_runs() {
        let dir = tempfile::tempdir().unwrap();
        let target = Arc::new(FakeAdapter::default());
        let m = MemberId::new("n1").unwrap();
        let ex = Executor::open(m, dir.path(), target.clone(), external(), None).unwrap();
        assert!(ex.run(fenced("r1-1", "j-a", 2)).await.result.is_ok());
        let stale = fenced("r1-2", "j-a", 1);
        let answer = ex.answer(stale.clone()).await;
        let Answer::Refused(refused) = &answer else {
            panic!("{answer:?}")
        };
        let err = refused.result.clone().unwrap_err();
        assert_eq!(
            err,
            "member n1: command r1-2 (step down to n2) comes from term 1 of coordinator journal j-a, but this member already took commands from its term 2: it came from a deposed coordinator leader; refused, nothing ran"
        );
        assert_eq!(ex.stored(&stale), Some(refused.clone()));
        assert_eq!(target.step_downs.lock().unwrap().len(), 1, "nothing ran");
        let ids: Vec<_> = ex.entries().into_iter().map(|e| e.id.0).collect();
        assert_eq!(ids, ["r1-1"], "nothing was journaled for it");
        assert_eq!(ex.fenced_total(), 2);
        // The same term, and a newer one, are taken.
        assert!(ex.run(fenced("r1-3", "j-a", 2)).await.result.is_ok());
        assert!(ex.run(fenced("r1-4", "j-a", 3)).await.result.is_ok());
        assert_eq!(target.step_downs.lock().unwrap().len(), 3);
        let err = ex.run(fenced("r1-5", "j-a", 2)).await.result.unwrap_err();
        assert!(
            err.contains("term 2 of coordinator journal j-a") && err.contains("its term 3"),
            "{err}"
        );
        assert_eq!(ex.terms(), BTreeMap::from([("j-a".to_owned(), 3)]));
    }

    #[tokio::test]
    async fn every_known_id_a_newer_leader_resends_records_its_term() {
        let dir = tempfile::tempdir().unwrap();
        let target = Arc::new(FakeAdapter::default());
        let m = MemberId::new("n1").unwrap();
        let ex = Executor::open(m.clone(), dir.path(), target.clone(), external(), None).unwrap();
        for id in ["r1-1", "r1-2"] {
            assert!(ex.run(fenced(id, "j-a", 1)).await.result.is_ok());
        }
        // The new leader re-sends both: the first raises the journal-wide
        // term, and the second must still record it in its own entry.
        for id in ["r1-1", "r1-2"] {
            assert!(ex.run(fenced(id, "j-a", 2)).await.result.is_ok());
        }
        let terms = |ex: &Executor| -> Vec<u64> {
            ex.entries()
                .iter()
                .map(|e| e.fence.as_ref().unwrap().term)
                .collect()
        };
        assert_eq!(terms(&ex), vec![2, 2]);
        // Journaled: a restart reads the same.
        drop(ex);
        let ex = Executor::open(m, dir.path(), target, external(), None).unwrap();
        assert_eq!(terms(&ex), vec![2, 2]);
        assert!(ex.entries().iter().all(|e| e.runs == 1));
    }

    #[tokio::test]
    async fn the_fence_comes_before_the_known_id_cache_and_a_newer_term_raises_it() {
        let dir = tempfile::tempdir().unwrap();
        let target = Arc::new(FakeAdapter::default());
        let m = MemberId::new("n1").unwrap();
        let ex = Executor::open(m.clone(), dir.path(), target.clone(), external(), None).unwrap();
        let first = ex.run(fenced("r1-1", "j-a", 3)).await;
        assert!(first.result.is_ok(), "{first:?}");
        // An old term's resend of a known id: refused, not the stored result.
        let err = ex.run(fenced("r1-1", "j-a", 2)).await.result.unwrap_err();
        assert!(err.contains("deposed coordinator leader"), "{err}");
        assert!(matches!(
            ex.answer_stored(&fenced("r1-1", "j-a", 2)),
            Some(Answer::Refused(_))
        ));
        // The same term, a newer one, or no fence: the stored result.
        for resend in [
            fenced("r1-1", "j-a", 3),
            fenced("r1-1", "j-a", 5),
            cmd(
                "r1-1",
                Action::StepDown {
                    to: MemberId::new("n2").unwrap(),
                },
            ),
        ] {
            assert_eq!(
                ex.answer_stored(&resend),
                Some(Answer::Outcome(first.clone()))
            );
            assert_eq!(ex.run(resend).await, first);
        }
        assert_eq!(target.step_downs.lock().unwrap().len(), 1);
        assert_eq!(ex.entries()[0].runs, 1);
        // Term 5 came only through the cache, and it fences term 4 off.
        assert_eq!(ex.terms(), BTreeMap::from([("j-a".to_owned(), 5)]));
        let err = ex.run(fenced("r1-2", "j-a", 4)).await.result.unwrap_err();
        assert!(err.contains("its term 5"), "{err}");

        // An agent restart remembers term 5.
        drop(ex);
        let ex = Executor::open(m, dir.path(), target.clone(), external(), None).unwrap();
        assert_eq!(ex.terms(), BTreeMap::from([("j-a".to_owned(), 5)]));
        let err = ex.run(fenced("r1-2", "j-a", 4)).await.result.unwrap_err();
        assert!(err.contains("its term 5"), "{err}");
        let err = ex.run(fenced("r1-1", "j-a", 4)).await.result.unwrap_err();
        assert!(err.contains("deposed"), "{err}");
        assert_eq!(ex.run(fenced("r1-1", "j-a", 5)).await, first);
        assert_eq!(target.step_downs.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn another_journal_and_no_fence_are_never_fenced_off_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let target = Arc::new(FakeAdapter::default());
        let m = MemberId::new("n1").unwrap();
        let ex = Executor::open(m.clone(), dir.path(), target.clone(), external(), None).unwrap();
        assert!(ex.run(fenced("r1-1", "j-a", 7)).await.result.is_ok());
        // A lost journal's successor starts again at term 1.
        assert!(ex.run(fenced("r2-1", "j-b", 1)).await.result.is_ok());
        // A coordinator that does not fence.
        let plain = |id: &str| {
            cmd(
                id,
                Action::StepDown {
                    to: MemberId::new("n2").unwrap(),
                },
            )
        };
        assert!(ex.run(plain("r3-1")).await.result.is_ok());
        // r1-1 re-sent from j-b: answered, and j-b's term is raised.
        assert!(ex.run(fenced("r1-1", "j-b", 2)).await.result.is_ok());
        assert_eq!(target.step_downs.lock().unwrap().len(), 3);
        let want = BTreeMap::from([("j-a".to_owned(), 7), ("j-b".to_owned(), 2)]);
        assert_eq!(ex.terms(), want);
        assert_eq!(ex.fenced_total(), 0);

        drop(ex);
        // r1-1's entry now names j-b, yet j-a's term 7 is remembered.
        let ex = Executor::open(m, dir.path(), target.clone(), external(), None).unwrap();
        assert_eq!(ex.terms(), want);
        let journaled: Vec<_> = ex
            .entries()
            .into_iter()
            .map(|e| (e.id.0, e.fence.map(|f| (f.journal, f.term))))
            .collect();
        assert_eq!(
            journaled,
            [
                ("r1-1".to_owned(), Some(("j-b".to_owned(), 2))),
                ("r2-1".to_owned(), Some(("j-b".to_owned(), 1))),
                ("r3-1".to_owned(), None),
            ]
        );
        let err = ex.run(fenced("r1-9", "j-a", 6)).await.result.unwrap_err();
        assert!(
            err.contains("journal j-a") && err.contains("its term 7"),
            "{err}"
        );
        let err = ex.run(fenced("r2-9", "j-b", 1)).await.result.unwrap_err();
        assert!(
            err.contains("journal j-b") && err.contains("its term 2"),
            "{err}"
        );
        assert!(ex.run(fenced("r4-1", "j-c", 1)).await.result.is_ok());
        assert!(ex.run(plain("r3-2")).await.result.is_ok());
        assert_eq!(target.step_downs.lock().unwrap().len(), 5);
        assert_eq!(ex.fenced_total(), 2);
    }

    #[tokio::test]
    async fn a_restore_reads_the_backup_back_verified_and_refuses_a_member_that_answers() {
        use baton_store::backup::{self, BackupSource};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(baton_store::DirStore::new(dir.path().join("store")));
        let source = |id: &str| BackupSource {
            cluster: "c1".into(),
            id: id.into(),
            member: "n2".into(),
            adapter: "fake".into(),
            revision: 42,
            release: "v1".into(),
            release_format: 1,
        };
        let file = dir.path().join("b");
        std::fs::write(&file, b"the member's data").unwrap();
        backup::upload(store.as_ref(), &source("r1-v2-b1"), &file)
            .await
            .unwrap();
        backup::upload(store.as_ref(), &source("r1-v2-b2"), &file)
            .await
            .unwrap();
        let part = dir.path().join("store/backups/c1/r1-v2-b2/part-00000");
        std::fs::write(&part, b"the member's dat4").unwrap();

        let target = Arc::new(FakeAdapter::default());
        let state_dir = dir.path().join("state");
        let data_dir = dir.path().join("data");
        let ex = Executor::open(
            MemberId::new("n1").unwrap(),
            &state_dir,
            target.clone(),
            external(),
            None,
        )
        .unwrap()
        .with_backups(Backups::new(
            MemberId::new("n1").unwrap(),
            "c1".into(),
            store,
            &state_dir,
            &data_dir,
        ));
        // Still answering: refused, nothing restored.
        target.set(Some(
            crate::adapter::MemberState::unreachable(String::new()),
        ));
        let err = ex
            .run(cmd(
                "x-1",
                Action::Restore {
                    id: "r1-v2-b1".into(),
                },
            ))
            .await
            .result
            .unwrap_err();
        assert!(err.contains("member n1 still answers"), "{err}");
        assert!(target.restores.lock().unwrap().is_empty());

        target.set(None);
        let ok = ex
            .run(cmd(
                "x-2",
                Action::Restore {
                    id: "r1-v2-b1".into(),
                },
            ))
            .await
            .result
            .unwrap();
        assert!(
            ok.contains("backup r1-v2-b1 (revision 42, from n2 on v1 format 1"),
            "{ok}"
        );
        let restores = target.restores.lock().unwrap().clone();
        assert_eq!(
            restores,
            vec![(b"the member's data".to_vec(), 42, data_dir.clone())]
        );
        // The scratch copy is gone.
        let left: Vec<_> = std::fs::read_dir(state_dir.join("backups"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");

        // A part that does not match its manifest never reaches the adapter.
        let err = ex
            .run(cmd(
                "x-3",
                Action::Restore {
                    id: "r1-v2-b2".into(),
                },
            ))
            .await
            .result
            .unwrap_err();
        assert!(
            err.contains("nothing was changed") && err.contains("part-00000"),
            "{err}"
        );
        assert_eq!(target.restores.lock().unwrap().len(), 1);
        // So does a backup that is not there.
        let err = ex
            .run(cmd(
                "x-4",
                Action::Restore {
                    id: "r9-v9-b1".into(),
                },
            ))
            .await
            .result
            .unwrap_err();
        assert!(err.contains("backup r9-v9-b1 cannot be restored"), "{err}");
    }

    #[tokio::test]
    async fn external_mode_refuses_stop_with_a_clear_reason() {
        let dir = tempfile::tempdir().unwrap();
        let ex = Executor::open(
            MemberId::new("n1").unwrap(),
            dir.path(),
            Arc::new(FakeAdapter::default()),
            external(),
            None,
        )
        .unwrap();
        let out = ex.run(cmd("r-2", Action::Stop)).await;
        let err = out.result.unwrap_err();
        assert!(err.contains("member n1 runs in external mode"), "{err}");
    }

    #[tokio::test]
    async fn stop_is_refused_while_the_member_leads() {
        use baton_domain::{Health, Role};

        use crate::adapter::MemberState;
        use crate::watcher::Observation;
        let dir = tempfile::tempdir().unwrap();
        let mut state = MemberState::unreachable(String::new());
        state.role = Role::Leader;
        state.health = Health::Healthy;
        let (_tx, rx) = tokio::sync::watch::channel(Some(Observation {
            state,
            reachable: true,
            at: tokio::time::Instant::now(),
        }));
        let ex = Executor::open(
            MemberId::new("n1").unwrap(),
            dir.path(),
            Arc::new(FakeAdapter::default()),
            external(),
            None,
        )
        .unwrap()
        .with_leader_interlock(rx);
        let err = ex.run(cmd("r-3", Action::Stop)).await.result.unwrap_err();
        assert!(
            err.contains("member n1 is the leader; refusing to stop it"),
            "{err}"
        );
        // A restore's stop of the whole cluster passes the interlock (and
        // reaches the runner, which in external mode refuses for its own
        // reason).
        let mut whole = cmd("r-4", Action::Stop);
        whole.even_if_leader = true;
        let err = ex.run(whole).await.result.unwrap_err();
        assert!(err.contains("external mode"), "{err}");
    }

    #[tokio::test]
    async fn exec_mode_runs_the_operators_commands_and_reports_failures() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("running");
        let exec = crate::config::ExecConfig {
            start: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("echo {{data_dir}} > {}", marker.display()),
            ],
            stop: vec![
                "/bin/sh".into(),
                "-c".into(),
                "echo cannot stop: unit busy >&2; exit 3".into(),
            ],
            base_dir: None,
            env: Default::default(),
            timeout: Duration::from_secs(5),
        };
        let ex = Executor::open(
            MemberId::new("n1").unwrap(),
            dir.path(),
            Arc::new(FakeAdapter::default()),
            Box::new(Exec::new(
                MemberId::new("n1").unwrap(),
                exec,
                PathBuf::from("/var/lib/kv"),
            )),
            None,
        )
        .unwrap();
        let started = ex.run(cmd("e-1", Action::Start)).await.result.unwrap();
        assert!(started.contains("exited 0"), "{started}");
        assert_eq!(
            fs::read_to_string(&marker).unwrap().trim(),
            "/var/lib/kv",
            "{{data_dir}} was substituted"
        );
        let err = ex.run(cmd("e-2", Action::Stop)).await.result.unwrap_err();
        assert!(
            err.starts_with("member n1: stop command") && err.contains("cannot stop: unit busy"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_single_member_app_is_stopped_while_it_leads() {
        use baton_domain::{Health, Role};

        use crate::adapter::MemberState;
        let dir = tempfile::tempdir().unwrap();
        let mut state = MemberState::unreachable(String::new());
        state.role = Role::Leader;
        state.health = Health::Healthy;
        let (_tx, rx) = tokio::sync::watch::channel(Some(Observation {
            state,
            reachable: true,
            at: tokio::time::Instant::now(),
        }));
        let fake = FakeAdapter::default();
        fake.alone.store(true, std::sync::atomic::Ordering::SeqCst);
        let exec = crate::config::ExecConfig {
            start: vec!["true".into()],
            stop: vec!["true".into()],
            base_dir: None,
            env: Default::default(),
            timeout: Duration::from_secs(5),
        };
        let m = MemberId::new("app1").unwrap();
        let ex = Executor::open(
            m.clone(),
            dir.path(),
            Arc::new(fake),
            Box::new(Exec::new(m, exec, PathBuf::from("/var/lib/app"))),
            None,
        )
        .unwrap()
        .with_leader_interlock(rx);
        let out = ex.run(cmd("s-1", Action::Stop)).await.result.unwrap();
        assert!(out.contains("stop command `true` exited 0"), "{out}");
    }

    #[tokio::test]
    async fn a_staged_release_whose_checks_fail_fails_the_stage_naming_them() {
        use baton_domain::ReleaseRef;
        use baton_store::{DirStore, publish};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(DirStore::new(dir.path().join("store")));
        let build = dir.path().join("build");
        fs::create_dir_all(&build).unwrap();
        fs::write(
            build.join("checks.toml"),
            "[[check]]\nname = \"setting REDIS_URL\"\ncommand = [\"/bin/sh\", \"-c\", \"test -n \\\"$REDIS_URL\\\" || { echo REDIS_URL is required by {release_dir} >&2; exit 1; }\"]\n",
        )
        .unwrap();
        let m = publish(store.as_ref(), "app", "v2", 1, &build, dir.path())
            .await
            .unwrap();
        let release = ReleaseRef {
            name: "app".into(),
            version: "v2".into(),
            format_version: 1,
            sha256: m.sha256,
        };
        let member = MemberId::new("app1").unwrap();
        let installer = || {
            Installer::new(
                member.clone(),
                dir.path().join("base"),
                dir.path().join("data"),
                store.clone(),
            )
        };
        let ex = Executor::open(
            member.clone(),
            dir.path(),
            Arc::new(FakeAdapter::default()),
            external(),
            Some(installer()),
        )
        .unwrap();
        let err = ex
            .run(cmd(
                "c-1",
                Action::Stage {
                    release: release.clone(),
                },
            ))
            .await
            .result
            .unwrap_err();
        assert!(
            err.contains("member app1: release v2 is staged but 1 of its 1 check(s) failed, so nothing was stopped")
                && err.contains("check:setting REDIS_URL failed")
                && err.contains("REDIS_URL is required by"),
            "{err}"
        );
        // With the setting in the member's environment, the same stage passes.
        let ex = Executor::open(
            member.clone(),
            &dir.path().join("other"),
            Arc::new(FakeAdapter::default()),
            external(),
            Some(installer()),
        )
        .unwrap()
        .with_member_env(BTreeMap::from([("REDIS_URL".into(), "redis://x".into())]));
        fs::create_dir_all(dir.path().join("other")).unwrap();
        let ok = ex
            .run(cmd("c-2", Action::Stage { release }))
            .await
            .result
            .unwrap();
        assert!(
            ok.contains("1 check(s) passed (check:setting REDIS_URL)"),
            "{ok}"
        );
    }

    fn exec_member(dir: &std::path::Path, marker: &std::path::Path) -> Box<dyn MemberProcess> {
        let exec = crate::config::ExecConfig {
            start: vec!["true".into()],
            stop: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!("echo stopped >> {}", marker.display()),
            ],
            base_dir: None,
            env: Default::default(),
            timeout: Duration::from_secs(5),
        };
        Box::new(Exec::new(
            MemberId::new("n1").unwrap(),
            exec,
            dir.to_owned(),
        ))
    }

    #[tokio::test]
    async fn a_command_that_cannot_be_journaled_is_refused_and_never_runs() {
        let disk = baton_store::testutil::SmallDisk::mount();
        let elsewhere = tempfile::tempdir().unwrap();
        let marker = elsewhere.path().join("stops");
        let ex = Executor::open(
            MemberId::new("n1").unwrap(),
            disk.path(),
            Arc::new(FakeAdapter::default()),
            exec_member(elsewhere.path(), &marker),
            None,
        )
        .unwrap();
        disk.fill("filler");
        // The journal's last page may still have room: run cheap commands
        // until one is refused (bounded).
        // Starts are taken even on the journal's reserve; the first one
        // that cannot be journaled at all is refused.
        let mut refused = None;
        for i in 0..200 {
            let out = ex.run(cmd(&format!("fill-{i}"), Action::Start)).await;
            if let Err(e) = out.result
                && e.contains("cannot journal")
            {
                refused = Some((i, e));
                break;
            }
        }
        let (i, err) = refused.expect("the journal never ran out of space");
        assert!(
            err.starts_with(&format!(
                "member n1: cannot journal command fill-{i} (start) before running it"
            )) && err.contains("refused, nothing was done"),
            "{err}"
        );
        let err = ex
            .run(cmd("r1-v2-3", Action::Stop))
            .await
            .result
            .unwrap_err();
        assert!(
            err.contains("r1-v2-3 (stop)") && err.contains("nothing was done"),
            "{err}"
        );
        assert!(!marker.exists(), "the member was stopped unjournaled");
        let stop = |ex: &Executor| ex.entries().into_iter().find(|e| e.id.0 == "r1-v2-3");
        assert_eq!(stop(&ex), None, "a refused command leaves no entry");
        // Space comes back: the same id runs, once.
        fs::remove_file(disk.path().join("filler")).unwrap();
        ex.run(cmd("r1-v2-3", Action::Stop)).await.result.unwrap();
        assert_eq!(fs::read_to_string(&marker).unwrap(), "stopped\n");
        assert_eq!(stop(&ex).unwrap().runs, 1);
        drop(ex);
        let again = Executor::open(
            MemberId::new("n1").unwrap(),
            disk.path(),
            Arc::new(FakeAdapter::default()),
            external(),
            None,
        )
        .unwrap();
        let e = stop(&again).unwrap();
        assert_eq!(e.runs, 1);
        assert!(e.result.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_known_id_with_another_action_is_refused_not_answered_from_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("stops");
        let ex = Executor::open(
            MemberId::new("n1").unwrap(),
            dir.path(),
            Arc::new(FakeAdapter::default()),
            exec_member(dir.path(), &marker),
            None,
        )
        .unwrap();
        let to = MemberId::new("n2").unwrap();
        let stepped = ex.run(cmd("r1-v2-4", Action::StepDown { to })).await;
        assert!(stepped.result.is_ok(), "{stepped:?}");
        let reused = cmd("r1-v2-4", Action::Stop);
        let err = ex.stored(&reused).unwrap().result.unwrap_err();
        assert!(
            err.contains("command id r1-v2-4 already ran here as step down to n2")
                && err.contains("not stop; refusing it"),
            "{err}"
        );
        let err = ex.run(reused).await.result.unwrap_err();
        assert!(err.contains("refusing it"), "{err}");
        assert!(!marker.exists(), "nothing ran under the reused id");
        assert_eq!(ex.entries().len(), 1);
        assert_eq!(ex.entries()[0].runs, 1);
    }

    fn open_at(dir: &std::path::Path) -> Result<Executor, JournalError> {
        Executor::open(
            MemberId::new("n1").unwrap(),
            dir,
            Arc::new(FakeAdapter::default()),
            external(),
            None,
        )
    }

    #[tokio::test]
    async fn the_journal_refuses_corruption_naming_the_offset_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let ex = open_at(dir.path()).unwrap();
        ex.run(cmd("a-1", Action::Start)).await;
        ex.run(cmd("a-2", Action::Start)).await;
        drop(ex);
        let path = dir.path().join(JOURNAL_FILE);
        let good = fs::read(&path).unwrap();
        let mut torn = good.clone();
        torn.push(0xff);
        fs::write(&path, &torn).unwrap();
        let ex = open_at(dir.path()).unwrap();
        assert_eq!(ex.entries().len(), 2, "history is intact");
        drop(ex);
        let mut flipped = good.clone();
        flipped[30] ^= 0x10;
        fs::write(&path, &flipped).unwrap();
        let err = open_at(dir.path()).unwrap_err().to_string();
        assert!(
            err.starts_with("member n1: the command journal cannot be used")
                && err.contains("commands.log is corrupt at byte offset 8"),
            "{err}"
        );
    }

    #[test]
    fn a_legacy_journal_is_imported_once_and_a_bad_line_refused() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join(LEGACY_JOURNAL_FILE);
        let entry = JournalEntry {
            id: CommandId("r1-v2-1".into()),
            action: Action::Start,
            runs: 1,
            result: Some(Ok("started".into())),
            fence: None,
        };
        let line = serde_json::to_string(&entry).unwrap();
        fs::write(&legacy, format!("{{\"id\":\"x\"}}\n{line}\n")).unwrap();
        let err = open_at(dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        assert!(legacy.exists() && !dir.path().join(JOURNAL_FILE).exists());
        let mut bytes = format!("{line}\n").into_bytes();
        bytes.push(0xff);
        fs::write(&legacy, &bytes).unwrap();
        let ex = open_at(dir.path()).unwrap();
        assert_eq!(ex.entries(), vec![entry.clone()]);
        assert!(!legacy.exists());
        assert!(dir.path().join("commands.jsonl.imported").exists());
        drop(ex);
        assert_eq!(open_at(dir.path()).unwrap().entries(), vec![entry]);
    }

    #[test]
    fn a_command_journal_written_by_the_jsonl_agent_imports_whole() {
        // n2's commands.jsonl from a demo rollout, written by the agent at
        // 0eeb9eb (the last JSON-lines version): 5 commands, 2 lines each.
        let dir = tempfile::tempdir().unwrap();
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/commands-0eeb9eb.jsonl"
        );
        fs::copy(fixture, dir.path().join(LEGACY_JOURNAL_FILE)).unwrap();
        for _ in 0..2 {
            let entries = open_at(dir.path()).unwrap().entries();
            assert_eq!(entries.len(), 5, "{entries:?}");
            assert!(
                entries
                    .iter()
                    .all(|e| e.runs == 1 && matches!(e.result, Some(Ok(_)))),
                "{entries:?}"
            );
        }
    }

    #[tokio::test]
    async fn on_a_full_disk_the_member_is_started_but_never_stopped() {
        let disk = baton_store::testutil::SmallDisk::mount();
        let elsewhere = tempfile::tempdir().unwrap();
        let marker = elsewhere.path().join("stops");
        let ex = Executor::open(
            MemberId::new("n1").unwrap(),
            disk.path(),
            Arc::new(FakeAdapter::default()),
            exec_member(elsewhere.path(), &marker),
            None,
        )
        .unwrap();
        // Stopped before the disk fills; the disk fills while it is down.
        ex.run(cmd("r1-v2-2.j", Action::Stop)).await.result.unwrap();
        disk.fill("filler");
        // Cheap commands until the journal is on its reserve (bounded).
        let mut on_reserve = false;
        for i in 0..200 {
            let out = ex
                .run(cmd(
                    &format!("probe-{i}"),
                    Action::Backup {
                        id: format!("b{i}"),
                    },
                ))
                .await;
            if out.result.is_err_and(|e| e.contains("down to the reserve")) {
                on_reserve = true;
                break;
            }
        }
        assert!(on_reserve, "the journal never reached its reserve");
        let err = ex
            .run(cmd("r1-v2-9.j", Action::Stop))
            .await
            .result
            .unwrap_err();
        assert!(
            err.starts_with("member n1: the agent's state_dir is full")
                && err.contains("refusing r1-v2-9.j (stop)"),
            "{err}"
        );
        assert_eq!(
            fs::read_to_string(&marker).unwrap(),
            "stopped\n",
            "stopped once"
        );
        // The start that brings it back is journaled from the reserve.
        ex.run(cmd("r1-v2-4.j", Action::Start))
            .await
            .result
            .unwrap();
        let started = ex.entries().into_iter().find(|e| e.id.0 == "r1-v2-4.j");
        assert!(started.is_some_and(|e| e.result.is_some_and(|r| r.is_ok())));
        // Space returns: a stop is taken again.
        fs::remove_file(disk.path().join("filler")).unwrap();
        ex.run(cmd("r1-v2-10.j", Action::Stop))
            .await
            .result
            .unwrap();
        assert_eq!(fs::read_to_string(&marker).unwrap(), "stopped\nstopped\n");
    }
}
