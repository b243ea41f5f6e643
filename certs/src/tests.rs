//! Tests of PKI generation and of the rustls configurations.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConnection, ServerConnection};
use rustls_pki_types::ServerName;

use super::*;

const DOMAIN: &str = "example.org";
const ALPN: &[u8] = b"longlink-cm/1";

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.clone(), fs::read(&p).unwrap()))
        .collect()
}

fn sorted(mut v: Vec<PathBuf>) -> Vec<PathBuf> {
    v.sort();
    v
}

fn all_files(p: &PkiPaths, cms: u32) -> Vec<PathBuf> {
    let mut files = vec![
        p.ca_cert(),
        p.ca_key(),
        p.core_cert(),
        p.core_key(),
        p.lb_cert(),
        p.lb_key(),
        p.quic_lb_key(),
        p.cluster_key(),
    ];
    for i in 1..=cms {
        files.push(p.cm_cert(&format!("cm-{i}")));
        files.push(p.cm_key(&format!("cm-{i}")));
    }
    sorted(files)
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_creates_all_files() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pki");
    let report = init(&dir, DOMAIN, 2, false).unwrap();
    let paths = PkiPaths::new(&dir);
    assert_eq!(sorted(report.created.clone()), all_files(&paths, 2));
    assert!(report.kept.is_empty());
    for f in all_files(&paths, 2) {
        assert!(f.is_file(), "{} missing", f.display());
    }
    // No temporary files left behind.
    assert_eq!(fs::read_dir(&dir).unwrap().count(), 12);
    #[cfg(unix)]
    {
        for key in [
            paths.ca_key(),
            paths.core_key(),
            paths.cm_key("cm-1"),
            paths.cm_key("cm-2"),
            paths.cluster_key(),
        ] {
            assert_eq!(mode(&key), 0o600, "{}", key.display());
        }
        assert_eq!(mode(&paths.ca_cert()) & 0o600, 0o600);
    }
    // Everything loads through the tls helpers.
    assert_eq!(load_certs(&paths.cm_cert("cm-1")).unwrap().len(), 1);
    load_key(&paths.cm_key("cm-1")).unwrap();
    assert_eq!(load_roots(&paths.ca_cert()).unwrap().len(), 1);
}

#[test]
fn second_init_keeps_everything() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path(), DOMAIN, 2, false).unwrap();
    let before = snapshot(tmp.path());
    let report = init(tmp.path(), DOMAIN, 2, false).unwrap();
    assert!(report.created.is_empty());
    assert_eq!(
        sorted(report.kept),
        all_files(&PkiPaths::new(tmp.path()), 2)
    );
    assert_eq!(snapshot(tmp.path()), before);
    assert!(!ensure_cm(tmp.path(), DOMAIN, "cm-1", false).unwrap());
    assert_eq!(snapshot(tmp.path()), before);
}

#[test]
fn force_reissues_everything() {
    let tmp = tempfile::tempdir().unwrap();
    init(tmp.path(), DOMAIN, 1, false).unwrap();
    let before = snapshot(tmp.path());
    let report = init(tmp.path(), DOMAIN, 1, true).unwrap();
    assert!(report.kept.is_empty());
    assert_eq!(
        sorted(report.created),
        all_files(&PkiPaths::new(tmp.path()), 1)
    );
    let after = snapshot(tmp.path());
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (path, content) in &after {
        assert_ne!(&before[path], content, "{} not re-issued", path.display());
    }
    #[cfg(unix)]
    assert_eq!(mode(&PkiPaths::new(tmp.path()).ca_key()), 0o600);
}

#[test]
fn more_cms_are_added_by_the_same_ca() {
    let tmp = tempfile::tempdir().unwrap();
    let paths = PkiPaths::new(tmp.path());
    init(tmp.path(), DOMAIN, 2, false).unwrap();
    let before = snapshot(tmp.path());
    let report = init(tmp.path(), DOMAIN, 4, false).unwrap();
    let expected_new = sorted(vec![
        paths.cm_cert("cm-3"),
        paths.cm_key("cm-3"),
        paths.cm_cert("cm-4"),
        paths.cm_key("cm-4"),
    ]);
    assert_eq!(sorted(report.created), expected_new);
    assert_eq!(sorted(report.kept), all_files(&paths, 2));
    for (path, content) in &before {
        assert_eq!(&fs::read(path).unwrap(), content);
    }
    // The new CM authenticates to the core with the unchanged CA.
    handshake_cluster(&paths, &paths, "cm-4").unwrap();
    // ensure_cm issues a single extra node too.
    assert!(ensure_cm(tmp.path(), DOMAIN, "cm-7", false).unwrap());
    handshake_cluster(&paths, &paths, "cm-7").unwrap();
}

#[test]
fn ensure_cm_needs_the_ca_and_a_valid_name() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        ensure_cm(tmp.path(), DOMAIN, "cm-1", false),
        Err(CertError::MissingCa(_))
    ));
    init(tmp.path(), DOMAIN, 0, false).unwrap();
    for bad in ["core", "ca", "", "CM-1", "cm.1", "-x", "../cm-1"] {
        assert!(
            matches!(
                ensure_cm(tmp.path(), DOMAIN, bad, false),
                Err(CertError::InvalidNodeName(_))
            ),
            "{bad:?} accepted"
        );
    }
}

#[test]
fn init_without_ca_key_keeps_issued_certs_but_cannot_issue() {
    let tmp = tempfile::tempdir().unwrap();
    let paths = PkiPaths::new(tmp.path());
    init(tmp.path(), DOMAIN, 1, false).unwrap();
    fs::remove_file(paths.ca_key()).unwrap();
    let report = init(tmp.path(), DOMAIN, 1, false).unwrap();
    assert!(report.created.is_empty());
    assert!(matches!(
        init(tmp.path(), DOMAIN, 2, false),
        Err(CertError::MissingCa(p)) if p == paths.ca_key()
    ));
    assert!(!paths.ca_key().exists(), "CA must not be silently replaced");
}

#[test]
fn mismatched_pair_is_reissued() {
    let tmp = tempfile::tempdir().unwrap();
    let paths = PkiPaths::new(tmp.path());
    init(tmp.path(), DOMAIN, 2, false).unwrap();
    fs::copy(paths.cm_key("cm-2"), paths.cm_key("cm-1")).unwrap();
    let report = init(tmp.path(), DOMAIN, 2, false).unwrap();
    assert_eq!(
        sorted(report.created),
        sorted(vec![paths.cm_cert("cm-1"), paths.cm_key("cm-1")])
    );
    handshake_cluster(&paths, &paths, "cm-1").unwrap();
}

#[test]
fn node_name_from_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let paths = PkiPaths::new(tmp.path());
    init(tmp.path(), DOMAIN, 2, false).unwrap();
    let cm2 = &load_certs(&paths.cm_cert("cm-2")).unwrap()[0];
    assert_eq!(node_name_from_cert(cm2).as_deref(), Some("cm-2"));
    let core = &load_certs(&paths.core_cert()).unwrap()[0];
    assert_eq!(node_name_from_cert(core), None);
    assert!(is_core_cert(core) && !is_core_cert(cm2));
    let ca = &load_certs(&paths.ca_cert()).unwrap()[0];
    assert_eq!(node_name_from_cert(ca), None);
}

#[test]
fn load_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.pem");
    assert!(matches!(load_certs(&missing), Err(CertError::Io { path, .. }) if path == missing));
    let empty = tmp.path().join("empty.pem");
    fs::write(&empty, "").unwrap();
    assert!(matches!(load_certs(&empty), Err(CertError::NoCertificate(p)) if p == empty));
    assert!(matches!(load_key(&empty), Err(CertError::NoPrivateKey(p)) if p == empty));
}

/// Drive a rustls handshake over in-memory buffers until both sides are done or one fails.
fn handshake(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
) -> Result<(), rustls::Error> {
    for _ in 0..20 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
            server.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
            client.process_new_packets()?;
        }
        if !client.is_handshaking()
            && !server.is_handshaking()
            && !client.wants_write()
            && !server.wants_write()
        {
            return Ok(());
        }
    }
    panic!("handshake did not finish");
}

/// Core from `core_pki` against CM `node` from `cm_pki`; returns the node name the core sees.
fn handshake_cluster(
    core_pki: &PkiPaths,
    cm_pki: &PkiPaths,
    node: &str,
) -> Result<String, rustls::Error> {
    let server_cfg = cluster_server_config(
        &core_pki.ca_cert(),
        &core_pki.core_cert(),
        &core_pki.core_key(),
        ALPN,
    )
    .unwrap();
    let client_cfg = cluster_client_config(
        &cm_pki.ca_cert(),
        &cm_pki.cm_cert(node),
        &cm_pki.cm_key(node),
        ALPN,
    )
    .unwrap();
    let mut server = ServerConnection::new(Arc::new(server_cfg)).unwrap();
    let name = ServerName::try_from(CORE_SERVER_NAME).unwrap();
    let mut client = ClientConnection::new(Arc::new(client_cfg), name).unwrap();
    handshake(&mut client, &mut server)?;
    assert_eq!(
        server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(server.alpn_protocol(), Some(ALPN));
    assert_eq!(client.alpn_protocol(), Some(ALPN));
    let peer = server.peer_certificates().expect("client certificate");
    Ok(node_name_from_cert(&peer[0]).expect("node name"))
}

#[test]
fn cluster_handshake_with_client_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let paths = PkiPaths::new(tmp.path());
    init(tmp.path(), DOMAIN, 2, false).unwrap();
    assert_eq!(handshake_cluster(&paths, &paths, "cm-2").unwrap(), "cm-2");
}

#[test]
fn cluster_rejects_client_certificate_from_another_ca() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    init(ours.path(), DOMAIN, 1, false).unwrap();
    init(theirs.path(), DOMAIN, 1, false).unwrap();
    let core_pki = PkiPaths::new(ours.path());
    // A foreign CM that trusts our CA (so it accepts the core) but holds a foreign cert.
    let foreign = PkiPaths::new(theirs.path());
    fs::copy(core_pki.ca_cert(), theirs.path().join("ours-ca.pem")).unwrap();
    let server_cfg = cluster_server_config(
        &core_pki.ca_cert(),
        &core_pki.core_cert(),
        &core_pki.core_key(),
        ALPN,
    )
    .unwrap();
    let client_cfg = cluster_client_config(
        &theirs.path().join("ours-ca.pem"),
        &foreign.cm_cert("cm-1"),
        &foreign.cm_key("cm-1"),
        ALPN,
    )
    .unwrap();
    let mut server = ServerConnection::new(Arc::new(server_cfg)).unwrap();
    let name = ServerName::try_from(CORE_SERVER_NAME).unwrap();
    let mut client = ClientConnection::new(Arc::new(client_cfg), name).unwrap();
    let err = handshake(&mut client, &mut server).unwrap_err();
    assert!(
        // Same-domain CAs share a subject DN, so webpki finds a candidate issuer whose
        // signature does not verify; a differently named CA gives UnknownIssuer.
        matches!(
            err,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadSignature | rustls::CertificateError::UnknownIssuer
            )
        ),
        "{err:?}"
    );
    // And a CM trusting only its own CA rejects our core.
    assert!(handshake_cluster(&core_pki, &foreign, "cm-1").is_err());
}

#[test]
fn cm_certificate_cannot_impersonate_core() {
    let tmp = tempfile::tempdir().unwrap();
    let paths = PkiPaths::new(tmp.path());
    init(tmp.path(), DOMAIN, 2, false).unwrap();
    // cm-1 acting as server towards cm-2 (which expects the core) must fail name checks.
    let server_cfg = cluster_server_config(
        &paths.ca_cert(),
        &paths.cm_cert("cm-1"),
        &paths.cm_key("cm-1"),
        ALPN,
    )
    .unwrap();
    let client_cfg = cluster_client_config(
        &paths.ca_cert(),
        &paths.cm_cert("cm-2"),
        &paths.cm_key("cm-2"),
        ALPN,
    )
    .unwrap();
    let mut server = ServerConnection::new(Arc::new(server_cfg)).unwrap();
    let name = ServerName::try_from(CORE_SERVER_NAME).unwrap();
    let mut client = ClientConnection::new(Arc::new(client_cfg), name).unwrap();
    // The chain is valid (same CA): only the name check may refuse it.
    match handshake(&mut client, &mut server).unwrap_err() {
        rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
            expected,
            presented,
        }) => {
            assert_eq!(expected, ServerName::try_from(CORE_SERVER_NAME).unwrap());
            assert!(
                presented
                    .iter()
                    .any(|n| n.contains("cm-1.cluster.longlink")),
                "{presented:?}"
            );
        }
        other => panic!("refused for another reason than the name: {other:?}"),
    }
}

#[test]
fn client_facing_handshake_for_domain() {
    let tmp = tempfile::tempdir().unwrap();
    let paths = PkiPaths::new(tmp.path());
    init(tmp.path(), DOMAIN, 1, false).unwrap();
    let protocols: &[&[u8]] = &[b"xmpp-client"];
    let server_cfg =
        client_facing_server_config(&paths.cm_cert("cm-1"), &paths.cm_key("cm-1"), protocols)
            .unwrap();
    let client_cfg = client_config(load_roots(&paths.ca_cert()).unwrap(), protocols).unwrap();
    let server_cfg = Arc::new(server_cfg);
    let client_cfg = Arc::new(client_cfg);

    let mut server = ServerConnection::new(server_cfg.clone()).unwrap();
    let name = ServerName::try_from(DOMAIN).unwrap();
    let mut client = ClientConnection::new(client_cfg.clone(), name).unwrap();
    handshake(&mut client, &mut server).unwrap();
    assert_eq!(client.alpn_protocol(), Some(&b"xmpp-client"[..]));
    assert!(server.peer_certificates().is_none());

    // A name the certificate does not carry is refused.
    let mut server = ServerConnection::new(server_cfg).unwrap();
    let name = ServerName::try_from("other.example").unwrap();
    let mut client = ClientConnection::new(client_cfg, name).unwrap();
    assert!(handshake(&mut client, &mut server).is_err());
}
