//! Issuing the cluster PKI (feature `issue`): CA, core, balancer and CM node
//! certificates, and the shared QUIC-LB and cluster keys. Only the
//! `longlink certs init` command and test clusters issue; the nodes
//! themselves only read (see [`crate::paths`] and [`crate::tls`]).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use tracing::{info, warn};
use x509_parser::time::ASN1Time;

use crate::CertError;
use crate::paths::{
    CORE_SERVER_NAME, LB_SERVER_NAME, NODE_NAME_SUFFIX, PkiPaths, is_valid_node_name,
};

const DAY_SECS: i64 = 24 * 60 * 60;
const CA_VALIDITY_DAYS: i64 = 3650;
const LEAF_VALIDITY_DAYS: i64 = 730;
/// Backdating of `not_before`, to tolerate small clock differences between nodes.
const BACKDATE_SECS: i64 = 60 * 60;
const KEY_MODE: u32 = 0o600;
const CERT_MODE: u32 = 0o644;

/// What init did, file by file (created / kept because it existed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitReport {
    /// Files written by this run.
    pub created: Vec<PathBuf>,
    /// Files that existed and were left untouched.
    pub kept: Vec<PathBuf>,
}

/// Make (or complete) a cluster PKI in `dir` for XMPP domain `domain` with CM nodes cm-1..cm-N.
///
/// Creates `dir` if missing. Existing key/cert pairs are kept unless `force`, in which case
/// everything is re-issued, new CA included. Missing leaf certificates are issued by the
/// existing CA (`ca.pem` + `ca.key`). A pair whose key does not match its certificate is
/// re-issued. If the CA is created anew, every leaf is re-issued too (old leaves would not
/// chain to it). If only `ca.pem` is present (CA key kept offline), init succeeds as long as
/// nothing needs to be issued.
pub fn init(dir: &Path, domain: &str, cms: u32, force: bool) -> Result<InitReport, CertError> {
    check_domain(domain)?;
    fs::create_dir_all(dir).map_err(CertError::io(dir))?;
    let paths = PkiPaths::new(dir);
    let mut report = InitReport::default();

    let (ca_cert, ca_key) = (paths.ca_cert(), paths.ca_key());
    let mut issuer: Option<Issuer<'static, KeyPair>> = None;
    let new_ca = force || (!ca_cert.exists() && !ca_key.exists());
    if new_ca {
        let (cert_pem, new_issuer) = generate_ca(domain)?;
        write_file(
            &ca_key,
            new_issuer.key().serialize_pem().as_bytes(),
            KEY_MODE,
        )?;
        write_file(&ca_cert, cert_pem.as_bytes(), CERT_MODE)?;
        info!(dir = %dir.display(), "created cluster CA");
        report.created.extend([ca_cert, ca_key]);
        issuer = Some(new_issuer);
    } else {
        if !ca_cert.exists() {
            return Err(CertError::MissingCa(ca_cert));
        }
        report.kept.push(ca_cert);
        if ca_key.exists() {
            report.kept.push(ca_key);
        }
    }

    for (path, len) in [(paths.quic_lb_key(), 16), (paths.cluster_key(), 32)] {
        if force || !path.exists() {
            let mut key = vec![0u8; len];
            rustls::crypto::ring::default_provider()
                .secure_random
                .fill(&mut key)
                .map_err(|_| CertError::Verifier("no secure random source".into()))?;
            let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
            write_file(&path, hex.as_bytes(), KEY_MODE)?;
            report.created.push(path);
        } else {
            report.kept.push(path);
        }
    }

    let mut leaves = vec![Leaf::Core, Leaf::Lb];
    leaves.extend((1..=cms).map(|i| Leaf::Cm(format!("cm-{i}"))));
    for leaf in &leaves {
        let (cert, key) = leaf.paths(&paths);
        if !new_ca && pair_matches(&cert, &key) {
            leaf.check_domain(&cert, domain);
            report.kept.extend([cert, key]);
            continue;
        }
        if issuer.is_none() {
            issuer = Some(load_ca(&paths)?);
        }
        let issuer = issuer
            .as_ref()
            .ok_or_else(|| CertError::MissingCa(paths.ca_key()))?;
        leaf.issue(issuer, domain, &cert, &key)?;
        report.created.extend([cert, key]);
    }
    Ok(report)
}

/// Issue (or keep) the certificate of one CM node (name "cm-<index>") from the existing CA.
///
/// Returns `true` if a new key/certificate pair was written, `false` if a matching pair
/// existed and `force` was not set.
pub fn ensure_cm(dir: &Path, domain: &str, node: &str, force: bool) -> Result<bool, CertError> {
    check_domain(domain)?;
    let leaf = Leaf::Cm(checked_node(node)?.to_owned());
    let paths = PkiPaths::new(dir);
    let (cert, key) = leaf.paths(&paths);
    if !force && pair_matches(&cert, &key) {
        leaf.check_domain(&cert, domain);
        return Ok(false);
    }
    let issuer = load_ca(&paths)?;
    leaf.issue(&issuer, domain, &cert, &key)?;
    Ok(true)
}

fn checked_node(node: &str) -> Result<&str, CertError> {
    if is_valid_node_name(node) {
        Ok(node)
    } else {
        Err(CertError::InvalidNodeName(node.to_owned()))
    }
}

fn check_domain(domain: &str) -> Result<(), CertError> {
    let ok = !domain.is_empty()
        && domain.len() <= 253
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(CertError::InvalidDomain(domain.to_owned()))
    }
}

enum Leaf {
    Core,
    Lb,
    Cm(String),
}

impl Leaf {
    fn paths(&self, paths: &PkiPaths) -> (PathBuf, PathBuf) {
        match self {
            Leaf::Core => (paths.core_cert(), paths.core_key()),
            Leaf::Lb => (paths.lb_cert(), paths.lb_key()),
            Leaf::Cm(node) => (paths.cm_cert(node), paths.cm_key(node)),
        }
    }

    fn params(&self, domain: &str) -> Result<CertificateParams, CertError> {
        let (cn, dns, ekus) = match self {
            Leaf::Core => (
                "core".to_owned(),
                vec![CORE_SERVER_NAME.to_owned(), "localhost".to_owned()],
                // client too: cores of a cluster dial each other
                vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
            ),
            Leaf::Lb => (
                "lb".to_owned(),
                vec![LB_SERVER_NAME.to_owned(), "localhost".to_owned()],
                vec![ExtendedKeyUsagePurpose::ServerAuth],
            ),
            Leaf::Cm(node) => (
                node.clone(),
                vec![
                    domain.to_owned(),
                    format!("{node}{NODE_NAME_SUFFIX}"),
                    "localhost".to_owned(),
                ],
                vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
            ),
        };
        let mut params = CertificateParams::default();
        params.subject_alt_names = dns
            .into_iter()
            .map(|name| Ok(SanType::DnsName(name.try_into()?)))
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        params.subject_alt_names.extend([
            SanType::IpAddress([127, 0, 0, 1].into()),
            SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()),
        ]);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = ekus;
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, LEAF_VALIDITY_DAYS)?;
        Ok(params)
    }

    fn issue(
        &self,
        issuer: &Issuer<'static, KeyPair>,
        domain: &str,
        cert: &Path,
        key: &Path,
    ) -> Result<(), CertError> {
        let params = self.params(domain)?;
        let key_pair = KeyPair::generate()?;
        let certificate = params.signed_by(&key_pair, issuer)?;
        write_file(key, key_pair.serialize_pem().as_bytes(), KEY_MODE)?;
        write_file(cert, certificate.pem().as_bytes(), CERT_MODE)?;
        info!(cert = %cert.display(), "issued certificate");
        Ok(())
    }

    /// Warn when a kept CM certificate does not name the configured XMPP domain.
    fn check_domain(&self, cert: &Path, domain: &str) {
        let Leaf::Cm(node) = self else { return };
        let Ok(pem) = fs::read(cert) else { return };
        let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(&pem) else {
            return;
        };
        let Ok(x509) = pem.parse_x509() else { return };
        let has_domain = x509
            .subject_alternative_name()
            .ok()
            .flatten()
            .is_some_and(|san| {
                san.value.general_names.iter().any(|name| {
                    matches!(name, x509_parser::extensions::GeneralName::DNSName(d)
                        if d.eq_ignore_ascii_case(domain))
                })
            });
        if !has_domain {
            warn!(
                node = %node,
                cert = %cert.display(),
                domain,
                "kept CM certificate does not name the XMPP domain; re-issue it with --force"
            );
        }
    }
}

fn generate_ca(domain: &str) -> Result<(String, Issuer<'static, KeyPair>), CertError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("longlink cluster CA for {domain}"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    set_validity(&mut params, CA_VALIDITY_DAYS)?;
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), Issuer::new(params, key)))
}

fn load_ca(paths: &PkiPaths) -> Result<Issuer<'static, KeyPair>, CertError> {
    let (cert_path, key_path) = (paths.ca_cert(), paths.ca_key());
    let read = |path: &Path| -> Result<String, CertError> {
        fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                CertError::MissingCa(path.to_owned())
            } else {
                CertError::Io {
                    path: path.to_owned(),
                    source,
                }
            }
        })
    };
    let cert_pem = read(&cert_path)?;
    let key_pem = read(&key_path)?;
    let key = KeyPair::from_pem(&key_pem).map_err(|source| CertError::InvalidCa {
        path: key_path,
        source,
    })?;
    Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|source| CertError::InvalidCa {
        path: cert_path,
        source,
    })
}

/// Whether both files exist and the certificate's public key is the key's.
fn pair_matches(cert: &Path, key: &Path) -> bool {
    let (Ok(cert_pem), Ok(key_pem)) = (fs::read(cert), fs::read_to_string(key)) else {
        return false;
    };
    let Ok(key_pair) = KeyPair::from_pem(&key_pem) else {
        return false;
    };
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(&cert_pem) else {
        return false;
    };
    let Ok(x509) = pem.parse_x509() else {
        return false;
    };
    let matches = *x509.public_key().subject_public_key.data == *key_pair.public_key_raw();
    if !matches {
        warn!(cert = %cert.display(), "certificate does not match its key; re-issuing");
    }
    matches
}

fn set_validity(params: &mut CertificateParams, days: i64) -> Result<(), CertError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| CertError::Validity)?
        .as_secs();
    let now = i64::try_from(now).map_err(|_| CertError::Validity)?;
    let at = |secs: i64| {
        ASN1Time::from_timestamp(secs)
            .map(|t| t.to_datetime())
            .map_err(|_| CertError::Validity)
    };
    params.not_before = at(now - BACKDATE_SECS)?;
    params.not_after = at(now + days * DAY_SECS)?;
    Ok(())
}

/// Write `contents` to `path` atomically (temporary file + rename); the temporary file is
/// created with `mode` so that private keys are never readable by others, even briefly.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CertError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(CertError::io(&tmp)(e));
        }
        _ => {}
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = options
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(contents)?;
            file.sync_all()
        })
        .map_err(CertError::io(&tmp))
        .and_then(|()| fs::rename(&tmp, path).map_err(CertError::io(path)));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}
