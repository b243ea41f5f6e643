//! Public-API tests: RFC test vectors, round trips and failure cases.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use xmpp_sasl::{
    SaslError, ScramClient, ScramHash, ScramServer, StoredCredentials, fake_credentials,
    parse_client_first,
};

struct Vector {
    hash: ScramHash,
    client_nonce: &'static str,
    server_nonce: &'static str,
    salt: &'static str,
    client_final: &'static str,
    server_final: &'static str,
}

const SHA1: Vector = Vector {
    hash: ScramHash::Sha1,
    client_nonce: "fyko+d2lbbFgONRv9qkxdawL",
    server_nonce: "3rfcNHYJY1ZVvWVs7j",
    salt: "QSXCR+Q6sek8bf92",
    client_final: "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
    server_final: "v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
};

const SHA256: Vector = Vector {
    hash: ScramHash::Sha256,
    client_nonce: "rOprNGfwEbeRWgbNEkqO",
    server_nonce: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
    salt: "W22ZaJ0SNY7soEsUEjb6gQ==",
    client_final: "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
    server_final: "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
};

fn check_vector(v: &Vector) {
    let salt = B64.decode(v.salt).unwrap();
    let server_first = format!("r={}{},s={},i=4096", v.client_nonce, v.server_nonce, v.salt);

    // Client side.
    let mut client = ScramClient::with_nonce(v.hash, "user", "pencil", v.client_nonce);
    let client_first = client.client_first();
    assert_eq!(
        client_first,
        format!("n,,n=user,r={}", v.client_nonce).into_bytes()
    );
    let client_final = client.handle_server_first(server_first.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(client_final).unwrap(), v.client_final);
    client
        .verify_server_final(v.server_final.as_bytes())
        .unwrap();
    assert_eq!(client.salted_password().unwrap().len(), v.hash.output_len());

    // Server side.
    let creds = StoredCredentials::derive("pencil", &salt, 4096);
    let first = parse_client_first(&client_first).unwrap();
    assert_eq!(first.username, "user");
    assert_eq!(first.authzid, None);
    let (server, sf) = ScramServer::start_with_nonce(
        v.hash,
        first,
        &creds.salt,
        creds.iterations,
        creds.keys(v.hash),
        v.server_nonce,
    );
    assert_eq!(String::from_utf8(sf).unwrap(), server_first);
    let out = server.finish(v.client_final.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), v.server_final);
}

#[test]
fn rfc5802_scram_sha1_vector() {
    check_vector(&SHA1);
}

#[test]
fn rfc7677_scram_sha256_vector() {
    check_vector(&SHA256);
}

/// Run a full exchange; returns the server's verdict.
fn round_trip(
    hash: ScramHash,
    username: &str,
    password: &str,
    creds: &StoredCredentials,
) -> Result<(), SaslError> {
    let mut client = ScramClient::new(hash, username, password);
    let first = parse_client_first(&client.client_first())?;
    assert_eq!(first.username, username);
    let (server, server_first) =
        ScramServer::start(hash, first, &creds.salt, creds.iterations, creds.keys(hash));
    assert_eq!(server.username(), username);
    let client_final = client.handle_server_first(&server_first)?;
    let server_final = server.finish(&client_final)?;
    client.verify_server_final(&server_final)
}

#[test]
fn round_trip_both_hashes() {
    let creds = StoredCredentials::new("s3cr3t ünïcode", StoredCredentials::DEFAULT_ITERATIONS);
    assert_eq!(creds.salt.len(), 16);
    for hash in [ScramHash::Sha1, ScramHash::Sha256] {
        round_trip(hash, "juliet", "s3cr3t ünïcode", &creds).unwrap();
        round_trip(hash, "we,ird=name", "s3cr3t ünïcode", &creds).unwrap();
    }
}

#[test]
fn wrong_password_is_not_authorized() {
    let creds = StoredCredentials::new("right", 4096);
    for hash in [ScramHash::Sha1, ScramHash::Sha256] {
        let err = round_trip(hash, "juliet", "wrong", &creds).unwrap_err();
        assert_eq!(err, SaslError::InvalidProof);
        assert_eq!(err.condition(), "not-authorized");
    }
}

#[test]
fn unknown_user_with_fake_credentials_fails_like_wrong_password() {
    let fake = fake_credentials("nobody", b"server-secret");
    let err = round_trip(ScramHash::Sha256, "nobody", "guess", &fake).unwrap_err();
    assert_eq!(err.condition(), "not-authorized");
}

#[test]
fn fake_credentials_are_deterministic() {
    let a = fake_credentials("romeo", b"k1");
    assert_eq!(a, fake_credentials("romeo", b"k1"));
    assert_ne!(a.salt, fake_credentials("juliet", b"k1").salt);
    assert_ne!(a.salt, fake_credentials("romeo", b"k2").salt);
    assert_eq!(a.salt.len(), 16);
    assert_eq!(a.iterations, StoredCredentials::DEFAULT_ITERATIONS);
    assert_eq!(a.sha1.stored_key.len(), 20);
    assert_eq!(a.sha1.server_key.len(), 20);
    assert_eq!(a.sha256.stored_key.len(), 32);
    assert_eq!(a.sha256.server_key.len(), 32);
    assert!(!a.verify_password("anything"));
}

#[test]
fn verify_password() {
    let creds = StoredCredentials::derive("pencil", b"some salt", 4096);
    assert!(creds.verify_password("pencil"));
    assert!(!creds.verify_password("pencil "));
    assert!(!creds.verify_password(""));
    // SASLprep maps non-ASCII space (U+00A0) to ASCII space.
    let creds = StoredCredentials::derive("a b", b"salt", 4096);
    assert!(creds.verify_password("a\u{a0}b"));
    // new() raises a too-low iteration count.
    assert_eq!(StoredCredentials::new("x", 1).iterations, 4096);
}

fn server_for(client: &mut ScramClient, nonce: &str) -> (ScramServer, Vec<u8>) {
    let creds = StoredCredentials::derive("pencil", b"salt", 4096);
    let first = parse_client_first(&client.client_first()).unwrap();
    let (server, sf) = ScramServer::start_with_nonce(
        ScramHash::Sha256,
        first,
        &creds.salt,
        creds.iterations,
        creds.keys(ScramHash::Sha256),
        nonce,
    );
    let cf = client.handle_server_first(&sf).unwrap();
    (server, cf)
}

#[test]
fn tampered_nonce_in_client_final_is_rejected() {
    let mut client = ScramClient::with_nonce(ScramHash::Sha256, "user", "pencil", "abc");
    let (server, cf) = server_for(&mut client, "xyz");
    let cf = String::from_utf8(cf)
        .unwrap()
        .replace("r=abcxyz", "r=abcxyQ");
    assert_eq!(
        server.finish(cf.as_bytes()).unwrap_err(),
        SaslError::NonceMismatch
    );
}

#[test]
fn tampered_channel_binding_is_rejected() {
    let mut client = ScramClient::with_nonce(ScramHash::Sha256, "user", "pencil", "abc");
    let (server, cf) = server_for(&mut client, "xyz");
    // "eSws" = base64("y,,"), which differs from the client's "n,," header.
    let cf = String::from_utf8(cf).unwrap().replace("c=biws", "c=eSws");
    assert_eq!(
        server.finish(cf.as_bytes()).unwrap_err(),
        SaslError::ChannelBindingMismatch
    );
}

#[test]
fn tampered_proof_is_rejected() {
    let mut client = ScramClient::with_nonce(ScramHash::Sha256, "user", "pencil", "abc");
    let (server, cf) = server_for(&mut client, "xyz");
    let mut cf = String::from_utf8(cf).unwrap();
    let idx = cf.find(",p=").unwrap() + 3;
    let bad = if cf.as_bytes()[idx] == b'A' { "B" } else { "A" };
    cf.replace_range(idx..idx + 1, bad);
    assert_eq!(
        server.finish(cf.as_bytes()).unwrap_err(),
        SaslError::InvalidProof
    );

    let mut client = ScramClient::with_nonce(ScramHash::Sha256, "user", "pencil", "abc");
    let (server, _) = server_for(&mut client, "xyz");
    let err = server.finish(b"c=biws,r=abcxyz,p=!!!").unwrap_err();
    assert_eq!(err.condition(), "incorrect-encoding");
}

#[test]
fn client_rejects_bad_server_first() {
    let mut c = ScramClient::with_nonce(ScramHash::Sha1, "user", "pencil", "abc");
    // Nonce not extending ours.
    assert_eq!(
        c.handle_server_first(b"r=abXdef,s=QSXCR+Q6sek8bf92,i=4096")
            .unwrap_err(),
        SaslError::NonceMismatch
    );
    assert_eq!(
        c.handle_server_first(b"r=abc,s=QSXCR+Q6sek8bf92,i=4096")
            .unwrap_err(),
        SaslError::NonceMismatch
    );
    assert_eq!(
        c.handle_server_first(b"r=abcdef,s=QSXCR+Q6sek8bf92,i=1024")
            .unwrap_err(),
        SaslError::IterationsTooLow {
            got: 1024,
            min: 4096
        }
    );
    assert_eq!(
        c.handle_server_first(b"m=ext,r=abcdef,s=QSXCR+Q6sek8bf92,i=4096")
            .unwrap_err(),
        SaslError::UnsupportedExtension
    );
    assert!(
        c.handle_server_first(b"r=abcdef,s=QSXCR+Q6sek8bf92,i=-1")
            .is_err()
    );
    assert!(c.handle_server_first(b"r=abcdef,i=4096").is_err());
    assert!(c.verify_server_final(b"v=AAAA").is_err());
    c.set_min_iterations(1);
    c.handle_server_first(b"r=abcdef,s=QSXCR+Q6sek8bf92,i=1")
        .unwrap();
    assert_eq!(
        c.verify_server_final(b"e=invalid-proof").unwrap_err(),
        SaslError::ServerError("invalid-proof".into())
    );
    assert_eq!(
        c.verify_server_final(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=")
            .unwrap_err(),
        SaslError::InvalidServerSignature
    );
}

#[test]
fn parse_client_first_variants() {
    let f = parse_client_first(b"y,,n=user,r=abc").unwrap();
    assert_eq!(f.username, "user");
    assert_eq!(f.client_nonce(), "abc");

    let f = parse_client_first(b"n,a=admin=2Cx,n=a=2Cb=3Dc,r=abc,x=ext").unwrap();
    assert_eq!(f.username, "a,b=c");
    assert_eq!(f.authzid.as_deref(), Some("admin,x"));

    let cases: &[(&[u8], &str)] = &[
        (b"p=tls-unique,,n=user,r=abc", "malformed-request"),
        (b"n,,m=ext,n=user,r=abc", "malformed-request"),
        (b"n,,n=us=41er,r=abc", "malformed-request"),
        (b"n,,n=,r=abc", "malformed-request"),
        (b"n,,n=user", "malformed-request"),
        (b"n,,n=user,r=", "malformed-request"),
        (b"x,,n=user,r=abc", "malformed-request"),
        (b"n,a=bad=XX,n=user,r=abc", "invalid-authzid"),
        (b"n,,n=us\xffer,r=abc", "malformed-request"),
        (b"n,,r=abc,n=user", "malformed-request"),
        (b"", "malformed-request"),
    ];
    for (msg, cond) in cases {
        let err = parse_client_first(msg).unwrap_err();
        assert_eq!(
            err.condition(),
            *cond,
            "{:?}: {err}",
            String::from_utf8_lossy(msg)
        );
    }
    assert_eq!(
        parse_client_first(b"p=tls-unique,,n=user,r=abc").unwrap_err(),
        SaslError::ChannelBindingNotSupported
    );
    assert_eq!(
        parse_client_first(b"n,,m=ext,n=user,r=abc").unwrap_err(),
        SaslError::UnsupportedExtension
    );
    assert_eq!(
        parse_client_first(b"n,,n=us=41er,r=abc").unwrap_err(),
        SaslError::InvalidUsername
    );
}

#[test]
fn client_escapes_username_and_server_gs2_y_round_trip() {
    let c = ScramClient::with_nonce(ScramHash::Sha1, "a,b=c", "pw", "n0nce");
    assert_eq!(c.client_first(), b"n,,n=a=2Cb=3Dc,r=n0nce".to_vec());

    // A client sending "y,," must echo c=base64("y,,") = "eSws".
    let creds = StoredCredentials::derive("pencil", b"salt", 4096);
    let first = parse_client_first(b"y,,n=user,r=abc").unwrap();
    let (server, _) = ScramServer::start_with_nonce(
        ScramHash::Sha1,
        first,
        &creds.salt,
        creds.iterations,
        creds.keys(ScramHash::Sha1),
        "xyz",
    );
    let err = server
        .finish(b"c=biws,r=abcxyz,p=AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        .unwrap_err();
    assert_eq!(err, SaslError::ChannelBindingMismatch);
}

/// Found by the `sasl` fuzz target (tests/fuzz): a server-first asking for
/// millions of PBKDF2 iterations kept the client hashing for seconds, and
/// `i=4294967295` would keep a phone busy for the better part of an hour.
#[test]
fn client_refuses_an_iteration_count_above_its_maximum() {
    let mut c = ScramClient::with_nonce(
        ScramHash::Sha256,
        "user",
        "pencil",
        "fyko+d2lbbFgONRv9qkxdawL",
    );
    // the fuzzer's input
    let server_first = b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNVvVjnW=,s=QSXCR+Q7sek8bf92,i=4096096";
    assert_eq!(
        c.handle_server_first(server_first),
        Err(SaslError::IterationsTooHigh {
            got: 4_096_096,
            max: ScramClient::MAX_ITERATIONS
        })
    );
    assert_eq!(
        c.handle_server_first(b"r=fyko+d2lbbFgONRv9qkxdawLx,s=QSXCR+Q7sek8bf92,i=4294967295"),
        Err(SaslError::IterationsTooHigh {
            got: u32::MAX,
            max: ScramClient::MAX_ITERATIONS
        })
    );
    // the fuzzer's next find: the same count behind leading zeros
    let zeros = format!(
        "r=fyko+d2lbbFgONRv9qkxdawLx,s=c2FsdA==,i={}1510860223,e=ext",
        "0".repeat(90)
    );
    assert_eq!(
        c.handle_server_first(zeros.as_bytes()),
        Err(SaslError::IterationsTooHigh {
            got: 1_510_860_223,
            max: ScramClient::MAX_ITERATIONS
        })
    );
    // the maximum itself is accepted (and the refusals left no state behind)
    let at_max = format!(
        "r=fyko+d2lbbFgONRv9qkxdawLx,s=QSXCR+Q7sek8bf92,i={}",
        ScramClient::MAX_ITERATIONS
    );
    assert!(c.handle_server_first(at_max.as_bytes()).is_ok());
}
