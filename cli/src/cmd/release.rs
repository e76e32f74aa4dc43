//! `baton release publish` and `baton release list`: pack a directory into
//! the artifact store, and show what the store holds. Talks to the store
//! (a directory, or the `[store]` section of a config file: dir or s3), not
//! to the coordinator.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use baton_store::config::{StoreConfig, StoreSection};
use baton_store::{ArtifactStore, ReleaseManifest, StoreError};

use crate::{Output, ReleaseCmd, StoreArgs};

/// Runs one `baton release` subcommand.
pub async fn run(cmd: ReleaseCmd, output: Output) -> anyhow::Result<()> {
    let text = match cmd {
        ReleaseCmd::Publish {
            store,
            name,
            version,
            format_version,
            from,
        } => {
            let store = open(&store)?;
            publish(&*store, &name, &version, format_version, &from, output).await?
        }
        ReleaseCmd::List { store } => list(&*open(&store)?, output).await?,
    };
    print!("{text}");
    Ok(())
}

/// The store the flags name: `--store DIR` or `--store-config FILE`.
pub fn open(args: &StoreArgs) -> anyhow::Result<Arc<dyn ArtifactStore>> {
    let config = match (&args.store, &args.store_config) {
        (Some(dir), _) => StoreConfig::Dir { path: dir.clone() },
        (None, Some(file)) => store_config(file, &baton_store::config::process_env)?,
        (None, None) => anyhow::bail!("name the store: --store DIR or --store-config FILE"),
    };
    Ok(config.open_artifacts()?)
}

/// The `[store]` section of the TOML file at `path`, resolved (credentials
/// from its secret file, or from `env`'s `AWS_*`).
pub fn store_config(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> anyhow::Result<StoreConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read --store-config {}", path.display()))?;
    let file: toml::Table = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{} is not valid TOML: {}", path.display(), e.message()))?;
    let Some(toml::Value::Table(section)) = file.get("store") else {
        anyhow::bail!(
            "{} has no [store] section; add one (kind = \"dir\" or \"s3\") or pass --store DIR",
            path.display()
        );
    };
    let section: StoreSection =
        toml::Value::Table(section.clone())
            .try_into()
            .map_err(|e: toml::de::Error| {
                anyhow::anyhow!(
                    "{}: [store] is invalid: {}; kind must be \"dir\" or \"s3\"",
                    path.display(),
                    e.message()
                )
            })?;
    section
        .resolve(env)
        .with_context(|| format!("--store-config {}", path.display()))
}

/// Publishes `from` as `name` `version`; returns what to print. The same
/// content published again is reported as already published.
pub async fn publish(
    store: &dyn ArtifactStore,
    name: &str,
    version: &str,
    format_version: u32,
    from: &Path,
    output: Output,
) -> anyhow::Result<String> {
    // A release that carries its own manifest must agree with what we publish.
    if let Ok(text) = std::fs::read_to_string(from.join("manifest.toml")) {
        let own: toml::Value = toml::from_str(&text)?;
        let v = own.get("version").and_then(|v| v.as_str());
        let f = own.get("format_version").and_then(|v| v.as_integer());
        if v.is_some_and(|v| v != version) || f.is_some_and(|f| f != i64::from(format_version)) {
            anyhow::bail!(
                "{}/manifest.toml says version {v:?} format {f:?}, but you publish {version} format {format_version}; make them agree",
                from.display()
            );
        }
    }
    // Stored already? Then a put that succeeds found the same content (the
    // store refuses other content for a published version).
    let existed = match store.manifest(name, version).await {
        Ok(_) => true,
        Err(StoreError::Missing { .. }) => false,
        Err(e) => return Err(e.into()),
    };
    let scratch = std::env::temp_dir();
    let m = baton_store::publish(store, name, version, format_version, from, &scratch).await?;
    let location = store.location();
    Ok(match output {
        Output::Json => {
            let mut v = serde_json::to_value(&m)?;
            v["already_published"] = existed.into();
            v["store"] = location.into();
            format!("{v}\n")
        }
        Output::Table if existed => format!(
            "already published: {name} {version} (format {format_version}) sha256 {} ({} bytes) is in {location} with the same content; nothing written\n",
            m.sha256, m.size
        ),
        Output::Table => format!(
            "published {name} {version} (format {format_version}) sha256 {} ({} bytes) to {location}\n",
            m.sha256, m.size
        ),
    })
}

/// Every release in the store, as a table or JSON.
pub async fn list(store: &dyn ArtifactStore, output: Output) -> anyhow::Result<String> {
    let releases: Vec<ReleaseManifest> = store.list().await?;
    let location = store.location();
    Ok(match output {
        Output::Json => format!(
            "{}\n",
            serde_json::json!({ "store": location, "releases": releases })
        ),
        Output::Table => {
            let mut out = format!(
                "{:<16} {:<16} {:>6} {:>12}  SHA256\n",
                "NAME", "VERSION", "FORMAT", "SIZE"
            );
            for m in &releases {
                out.push_str(&format!(
                    "{:<16} {:<16} {:>6} {:>12}  {}\n",
                    m.name, m.version, m.format_version, m.size, m.sha256
                ));
            }
            if releases.is_empty() {
                out.push_str(&format!(
                    "(no releases in {location}; publish one with `baton release publish`)\n"
                ));
            }
            out
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(root: &Path, version: &str, body: &str) -> std::path::PathBuf {
        let dir = root.join("build").join(version);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("bin"), body).unwrap();
        dir
    }

    #[tokio::test]
    async fn publish_twice_says_already_published_and_other_content_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = baton_store::DirStore::new(tmp.path().join("store"));
        let v1 = build(tmp.path(), "v1", "one");
        let first = publish(&store, "kv", "v1", 1, &v1, Output::Table)
            .await
            .unwrap();
        assert!(first.starts_with("published kv v1 (format 1)"), "{first}");
        let again = publish(&store, "kv", "v1", 1, &v1, Output::Json)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&again).unwrap();
        assert_eq!(v["already_published"], true, "{v}");
        let again = publish(&store, "kv", "v1", 1, &v1, Output::Table)
            .await
            .unwrap();
        assert!(again.starts_with("already published: kv v1"), "{again}");
        std::fs::write(v1.join("bin"), "changed").unwrap();
        let err = publish(&store, "kv", "v1", 1, &v1, Output::Table)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("releases are immutable"), "{err}");
    }

    #[tokio::test]
    async fn list_shows_every_version_with_size_sha256_and_format() {
        let tmp = tempfile::tempdir().unwrap();
        let store = baton_store::DirStore::new(tmp.path().join("store"));
        let empty = list(&store, Output::Table).await.unwrap();
        assert!(empty.contains("no releases in"), "{empty}");
        for (v, f) in [("v10", 2), ("v2", 1)] {
            let dir = build(tmp.path(), v, v);
            publish(&store, "kv", v, f, &dir, Output::Table)
                .await
                .unwrap();
        }
        let m2 = store.manifest("kv", "v2").await.unwrap();
        let table = list(&store, Output::Table).await.unwrap();
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 3, "{table}");
        assert!(
            rows[1].starts_with("kv") && rows[1].contains(" v2 "),
            "{table}"
        );
        assert!(
            rows[1].contains(&m2.sha256) && rows[1].contains(&m2.size.to_string()),
            "{table}"
        );
        assert!(rows[2].contains(" v10 "), "{table}");
        let json: serde_json::Value =
            serde_json::from_str(&list(&store, Output::Json).await.unwrap()).unwrap();
        let releases = json["releases"].as_array().unwrap();
        assert_eq!(releases.len(), 2);
        assert_eq!(releases[0]["version"], "v2");
        assert_eq!(releases[0]["format_version"], 1);
        assert_eq!(releases[0]["sha256"], m2.sha256.as_str());
        assert_eq!(releases[1]["format_version"], 2);
    }

    #[test]
    fn the_store_is_named_by_exactly_one_of_store_and_store_config() {
        use clap::Parser;
        let parse = |extra: &[&str]| {
            let mut argv = vec!["baton", "release", "list"];
            argv.extend_from_slice(extra);
            crate::Args::try_parse_from(argv)
        };
        let ok = parse(&["--store-config", "/etc/baton/coordinator.toml"]).unwrap();
        let crate::Command::Release(ReleaseCmd::List { store }) = ok.command else {
            panic!("{ok:?}")
        };
        assert_eq!(
            store.store_config.as_deref(),
            Some(Path::new("/etc/baton/coordinator.toml"))
        );
        assert!(parse(&["--store", "/s", "--store-config", "/c.toml"]).is_err());
        // Neither (when BATON_STORE is not set in the test's environment).
        if std::env::var_os("BATON_STORE").is_none()
            && std::env::var_os("BATON_STORE_CONFIG").is_none()
        {
            assert!(parse(&[]).is_err());
        }
    }

    #[test]
    fn store_config_reads_the_store_section_of_a_config_file() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("coordinator.toml");
        std::fs::write(
            &file,
            "cluster_id = \"c\"\n[store]\nkind = \"s3\"\nbucket = \"rel\"\nendpoint = \"http://127.0.0.1:9\"\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("AK".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("cli-secret".to_owned()),
            _ => None,
        };
        let c = store_config(&file, &env).unwrap();
        assert_eq!(c.location(), "s3://rel");
        let err = format!("{:#}", store_config(&file, &|_| None).unwrap_err());
        assert!(err.contains("no S3 credentials"), "{err}");
        std::fs::write(&file, "cluster_id = \"c\"\n").unwrap();
        let err = format!("{:#}", store_config(&file, &|_| None).unwrap_err());
        assert!(err.contains("no [store] section"), "{err}");
        std::fs::write(&file, "[store]\nkind = \"ftp\"\n").unwrap();
        let err = format!("{:#}", store_config(&file, &|_| None).unwrap_err());
        assert!(err.contains("ftp"), "{err}");
    }
}
