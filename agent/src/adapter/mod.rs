//! Adapters: how the agent reads and steers one member of one kind of
//! cluster.
//!
//! This module owns the [`Adapter`] trait (whose `poll` returns the domain's
//! [`MemberState`]) and the registry ([`REGISTRY`]) that maps a `[target] kind` to
//! the adapter that parses its own `[target]` table. Each adapter file owns
//! its config struct and its validation; adding an adapter is one new file
//! (with its `REGISTRATION`), its `mod` line and one registry row here.
//!
//! An adapter reads the member, asks it for a handover, and (where it can)
//! backs it up; it never starts or stops processes, which is the
//! [`crate::runner`]'s job. [`bbolt`] reads the revision off an etcd
//! snapshot or data file, for the etcd adapter's backup and test-restore.

pub mod bbolt;
pub mod etcd;
pub mod exec;
#[cfg(test)]
pub mod fake;
pub mod samplekv;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use baton_domain::MemberState;
use baton_domain::{Check, MemberId, VersionRule};
use futures::future::BoxFuture;

pub use etcd::EtcdTarget;
pub use exec::ExecAdapter;
pub use samplekv::SamplekvAdapter;

/// Every adapter this agent knows, in the order `target.kind` errors list
/// them. One row per adapter.
pub const REGISTRY: &[Registration] = &[
    samplekv::REGISTRATION,
    etcd::REGISTRATION,
    exec::REGISTRATION,
];

/// One adapter in the [`REGISTRY`]: its `kind` and how it reads its own
/// `[target]` table.
#[derive(Clone, Copy, Debug)]
pub struct Registration {
    /// The `[target] kind` that selects this adapter (and its Hello name).
    pub kind: &'static str,
    /// Parses and validates the `[target]` table, `kind` already taken out.
    pub parse: fn(toml::Table) -> Result<Arc<dyn AdapterConfig>, SectionError>,
}

/// A validated `[target]` section: which adapter, and how to build it.
pub trait AdapterConfig: Send + Sync + std::fmt::Debug {
    /// The adapter's name (`samplekv`, `etcd`).
    fn kind(&self) -> &'static str;
    /// Builds the adapter. Connections are made lazily, so this fails only
    /// on settings that cannot work at all.
    fn build(&self, member: &MemberId) -> Result<Arc<dyn Adapter>, AdapterError>;
}

/// Why a `[target]` table is not valid. The config module turns it into
/// its own error, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum SectionError {
    /// A key has a value the adapter cannot use.
    #[error("config key `{key}` is invalid: {reason}")]
    Invalid { key: &'static str, reason: String },
    /// The table does not have the adapter's shape (unknown or missing key,
    /// wrong type); the message is the TOML decoder's.
    #[error("{message}")]
    Shape { message: String },
}

impl SectionError {
    pub fn invalid(key: &'static str, reason: impl Into<String>) -> Self {
        SectionError::Invalid {
            key,
            reason: reason.into(),
        }
    }
}

/// Decodes an adapter's `[target]` table into its raw struct.
pub fn decode<T: serde::de::DeserializeOwned>(table: toml::Table) -> Result<T, SectionError> {
    table
        .try_into()
        .map_err(|e: toml::de::Error| SectionError::Shape {
            message: e.message().to_owned(),
        })
}

/// `target.timeout_ms`, the bound on each call to the member (default 1 s).
pub fn timeout(timeout_ms: Option<u64>) -> Duration {
    Duration::from_millis(timeout_ms.unwrap_or(1000))
}

/// Validates `[target]`: its `kind` picks the adapter in [`REGISTRY`],
/// which parses the rest.
pub fn parse_section(mut table: toml::Table) -> Result<Arc<dyn AdapterConfig>, SectionError> {
    let kind = match table.remove("kind") {
        Some(toml::Value::String(kind)) => kind,
        Some(other) => {
            return Err(SectionError::invalid(
                "target.kind",
                format!("{other} is not a string"),
            ));
        }
        None => return Err(SectionError::invalid("target.kind", "missing")),
    };
    let Some(adapter) = REGISTRY.iter().find(|a| a.kind == kind) else {
        let known: Vec<&str> = REGISTRY.iter().map(|a| a.kind).collect();
        return Err(SectionError::invalid(
            "target.kind",
            format!("unknown adapter {kind:?}; known: {}", known.join(", ")),
        ));
    };
    (adapter.parse)(table)
}

/// Why an adapter could not read, steer or back up its member.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error("member at {addr} is unreachable: {detail}")]
    Unreachable { addr: String, detail: String },
    #[error("member at {addr} refused: {detail}")]
    Refused { addr: String, detail: String },
    #[error("member at {addr} gave an answer the {kind} adapter cannot use: {detail}")]
    BadAnswer {
        addr: String,
        kind: &'static str,
        detail: String,
    },
    #[error(
        "the {adapter} adapter cannot back up its member yet; take a backup with the database's own tools"
    )]
    BackupUnsupported { adapter: &'static str },
    #[error("the {adapter} adapter cannot restore its member: {hint}")]
    RestoreUnsupported { adapter: &'static str, hint: String },
    #[error("restoring the member failed: {0}")]
    Restore(String),
}

/// A backup an adapter wrote, verified and complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backup {
    pub path: PathBuf,
    pub bytes: u64,
    /// Hex sha256 of the file.
    pub sha256: String,
    /// The revision the backup holds, read from the backup itself (never
    /// from a status call made beside it).
    pub revision: u64,
}

/// A backup file being written: hashes and counts what goes in. Adapters
/// stream into it; nothing is buffered whole.
///
/// It is a staging copy, never the backup of record: the upload re-reads
/// it and refuses a copy whose bytes or sha256 differ from what was hashed
/// here, the store's copy is what `backup_verified` checks, and the file is
/// deleted once uploaded (a crash before that retakes the backup). So it
/// is not fsynced: a 64 MiB fsync at the end of the take flushes at once
/// onto the disk the member's own log syncs to, and was the largest write
/// gap a backup caused (see BENCHMARKS.md).
#[derive(Debug)]
pub struct BackupFile {
    path: PathBuf,
    file: std::fs::File,
    hash: sha2::Sha256,
    bytes: u64,
}

impl BackupFile {
    /// Creates `path`, which must not exist yet.
    pub fn create(path: &Path) -> std::io::Result<BackupFile> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(BackupFile {
            path: path.to_owned(),
            file,
            hash: sha2::Digest::new(),
            bytes: 0,
        })
    }

    pub fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        self.file.write_all(chunk)?;
        sha2::Digest::update(&mut self.hash, chunk);
        self.bytes += chunk.len() as u64;
        Ok(())
    }

    /// Describes the file, with the revision read from it.
    pub fn finish(self, revision: u64) -> std::io::Result<Backup> {
        let digest = sha2::Digest::finalize(self.hash);
        Ok(Backup {
            path: self.path,
            bytes: self.bytes,
            sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
            revision,
        })
    }
}

/// One kind of cluster member, seen from its agent.
pub trait Adapter: Send + Sync + std::fmt::Debug {
    /// The adapter's name, sent in the Hello (e.g. `samplekv`).
    fn kind(&self) -> &'static str;
    /// Which releases its members may move between, sent in the Hello for
    /// the coordinator's preflight to evaluate.
    fn version_rule(&self) -> VersionRule;
    /// Reads the member's current state.
    fn poll(&self) -> BoxFuture<'_, Result<MemberState, AdapterError>>;
    /// Asks the member (the leader) to hand leadership to `to`. Returns once
    /// the request is accepted; the coordinator confirms the new leader from
    /// reports.
    fn step_down<'a>(&'a self, to: &'a MemberId) -> BoxFuture<'a, Result<String, AdapterError>>;
    /// Writes a consistent backup of the member's data to `dest` (a file that
    /// does not exist yet), verified, and returns what was written.
    ///
    /// The default says this adapter cannot back up
    /// ([`AdapterError::BackupUnsupported`]); samplekv and etcd override it.
    fn backup<'a>(&'a self, dest: &'a Path) -> BoxFuture<'a, Result<Backup, AdapterError>> {
        let _ = dest;
        let adapter = self.kind();
        Box::pin(async move { Err(AdapterError::BackupUnsupported { adapter }) })
    }
    /// Restores `backup` into a scratch place under `scratch` (removed
    /// afterwards) and checks it holds `backup.revision`; returns what was
    /// checked. The default checks nothing and says so.
    fn test_restore<'a>(
        &'a self,
        backup: &'a Backup,
        scratch: &'a Path,
    ) -> BoxFuture<'a, Result<String, AdapterError>> {
        let _ = (backup, scratch);
        Box::pin(async { Ok("no scratch test-restore for this adapter".to_owned()) })
    }
    /// Replaces the stopped member's data in `data_dir` with the backup file
    /// `backup` (already verified against its manifest), which holds
    /// `revision` and was taken on `release`; fails unless the restored data
    /// holds that revision. The default says this adapter cannot.
    fn restore<'a>(
        &'a self,
        backup: &'a Path,
        revision: u64,
        release: &'a str,
        data_dir: &'a Path,
    ) -> BoxFuture<'a, Result<String, AdapterError>> {
        let _ = (backup, revision, release, data_dir);
        let adapter = self.kind();
        Box::pin(async move {
            Err(AdapterError::RestoreUnsupported {
                adapter,
                hint: "restore it with the database's own tools".into(),
            })
        })
    }
    /// Checks only this kind of member needs before a rollout touches it,
    /// judged from its latest state (the generic ones are the planner's).
    ///
    /// The default has none, and so far no adapter adds any; the coordinator
    /// does not ask for them yet. Checks that run commands are
    /// [`Adapter::stage_checks`].
    fn preflight_checks(&self, member: &MemberId, state: &MemberState) -> Vec<Check> {
        let _ = (member, state);
        Vec::new()
    }
    /// The member is a whole cluster on its own (a single-member app): it
    /// reports itself leader, has no one to hand over to, and the executor
    /// stops it without the leader interlock. The default is false.
    fn single_member(&self) -> bool {
        false
    }
    /// Runs just before the executor stops the member (e.g. a "before"
    /// snapshot to compare after the start); what it returns goes into the
    /// Stop's result. An error fails the Stop with the member untouched.
    /// The default does nothing.
    fn before_stop(&self) -> BoxFuture<'_, Result<String, AdapterError>> {
        Box::pin(async { Ok(String::new()) })
    }
    /// Called by the executor once a Start succeeded (the process runs;
    /// it may not serve yet). The default does nothing.
    fn after_start(&self) {}
    /// The checks [`Adapter::stage_checks`] runs, by name and command line,
    /// for the agent's Hello (so `baton plan` can list them). The default
    /// has none; exec names its `[[target.checks]]`.
    fn stage_check_list(&self) -> Vec<baton_domain::StageCheck> {
        Vec::new()
    }
    /// This adapter's own checks of a staged release (`release_dir`) on this
    /// node, run after staging and before anything is stopped; a failed one
    /// fails the Stage command. The default has none; exec runs its
    /// `[[target.checks]]`.
    fn stage_checks<'a>(
        &'a self,
        release_dir: &'a Path,
        data_dir: &'a Path,
    ) -> BoxFuture<'a, Vec<Check>> {
        let _ = (release_dir, data_dir);
        Box::pin(async { Vec::new() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[tokio::test]
    async fn the_kind_picks_the_adapter_that_parses_the_rest() {
        let c = parse_section(table("kind = \"samplekv\"\naddr = \"127.0.0.1:1\"")).unwrap();
        assert_eq!(c.kind(), "samplekv");
        assert_eq!(
            c.build(&MemberId::new("n1").unwrap()).unwrap().kind(),
            "samplekv"
        );
        let c = parse_section(table("kind = \"etcd\"\naddr = \"127.0.0.1:1\"")).unwrap();
        assert_eq!(c.kind(), "etcd");
        assert_eq!(
            c.build(&MemberId::new("n1").unwrap()).unwrap().kind(),
            "etcd"
        );
        // Each registered adapter answers to its own kind.
        for r in REGISTRY {
            let text = match r.kind {
                "exec" => "health_command = \"true\"\nrelease_command = \"echo v1\"",
                _ => "addr = \"h:1\"",
            };
            let c = (r.parse)(table(text)).unwrap();
            assert_eq!(c.kind(), r.kind);
        }
    }

    #[test]
    fn a_bad_kind_or_shape_names_the_key() {
        let err = parse_section(table("kind = \"nosuch\"\naddr = \"h:1\"")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config key `target.kind` is invalid: unknown adapter \"nosuch\"; known: samplekv, etcd, exec"
        );
        let err = parse_section(table("addr = \"h:1\"")).unwrap_err();
        assert!(err.to_string().contains("`target.kind`"), "{err}");
        let err = parse_section(table("kind = 3")).unwrap_err();
        assert!(err.to_string().contains("`target.kind`"), "{err}");
        let err = parse_section(table("kind = \"etcd\"\naddr = \"h:1\"\nbogus = 1")).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[tokio::test]
    async fn an_adapter_without_backups_says_so() {
        let fake = fake::FakeAdapter::default();
        let err = fake.backup(Path::new("/nonexistent/b")).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "the fake adapter cannot back up its member yet; take a backup with the database's own tools"
        );
        let state = MemberState::unreachable(String::new());
        assert!(
            fake.preflight_checks(&MemberId::new("n1").unwrap(), &state)
                .is_empty()
        );
    }
}
