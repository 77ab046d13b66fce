//! Authentication against a real PostgreSQL 15 server.
//!
//! Proves that `pool::connect` logs in with passwords to SCRAM and md5 roles,
//! that `SecretStore::lookup` fetches the servers' own secrets through
//! `auth_query`, and the full drop-in loop: a client logs in to the proxy
//! with SCRAM, and the `ClientKey` recovered from its proof logs in to the
//! real server (md5: the fetched hash does).
//!
//! The server helper below is deliberately minimal; the shared test kit in
//! `tests/src/kit` will replace it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tandem_core::NodeAddr;
use tandem_proxy::auth::scram::{ScramClient, ScramCredential};
use tandem_proxy::auth::{authenticate_client, md5, AuthError, Secret, SecretStore, ServerCredential};
use tandem_proxy::config::{AuthMethod, ProxyConfig, UserConfig};
use tandem_proxy::pool::connect::{connect, ConnectError, ServerStartup};
use tandem_proxy::protocol::frame::split_message;
use tandem_proxy::server_tls::ServerTls;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const BIN: &str = "/usr/lib/postgresql/15/bin";
const TIMEOUT: Duration = Duration::from_secs(10);
/// Contains a soft hyphen, which SASLprep removes: PostgreSQL stores the
/// secret of "scrampass", and a client must SASLprep to log in.
const SCRAM_PASSWORD: &str = "scram\u{00AD}pass";
const MD5_PASSWORD: &str = "md5pass";

/// A throw-away PostgreSQL server on a free loopback port, stopped on drop.
struct Pg {
    dir: tempfile::TempDir,
    port: u16,
}

fn as_postgres(cmd: &str, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{BIN}/{cmd}")])
        .args(args)
        .output()
        .expect("run as postgres");
    assert!(out.status.success(), "{cmd} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Pg {
    fn start(hba: &str) -> Pg {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("chown").args(["postgres:postgres"]).arg(dir.path()).status().unwrap();
        assert!(status.success());
        let data = dir.path().join("data");
        let data_s = data.to_str().unwrap();
        as_postgres("initdb", &["-D", data_s, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"]);
        let port = free_port();
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nmax_connections = 20\nshared_buffers = 16MB\n",
            dir.path().display()
        );
        append(&data.join("postgresql.conf"), &conf);
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        let log = dir.path().join("log");
        let pg = Pg { dir, port };
        as_postgres("pg_ctl", &["-D", data_s, "-l", log.to_str().unwrap(), "-w", "-t", "60", "start"]);
        pg
    }

    fn addr(&self) -> NodeAddr {
        NodeAddr { host: "127.0.0.1".into(), port: self.port }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let data = self.data();
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{BIN}/pg_ctl"), "-D"])
            .arg(&data)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

const HBA: &str = "\
local all all trust
host all postgres 127.0.0.1/32 trust
host all md5user 127.0.0.1/32 md5
host all all 127.0.0.1/32 scram-sha-256
";

async fn setup_roles(pg: &Pg) {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(pg.port)
        .user("postgres")
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    let task = tokio::spawn(conn);
    client
        .batch_execute(&format!(
            "SET password_encryption = 'scram-sha-256';
             CREATE ROLE scramuser LOGIN PASSWORD '{SCRAM_PASSWORD}';
             SET password_encryption = 'md5';
             CREATE ROLE md5user LOGIN PASSWORD '{MD5_PASSWORD}';
             CREATE ROLE nopass LOGIN;"
        ))
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
}

/// Runs `SELECT current_user` on a fresh server connection.
async fn current_user(s: &mut ServerStartup) -> String {
    let mut out = BytesMut::new();
    frontend::query("SELECT current_user", &mut out).unwrap();
    s.stream.write_all(&out).await.unwrap();
    let mut buf = std::mem::take(&mut s.leftover);
    let mut user = None;
    loop {
        while let Some(f) = split_message(&mut buf, 1 << 20).unwrap() {
            match f.tag() {
                b'D' => {
                    let b = f.body();
                    let len = i32::from_be_bytes(b[2..6].try_into().unwrap()) as usize;
                    user = Some(String::from_utf8(b[6..6 + len].to_vec()).unwrap());
                }
                b'Z' => return user.unwrap(),
                b'E' => panic!("query failed"),
                _ => {}
            }
        }
        assert!(s.stream.read_buf(&mut buf).await.unwrap() > 0, "server hung up");
    }
}

/// A scripted SCRAM client towards `authenticate_client`, using the proxy's
/// own client state machine with the password.
async fn scram_client(mut c: DuplexStream, password: String) {
    let mut buf = BytesMut::new();
    let mut next = async |c: &mut DuplexStream| loop {
        if let Some(f) = split_message(&mut buf, 1 << 20).unwrap() {
            return f.body()[4..].to_vec();
        }
        assert!(c.read_buf(&mut buf).await.unwrap() > 0);
    };
    next(&mut c).await; // AuthenticationSASL
    let (client, first) = ScramClient::new(ScramCredential::Password(password));
    let mut out = BytesMut::new();
    frontend::sasl_initial_response("SCRAM-SHA-256", &first, &mut out).unwrap();
    c.write_all(&out).await.unwrap();
    let server_first = next(&mut c).await;
    let (client, fin) = client.handle_server_first(&server_first).unwrap();
    out.clear();
    frontend::sasl_response(&fin, &mut out).unwrap();
    c.write_all(&out).await.unwrap();
    client.handle_server_final(&next(&mut c).await).unwrap();
}

/// An md5 client towards `authenticate_client`.
async fn md5_client(mut c: DuplexStream, user: String, password: String) {
    let mut buf = BytesMut::new();
    while buf.len() < 13 {
        assert!(c.read_buf(&mut buf).await.unwrap() > 0);
    }
    let salt: [u8; 4] = buf[9..13].try_into().unwrap();
    let mut out = BytesMut::new();
    frontend::password_message(md5::response_from_password(password.as_bytes(), &user, salt).as_bytes(), &mut out)
        .unwrap();
    c.write_all(&out).await.unwrap();
}

async fn proxy_login(method: AuthMethod, user: &str, secret: &Secret, password: &str) -> ServerCredential {
    let (client_end, mut server_end) = tokio::io::duplex(1 << 16);
    let client = match method {
        AuthMethod::Md5 => tokio::spawn(md5_client(client_end, user.to_owned(), password.to_owned())),
        _ => tokio::spawn(scram_client(client_end, password.to_owned())),
    };
    let mut rbuf = BytesMut::new();
    let cred = authenticate_client(&mut server_end, &mut rbuf, method, user, Some(secret)).await.unwrap();
    client.await.unwrap();
    cred
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_against_real_postgres() {
    let pg = Pg::start(HBA);
    setup_roles(&pg).await;
    let addr = pg.addr();
    let params = [("application_name".to_owned(), "auth_real".to_owned())];
    let login = |user: &'static str, cred: ServerCredential| {
        let addr = addr.clone();
        let params = params.clone();
        async move { connect(&addr, user, "postgres", &params, &cred, TIMEOUT, &ServerTls::disabled()).await }
    };

    // 1. connect() with passwords, for a SCRAM role (password needs SASLprep) and an md5 role.
    let mut s = login("scramuser", ServerCredential::Password(SCRAM_PASSWORD.into())).await.unwrap();
    assert_eq!(current_user(&mut s).await, "scramuser");
    assert!(s.params.iter().any(|(k, v)| k == "application_name" && v == "auth_real"));
    assert!(s.params.iter().any(|(k, _)| k == "server_version"));
    assert_ne!(s.backend_pid, 0);
    let mut s = login("md5user", ServerCredential::Password(MD5_PASSWORD.into())).await.unwrap();
    assert_eq!(current_user(&mut s).await, "md5user");

    // Wrong password: the server's own ErrorResponse comes back whole.
    match login("scramuser", ServerCredential::Password("wrong".into())).await {
        Err(ConnectError::Server { code, frame, .. }) => {
            assert_eq!(code, "28P01");
            assert_eq!(frame[0], b'E');
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    // No credential for a password role: a clear auth error, not a hang.
    assert!(matches!(login("md5user", ServerCredential::None).await, Err(ConnectError::Auth(AuthError::Rejected(_)))));

    // 2. SecretStore: auth_query fetches the servers' secrets as the control user.
    let cfg = ProxyConfig {
        auth: AuthMethod::Scram,
        users: vec![UserConfig { name: "configured".into(), password: "plainpw".into() }],
        ..ProxyConfig::default()
    };
    let store = SecretStore::new(&cfg, std::sync::Arc::new(ServerTls::disabled()));
    let scram_secret = store.lookup("scramuser", &addr).await.unwrap().unwrap();
    let Secret::Scram(ref parsed) = scram_secret else { panic!("expected a SCRAM secret, got {scram_secret:?}") };
    assert_eq!(parsed.iterations, 4096);
    let md5_secret = store.lookup("md5user", &addr).await.unwrap().unwrap();
    assert_eq!(md5_secret, Secret::Md5(md5::secret(MD5_PASSWORD.as_bytes(), "md5user")));
    assert!(store.lookup("nopass", &addr).await.unwrap().is_none());
    assert!(store.lookup("ghost", &addr).await.unwrap().is_none());
    assert_eq!(store.lookup("configured", &addr).await.unwrap(), Some(Secret::Plain("plainpw".into())));
    let dead = NodeAddr { host: "127.0.0.1".into(), port: free_port() };
    assert!(matches!(store.lookup("scramuser", &dead).await, Err(AuthError::Lookup { .. })));

    // 3. The drop-in loop: SCRAM client → proxy → recovered ClientKey → server.
    let cred = proxy_login(AuthMethod::Scram, "scramuser", &scram_secret, SCRAM_PASSWORD).await;
    assert!(matches!(cred, ServerCredential::ScramClientKey { server_key: Some(_), .. }), "{cred:?}");
    let mut s = login("scramuser", cred.clone()).await.unwrap();
    assert_eq!(current_user(&mut s).await, "scramuser");
    // Without the ServerKey the login still works (signature check skipped).
    let ServerCredential::ScramClientKey { client_key, .. } = cred else { unreachable!() };
    login("scramuser", ServerCredential::ScramClientKey { client_key, server_key: None }).await.unwrap();
    // A forged key is refused by the server itself.
    let forged = ServerCredential::ScramClientKey { client_key: [1; 32], server_key: None };
    assert_eq!(login("scramuser", forged).await.unwrap_err().sqlstate(), "28P01");

    // md5 clients: the fetched hash logs in to the server (pass-the-hash).
    let cred = proxy_login(AuthMethod::Md5, "md5user", &md5_secret, MD5_PASSWORD).await;
    assert!(matches!(cred, ServerCredential::Md5Hash(_)));
    let mut s = login("md5user", cred).await.unwrap();
    assert_eq!(current_user(&mut s).await, "md5user");
    drop(s);
    drop(pg);
}
