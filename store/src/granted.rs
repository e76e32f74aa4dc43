//! A store reached only through requests the coordinator presigns: what an
//! agent uses, so that it holds no S3 credentials of its own.
//!
//! For each object a command needs, the agent asks a [`Granter`] (the
//! coordinator, over the agent link) for one presigned request: that method
//! on that key, valid at most [`PRESIGN_MAX`]. It then sends the request
//! itself. The coordinator grants only what a command it sent to this member
//! needs, and it does the listing. This module owns the client side:
//! [`GrantedStore`] is a [`BlobStore`] (backups) and an [`ArtifactStore`]
//! (staging) over grants. Downloads are streamed to disk and hashed as they
//! arrive; a body that breaks or stalls resumes with a Range request under a
//! fresh grant, pinned to the object's ETag. Whether the sha256 matches is
//! decided by the caller's manifest, before anything is unpacked.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use baton_net::http::{HttpClient, parse_url};
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use hyper::{Method, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::backup::{BlobStore, hex};
use crate::s3::{MAX_RESUMES, PRESIGN_MAX, Presigned, STALL_TIMEOUT, artifact_key};
use crate::{ArtifactStore, ReleaseManifest, StoreError, check_name};

/// What a grant allows: one method on one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantMethod {
    Get,
    Put,
    Delete,
}

impl GrantMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantMethod::Get => "GET",
            GrantMethod::Put => "PUT",
            GrantMethod::Delete => "DELETE",
        }
    }

    fn http(self) -> Method {
        match self {
            GrantMethod::Get => Method::GET,
            GrantMethod::Put => Method::PUT,
            GrantMethod::Delete => Method::DELETE,
        }
    }
}

/// One granted request, and the store it reaches (`s3://bucket/prefix`,
/// for messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub request: Presigned,
    pub location: String,
}

/// Where grants come from: the agent's link to the coordinator (a fake in
/// tests).
pub trait Granter: Send + Sync + std::fmt::Debug {
    /// A presigned `method` of store key `key`. A refusal's message says
    /// why (no command in flight covers the key, the store cannot presign).
    fn presign<'a>(
        &'a self,
        method: GrantMethod,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Grant, StoreError>>;
    /// The keys under `prefix`, sorted, listed by the coordinator.
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;
}

/// The largest whole object [`GrantedStore::get_blob`] reads into memory: a
/// backup part is [`crate::backup::PART_SIZE`]; manifests are far smaller.
const MAX_BLOB: usize = 2 * crate::backup::PART_SIZE;

/// How long one request's connect, send and head may take (a part's PUT
/// sends 8 MiB within it).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Objects behind presigned requests. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct GrantedStore {
    granter: Arc<dyn Granter>,
    http: HttpClient,
    stall: Duration,
    max_resumes: u32,
    /// The store the coordinator's grants reach, once one came.
    location: std::sync::Mutex<Option<String>>,
}

/// The presigned URL without its query (the signature), for messages.
fn bare(url: &str) -> &str {
    url.split_once('?').map_or(url, |(base, _)| base)
}

impl GrantedStore {
    /// A store whose requests trust the webpki roots, or only `ca_pem` (a
    /// private CA's certificates) when given.
    pub fn new(granter: Arc<dyn Granter>, ca_pem: Option<&[u8]>) -> Result<Self, StoreError> {
        let bad_tls = |detail: String| StoreError::Object {
            location: "the coordinator's store".to_owned(),
            key: String::new(),
            detail,
        };
        let http = match ca_pem {
            None => HttpClient::new(REQUEST_TIMEOUT),
            Some(pem) => {
                use rustls::pki_types::CertificateDer;
                use rustls::pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| bad_tls(format!("ca_file: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| bad_tls(format!("ca_file: {e}")))?;
                }
                if roots.is_empty() {
                    return Err(bad_tls("ca_file holds no PEM certificate".to_owned()));
                }
                HttpClient::with_roots(roots, REQUEST_TIMEOUT)
            }
        }
        .map_err(|e| bad_tls(e.to_string()))?
        .with_user_agent(concat!("baton-agent/", env!("CARGO_PKG_VERSION")));
        Ok(GrantedStore {
            granter,
            http,
            stall: STALL_TIMEOUT,
            max_resumes: MAX_RESUMES,
            location: std::sync::Mutex::new(None),
        })
    }

    /// How long a body may stall before it is resumed (tests shorten it).
    pub fn with_stall_timeout(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    fn err(&self, key: &str, detail: impl Into<String>) -> StoreError {
        StoreError::Object {
            location: self.location_text(),
            key: key.to_owned(),
            detail: detail.into(),
        }
    }

    /// The store as the latest grant named it.
    fn location_text(&self) -> String {
        self.location
            .lock()
            .map(|l| l.clone())
            .unwrap_or_default()
            .unwrap_or_else(|| "the coordinator's store (presigned requests)".to_owned())
    }

    /// A transport failure of `what` on `key`, with the way out.
    fn transport_err(
        &self,
        key: &str,
        what: &str,
        p: &Presigned,
        e: &baton_net::http::HttpError,
    ) -> StoreError {
        use baton_net::http::HttpError as H;
        let hint = match e {
            H::Connect(_) | H::Timeout(_) => {
                "; the S3 endpoint did not answer: check that it is up and reachable from this node"
            }
            _ => "",
        };
        self.err(key, format!("{what} {}: {e}{hint}", bare(&p.url)))
    }

    /// A grant for `method` on `key`, checked: it must be that method, and
    /// valid for no longer than [`PRESIGN_MAX`].
    async fn grant(&self, method: GrantMethod, key: &str) -> Result<Presigned, StoreError> {
        key.split('/').try_for_each(check_name)?;
        let Grant {
            request: p,
            location,
        } = self.granter.presign(method, key).await?;
        if !location.is_empty()
            && let Ok(mut l) = self.location.lock()
        {
            *l = Some(location);
        }
        if !p.method.eq_ignore_ascii_case(method.as_str()) || p.expires_in > PRESIGN_MAX {
            return Err(self.err(
                key,
                format!(
                    "the coordinator granted {} valid for {:?}, not {} valid for at most {PRESIGN_MAX:?}; not sent",
                    p.method,
                    p.expires_in,
                    method.as_str()
                ),
            ));
        }
        Ok(p)
    }

    fn status_err(
        &self,
        key: &str,
        what: &str,
        p: &Presigned,
        status: StatusCode,
        body: &str,
    ) -> StoreError {
        let why = match status {
            StatusCode::FORBIDDEN => {
                "refused: the presigned request was rejected (expired, or signed for another key, endpoint or clock); "
            }
            _ => "",
        };
        self.err(
            key,
            format!(
                "{what} {} answered {status}: {why}{}",
                bare(&p.url),
                body.trim().chars().take(300).collect::<String>()
            ),
        )
    }

    /// Sends `method` on `key` with `body` under a fresh grant. Deleting a
    /// missing object is not an error.
    async fn send(&self, method: GrantMethod, key: &str, body: Bytes) -> Result<(), StoreError> {
        let p = self.grant(method, key).await?;
        let url = parse_url(&p.url).map_err(|e| self.err(key, e.to_string()))?;
        let answer = self
            .http
            .exchange(method.http(), &url, &p.headers, body)
            .await
            .map_err(|e| self.transport_err(key, method.as_str(), &p, &e))?;
        let ok = answer.status.is_success()
            || (method == GrantMethod::Delete && answer.status == StatusCode::NOT_FOUND);
        if ok {
            Ok(())
        } else {
            Err(self.status_err(key, method.as_str(), &p, answer.status, &answer.body))
        }
    }

    /// The response to a GET of `key` from `offset` (a Range GET pinned to
    /// `etag` past 0), or `None` when there is no such object.
    async fn open(
        &self,
        key: &str,
        offset: u64,
        etag: Option<&str>,
    ) -> Result<Option<hyper::Response<hyper::body::Incoming>>, StoreError> {
        let p = self.grant(GrantMethod::Get, key).await?;
        let url = parse_url(&p.url).map_err(|e| self.err(key, e.to_string()))?;
        let mut headers = p.headers.clone();
        if offset > 0 {
            headers.push(("range".to_owned(), format!("bytes={offset}-")));
            if let Some(etag) = etag {
                headers.push(("if-match".to_owned(), etag.to_owned()));
            }
        }
        let resp = self
            .http
            .open(Method::GET, &url, &headers)
            .await
            .map_err(|e| self.transport_err(key, "GET", &p, &e))?;
        let status = resp.status();
        let want = if offset > 0 {
            StatusCode::PARTIAL_CONTENT
        } else {
            StatusCode::OK
        };
        if status == want {
            return Ok(Some(resp));
        }
        if status == StatusCode::NOT_FOUND && offset == 0 {
            return Ok(None);
        }
        let body = read_limited(resp.into_body(), 4096)
            .await
            .unwrap_or_default();
        let what = if offset > 0 {
            "GET (resume with Range)"
        } else {
            "GET"
        };
        Err(self.status_err(key, what, &p, status, &String::from_utf8_lossy(&body)))
    }

    /// Streams object `key` to `dest` (replaced only when complete, mode
    /// 0644), hashing it; its size and hex sha256, or `None` if there is no
    /// object. A broken or stalled body resumes from where it broke.
    pub async fn download(
        &self,
        key: &str,
        dest: &Path,
    ) -> Result<Option<(u64, String)>, StoreError> {
        let Some(mut resp) = self.open(key, 0, None).await? else {
            return Ok(None);
        };
        let header = |resp: &hyper::Response<_>, name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let etag = header(&resp, "etag");
        let total: Option<u64> = header(&resp, "content-length").and_then(|v| v.parse().ok());
        let dir = dest
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let tmp = tempfile::Builder::new()
            .prefix(".baton-download-")
            .tempfile_in(dir)
            .map_err(crate::io(dir))?;
        let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(crate::io(tmp.path()))?);
        let mut hash = Sha256::new();
        let mut size = 0u64;
        let mut resumes = 0u32;
        loop {
            let broke = loop {
                match tokio::time::timeout(self.stall, resp.body_mut().frame()).await {
                    Ok(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data() {
                            hash.update(&data);
                            size += data.len() as u64;
                            file.write_all(&data).await.map_err(crate::io(tmp.path()))?;
                        }
                    }
                    Ok(None) if total.is_none_or(|t| size >= t) => break None,
                    Ok(None) => break Some(format!("the body ended at byte {size} of {total:?}")),
                    Ok(Some(Err(e))) => break Some(format!("the body broke at byte {size}: {e}")),
                    Err(_) => {
                        break Some(format!(
                            "the body stalled for {:?} at byte {size}",
                            self.stall
                        ));
                    }
                }
            };
            let Some(broke) = broke else { break };
            if resumes >= self.max_resumes {
                return Err(self.err(
                    key,
                    format!("GET failed: {broke}; gave up after {resumes} resumes"),
                ));
            }
            resumes += 1;
            tracing::warn!(key, resumes, "{broke}; resuming with a Range GET");
            resp = self
                .open(key, size, etag.as_deref())
                .await?
                .ok_or_else(|| self.err(key, "the object vanished during the download"))?;
            let range = header(&resp, "content-range");
            let want = total.map(|t| format!("bytes {size}-{}/{t}", t.saturating_sub(1)));
            let same = header(&resp, "etag") == etag;
            if !same || (want.is_some() && range != want) {
                return Err(self.err(
                    key,
                    format!(
                        "GET (resume with Range) answered range {range:?} and ETag {:?}, wanted {want:?} of ETag {etag:?}: the object changed during the download; fetch it again",
                        header(&resp, "etag")
                    ),
                ));
            }
        }
        file.sync_all().await.map_err(crate::io(tmp.path()))?;
        drop(file);
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
                .map_err(crate::io(tmp.path()))?;
        }
        tmp.persist(dest).map_err(|e| crate::io(dest)(e.error))?;
        Ok(Some((size, hex(&hash.finalize()))))
    }
}

/// The first `limit` bytes of `body` (the rest is dropped), or an error if
/// it is longer.
async fn read_limited(mut body: hyper::body::Incoming, limit: usize) -> Result<Bytes, String> {
    let mut out = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(format!("the object is larger than {limit} bytes"));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

impl BlobStore for GrantedStore {
    fn location(&self) -> String {
        self.location_text()
    }

    fn put_blob<'a>(&'a self, key: &'a str, body: Bytes) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.send(GrantMethod::Put, key, body))
    }

    fn get_blob<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
        Box::pin(async move {
            let Some(resp) = self.open(key, 0, None).await? else {
                return Ok(None);
            };
            let body =
                tokio::time::timeout(self.stall * 4, read_limited(resp.into_body(), MAX_BLOB))
                    .await
                    .map_err(|_| {
                        self.err(
                            key,
                            format!("GET: the body took longer than {:?}", self.stall * 4),
                        )
                    })?
                    .map_err(|e| self.err(key, format!("GET: {e}")))?;
            Ok(Some(body))
        })
    }

    fn list_blobs<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        self.granter.list(prefix)
    }

    fn delete_blob<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.send(GrantMethod::Delete, key, Bytes::new()))
    }
}

fn no_publish(what: &str) -> StoreError {
    StoreError::Object {
        location: "the coordinator's store (presigned requests)".to_owned(),
        key: String::new(),
        detail: format!(
            "an agent cannot {what}: it reaches the store only through the coordinator's presigned requests; run `baton release` where the store's credentials are"
        ),
    }
}

impl ArtifactStore for GrantedStore {
    fn location(&self) -> String {
        self.location_text()
    }

    fn manifest<'a>(
        &'a self,
        name: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<ReleaseManifest, StoreError>> {
        Box::pin(async move {
            check_name(name)?;
            check_name(version)?;
            let key = format!("{name}/{version}/manifest.toml");
            let Some(body) = self.get_blob(&key).await? else {
                return Err(StoreError::Missing {
                    name: name.to_owned(),
                    version: version.to_owned(),
                    location: self.location_text(),
                });
            };
            let text = String::from_utf8_lossy(&body);
            crate::parse_manifest(&text, name, version, Path::new(&key))
        })
    }

    fn fetch<'a>(
        &'a self,
        name: &'a str,
        version: &'a str,
        dest: &'a Path,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let m = self.manifest(name, version).await?;
            let key = artifact_key(&m);
            let Some((size, sha256)) = self.download(&key, dest).await? else {
                return Err(self.err(
                    &key,
                    format!(
                        "release {name} {version} has a manifest but no artifact; it is not usable; publish a new version"
                    ),
                ));
            };
            if size != m.size || !sha256.eq_ignore_ascii_case(&m.sha256) {
                let _ = std::fs::remove_file(dest);
                return Err(StoreError::BadChecksum {
                    name: name.to_owned(),
                    version: version.to_owned(),
                    expected: m.sha256,
                    actual: sha256,
                });
            }
            Ok(())
        })
    }

    fn put<'a>(
        &'a self,
        _manifest: &'a ReleaseManifest,
        _artifact: &'a Path,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Err(no_publish("publish a release")) })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ReleaseManifest>, StoreError>> {
        Box::pin(async { Err(no_publish("list releases")) })
    }
}

#[cfg(test)]
mod tests {
    //! The client side against an in-process HTTP server that breaks,
    //! stalls or changes a body on purpose; the real path (s3s-fs, SigV4,
    //! the coordinator's grants) is tested in tests/harness.
    use std::sync::Mutex;

    use super::*;
    use crate::test_server::{Answer, fake};

    /// Grants every request for `endpoint/bkt/<key>`, valid for `ttl`, and
    /// counts them.
    #[derive(Debug)]
    struct FakeGranter {
        endpoint: String,
        ttl: Duration,
        asked: Mutex<Vec<(GrantMethod, String)>>,
    }

    impl Granter for FakeGranter {
        fn presign<'a>(
            &'a self,
            method: GrantMethod,
            key: &'a str,
        ) -> BoxFuture<'a, Result<Grant, StoreError>> {
            self.asked.lock().unwrap().push((method, key.to_owned()));
            let request = Presigned {
                method: method.as_str().to_owned(),
                url: format!("{}/bkt/{key}?X-Amz-Signature=s3cr3t", self.endpoint),
                headers: vec![],
                expires_in: self.ttl,
            };
            Box::pin(async move {
                Ok(Grant {
                    request,
                    location: "s3://bkt".into(),
                })
            })
        }

        fn list<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
            Box::pin(async { Ok(vec![]) })
        }
    }

    fn store(endpoint: &str, ttl: Duration) -> (GrantedStore, Arc<FakeGranter>) {
        let g = Arc::new(FakeGranter {
            endpoint: endpoint.to_owned(),
            ttl,
            asked: Mutex::default(),
        });
        let s = GrantedStore::new(g.clone(), None)
            .unwrap()
            .with_stall_timeout(Duration::from_millis(300));
        (s, g)
    }

    fn body() -> Vec<u8> {
        (0..200_000u32).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_broken_or_stalled_body_resumes_under_a_fresh_grant_with_range() {
        let want = body();
        let server = fake(
            want.clone(),
            vec![
                Answer::BreakAfter(70_000),
                Answer::StallAfter(50_000),
                Answer::Full,
            ],
        )
        .await;
        let (s, g) = store(&server.endpoint, Duration::from_secs(300));
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("a.tar");
        let (size, sha) = s.download("kv/v2/x.tar", &dest).await.unwrap().unwrap();
        assert_eq!(size, want.len() as u64);
        assert_eq!(sha, hex(&Sha256::digest(&want)));
        assert_eq!(std::fs::read(&dest).unwrap(), want);
        assert_eq!(
            *server.ranges.lock().unwrap(),
            [
                None,
                Some("bytes=70000-".into()),
                Some("bytes=120000-".into())
            ]
        );
        // One grant per request: a resume never reuses a URL that may
        // have expired.
        assert_eq!(g.asked.lock().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn an_object_that_changes_mid_download_is_refused() {
        let server = fake(body(), vec![Answer::BreakAfter(1000), Answer::Changed]).await;
        let (s, _) = store(&server.endpoint, Duration::from_secs(300));
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("a.tar");
        let err = s
            .download("kv/v2/x.tar", &dest)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the object changed during the download") && err.contains("s3://bkt"),
            "{err}"
        );
        assert!(!dest.exists(), "nothing was kept");
    }

    #[tokio::test]
    async fn a_grant_longer_than_15_minutes_is_never_sent_and_no_signature_is_shown() {
        let server = fake(body(), vec![]).await;
        let (s, _) = store(&server.endpoint, Duration::from_secs(16 * 60));
        let err = s
            .get_blob("backups/c/b/COMPLETE")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not sent") && err.contains("900s"), "{err}");
        assert!(
            server.ranges.lock().unwrap().is_empty(),
            "no request went out"
        );
        // An error from the server names the URL without its signature.
        let dead = format!("http://127.0.0.1:{}", {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        });
        let (s, _) = store(&dead, Duration::from_secs(60));
        let err = s
            .put_blob("backups/c/b/part-00000", Bytes::from_static(b"x"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/bkt/backups/c/b/part-00000")
                && err.contains("the S3 endpoint did not answer")
                && !err.contains("s3cr3t"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_agent_never_publishes_or_lists_releases() {
        let (s, _) = store("http://127.0.0.1:9", Duration::from_secs(60));
        let err = ArtifactStore::list(&s).await.unwrap_err().to_string();
        assert!(err.contains("an agent cannot list releases"), "{err}");
    }
}
