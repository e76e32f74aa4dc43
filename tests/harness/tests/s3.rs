//! The S3 store against a real S3 server (s3s-fs, which checks SigV4):
//! releases (publish, fetch, immutability, a corrupt artifact), backups in
//! parts (upload, verify, download, a corrupt part, a missing sentinel),
//! wrong credentials and a missing bucket. The resume of a broken download
//! is tested in `store/src/s3.rs` against an in-process server that breaks
//! connections on purpose, which s3s-fs cannot be made to do.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;
use baton_harness::s3::{S3Server, SECRET_KEY};
use baton_store::backup::{self, BackupSource, BlobStore, PART_SIZE};
use baton_store::s3::{S3Settings, S3Store};
use baton_store::{ArtifactStore, StoreError, publish, unpack_verified, verify};

fn release_dir(root: &Path, version: &str, body: &str) -> Result<PathBuf> {
    let d = root.join(format!("build-{version}-{}", body.len()));
    fs::create_dir_all(d.join("bin"))?;
    fs::write(d.join("bin/tool"), body)?;
    Ok(d)
}

fn source(id: &str) -> BackupSource {
    BackupSource {
        cluster: "c1".into(),
        id: id.into(),
        member: "n2".into(),
        adapter: "samplekv".into(),
        revision: 42,
        release: "v1".into(),
        release_format: 1,
    }
}

fn data(dir: &Path, len: usize) -> Result<PathBuf> {
    let path = dir.join("snap");
    let body: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4093) as u8).collect();
    fs::write(&path, body)?;
    Ok(path)
}

#[tokio::test]
async fn releases_publish_fetch_list_and_are_immutable() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let server = S3Server::start(tmp.path(), "releases").await?;
    let store = S3Store::new(server.settings("team/baton"))?;
    let src = release_dir(tmp.path(), "v2", "hello")?;
    let m = publish(&store, "kv", "v2", 3, &src, tmp.path()).await?;
    assert_eq!(verify(&store, "kv", "v2", tmp.path()).await?, m);
    let art = tmp.path().join("a.tar");
    store.fetch("kv", "v2", &art).await?;
    let out = tmp.path().join("out");
    unpack_verified(&art, &m.sha256, &out, "kv", "v2")?;
    assert_eq!(fs::read_to_string(out.join("bin/tool"))?, "hello");

    // The same content again is a no-op; other content is refused.
    assert_eq!(publish(&store, "kv", "v2", 3, &src, tmp.path()).await?, m);
    let other = release_dir(tmp.path(), "v2", "a different body")?;
    let err = publish(&store, "kv", "v2", 3, &other, tmp.path())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::ReleaseExists { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("s3://releases/team/baton")
            && text.contains(&m.sha256)
            && text.contains("publish it as a new version"),
        "{text}"
    );
    assert_eq!(store.manifest("kv", "v2").await?, m);
    let v10 = publish(&store, "kv", "v10", 3, &other, tmp.path()).await?;
    // Only the winning artifact is left under v2.
    let keys = store.list_blobs("kv/v2/").await?;
    assert_eq!(
        keys,
        vec![
            format!("kv/v2/{}.tar", m.sha256),
            "kv/v2/manifest.toml".into()
        ]
    );

    // A backup in the same bucket is not a release.
    let file = data(tmp.path(), 100)?;
    backup::upload(&store, &source("b1"), &file).await?;
    assert_eq!(store.list().await?, vec![m.clone(), v10]);

    // An artifact changed in the bucket is refused and never written out.
    let stored = server.object_file(&format!("team/baton/kv/v2/{}.tar", m.sha256));
    let mut bytes = fs::read(&stored)?;
    bytes[600] ^= 0x55;
    fs::write(&stored, bytes)?;
    let dest = tmp.path().join("bad.tar");
    let err = store.fetch("kv", "v2", &dest).await.unwrap_err();
    assert!(matches!(err, StoreError::BadChecksum { .. }), "{err}");
    assert!(!dest.exists());
    Ok(())
}

#[tokio::test]
async fn a_backup_in_parts_uploads_verifies_and_downloads_byte_for_byte() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let server = S3Server::start(tmp.path(), "backups-bucket").await?;
    let store = S3Store::new(server.settings("prod"))?;
    let len = 2 * PART_SIZE + 12_345;
    let file = data(tmp.path(), len)?;
    let m = backup::upload(&store, &source("r1-b1"), &file).await?;
    assert_eq!((m.bytes, m.parts.len()), (len as u64, 3));
    assert_eq!(m.sha256, baton_store::sha256_file(&file)?);
    assert!(
        server
            .object_file("prod/backups/c1/r1-b1/part-00002")
            .exists()
    );
    assert_eq!(backup::verify(&store, "c1", "r1-b1").await?, m);
    let out = tmp.path().join("restored");
    backup::download(&store, "c1", "r1-b1", &out).await?;
    assert_eq!(fs::read(&out)?, fs::read(&file)?);
    let listed = backup::list(&store, "c1").await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].manifest.as_ref(), Some(&m));
    // A complete backup is never overwritten.
    let err = backup::upload(&store, &source("r1-b1"), &file)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("never overwritten"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_corrupt_part_is_named_by_key_and_a_missing_sentinel_is_not_usable() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let server = S3Server::start(tmp.path(), "backups-bucket").await?;
    let store = S3Store::new(server.settings("prod"))?;
    let file = data(tmp.path(), PART_SIZE + 10)?;
    backup::upload(&store, &source("r1-b1"), &file).await?;
    let part = server.object_file("prod/backups/c1/r1-b1/part-00001");
    let mut body = fs::read(&part)?;
    body[3] ^= 0xff;
    fs::write(&part, body)?;
    let err = backup::verify(&store, "c1", "r1-b1")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("s3://backups-bucket/prod")
            && err.contains("backups/c1/r1-b1/part-00001")
            && err.contains("corrupt"),
        "{err}"
    );

    // An upload that never wrote its sentinel.
    backup::upload(&store, &source("r1-b2"), &file).await?;
    store.delete_blob("backups/c1/r1-b2/COMPLETE").await?;
    let err = backup::verify(&store, "c1", "r1-b2")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no COMPLETE sentinel"), "{err}");
    let listed = backup::list(&store, "c1").await?;
    let b2 = listed.iter().find(|l| l.id == "r1-b2").expect("listed");
    assert!(b2.manifest.is_none(), "{b2:?}");
    Ok(())
}

#[tokio::test]
async fn a_wrong_secret_key_is_refused_without_showing_either_secret() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let server = S3Server::start(tmp.path(), "releases").await?;
    let wrong = "wrong-secret-9876543210";
    let store = S3Store::new(S3Settings {
        secret_access_key: wrong.to_owned(),
        ..server.settings("")
    })?;
    let err = store
        .put_blob("backups/c1/x/part-00000", "x".into())
        .await
        .unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(
        text.contains("SignatureDoesNotMatch")
            && text.contains("baton-test-ak")
            && !text.contains(wrong)
            && !text.contains(SECRET_KEY),
        "{text}"
    );
    assert!(
        !server.object_file("backups/c1/x/part-00000").exists(),
        "nothing was written"
    );
    Ok(())
}

#[tokio::test]
async fn a_missing_bucket_is_named() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let server = S3Server::start(tmp.path(), "releases").await?;
    let store = S3Store::new(S3Settings {
        bucket: "no-such-bucket".to_owned(),
        ..server.settings("p")
    })?;
    for (err, key) in [
        (
            store.manifest("kv", "v2").await.unwrap_err(),
            "kv/v2/manifest.toml",
        ),
        (
            backup::verify(&store, "c1", "b1").await.unwrap_err(),
            "backups/c1/b1/",
        ),
    ] {
        let text = err.to_string();
        assert!(
            text.contains("bucket no-such-bucket does not exist")
                && text.contains("s3://no-such-bucket/p")
                && text.contains(key),
            "names the bucket, the store and the key {key}: {text}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn listing_pages_through_every_key() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let server = S3Server::start(tmp.path(), "releases").await?;
    let store = S3Store::new(server.settings("p"))?.with_page_size(2);
    let mut want = Vec::new();
    for i in 0..7 {
        let key = format!("backups/c1/b{i}/part-00000");
        store.put_blob(&key, format!("{i}").into()).await?;
        want.push(key);
    }
    store.put_blob("other/x", "y".into()).await?;
    assert_eq!(store.list_blobs("backups/").await?, want);
    assert_eq!(backup::list(&store, "c1").await?.len(), 7);
    Ok(())
}

/// One HTTP/1.1 request to a loopback URL; the status and the body.
async fn raw(method: &str, url: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut s = tokio::net::TcpStream::connect(host).await?;
    let head = format!(
        "{method} /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP head");
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status");
    Ok((code, buf[split + 4..].to_vec()))
}

#[tokio::test]
async fn presigned_requests_work_without_credentials_and_only_for_their_key() -> Result<()> {
    use std::time::Duration;
    let tmp = tempfile::tempdir()?;
    let server = S3Server::start(tmp.path(), "releases").await?;
    let store = S3Store::new(server.settings("p"))?;
    let put = store
        .presign_put("backups/c1/b1/part-00000", Duration::from_secs(600))
        .await?;
    assert_eq!(put.method, "PUT");
    assert!(
        !put.url.contains(SECRET_KEY) && !format!("{put:?}").contains("X-Amz-Signature"),
        "{put:?}"
    );
    let (code, body) = raw("PUT", &put.url, b"part bytes").await?;
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        store.get_blob("backups/c1/b1/part-00000").await?.as_deref(),
        Some(&b"part bytes"[..])
    );
    let get = store
        .presign_get("backups/c1/b1/part-00000", Duration::from_secs(60))
        .await?;
    let (code, body) = raw("GET", &get.url, b"").await?;
    assert_eq!((code, body.as_slice()), (200, &b"part bytes"[..]));
    // The signature covers the key: another key with it is refused.
    let other = get.url.replace("part-00000", "part-00001");
    let (code, _) = raw("GET", &other, b"").await?;
    assert_eq!(code, 403);
    // Longer than 15 minutes is refused.
    let err = store
        .presign_get("backups/c1/b1/part-00000", Duration::from_secs(16 * 60))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most 900s"), "{err}");
    Ok(())
}
