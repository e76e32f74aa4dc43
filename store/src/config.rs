//! The `[store]` section that the coordinator's, the agent's and the CLI's
//! configs share, and opening the store it names.
//!
//! ```toml
//! [store]
//! kind = "dir"
//! path = "/var/lib/baton/store"
//! ```
//! ```toml
//! [store]
//! kind = "s3"
//! bucket = "baton-releases"
//! prefix = "prod"                             # optional
//! endpoint = "http://127.0.0.1:9000"          # optional; AWS's own if unset
//! region = "us-east-1"                        # the default
//! access_key_id = "AKIA..."                   # with the next key, or else
//! secret_access_key_file = "/etc/baton/s3-secret"
//! agent_endpoint = "https://s3.internal:9000" # optional; the endpoint in the
//!                                             # URLs presigned for agents
//! ```
//! Without `access_key_id` and `secret_access_key_file`, the credentials come
//! from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
//! The secret itself is never in the config, and never in a `Debug` or an
//! error. This module parses and resolves; it does no store I/O beyond
//! reading the secret file once.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use crate::backup::BlobStore;
use crate::s3::{S3Settings, S3Store};
use crate::{ArtifactStore, DirStore, StoreError};

/// The `[store]` table as written. Embed it in a config struct and call
/// [`StoreSection::resolve`] once, at load time.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum StoreSection {
    Dir(DirSection),
    S3(S3Section),
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirSection {
    pub path: PathBuf,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    pub endpoint: Option<String>,
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key_id: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    /// The endpoint agents reach the bucket at, if not `endpoint`.
    pub agent_endpoint: Option<String>,
    /// Only so that a secret written inline gets its own message; its
    /// value is dropped unread.
    #[serde(default, rename = "secret_access_key")]
    inline_secret: Option<InlineSecret>,
}

/// A secret someone wrote into the config: refused, never kept or shown.
#[derive(Clone, Copy, PartialEq, Eq)]
struct InlineSecret;

impl<'de> Deserialize<'de> for InlineSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| InlineSecret)
    }
}

impl std::fmt::Debug for InlineSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

/// A `[store]` section that cannot be used, naming the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("[store]: {0}")]
    Parse(String),
    #[error("[store] {key}: {detail}")]
    Invalid { key: &'static str, detail: String },
    /// The store refused the settings (its message names the key).
    #[error("[store]: {0}")]
    Store(StoreError),
    #[error(
        "[store] secret_access_key_file {path}: {source}; write the secret access key there (mode 0600) or fix the path"
    )]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the environment's credentials come from (tests pass their own).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, read once per resolve.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Why a `[store]` table's `kind` is unusable, for the caller to report
/// under its own `store.kind` key; None when it is `dir` or `s3`.
pub fn bad_kind(table: &toml::Table) -> Option<String> {
    match table.get("kind").and_then(|k| k.as_str()) {
        Some("dir" | "s3") => None,
        Some(other) => Some(format!("unknown store {other:?}; known: dir, s3")),
        None => Some("missing: set kind = \"dir\" or kind = \"s3\"".to_owned()),
    }
}

impl StoreSection {
    /// Parses an already-read `[store]` table and resolves it (see
    /// [`StoreSection::resolve`]).
    pub fn resolve_table(table: toml::Table, env: Env<'_>) -> Result<StoreConfig, ConfigError> {
        let section: StoreSection = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse(e.message().to_owned()))?;
        section.resolve(env)
    }

    /// Parses a `[store]` table's body (the keys, without the header).
    pub fn from_toml(text: &str) -> Result<StoreSection, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse(e.message().to_owned()))
    }

    /// Checks the section and loads the credentials: from the secret file
    /// when `access_key_id` and `secret_access_key_file` are set, else from
    /// `env`'s `AWS_*` variables.
    pub fn resolve(&self, env: Env<'_>) -> Result<StoreConfig, ConfigError> {
        let s3 = match self {
            StoreSection::Dir(d) => {
                if d.path.as_os_str().is_empty() {
                    return Err(ConfigError::Invalid {
                        key: "path",
                        detail: "is empty; name the store's directory".to_owned(),
                    });
                }
                return Ok(StoreConfig::Dir {
                    path: d.path.clone(),
                });
            }
            StoreSection::S3(s3) => s3,
        };
        if s3.inline_secret.is_some() {
            return Err(ConfigError::Invalid {
                key: "secret_access_key",
                detail: "the secret must not be in the config: write it to a file and set secret_access_key_file, or use AWS_SECRET_ACCESS_KEY".to_owned(),
            });
        }
        if s3.bucket.is_empty() {
            return Err(ConfigError::Invalid {
                key: "bucket",
                detail: "is empty; name the bucket".to_owned(),
            });
        }
        for (key, value) in [
            ("endpoint", &s3.endpoint),
            ("agent_endpoint", &s3.agent_endpoint),
        ] {
            if let Some(e) = value
                && !(e.starts_with("http://") || e.starts_with("https://"))
            {
                return Err(ConfigError::Invalid {
                    key,
                    detail: format!("{e:?} is not an http:// or https:// URL"),
                });
            }
        }
        let (access_key_id, secret_access_key, session_token) = match (
            &s3.access_key_id,
            &s3.secret_access_key_file,
        ) {
            (Some(id), Some(file)) => {
                let secret = std::fs::read_to_string(file)
                    .map_err(|source| ConfigError::SecretFile {
                        path: file.clone(),
                        source,
                    })?
                    .trim()
                    .to_owned();
                if secret.is_empty() {
                    return Err(ConfigError::SecretFile {
                        path: file.clone(),
                        source: std::io::Error::other("the file is empty"),
                    });
                }
                (id.clone(), secret, None)
            }
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                        key: if s3.access_key_id.is_some() {
                            "secret_access_key_file"
                        } else {
                            "access_key_id"
                        },
                        detail: "access_key_id and secret_access_key_file go together: set both, or neither to use AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".to_owned(),
                    });
            }
            (None, None) => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
                (Some(id), Some(secret)) => (id, secret, env("AWS_SESSION_TOKEN")),
                _ => {
                    return Err(ConfigError::Invalid {
                            key: "access_key_id",
                            detail: "no S3 credentials: set access_key_id and secret_access_key_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment".to_owned(),
                        });
                }
            },
        };
        let settings = S3Settings {
            bucket: s3.bucket.clone(),
            prefix: s3.prefix.clone(),
            endpoint: s3.endpoint.clone(),
            region: s3.region.clone(),
            access_key_id,
            secret_access_key,
            session_token,
            presign_endpoint: s3.agent_endpoint.clone(),
        };
        // Bucket and prefix are checked where the store is built; check
        // them now, at load time, so a bad config fails before any work.
        S3Store::new(settings.clone()).map_err(ConfigError::Store)?;
        Ok(StoreConfig::S3(settings))
    }
}

/// A resolved store: where it is and, for S3, the credentials. Its `Debug`
/// redacts the secret.
#[derive(Clone, Debug)]
pub enum StoreConfig {
    Dir { path: PathBuf },
    S3(S3Settings),
}

impl StoreConfig {
    /// The release store.
    pub fn open_artifacts(&self) -> Result<Arc<dyn ArtifactStore>, StoreError> {
        Ok(match self {
            StoreConfig::Dir { path } => Arc::new(DirStore::new(path)),
            StoreConfig::S3(s) => Arc::new(S3Store::new(s.clone())?),
        })
    }

    /// The backup store (the same place, under `backups/`).
    pub fn open_blobs(&self) -> Result<Arc<dyn BlobStore>, StoreError> {
        Ok(match self {
            StoreConfig::Dir { path } => Arc::new(DirStore::new(path)),
            StoreConfig::S3(s) => Arc::new(S3Store::new(s.clone())?),
        })
    }

    /// What signs the requests agents send, for an S3 store; `None` for a
    /// dir store, which agents read directly.
    pub fn open_presigner(&self) -> Result<Option<Arc<S3Store>>, StoreError> {
        match self {
            StoreConfig::Dir { .. } => Ok(None),
            StoreConfig::S3(s) => Ok(Some(Arc::new(S3Store::presigner(s)?))),
        }
    }

    /// Where the store is, for messages (`s3://bucket/prefix` or the dir).
    pub fn location(&self) -> String {
        match self {
            StoreConfig::Dir { path } => path.display().to_string(),
            StoreConfig::S3(s) => {
                let prefix = s.prefix.trim_matches('/');
                if prefix.is_empty() {
                    format!("s3://{}", s.bucket)
                } else {
                    format!("s3://{}/{prefix}", s.bucket)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn resolve(text: &str, vars: &[(&str, &str)]) -> Result<StoreConfig, ConfigError> {
        StoreSection::from_toml(text)?.resolve(&env(vars))
    }

    #[tokio::test]
    async fn a_dir_store_opens_for_releases_and_backups() {
        let tmp = tempfile::tempdir().unwrap();
        let text = format!("kind = \"dir\"\npath = {:?}\n", tmp.path().join("s"));
        let cfg = resolve(&text, &[]).unwrap();
        assert_eq!(cfg.location(), tmp.path().join("s").display().to_string());
        let src = tmp.path().join("build");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), "x").unwrap();
        let artifacts = cfg.open_artifacts().unwrap();
        let m = crate::publish(&*artifacts, "kv", "v1", 1, &src, tmp.path())
            .await
            .unwrap();
        assert_eq!(artifacts.list().await.unwrap(), vec![m]);
        let blobs = cfg.open_blobs().unwrap();
        blobs
            .put_blob("backups/c/b/COMPLETE", "x".into())
            .await
            .unwrap();
        assert_eq!(
            blobs.list_blobs("backups/").await.unwrap(),
            vec!["backups/c/b/COMPLETE"]
        );
    }

    #[test]
    fn an_s3_store_reads_its_secret_from_a_file_and_never_shows_it() {
        let tmp = tempfile::tempdir().unwrap();
        let secret = tmp.path().join("secret");
        std::fs::write(&secret, "s3cr3t-value\n").unwrap();
        let text = format!(
            "kind = \"s3\"\nbucket = \"rel\"\nprefix = \"prod/\"\nendpoint = \"http://127.0.0.1:9000\"\naccess_key_id = \"AK1\"\nsecret_access_key_file = {secret:?}\n"
        );
        // The file wins over the environment.
        let cfg = resolve(&text, &[("AWS_SECRET_ACCESS_KEY", "from-env")]).unwrap();
        let StoreConfig::S3(s) = &cfg else {
            panic!("{cfg:?}")
        };
        assert_eq!(
            (
                s.bucket.as_str(),
                s.region.as_str(),
                s.access_key_id.as_str(),
                s.secret_access_key.as_str(),
                s.endpoint.as_deref()
            ),
            (
                "rel",
                "us-east-1",
                "AK1",
                "s3cr3t-value",
                Some("http://127.0.0.1:9000")
            )
        );
        assert_eq!(cfg.location(), "s3://rel/prod");
        assert_eq!(cfg.open_artifacts().unwrap().location(), "s3://rel/prod");
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(
            shown.contains("AK1") && shown.contains("<redacted>"),
            "{shown}"
        );
    }

    #[test]
    fn credentials_come_from_the_environment_without_the_file_keys() {
        let cfg = resolve(
            "kind = \"s3\"\nbucket = \"rel\"\nregion = \"eu-west-1\"\n",
            &[
                ("AWS_ACCESS_KEY_ID", "AKENV"),
                ("AWS_SECRET_ACCESS_KEY", "env-secret"),
                ("AWS_SESSION_TOKEN", "env-token"),
            ],
        )
        .unwrap();
        let StoreConfig::S3(s) = &cfg else {
            panic!("{cfg:?}")
        };
        assert_eq!(
            (
                s.access_key_id.as_str(),
                s.secret_access_key.as_str(),
                s.session_token.as_deref(),
                s.region.as_str()
            ),
            ("AKENV", "env-secret", Some("env-token"), "eu-west-1")
        );
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("env-secret") && !shown.contains("env-token"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn urls_for_agents_are_signed_for_the_agent_endpoint() {
        let env = [
            ("AWS_ACCESS_KEY_ID", "AK"),
            ("AWS_SECRET_ACCESS_KEY", "sk-secret"),
        ];
        let plain = resolve(
            "kind = \"s3\"\nbucket = \"rel\"\nendpoint = \"http://127.0.0.1:9000\"\n",
            &env,
        )
        .unwrap();
        let split = resolve(
            "kind = \"s3\"\nbucket = \"rel\"\nendpoint = \"http://127.0.0.1:9000\"\nagent_endpoint = \"http://127.0.0.1:9100\"\n",
            &env,
        )
        .unwrap();
        let ttl = std::time::Duration::from_secs(60);
        for (cfg, host) in [(&plain, "127.0.0.1:9000"), (&split, "127.0.0.1:9100")] {
            let signer = cfg.open_presigner().unwrap().expect("an S3 store presigns");
            let p = signer
                .presign_get("kv/v2/manifest.toml", ttl)
                .await
                .unwrap();
            assert!(
                p.url
                    .starts_with(&format!("http://{host}/rel/kv/v2/manifest.toml?")),
                "{}",
                p.url
            );
            assert!(!p.url.contains("sk-secret"));
        }
        let dir = resolve("kind = \"dir\"\npath = \"/s\"\n", &[]).unwrap();
        assert!(dir.open_presigner().unwrap().is_none());
    }

    #[test]
    fn bad_sections_are_refused_naming_the_key() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nosuch");
        let empty = tmp.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let cases: Vec<(String, &str)> = vec![
            (
                "kind = \"s3\"\nbucket = \"rel\"\nbukcet = \"x\"\n".into(),
                "unknown field `bukcet`",
            ),
            (
                "kind = \"dir\"\npath = \"/s\"\nbucket = \"x\"\n".into(),
                "unknown field `bucket`",
            ),
            ("kind = \"ftp\"\n".into(), "unknown variant `ftp`"),
            ("path = \"/s\"\n".into(), "kind"),
            (
                "kind = \"s3\"\nbucket = \"rel\"\nsecret_access_key = \"oops-secret\"\n".into(),
                "[store] secret_access_key: the secret must not be in the config",
            ),
            (
                "kind = \"s3\"\nbucket = \"rel\"\naccess_key_id = \"AK\"\n".into(),
                "[store] secret_access_key_file: access_key_id and secret_access_key_file go together",
            ),
            (
                "kind = \"s3\"\nbucket = \"rel\"\n".into(),
                "no S3 credentials",
            ),
            (
                format!(
                    "kind = \"s3\"\nbucket = \"rel\"\naccess_key_id = \"AK\"\nsecret_access_key_file = {missing:?}\n"
                ),
                "secret_access_key_file",
            ),
            (
                format!(
                    "kind = \"s3\"\nbucket = \"rel\"\naccess_key_id = \"AK\"\nsecret_access_key_file = {empty:?}\n"
                ),
                "the file is empty",
            ),
            (
                "kind = \"s3\"\nbucket = \"rel\"\nendpoint = \"127.0.0.1:9000\"\n".into(),
                "[store] endpoint",
            ),
            (
                "kind = \"s3\"\nbucket = \"rel\"\nagent_endpoint = \"s3.nodes:9000\"\n".into(),
                "[store] agent_endpoint",
            ),
            ("kind = \"dir\"\npath = \"\"\n".into(), "[store] path"),
        ];
        let inline = "kind = \"s3\"\nbucket = \"rel\"\nsecret_access_key = \"oops-secret\"\n";
        let shown = format!("{:?}", StoreSection::from_toml(inline).unwrap());
        assert!(!shown.contains("oops-secret"), "{shown}");
        for (text, want) in cases {
            let err = resolve(&text, &[]).unwrap_err().to_string();
            assert!(err.contains(want), "{text}\n=> {err}");
            assert!(!err.contains("oops-secret"), "{err}");
        }
        let err = resolve(
            "kind = \"s3\"\nbucket = \"Rel_Bad\"\n",
            &[("AWS_ACCESS_KEY_ID", "A"), ("AWS_SECRET_ACCESS_KEY", "S")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("bucket name \"Rel_Bad\" is not valid"),
            "{err}"
        );
        let err = resolve(
            &format!(
                "kind = \"s3\"\nbucket = \"rel\"\naccess_key_id = \"AK\"\nsecret_access_key_file = {missing:?}\n"
            ),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }
}
