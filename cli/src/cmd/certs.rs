//! `baton certs dev`: a development PKI written with rcgen, so that a
//! cluster can run mutual TLS in minutes. Not for production: its CA key
//! sits beside the certificates it signs.
//!
//! Owns the file layout (`ca.crt`, `ca.key`, `coordinator.crt/key`,
//! `member-<id>.crt/key`, `operator-<name>.crt/key`) and the identities in
//! them, the ones the coordinator checks: `spiffe://<cluster>/member/<id>`
//! (and a DNS SAN equal to the id), `spiffe://<cluster>/operator/<name>`,
//! and for the coordinator `spiffe://<cluster>/coordinator/<name>` beside
//! its host names. With `--ca DIR` it signs with an existing dev CA
//! instead of making one, which is how certificates are renewed (rotated)
//! under the same trust. It never overwrites a file unless told to.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::Serialize;

use crate::args::{CertsCmd, Output};
use crate::{EXIT_USAGE, Exit};

/// One certificate written.
#[derive(Debug, Serialize)]
struct Written {
    file: String,
    identity: String,
    not_after: String,
}

fn usage(message: String) -> anyhow::Error {
    Exit {
        code: EXIT_USAGE,
        message,
    }
    .into()
}

fn check_name(what: &str, name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(usage(format!(
            "{what} {:?} must be 1 to 63 characters of [A-Za-z0-9._-]",
            baton_domain::echo(name)
        )))
    }
}

/// Writes `text` to `path`, mode `mode`; refuses to replace a file unless
/// `force`.
fn write(path: &Path, text: &str, mode: u32, force: bool) -> anyhow::Result<()> {
    let mut opts = fs::OpenOptions::new();
    opts.write(true).mode(mode);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            usage(format!(
                "{} exists; pass --force to replace it, or choose another --out",
                path.display()
            ))
        } else {
            anyhow::anyhow!("cannot write {}: {e}", path.display())
        }
    })?;
    f.write_all(text.as_bytes())?;
    // The mode of an existing file is not changed by open().
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn leaf_params(
    common_name: &str,
    dns: &[String],
    uri: &str,
    days: u32,
    server: bool,
) -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(dns.to_vec())?;
    params.subject_alt_names.push(SanType::URI(uri.try_into()?));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let now = time_now();
    params.not_before = now - rcgen_days(1);
    params.not_after = now + rcgen_days(days);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = if server {
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    Ok(params)
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn rcgen_days(days: u32) -> time::Duration {
    time::Duration::days(i64::from(days))
}

fn utc_date(t: time::OffsetDateTime) -> String {
    let secs = u64::try_from(t.unix_timestamp()).unwrap_or(0);
    baton_net::why::utc(rustls::pki_types::UnixTime::since_unix_epoch(
        std::time::Duration::from_secs(secs),
    ))
}

/// The CA to sign with: made and written to `out`, or read from `ca_dir`.
fn ca(
    out: &Path,
    ca_dir: Option<&Path>,
    cluster: &str,
    days: u32,
    force: bool,
    written: &mut Vec<Written>,
) -> anyhow::Result<Issuer<'static, KeyPair>> {
    if let Some(dir) = ca_dir {
        let read = |f: &str| {
            fs::read_to_string(dir.join(f)).map_err(|e| {
                usage(format!(
                    "--ca {}: cannot read {f}: {e}; give the directory an earlier `baton certs dev` wrote",
                    dir.display()
                ))
            })
        };
        let key = KeyPair::from_pem(&read("ca.key")?)
            .map_err(|e| usage(format!("--ca {}: ca.key: {e}", dir.display())))?;
        let cert = read("ca.crt")?;
        let issuer = Issuer::from_ca_cert_pem(&cert, key)
            .map_err(|e| usage(format!("--ca {}: ca.crt: {e}", dir.display())))?;
        if out != dir {
            write(&out.join("ca.crt"), &cert, 0o644, force)?;
        }
        return Ok(issuer);
    }
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("baton dev CA for {cluster}"));
    params.distinguished_name = dn;
    let now = time_now();
    params.not_before = now - rcgen_days(1);
    // The CA outlives the certificates it signs, so they can be renewed.
    params.not_after = now + rcgen_days(days.saturating_mul(4).max(365));
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write(&out.join("ca.crt"), &cert.pem(), 0o644, force)?;
    write(&out.join("ca.key"), &key.serialize_pem(), 0o600, force)?;
    written.push(Written {
        file: "ca.crt".into(),
        identity: format!("baton dev CA for {cluster}"),
        not_after: utc_date(params.not_after),
    });
    Ok(Issuer::new(params, key))
}

pub fn run(cmd: CertsCmd, output: Output) -> anyhow::Result<()> {
    let CertsCmd::Dev {
        out,
        cluster,
        members,
        operators,
        hosts,
        coordinator_name,
        days,
        ca: ca_dir,
        force,
    } = cmd;
    check_name("--cluster", &cluster)?;
    check_name("--coordinator-name", &coordinator_name)?;
    let members: Vec<String> = members
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect();
    if members.is_empty() {
        return Err(usage(
            "--members names no member; give them as n1,n2,n3".into(),
        ));
    }
    for m in &members {
        check_name("member", m)?;
    }
    let operators: Vec<String> = operators
        .iter()
        .flat_map(|o| o.split(','))
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(str::to_owned)
        .collect();
    for o in &operators {
        check_name("operator", o)?;
    }
    if days == 0 || days > 3650 {
        return Err(usage(format!("--days {days}: give 1 to 3650")));
    }
    fs::create_dir_all(&out)
        .map_err(|e| anyhow::anyhow!("cannot create --out {}: {e}", out.display()))?;
    let mut written = Vec::new();
    let issuer = ca(&out, ca_dir.as_deref(), &cluster, days, force, &mut written)?;
    let mut issue = |stem: String, cn: &str, dns: Vec<String>, uri: String, server: bool| {
        let params = leaf_params(cn, &dns, &uri, days, server)?;
        let not_after = utc_date(params.not_after);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        write(&out.join(format!("{stem}.crt")), &cert.pem(), 0o644, force)?;
        write(
            &out.join(format!("{stem}.key")),
            &key.serialize_pem(),
            0o600,
            force,
        )?;
        written.push(Written {
            file: format!("{stem}.crt"),
            identity: uri,
            not_after,
        });
        anyhow::Ok(())
    };
    issue(
        "coordinator".into(),
        &coordinator_name,
        hosts
            .split(',')
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .collect(),
        format!("spiffe://{cluster}/coordinator/{coordinator_name}"),
        true,
    )?;
    for m in &members {
        issue(
            format!("member-{m}"),
            m,
            vec![m.clone()],
            format!("spiffe://{cluster}/member/{m}"),
            false,
        )?;
    }
    for o in &operators {
        issue(
            format!("operator-{o}"),
            o,
            Vec::new(),
            format!("spiffe://{cluster}/operator/{o}"),
            false,
        )?;
    }
    match output {
        Output::Json => println!("{}", serde_json::json!({"out": out, "written": written})),
        Output::Table => {
            println!(
                "wrote a development PKI to {} (not for production: ca.key signs anything)",
                out.display()
            );
            let width = written.iter().map(|w| w.file.len()).max().unwrap_or(4);
            for w in &written {
                println!(
                    "  {:<width$}  {}  (until {})",
                    w.file, w.identity, w.not_after
                );
            }
            println!(
                "coordinator [tls]: cert = {0:?}, key = {1:?}, client_ca = {2:?}",
                path(&out, "coordinator.crt"),
                path(&out, "coordinator.key"),
                path(&out, "ca.crt")
            );
        }
    }
    Ok(())
}

fn path(out: &Path, f: &str) -> PathBuf {
    out.join(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_leave_the_directory_are_refused() {
        for bad in ["../x", "a/b", "", "n 1", &"x".repeat(64)] {
            assert!(check_name("member", bad).is_err(), "{bad:?}");
        }
        for good in ["n1", "orders-kv-0", "a.b_c"] {
            assert!(check_name("member", good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn files_are_not_replaced_without_force_and_keys_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.key");
        write(&key, "one", 0o600, false).unwrap();
        let err = write(&key, "two", 0o600, false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        assert_eq!(fs::read_to_string(&key).unwrap(), "one");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        write(&key, "two", 0o600, true).unwrap();
        assert_eq!(fs::read_to_string(&key).unwrap(), "two");
        let mode = fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
