//! Duplex tests of [`super::authenticate_client`] with scripted clients.

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

use super::*;
use crate::auth::scram::{ScramClient, ScramCredential};
use crate::auth::secret::{salted_password, Keys};

type Outcome = JoinHandle<Result<ServerCredential, AuthError>>;

/// Runs `authenticate_client` as a task; the test drives the returned client end.
fn serve(method: AuthMethod, user: &str, secret: Option<Secret>) -> (DuplexStream, Outcome) {
    let (client, mut server) = tokio::io::duplex(64 * 1024);
    let user = user.to_owned();
    let task = tokio::spawn(async move {
        let mut rbuf = BytesMut::new();
        authenticate_client(&mut server, &mut rbuf, method, &user, secret.as_ref()).await
    });
    (client, task)
}

/// Reads one Authentication ('R') message: its code and payload. `None` at EOF.
async fn read_auth(c: &mut DuplexStream, buf: &mut BytesMut) -> Option<(i32, Vec<u8>)> {
    loop {
        if let Some(f) = split_message(buf, 1 << 20).unwrap() {
            assert_eq!(f.tag(), b'R');
            let code = i32::from_be_bytes(f.body()[..4].try_into().unwrap());
            return Some((code, f.body()[4..].to_vec()));
        }
        if c.read_buf(buf).await.unwrap() == 0 {
            return None;
        }
    }
}

async fn send(c: &mut DuplexStream, bytes: &[u8]) {
    c.write_all(bytes).await.unwrap();
}

async fn send_password(c: &mut DuplexStream, password: &[u8]) {
    let mut b = BytesMut::new();
    frontend::password_message(password, &mut b).unwrap();
    send(c, &b).await;
}

/// A SCRAM client: returns whether the server's final message arrived and verified.
async fn scram_login(c: &mut DuplexStream, cred: ScramCredential) -> bool {
    let mut buf = BytesMut::new();
    let (code, mechs) = read_auth(c, &mut buf).await.unwrap();
    assert_eq!(code, 10);
    assert_eq!(mechs, b"SCRAM-SHA-256\0\0");
    let (client, first) = ScramClient::new(cred);
    let mut b = BytesMut::new();
    frontend::sasl_initial_response("SCRAM-SHA-256", &first, &mut b).unwrap();
    send(c, &b).await;
    let (code, server_first) = read_auth(c, &mut buf).await.unwrap();
    assert_eq!(code, 11);
    let (client, fin) = client.handle_server_first(&server_first).unwrap();
    b.clear();
    frontend::sasl_response(&fin, &mut b).unwrap();
    send(c, &b).await;
    match read_auth(c, &mut buf).await {
        Some((12, server_final)) => client.handle_server_final(&server_final).is_ok(),
        _ => false,
    }
}

/// An md5 client answering with `password`.
async fn md5_login(c: &mut DuplexStream, user: &str, password: &str) {
    let mut buf = BytesMut::new();
    let (code, salt) = read_auth(c, &mut buf).await.unwrap();
    assert_eq!(code, 5);
    let salt: [u8; 4] = salt.try_into().unwrap();
    send_password(c, md5::response_from_password(password.as_bytes(), user, salt).as_bytes()).await;
}

fn scram_secret(password: &str) -> ScramSecret {
    ScramSecret::derive(password, b"some salt 16 byt", 4096)
}

fn client_key(password: &str) -> [u8; 32] {
    Keys::from_salted_password(&salted_password(password.as_bytes(), b"some salt 16 byt", 4096)).client_key
}

#[tokio::test]
async fn trust_needs_no_exchange() {
    let mut rbuf = BytesMut::new();
    let (mut a, _b) = tokio::io::duplex(64);
    let plain = Secret::Plain("pw".into());
    let cred = authenticate_client(&mut a, &mut rbuf, AuthMethod::Trust, "u", Some(&plain)).await.unwrap();
    assert!(matches!(cred, ServerCredential::Password(p) if p == "pw"));
    let cred = authenticate_client(&mut a, &mut rbuf, AuthMethod::Trust, "u", None).await.unwrap();
    assert!(matches!(cred, ServerCredential::None));
    let scram = Secret::Scram(scram_secret("pw"));
    let cred = authenticate_client(&mut a, &mut rbuf, AuthMethod::Trust, "u", Some(&scram)).await.unwrap();
    assert!(matches!(cred, ServerCredential::None));
}

#[tokio::test]
async fn md5_with_plain_and_md5_secrets() {
    let (mut c, task) = serve(AuthMethod::Md5, "alice", Some(Secret::Plain("pw".into())));
    md5_login(&mut c, "alice", "pw").await;
    assert!(matches!(task.await.unwrap().unwrap(), ServerCredential::Password(p) if p == "pw"));

    let hash = md5::secret(b"pw", "alice");
    let (mut c, task) = serve(AuthMethod::Md5, "alice", Some(Secret::Md5(hash.clone())));
    md5_login(&mut c, "alice", "pw").await;
    assert!(matches!(task.await.unwrap().unwrap(), ServerCredential::Md5Hash(h) if h == hash));

    let (mut c, task) = serve(AuthMethod::Md5, "alice", Some(Secret::Md5(hash)));
    md5_login(&mut c, "alice", "wrong").await;
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(
        (err.sqlstate(), err.to_string().as_str()),
        ("28P01", "password authentication failed for user \"alice\"")
    );
}

#[tokio::test]
async fn md5_unknown_user_fails_like_a_wrong_password() {
    let (mut c, task) = serve(AuthMethod::Md5, "ghost", None);
    md5_login(&mut c, "ghost", "pw").await;
    assert!(matches!(task.await.unwrap(), Err(AuthError::PasswordFailed { .. })));
}

#[tokio::test]
async fn md5_method_with_scram_secret_uses_scram() {
    let secret = scram_secret("pw");
    let (mut c, task) = serve(AuthMethod::Md5, "alice", Some(Secret::Scram(secret.clone())));
    assert!(scram_login(&mut c, ScramCredential::Password("pw".into())).await);
    match task.await.unwrap().unwrap() {
        ServerCredential::ScramClientKey { client_key: k, server_key } => {
            assert_eq!(k, client_key("pw"));
            assert_eq!(server_key, Some(secret.server_key));
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn scram_with_plain_secret_and_wrong_password() {
    let (mut c, task) = serve(AuthMethod::Scram, "bob", Some(Secret::Plain("pw".into())));
    assert!(scram_login(&mut c, ScramCredential::Password("pw".into())).await);
    assert!(matches!(task.await.unwrap().unwrap(), ServerCredential::Password(p) if p == "pw"));

    let (mut c, task) = serve(AuthMethod::Scram, "bob", Some(Secret::Scram(scram_secret("pw"))));
    assert!(!scram_login(&mut c, ScramCredential::Password("nope".into())).await);
    assert_eq!(task.await.unwrap().unwrap_err().sqlstate(), "28P01");
}

#[tokio::test]
async fn scram_without_usable_secret_runs_a_mock_exchange() {
    for secret in [None, Some(Secret::Md5(md5::secret(b"pw", "carol")))] {
        let (mut c, task) = serve(AuthMethod::Scram, "carol", secret);
        // The client gets through server-first like for a real user, then fails.
        assert!(!scram_login(&mut c, ScramCredential::Password("pw".into())).await);
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.to_string(), "password authentication failed for user \"carol\"");
    }
}

#[tokio::test]
async fn wrong_message_type_is_a_protocol_violation() {
    let (mut c, task) = serve(AuthMethod::Md5, "a", Some(Secret::Plain("pw".into())));
    let mut b = BytesMut::new();
    frontend::query("select 1", &mut b).unwrap();
    send(&mut c, &b).await;
    assert_eq!(task.await.unwrap().unwrap_err().sqlstate(), "08P01");
}

#[tokio::test]
async fn oversized_message_is_a_protocol_violation() {
    let (mut c, task) = serve(AuthMethod::Md5, "a", Some(Secret::Plain("pw".into())));
    send_password(&mut c, &vec![b'x'; 9000]).await;
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.sqlstate(), "08P01", "{err}");
}

#[tokio::test]
async fn eof_mid_exchange_is_an_io_error() {
    let (mut c, task) = serve(AuthMethod::Scram, "a", Some(Secret::Plain("pw".into())));
    let mut buf = BytesMut::new();
    read_auth(&mut c, &mut buf).await.unwrap();
    send(&mut c, b"p\0\0").await; // half a header, then hang up
    drop(c);
    assert!(matches!(task.await.unwrap(), Err(AuthError::Io(_))));
}

#[tokio::test]
async fn malformed_sasl_messages_are_protocol_violations() {
    let bad_initial: Vec<Vec<u8>> = vec![
        b"SCRAM-SHA-1\0\0\0\0\x01x".to_vec(),              // wrong mechanism
        b"SCRAM-SHA-256".to_vec(),                         // no terminator
        b"SCRAM-SHA-256\0\0\0".to_vec(),                   // short length
        b"SCRAM-SHA-256\0\0\0\0\x09n,,".to_vec(),          // length beyond the data
        b"SCRAM-SHA-256\0\xff\xff\xff\xff".to_vec(),       // -1: no data
        b"SCRAM-SHA-256\0\0\0\0\x03\xff\xfe\xfd".to_vec(), // not UTF-8
    ];
    for body in bad_initial {
        let (mut c, task) = serve(AuthMethod::Scram, "a", Some(Secret::Plain("pw".into())));
        let mut msg = BytesMut::new();
        msg.extend_from_slice(b"p");
        msg.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        msg.extend_from_slice(&body);
        send(&mut c, &msg).await;
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.sqlstate(), "08P01", "{body:?}: {err}");
    }
}

#[tokio::test]
async fn random_client_bytes_never_panic() {
    // A cheap deterministic fuzz: each round feeds pseudo-random bytes after
    // a valid SASLInitialResponse header, or as a whole message.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..64 {
        let (mut c, task) = serve(AuthMethod::Scram, "a", Some(Secret::Plain("pw".into())));
        read_auth(&mut c, &mut BytesMut::new()).await.unwrap();
        let len = (next() % 64) as usize;
        let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let mut b = BytesMut::new();
        if round % 2 == 0 {
            frontend::sasl_initial_response("SCRAM-SHA-256", &junk, &mut b).unwrap();
        } else {
            b.extend_from_slice(&junk);
        }
        send(&mut c, &b).await;
        drop(c);
        // Any error is fine; a panic would surface as a JoinError here.
        assert!(task.await.unwrap().is_err());
    }
}
