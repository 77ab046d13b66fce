//! SCRAM state machines against RFC 7677 and against each other.

use super::*;

// RFC 7677, section 3.
const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
const SERVER_FIRST: &str = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
    p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

fn rfc_secret() -> ScramSecret {
    let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    ScramSecret::derive("pencil", &salt, 4096)
}

fn rfc_client_key() -> [u8; 32] {
    let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
    Keys::from_salted_password(&salted_password(b"pencil", &salt, 4096)).client_key
}

#[test]
fn server_matches_rfc7677() {
    let server = ScramServer::new(rfc_secret()).with_nonce(SERVER_NONCE);
    let (server, first) = server.handle_client_first(CLIENT_FIRST.as_bytes()).unwrap();
    assert_eq!(first, SERVER_FIRST.as_bytes());
    let ok = server.handle_client_final(CLIENT_FINAL.as_bytes()).unwrap();
    assert_eq!(ok.server_final, SERVER_FINAL.as_bytes());
    assert_eq!(ok.client_key, rfc_client_key());
    assert_eq!(sha256(&ok.client_key), rfc_secret().stored_key);
}

#[test]
fn client_matches_rfc7677() {
    // The RFC's client sends n=user; ours sends an empty user name, so
    // rebuild its state with the RFC's bare message.
    for cred in [
        ScramCredential::Password("pencil".into()),
        ScramCredential::ClientKey { client_key: rfc_client_key(), server_key: Some(rfc_secret().server_key) },
    ] {
        let client = ScramClient {
            credential: cred,
            client_nonce: "rOprNGfwEbeRWgbNEkqO".into(),
            client_first_bare: "n=user,r=rOprNGfwEbeRWgbNEkqO".into(),
        };
        let (client, fin) = client.handle_server_first(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(fin, CLIENT_FINAL.as_bytes());
        client.handle_server_final(SERVER_FINAL.as_bytes()).unwrap();
    }
}

/// Runs a whole exchange between the two state machines.
fn exchange(server: ScramServer, cred: ScramCredential) -> Result<[u8; 32], ScramError> {
    let (client, first) = ScramClient::new(cred);
    let (server, server_first) = server.handle_client_first(&first)?;
    let (client, client_final) = client.handle_server_first(&server_first)?;
    let ok = server.handle_client_final(&client_final)?;
    client.handle_server_final(&ok.server_final)?;
    Ok(ok.client_key)
}

#[test]
fn state_machines_agree_and_recover_the_client_key() {
    let secret = ScramSecret::derive("s3cret", b"0123456789abcdef", 4096);
    let key = exchange(ScramServer::new(secret.clone()), ScramCredential::Password("s3cret".into())).unwrap();
    // The recovered key logs in again, against a fresh server nonce.
    let again = ScramCredential::ClientKey { client_key: key, server_key: Some(secret.server_key) };
    assert_eq!(exchange(ScramServer::new(secret.clone()), again).unwrap(), key);
    // Without the ServerKey the client skips the signature check.
    let blind = ScramCredential::ClientKey { client_key: key, server_key: None };
    exchange(ScramServer::new(secret.clone()), blind).unwrap();
    // A wrong ServerKey is caught.
    let wrong = ScramCredential::ClientKey { client_key: key, server_key: Some([7; 32]) };
    assert_eq!(exchange(ScramServer::new(secret), wrong), Err(ScramError::InvalidServerSignature));
}

#[test]
fn wrong_password_and_mock_fail() {
    let secret = ScramSecret::derive("s3cret", b"0123456789abcdef", 4096);
    let res = exchange(ScramServer::new(secret.clone()), ScramCredential::Password("nope".into()));
    assert_eq!(res, Err(ScramError::InvalidProof));
    let forged = ScramCredential::ClientKey { client_key: secret.stored_key, server_key: None };
    assert_eq!(exchange(ScramServer::new(secret), forged), Err(ScramError::InvalidProof));
    let res = exchange(ScramServer::mock(b"salt".to_vec()), ScramCredential::Password("".into()));
    assert_eq!(res, Err(ScramError::InvalidProof));
}

#[test]
fn accepts_y_flag_and_rejects_channel_binding() {
    let server = || ScramServer::new(rfc_secret());
    let (s, _) = server().handle_client_first(b"y,,n=,r=abc").unwrap();
    // c= must repeat "y,," (eSws), not "n,," (biws).
    let nonce = s.full_nonce.clone();
    let bad = format!("c=biws,r={nonce},p={}", B64.encode([0u8; 32]));
    assert_eq!(s.handle_client_final(bad.as_bytes()).unwrap_err(), ScramError::ChannelBindingMismatch);
    assert!(matches!(
        server().handle_client_first(b"p=tls-server-end-point,,n=,r=abc"),
        Err(ScramError::Unsupported(_))
    ));
    assert!(matches!(server().handle_client_first(b"n,a=bob,n=,r=abc"), Err(ScramError::Unsupported(_))));
}

#[test]
fn malformed_client_messages_are_errors() {
    let server = || ScramServer::new(rfc_secret());
    for first in [
        &b""[..],
        b"n",
        b"n,",
        b"x,,n=,r=abc",
        b"n,,",
        b"n,,n=",
        b"n,,n=,r=",
        b"n,,n=,r=a b",
        b"n,,r=abc",
        b"n,,m=ext,n=,r=abc",
        b"n,,n=,r=\xff",
        b"n,zz,n=,r=abc",
    ] {
        assert!(server().handle_client_first(first).is_err(), "{:?}", String::from_utf8_lossy(first));
    }
    let (s, _) = server().handle_client_first(b"n,,n=,r=abc").unwrap();
    for fin in ["", "c=biws", "c=biws,r=x,p=", "c=!!,r=x,p=AAAA", "p=AAAA", "c=biws,p=AAAA", ",p="] {
        let (s2, _) = server().handle_client_first(b"n,,n=,r=abc").unwrap();
        assert!(s2.handle_client_final(fin.as_bytes()).is_err(), "{fin}");
    }
    // Right nonce, proof of the wrong length.
    let fin = format!("c=biws,r={},p=AAAA", s.full_nonce);
    assert_eq!(s.handle_client_final(fin.as_bytes()).unwrap_err(), ScramError::Malformed("invalid proof"));
}

#[test]
fn client_rejects_bad_server_messages() {
    let cred = || ScramCredential::Password("pencil".into());
    for first in [
        "",
        "r=zzz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        "r=abc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        "r=abcd,s=,i=4096",
        "r=abcd,s=%%,i=4096",
        "r=abcd,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
        "r=abcd,s=W22ZaJ0SNY7soEsUEjb6gQ==",
        "m=x,r=abcd,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1",
    ] {
        let (c, _) = ScramClient::with_nonce(cred(), "abc".into());
        assert!(c.handle_server_first(first.as_bytes()).is_err(), "{first}");
    }
    let (c, _) = ScramClient::with_nonce(cred(), "abc".into());
    assert_eq!(
        c.handle_server_first(b"r=abcd,s=AAAA,i=4000000000").err(),
        Some(ScramError::TooManyIterations(4_000_000_000))
    );
    let (c, _) = ScramClient::with_nonce(cred(), "abc".into());
    let (c, _) = c.handle_server_first(b"r=abcd,s=AAAA,i=1").unwrap();
    assert_eq!(c.handle_server_final(b"e=invalid-proof"), Err(ScramError::ServerError("invalid-proof".into())));
}
