//! The admin console: database `tandem`, in the style of PgBouncer's.
//!
//! `psql -p 6432 -U admin tandem` then `SHOW POOLS;`, `SHOW CLIENTS;`,
//! `SHOW SERVERS;`, `SHOW NODES;`, `SHOW STATS;`, `PAUSE;`, `RESUME;`,
//! `RELOAD;`. Only the simple query protocol is spoken here.

mod commands;

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::context::{ClientInfo, ClientState, ProxyContext};
use crate::protocol::build::{self, sqlstate, Severity};
use crate::protocol::fields::{self, TxStatus};
use crate::protocol::frame::split_message;

/// Largest admin command accepted.
const MAX_ADMIN_MESSAGE: usize = 64 * 1024;

/// Greets an authenticated admin client and serves its commands.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    ctx: Arc<ProxyContext>,
    mut stream: S,
    mut rbuf: BytesMut,
    info: Arc<ClientInfo>,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    build::auth_ok(&mut out);
    for (k, v) in [
        ("server_version", "15.0 (tandem admin)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
    ] {
        build::parameter_status(&mut out, k, v);
    }
    build::backend_key_data(&mut out, 0, 0);
    build::ready_for_query(&mut out, TxStatus::Idle);
    stream.write_all(&out).await?;
    info.set_state(ClientState::Idle);
    let mut skipping = false;
    loop {
        out.clear();
        let frame = loop {
            match split_message(&mut rbuf, MAX_ADMIN_MESSAGE) {
                Ok(Some(f)) => break f,
                Ok(None) => {
                    if stream.read_buf(&mut rbuf).await? == 0 {
                        return Ok(());
                    }
                }
                Err(e) => {
                    build::error(&mut out, Severity::Fatal, sqlstate::PROTOCOL_VIOLATION, &e.to_string());
                    stream.write_all(&out).await?;
                    return Ok(());
                }
            }
        };
        match frame.tag() {
            b'Q' => {
                let sql = fields::query_text(frame.body()).map(|s| String::from_utf8_lossy(s).into_owned());
                match sql {
                    Ok(sql) => commands::run(&ctx, sql.trim(), &mut out).await,
                    Err(e) => build::error(&mut out, Severity::Error, sqlstate::PROTOCOL_VIOLATION, &e.to_string()),
                }
                build::ready_for_query(&mut out, TxStatus::Idle);
            }
            b'X' => return Ok(()),
            b'S' => {
                skipping = false;
                build::ready_for_query(&mut out, TxStatus::Idle);
            }
            b'P' | b'B' | b'D' | b'E' | b'C' | b'H' | b'F' => {
                if !skipping {
                    skipping = true;
                    build::error(
                        &mut out,
                        Severity::Error,
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "the admin console supports the simple query protocol only",
                    );
                }
            }
            other => {
                build::error(
                    &mut out,
                    Severity::Fatal,
                    sqlstate::PROTOCOL_VIOLATION,
                    &format!("invalid frontend message type {other}"),
                );
                stream.write_all(&out).await?;
                return Ok(());
            }
        }
        stream.write_all(&out).await?;
    }
}
