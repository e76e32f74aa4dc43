//! sqlapp: a small single-member app on SQLite for the runbook tests (the
//! z4j, Piprio and lazyit upgrades, run as baton rollouts).
//!
//! This crate owns the app's behaviour and nothing of baton's:
//! - [`Release`]: what a release directory's `manifest.toml` says: its
//!   version, how many of the built-in [`MIGRATIONS`] it knows, the settings
//!   it requires, and (for tests) a migration that breaks half way.
//! - [`migrate`]: forward-only migrations, each in its own transaction,
//!   tracked in `schema_migrations`. A failed one is rolled back whole and
//!   the app refuses to start; a database newer than the release is refused.
//! - [`settings`]: the process environment, then `.env` beside the database.
//! - [`status`], [`backup`], [`restore`], [`doctor`], [`revision`]: the
//!   operator's commands (row counts, SQLite's online backup API both ways,
//!   `PRAGMA integrity_check`, the highest item id).
//! - [`serve`]: `GET /health`, `POST /items?name=`, `GET /items` on a
//!   listener that is already bound.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, MAIN_DB, OptionalExtension};
use serde::Deserialize;

/// One forward-only migration.
#[derive(Debug)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration any release knows, in order; a release applies the first
/// `Release::migrations` of them.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "create items",
        sql: "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL);",
    },
    Migration {
        version: 2,
        name: "create notes",
        sql: "CREATE TABLE notes (id INTEGER PRIMARY KEY, item_id INTEGER NOT NULL REFERENCES items(id), body TEXT NOT NULL);",
    },
    Migration {
        version: 3,
        name: "add items.tag",
        sql: "ALTER TABLE items ADD COLUMN tag TEXT NOT NULL DEFAULT '';\nUPDATE items SET tag = 'v2';\nCREATE INDEX items_by_tag ON items(tag);",
    },
];

/// A statement that fails, run after the first half of a broken migration.
const BREAKING_STATEMENT: &str = "INSERT INTO no_such_table VALUES (1);";

/// What a release directory's `manifest.toml` says.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub version: String,
    /// How many of [`MIGRATIONS`] this release knows.
    pub migrations: u32,
    /// Settings this release refuses to start without.
    #[serde(default)]
    pub required_settings: Vec<String>,
    /// Tests only: the last migration runs its first half, then fails.
    #[serde(default)]
    pub break_last_migration: bool,
    /// What baton publishes the release as; sqlapp itself ignores them.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub format_version: Option<u32>,
}

impl Release {
    pub fn load(release_dir: &Path) -> Result<Release> {
        let path = release_dir.join("manifest.toml");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read the release manifest {}", path.display()))?;
        let r: Release = toml::from_str(&text)
            .with_context(|| format!("release manifest {} is invalid", path.display()))?;
        if r.migrations as usize > MIGRATIONS.len() {
            bail!(
                "release manifest {}: migrations = {} but this build knows {}",
                path.display(),
                r.migrations,
                MIGRATIONS.len()
            );
        }
        Ok(r)
    }
}

/// Opens the database for the app: WAL (readers and backups never block
/// the writer) and a busy timeout.
pub fn open(db: &Path) -> Result<Connection> {
    let conn = Connection::open(db).with_context(|| format!("cannot open {}", db.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(conn)
}

/// Opens an existing database for the operator's commands, never creating
/// one and leaving its journal mode as it is (a backup file stays one file).
pub fn open_existing(db: &Path) -> Result<Connection> {
    if !db.is_file() {
        bail!("database {} does not exist", db.display());
    }
    let conn = Connection::open(db).with_context(|| format!("cannot open {}", db.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// The schema version: the highest applied migration (0 for a new database).
pub fn schema(conn: &Connection) -> Result<u32> {
    let has_table: bool = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
            [],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false);
    if !has_table {
        return Ok(0);
    }
    Ok(conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
        [],
        |r| r.get(0),
    )?)
}

/// Applies every migration `release` knows that the database lacks, each in
/// its own transaction; returns the lines it would log.
pub fn migrate(conn: &mut Connection, release: &Release) -> Result<Vec<String>> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);",
    )?;
    let at = schema(conn)?;
    if at > release.migrations {
        bail!(
            "the database is at schema {at} but release {} knows migrations only up to {}; migrations are forward-only: restore the pre-upgrade backup to run this release",
            release.version,
            release.migrations
        );
    }
    let mut log = Vec::new();
    for m in &MIGRATIONS[..release.migrations as usize] {
        if m.version <= at {
            log.push(format!(
                "migration {} ({}) already applied",
                m.version, m.name
            ));
            continue;
        }
        let broken = release.break_last_migration && m.version == release.migrations;
        let tx = conn.transaction()?;
        let applied = tx
            .execute_batch(m.sql)
            .and_then(|()| {
                if broken {
                    tx.execute_batch(BREAKING_STATEMENT)
                } else {
                    Ok(())
                }
            })
            .and_then(|()| {
                tx.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (?1, ?2)",
                    (m.version, m.name),
                )
                .map(|_| ())
            });
        match applied {
            Ok(()) => {
                tx.commit()?;
                log.push(format!("migration {} ({}) applied", m.version, m.name));
            }
            Err(e) => {
                // Dropping the transaction rolls it back; say so only after.
                tx.rollback()?;
                bail!(
                    "migration {} ({}) failed: {e}; it was rolled back, the schema stays at {}",
                    m.version,
                    m.name,
                    schema(conn)?
                );
            }
        }
    }
    Ok(log)
}

/// The app's settings: `.env` beside the database (`KEY=VALUE` lines), then
/// the process environment over it.
pub fn settings(db: &Path, env: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let dotenv = dotenv_path(db);
    if let Ok(text) = std::fs::read_to_string(&dotenv) {
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                out.insert(k.trim().to_owned(), v.trim().to_owned());
            }
        }
    }
    for (k, v) in env {
        if k.starts_with("SQLAPP_") {
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(out)
}

/// `.env` in the database's directory.
pub fn dotenv_path(db: &Path) -> PathBuf {
    db.parent().unwrap_or(Path::new(".")).join(".env")
}

/// The settings `release` requires that are missing, each as an operator
/// line naming where to add it.
pub fn missing_settings(
    release: &Release,
    db: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Vec<String>> {
    let have = settings(db, env)?;
    Ok(release
        .required_settings
        .iter()
        .filter(|s| have.get(*s).is_none_or(|v| v.is_empty()))
        .map(|s| {
            format!(
                "release {} requires the setting {s}, which is missing: add {s}=... to {} or the environment",
                release.version,
                dotenv_path(db).display()
            )
        })
        .collect())
}

/// Row counts per user table (not `schema_migrations`), one `name count`
/// line each, by table name.
pub fn status(db: &Path) -> Result<String> {
    let conn = open_existing(db)?;
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name <> 'schema_migrations' ORDER BY name",
    )?;
    let tables: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = String::new();
    for t in tables {
        let n: i64 = conn.query_row(&format!("SELECT COUNT(*) FROM \"{t}\""), [], |r| r.get(0))?;
        out.push_str(&format!("{t} {n}\n"));
    }
    Ok(out)
}

/// The app's revision: the highest item id (ids only grow).
pub fn revision(conn: &Connection) -> Result<u64> {
    let has_items: bool = conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'items'",
            [],
            |_| Ok(true),
        )
        .optional()?
        .unwrap_or(false);
    if !has_items {
        return Ok(0);
    }
    let n: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) FROM items", [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Copies `db` to `output` (which must not exist) with SQLite's online
/// backup API: consistent while the app serves and writes.
pub fn backup(db: &Path, output: &Path) -> Result<()> {
    if output.exists() {
        bail!("backup output {} already exists", output.display());
    }
    let conn = open_existing(db)?;
    conn.backup(MAIN_DB, output, None)
        .with_context(|| format!("online backup of {} to {}", db.display(), output.display()))?;
    // A standalone file: no WAL beside it for whoever reads it next.
    Connection::open(output)?.pragma_update(None, "journal_mode", "DELETE")?;
    Ok(())
}

/// Replaces `db`'s content with `input`'s (the app must be stopped).
pub fn restore(db: &Path, input: &Path) -> Result<()> {
    if !input.is_file() {
        bail!("backup {} does not exist", input.display());
    }
    let check = Connection::open(input)?;
    let ok: String = check.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if ok != "ok" {
        bail!("backup {} fails integrity_check: {ok}", input.display());
    }
    drop(check);
    let mut conn = open(db)?;
    conn.restore(MAIN_DB, input, None::<fn(rusqlite::backup::Progress)>)
        .with_context(|| format!("restore of {} from {}", db.display(), input.display()))?;
    Ok(())
}

/// `PRAGMA integrity_check` and the schema version, as a line; an error
/// when the database is damaged.
pub fn doctor(db: &Path) -> Result<String> {
    let conn = open_existing(db)?;
    let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
    if ok != "ok" {
        bail!("{} fails integrity_check: {ok}", db.display());
    }
    Ok(format!("integrity ok, schema {}", schema(&conn)?))
}

/// What the server shares between requests.
#[derive(Debug)]
struct App {
    conn: Mutex<Connection>,
    version: String,
    schema: u32,
}

type Shared = Arc<App>;

fn internal(e: impl std::fmt::Display) -> (axum::http::StatusCode, String) {
    (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn health(
    axum::extract::State(app): axum::extract::State<Shared>,
) -> Result<axum::Json<serde_json::Value>, (axum::http::StatusCode, String)> {
    let conn = app.conn.lock().map_err(internal)?;
    let revision = revision(&conn).map_err(internal)?;
    Ok(axum::Json(serde_json::json!({
        "status": "ok",
        "schema": app.schema,
        "version": app.version,
        "revision": revision,
    })))
}

#[derive(Debug, Deserialize)]
struct NewItem {
    name: String,
}

async fn add_item(
    axum::extract::State(app): axum::extract::State<Shared>,
    axum::extract::Query(item): axum::extract::Query<NewItem>,
) -> Result<axum::Json<serde_json::Value>, (axum::http::StatusCode, String)> {
    let conn = app.conn.lock().map_err(internal)?;
    conn.execute("INSERT INTO items (name) VALUES (?1)", [&item.name])
        .map_err(internal)?;
    Ok(axum::Json(
        serde_json::json!({"id": conn.last_insert_rowid(), "name": item.name}),
    ))
}

async fn list_items(
    axum::extract::State(app): axum::extract::State<Shared>,
) -> Result<axum::Json<serde_json::Value>, (axum::http::StatusCode, String)> {
    let conn = app.conn.lock().map_err(internal)?;
    let mut stmt = conn
        .prepare("SELECT id, name FROM items ORDER BY id")
        .map_err(internal)?;
    let items: Vec<serde_json::Value> = stmt
        .query_map([], |r| {
            Ok(serde_json::json!({"id": r.get::<_, i64>(0)?, "name": r.get::<_, String>(1)?}))
        })
        .map_err(internal)?
        .collect::<rusqlite::Result<_>>()
        .map_err(internal)?;
    Ok(axum::Json(serde_json::Value::Array(items)))
}

/// Checks the settings, runs the migrations, then serves on `listener`
/// until `shutdown` resolves. Refuses to start (an error) on a missing
/// setting or a failed migration, before it listens.
pub async fn serve(
    db: &Path,
    release: &Release,
    env: &BTreeMap<String, String>,
    listener: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let missing = missing_settings(release, db, env)?;
    if !missing.is_empty() {
        bail!("refusing to start: {}", missing.join("; "));
    }
    let mut conn = open(db)?;
    for line in migrate(&mut conn, release)? {
        eprintln!("sqlapp {}: {line}", release.version);
    }
    let schema = schema(&conn)?;
    let app = Arc::new(App {
        conn: Mutex::new(conn),
        version: release.version.clone(),
        schema,
    });
    let router = axum::Router::new()
        .route("/health", axum::routing::get(health))
        .route("/items", axum::routing::get(list_items).post(add_item))
        .with_state(app);
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    eprintln!(
        "sqlapp {} serving on {} (schema {schema})",
        release.version,
        listener.local_addr()?
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn release(migrations: u32, broken: bool) -> Release {
        Release {
            version: format!("m{migrations}"),
            migrations,
            required_settings: Vec::new(),
            break_last_migration: broken,
            ..Release::default()
        }
    }

    #[test]
    fn migrations_are_tracked_forward_only_and_a_broken_one_rolls_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let mut conn = open(&db).unwrap();
        migrate(&mut conn, &release(2, false)).unwrap();
        conn.execute("INSERT INTO items (name) VALUES ('a')", [])
            .unwrap();
        assert_eq!(schema(&conn).unwrap(), 2);
        // Again: nothing applied twice.
        let log = migrate(&mut conn, &release(2, false)).unwrap();
        assert!(
            log.iter().all(|l| l.ends_with("already applied")),
            "{log:?}"
        );

        let err = migrate(&mut conn, &release(3, true))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("migration 3 (add items.tag) failed") && err.contains("schema stays at 2"),
            "{err}"
        );
        assert_eq!(schema(&conn).unwrap(), 2);
        // The column added in the first half is gone with the rest.
        assert!(conn.prepare("SELECT tag FROM items").is_err());
        assert_eq!(status(&db).unwrap(), "items 1\nnotes 0\n");

        migrate(&mut conn, &release(3, false)).unwrap();
        assert_eq!(schema(&conn).unwrap(), 3);
        let err = migrate(&mut conn, &release(2, false))
            .unwrap_err()
            .to_string();
        assert!(err.contains("forward-only"), "{err}");
    }

    #[test]
    fn a_required_setting_comes_from_dotenv_or_the_environment() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let mut r = release(3, false);
        r.required_settings = vec!["SQLAPP_REDIS_URL".into()];
        let missing = missing_settings(&r, &db, &BTreeMap::new()).unwrap();
        assert_eq!(missing.len(), 1);
        assert!(missing[0].contains("SQLAPP_REDIS_URL"), "{missing:?}");
        let env = BTreeMap::from([("SQLAPP_REDIS_URL".to_owned(), "redis://x".to_owned())]);
        assert!(missing_settings(&r, &db, &env).unwrap().is_empty());
        std::fs::write(dotenv_path(&db), "# app\nSQLAPP_REDIS_URL=redis://y\n").unwrap();
        assert!(
            missing_settings(&r, &db, &BTreeMap::new())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn backup_and_restore_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("app.db");
        let mut conn = open(&db).unwrap();
        migrate(&mut conn, &release(2, false)).unwrap();
        conn.execute("INSERT INTO items (name) VALUES ('a')", [])
            .unwrap();
        let copy = dir.path().join("copy.db");
        backup(&db, &copy).unwrap();
        assert!(backup(&db, &copy).is_err(), "never overwrites");
        conn.execute("INSERT INTO items (name) VALUES ('b')", [])
            .unwrap();
        assert_eq!(status(&db).unwrap(), "items 2\nnotes 0\n");
        drop(conn);
        restore(&db, &copy).unwrap();
        assert_eq!(status(&db).unwrap(), "items 1\nnotes 0\n");
        assert_eq!(doctor(&db).unwrap(), "integrity ok, schema 2");
        assert_eq!(revision(&open_existing(&copy).unwrap()).unwrap(), 1);
        let mode: String = open_existing(&copy)
            .unwrap()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete", "a backup is one file");
    }
}
