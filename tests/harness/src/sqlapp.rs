//! A single-member `sqlapp` deployment for the runbook tests: one member
//! (`app1`) that its agent supervises and reads through the `exec`
//! adapter, a real coordinator with the dir store, and `baton` run as the
//! operator would.
//!
//! Owns building and publishing sqlapp releases (a launcher for the
//! workspace's `sqlapp` binary plus a `manifest.toml` that picks the
//! migrations, and for a release that needs a new setting, a `checks.toml`
//! naming it), and the app's HTTP API as the tests call it. Every process is
//! a [`Proc`] or killed by the agent's pidfile on drop.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::{Proc, bin, copy_dir, free_port, init, kill_pid, print_log_tails};

/// The member's id.
pub const MEMBER: &str = "app1";

/// The setting v2 requires (lazyit's new REDIS_URL).
pub const V2_SETTING: &str = "SQLAPP_REDIS_URL";

/// One sqlapp release to build.
#[derive(Debug, Clone)]
pub struct SqlRelease {
    pub version: String,
    /// How many of sqlapp's built-in migrations it knows; also its data
    /// format (the schema it leaves the database at).
    pub migrations: u32,
    pub required_settings: Vec<String>,
    /// Its last migration fails half way (and is rolled back).
    pub break_last_migration: bool,
}

impl SqlRelease {
    /// v1: two migrations, no required setting.
    pub fn v1() -> Self {
        SqlRelease {
            version: "v1".into(),
            migrations: 2,
            required_settings: Vec::new(),
            break_last_migration: false,
        }
    }

    /// v2: a third migration, and it needs [`V2_SETTING`].
    pub fn v2() -> Self {
        SqlRelease {
            version: "v2".into(),
            migrations: 3,
            required_settings: vec![V2_SETTING.into()],
            break_last_migration: false,
        }
    }
}

/// The running deployment. Drop kills everything.
#[derive(Debug)]
pub struct SqlApp {
    pub addr: SocketAddr,
    pub store_dir: PathBuf,
    pub data_dir: PathBuf,
    pub db: PathBuf,
    pub base_dir: PathBuf,
    pub agent_dir: PathBuf,
    pub agent_config: PathBuf,
    pub coordinator_url: String,
    pub coordinator: Option<Proc>,
    pub agent: Option<Proc>,
    /// Keep last: removed after every process is dead.
    pub dir: tempfile::TempDir,
}

impl SqlApp {
    /// Publishes v1, installs it on the node, starts the coordinator and the
    /// agent (which starts the app), and waits until `baton status` shows
    /// `app1` healthy on v1. `policy` is extra `[policy]` lines.
    pub async fn start(policy: &str) -> Result<SqlApp> {
        init();
        let dir = tempfile::Builder::new().prefix("baton-sqlapp-").tempdir()?;
        let coord_port = free_port();
        let coordinator_url = format!("http://127.0.0.1:{coord_port}");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let store_dir = dir.path().join("store");
        fs::create_dir_all(&store_dir)?;
        let coordinator_config = dir.path().join("coordinator.toml");
        fs::write(
            &coordinator_config,
            format!(
                "cluster_id = \"e2e\"\nlisten = \"127.0.0.1:{coord_port}\"\nheartbeat_ms = 300\nmembers = [\"{MEMBER}\"]\nstate_dir = {:?}\nrelease_name = \"sqlapp\"\n[store]\nkind = \"dir\"\npath = {:?}\n[policy]\n{policy}\n",
                dir.path().join("coordinator-state").to_string_lossy(),
                store_dir.to_string_lossy(),
            ),
        )?;
        let base_dir = dir.path().join("app1/base");
        let data_dir = dir.path().join("app1/data");
        let agent_dir = dir.path().join("app1/agent");
        for d in [&base_dir, &data_dir, &agent_dir] {
            fs::create_dir_all(d)?;
        }
        let db = data_dir.join("app.db");
        let v1 = build_release(dir.path(), &SqlRelease::v1())?;
        publish_release(&store_dir, &v1, "v1", 2)?;
        copy_dir(&v1, &base_dir.join("releases/v1"))?;
        std::os::unix::fs::symlink(Path::new("releases/v1"), base_dir.join("current"))?;

        let sqlapp = bin("sqlapp").to_string_lossy().into_owned();
        let db_text = db.to_string_lossy().into_owned();
        let command = [
            "{release_dir}/sqlapp",
            "serve",
            "--db",
            "{data_dir}/app.db",
            "--listen",
            &addr.to_string(),
            "--release-dir",
            "{release_dir}",
        ];
        let probe_addr = format!("127.0.0.1:{}", free_port());
        let agent_config = agent_dir.join("agent.toml");
        let toml_argv = |argv: &[&str]| format!("{argv:?}");
        fs::write(
            &agent_config,
            format!(
                r#"member_id = "{MEMBER}"
cluster_id = "e2e"
coordinator = {coordinator_url:?}
heartbeat_ms = 300
poll_ms = 50
data_dir = {data:?}
state_dir = {state:?}
probe_listen = "{probe_addr}"
[store]
kind = "dir"
path = {store:?}
[target]
kind = "exec"
health_url = "http://{addr}/health"
health_json_field = "status"
health_json_value = "ok"
release_json_field = "version"
revision_json_field = "revision"
format_json_field = "schema"
timeout_ms = 400
backup_command = {backup}
backup_revision_command = {revision}
test_restore_command = {test_restore}
restore_command = {restore}
snapshot_command = {snapshot}
[[target.checks]]
name = "doctor"
command = {doctor}
[run]
mode = "supervise"
base_dir = {base:?}
command = {command}
stop_timeout_ms = 5000
"#,
                data = data_dir.to_string_lossy(),
                state = agent_dir.to_string_lossy(),
                store = store_dir.to_string_lossy(),
                base = base_dir.to_string_lossy(),
                backup = toml_argv(&[&sqlapp, "backup", "--db", &db_text, "--output", "{file}"]),
                revision = toml_argv(&[&sqlapp, "revision", "--db", "{file}"]),
                test_restore = toml_argv(&[
                    "/bin/sh",
                    "-c",
                    &format!(
                        "{sqlapp} restore --db {{scratch}}/restored.db --input {{file}} && {sqlapp} revision --db {{scratch}}/restored.db"
                    ),
                ]),
                restore = toml_argv(&[&sqlapp, "restore", "--db", &db_text, "--input", "{file}"]),
                snapshot = toml_argv(&[&sqlapp, "status", "--db", &db_text]),
                doctor = toml_argv(&[&sqlapp, "doctor", "--db", &db_text]),
                command = toml_argv(&command),
            ),
        )?;
        let mut app = SqlApp {
            addr,
            store_dir,
            data_dir,
            db,
            base_dir,
            agent_dir,
            agent_config,
            coordinator_url,
            coordinator: None,
            agent: None,
            dir,
        };
        let mut cmd = Command::new(bin("baton-coordinator"));
        cmd.arg("--config")
            .arg(&coordinator_config)
            .env("RUST_LOG", "info");
        app.coordinator = Some(Proc::spawn(
            "coordinator",
            &mut cmd,
            &app.dir.path().join("coordinator.log"),
        )?);
        let mut cmd = Command::new(bin("baton-agent"));
        cmd.arg("--config")
            .arg(&app.agent_config)
            .env("RUST_LOG", "info");
        app.agent = Some(Proc::spawn(
            "agent-app1",
            &mut cmd,
            &app.agent_dir.join("agent.log"),
        )?);
        app.wait_status("app1 healthy on v1", Duration::from_secs(30), |s| {
            s.leader.as_ref().is_some_and(|l| l.as_str() == MEMBER)
                && s.members.iter().all(|m| {
                    m.fresh
                        && m.report.as_ref().is_some_and(|r| {
                            r.state.release == "v1"
                                && r.state.health == baton_domain::Health::Healthy
                        })
                })
        })
        .await?;
        Ok(app)
    }

    /// Builds and publishes `release` (format = its migrations).
    pub fn publish(&self, release: &SqlRelease) -> Result<()> {
        let build = build_release(self.dir.path(), release)?;
        publish_release(
            &self.store_dir,
            &build,
            &release.version,
            release.migrations,
        )
    }

    /// Writes `KEY=VALUE` lines to the app's `.env` (beside its database).
    pub fn write_dotenv(&self, lines: &[(&str, &str)]) -> Result<()> {
        let text: String = lines.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        fs::write(self.data_dir.join(".env"), text)?;
        Ok(())
    }

    /// `baton --output json <args>` against the coordinator.
    pub fn baton_json(&self, args: &[&str]) -> Result<(i32, serde_json::Value, String)> {
        crate::baton_json_at(&self.coordinator_url, args)
    }

    pub async fn wait_status(
        &self,
        what: &str,
        within: Duration,
        f: impl FnMut(&baton_domain::FleetStatus) -> bool,
    ) -> Result<baton_domain::FleetStatus> {
        crate::wait_status_at(&self.coordinator_url, what, within, f).await
    }

    pub fn status(&self) -> Result<baton_domain::FleetStatus> {
        crate::status_at(&self.coordinator_url)
    }

    /// Every rollout event in the coordinator's journal.
    pub fn journal(&self) -> Result<Vec<serde_json::Value>> {
        Ok(crate::read_journal(&self.dir.path().join(crate::JOURNAL))?
            .into_iter()
            .filter(|e| e.get("event").is_some())
            .collect())
    }

    /// One HTTP/1.0 request to the app: (status code, body).
    pub fn http(&self, method: &str, path: &str) -> Result<(u16, String)> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(2))
            .with_context(|| format!("connect to sqlapp on {}", self.addr))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(
            format!(
                "{method} {path} HTTP/1.0\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
                self.addr
            )
            .as_bytes(),
        )?;
        let mut response = String::new();
        s.read_to_string(&mut response)?;
        let (head, body) = response
            .split_once("\r\n\r\n")
            .with_context(|| format!("no HTTP header end in {response:?}"))?;
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no status in {head:?}"))?;
        Ok((code, body.to_owned()))
    }

    /// Writes `n` items named `<prefix>-<i>`; returns their names.
    pub fn write_items(&self, prefix: &str, n: usize) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for i in 0..n {
            let name = format!("{prefix}-{i}");
            let (code, body) = self.http("POST", &format!("/items?name={name}"))?;
            if code != 200 {
                bail!("POST /items?name={name} answered {code}: {body}");
            }
            names.push(name);
        }
        Ok(names)
    }

    /// Every item name the app serves, in id order.
    pub fn read_items(&self) -> Result<Vec<String>> {
        let (code, body) = self.http("GET", "/items")?;
        if code != 200 {
            bail!("GET /items answered {code}: {body}");
        }
        let items: Vec<serde_json::Value> = serde_json::from_str(&body)?;
        Ok(items
            .iter()
            .filter_map(|i| i["name"].as_str().map(str::to_owned))
            .collect())
    }

    /// `sqlapp status --db <db>`, as the operator runs it.
    pub fn row_counts(&self) -> Result<String> {
        let out = Command::new(bin("sqlapp"))
            .args(["status", "--db"])
            .arg(&self.db)
            .output()?;
        if !out.status.success() {
            bail!("sqlapp status: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// The app's pid, from the agent's pidfile.
    pub fn member_pid(&self) -> Option<i32> {
        let text = fs::read_to_string(self.agent_dir.join("member.pid")).ok()?;
        text.split_whitespace().next()?.parse().ok()
    }

    pub fn agent_log(&self) -> String {
        fs::read_to_string(self.agent_dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for SqlApp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_log_tails(
                &[
                    self.dir.path().join("coordinator.log"),
                    self.agent_dir.join("agent.log"),
                    self.agent_dir.join("member.log"),
                ],
                30,
            );
        }
        let pid = self.member_pid();
        self.agent.take();
        if let Some(pid) = pid {
            kill_pid(pid);
        }
        self.coordinator.take();
    }
}

/// A sqlapp release directory: a launcher for the workspace's `sqlapp`
/// (so every version comes from one build), its `manifest.toml`, and for a
/// release with required settings, a `checks.toml` that names each.
pub fn build_release(root: &Path, r: &SqlRelease) -> Result<PathBuf> {
    let dir = root.join("builds").join(&r.version);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let launcher = dir.join("sqlapp");
    fs::write(
        &launcher,
        format!(
            "#!/bin/sh\nexec {:?} \"$@\"\n",
            bin("sqlapp").to_string_lossy()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&launcher, fs::Permissions::from_mode(0o755))?;
    let manifest = std::collections::BTreeMap::from([
        ("name", toml::Value::from("sqlapp")),
        ("version", toml::Value::from(r.version.as_str())),
        ("format_version", toml::Value::from(i64::from(r.migrations))),
        ("migrations", toml::Value::from(i64::from(r.migrations))),
        (
            "required_settings",
            toml::Value::Array(
                r.required_settings
                    .iter()
                    .map(|s| toml::Value::from(s.as_str()))
                    .collect(),
            ),
        ),
        (
            "break_last_migration",
            toml::Value::from(r.break_last_migration),
        ),
    ]);
    fs::write(dir.join("manifest.toml"), toml::to_string(&manifest)?)?;
    if !r.required_settings.is_empty() {
        let mut checks = String::new();
        for s in &r.required_settings {
            checks.push_str(&format!(
                "[[check]]\nname = \"setting {s}\"\ncommand = [\"{{release_dir}}/sqlapp\", \"check-settings\", \"--db\", \"{{data_dir}}/app.db\", \"--release-dir\", \"{{release_dir}}\"]\n"
            ));
        }
        fs::write(dir.join("checks.toml"), checks)?;
    }
    Ok(dir)
}

/// `baton release publish --name sqlapp`, as an operator runs it.
pub fn publish_release(
    store: &Path,
    build: &Path,
    version: &str,
    format_version: u32,
) -> Result<()> {
    let out = Command::new(bin("baton"))
        .args([
            "release",
            "publish",
            "--name",
            "sqlapp",
            "--version",
            version,
        ])
        .arg("--format-version")
        .arg(format_version.to_string())
        .arg("--store")
        .arg(store)
        .arg("--from")
        .arg(build)
        .output()?;
    if !out.status.success() {
        bail!(
            "baton release publish failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
