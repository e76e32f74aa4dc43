//! The S3 store: releases and backups as objects in one bucket, through
//! aws-sdk-s3. Every SDK call baton makes is in this module.
//!
//! Layout, under the store's optional `prefix`:
//! ```text
//! <name>/<version>/manifest.toml   the release manifest; written last, once
//! <name>/<version>/<sha256>.tar    the artifact, named by its content
//! backups/...                      the backup module's objects (BlobStore)
//! ```
//! The artifact key carries its sha256, so two publishes of one version at
//! once never overwrite each other's bytes; the manifest is the commit point
//! and is written with `If-None-Match: *`, so exactly one of them wins.
//!
//! Downloads are streamed to a temp file while hashed, never held whole;
//! a body that breaks or stalls mid-way is resumed with a Range GET from the
//! byte reached, a bounded number of times, and the object's ETag must stay
//! the same. The client is path-style, ring-only rustls, with checksums
//! only where S3 requires them, and static credentials (no aws-config).
//! Errors name `s3://bucket/prefix`, the key and the S3 error code; they
//! never carry the secret key or a request's headers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::backup::{BlobStore, hex};
use crate::{ArtifactStore, ReleaseManifest, StoreError, check_name};

/// How many times one download resumes after its body breaks.
pub const MAX_RESUMES: u32 = 5;
/// A body that yields no bytes for this long is treated as broken.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest a presigned request may stay valid.
pub const PRESIGN_MAX: Duration = Duration::from_secs(15 * 60);

/// A presigned request: anyone holding it may do this one thing until it
/// expires, with no credentials of their own. Its `Debug` hides the query
/// (the signature).
#[derive(Clone, PartialEq, Eq)]
pub struct Presigned {
    pub method: String,
    pub url: String,
    /// Headers the request must carry as signed.
    pub headers: Vec<(String, String)>,
    pub expires_in: Duration,
}

impl std::fmt::Debug for Presigned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let base = self
            .url
            .split_once('?')
            .map_or(self.url.as_str(), |(b, _)| b);
        f.debug_struct("Presigned")
            .field("method", &self.method)
            .field("url", &format!("{base}?<signature redacted>"))
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Where the bucket is and who we are to it.
#[derive(Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// Keys live under `<prefix>/`; empty for the bucket's root.
    pub prefix: String,
    /// A custom endpoint (`http://127.0.0.1:9000`); `None` for AWS's own.
    pub endpoint: Option<String>,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// The endpoint agents reach the bucket at, when it is not `endpoint`:
    /// presigned requests are signed for the host they are sent to.
    pub presign_endpoint: Option<String>,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .field("presign_endpoint", &self.presign_endpoint)
            .finish()
    }
}

/// A store in an S3 bucket. Cheap to share behind an `Arc`.
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    location: String,
    access_key_id: String,
    /// Kept only to scrub it out of any error text, as a second guard.
    secrets: Vec<String>,
    /// Set once the bucket answered; a missing bucket is reported by name.
    bucket_checked: tokio::sync::OnceCell<()>,
    stall: Duration,
    max_resumes: u32,
    /// Keys per ListObjectsV2 page; `None` for the server's (1000).
    page_size: Option<i32>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("location", &self.location)
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl S3Store {
    /// Builds the client; makes no request (the bucket is checked on first
    /// use).
    pub fn new(settings: S3Settings) -> Result<S3Store, StoreError> {
        let prefix = settings.prefix.trim_matches('/').to_owned();
        let location = if prefix.is_empty() {
            format!("s3://{}", settings.bucket)
        } else {
            format!("s3://{}/{prefix}", settings.bucket)
        };
        let bad = |detail: String| StoreError::Object {
            location: location.clone(),
            key: String::new(),
            detail,
        };
        let bucket_ok = (3..=63).contains(&settings.bucket.len())
            && settings
                .bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'));
        if !bucket_ok {
            return Err(bad(format!(
                "bucket name {:?} is not valid: 3 to 63 of [a-z0-9.-]; fix `bucket` in [store]",
                settings.bucket
            )));
        }
        if !prefix.is_empty() && prefix.split('/').any(|p| check_name(p).is_err()) {
            return Err(bad(format!(
                "prefix {:?} is not valid: `/`-separated parts of [A-Za-z0-9._-], none starting with '.'; fix `prefix` in [store]",
                settings.prefix
            )));
        }
        if settings.access_key_id.is_empty() || settings.secret_access_key.is_empty() {
            return Err(bad(
                "no S3 credentials: set access_key_id and secret_access_key_file in [store], or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".to_owned(),
            ));
        }
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let credentials = Credentials::new(
            settings.access_key_id.clone(),
            settings.secret_access_key.clone(),
            settings.session_token.clone(),
            None,
            "baton-store-config",
        );
        let mut config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(settings.region.clone()))
            .force_path_style(true)
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .credentials_provider(credentials)
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .operation_attempt_timeout(Duration::from_secs(300))
                    .build(),
            )
            .http_client(http);
        if let Some(endpoint) = &settings.endpoint {
            config = config.endpoint_url(endpoint.clone());
        }
        let mut secrets = vec![settings.secret_access_key.clone()];
        secrets.extend(settings.session_token.clone());
        Ok(S3Store {
            client: Client::from_conf(config.build()),
            bucket: settings.bucket,
            prefix,
            location,
            access_key_id: settings.access_key_id,
            secrets,
            bucket_checked: tokio::sync::OnceCell::new(),
            stall: STALL_TIMEOUT,
            max_resumes: MAX_RESUMES,
            page_size: None,
        })
    }

    /// The store that signs the requests agents send: the same bucket and
    /// credentials, addressed at `presign_endpoint` when one is set. It is
    /// used only to presign.
    pub fn presigner(settings: &S3Settings) -> Result<S3Store, StoreError> {
        let mut s = settings.clone();
        if let Some(e) = &settings.presign_endpoint {
            s.endpoint = Some(e.clone());
        }
        S3Store::new(s)
    }

    /// How long a body may stall before it is resumed (tests shorten it).
    pub fn with_stall_timeout(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    /// Lists `n` keys per page (tests use a small one to page).
    pub fn with_page_size(mut self, n: i32) -> Self {
        self.page_size = Some(n);
        self
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object key of a store key: under the prefix.
    fn full_key(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn err(&self, key: &str, detail: impl Into<String>) -> StoreError {
        let mut detail = detail.into();
        for s in &self.secrets {
            if !s.is_empty() {
                detail = detail.replace(s.as_str(), "<redacted>");
            }
        }
        StoreError::Object {
            location: self.location.clone(),
            key: key.to_owned(),
            detail,
        }
    }

    /// An SDK failure as an operator reads it: the S3 code and message (or
    /// why the endpoint could not be reached), and what to do for the
    /// common ones.
    fn sdk_err<E>(&self, key: &str, op: &str, e: &SdkError<E>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
    {
        let status = e.raw_response().map(|r| r.status().as_u16());
        let detail = match (e.code(), status) {
            (Some(code), _) => {
                let msg = e.message().unwrap_or("");
                let hint = match code {
                    "NoSuchBucket" => format!(
                        "; bucket {} does not exist: create it or fix `bucket` in [store]",
                        self.bucket
                    ),
                    "SignatureDoesNotMatch" => format!(
                        "; the secret key does not match access key id {}: check secret_access_key_file or AWS_SECRET_ACCESS_KEY",
                        self.access_key_id
                    ),
                    "InvalidAccessKeyId" => format!(
                        "; access key id {} is not known to the server: check access_key_id or AWS_ACCESS_KEY_ID",
                        self.access_key_id
                    ),
                    "AccessDenied" => format!(
                        "; access key id {} may not {op} here: grant it in the bucket policy",
                        self.access_key_id
                    ),
                    _ => String::new(),
                };
                format!("{op} failed: {code}: {msg}{hint}")
            }
            (None, Some(403)) => format!(
                "{op} failed: HTTP 403: access key id {} was refused (wrong secret key or no permission)",
                self.access_key_id
            ),
            (None, Some(404)) => format!("{op} failed: HTTP 404: not found"),
            (None, Some(s)) => format!("{op} failed: HTTP {s}: {}", DisplayErrorContext(e)),
            (None, None) => format!(
                "{op} failed: the S3 endpoint did not answer: {}",
                DisplayErrorContext(e)
            ),
        };
        self.err(key, detail)
    }

    /// Checks once that the bucket exists and answers us, so that a missing
    /// bucket is reported by name (some servers answer NoSuchKey for an
    /// object in a bucket that is not there).
    /// Checks once that the bucket exists; an error names `key`, the object
    /// the caller was about to read or write.
    async fn check_bucket(&self, key: &str) -> Result<(), StoreError> {
        self.bucket_checked
            .get_or_try_init(|| async {
                let probe = self
                    .client
                    .list_objects_v2()
                    .bucket(&self.bucket)
                    .prefix(self.full_key(""))
                    .max_keys(1)
                    .send()
                    .await;
                match probe {
                    Ok(_) => Ok(()),
                    Err(e) if e.code() == Some("NoSuchBucket") => Err(self.err(
                        key,
                        format!(
                            "bucket {} does not exist: create it or fix `bucket` in [store]",
                            self.bucket
                        ),
                    )),
                    Err(e) => Err(self.sdk_err(key, "ListObjectsV2 (bucket check)", &e)),
                }
            })
            .await
            .map(|_| ())
    }

    /// Starts reading an object; `None` if there is none under `key`.
    async fn open(&self, key: &str) -> Result<Option<ObjectBody<'_>>, StoreError> {
        self.check_bucket(key).await?;
        let got = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await;
        let out = match got {
            Ok(out) => out,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                return Ok(None);
            }
            Err(e) => return Err(self.sdk_err(key, "GetObject", &e)),
        };
        let total = out
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| self.err(key, "GetObject answered without a Content-Length"))?;
        Ok(Some(ObjectBody {
            store: self,
            key: key.to_owned(),
            etag: out.e_tag().map(str::to_owned),
            body: out.body,
            offset: 0,
            total,
            resumes: 0,
        }))
    }

    /// The whole object in memory (manifests and backup parts: bounded).
    async fn get_small(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let Some(mut body) = self.open(key).await? else {
            return Ok(None);
        };
        let mut buf = BytesMut::with_capacity(usize::try_from(body.total).unwrap_or(0));
        while let Some(chunk) = body.next().await? {
            buf.extend_from_slice(&chunk);
        }
        Ok(Some(buf.freeze()))
    }

    async fn put_bytes(
        &self,
        key: &str,
        body: ByteStream,
        if_none_match: bool,
    ) -> Result<PutOutcome, StoreError> {
        self.check_bucket(key).await?;
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .body(body);
        if if_none_match {
            req = req.if_none_match("*");
        }
        match req.send().await {
            Ok(_) => Ok(PutOutcome::Written),
            Err(e) if if_none_match && e.code() == Some("PreconditionFailed") => {
                Ok(PutOutcome::AlreadyThere)
            }
            Err(e) => Err(self.sdk_err(key, "PutObject", &e)),
        }
    }

    async fn delete_key(&self, key: &str) -> Result<(), StoreError> {
        self.check_bucket(key).await?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .send()
            .await
            .map_err(|e| self.sdk_err(key, "DeleteObject", &e))?;
        Ok(())
    }

    /// Every store key (prefix stripped) starting with `prefix`, sorted,
    /// page by page.
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.check_bucket(prefix).await?;
        let root = self.full_key("");
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.full_key(prefix))
                .set_max_keys(self.page_size)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.sdk_err(prefix, "ListObjectsV2", &e))?;
            for obj in page.contents() {
                if let Some(k) = obj.key().and_then(|k| k.strip_prefix(root.as_str())) {
                    keys.push(k.to_owned());
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    fn release_keys(&self, name: &str, version: &str) -> Result<String, StoreError> {
        check_name(name)?;
        if name == "backups" {
            return Err(StoreError::Reserved(name.to_owned()));
        }
        check_name(version)?;
        Ok(format!("{name}/{version}/"))
    }

    fn manifest_path(&self, key: &str) -> PathBuf {
        PathBuf::from(format!("{}/{key}", self.location))
    }

    /// The object key of a release's artifact, as `fetch` reads it: for a
    /// presigned GET that the holder checks against `manifest.sha256`.
    pub fn artifact_key(&self, manifest: &ReleaseManifest) -> String {
        artifact_key(manifest)
    }

    fn presigning(
        &self,
        key: &str,
        expires_in: Duration,
    ) -> Result<aws_sdk_s3::presigning::PresigningConfig, StoreError> {
        check_key(key)?;
        if expires_in.is_zero() || expires_in > PRESIGN_MAX {
            return Err(self.err(
                key,
                format!(
                    "a presigned request may be valid for at most {PRESIGN_MAX:?}, not {expires_in:?}"
                ),
            ));
        }
        aws_sdk_s3::presigning::PresigningConfig::expires_in(expires_in)
            .map_err(|e| self.err(key, format!("cannot presign: {e}")))
    }

    /// A GET of store key `key` (an artifact: [`S3Store::artifact_key`]),
    /// valid for `expires_in` (at most [`PRESIGN_MAX`]). No request is made.
    pub async fn presign_get(
        &self,
        key: &str,
        expires_in: Duration,
    ) -> Result<Presigned, StoreError> {
        let config = self.presigning(key, expires_in)?;
        let req = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .presigned(config)
            .await
            .map_err(|e| self.sdk_err(key, "presign GetObject", &e))?;
        Ok(presigned(&req, expires_in))
    }

    /// A PUT of one whole object under store key `key` (a backup part, the
    /// manifest, the sentinel), valid for `expires_in` (at most
    /// [`PRESIGN_MAX`]). No request is made.
    pub async fn presign_put(
        &self,
        key: &str,
        expires_in: Duration,
    ) -> Result<Presigned, StoreError> {
        let config = self.presigning(key, expires_in)?;
        let req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .presigned(config)
            .await
            .map_err(|e| self.sdk_err(key, "presign PutObject", &e))?;
        Ok(presigned(&req, expires_in))
    }

    /// A DELETE of store key `key` (a stale part of an unfinished backup),
    /// valid for `expires_in` (at most [`PRESIGN_MAX`]). No request is made.
    pub async fn presign_delete(
        &self,
        key: &str,
        expires_in: Duration,
    ) -> Result<Presigned, StoreError> {
        let config = self.presigning(key, expires_in)?;
        let req = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.full_key(key))
            .presigned(config)
            .await
            .map_err(|e| self.sdk_err(key, "presign DeleteObject", &e))?;
        Ok(presigned(&req, expires_in))
    }

    /// Streams an object to `dest` (replaced only when complete), hashing
    /// it; returns its size and hex sha256. `None` if there is no object.
    pub async fn download(
        &self,
        key: &str,
        dest: &Path,
    ) -> Result<Option<(u64, String)>, StoreError> {
        let Some(mut body) = self.open(key).await? else {
            return Ok(None);
        };
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
        while let Some(chunk) = body.next().await? {
            hash.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(crate::io(tmp.path()))?;
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

/// The store key of a release's artifact: `<name>/<version>/<sha256>.tar`.
pub fn artifact_key(manifest: &ReleaseManifest) -> String {
    format!(
        "{}/{}/{}.tar",
        manifest.name,
        manifest.version,
        manifest.sha256.to_ascii_lowercase()
    )
}

fn presigned(req: &aws_sdk_s3::presigning::PresignedRequest, expires_in: Duration) -> Presigned {
    Presigned {
        method: req.method().to_owned(),
        url: req.uri().to_owned(),
        headers: req
            .headers()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        expires_in,
    }
}

/// A conditional put either wrote or found the object already there.
#[derive(Debug, PartialEq, Eq)]
enum PutOutcome {
    Written,
    AlreadyThere,
}

/// One object's body being read, resumed with Range GETs when it breaks.
struct ObjectBody<'a> {
    store: &'a S3Store,
    key: String,
    etag: Option<String>,
    body: ByteStream,
    offset: u64,
    total: u64,
    resumes: u32,
}

impl ObjectBody<'_> {
    /// The next bytes, `None` at the end.
    async fn next(&mut self) -> Result<Option<Bytes>, StoreError> {
        loop {
            if self.offset >= self.total {
                return Ok(None);
            }
            let broke = match tokio::time::timeout(self.store.stall, self.body.try_next()).await {
                Ok(Ok(Some(chunk))) => {
                    let left = self.total - self.offset;
                    let chunk = if chunk.len() as u64 > left {
                        chunk.slice(..usize::try_from(left).unwrap_or(chunk.len()))
                    } else {
                        chunk
                    };
                    self.offset += chunk.len() as u64;
                    return Ok(Some(chunk));
                }
                Ok(Ok(None)) => format!("the body ended at byte {} of {}", self.offset, self.total),
                Ok(Err(e)) => format!(
                    "the body broke at byte {} of {}: {}",
                    self.offset,
                    self.total,
                    DisplayErrorContext(&e)
                ),
                Err(_) => format!(
                    "the body stalled for {:?} at byte {} of {}",
                    self.store.stall, self.offset, self.total
                ),
            };
            self.resume(broke).await?;
        }
    }

    /// Continues from `offset` with a Range GET of the same object.
    async fn resume(&mut self, broke: String) -> Result<(), StoreError> {
        let store = self.store;
        if self.resumes >= store.max_resumes {
            return Err(store.err(
                &self.key,
                format!(
                    "GetObject failed: {broke}; gave up after {} resumes",
                    self.resumes
                ),
            ));
        }
        self.resumes += 1;
        let mut req = store
            .client
            .get_object()
            .bucket(&store.bucket)
            .key(store.full_key(&self.key))
            .range(format!("bytes={}-", self.offset));
        if let Some(etag) = &self.etag {
            req = req.if_match(etag);
        }
        let out = req
            .send()
            .await
            .map_err(|e| store.sdk_err(&self.key, "GetObject (resume with Range)", &e))?;
        let want = format!("bytes {}-{}/{}", self.offset, self.total - 1, self.total);
        let same_etag = match (&self.etag, out.e_tag()) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        if out.content_range() != Some(want.as_str()) || !same_etag {
            return Err(store.err(
                &self.key,
                format!(
                    "GetObject (resume with Range) answered range {:?} and ETag {:?}, wanted {want} of ETag {:?}: the object changed during the download; fetch it again",
                    out.content_range(),
                    out.e_tag(),
                    self.etag
                ),
            ));
        }
        self.body = out.body;
        Ok(())
    }
}

impl ArtifactStore for S3Store {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn manifest<'a>(
        &'a self,
        name: &'a str,
        version: &'a str,
    ) -> BoxFuture<'a, Result<ReleaseManifest, StoreError>> {
        Box::pin(async move {
            let key = format!("{}manifest.toml", self.release_keys(name, version)?);
            let Some(body) = self.get_small(&key).await? else {
                return Err(StoreError::Missing {
                    name: name.to_owned(),
                    version: version.to_owned(),
                    location: self.location.clone(),
                });
            };
            let text = String::from_utf8_lossy(&body);
            crate::parse_manifest(&text, name, version, &self.manifest_path(&key))
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
            let key = self.artifact_key(&m);
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
        manifest: &'a ReleaseManifest,
        artifact: &'a Path,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let dir = self.release_keys(&manifest.name, &manifest.version)?;
            let manifest_key = format!("{dir}manifest.toml");
            match self.manifest(&manifest.name, &manifest.version).await {
                Ok(stored) => {
                    return crate::already_stored(self.location.clone(), &stored, manifest);
                }
                Err(StoreError::Missing { .. }) => {}
                Err(e) => return Err(e),
            }
            let text = toml::to_string(manifest).map_err(|e| StoreError::BadManifest {
                name: manifest.name.clone(),
                version: manifest.version.clone(),
                path: self.manifest_path(&manifest_key),
                detail: e.to_string(),
            })?;
            let artifact_key = self.artifact_key(manifest);
            let body = ByteStream::from_path(artifact)
                .await
                .map_err(|e| crate::io(artifact)(std::io::Error::other(e)))?;
            self.put_bytes(&artifact_key, body, false).await?;
            self.put_bytes(&manifest_key, ByteStream::from(text.into_bytes()), true)
                .await?;
            // Read back what won: ours, or another publish's (the condition
            // refused ours, or a server ignored it).
            let stored = self.manifest(&manifest.name, &manifest.version).await?;
            let verdict = crate::already_stored(self.location.clone(), &stored, manifest);
            if verdict.is_err() {
                // Our artifact is nobody's: the manifest that won names its own.
                let _ = self.delete_key(&artifact_key).await;
            }
            verdict
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ReleaseManifest>, StoreError>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for key in self.list_keys("").await? {
                let parts: Vec<&str> = key.split('/').collect();
                let [name, version, "manifest.toml"] = parts[..] else {
                    continue;
                };
                if name == "backups" || check_name(name).is_err() || check_name(version).is_err() {
                    continue;
                }
                match self.manifest(name, version).await {
                    Ok(m) => out.push(m),
                    // Deleted between the listing and the read.
                    Err(StoreError::Missing { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            out.sort_by(crate::release_order);
            Ok(out)
        })
    }
}

/// A store key is `/`-separated parts that each pass [`check_name`].
fn check_key(key: &str) -> Result<(), StoreError> {
    key.split('/').try_for_each(check_name)
}

impl BlobStore for S3Store {
    fn location(&self) -> String {
        self.location.clone()
    }

    fn put_blob<'a>(&'a self, key: &'a str, body: Bytes) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            check_key(key)?;
            self.put_bytes(key, ByteStream::from(body), false).await?;
            Ok(())
        })
    }

    fn get_blob<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>, StoreError>> {
        Box::pin(async move {
            check_key(key)?;
            self.get_small(key).await
        })
    }

    fn list_blobs<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        Box::pin(async move { self.list_keys(prefix).await })
    }

    fn delete_blob<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            check_key(key)?;
            self.delete_key(key).await
        })
    }
}

#[cfg(test)]
mod tests {
    //! The resume logic against a small in-process HTTP server that breaks
    //! or stalls a GET's body on purpose (s3s-fs cannot be made to). The
    //! real-S3 behaviour is tested against s3s-fs in tests/harness.
    use super::*;
    use crate::test_server::{Answer, fake};

    fn store(endpoint: &str) -> S3Store {
        S3Store::new(S3Settings {
            bucket: "bkt".into(),
            prefix: String::new(),
            endpoint: Some(endpoint.to_owned()),
            region: "us-east-1".into(),
            access_key_id: "AKTEST".into(),
            secret_access_key: "not-a-real-secret".into(),
            session_token: None,
            presign_endpoint: None,
        })
        .unwrap()
    }

    fn body(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 977) as u8).collect()
    }

    #[tokio::test]
    async fn a_body_that_breaks_twice_resumes_with_range_from_the_byte_reached() {
        let data = body(300_000);
        let fake = fake(
            data.clone(),
            vec![Answer::BreakAfter(100_000), Answer::BreakAfter(50_000)],
        )
        .await;
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        let (size, sha) = store(&fake.endpoint)
            .download("obj", &dest)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((size, sha), (300_000, hex(&Sha256::digest(&data))));
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert_eq!(
            *fake.ranges.lock().unwrap(),
            vec![
                None,
                Some("bytes=100000-".to_owned()),
                Some("bytes=150000-".to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn a_stalled_body_resumes() {
        let data = body(80_000);
        let fake = fake(data.clone(), vec![Answer::StallAfter(30_000)]).await;
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        let (size, _) = store(&fake.endpoint)
            .with_stall_timeout(Duration::from_millis(300))
            .download("obj", &dest)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(size, 80_000);
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        let ranges = fake.ranges.lock().unwrap().clone();
        assert_eq!(ranges.len(), 2, "{ranges:?}");
        assert_eq!(ranges[1].as_deref(), Some("bytes=30000-"));
    }

    #[tokio::test]
    async fn a_body_that_keeps_breaking_gives_up_after_the_bound_and_leaves_no_file() {
        let data = body(10_000);
        let fake = fake(data, vec![Answer::BreakAfter(10); 20]).await;
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        let err = store(&fake.endpoint)
            .download("obj", &dest)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s3://bkt, object obj")
                && err.contains("gave up after 5 resumes")
                && !err.contains("not-a-real-secret"),
            "{err}"
        );
        assert_eq!(fake.ranges.lock().unwrap().len(), 1 + MAX_RESUMES as usize);
        assert!(!dest.exists());
        let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
        assert!(left.is_empty(), "the temp file is removed: {left:?}");
    }

    #[tokio::test]
    async fn an_object_that_changes_mid_download_is_refused() {
        let data = body(10_000);
        let fake = fake(data, vec![Answer::BreakAfter(4000), Answer::Changed]).await;
        let tmp = tempfile::tempdir().unwrap();
        let err = store(&fake.endpoint)
            .download("obj", &tmp.path().join("out"))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the object changed during the download"),
            "{err}"
        );
    }

    #[test]
    fn settings_and_store_debug_never_show_the_secret() {
        let s = S3Settings {
            bucket: "bkt".into(),
            prefix: "a/b".into(),
            endpoint: None,
            region: "eu-west-1".into(),
            access_key_id: "AKTEST".into(),
            secret_access_key: "very-secret".into(),
            session_token: Some("token-secret".into()),
            presign_endpoint: None,
        };
        let store = S3Store::new(s.clone()).unwrap();
        for text in [format!("{s:?}"), format!("{store:?}")] {
            assert!(
                !text.contains("very-secret") && !text.contains("token-secret"),
                "{text}"
            );
        }
        assert_eq!(ArtifactStore::location(&store), "s3://bkt/a/b");
    }

    #[test]
    fn bad_buckets_prefixes_and_missing_credentials_are_refused_by_name() {
        let ok = S3Settings {
            bucket: "bkt".into(),
            prefix: String::new(),
            endpoint: None,
            region: "us-east-1".into(),
            access_key_id: "AK".into(),
            secret_access_key: "SK".into(),
            session_token: None,
            presign_endpoint: None,
        };
        for (s, want) in [
            (
                S3Settings {
                    bucket: "Bad_Bucket".into(),
                    ..ok.clone()
                },
                "bucket name \"Bad_Bucket\" is not valid",
            ),
            (
                S3Settings {
                    prefix: "a/../b".into(),
                    ..ok.clone()
                },
                "prefix \"a/../b\" is not valid",
            ),
            (
                S3Settings {
                    secret_access_key: String::new(),
                    ..ok.clone()
                },
                "no S3 credentials",
            ),
        ] {
            let err = S3Store::new(s).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
