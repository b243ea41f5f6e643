//! HTTP File Upload (XEP-0363): the service `upload.DOMAIN` hands out
//! slots (a signed PUT URL and a GET URL), and an HTTPS server of its own
//! takes the files and serves them, from a directory on local disk.
//!
//! - [`slots`]: granting a slot (the size bound, the per-user quota with
//!   the slots granted and not used yet, the signed URLs) and checking a
//!   PUT's signature. The signature carries everything a PUT needs, so the
//!   HTTP side keeps no state of its own.
//! - [`http`]: the PUT, GET, HEAD and OPTIONS handlers (CORS for web
//!   clients, files served as inert downloads).
//! - [`tls`]: the TLS listener under the HTTP server.
//! - [`sweep`]: removing files past their expiry.
//! - [`s3`]: the S3-compatible store (`[upload.s3]`): clients PUT to the
//!   bucket with presigned URLs, GETs are redirected to presigned ones.
//!
//! On local disk, files live at `DIR/<user hash>/<slot>/<file name>`, the
//! content type beside them, and in a cluster each core stores what it
//! granted: a core's `public_url` names that core. In a bucket the key is
//! `<user hash>/<slot>/<file name>`, and every core shares it.

pub mod http;
pub mod s3;
pub mod slots;
pub mod sweep;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

pub use slots::{Slot, SlotRefusal, Slots, Store};

/// The upload service's configuration (`[upload]` in the core's TOML).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadConfig {
    /// Where the HTTPS server listens.
    pub listen: SocketAddr,
    /// The URL clients reach that server at (`https://host:port`, no
    /// path); default `https://` and the address it listens at.
    #[serde(default)]
    pub public_url: Option<String>,
    /// The directory files are kept in; default `DATA_DIR/uploads`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// The service's JID (default `upload.DOMAIN`).
    #[serde(default)]
    pub jid: Option<String>,
    /// The largest file taken, in bytes.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// The most bytes one user keeps at once.
    #[serde(default = "default_quota_bytes")]
    pub quota_bytes: u64,
    /// How long a file is kept, in days.
    #[serde(default = "default_expiry_days")]
    pub expiry_days: u32,
    /// The server's certificate chain and key (PEM); default the core's
    /// cluster certificate.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// Its private key.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// An S3-compatible bucket to keep the files in instead of `dir`.
    #[serde(default)]
    pub s3: Option<s3::S3Config>,
}

fn default_max_file_bytes() -> u64 {
    100 * 1024 * 1024
}
fn default_quota_bytes() -> u64 {
    1024 * 1024 * 1024
}
fn default_expiry_days() -> u32 {
    30
}

impl UploadConfig {
    /// A service at `listen` (reached there), with the defaults.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            public_url: None,
            dir: None,
            jid: None,
            max_file_bytes: default_max_file_bytes(),
            quota_bytes: default_quota_bytes(),
            expiry_days: default_expiry_days(),
            tls_cert: None,
            tls_key: None,
            s3: None,
        }
    }

    /// The service's JID for `domain` (lower case).
    pub fn jid(&self, domain: &str) -> String {
        self.jid
            .clone()
            .unwrap_or_else(|| format!("upload.{domain}"))
            .to_ascii_lowercase()
    }

    /// Refuses a configuration that cannot work: a JID that is not a
    /// domain of its own, a public URL that is not `https://`.
    pub fn validate(&self, domain: &str) -> Result<(), String> {
        let jid = self.jid(domain);
        if jid.is_empty() || jid.contains(['@', '/']) || jid == domain.to_ascii_lowercase() {
            return Err(format!(
                "upload jid {jid:?} must be a domain other than {domain:?}"
            ));
        }
        if let Some(url) = &self.public_url
            && !url.starts_with("https://")
        {
            return Err(format!("upload public_url {url:?} must be https://"));
        }
        Ok(())
    }
}

/// The IQ answering an upload slot request (a [`crate::router::Query::UploadSlot`]):
/// the slot, or the error (XEP-0363 §4, §5). Reads the user's directory.
pub fn answer(slots: &Slots, query: &crate::router::Query, now: u64, slot: u128) -> bytes::Bytes {
    use xmpp_stream::StanzaCondition;
    use xmpp_stream::element::Element;
    use xmpp_stream::ns;
    let crate::router::Query::UploadSlot {
        user,
        filename,
        size,
        content_type,
        service,
        requester,
        iq_id,
    } = query
    else {
        return bytes::Bytes::new();
    };
    let upload = crate::router::UPLOAD;
    let iq = |kind: &str| {
        Element::new("iq", ns::CLIENT)
            .with_attr("type", kind)
            .with_attr("from", service.clone())
            .with_attr("to", requester.clone())
            .with_attr("id", iq_id.clone())
    };
    let error = |condition: StanzaCondition, extra: Option<Element>| {
        let mut error = Element::new("error", ns::CLIENT)
            .with_attr("type", condition.error_type())
            .with_child(Element::new(condition.name(), ns::STANZA_ERRORS));
        if let Some(extra) = extra {
            error = error.with_child(extra);
        }
        iq("error").with_child(error)
    };
    let reply = match slots.grant(user, filename, *size, content_type.as_deref(), now, slot) {
        Ok(granted) => {
            let mut put = Element::new("put", upload).with_attr("url", granted.put_url);
            for (name, value) in granted.put_headers {
                put = put.with_child(
                    Element::new("header", upload)
                        .with_attr("name", name)
                        .with_text(value),
                );
            }
            iq("result").with_child(
                Element::new("slot", upload)
                    .with_child(put)
                    .with_child(Element::new("get", upload).with_attr("url", granted.get_url)),
            )
        }
        Err(SlotRefusal::TooLarge { max }) => error(
            StanzaCondition::NotAcceptable,
            Some(
                Element::new("file-too-large", upload)
                    .with_child(Element::new("max-file-size", upload).with_text(max.to_string())),
            ),
        ),
        Err(SlotRefusal::Quota) => error(StanzaCondition::ResourceConstraint, None),
        Err(SlotRefusal::BadRequest) => error(StanzaCondition::BadRequest, None),
        Err(SlotRefusal::Io(e)) => {
            tracing::error!(error = %e, "reading the upload directory failed");
            error(StanzaCondition::InternalServerError, None)
        }
    };
    bytes::Bytes::from(reply.to_bytes(ns::CLIENT))
}
