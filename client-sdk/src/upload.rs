//! HTTP File Upload (XEP-0363) for the app: finding the server's upload
//! service and asking it for a slot. The app PUTs the file with its own
//! HTTP stack (the platform's, on a phone), with the slot's headers, then
//! sends the GET URL to its contacts.

use xmpp_stream::element::Element;
use xmpp_stream::ns;

use crate::{Client, ClientError};

/// The upload namespace.
pub const UPLOAD: &str = "urn:xmpp:http:upload:0";

/// The server's upload service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadService {
    /// Its JID.
    pub jid: String,
    /// The largest file it takes, if it says.
    pub max_file_bytes: Option<u64>,
}

/// A slot to upload one file to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadSlot {
    /// Where to PUT the file.
    pub put_url: String,
    /// Headers the PUT must carry.
    pub put_headers: Vec<(String, String)>,
    /// Where the file is fetched from afterwards (what to share).
    pub get_url: String,
}

impl Client {
    /// The server's upload service, if it offers one (its disco#items,
    /// then each item's disco#info).
    pub async fn upload_service(&self) -> Result<Option<UploadService>, ClientError> {
        let domain = self.jid().split('@').nth(1).unwrap_or_default();
        let domain = domain.split('/').next().unwrap_or_default().to_owned();
        let items = self
            .request_to("get", Some(&domain), Element::new("query", ns::DISCO_ITEMS))
            .await?;
        let jids: Vec<String> = items
            .child("query", ns::DISCO_ITEMS)
            .map(|q| {
                q.elements()
                    .filter_map(|i| i.attr("jid"))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        for jid in jids {
            let Ok(info) = self
                .request_to("get", Some(&jid), Element::new("query", ns::DISCO_INFO))
                .await
            else {
                continue;
            };
            let Some(query) = info.child("query", ns::DISCO_INFO) else {
                continue;
            };
            let serves = query
                .elements()
                .any(|f| f.name == "feature" && f.attr("var") == Some(UPLOAD));
            if !serves {
                continue;
            }
            let upload_form = |x: &&Element| {
                x.name == "x"
                    && x.ns == ns::DATA
                    && x.elements().any(|f| {
                        f.attr("var") == Some("FORM_TYPE")
                            && f.elements().next().is_some_and(|v| v.text() == UPLOAD)
                    })
            };
            let max_file_bytes = query
                .elements()
                .filter(upload_form)
                .flat_map(|x| x.elements())
                .find(|f| f.attr("var") == Some("max-file-size"))
                .and_then(|f| f.elements().next())
                .and_then(|v| v.text().trim().parse().ok());
            return Ok(Some(UploadService {
                jid,
                max_file_bytes,
            }));
        }
        Ok(None)
    }

    /// A slot at `service` for `filename` of `size` bytes and
    /// `content_type`. Refused with `not-acceptable` if too large,
    /// `resource-constraint` past the quota.
    pub async fn upload_slot(
        &self,
        service: &str,
        filename: &str,
        size: u64,
        content_type: Option<&str>,
    ) -> Result<UploadSlot, ClientError> {
        let mut request = Element::new("request", UPLOAD)
            .with_attr("filename", filename)
            .with_attr("size", size.to_string());
        if let Some(t) = content_type {
            request.set_attr("content-type", t);
        }
        let result = self.request_to("get", Some(service), request).await?;
        // (XEP-0363 §4: HTTPS URLs, and only these headers, one line each)
        let bad = || ClientError::StanzaError("bad-request".into());
        let slot = result.child("slot", UPLOAD).ok_or_else(bad)?;
        let put = slot.child("put", UPLOAD).ok_or_else(bad)?;
        let url = |e: Option<&Element>| {
            e.and_then(|e| e.attr("url"))
                .filter(|u| u.starts_with("https://"))
                .map(str::to_owned)
                .ok_or_else(bad)
        };
        Ok(UploadSlot {
            put_url: url(Some(put))?,
            put_headers: put
                .elements()
                .filter(|h| h.name == "header")
                .filter_map(|h| {
                    let name = h.attr("name")?;
                    let allowed = ["Authorization", "Cookie", "Expires"]
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case(name));
                    let value: String = h
                        .text()
                        .chars()
                        .filter(|c| !matches!(c, '\r' | '\n'))
                        .collect();
                    allowed.then(|| (name.to_owned(), value))
                })
                .collect(),
            get_url: url(slot.child("get", UPLOAD))?,
        })
    }
}
