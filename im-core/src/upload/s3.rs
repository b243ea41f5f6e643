//! The S3-compatible upload store: files go straight from the client to a
//! bucket (AWS S3, Garage, MinIO, Ceph's RGW...), so upload traffic never
//! passes through a core and every core of a cluster shares one store.
//!
//! - A slot's PUT URL is presigned (SigV4 query authentication) for its
//!   object, with `Content-Length` (and the requested `Content-Type`)
//!   among the signed headers: the bucket refuses another size or type.
//! - Its GET URL is the core's own (`/upload/USER/SLOT/NAME`), answered
//!   with a redirect to a short-lived presigned GET, so the bucket stays
//!   private; or, with `get_url_base`, a public bucket's or CDN's URL.
//! - The quota lists the user's objects (`USER/` prefix); the expiry
//!   sweep lists the bucket and deletes objects older than the cut.
//!
//! Signing and the S3 XML are rusty-s3's (sans-IO); the requests are made
//! with ureq, blocking, on the blocking pool (slot grants and sweeps are
//! rare next to messages).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusty_s3::actions::{
    DeleteObject, GetObject, HeadBucket, HeadObject, ListObjectsV2, PutObject,
};
use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use serde::Deserialize;

/// How long a redirect's presigned GET stays valid.
pub const GET_VALID: Duration = Duration::from_secs(3600);
/// How long a request to the store may take in all.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest listing page read (S3 pages hold at most 1000 keys).
const MAX_PAGE_BYTES: u64 = 4 * 1024 * 1024;
/// Most objects one sweep deletes (the next sweep goes on).
pub const MAX_DELETES_PER_SWEEP: usize = 10_000;
/// Most deletes one sweep sees fail before it gives up until the next.
pub const MAX_FAILED_DELETES: usize = 100;

/// The S3 store's configuration (`[upload.s3]` in the core's TOML).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// The store's endpoint (`https://s3.eu-west-1.amazonaws.com`,
    /// `http://127.0.0.1:3900`).
    pub endpoint: String,
    /// The bucket the files go to.
    pub bucket: String,
    /// The region the requests are signed for (Garage: `garage`).
    #[serde(default = "default_region")]
    pub region: String,
    /// The access key id.
    pub access_key_id: String,
    /// A file holding the secret access key (one line).
    pub secret_key_file: PathBuf,
    /// Buckets addressed as `ENDPOINT/BUCKET/KEY` (default) rather than
    /// `BUCKET.ENDPOINT/KEY`.
    #[serde(default = "default_path_style")]
    pub path_style: bool,
    /// A PEM file of the CAs the store's certificate is checked against;
    /// default Mozilla's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Where files are fetched from when the bucket is public or behind a
    /// CDN (`https://files.example.org`, the key appended); default the
    /// upload server, redirecting to a presigned GET.
    #[serde(default)]
    pub get_url_base: Option<String>,
}

fn default_region() -> String {
    "us-east-1".into()
}
fn default_path_style() -> bool {
    true
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// The configuration cannot work.
    #[error("S3 configuration: {0}")]
    Config(String),
    /// A request failed on the way (connection, TLS, timeout).
    #[error("S3 request failed: {0}")]
    Transport(String),
    /// The store answered with an error status.
    #[error("S3 answered {status} to {what}")]
    Status {
        /// What was asked.
        what: &'static str,
        /// The HTTP status.
        status: u16,
    },
    /// The store's answer could not be read.
    #[error("S3 answer unreadable: {0}")]
    Answer(String),
}

/// An S3 bucket the upload service keeps its files in.
#[derive(Clone)]
pub struct S3Store {
    bucket: Bucket,
    credentials: Arc<Credentials>,
    agent: ureq::Agent,
    get_url_base: Option<String>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // (never the credentials)
        f.debug_struct("S3Store")
            .field("bucket", &self.bucket.base_url().as_str())
            .finish_non_exhaustive()
    }
}

/// An object in a listing: its key, size and last change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Its key.
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was last written (none if the store did not say).
    pub modified: Option<SystemTime>,
}

impl S3Store {
    /// The store `config` names (reads the secret key's file).
    pub fn new(config: &S3Config) -> Result<Self, S3Error> {
        let bad = |what: String| S3Error::Config(what);
        let secret = std::fs::read_to_string(&config.secret_key_file)
            .map_err(|e| bad(format!("{}: {e}", config.secret_key_file.display())))?;
        let endpoint = config
            .endpoint
            .parse()
            .map_err(|e| bad(format!("endpoint {:?}: {e}", config.endpoint)))?;
        let style = match config.path_style {
            true => UrlStyle::Path,
            false => UrlStyle::VirtualHost,
        };
        let bucket = Bucket::new(
            endpoint,
            style,
            config.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|e| bad(format!("bucket {:?}: {e}", config.bucket)))?;
        if let Some(base) = &config.get_url_base
            && !base.starts_with("https://")
        {
            return Err(bad(format!("get_url_base {base:?} must be https://")));
        }
        let roots = match &config.ca_file {
            None => ureq::tls::RootCerts::WebPki,
            Some(path) => {
                let pem =
                    std::fs::read(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
                let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                        _ => None,
                    })
                    .collect();
                if certs.is_empty() {
                    return Err(bad(format!("{}: no certificate", path.display())));
                }
                ureq::tls::RootCerts::Specific(Arc::new(certs))
            }
        };
        let agent = ureq::Agent::new_with_config(
            ureq::config::Config::builder()
                .timeout_global(Some(REQUEST_TIMEOUT))
                .http_status_as_error(false)
                .max_redirects(0)
                .tls_config(ureq::tls::TlsConfig::builder().root_certs(roots).build())
                .build(),
        );
        Ok(Self {
            bucket,
            credentials: Arc::new(Credentials::new(
                config.access_key_id.clone(),
                secret.trim().to_owned(),
            )),
            agent,
            get_url_base: config
                .get_url_base
                .as_ref()
                .map(|b| b.trim_end_matches('/').to_owned()),
        })
    }

    /// A presigned PUT of `key`, `size` bytes long, with `content_type`
    /// if the client named one, valid for `valid`.
    pub fn presign_put(
        &self,
        key: &str,
        size: u64,
        content_type: Option<&str>,
        valid: Duration,
    ) -> String {
        let mut put = PutObject::new(&self.bucket, Some(&self.credentials), key);
        let size = size.to_string();
        put.headers_mut().insert("content-length", size);
        if let Some(t) = content_type {
            put.headers_mut().insert("content-type", t.to_owned());
        }
        put.sign(valid).to_string()
    }

    /// Where a client fetches `key`: the public base if configured, else
    /// none (the upload server redirects to [`Self::presign_get`]).
    pub fn public_get_url(&self, key: &str) -> Option<String> {
        let base = self.get_url_base.as_ref()?;
        let encoded: Vec<String> = key
            .split('/')
            .map(|s| percent_encoding::utf8_percent_encode(s, super::slots::SEGMENT).to_string())
            .collect();
        Some(format!("{base}/{}", encoded.join("/")))
    }

    /// A presigned GET of `key`, served as a download (never rendered by
    /// a browser on the bucket's origin), valid for `valid`; a HEAD if
    /// `head` (the method is signed).
    pub fn presign_get(&self, key: &str, head: bool, valid: Duration) -> String {
        if head {
            return HeadObject::new(&self.bucket, Some(&self.credentials), key)
                .sign(valid)
                .to_string();
        }
        let mut get = GetObject::new(&self.bucket, Some(&self.credentials), key);
        get.query_mut()
            .insert("response-content-disposition", "attachment");
        get.sign(valid).to_string()
    }

    /// Checks that the bucket is there and the credentials reach it.
    pub fn check(&self) -> Result<(), S3Error> {
        let url = HeadBucket::new(&self.bucket, Some(&self.credentials)).sign(REQUEST_TIMEOUT);
        let response = self
            .agent
            .head(url.as_str())
            .call()
            .map_err(|e| S3Error::Transport(e.to_string()))?;
        match response.status().as_u16() {
            200 => Ok(()),
            status => Err(S3Error::Status {
                what: "HEAD bucket",
                status,
            }),
        }
    }

    /// One page of the objects under `prefix`, after `token`; and the
    /// next page's token, if there is one.
    pub fn list(
        &self,
        prefix: &str,
        token: Option<&str>,
    ) -> Result<(Vec<Listed>, Option<String>), S3Error> {
        let mut list = ListObjectsV2::new(&self.bucket, Some(&self.credentials));
        if !prefix.is_empty() {
            list.with_prefix(prefix);
        }
        if let Some(token) = token {
            list.with_continuation_token(token);
        }
        let url = list.sign(REQUEST_TIMEOUT);
        let mut response = self
            .agent
            .get(url.as_str())
            .call()
            .map_err(|e| S3Error::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(S3Error::Status {
                what: "list objects",
                status,
            });
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_PAGE_BYTES)
            .read_to_string()
            .map_err(|e| S3Error::Transport(e.to_string()))?;
        let page =
            ListObjectsV2::parse_response(&body).map_err(|e| S3Error::Answer(format!("{e:?}")))?;
        let listed = page
            .contents
            .into_iter()
            .map(|o| Listed {
                key: o.key,
                size: o.size.unwrap_or(0),
                modified: o.last_modified.as_deref().and_then(parse_time),
            })
            .collect();
        Ok((listed, page.next_continuation_token))
    }

    /// The objects under `prefix`: their bytes and keys; refused (`None`)
    /// past `most` objects.
    pub fn usage(&self, prefix: &str, most: usize) -> Result<Option<(u64, Vec<String>)>, S3Error> {
        let (mut bytes, mut keys) = (0u64, Vec::new());
        let mut token = None;
        loop {
            let (page, next) = self.list(prefix, token.as_deref())?;
            if keys.len() + page.len() > most {
                return Ok(None);
            }
            for object in page {
                bytes = bytes.saturating_add(object.size);
                keys.push(object.key);
            }
            match next {
                Some(next) => token = Some(next),
                None => return Ok(Some((bytes, keys))),
            }
        }
    }

    /// Deletes `key`.
    pub fn delete(&self, key: &str) -> Result<(), S3Error> {
        let url =
            DeleteObject::new(&self.bucket, Some(&self.credentials), key).sign(REQUEST_TIMEOUT);
        let response = self
            .agent
            .delete(url.as_str())
            .call()
            .map_err(|e| S3Error::Transport(e.to_string()))?;
        match response.status().as_u16() {
            200 | 204 | 404 => Ok(()),
            status => Err(S3Error::Status {
                what: "delete object",
                status,
            }),
        }
    }

    /// Deletes the uploads (keys `upload_key` takes) last written before
    /// `cut`, at most [`MAX_DELETES_PER_SWEEP`]; how many went. A delete
    /// that fails is logged and passed over (the next sweep tries again),
    /// up to [`MAX_FAILED_DELETES`]; an object the store gives no time for
    /// stays.
    pub fn sweep(
        &self,
        cut: SystemTime,
        upload_key: impl Fn(&str) -> bool,
    ) -> Result<usize, S3Error> {
        let (mut removed, mut failed) = (0, 0);
        let mut token = None;
        loop {
            let (page, next) = self.list("", token.as_deref())?;
            for object in page {
                if !upload_key(&object.key) || object.modified.is_none_or(|m| m >= cut) {
                    continue;
                }
                match self.delete(&object.key) {
                    Ok(()) => removed += 1,
                    Err(e) => {
                        tracing::warn!(key = %object.key, error = %e, "deleting an expired upload failed");
                        failed += 1;
                        if failed >= MAX_FAILED_DELETES {
                            return Err(e);
                        }
                    }
                }
                if removed >= MAX_DELETES_PER_SWEEP {
                    return Ok(removed);
                }
            }
            match next {
                Some(next) => token = Some(next),
                None => return Ok(removed),
            }
        }
    }
}

/// An S3 timestamp (`2026-12-01T20:07:21.000Z`).
fn parse_time(text: &str) -> Option<SystemTime> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    let secs = u64::try_from(t.unix_timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &std::path::Path) -> S3Store {
        let secret = dir.join("secret");
        std::fs::write(&secret, "s3cr3t\n").unwrap();
        S3Store::new(&S3Config {
            endpoint: "http://127.0.0.1:3900".into(),
            bucket: "files".into(),
            region: "garage".into(),
            access_key_id: "GKtest".into(),
            secret_key_file: secret,
            path_style: true,
            ca_file: None,
            get_url_base: None,
        })
        .unwrap()
    }

    #[test]
    fn a_presigned_put_signs_its_length_and_the_named_type_and_lapses() {
        let dir = tempfile::tempdir().unwrap();
        let s3 = store(dir.path());
        let url = s3.presign_put(
            "u/s/a b.jpg",
            1234,
            Some("image/jpeg"),
            Duration::from_secs(300),
        );
        assert!(
            url.starts_with("http://127.0.0.1:3900/files/u/s/a%20b.jpg?"),
            "{url}"
        );
        assert!(
            url.contains("X-Amz-SignedHeaders=content-length%3Bcontent-type%3Bhost"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Expires=300"), "{url}");
        assert!(url.contains("X-Amz-Credential=GKtest%2F"), "{url}");
        assert!(!url.contains("s3cr3t"), "the secret never appears");
        let untyped = s3.presign_put("u/s/f", 1, None, Duration::from_secs(300));
        assert!(
            untyped.contains("X-Amz-SignedHeaders=content-length%3Bhost"),
            "{untyped}"
        );
    }

    #[test]
    fn a_presigned_get_is_a_download_and_a_public_base_is_used_as_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut s3 = store(dir.path());
        let url = s3.presign_get("u/s/f.html", false, GET_VALID);
        assert!(
            url.contains("response-content-disposition=attachment"),
            "{url}"
        );
        assert!(url.contains("X-Amz-Expires=3600"), "{url}");
        assert_eq!(s3.public_get_url("u/s/f"), None);
        s3.get_url_base = Some("https://cdn.example".into());
        assert_eq!(
            s3.public_get_url("u/s/a b.jpg").as_deref(),
            Some("https://cdn.example/u/s/a%20b.jpg")
        );
    }

    #[test]
    fn a_configuration_without_its_secret_or_with_a_plain_get_base_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = S3Config {
            endpoint: "http://127.0.0.1:3900".into(),
            bucket: "files".into(),
            region: "garage".into(),
            access_key_id: "GKtest".into(),
            secret_key_file: dir.path().join("missing"),
            path_style: true,
            ca_file: None,
            get_url_base: None,
        };
        assert!(matches!(S3Store::new(&config), Err(S3Error::Config(_))));
        std::fs::write(dir.path().join("missing"), "x").unwrap();
        let plain = S3Config {
            get_url_base: Some("http://cdn.example".into()),
            ..config
        };
        assert!(matches!(S3Store::new(&plain), Err(S3Error::Config(_))));
    }

    #[test]
    fn store_timestamps_parse_and_garbage_does_not() {
        assert_eq!(
            parse_time("1970-01-01T00:01:40.000Z"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(100))
        );
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("1960-01-01T00:00:00Z"), None);
    }
}
