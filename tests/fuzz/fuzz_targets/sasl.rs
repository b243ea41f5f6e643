//! The SASL parsers with a real credential (user `user`, password
//! `pencil`): PLAIN; the server side of SCRAM (client-first, then a
//! client-final from the input, or an honest client's that must succeed
//! and any altered copy of it that must fail); the client side of SCRAM
//! (server-first and server-final from the input). The input's first octet
//! picks the part and the hash; a `\n` separates two messages.

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use xmpp_sasl::{
    SaslError, ScramClient, ScramHash, ScramServer, StoredCredentials, parse_client_first,
    parse_plain, plain_message,
};

/// Few iterations: the exchange is the same, PBKDF2 just cheaper.
const ITERATIONS: u32 = 2;
const PASSWORD: &str = "pencil";
const SERVER_NONCE: &str = "3rfcNHYJY1ZVvWVs7j";

static CREDENTIALS: LazyLock<StoredCredentials> =
    LazyLock::new(|| StoredCredentials::derive(PASSWORD, b"fuzz salt", ITERATIONS));

fn split(input: &[u8]) -> (&[u8], &[u8]) {
    match input.iter().position(|&b| b == b'\n') {
        Some(i) => (&input[..i], &input[i + 1..]),
        None => (input, &[]),
    }
}

fn plain(msg: &[u8]) {
    let Ok(parsed) = parse_plain(msg) else {
        return;
    };
    assert!(!parsed.username.is_empty() && !parsed.password.is_empty());
    if parsed.password == PASSWORD {
        assert!(CREDENTIALS.verify_password(&parsed.password));
    }
    if parsed.authzid.is_none() {
        let again = plain_message(&parsed.username, &parsed.password);
        assert_eq!(parse_plain(&again).as_ref(), Ok(&parsed));
    }
}

fn scram_server(hash: ScramHash, honest: bool, input: &[u8]) {
    let (client_first, rest) = split(input);
    let Ok(first) = parse_client_first(client_first) else {
        return;
    };
    let keys = CREDENTIALS.keys(hash);
    let (server, server_first) = ScramServer::start_with_nonce(
        hash,
        first.clone(),
        &CREDENTIALS.salt,
        ITERATIONS,
        keys,
        SERVER_NONCE,
    );
    let expected = format!("r={}{SERVER_NONCE},", first.client_nonce());
    assert!(server_first.starts_with(expected.as_bytes()));
    if !honest {
        // Nobody here knows the password: no proof is accepted.
        let result = server.finish(rest);
        assert!(
            result.is_err(),
            "a client-final from the input was accepted"
        );
        return;
    }
    // An honest client with the same username and nonce.
    let mut client = ScramClient::with_nonce(hash, &first.username, PASSWORD, first.client_nonce());
    client.set_min_iterations(1);
    let Ok(own_first) = parse_client_first(&client.client_first()) else {
        panic!("the client's own client-first does not parse");
    };
    if own_first != first {
        // (another gs2 header, escaping or extensions: the proof covers them)
        return;
    }
    let client_final = client
        .handle_server_first(&server_first)
        .expect("the client takes the server's first message");
    // Any change to the client-final makes it fail.
    if let [at_lo, at_hi, flip, ..] = rest {
        let at = usize::from(u16::from_le_bytes([*at_lo, *at_hi])) % client_final.len();
        let mut altered = client_final.clone();
        altered[at] ^= if *flip == 0 { 1 } else { *flip };
        assert!(
            server.clone().finish(&altered).is_err(),
            "an altered client-final was accepted: {:?}",
            String::from_utf8_lossy(&altered)
        );
    }
    let server_final = server
        .finish(&client_final)
        .expect("the honest client's proof is accepted");
    client
        .verify_server_final(&server_final)
        .expect("the server's signature verifies");
}

fn scram_client(hash: ScramHash, input: &[u8]) {
    let (server_first, server_final) = split(input);
    let mut client = ScramClient::with_nonce(hash, "user", PASSWORD, "fyko+d2lbbFgONRv9qkxdawL");
    assert_eq!(
        client.verify_server_final(server_final),
        Err(SaslError::OutOfOrder)
    );
    let Ok(client_final) = client.handle_server_first(server_first) else {
        return;
    };
    assert!(client_final.starts_with(b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL"));
    // The server's signature cannot be guessed.
    assert!(client.verify_server_final(server_final).is_err());
    assert_eq!(
        client.handle_server_first(server_first),
        Err(SaslError::OutOfOrder)
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&part, input)) = data.split_first() else {
        return;
    };
    let hash = if part & 0x10 == 0 {
        ScramHash::Sha256
    } else {
        ScramHash::Sha1
    };
    match part % 4 {
        0 => plain(input),
        1 => scram_server(hash, false, input),
        2 => scram_server(hash, true, input),
        _ => scram_client(hash, input),
    }
});
