//! The generic `exec` adapter: a single-member app (z4j, Piprio, lazyit,
//! the bundled `sqlapp`) read through an HTTP health endpoint or the
//! operator's own commands.
//!
//! This module owns the `kind = "exec"` `[target]` section and what it
//! means:
//! - **health**: `health_url` (GET; healthy on a 2xx, and when
//!   `health_json_field` is set, that field of the JSON body must equal
//!   `health_json_value`), or `health_command` (healthy on exit 0). One of
//!   the two is required.
//! - **release** (required, the gates check it): `release_json_field` of the
//!   health body, or `release_command`'s trimmed stdout.
//! - **revision** and **data format** (optional, 0 without): the
//!   `revision_json_field` / `format_json_field` of the health body, or
//!   `revision_command` / `format_command` printing an integer.
//!   Fields are dotted paths (`db.schema`).
//! - **backup**: `backup_command` writes `{file}` (which does not exist
//!   yet); baton hashes what it wrote. `backup_revision_command` prints the
//!   revision read from `{file}` itself; without it the backup records
//!   revision 0 and says so. `test_restore_command` restores `{file}` into
//!   `{scratch}` (a fresh directory removed afterwards); when its last line
//!   is an integer it must equal the backup's revision. `restore_command`
//!   restores `{file}` over the live data ([`ExecAdapter::restore`]; the
//!   member must be stopped, and the guarded restore that calls it is not
//!   this module's).
//! - **snapshot**: `snapshot_command` (z4j's `status` row counts) runs just
//!   before the member is stopped; its output is the Stop result. After
//!   the next successful start, the first healthy poll runs it again:
//!   equal, and the agent logs so; different, and the member reports
//!   `degraded` naming both, so the health gate fails and the member goes
//!   back. The "before" snapshot lives in memory: an agent restart between
//!   stop and start skips the compare.
//! - **checks**: `[[target.checks]]` (`name`, `command`), e.g. z4j's
//!   `doctor`, run by the executor after the target release is staged and
//!   before anything is stopped, beside the release's own `checks.toml`
//!   ([`crate::commands::ReleaseChecks`]): a failed check fails the Stage
//!   command, which pauses the rollout with nothing stopped, and names the
//!   check and the tail of its output. `{release_dir}` is the staged
//!   release and `{data_dir}` the member's data directory.
//! - `timeout_ms` bounds each poll call (default 1 s);
//!   `command_timeout_ms` bounds each backup, restore, snapshot and check
//!   command (default 10 min).
//!
//! Commands run without a shell (see [`crate::commands`]): an argv array
//! or a whitespace-split string; write `["sh", "-c", "…"]` for a shell.
//!
//! The member is alone: it reports itself `leader` of a one-member cluster
//! while healthy ([`Adapter::single_member`]), so the executor stops it
//! without a handover and the planner upgrades it in place. It never hands
//! leadership over.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_domain::{Check, Health, MemberId, Role};
use baton_net::http::HttpClient;
use baton_proto::convert::agent_link::{MAX_REPORT_TEXT, MAX_STAGE_CHECKS};
use futures::future::BoxFuture;
use serde::Deserialize;

use super::{
    Adapter, AdapterConfig, AdapterError, Backup, MemberState, Registration, SectionError,
};
use crate::commands::{self, CheckCommand, CommandLine, RawCheck, RawCommand};

/// The exec row of [`super::REGISTRY`].
pub const REGISTRATION: Registration = Registration {
    kind: "exec",
    parse: parse_config,
};

/// `command_timeout_ms`'s default: backups of real databases take minutes.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    health_url: Option<String>,
    health_json_field: Option<String>,
    health_json_value: Option<toml::Value>,
    health_command: Option<RawCommand>,
    release_json_field: Option<String>,
    release_command: Option<RawCommand>,
    revision_json_field: Option<String>,
    revision_command: Option<RawCommand>,
    format_json_field: Option<String>,
    format_command: Option<RawCommand>,
    backup_command: Option<RawCommand>,
    backup_revision_command: Option<RawCommand>,
    test_restore_command: Option<RawCommand>,
    restore_command: Option<RawCommand>,
    snapshot_command: Option<RawCommand>,
    #[serde(default)]
    checks: Vec<RawCheck>,
    timeout_ms: Option<u64>,
    command_timeout_ms: Option<u64>,
}

/// How the member's health is read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HealthSource {
    /// GET the URL; healthy on 2xx, and the JSON field equals the value
    /// when one is set.
    Http {
        url: String,
        field: Option<(String, String)>,
    },
    /// Healthy when the command exits 0.
    Command(CommandLine),
}

/// Where one value (release, revision, format) is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueSource {
    /// A dotted field of the health endpoint's JSON body.
    Field(String),
    /// A command's trimmed stdout.
    Command(CommandLine),
    /// Not configured.
    None,
}

/// A validated exec `[target]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecTarget {
    pub health: HealthSource,
    pub release: ValueSource,
    pub revision: ValueSource,
    pub format: ValueSource,
    pub backup: Option<CommandLine>,
    pub backup_revision: Option<CommandLine>,
    pub test_restore: Option<CommandLine>,
    pub restore: Option<CommandLine>,
    pub snapshot: Option<CommandLine>,
    pub checks: Vec<CheckCommand>,
    /// Bound on each poll call.
    pub timeout: Duration,
    /// Bound on each backup, restore, snapshot and check command.
    pub command_timeout: Duration,
}

fn command(
    key: &'static str,
    raw: Option<RawCommand>,
) -> Result<Option<CommandLine>, SectionError> {
    raw.map(|r| CommandLine::parse(r).map_err(|e| SectionError::invalid(key, e)))
        .transpose()
}

fn value_source(
    field_key: &'static str,
    field: Option<String>,
    command_key: &'static str,
    cmd: Option<RawCommand>,
    http: bool,
) -> Result<ValueSource, SectionError> {
    match (field, command(command_key, cmd)?) {
        (Some(_), Some(_)) => Err(SectionError::invalid(
            field_key,
            format!("set {field_key} or {command_key}, not both"),
        )),
        (Some(_), None) if !http => Err(SectionError::invalid(
            field_key,
            "a JSON field needs target.health_url to read it from",
        )),
        (Some(f), None) if f.is_empty() => Err(SectionError::invalid(field_key, "empty")),
        (Some(f), None) => Ok(ValueSource::Field(f)),
        (None, Some(c)) => Ok(ValueSource::Command(c)),
        (None, None) => Ok(ValueSource::None),
    }
}

fn parse_config(table: toml::Table) -> Result<Arc<dyn AdapterConfig>, SectionError> {
    Ok(Arc::new(validate(table)?))
}

/// Decodes and validates an exec `[target]` table.
fn validate(table: toml::Table) -> Result<ExecTarget, SectionError> {
    let raw: RawConfig = super::decode(table)?;
    let health = match (
        raw.health_url,
        command("target.health_command", raw.health_command)?,
    ) {
        (Some(_), Some(_)) => {
            return Err(SectionError::invalid(
                "target.health_url",
                "set health_url or health_command, not both",
            ));
        }
        (Some(url), None) => {
            baton_net::http::parse_url(&url)
                .map_err(|e| SectionError::invalid("target.health_url", e.to_string()))?;
            let field = match (raw.health_json_field, raw.health_json_value) {
                (None, None) => None,
                (Some(f), Some(v)) => Some((f, toml_text(&v))),
                (Some(_), None) | (None, Some(_)) => {
                    return Err(SectionError::invalid(
                        "target.health_json_field",
                        "health_json_field and health_json_value go together",
                    ));
                }
            };
            HealthSource::Http { url, field }
        }
        (None, Some(c)) => {
            if raw.health_json_field.is_some() || raw.health_json_value.is_some() {
                return Err(SectionError::invalid(
                    "target.health_json_field",
                    "a JSON field needs target.health_url to read it from",
                ));
            }
            HealthSource::Command(c)
        }
        (None, None) => {
            return Err(SectionError::invalid(
                "target.health_url",
                "the exec adapter needs health_url or health_command",
            ));
        }
    };
    let http = matches!(health, HealthSource::Http { .. });
    let release = value_source(
        "target.release_json_field",
        raw.release_json_field,
        "target.release_command",
        raw.release_command,
        http,
    )?;
    if release == ValueSource::None {
        return Err(SectionError::invalid(
            "target.release_json_field",
            "the exec adapter needs release_json_field or release_command: the rollout's gates check the release the member runs",
        ));
    }
    let revision = value_source(
        "target.revision_json_field",
        raw.revision_json_field,
        "target.revision_command",
        raw.revision_command,
        http,
    )?;
    let format = value_source(
        "target.format_json_field",
        raw.format_json_field,
        "target.format_command",
        raw.format_command,
        http,
    )?;
    let backup = command("target.backup_command", raw.backup_command)?;
    if let Some(b) = &backup
        && !b.uses("file")
    {
        return Err(SectionError::invalid(
            "target.backup_command",
            "must name {file}, where baton wants the backup written",
        ));
    }
    // The agent's Hello names every check (for `baton plan`), within the
    // bounds the coordinator accepts from the wire.
    if raw.checks.len() > MAX_STAGE_CHECKS {
        return Err(SectionError::invalid(
            "target.checks",
            format!(
                "{} checks; at most {} are allowed",
                raw.checks.len(),
                MAX_STAGE_CHECKS
            ),
        ));
    }
    let mut checks = Vec::new();
    for c in raw.checks {
        let c = CheckCommand::parse(c).map_err(|e| SectionError::invalid("target.checks", e))?;
        let shown = c.command.to_string();
        if c.name.len() > MAX_REPORT_TEXT || shown.len() > MAX_REPORT_TEXT {
            return Err(SectionError::invalid(
                "target.checks",
                format!(
                    "check {:?}: its name and its command must each be at most {} bytes",
                    c.name.chars().take(40).collect::<String>(),
                    MAX_REPORT_TEXT
                ),
            ));
        }
        checks.push(c);
    }
    let cfg = ExecTarget {
        health,
        release,
        revision,
        format,
        backup,
        backup_revision: command(
            "target.backup_revision_command",
            raw.backup_revision_command,
        )?,
        test_restore: command("target.test_restore_command", raw.test_restore_command)?,
        restore: command("target.restore_command", raw.restore_command)?,
        snapshot: command("target.snapshot_command", raw.snapshot_command)?,
        checks,
        timeout: super::timeout(raw.timeout_ms),
        command_timeout: raw
            .command_timeout_ms
            .map_or(DEFAULT_COMMAND_TIMEOUT, Duration::from_millis),
    };
    Ok(cfg)
}

/// A TOML value as the text a JSON field is compared with.
fn toml_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

impl AdapterConfig for ExecTarget {
    fn kind(&self) -> &'static str {
        REGISTRATION.kind
    }

    fn build(&self, member: &MemberId) -> Result<Arc<dyn Adapter>, AdapterError> {
        Ok(Arc::new(ExecAdapter::new(member.clone(), self.clone())?))
    }
}

/// The snapshot compare across one stop and start.
#[derive(Debug, Default)]
struct Snapshots {
    /// Taken just before the last stop, not yet compared after a start.
    before: Option<String>,
    /// The member was started since `before` was taken: the next healthy
    /// read compares. (A stop that failed leaves the member serving, and
    /// it is not compared against a snapshot its own writes have aged.)
    armed: bool,
    /// The last compare's verdict when it found a difference.
    mismatch: Option<String>,
}

/// Reads and backs up one single-member app.
#[derive(Debug)]
pub struct ExecAdapter {
    member: MemberId,
    cfg: ExecTarget,
    http: Option<HttpClient>,
    snapshots: Mutex<Snapshots>,
}

/// What one health read found.
struct HealthRead {
    healthy: bool,
    detail: String,
    body: Option<serde_json::Value>,
}

impl ExecAdapter {
    pub fn new(member: MemberId, cfg: ExecTarget) -> Result<Self, AdapterError> {
        let http = match &cfg.health {
            HealthSource::Http { .. } => Some(
                HttpClient::new(cfg.timeout)
                    .map_err(|e| AdapterError::Unreachable {
                        addr: "health_url".into(),
                        detail: e.to_string(),
                    })?
                    .with_user_agent(concat!("baton-agent/", env!("CARGO_PKG_VERSION"))),
            ),
            HealthSource::Command(_) => None,
        };
        Ok(ExecAdapter {
            member,
            cfg,
            http,
            snapshots: Mutex::new(Snapshots::default()),
        })
    }

    /// Where the member is read from, for errors.
    fn addr(&self) -> String {
        match &self.cfg.health {
            HealthSource::Http { url, .. } => url.clone(),
            HealthSource::Command(c) => c.render(&[]).join(" "),
        }
    }

    fn bad(&self, detail: String) -> AdapterError {
        AdapterError::BadAnswer {
            addr: self.addr(),
            kind: "exec",
            detail,
        }
    }

    fn snapshots(&self) -> std::sync::MutexGuard<'_, Snapshots> {
        self.snapshots.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn read_health(&self) -> Result<HealthRead, AdapterError> {
        match &self.cfg.health {
            HealthSource::Http { url, field } => {
                let (Some(client), Ok(uri)) = (&self.http, baton_net::http::parse_url(url)) else {
                    return Err(self.bad("health_url is not usable".into()));
                };
                let answer = client
                    .get(&uri)
                    .await
                    .map_err(|e| AdapterError::Unreachable {
                        addr: url.clone(),
                        detail: e.to_string(),
                    })?;
                let body: Option<serde_json::Value> = serde_json::from_str(&answer.body).ok();
                if !answer.status.is_success() {
                    return Ok(HealthRead {
                        healthy: false,
                        detail: format!(
                            "GET {url} answered {}: {}",
                            answer.status,
                            answer.quoted_body()
                        ),
                        body,
                    });
                }
                if let Some((name, want)) = field {
                    let got = body.as_ref().and_then(|b| json_field(b, name));
                    let got_text = got.map(json_text);
                    if got_text.as_deref() != Some(want.as_str()) {
                        return Ok(HealthRead {
                            healthy: false,
                            detail: format!(
                                "GET {url}: field {name} is {} (healthy needs {want:?})",
                                got_text.map_or("missing".to_owned(), |t| format!("{t:?}"))
                            ),
                            body,
                        });
                    }
                }
                Ok(HealthRead {
                    healthy: true,
                    detail: String::new(),
                    body,
                })
            }
            HealthSource::Command(c) => {
                let argv = c.render(&[]);
                match commands::run(&argv, &Default::default(), self.cfg.timeout).await {
                    Ok(_) => Ok(HealthRead {
                        healthy: true,
                        detail: String::new(),
                        body: None,
                    }),
                    Err(commands::CommandError::Spawn { program, detail }) => {
                        Err(AdapterError::Unreachable {
                            addr: program,
                            detail,
                        })
                    }
                    Err(e) => Ok(HealthRead {
                        healthy: false,
                        detail: format!("health command {e}"),
                        body: None,
                    }),
                }
            }
        }
    }

    /// One value from its source: the health body's field or a command.
    async fn read_value(
        &self,
        what: &str,
        source: &ValueSource,
        body: Option<&serde_json::Value>,
    ) -> Result<Option<String>, AdapterError> {
        match source {
            ValueSource::None => Ok(None),
            ValueSource::Field(name) => {
                let Some(body) = body else {
                    return Err(self.bad(format!(
                        "the health answer is not JSON, so its {what} field {name} cannot be read"
                    )));
                };
                let v = json_field(body, name).ok_or_else(|| {
                    self.bad(format!("the health answer has no {what} field {name}"))
                })?;
                Ok(Some(json_text(v)))
            }
            ValueSource::Command(c) => {
                let out = commands::run(&c.render(&[]), &Default::default(), self.cfg.timeout)
                    .await
                    .map_err(|e| self.bad(format!("{what} command {e}")))?;
                Ok(Some(out.stdout.trim().to_owned()))
            }
        }
    }

    async fn read_number(
        &self,
        what: &str,
        source: &ValueSource,
        body: Option<&serde_json::Value>,
    ) -> Result<u64, AdapterError> {
        match self.read_value(what, source, body).await? {
            None => Ok(0),
            Some(text) => text
                .parse()
                .map_err(|_| self.bad(format!("{what} {text:?} is not a whole number"))),
        }
    }

    /// Runs `snapshot_command` (if any).
    async fn snapshot(&self) -> Result<Option<String>, AdapterError> {
        let Some(c) = &self.cfg.snapshot else {
            return Ok(None);
        };
        let out = commands::run(
            &c.render(&[]),
            &Default::default(),
            self.cfg.command_timeout,
        )
        .await
        .map_err(|e| self.bad(format!("snapshot command {e}")))?;
        Ok(Some(out.stdout))
    }

    /// After a start, on the first healthy poll: compares the snapshot
    /// with the one taken before the stop. Returns the mismatch, if any.
    async fn compare_snapshot(&self) -> Result<Option<String>, AdapterError> {
        let before = {
            let s = self.snapshots();
            if let Some(m) = &s.mismatch {
                return Ok(Some(m.clone()));
            }
            match &s.before {
                Some(b) if s.armed => b.clone(),
                _ => return Ok(None),
            }
        };
        let Some(after) = self.snapshot().await? else {
            return Ok(None);
        };
        let mut s = self.snapshots();
        s.before = None;
        s.armed = false;
        if after == before {
            tracing::info!(member = %self.member, snapshot = %one_line(&after), "snapshot after the start equals the one taken before the stop");
            Ok(None)
        } else {
            let m = format!(
                "the snapshot after the start differs from the one before the stop: before {:?}, after {:?}; check the data, restore the pre-upgrade backup if rows were lost",
                one_line(&before),
                one_line(&after)
            );
            tracing::warn!(member = %self.member, "{m}");
            s.mismatch = Some(m.clone());
            Ok(Some(m))
        }
    }

    /// Restores `file` over the live data with `restore_command` (the member
    /// must be stopped; the executor checks). No rollout calls it.
    pub async fn restore_file(&self, file: &Path) -> Result<String, AdapterError> {
        let Some(c) = &self.cfg.restore else {
            return Err(self.bad(
                "no target.restore_command is configured, so this member cannot be restored by baton"
                    .into(),
            ));
        };
        let f = file.to_string_lossy();
        commands::run(
            &c.render(&[("file", &f)]),
            &Default::default(),
            self.cfg.command_timeout,
        )
        .await
        .map_err(|e| self.bad(format!("restore command {e}")))?;
        // A restored member's row counts are the backup's, not the ones
        // taken before its stop.
        *self.snapshots() = Snapshots::default();
        Ok(format!(
            "restored {} with the restore command",
            file.display()
        ))
    }
}

/// `text` on one line, for logs and details.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The dotted field `path` of `v`.
fn json_field<'a>(v: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

/// A JSON value as text: a string's content, anything else as JSON.
fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Hashes the file a backup command wrote, streamed.
fn describe_file(path: &Path, revision: u64) -> std::io::Result<Backup> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut hash: sha2::Sha256 = sha2::Digest::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha2::Digest::update(&mut hash, &buf[..n]);
        bytes += n as u64;
    }
    f.sync_all()?;
    let digest = sha2::Digest::finalize(hash);
    Ok(Backup {
        path: path.to_owned(),
        bytes,
        sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        revision,
    })
}

impl Adapter for ExecAdapter {
    fn kind(&self) -> &'static str {
        "exec"
    }

    /// `restore_command` over the stopped member's data. The app's revision
    /// is read from the app itself, so it is checked once the member serves
    /// again, not here.
    fn restore<'a>(
        &'a self,
        backup: &'a Path,
        revision: u64,
        _release: &'a str,
        _data_dir: &'a Path,
    ) -> BoxFuture<'a, Result<String, AdapterError>> {
        Box::pin(async move {
            let done = self.restore_file(backup).await?;
            Ok(format!(
                "{done}; revision {revision} is checked once the member serves again"
            ))
        })
    }

    /// Any release that can read the member's data format.
    fn version_rule(&self) -> baton_domain::VersionRule {
        baton_domain::VersionRule::FormatOnly
    }

    fn single_member(&self) -> bool {
        true
    }

    fn poll(&self) -> BoxFuture<'_, Result<MemberState, AdapterError>> {
        Box::pin(async move {
            let h = self.read_health().await?;
            let body = h.body.as_ref();
            let release = self
                .read_value("release", &self.cfg.release, body)
                .await?
                .unwrap_or_default();
            let revision = self
                .read_number("revision", &self.cfg.revision, body)
                .await?;
            let format = self.read_number("format", &self.cfg.format, body).await?;
            let format = u32::try_from(format)
                .map_err(|_| self.bad(format!("format {format} is too large")))?;
            let (health, detail) = if !h.healthy {
                (Health::Degraded, h.detail)
            } else {
                match self.compare_snapshot().await? {
                    Some(mismatch) => (Health::Degraded, mismatch),
                    None => (Health::Healthy, String::new()),
                }
            };
            let healthy = health == Health::Healthy;
            Ok(MemberState {
                role: if healthy { Role::Leader } else { Role::Unknown },
                leader: healthy.then(|| self.member.clone()),
                committed_revision: revision,
                applied_revision: revision,
                release,
                format_version: format,
                term: 0,
                health,
                health_detail: detail,
                cluster_version: String::new(),
            })
        })
    }

    fn step_down<'a>(&'a self, to: &'a MemberId) -> BoxFuture<'a, Result<String, AdapterError>> {
        Box::pin(async move {
            Err(AdapterError::Refused {
                addr: self.addr(),
                detail: format!(
                    "member {} is a single-member app (exec adapter) and cannot hand leadership to {to}",
                    self.member
                ),
            })
        })
    }

    /// Runs `backup_command` with `{file}` = `dest`, then hashes the file it
    /// wrote; the revision is `backup_revision_command`'s, read from the
    /// file, or 0.
    fn backup<'a>(&'a self, dest: &'a Path) -> BoxFuture<'a, Result<Backup, AdapterError>> {
        Box::pin(async move {
            let Some(c) = &self.cfg.backup else {
                return Err(AdapterError::BackupUnsupported { adapter: "exec" });
            };
            let file = dest.to_string_lossy();
            commands::run(
                &c.render(&[("file", &file)]),
                &Default::default(),
                self.cfg.command_timeout,
            )
            .await
            .map_err(|e| self.bad(format!("backup command {e}")))?;
            if !dest.is_file() {
                return Err(self.bad(format!(
                    "the backup command exited 0 but wrote no file at {file}"
                )));
            }
            let revision = match &self.cfg.backup_revision {
                None => 0,
                Some(rc) => {
                    let out = commands::run(
                        &rc.render(&[("file", &file)]),
                        &Default::default(),
                        self.cfg.command_timeout,
                    )
                    .await
                    .map_err(|e| self.bad(format!("backup revision command {e}")))?;
                    let text = out.stdout.trim();
                    text.parse().map_err(|_| {
                        self.bad(format!(
                            "the backup revision command printed {text:?}, not a whole number"
                        ))
                    })?
                }
            };
            let path = dest.to_owned();
            tokio::task::spawn_blocking(move || describe_file(&path, revision))
                .await
                .map_err(|e| self.bad(e.to_string()))?
                .map_err(|e| self.bad(format!("cannot read the backup {file}: {e}")))
        })
    }

    fn test_restore<'a>(
        &'a self,
        backup: &'a Backup,
        scratch: &'a Path,
    ) -> BoxFuture<'a, Result<String, AdapterError>> {
        Box::pin(async move {
            let revision_note = if self.cfg.backup_revision.is_none() {
                "; revision recorded as 0 (no target.backup_revision_command)"
            } else {
                ""
            };
            let Some(c) = &self.cfg.test_restore else {
                return Ok(format!(
                    "no scratch test-restore (no target.test_restore_command){revision_note}"
                ));
            };
            let dir: PathBuf = scratch.join(format!(
                "test-restore-{}",
                backup.sha256.get(..12).unwrap_or("x")
            ));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).map_err(|e| {
                self.bad(format!(
                    "cannot create the scratch dir {}: {e}",
                    dir.display()
                ))
            })?;
            let (file, scratch_text) = (backup.path.to_string_lossy(), dir.to_string_lossy());
            let ran = commands::run(
                &c.render(&[("file", &file), ("scratch", &scratch_text)]),
                &Default::default(),
                self.cfg.command_timeout,
            )
            .await;
            let _ = std::fs::remove_dir_all(&dir);
            let out = ran.map_err(|e| self.bad(format!("test-restore command {e}")))?;
            let last = out.stdout.lines().rev().find(|l| !l.trim().is_empty());
            match last.and_then(|l| l.trim().parse::<u64>().ok()) {
                Some(r) if r != backup.revision => Err(self.bad(format!(
                    "the scratch restore holds revision {r}, the backup says {}",
                    backup.revision
                ))),
                Some(r) => Ok(format!(
                    "test-restored into a scratch dir: revision {r}{revision_note}"
                )),
                None => Ok(format!(
                    "test-restored into a scratch dir (the command printed no revision){revision_note}"
                )),
            }
        })
    }

    /// Takes the "before" snapshot.
    fn before_stop(&self) -> BoxFuture<'_, Result<String, AdapterError>> {
        Box::pin(async move {
            let Some(before) = self.snapshot().await? else {
                return Ok(String::new());
            };
            let line = format!("snapshot before the stop: {}", one_line(&before));
            *self.snapshots() = Snapshots {
                before: Some(before),
                armed: false,
                mismatch: None,
            };
            Ok(line)
        })
    }

    /// Arms the compare: the next healthy read is "after".
    fn after_start(&self) {
        let mut s = self.snapshots();
        s.armed = s.before.is_some();
    }

    fn stage_check_list(&self) -> Vec<baton_domain::StageCheck> {
        self.cfg
            .checks
            .iter()
            .map(|c| baton_domain::StageCheck {
                name: c.name.clone(),
                command: c.command.to_string(),
            })
            .collect()
    }

    fn stage_checks<'a>(
        &'a self,
        release_dir: &'a Path,
        data_dir: &'a Path,
    ) -> BoxFuture<'a, Vec<Check>> {
        Box::pin(async move {
            let (r, d) = (release_dir.to_string_lossy(), data_dir.to_string_lossy());
            commands::run_checks(
                &self.member,
                &self.cfg.checks,
                &[("release_dir", &r), ("data_dir", &d)],
                &Default::default(),
                self.cfg.command_timeout,
            )
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Result<ExecTarget, SectionError> {
        validate(toml::from_str(text).unwrap())
    }

    fn adapter(text: &str) -> ExecAdapter {
        ExecAdapter::new(MemberId::new("app1").unwrap(), cfg(text).unwrap()).unwrap()
    }

    /// A TOML argv array for `sh -c script`.
    fn sh(script: &str) -> String {
        format!("[\"/bin/sh\", \"-c\", {script:?}]")
    }

    #[test]
    fn the_config_names_the_key_that_is_wrong() {
        let cases = [
            ("release_command = \"echo v1\"", "`target.health_url`"),
            (
                "health_url = \"http://127.0.0.1:1/h\"\nhealth_command = \"true\"\nrelease_command = \"echo v1\"",
                "`target.health_url`",
            ),
            ("health_command = \"true\"", "`target.release_json_field`"),
            (
                "health_command = \"true\"\nrelease_json_field = \"version\"",
                "`target.release_json_field`",
            ),
            (
                "health_command = \"true\"\nrelease_command = \"echo v1\"\nbackup_command = \"cp /a /b\"",
                "`target.backup_command`",
            ),
            (
                "health_url = \"http://127.0.0.1:1/h\"\nhealth_json_field = \"status\"\nrelease_command = \"echo v1\"",
                "`target.health_json_field`",
            ),
            (
                "health_command = \"  \"\nrelease_command = \"echo v1\"",
                "`target.health_command`",
            ),
            (
                "health_command = \"true\"\nrelease_command = \"echo v1\"\n[[checks]]\nname = \"\"\ncommand = \"true\"",
                "`target.checks`",
            ),
        ];
        for (text, key) in cases {
            let err = cfg(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err} should name {key}");
        }
        let ok = cfg(
            "health_url = \"http://127.0.0.1:1/health\"\nhealth_json_field = \"status\"\nhealth_json_value = \"ok\"\nrelease_json_field = \"version\"\nrevision_json_field = \"revision\"\nbackup_command = \"sqlapp backup --db /x --output {file}\"\n[[checks]]\nname = \"doctor\"\ncommand = [\"sqlapp\", \"doctor\"]",
        )
        .unwrap();
        assert_eq!(ok.command_timeout, DEFAULT_COMMAND_TIMEOUT);
        assert_eq!(ok.checks[0].name, "doctor");
        assert_eq!(ok.format, ValueSource::None);

        // The Hello names every check within the coordinator's wire bounds.
        let base = "health_command = \"true\"\nrelease_command = \"echo v1\"\n";
        let many = "[[checks]]\nname = \"c\"\ncommand = \"true\"\n".repeat(65);
        let err = cfg(&format!("{base}{many}")).unwrap_err().to_string();
        assert!(err.contains("65 checks; at most 64"), "{err}");
        let long = format!(
            "[[checks]]\nname = \"c\"\ncommand = [\"echo\", {:?}]\n",
            "x".repeat(5000)
        );
        let err = cfg(&format!("{base}{long}")).unwrap_err().to_string();
        assert!(err.contains("at most 4096 bytes"), "{err}");
    }

    #[test]
    fn the_hello_lists_the_checks_by_name_and_command() {
        let a = adapter(
            "health_command = \"true\"\nrelease_command = \"echo v1\"\n[[checks]]\nname = \"setting\"\ncommand = [\"grep\", \"-q\", \"^REDIS_URL=\", \"{release_dir}/.env\"]\n[[checks]]\nname = \"doctor\"\ncommand = \"z4j doctor\"\n",
        );
        let list = a.stage_check_list();
        let shown: Vec<(&str, &str)> = list
            .iter()
            .map(|c| (c.name.as_str(), c.command.as_str()))
            .collect();
        assert_eq!(
            shown,
            [
                ("setting", "grep -q ^REDIS_URL= {release_dir}/.env"),
                ("doctor", "z4j doctor")
            ]
        );
    }

    #[tokio::test]
    async fn a_command_health_reads_release_and_revision_and_leads_alone() {
        let a = adapter(
            "health_command = \"true\"\nrelease_command = \"echo v1\"\nrevision_command = [\"echo\", \"42\"]",
        );
        let s = a.poll().await.unwrap();
        assert_eq!(s.health, Health::Healthy);
        assert_eq!(
            (s.role, s.leader.as_ref().map(MemberId::as_str)),
            (Role::Leader, Some("app1"))
        );
        assert_eq!(
            (s.release.as_str(), s.applied_revision, s.committed_revision),
            ("v1", 42, 42)
        );
        assert!(a.single_member());
        let err = a
            .step_down(&MemberId::new("n2").unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("single-member"), "{err}");

        let down = adapter(&format!(
            "health_command = {}\nrelease_command = \"echo v1\"",
            sh("echo database locked >&2; exit 2")
        ));
        let s = down.poll().await.unwrap();
        assert_eq!(
            (s.health, s.role, s.leader),
            (Health::Degraded, Role::Unknown, None)
        );
        assert!(
            s.health_detail.contains("database locked"),
            "{}",
            s.health_detail
        );

        let bad = adapter(
            "health_command = \"true\"\nrelease_command = \"echo v1\"\nrevision_command = \"echo many\"",
        );
        let err = bad.poll().await.unwrap_err().to_string();
        assert!(
            err.contains("revision \"many\" is not a whole number"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_http_health_reads_its_json_fields() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new("ok"));
        let shared = state.clone();
        let app = axum::Router::new().route(
            "/health",
            axum::routing::get(move || {
                let status = *shared.lock().unwrap();
                async move {
                    axum::Json(serde_json::json!({"status": status, "version": "v2", "db": {"schema": 3}, "revision": 9}))
                }
            }),
        );
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let a = adapter(&format!(
            "health_url = \"http://{addr}/health\"\nhealth_json_field = \"status\"\nhealth_json_value = \"ok\"\nrelease_json_field = \"version\"\nrevision_json_field = \"revision\"\nformat_json_field = \"db.schema\""
        ));
        let s = a.poll().await.unwrap();
        assert_eq!(s.health, Health::Healthy, "{}", s.health_detail);
        assert_eq!(
            (s.release.as_str(), s.applied_revision, s.format_version),
            ("v2", 9, 3)
        );
        *state.lock().unwrap() = "migrating";
        let s = a.poll().await.unwrap();
        assert_eq!(s.health, Health::Degraded);
        assert!(
            s.health_detail.contains("field status is \"migrating\""),
            "{}",
            s.health_detail
        );
        server.abort();
        let _ = server.await;
        let err = a.poll().await.unwrap_err();
        assert!(matches!(err, AdapterError::Unreachable { .. }), "{err}");
    }

    #[tokio::test]
    async fn the_snapshot_after_the_start_must_equal_the_one_before_the_stop() {
        let dir = tempfile::tempdir().unwrap();
        let counts = dir.path().join("counts");
        std::fs::write(&counts, "items 5\nnotes 1\n").unwrap();
        let a = adapter(&format!(
            "health_command = \"true\"\nrelease_command = \"echo v1\"\nsnapshot_command = [\"cat\", {:?}]",
            counts.to_string_lossy()
        ));
        let line = a.before_stop().await.unwrap();
        assert_eq!(line, "snapshot before the stop: items 5, notes 1");
        // A stop that failed leaves it serving: no start, so no compare,
        // however its data moves.
        std::fs::write(&counts, "items 6\nnotes 1\n").unwrap();
        assert_eq!(a.poll().await.unwrap().health, Health::Healthy);
        std::fs::write(&counts, "items 5\nnotes 1\n").unwrap();
        a.after_start();
        assert_eq!(a.poll().await.unwrap().health, Health::Healthy);
        // Compared once: a later change is not this upgrade's.
        std::fs::write(&counts, "items 6\nnotes 1\n").unwrap();
        assert_eq!(a.poll().await.unwrap().health, Health::Healthy);

        a.before_stop().await.unwrap();
        std::fs::write(&counts, "items 2\nnotes 1\n").unwrap();
        a.after_start();
        let s = a.poll().await.unwrap();
        assert_eq!(s.health, Health::Degraded);
        assert!(
            s.health_detail
                .contains("before \"items 6, notes 1\", after \"items 2, notes 1\""),
            "{}",
            s.health_detail
        );
        // It stays degraded until the next stop takes a new snapshot.
        assert_eq!(a.poll().await.unwrap().health, Health::Degraded);
    }

    #[tokio::test]
    async fn a_backup_is_the_commands_file_with_the_revision_read_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::write(&data, "row\nrow\nrow\n").unwrap();
        let base = format!(
            "health_command = \"true\"\nrelease_command = \"echo v1\"\nbackup_command = [\"cp\", {:?}, \"{{file}}\"]\nrestore_command = [\"cp\", \"{{file}}\", {:?}]\n",
            data.to_string_lossy(),
            data.to_string_lossy()
        );
        // Without a revision command: revision 0, and the test-restore says so.
        let a = adapter(&base);
        let dest = dir.path().join("b0");
        let b = a.backup(&dest).await.unwrap();
        assert_eq!((b.bytes, b.revision), (12, 0));
        assert_eq!(b.sha256.len(), 64);
        let said = a.test_restore(&b, dir.path()).await.unwrap();
        assert!(said.contains("revision recorded as 0"), "{said}");

        let counted = format!(
            "{base}backup_revision_command = {}\ntest_restore_command = {}\n",
            sh("wc -l < {file}"),
            sh("cp {file} {scratch}/r && wc -l < {scratch}/r")
        );
        let a = adapter(&counted);
        let dest = dir.path().join("b1");
        let b = a.backup(&dest).await.unwrap();
        assert_eq!(b.revision, 3);
        let said = a.test_restore(&b, dir.path()).await.unwrap();
        assert_eq!(said, "test-restored into a scratch dir: revision 3");
        let wrong = Backup {
            revision: 4,
            ..b.clone()
        };
        let err = a
            .test_restore(&wrong, dir.path())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds revision 3, the backup says 4"), "{err}");

        // Restore puts the file back over the data.
        std::fs::write(&data, "changed\n").unwrap();
        a.restore_file(&b.path).await.unwrap();
        assert_eq!(std::fs::read_to_string(&data).unwrap(), "row\nrow\nrow\n");

        // A command that fails, or writes nothing, fails the backup.
        let failing = adapter(&format!(
            "health_command = \"true\"\nrelease_command = \"echo v1\"\nbackup_command = {}",
            sh("echo disk full >&2; exit 1 # {file}")
        ));
        let err = failing
            .backup(&dir.path().join("b2"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("backup command") && err.contains("disk full"),
            "{err}"
        );
        let silent = adapter(
            "health_command = \"true\"\nrelease_command = \"echo v1\"\nbackup_command = \"true {file}\"",
        );
        let err = silent
            .backup(&dir.path().join("b3"))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("wrote no file"), "{err}");
        let none = adapter("health_command = \"true\"\nrelease_command = \"echo v1\"");
        assert!(matches!(
            none.backup(&dir.path().join("b4")).await.unwrap_err(),
            AdapterError::BackupUnsupported { .. }
        ));
    }

    #[tokio::test]
    async fn the_operators_checks_run_with_the_staged_release_and_name_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let a = adapter(&format!(
            "health_command = \"true\"\nrelease_command = \"echo v1\"\n[[checks]]\nname = \"doctor\"\ncommand = {}\n[[checks]]\nname = \"release present\"\ncommand = [\"test\", \"-d\", \"{{release_dir}}\"]\n",
            sh("echo integrity: 2 pages corrupt >&2; exit 1")
        ));
        let checks = a.stage_checks(dir.path(), dir.path()).await;
        assert_eq!(checks.len(), 2);
        assert!(!checks[0].ok && checks[1].ok, "{checks:?}");
        assert_eq!(checks[0].check, "check:doctor");
        assert!(
            checks[0].detail.contains("2 pages corrupt"),
            "{}",
            checks[0].detail
        );
    }
}
