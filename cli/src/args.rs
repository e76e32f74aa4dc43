//! The command line's shape: global flags, subcommands and their flags
//! (clap). Parsing only; [`crate::run`] acts on it.

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "baton",
    version,
    about = "Rolling upgrades of leader/follower clusters"
)]
pub struct Args {
    /// The coordinator's operator API: its address, or its replicas'
    /// separated by commas (same scheme, at most 7); calls go to the leader.
    #[arg(
        long,
        global = true,
        env = "BATON_COORDINATOR",
        default_value = "http://127.0.0.1:7400"
    )]
    pub coordinator: String,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// CA certificate that signs the coordinator's (for https://).
    #[arg(long, global = true, env = "BATON_CA_CERT")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Operator client certificate (mTLS), with --key.
    #[arg(long, global = true, env = "BATON_CERT", requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// Operator client key, with --cert.
    #[arg(long, global = true, env = "BATON_KEY", requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// A file holding a bearer token (one of the coordinator's [tokens]),
    /// sent instead of a client certificate; https:// only.
    #[arg(long, global = true, env = "BATON_TOKEN_FILE")]
    pub token_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// One row per member: role, release, revision, lag, health, last seen.
    Status {
        /// Refresh until interrupted.
        #[arg(long)]
        watch: bool,
        /// Refresh interval for --watch, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Dry run: preflight verdicts, then the ordered steps with their reasons.
    Plan {
        #[arg(long)]
        to: String,
    },
    /// Runs a rolling upgrade with live progress. Exit 0 on success; 2 if
    /// preflight refused (nothing touched); 3 if the rollout paused.
    Upgrade {
        #[arg(long)]
        to: String,
        /// Start it and return at once, without following progress.
        #[arg(long)]
        detach: bool,
    },
    /// Walks the latest rollout back to its previous release: members now on
    /// its target, in reverse order, same gates, leader last. A paused
    /// rollout is closed first. Exit codes as for upgrade.
    Rollback {
        /// Start it and return at once, without following progress.
        #[arg(long)]
        detach: bool,
        /// Instead, restore the latest rollout's pre-upgrade backup onto
        /// the release it was taken on (for a forward-only data format,
        /// where a plain rollback is refused). Prints the loss window
        /// first; confirmed like `baton restore`.
        #[arg(long)]
        restore: bool,
        /// With --restore: the cluster id, to confirm.
        #[arg(long, requires = "restore")]
        confirm: Option<String>,
    },
    /// Puts a backup back on every member: verifies it in the store, then
    /// stops every member, restores each one's data (the old data is kept
    /// aside), switches it to the release the backup was taken on and
    /// starts it, until every member is at the backup's revision. An
    /// outage; it pages while it runs. Exit codes as for upgrade.
    Restore {
        /// The backup id (see `baton backups list`).
        #[arg(long)]
        backup: String,
        /// The cluster id, to confirm; without it the CLI asks on a terminal.
        #[arg(long)]
        confirm: Option<String>,
        /// Start it and return at once, without following progress.
        #[arg(long)]
        detach: bool,
    },
    /// Follows the active (or named) rollout until it completes or pauses.
    Watch {
        #[arg(long)]
        rollout: Option<String>,
    },
    /// Shows the active (or named) rollout once.
    Rollout {
        #[arg(long)]
        id: Option<String>,
    },
    /// Pauses the running rollout after the step in flight.
    Pause {
        #[arg(long, default_value = "operator request")]
        reason: String,
    },
    /// Resumes a paused rollout.
    Resume {
        /// Try the release again on a member it failed on (and that was put
        /// back); without it such a resume is refused.
        #[arg(long)]
        retry: bool,
    },
    /// Stops after the current step; never leaves a member stopped.
    Abort,
    /// Every rollout this coordinator has journaled.
    History,
    /// Releases in the artifact store.
    #[command(subcommand)]
    Release(ReleaseCmd),
    /// The cluster's backups in the coordinator's store.
    #[command(subcommand)]
    Backups(BackupsCmd),
    /// Certificates for mutual TLS.
    #[command(subcommand)]
    Certs(CertsCmd),
}

#[derive(Subcommand, Debug)]
pub enum CertsCmd {
    /// Writes a development PKI (a CA, the coordinator's certificate, one
    /// per member and one per operator) for mutual TLS. Not for
    /// production: the CA key is written beside what it signs.
    Dev {
        /// The directory to write into (created if need be).
        #[arg(long)]
        out: std::path::PathBuf,
        /// The cluster id (the coordinator's and agents' cluster_id).
        #[arg(long)]
        cluster: String,
        /// The member ids, comma-separated (n1,n2,n3).
        #[arg(long)]
        members: String,
        /// Operator names, comma-separated or repeated; each gets
        /// operator-<name>.crt (give it a role in [operators]).
        #[arg(long = "operator")]
        operators: Vec<String>,
        /// The names and addresses clients reach the coordinator by.
        #[arg(long, default_value = "localhost,127.0.0.1,::1")]
        hosts: String,
        /// The coordinator's name in its spiffe://<cluster>/coordinator/<name>.
        #[arg(long, default_value = "coordinator")]
        coordinator_name: String,
        /// How long the leaf certificates are valid.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Sign with the CA (ca.crt, ca.key) an earlier run wrote to this
        /// directory, instead of a new one: renewing under the same trust.
        #[arg(long)]
        ca: Option<std::path::PathBuf>,
        /// Replace files that exist.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum BackupsCmd {
    /// Every backup: complete or not, its manifest, and what pins it.
    List,
    /// Re-reads one backup from the store and checks every part's sha256.
    /// Exit 0 when it verifies, 69 when it does not.
    Verify {
        /// The backup id (see `baton backups list`).
        id: String,
    },
    /// Deletes backups beyond the newest --keep complete ones; never one a
    /// rollout pins (not finalized, or finalized less than
    /// `policy.backup_keep_days` ago).
    Prune {
        /// How many of the newest complete backups to keep regardless.
        #[arg(long)]
        keep: u32,
        /// Show what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Which store a `baton release` command talks to: a directory, or the
/// `[store]` section of a TOML file (dir or s3).
#[derive(clap::Args, Debug, Clone)]
#[group(required = true, multiple = false)]
pub struct StoreArgs {
    /// The artifact store directory.
    #[arg(long, env = "BATON_STORE")]
    pub store: Option<std::path::PathBuf>,
    /// A TOML file with a `[store]` section (`kind = "dir"` or `"s3"`), e.g.
    /// the coordinator's own config; S3 credentials as that section says.
    #[arg(long, env = "BATON_STORE_CONFIG")]
    pub store_config: Option<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum ReleaseCmd {
    /// Packs a directory and puts it in the store with its sha256.
    /// Republishing the same content is a no-op ("already published").
    Publish {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        name: String,
        #[arg(long)]
        version: String,
        /// The data format the release writes (and the newest it reads).
        #[arg(long)]
        format_version: u32,
        /// The directory to pack (a release's files).
        #[arg(long)]
        from: std::path::PathBuf,
    },
    /// Every release in the store: version, size, sha256, format version.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
}
