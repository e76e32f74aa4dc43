//! The planner stays pure: no async runtime, RPC, HTTP or cloud SDK crate
//! anywhere in its dependency tree (`cargo tree -p baton-planner`).

#![allow(clippy::unwrap_used)]

use std::process::Command;

#[test]
fn the_planner_depends_on_no_runtime_wire_or_cloud_crate() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = Command::new(cargo)
        .args([
            "tree",
            "-p",
            "baton-planner",
            "--prefix",
            "none",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(crates.contains(&"baton-domain"), "{tree}");
    let forbidden: Vec<&&str> = crates
        .iter()
        .filter(|c| {
            ["tokio", "tonic", "hyper", "aws"]
                .iter()
                .any(|f| c.starts_with(f))
        })
        .collect();
    assert!(forbidden.is_empty(), "{forbidden:?} in\n{tree}");
}
