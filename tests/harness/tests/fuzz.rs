//! Property-based fuzzing, on the stable toolchain (proptest), of every wire
//! conversion and of both config parsers: whatever comes in, nothing
//! panics, and what is accepted keeps its invariants.
//!
//! - Wire: arbitrary bytes, and valid encodings with bytes flipped, cut or
//!   inserted, are decoded as each message the coordinator or an agent
//!   reads (Hello, Report, Command, CommandResult, StatusResponse, Rollout,
//!   Check) and converted; structured Reports and Commands with arbitrary
//!   field values, too.
//! - Configs: arbitrary text, and a good agent or coordinator config with
//!   one line replaced by an arbitrary `key = value` or with bytes mutated.
//!
//! Each property runs `BATON_FUZZ_CASES` cases (default 256, which CI runs
//! in seconds); set it higher for a longer run, e.g. `BATON_FUZZ_CASES=20000
//! cargo test -p baton-harness --test fuzz`.

use std::collections::BTreeMap;
use std::path::Path;

use baton_domain::{AgentCommand, CommandOutcome, FleetStatus, Hello, Report, is_path_name};
use baton_proto::v1;
use proptest::prelude::*;
use prost::Message;

fn cases() -> u32 {
    std::env::var("BATON_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // Failures are reported with their input; no regression files are
        // written into the tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Decodes `bytes` as every message baton reads off the wire and converts
/// each that decodes (the checks panic on a broken invariant).
fn decode_everything(bytes: &[u8]) {
    if let Ok(m) = v1::AgentMessage::decode(bytes) {
        match m.body {
            Some(v1::agent_message::Body::Hello(h)) => {
                let _ = Hello::try_from(h);
            }
            Some(v1::agent_message::Body::Report(r)) => checked_report(r),
            Some(v1::agent_message::Body::Result(r)) => {
                let _ = CommandOutcome::try_from(r);
            }
            _ => {}
        }
    }
    if let Ok(m) = v1::CoordinatorMessage::decode(bytes)
        && let Some(v1::coordinator_message::Body::Command(c)) = m.body
    {
        checked_command(c);
    }
    if let Ok(s) = v1::StatusResponse::decode(bytes) {
        let _ = FleetStatus::try_from(s);
    }
    if let Ok(r) = v1::Rollout::decode(bytes) {
        let _ = baton_domain::Rollout::try_from(r);
    }
    if let Ok(c) = v1::Check::decode(bytes) {
        let _ = baton_domain::Check::try_from(c);
    }
}

/// Converts a Report; an accepted one keeps the invariants the gates rely
/// on.
fn checked_report(r: v1::Report) {
    match Report::try_from(r) {
        Ok(report) => {
            let s = &report.state;
            assert!(s.applied_revision <= s.committed_revision, "{report:?}");
            assert!(
                s.committed_revision <= baton_proto::MAX_REVISION,
                "{report:?}"
            );
        }
        Err(e) => assert!(e.to_string().len() < 2048, "a long refusal: {e}"),
    }
}

/// Converts a Command; an accepted one names only safe path components.
fn checked_command(c: v1::Command) {
    match AgentCommand::try_from(c) {
        Ok(cmd) => {
            assert!(is_path_name(&cmd.id.0), "{cmd:?}");
            match &cmd.action {
                baton_domain::Action::Stage { release } => {
                    assert!(is_path_name(&release.name) && is_path_name(&release.version));
                }
                baton_domain::Action::Switch { version } => assert!(is_path_name(version)),
                _ => {}
            }
        }
        Err(e) => assert!(e.to_string().len() < 2048, "a long refusal: {e}"),
    }
}

fn sample_messages() -> Vec<Vec<u8>> {
    let report = v1::Report {
        member_id: "n2".into(),
        role: v1::Role::Follower as i32,
        leader_id: "n1".into(),
        committed_revision: 50,
        applied_revision: 49,
        release_version: "v1".into(),
        format_version: 1,
        health: v1::Health::Healthy as i32,
        timestamp_unix_ms: 1,
        term: 3,
        ..Default::default()
    };
    let hello = v1::Hello {
        member_id: "n2".into(),
        cluster_id: "e2e".into(),
        agent_version: "0.1.0".into(),
        adapter_kind: "samplekv".into(),
        ..Default::default()
    };
    let stage = v1::Command {
        id: "r1-v2-1.abc".into(),
        step: Some(v1::command::Step::Stage(v1::Stage {
            name: "samplekv".into(),
            version: "v2".into(),
            format_version: 1,
            sha256: "a".repeat(64),
        })),
        journal: "abc".into(),
        term: 2,
    };
    vec![
        v1::AgentMessage {
            body: Some(v1::agent_message::Body::Report(report)),
        }
        .encode_to_vec(),
        v1::AgentMessage {
            body: Some(v1::agent_message::Body::Hello(hello)),
        }
        .encode_to_vec(),
        v1::CoordinatorMessage {
            body: Some(v1::coordinator_message::Body::Command(stage)),
        }
        .encode_to_vec(),
    ]
}

/// A mutation of one byte string: flip, cut, insert or overwrite.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Cut(usize),
    Insert(usize, Vec<u8>),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Flip(i, b)),
            any::<usize>().prop_map(Edit::Cut),
            (any::<usize>(), prop::collection::vec(any::<u8>(), 1..12))
                .prop_map(|(i, b)| Edit::Insert(i, b)),
        ],
        1..6,
    )
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let n = bytes.len().max(1);
        match e {
            Edit::Flip(i, b) => {
                if !bytes.is_empty() {
                    let i = i % bytes.len();
                    bytes[i] ^= b | 1;
                }
            }
            Edit::Cut(i) => bytes.truncate(i % n),
            Edit::Insert(i, b) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
        }
    }
    bytes
}

/// Text that is anything, or nearly an identifier, or nearly a path.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z0-9._-]{0,12}",
        "(\\.\\./|/|v[0-9]|;|\\\\|%2e){0,6}",
        Just(String::new()),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_never_panic_a_conversion(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
    }

    #[test]
    fn mutated_valid_messages_never_panic_a_conversion(which in 0usize..3, e in edits()) {
        let base = sample_messages()[which].clone();
        decode_everything(&apply(base, &e));
    }

    #[test]
    fn structured_reports_are_accepted_only_when_sound(
        member in text(),
        leader in text(),
        role in any::<i32>(),
        health in any::<i32>(),
        committed in any::<u64>(),
        applied in any::<u64>(),
        term in any::<u64>(),
        release in text(),
        cpu in any::<f32>(),
    ) {
        let r = v1::Report {
            member_id: member,
            role,
            leader_id: leader,
            committed_revision: committed,
            applied_revision: applied,
            release_version: release,
            health,
            term,
            resources: Some(v1::Resources { cpu_percent: cpu, ..Default::default() }),
            ..Default::default()
        };
        checked_report(r);
    }

    #[test]
    fn structured_commands_are_accepted_only_with_safe_names(
        id in text(),
        name in text(),
        version in text(),
        sha in "[0-9a-fA-F]{0,70}",
        step in 0u8..8,
        to in text(),
        term in any::<u64>(),
        journal in text(),
    ) {
        use v1::command::Step;
        let step = match step {
            0 => Step::Stage(v1::Stage { name, version, format_version: 1, sha256: sha }),
            1 => Step::Switch(v1::Switch { version }),
            2 => Step::StepDown(v1::StepDown { to_member_id: to }),
            3 => Step::Backup(v1::Backup { id: name }),
            4 => Step::Restore(v1::Restore { id: version }),
            5 => Step::Stop(v1::Stop { timeout_ms: term as u32, even_if_leader: term % 2 == 0 }),
            6 => Step::Start(v1::Start {}),
            _ => Step::Noop(v1::Noop {}),
        };
        checked_command(v1::Command { id, step: Some(step), journal, term });
    }
}

const AGENT: &str = "member_id = \"n1\"\ncluster_id = \"e2e\"\ncoordinator = \"http://127.0.0.1:7400\"\nheartbeat_ms = 200\ndata_dir = \"/tmp/fuzz-data\"\nstate_dir = \"/tmp/fuzz-state\"\n[target]\nkind = \"samplekv\"\naddr = \"127.0.0.1:7501\"\n[run]\nmode = \"supervise\"\nbase_dir = \"/tmp/fuzz-base\"\ncommand = [\"/bin/true\"]\n";

const COORDINATOR: &str = "cluster_id = \"e2e\"\nlisten = \"127.0.0.1:7400\"\nmembers = [\"n1\", \"n2\", \"n3\"]\nstate_dir = \"/tmp/fuzz-coord\"\n[policy]\nmax_unavailable = 1\ntolerable_lag = 10\n[store]\nkind = \"dir\"\npath = \"/tmp/fuzz-store\"\n";

fn parse_both(text: &str) {
    let env = BTreeMap::new();
    if let Err(e) = baton_agent::config::AgentConfig::from_toml(text, Path::new("agent.toml"), &env)
    {
        let _ = e.to_string();
    }
    if let Err(e) = baton_coordinator::config::CoordinatorConfig::from_toml(
        text,
        Path::new("coordinator.toml"),
        &env,
    ) {
        let _ = e.to_string();
    }
}

/// A TOML value of any shape, as text.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        any::<bool>().prop_map(|b| b.to_string()),
        text().prop_map(|s| format!("{s:?}")),
        prop::collection::vec(text(), 0..4).prop_map(|v| format!("{v:?}")),
        Just("{ a = 1 }".to_owned()),
        Just("\"http://10.1.2.3:7400\"".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("-1".to_owned()),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_good_configs_parse(_n in 0u8..1) {
        let env = BTreeMap::new();
        baton_agent::config::AgentConfig::from_toml(AGENT, Path::new("a"), &env).unwrap();
        baton_coordinator::config::CoordinatorConfig::from_toml(COORDINATOR, Path::new("c"), &env)
            .unwrap();
    }

    #[test]
    fn arbitrary_text_never_panics_a_config_parser(text in any::<String>()) {
        parse_both(&text);
    }

    #[test]
    fn a_good_config_with_one_line_replaced_never_panics(
        which in any::<bool>(),
        line in any::<usize>(),
        key in "[a-z_.]{1,24}",
        value in toml_value(),
    ) {
        let base = if which { AGENT } else { COORDINATOR };
        let mut lines: Vec<String> = base.lines().map(str::to_owned).collect();
        let i = line % lines.len();
        // Keep section headers; replace a key's line (the key itself too).
        if !lines[i].starts_with('[') {
            let known = lines[i].split(" = ").next().unwrap_or_default().to_owned();
            let k = if line % 2 == 0 { known } else { key };
            lines[i] = format!("{k} = {value}");
        }
        parse_both(&lines.join("\n"));
    }

    #[test]
    fn a_good_config_with_bytes_mutated_never_panics(which in any::<bool>(), e in edits()) {
        let base = if which { AGENT } else { COORDINATOR };
        let bytes = apply(base.as_bytes().to_vec(), &e);
        parse_both(&String::from_utf8_lossy(&bytes));
    }
}
