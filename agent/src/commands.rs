//! Operator commands the agent runs on the node: the exec adapter's health,
//! revision, backup and snapshot commands, and checks (the adapter's own
//! and a release's `checks.toml`).
//!
//! This module owns how such a command runs: **without a shell**. A command
//! is an argv array (`["sqlapp", "doctor", "--db", "/srv/app.db"]`) or a
//! string split on whitespace (no quoting, no globbing, no `$VAR`); an
//! operator who wants a shell writes `["sh", "-c", "..."]` and owns its
//! quoting. Placeholders such as `{file}` are substituted in each argument
//! after splitting, so a path with spaces stays one argument. Every run is
//! bounded by a timeout (the child is killed when it passes), and a failure
//! carries the exit status and the last lines of its stderr (or stdout).
//!
//! It also owns [`ReleaseChecks`]: the `checks.toml` a release directory may
//! carry, whose checks the executor runs after staging the release and
//! before anything is stopped.

use std::path::Path;
use std::time::Duration;

use baton_domain::{Check, MemberId};
use serde::Deserialize;

/// How many lines of a failed command's output its error carries.
pub const OUTPUT_TAIL: usize = 5;

/// A command as written in TOML: an argv array, or a string split on
/// whitespace.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum RawCommand {
    Line(String),
    Argv(Vec<String>),
}

/// A validated command: a non-empty argv template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandLine(Vec<String>);

impl CommandLine {
    /// Validates `raw`; the error says why, for the caller to name its key.
    pub fn parse(raw: RawCommand) -> Result<Self, String> {
        let argv: Vec<String> = match raw {
            RawCommand::Line(line) => line.split_whitespace().map(str::to_owned).collect(),
            RawCommand::Argv(argv) => argv,
        };
        match argv.first() {
            None => Err("the command is empty".to_owned()),
            Some(p) if p.is_empty() => Err("the command's program is empty".to_owned()),
            Some(_) => Ok(CommandLine(argv)),
        }
    }

    /// The argv with each `{name}` in `vars` substituted.
    pub fn render(&self, vars: &[(&str, &str)]) -> Vec<String> {
        self.0
            .iter()
            .map(|a| {
                vars.iter()
                    .fold(a.clone(), |a, (k, v)| a.replace(&format!("{{{k}}}"), v))
            })
            .collect()
    }

    /// Whether any argument names `{name}`.
    pub fn uses(&self, name: &str) -> bool {
        let p = format!("{{{name}}}");
        self.0.iter().any(|a| a.contains(&p))
    }
}

/// The argv as a shell would read it back: an argument that is empty or
/// holds whitespace, a quote or a backslash is single-quoted (a `'` inside
/// as `'\''`). For operators' eyes (a dry run's listing); nothing parses it.
impl std::fmt::Display for CommandLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, a) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let plain = !a.is_empty()
                && !a
                    .chars()
                    .any(|c| c.is_whitespace() || matches!(c, '\'' | '"' | '\\' | '$' | '`'));
            if plain {
                f.write_str(a)?;
            } else {
                write!(f, "'{}'", a.replace('\'', "'\\''"))?;
            }
        }
        Ok(())
    }
}

/// What a finished command printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub stdout: String,
    pub stderr: String,
}

/// Why a command did not succeed; the message is the operator's line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run `{program}`: {detail}")]
    Spawn { program: String, detail: String },
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    Timeout { command: String, timeout: Duration },
    #[error("`{command}` failed ({status}): {tail}")]
    Failed {
        command: String,
        status: String,
        tail: String,
    },
}

/// The last [`OUTPUT_TAIL`] lines of `text`, joined with " / ".
pub fn tail(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .rev()
        .take(OUTPUT_TAIL)
        .collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" / ")
}

/// Runs `argv` (no shell) with `env` added to the agent's environment,
/// bounded by `timeout`; Ok only on exit 0.
pub async fn run(
    argv: &[String],
    env: &std::collections::BTreeMap<String, String>,
    timeout: Duration,
) -> Result<Output, CommandError> {
    let Some(program) = argv.first() else {
        return Err(CommandError::Spawn {
            program: String::new(),
            detail: "empty command".to_owned(),
        });
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&argv[1..])
        .envs(env)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(timeout, cmd.output())
        .await
        .map_err(|_| CommandError::Timeout {
            command: argv.join(" "),
            timeout,
        })?
        .map_err(|e| CommandError::Spawn {
            program: program.clone(),
            detail: e.to_string(),
        })?;
    let output = Output {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    if out.status.success() {
        return Ok(output);
    }
    let said = if output.stderr.trim().is_empty() {
        tail(&output.stdout)
    } else {
        tail(&output.stderr)
    };
    Err(CommandError::Failed {
        command: argv.join(" "),
        status: out.status.to_string(),
        tail: if said.is_empty() {
            "(no output)".to_owned()
        } else {
            said
        },
    })
}

/// One check that is a command: it passes when the command exits 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckCommand {
    pub name: String,
    pub command: CommandLine,
}

/// A check as written in TOML (`[[target.checks]]`, or `[[check]]` in a
/// release's `checks.toml`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub name: String,
    pub command: RawCommand,
}

impl CheckCommand {
    pub fn parse(raw: RawCheck) -> Result<Self, String> {
        if raw.name.trim().is_empty() {
            return Err("a check needs a name".to_owned());
        }
        let command =
            CommandLine::parse(raw.command).map_err(|e| format!("check {:?}: {e}", raw.name))?;
        Ok(CheckCommand {
            name: raw.name,
            command,
        })
    }
}

/// Runs each check in order (all of them, so the operator sees every
/// failure at once) and returns one verdict each, named `check:<name>`.
pub async fn run_checks(
    member: &MemberId,
    checks: &[CheckCommand],
    vars: &[(&str, &str)],
    env: &std::collections::BTreeMap<String, String>,
    timeout: Duration,
) -> Vec<Check> {
    let mut verdicts = Vec::new();
    for c in checks {
        let argv = c.command.render(vars);
        let (ok, detail) = match run(&argv, env, timeout).await {
            Ok(out) => (true, tail(&out.stdout)),
            Err(e) => (false, format!("member {member}: check {:?}: {e}", c.name)),
        };
        verdicts.push(Check {
            check: format!("check:{}", c.name),
            member: Some(member.clone()),
            ok,
            detail,
        });
    }
    verdicts
}

/// A release's own checks: `checks.toml` in its directory.
///
/// ```toml
/// [[check]]
/// name = "setting SQLAPP_REDIS_URL"
/// command = ["{release_dir}/sqlapp", "check-settings", "--db", "{data_dir}/app.db", "--release-dir", "{release_dir}"]
/// ```
/// `{release_dir}` is the staged (new) release's directory, `{data_dir}`
/// the member's data directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReleaseChecks(pub Vec<CheckCommand>);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReleaseChecks {
    #[serde(default)]
    check: Vec<RawCheck>,
}

/// The name of a release's checks file.
pub const RELEASE_CHECKS: &str = "checks.toml";

impl ReleaseChecks {
    /// Reads `<release_dir>/checks.toml`; none when the release has no file.
    pub fn load(release_dir: &Path) -> Result<ReleaseChecks, String> {
        let path = release_dir.join(RELEASE_CHECKS);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(ReleaseChecks::default());
            }
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        let raw: RawReleaseChecks = toml::from_str(&text)
            .map_err(|e| format!("{} is invalid: {}", path.display(), e.message()))?;
        raw.check
            .into_iter()
            .map(CheckCommand::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(ReleaseChecks)
            .map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn a_command_line_shows_as_a_shell_would_read_it() {
        let line = |argv: &[&str]| {
            CommandLine::parse(RawCommand::Argv(
                argv.iter().map(|a| a.to_string()).collect(),
            ))
            .unwrap()
            .to_string()
        };
        assert_eq!(line(&["z4j", "doctor"]), "z4j doctor");
        assert_eq!(
            line(&["/bin/sh", "-c", "grep -q '^A=' .env", ""]),
            "/bin/sh -c 'grep -q '\\''^A='\\'' .env' ''"
        );
        assert_eq!(line(&["echo", "$HOME"]), "echo '$HOME'");
    }

    fn line(s: &str) -> CommandLine {
        CommandLine::parse(RawCommand::Line(s.into())).unwrap()
    }

    #[test]
    fn a_line_is_split_on_whitespace_and_placeholders_stay_one_argument() {
        let c = line("cp  {file}\t/tmp/x");
        assert_eq!(
            c.render(&[("file", "/a b/c")]),
            vec!["cp", "/a b/c", "/tmp/x"]
        );
        assert!(c.uses("file") && !c.uses("scratch"));
        assert!(CommandLine::parse(RawCommand::Line("  ".into())).is_err());
        assert!(CommandLine::parse(RawCommand::Argv(vec![])).is_err());
    }

    #[tokio::test]
    async fn a_failure_carries_its_status_and_output_tail_and_a_hang_is_killed() {
        let env = BTreeMap::from([("BATON_T".to_owned(), "from-env".to_owned())]);
        let ok = run(
            &["/bin/sh".into(), "-c".into(), "echo $BATON_T".into()],
            &env,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(ok.stdout.trim(), "from-env");
        let err = run(
            &[
                "/bin/sh".into(),
                "-c".into(),
                "echo one >&2; echo two >&2; exit 4".into(),
            ],
            &env,
            Duration::from_secs(5),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("exit status: 4") && err.ends_with("one / two"),
            "{err}"
        );
        let err = run(
            &["/bin/sleep".into(), "5".into()],
            &env,
            Duration::from_millis(100),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, CommandError::Timeout { .. }), "{err}");
        let err = run(&["/no/such/program".into()], &env, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/no/such/program"), "{err}");
    }

    #[tokio::test]
    async fn every_check_runs_and_a_failed_one_is_named_with_its_output() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(RELEASE_CHECKS),
            "[[check]]\nname = \"always\"\ncommand = \"true\"\n[[check]]\nname = \"setting REDIS_URL\"\ncommand = [\"/bin/sh\", \"-c\", \"grep -q ^REDIS_URL= {data_dir}/.env || { echo REDIS_URL is missing from {data_dir}/.env >&2; exit 1; }\"]\n",
        )
        .unwrap();
        let checks = ReleaseChecks::load(dir.path()).unwrap();
        assert_eq!(checks.0.len(), 2);
        let data = dir.path().to_string_lossy().into_owned();
        let member = MemberId::new("app1").unwrap();
        let verdicts = run_checks(
            &member,
            &checks.0,
            &[("data_dir", &data)],
            &BTreeMap::new(),
            Duration::from_secs(5),
        )
        .await;
        assert!(verdicts[0].ok);
        assert!(!verdicts[1].ok);
        assert_eq!(verdicts[1].check, "check:setting REDIS_URL");
        assert!(
            verdicts[1].detail.contains("member app1")
                && verdicts[1].detail.contains("REDIS_URL is missing"),
            "{}",
            verdicts[1].detail
        );
        std::fs::write(dir.path().join(".env"), "REDIS_URL=redis://x\n").unwrap();
        let verdicts = run_checks(
            &member,
            &checks.0,
            &[("data_dir", &data)],
            &BTreeMap::new(),
            Duration::from_secs(5),
        )
        .await;
        assert!(verdicts.iter().all(|c| c.ok), "{verdicts:?}");

        // No file: no checks. A bad file is named.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(ReleaseChecks::load(empty.path()).unwrap().0.len(), 0);
        std::fs::write(empty.path().join(RELEASE_CHECKS), "[[check]]\nname = 1\n").unwrap();
        let err = ReleaseChecks::load(empty.path()).unwrap_err();
        assert!(err.contains("checks.toml"), "{err}");
    }
}
