//! FAST's Hashed Token mechanisms through the public API: vectors recorded
//! from Python's `hmac` and from @xmpp/client's own mechanism, round trips
//! for each channel-binding type, refusals, and (where `python3` runs) a
//! live cross-check of random inputs against Python's `hmac`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use xmpp_sasl::ht::HT_HASH_LEN;
use xmpp_sasl::{ChannelBindings, HtClient, HtMechanism, SaslError, ht_verify, parse_ht_initial};

/// The token of XEP-0484's example.
const TOKEN: &str = "WXZzciBwYmFmdmZnZiBqdmd1IGp2eXFhcmZm";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A connection with both bindings known: the exporter is bytes 0..32,
/// the end point SHA-256 of a fixed byte string.
fn bindings() -> ChannelBindings {
    ChannelBindings {
        tls_exporter: Some((0u8..32).collect()),
        tls_server_end_point: Some(unhex(
            "079beff52c3db22643735fb95e56423c59d4186416f6ae4b7716a4c9a691e09e",
        )),
    }
}

struct Vector {
    mechanism: HtMechanism,
    initiator: &'static str,
    responder: &'static str,
}

/// Recorded from Python 3.11: `hmac.new(TOKEN, b"Initiator" + cb, sha256)`
/// and the same with `b"Responder"`.
const VECTORS: [Vector; 3] = [
    Vector {
        mechanism: HtMechanism::Sha256None,
        initiator: "9097787461a184e0fa84ec00c1381190b6c4d16a8ec4453c7b2ac5e7fcf935ed",
        responder: "4e513409631474863b986c9f3e8c1e27ca29d1d7ab9ed4097e7afd6007bf9c62",
    },
    Vector {
        mechanism: HtMechanism::Sha256Expr,
        initiator: "0c5745576afeea711960549186a31a65c9f328205ee38b66825b3d4c872b395c",
        responder: "1260579b34d55aeba4e43062a412db609a0a7153abd218b0f148445c4e83529f",
    },
    Vector {
        mechanism: HtMechanism::Sha256Endp,
        initiator: "6137111af9602f9e9c374040c9090e659e74df48f6c3aa687d80d9c77d90d67c",
        responder: "c49b3a7d28fbad403a8b822380ebbd3e509d07ba0a871a2496d377dd400bc255",
    },
];

#[test]
fn client_and_server_match_the_recorded_vectors_for_each_binding() {
    let cb = bindings();
    for v in &VECTORS {
        let client = HtClient::new(v.mechanism, "user", TOKEN, &cb).unwrap();
        let initial = client.initial_response();
        let mut expected = b"user\0".to_vec();
        expected.extend(unhex(v.initiator));
        assert_eq!(initial, expected, "{}", v.mechanism.name());

        let parsed = parse_ht_initial(&initial).unwrap();
        assert_eq!(parsed.authcid, "user");
        let verified = ht_verify(v.mechanism, &cb, &parsed, &[TOKEN]).unwrap();
        assert_eq!(verified.index, 0);
        assert_eq!(
            verified.responder,
            unhex(v.responder),
            "{}",
            v.mechanism.name()
        );
        client.verify_responder(&verified.responder).unwrap();
    }
}

#[test]
fn initial_response_matches_what_xmpp_client_0_14_sends() {
    // @xmpp/sasl-ht-sha-256-none 0.14.0 (the mechanism @xmpp/client 0.14
    // uses), `encode(await new Mechanism().response({username: "user",
    // password: TOKEN}))`, recorded with Node 20. Its hash holds a NUL
    // octet: the authcid ends at the first one.
    let recorded = "dXNlcgCQl3h0YaGE4PqE7ADBOBGQtsTRao7ERTx7KsXn/Pk17Q==";
    let client = HtClient::new(
        HtMechanism::Sha256None,
        "user",
        TOKEN,
        &ChannelBindings::none(),
    )
    .unwrap();
    assert_eq!(B64.encode(client.initial_response()), recorded);
    let parsed = parse_ht_initial(&B64.decode(recorded).unwrap()).unwrap();
    let verified = ht_verify(
        HtMechanism::Sha256None,
        &ChannelBindings::none(),
        &parsed,
        &[TOKEN],
    )
    .unwrap();
    client.verify_responder(&verified.responder).unwrap();
}

#[test]
fn server_finds_the_matching_slot_among_candidates() {
    let cb = bindings();
    let client = HtClient::new(HtMechanism::Sha256Expr, "alice", "new-token", &cb).unwrap();
    let parsed = parse_ht_initial(&client.initial_response()).unwrap();
    let verified = ht_verify(
        HtMechanism::Sha256Expr,
        &cb,
        &parsed,
        &["current-token", "new-token"],
    )
    .unwrap();
    assert_eq!(verified.index, 1);
    client.verify_responder(&verified.responder).unwrap();
    // the same token twice: the first match is reported
    let twice = ht_verify(
        HtMechanism::Sha256Expr,
        &cb,
        &parsed,
        &["new-token", "new-token"],
    );
    assert_eq!(twice.unwrap().index, 0);
}

#[test]
fn wrong_token_wrong_binding_or_wrong_mechanism_fail() {
    let cb = bindings();
    let client = HtClient::new(HtMechanism::Sha256Expr, "alice", TOKEN, &cb).unwrap();
    let parsed = parse_ht_initial(&client.initial_response()).unwrap();

    // another token, or none at all
    assert_eq!(
        ht_verify(HtMechanism::Sha256Expr, &cb, &parsed, &["other"]),
        Err(SaslError::InvalidProof)
    );
    assert_eq!(
        ht_verify(HtMechanism::Sha256Expr, &cb, &parsed, &[]),
        Err(SaslError::InvalidProof)
    );
    // another connection's exporter (a relayed exchange)
    let other_conn = ChannelBindings {
        tls_exporter: Some(vec![0xAA; 32]),
        ..bindings()
    };
    assert_eq!(
        ht_verify(HtMechanism::Sha256Expr, &other_conn, &parsed, &[TOKEN]),
        Err(SaslError::InvalidProof)
    );
    // the same proof presented as another mechanism (a downgrade to -NONE)
    assert_eq!(
        ht_verify(HtMechanism::Sha256None, &cb, &parsed, &[TOKEN]),
        Err(SaslError::InvalidProof)
    );
    // a binding this connection does not have: not offered here
    let no_endpoint = ChannelBindings {
        tls_server_end_point: None,
        ..bindings()
    };
    assert_eq!(
        ht_verify(HtMechanism::Sha256Endp, &no_endpoint, &parsed, &[TOKEN]),
        Err(SaslError::ChannelBindingUnavailable)
    );
    assert_eq!(
        HtClient::new(HtMechanism::Sha256Endp, "alice", TOKEN, &no_endpoint).map(|_| ()),
        Err(SaslError::ChannelBindingUnavailable)
    );
    assert_eq!(
        SaslError::ChannelBindingUnavailable.condition(),
        "invalid-mechanism"
    );
    // a forged responder message
    let verified = ht_verify(HtMechanism::Sha256Expr, &cb, &parsed, &[TOKEN]).unwrap();
    let mut forged = verified.responder.clone();
    forged[0] ^= 1;
    assert_eq!(
        client.verify_responder(&forged),
        Err(SaslError::InvalidServerSignature)
    );
    assert_eq!(
        client.verify_responder(&verified.responder[..31]),
        Err(SaslError::InvalidServerSignature)
    );
}

#[test]
fn malformed_initial_responses_are_refused() {
    let hash = [7u8; HT_HASH_LEN];
    let with = |authcid: &[u8], tail: &[u8]| {
        let mut m = authcid.to_vec();
        m.push(0);
        m.extend_from_slice(tail);
        parse_ht_initial(&m)
    };
    assert!(with(b"user", &hash).is_ok());
    assert!(matches!(
        parse_ht_initial(b"user-without-nul"),
        Err(SaslError::Malformed(_))
    ));
    assert!(matches!(
        with(b"user", &hash[..31]),
        Err(SaslError::Malformed(_))
    ));
    let mut long = hash.to_vec();
    long.push(0);
    assert!(matches!(with(b"user", &long), Err(SaslError::Malformed(_))));
    assert_eq!(with(b"", &hash), Err(SaslError::InvalidUsername));
    assert_eq!(with(b"\xff\xfe", &hash), Err(SaslError::InvalidUsername));
    // SASLprep: a prohibited code point (U+0007) is refused
    assert_eq!(
        with("bell\u{7}".as_bytes(), &hash),
        Err(SaslError::InvalidUsername)
    );
}

/// Random tokens, authcids and bindings against Python's `hmac` module
/// (an implementation independent of the `hmac` crate). Skipped, visibly,
/// without `python3`; `LONGLINK_REQUIRE_PYTHON` makes that a failure.
#[test]
fn random_inputs_agree_with_python_hmac() {
    let probe = std::process::Command::new("python3")
        .args(["-c", "import hmac, hashlib"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("LONGLINK_REQUIRE_PYTHON").is_none(),
            "LONGLINK_REQUIRE_PYTHON is set but python3 does not run"
        );
        println!("skipped: python3 is not available");
        return;
    }
    let mut lines = String::new();
    let mut cases = Vec::new();
    for i in 0..24u8 {
        let token: String = (0..(8 + i as usize))
            .map(|_| char::from(b'A' + rand::random::<u8>() % 26))
            .collect();
        let cb_bytes: Vec<u8> = (0..32).map(|_| rand::random()).collect();
        let mechanism = HtMechanism::ALL[usize::from(i % 3)];
        let cb = ChannelBindings {
            tls_exporter: Some(cb_bytes.clone()),
            tls_server_end_point: Some(cb_bytes.clone()),
        };
        let client = HtClient::new(mechanism, &format!("user{i}"), &token, &cb).unwrap();
        let used = if mechanism == HtMechanism::Sha256None {
            Vec::new()
        } else {
            cb_bytes
        };
        lines.push_str(&format!("{token} {}\n", B64.encode(&used)));
        let verified = ht_verify(
            mechanism,
            &cb,
            &parse_ht_initial(&client.initial_response()).unwrap(),
            &[token.as_str()],
        )
        .unwrap();
        cases.push((client.initial_response(), verified.responder));
    }
    let script = "import sys, hmac, hashlib, base64\n\
        for line in sys.stdin.read().split('\\n'):\n\
        \x20   if not line: continue\n\
        \x20   tok, cb = line.split(' ')\n\
        \x20   cb = base64.b64decode(cb)\n\
        \x20   i = hmac.new(tok.encode(), b'Initiator' + cb, hashlib.sha256).hexdigest()\n\
        \x20   r = hmac.new(tok.encode(), b'Responder' + cb, hashlib.sha256).hexdigest()\n\
        \x20   print(i, r)\n";
    let mut child = std::process::Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let out = String::from_utf8(out.stdout).unwrap();
    let answers: Vec<&str> = out.lines().collect();
    assert_eq!(answers.len(), cases.len());
    for (i, ((initial, responder), answer)) in cases.iter().zip(answers).enumerate() {
        let (pi, pr) = answer.split_once(' ').unwrap();
        let hash = &initial[initial.len() - HT_HASH_LEN..];
        assert_eq!(hash, unhex(pi).as_slice(), "case {i}: initiator");
        assert_eq!(responder, &unhex(pr), "case {i}: responder");
    }
}
