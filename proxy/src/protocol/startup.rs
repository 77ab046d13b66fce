//! The first packet of a connection: SSL/GSS negotiation, cancel, or startup.
//!
//! These packets have no type byte, only a length and a 32-bit code. The body
//! comes from [`super::frame::split_startup`], which already bounds its size
//! the way PostgreSQL does.

use bytes::Bytes;

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const PROTOCOL_3: u16 = 3;

/// What a client asked for in its first packet.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupRequest {
    /// SSLRequest: answer 'S' and start TLS, or 'N'.
    Ssl,
    /// GSSENCRequest: the proxy always answers 'N'.
    GssEnc,
    /// CancelRequest for the session holding this key.
    Cancel {
        /// Process id the proxy handed out in BackendKeyData.
        pid: i32,
        /// Secret the proxy handed out (4 bytes in protocol 3.0).
        secret: Bytes,
    },
    /// StartupMessage of protocol 3.x.
    Startup(StartupParams),
}

/// Parameters of a StartupMessage.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StartupParams {
    /// Minor protocol version the client asked for (0 for 3.0).
    pub minor_version: u16,
    /// Name/value pairs in the order sent (`user`, `database`, `options`, GUCs).
    pub params: Vec<(String, String)>,
}

impl StartupParams {
    /// Value of a parameter, if sent.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The role to log in as.
    pub fn user(&self) -> Option<&str> {
        self.get("user").filter(|u| !u.is_empty())
    }

    /// The database, defaulting to the user name as libpq and PostgreSQL do.
    pub fn database(&self) -> Option<&str> {
        self.get("database").filter(|d| !d.is_empty()).or_else(|| self.user())
    }

    /// Protocol options (`_pq_.*`) the client asked for; the proxy supports none.
    pub fn protocol_options(&self) -> Vec<String> {
        self.params.iter().filter(|(k, _)| k.starts_with("_pq_.")).map(|(k, _)| k.clone()).collect()
    }

    /// Replaces the `options` parameter (libpq's `options`, `PGOPTIONS`) by the settings it
    /// carries, so that they are checked and replayed like any other startup setting.
    ///
    /// PostgreSQL applies `options` before the other startup parameters, so a setting sent
    /// both ways takes the plain parameter's value (and within `options` the last one wins):
    /// only the settings that win are kept, in front of the others.
    pub fn expand_options(&mut self) -> Result<(), OptionsError> {
        let Some(pos) = self.params.iter().position(|(k, _)| k == "options") else { return Ok(()) };
        let (_, value) = self.params.remove(pos);
        let from_options = parse_options(&value)?;
        let mut settings: Vec<(String, String)> = Vec::with_capacity(from_options.len() + self.params.len());
        for (i, (name, value)) in from_options.iter().enumerate() {
            let overridden =
                from_options[i + 1..].iter().chain(&self.params).any(|(n, _)| n.eq_ignore_ascii_case(name));
            if !overridden {
                settings.push((name.clone(), value.clone()));
            }
        }
        settings.append(&mut self.params);
        self.params = settings;
        Ok(())
    }
}

/// An `options` startup parameter the proxy cannot honour.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    /// `-c` / `--` without `name=value`, as PostgreSQL words it.
    #[error("{0} requires a value")]
    MissingValue(String),
    /// A server switch other than `-c` (such as `-B` or `-e`): PostgreSQL would apply it
    /// at backend start, which pooled server connections cannot re-create.
    #[error("unsupported command-line argument for server process: {0}")]
    Unsupported(String),
}

/// Settings in an `options` string: words split on unescaped whitespace (a backslash
/// escapes the next character, as in PostgreSQL's `pg_split_opts`), read as the server reads
/// them: `-c name=value`, `-cname=value` or `--name=value`, with `-` in names read as `_`.
pub fn parse_options(options: &str) -> Result<Vec<(String, String)>, OptionsError> {
    let words = split_options(options);
    let mut settings = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let word = &words[i];
        let assignment = if let Some(rest) = word.strip_prefix("--") {
            rest.to_owned()
        } else if let Some(rest) = word.strip_prefix("-c") {
            if rest.is_empty() {
                i += 1;
                words.get(i).cloned().ok_or_else(|| OptionsError::MissingValue("-c".into()))?
            } else {
                rest.to_owned()
            }
        } else {
            return Err(OptionsError::Unsupported(word.clone()));
        };
        let Some((name, value)) = assignment.split_once('=') else {
            let switch = if word.starts_with("--") { format!("--{assignment}") } else { format!("-c {assignment}") };
            return Err(OptionsError::MissingValue(switch));
        };
        settings.push((name.replace('-', "_"), value.to_owned()));
        i += 1;
    }
    Ok(settings)
}

/// Splits on whitespace; a backslash stands for the character after it (`\ ` is a space inside
/// a word, `\\` a backslash).
fn split_options(options: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut chars = options.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return words;
        }
        let mut word = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_ascii_whitespace()) {
            if c == '\\' {
                if let Some(escaped) = chars.next() {
                    word.push(escaped);
                }
            } else {
                word.push(c);
            }
        }
        words.push(word);
    }
}

/// The first packet is not one the proxy can serve.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    /// Major protocol version other than 3.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0")]
    UnsupportedProtocol {
        /// Requested major version.
        major: u16,
        /// Requested minor version.
        minor: u16,
    },
    /// The packet's content is broken.
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
}

/// Reads a startup-phase packet body (length word already removed).
pub fn parse(body: &[u8]) -> Result<StartupRequest, StartupError> {
    if body.len() < 4 {
        return Err(StartupError::Malformed("too short"));
    }
    let code = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    let rest = &body[4..];
    match code {
        SSL_REQUEST => Ok(StartupRequest::Ssl),
        GSSENC_REQUEST => Ok(StartupRequest::GssEnc),
        CANCEL_REQUEST => {
            if rest.len() < 8 || rest.len() > 4 + 256 {
                return Err(StartupError::Malformed("cancel request length"));
            }
            let pid = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            Ok(StartupRequest::Cancel { pid, secret: Bytes::copy_from_slice(&rest[4..]) })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xFFFF) as u16;
            if major != PROTOCOL_3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            Ok(StartupRequest::Startup(StartupParams { minor_version: minor, params: read_params(rest)? }))
        }
    }
}

fn read_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let end = rest.iter().position(|&b| b == 0).ok_or(StartupError::Malformed("missing terminator"))?;
        if end == 0 {
            return if rest.len() == 1 { Ok(params) } else { Err(StartupError::Malformed("data after terminator")) };
        }
        let name = text(&rest[..end])?;
        rest = &rest[end + 1..];
        let vend = rest.iter().position(|&b| b == 0).ok_or(StartupError::Malformed("missing value"))?;
        let value = text(&rest[..vend])?;
        rest = &rest[vend + 1..];
        params.push((name, value));
    }
}

fn text(b: &[u8]) -> Result<String, StartupError> {
    String::from_utf8(b.to_vec()).map_err(|_| StartupError::Malformed("parameter is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut v = 196_608u32.to_be_bytes().to_vec();
        for (k, val) in params {
            v.extend_from_slice(k.as_bytes());
            v.push(0);
            v.extend_from_slice(val.as_bytes());
            v.push(0);
        }
        v.push(0);
        v
    }

    #[test]
    fn reads_startup_params() {
        let req = parse(&startup(&[("user", "alice"), ("application_name", "psql")])).unwrap();
        let StartupRequest::Startup(p) = req else { panic!("not a startup") };
        assert_eq!(p.user(), Some("alice"));
        assert_eq!(p.database(), Some("alice"));
        assert_eq!(p.get("application_name"), Some("psql"));
    }

    #[test]
    fn recognises_special_requests() {
        assert_eq!(parse(&80_877_103u32.to_be_bytes()).unwrap(), StartupRequest::Ssl);
        assert_eq!(parse(&80_877_104u32.to_be_bytes()).unwrap(), StartupRequest::GssEnc);
        let mut cancel = 80_877_102u32.to_be_bytes().to_vec();
        cancel.extend_from_slice(&[0, 0, 0, 5, 1, 2, 3, 4]);
        assert_eq!(
            parse(&cancel).unwrap(),
            StartupRequest::Cancel { pid: 5, secret: Bytes::from_static(&[1, 2, 3, 4]) }
        );
    }

    fn owned(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn options_become_settings() {
        assert_eq!(
            parse_options("-c search_path=a,b  -cstatement_timeout=5s --work-mem=64MB").unwrap(),
            owned(&[("search_path", "a,b"), ("statement_timeout", "5s"), ("work_mem", "64MB")])
        );
        assert_eq!(
            parse_options(r"-c application_name=my\ app\\x").unwrap(),
            owned(&[("application_name", r"my app\x")])
        );
        assert_eq!(parse_options("  ").unwrap(), vec![]);
        assert_eq!(parse_options("-c geqo").unwrap_err(), OptionsError::MissingValue("-c geqo".into()));
        assert_eq!(parse_options("-c").unwrap_err(), OptionsError::MissingValue("-c".into()));
        assert_eq!(parse_options("--geqo").unwrap_err(), OptionsError::MissingValue("--geqo".into()));
        assert_eq!(parse_options("-B 100").unwrap_err(), OptionsError::Unsupported("-B".into()));
        assert_eq!(parse_options("search_path=a").unwrap_err(), OptionsError::Unsupported("search_path=a".into()));
    }

    #[test]
    fn plain_parameters_override_options() {
        let mut p = StartupParams {
            minor_version: 0,
            params: owned(&[
                ("user", "u"),
                ("options", "-c search_path=a -c TimeZone=UTC -c work_mem=1MB --work-mem=2MB"),
                ("search_path", "b"),
            ]),
        };
        p.expand_options().unwrap();
        assert_eq!(p.params, owned(&[("TimeZone", "UTC"), ("work_mem", "2MB"), ("user", "u"), ("search_path", "b")]));
        assert_eq!(p.get("options"), None);
    }

    #[test]
    fn rejects_bad_packets() {
        assert!(matches!(parse(&0x0002_0000u32.to_be_bytes()), Err(StartupError::UnsupportedProtocol { .. })));
        let mut unterminated = startup(&[("user", "a")]);
        unterminated.pop();
        assert!(parse(&unterminated).is_err());
        let mut trailing = startup(&[("user", "a")]);
        trailing.push(b'x');
        assert!(parse(&trailing).is_err());
        assert!(parse(&[1, 2]).is_err());
    }
}
