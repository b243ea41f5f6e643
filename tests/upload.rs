//! HTTP File Upload (XEP-0363) end to end: a client finds the upload
//! service and gets a slot through the SDK; curl (an independent HTTP
//! client, over TLS checked against the cluster CA) puts the file, fetches
//! it, and tries what must be refused.

use std::process::Command;
use std::sync::Arc;

use client_sdk::ClientError;
use client_sdk::upload::UploadSlot;
mod support;
use support::{Cluster, bounded};

/// The content type a PUT without one declares.
const DEFAULT: &str = "application/octet-stream";

/// Runs curl with `args` on `url`; its status code, headers and body.
fn curl(ca: &std::path::Path, args: &[&str], url: &str) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (head, body) = (dir.path().join("head"), dir.path().join("body"));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(ca)
        .arg("-D")
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl runs (Debian's curl package)");
    let code = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    assert!(
        code != 0,
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = std::fs::read_to_string(&head)
        .unwrap_or_default()
        .to_ascii_lowercase();
    (code, head, std::fs::read(&body).unwrap_or_default())
}

/// PUTs `file` to `slot` with its headers (and `extra` arguments).
fn put(
    ca: &std::path::Path,
    slot: &UploadSlot,
    file: &std::path::Path,
    content_type: &str,
    extra: &[&str],
) -> u16 {
    let mut args: Vec<String> = vec!["-X".into(), "PUT".into()];
    for (name, value) in &slot.put_headers {
        args.extend(["-H".into(), format!("{name}: {value}")]);
    }
    args.extend(["-H".into(), format!("Content-Type: {content_type}")]);
    args.extend(["--data-binary".into(), format!("@{}", file.display())]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    curl(ca, &args, &slot.put_url).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_put_to_a_granted_slot_is_served_back_once_and_other_puts_and_slots_are_refused() {
    bounded(120, async {
        let configure: support::cluster::Configure = Arc::new(|c| {
            let mut upload = im_core::upload::UploadConfig::new("127.0.0.1:0".parse().unwrap());
            upload.max_file_bytes = 64 * 1024;
            upload.quota_bytes = 100 * 1024;
            c.upload = Some(upload);
        });
        let cluster = Cluster::start_configured(1, configure).await;
        cluster.add_user("alice", "secret");
        let alice = cluster.login(0, "alice", "phone").await;
        let service = alice
            .upload_service()
            .await
            .unwrap()
            .expect("an upload service");
        assert_eq!(service.jid, format!("upload.{}", support::DOMAIN));
        assert_eq!(service.max_file_bytes, Some(64 * 1024));

        let dir = tempfile::tempdir().unwrap();
        let photo = dir.path().join("photo.jpg");
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&photo, &data).unwrap();
        let slot = alice
            .upload_slot(
                &service.jid,
                "my photo.jpg",
                data.len() as u64,
                Some("image/jpeg"),
            )
            .await
            .unwrap();
        assert!(slot.put_url.starts_with("https://127.0.0.1:"), "{slot:?}");
        let ca = cluster.ca();

        // a PUT of another type, or without the signature, is refused
        assert_eq!(put(&ca, &slot, &photo, "text/html", &[]), 403);
        let unsigned = UploadSlot {
            put_headers: Vec::new(),
            ..slot.clone()
        };
        assert_eq!(put(&ca, &unsigned, &photo, "image/jpeg", &[]), 403);
        // the granted one is taken once
        assert_eq!(put(&ca, &slot, &photo, "image/jpeg", &[]), 201);
        assert_eq!(put(&ca, &slot, &photo, "image/jpeg", &[]), 409);

        // fetched back by anyone with the URL, as an inert image
        let (code, head, body) = curl(&ca, &[], &slot.get_url);
        assert_eq!(code, 200);
        assert!(body == data, "the file came back changed");
        for h in [
            "content-type: image/jpeg",
            "x-content-type-options: nosniff",
            "access-control-allow-origin: *",
            "content-disposition: inline",
        ] {
            assert!(head.contains(h), "{h} missing in {head}");
        }
        // a browser's preflight for a PUT is answered
        let (code, head, _) = curl(
            &ca,
            &[
                "-X",
                "OPTIONS",
                "-H",
                "Origin: https://web.example",
                "-H",
                "Access-Control-Request-Method: PUT",
            ],
            &slot.put_url,
        );
        assert_eq!(code, 204);
        assert!(
            head.contains("access-control-allow-methods: get, head, put, options"),
            "{head}"
        );

        // a PUT of another size, or to another slot, is refused
        let small = dir.path().join("small");
        std::fs::write(&small, vec![1u8; 1000]).unwrap();
        let slot2 = alice
            .upload_slot(&service.jid, "small.bin", 1000, None)
            .await
            .unwrap();
        assert_eq!(put(&ca, &slot2, &photo, DEFAULT, &[]), 403);
        let elsewhere = UploadSlot {
            put_url: slot2.put_url.replace("small.bin", "other.bin"),
            ..slot2.clone()
        };
        assert_eq!(put(&ca, &elsewhere, &small, DEFAULT, &[]), 403);
        // two PUTs to one slot at once: one stores it, the other is refused
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let (ca, slot2, small) = (ca.clone(), slot2.clone(), small.clone());
                std::thread::spawn(move || put(&ca, &slot2, &small, DEFAULT, &[]))
            })
            .collect();
        let mut codes: Vec<u16> = racers.into_iter().map(|r| r.join().unwrap()).collect();
        codes.sort();
        assert_eq!(codes, [201, 409]);
        assert_eq!(curl(&ca, &[], &slot2.get_url).2, vec![1u8; 1000]);

        // too large; the quota (100 KiB) counts what is stored (51 000)
        // and slots granted but not used
        let refused = alice
            .upload_slot(&service.jid, "big", 65 * 1024, None)
            .await;
        assert!(
            matches!(&refused, Err(ClientError::StanzaError(c)) if c == "not-acceptable"),
            "{refused:?}"
        );
        alice
            .upload_slot(&service.jid, "fits", 50_000, None)
            .await
            .expect("stored and held fit");
        let refused = alice.upload_slot(&service.jid, "more", 5_000, None).await;
        assert!(
            matches!(&refused, Err(ClientError::StanzaError(c)) if c == "resource-constraint"),
            "{refused:?}"
        );
        // a file that is not there is not found
        let missing = slot.get_url.replace("my%20photo.jpg", "other.jpg");
        assert_eq!(curl(&ca, &[], &missing).0, 404);
        cluster.shutdown().await;
    })
    .await;
}

/// A Garage server (the S3-compatible object store, `garage` from
/// crates.io) on loopback with one bucket and one key; killed when
/// dropped.
struct Garage {
    child: std::process::Child,
    endpoint: String,
    dir: tempfile::TempDir,
}

/// The bucket, key and secret the Garage server is seeded with.
const BUCKET: &str = "longlink-uploads";
const ACCESS_KEY: &str = "GK0123456789abcdef01234567";
const SECRET_KEY: &str = "5ec2e7f0c1d2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c";

impl Garage {
    /// Starts one, or says why it cannot (not installed): an error when
    /// `LONGLINK_REQUIRE_S3` is set.
    fn start() -> Result<Garage, String> {
        let installed = Command::new("garage").arg("--version").output().is_ok();
        if !installed {
            assert!(
                std::env::var_os("LONGLINK_REQUIRE_S3").is_none(),
                "LONGLINK_REQUIRE_S3 is set but Garage's `garage` is not installed"
            );
            return Err("Garage (`cargo install garage`) is not installed".into());
        }
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| e.to_string())
        };
        let (s3, rpc) = (free()?, free()?);
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = dir.path().join("garage.toml");
        let d = dir.path().display();
        std::fs::write(
            &config,
            format!(
                "metadata_dir = \"{d}/meta\"\ndata_dir = \"{d}/data\"\n\
                 db_engine = \"sqlite\"\nreplication_factor = 1\n\
                 rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\n\
                 rpc_secret = \"{SECRET_KEY}\"\n\
                 [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let log = std::fs::File::create(dir.path().join("log")).map_err(|e| e.to_string())?;
        let child = Command::new("garage")
            .arg("-c")
            .arg(&config)
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", ACCESS_KEY)
            .env("GARAGE_DEFAULT_SECRET_KEY", SECRET_KEY)
            .env("GARAGE_DEFAULT_BUCKET", BUCKET)
            .env("RUST_LOG", "garage=info")
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?;
        let garage = Garage {
            child,
            endpoint: format!("http://127.0.0.1:{s3}"),
            dir,
        };
        // (up once its S3 port answers and the bucket is made)
        let log = garage.dir.path().join("log");
        for _ in 0..300 {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if std::net::TcpStream::connect(("127.0.0.1", s3)).is_ok() && text.contains(BUCKET) {
                return Ok(garage);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!(
            "garage did not start: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// The upload store's configuration for this server's bucket at
    /// `endpoint`, its certificate checked against `ca`.
    fn config(&self, endpoint: &str, ca: std::path::PathBuf) -> im_core::upload::s3::S3Config {
        let secret = self.dir.path().join("s3.secret");
        std::fs::write(&secret, SECRET_KEY).expect("secret file");
        im_core::upload::s3::S3Config {
            endpoint: endpoint.to_owned(),
            bucket: BUCKET.into(),
            region: "garage".into(),
            access_key_id: ACCESS_KEY.into(),
            secret_key_file: secret,
            path_style: true,
            ca_file: Some(ca),
            get_url_base: None,
        }
    }
}

/// Garage's S3 API behind TLS, as deployed (Garage speaks plain HTTP and
/// leaves TLS to a reverse proxy; XEP-0363 URLs are HTTPS): takes TLS
/// connections on `listener` with the cluster's certificate (read from
/// `pki` once the cluster made it) and relays each to `backend`.
async fn tls_front(
    listener: tokio::net::TcpListener,
    pki: certs::PkiPaths,
    backend: std::net::SocketAddr,
) {
    let mut acceptor = None;
    while let Ok((tcp, _)) = listener.accept().await {
        let acceptor = acceptor.get_or_insert_with(|| {
            let mut tls = certs::client_facing_server_config(
                &pki.core_cert(),
                &pki.core_key(),
                &[b"http/1.1"],
            )
            .expect("the cluster's certificate");
            tls.alpn_protocols.clear();
            tokio_rustls::TlsAcceptor::from(Arc::new(tls))
        });
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let (Ok(mut tls), Ok(mut plain)) = (
                acceptor.accept(tcp).await,
                tokio::net::TcpStream::connect(backend).await,
            ) else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
        });
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_s3_store_files_go_to_the_bucket_by_presigned_put_come_back_by_redirect_and_count_and_expire()
 {
    let garage = match Garage::start() {
        Ok(g) => g,
        Err(why) => {
            eprintln!("skipped: {why}");
            return;
        }
    };
    bounded(120, async {
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("https://{}", front.local_addr().unwrap());
        let pki = Arc::new(std::sync::Mutex::new(None));
        let seen = pki.clone();
        let s3 = garage.config(&endpoint, std::path::PathBuf::new());
        let configure: support::cluster::Configure = Arc::new(move |c| {
            let mut upload = im_core::upload::UploadConfig::new("127.0.0.1:0".parse().unwrap());
            upload.max_file_bytes = 64 * 1024;
            upload.quota_bytes = 100 * 1024;
            let paths = certs::PkiPaths::new(&c.pki_dir);
            upload.s3 = Some(im_core::upload::s3::S3Config {
                ca_file: Some(paths.ca_cert()),
                ..s3.clone()
            });
            *seen.lock().unwrap() = Some(paths);
            c.upload = Some(upload);
        });
        let backend = garage
            .endpoint
            .trim_start_matches("http://")
            .parse()
            .unwrap();
        let relay = tokio::spawn({
            let pki = pki.clone();
            async move {
                // (the cluster makes its PKI before its core reads the
                // configuration; the front reads it at its first accept)
                let pki = loop {
                    if let Some(p) = pki.lock().unwrap().clone() {
                        break p;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                };
                tls_front(front, pki, backend).await
            }
        });
        let mut cluster = Cluster::start_configured(1, configure).await;
        cluster.add_user("alice", "secret");
        let alice = cluster.login(0, "alice", "phone").await;
        let service = alice.upload_service().await.unwrap().expect("a service");
        let dir = tempfile::tempdir().unwrap();
        let photo = dir.path().join("photo.jpg");
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&photo, &data).unwrap();
        let slot = alice
            .upload_slot(&service.jid, "my photo.jpg", 50_000, Some("image/jpeg"))
            .await
            .unwrap();
        // the PUT goes to the bucket itself, its signature in the URL
        let bucket_url = format!("{endpoint}/{BUCKET}/");
        assert!(slot.put_url.starts_with(&bucket_url), "{slot:?}");
        assert!(slot.put_headers.is_empty(), "{slot:?}");
        assert!(slot.get_url.starts_with("https://127.0.0.1:"), "{slot:?}");
        let ca = cluster.ca();

        // the bucket refuses another type, another size, another key
        // (before the body: the client waits for 100-continue, so the
        // refusal is read, not cut off by the closing connection)
        let wait = ["-H", "Expect: 100-continue"];
        assert_eq!(put(&ca, &slot, &photo, "text/html", &wait), 403);
        let small = dir.path().join("small");
        std::fs::write(&small, vec![1u8; 1000]).unwrap();
        assert_eq!(put(&ca, &slot, &small, "image/jpeg", &wait), 403);
        let elsewhere = UploadSlot {
            put_url: slot.put_url.replace("my%20photo.jpg", "other.jpg"),
            ..slot.clone()
        };
        assert_eq!(put(&ca, &elsewhere, &photo, "image/jpeg", &wait), 403);
        assert_eq!(put(&ca, &slot, &photo, "image/jpeg", &[]), 200);

        // the GET URL redirects to a presigned GET of the object, which
        // serves it as a download
        let (code, head, _) = curl(&ca, &[], &slot.get_url);
        assert_eq!(code, 302);
        let location = head
            .lines()
            .find_map(|l| l.strip_prefix("location: "))
            .expect("a location")
            .trim()
            .to_owned();
        assert!(location.starts_with(&bucket_url), "{location}");
        let (code, head, body) = curl(&ca, &["-L"], &slot.get_url);
        assert_eq!(code, 200);
        assert!(body == data, "the file came back changed");
        assert!(head.contains("content-disposition: attachment"), "{head}");
        // a HEAD (clients learn the size first) is redirected to a HEAD
        let (code, head, _) = curl(&ca, &["-I", "-L"], &slot.get_url);
        assert_eq!(code, 200, "{head}");
        assert!(head.contains("content-length: 50000"), "{head}");
        // (a URL not naming a slot is not redirected)
        let bad = slot.get_url.replace("/upload/", "/upload/x");
        assert_eq!(curl(&ca, &[], &bad).0, 404);

        // the quota (100 KiB) counts the object the bucket lists (50 000)
        // and the slot granted but not used
        alice
            .upload_slot(&service.jid, "fits", 50_000, None)
            .await
            .expect("stored and held fit");
        let over_quota = |r: &Result<UploadSlot, ClientError>| {
            matches!(r, Err(ClientError::StanzaError(c)) if c == "resource-constraint")
        };
        let refused = alice.upload_slot(&service.jid, "more", 5_000, None).await;
        assert!(over_quota(&refused), "{refused:?}");
        // a restarted core has no reservations: only the listing counts
        drop(alice);
        cluster.stop_core().await;
        cluster.start_core().await;
        let alice = cluster.login_retrying(0, "alice", "tablet").await;
        let refused = alice.upload_slot(&service.jid, "big", 53_000, None).await;
        assert!(over_quota(&refused), "{refused:?}");
        alice
            .upload_slot(&service.jid, "fits", 52_000, None)
            .await
            .expect("what the listing leaves fits");
        // an object in the bucket that is not an upload
        let other = im_core::upload::s3::S3Store::new(&garage.config(&endpoint, ca.clone()))
            .unwrap()
            .presign_put("notes.txt", 5, None, std::time::Duration::from_secs(60));
        let notes = dir.path().join("notes");
        std::fs::write(&notes, b"notes").unwrap();
        let other = UploadSlot {
            put_url: other,
            put_headers: Vec::new(),
            get_url: String::new(),
        };
        assert_eq!(put(&ca, &other, &notes, DEFAULT, &[]), 200);

        // the sweep deletes what is older than its cut, and only that
        let store =
            im_core::upload::s3::S3Store::new(&garage.config(&endpoint, ca.clone())).unwrap();
        let (kept, _) = tokio::task::spawn_blocking(move || {
            let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
            let uploads = im_core::upload::slots::is_upload_key;
            assert_eq!(store.sweep(past, uploads).unwrap(), 0);
            let future = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
            assert_eq!(store.sweep(future, uploads).unwrap(), 1);
            store.list("", None).unwrap()
        })
        .await
        .unwrap();
        let kept: Vec<&str> = kept.iter().map(|o| o.key.as_str()).collect();
        assert_eq!(kept, ["notes.txt"], "only uploads are swept");
        cluster.shutdown().await;
        relay.abort();
    })
    .await;
}
