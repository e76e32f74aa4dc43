//! `baton release publish`: packs a directory into the artifact store. Talks
//! to the store, not to the coordinator.

use crate::{Output, ReleaseCmd};

/// Runs one `baton release` subcommand.
pub async fn run(cmd: ReleaseCmd, output: Output) -> anyhow::Result<()> {
    match cmd {
        ReleaseCmd::Publish {
            store,
            name,
            version,
            format_version,
            from,
        } => publish(&store, &name, &version, format_version, &from, output).await,
    }
}

async fn publish(
    store: &std::path::Path,
    name: &str,
    version: &str,
    format_version: u32,
    from: &std::path::Path,
    output: Output,
) -> anyhow::Result<()> {
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
    let st = baton_store::DirStore::new(store);
    let scratch = std::env::temp_dir();
    let m = baton_store::publish(&st, name, version, format_version, from, &scratch).await?;
    match output {
        Output::Json => println!("{}", serde_json::to_string(&m)?),
        Output::Table => println!(
            "published {name} {version} (format {format_version}) sha256 {} ({} bytes) to {}",
            m.sha256,
            m.size,
            store.display()
        ),
    }
    Ok(())
}
