//! Reading the few message fields the proxy acts on.
//!
//! The router needs the SQL of `Query` and `Parse`, statement and portal names
//! of `Bind`, `Describe`, `Close` and `Execute`; the session needs the
//! transaction status of `ReadyForQuery`, the tag of `CommandComplete` and the
//! SQLSTATE of `ErrorResponse`. Everything else passes through unread. All
//! readers borrow from the frame and fail with [`FieldError`] on a truncated or
//! unterminated body instead of panicking.

/// A message body does not hold the fields its type requires.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed {0} message")]
pub struct FieldError(pub &'static str);

/// A cursor over a message body.
struct Cursor<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(body: &'a [u8], what: &'static str) -> Self {
        Cursor { rest: body, what }
    }

    fn cstr(&mut self) -> Result<&'a [u8], FieldError> {
        // Names and command tags are short: a plain scan finds their NUL before the
        // vectorized search has set up; longer strings (query text) go on with memchr.
        let head = self.rest.len().min(16);
        let end = match self.rest[..head].iter().position(|&b| b == 0) {
            Some(end) => end,
            None => head + memchr::memchr(0, &self.rest[head..]).ok_or(FieldError(self.what))?,
        };
        let (s, rest) = self.rest.split_at(end);
        self.rest = &rest[1..];
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, FieldError> {
        let (&b, rest) = self.rest.split_first().ok_or(FieldError(self.what))?;
        self.rest = rest;
        Ok(b)
    }

    fn i16(&mut self) -> Result<i16, FieldError> {
        if self.rest.len() < 2 {
            return Err(FieldError(self.what));
        }
        let v = i16::from_be_bytes([self.rest[0], self.rest[1]]);
        self.rest = &self.rest[2..];
        Ok(v)
    }

    fn i32(&mut self) -> Result<i32, FieldError> {
        if self.rest.len() < 4 {
            return Err(FieldError(self.what));
        }
        let v = i32::from_be_bytes([self.rest[0], self.rest[1], self.rest[2], self.rest[3]]);
        self.rest = &self.rest[4..];
        Ok(v)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FieldError> {
        if self.rest.len() < n {
            return Err(FieldError(self.what));
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }
}

/// SQL text of a `Query` ('Q') message, without its terminating NUL.
pub fn query_text(body: &[u8]) -> Result<&[u8], FieldError> {
    Cursor::new(body, "Query").cstr()
}

/// The fields of a `Parse` ('P') message.
#[derive(Debug, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Prepared statement name; empty for the unnamed statement.
    pub name: &'a [u8],
    /// The SQL text.
    pub query: &'a [u8],
    /// Parameter type count and OIDs exactly as sent (part of a statement's identity).
    pub param_types: &'a [u8],
}

/// Reads a `Parse` message.
pub fn parse(body: &[u8]) -> Result<Parse<'_>, FieldError> {
    let mut c = Cursor::new(body, "Parse");
    let name = c.cstr()?;
    let query = c.cstr()?;
    let start = c.rest;
    let n = c.i16()?;
    if n < 0 {
        return Err(FieldError("Parse"));
    }
    c.take(n as usize * 4)?;
    let param_types = &start[..2 + n as usize * 4];
    Ok(Parse { name, query, param_types })
}

/// The names in a `Bind` ('B') message.
#[derive(Debug, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Destination portal.
    pub portal: &'a [u8],
    /// Source prepared statement.
    pub statement: &'a [u8],
    /// Everything after the two names (formats, values, result formats).
    pub rest: &'a [u8],
}

/// Reads the names of a `Bind` message.
pub fn bind(body: &[u8]) -> Result<Bind<'_>, FieldError> {
    let mut c = Cursor::new(body, "Bind");
    let portal = c.cstr()?;
    let statement = c.cstr()?;
    Ok(Bind { portal, statement, rest: c.rest })
}

/// Target of a `Describe` ('D') or `Close` ('C') message.
#[derive(Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// A prepared statement (`'S'`).
    Statement(&'a [u8]),
    /// A portal (`'P'`).
    Portal(&'a [u8]),
}

/// Reads a `Describe` or `Close` message.
pub fn target<'a>(body: &'a [u8], what: &'static str) -> Result<Target<'a>, FieldError> {
    let mut c = Cursor::new(body, what);
    let kind = c.u8()?;
    let name = c.cstr()?;
    match kind {
        b'S' => Ok(Target::Statement(name)),
        b'P' => Ok(Target::Portal(name)),
        _ => Err(FieldError(what)),
    }
}

/// Transaction status of a `ReadyForQuery` ('Z') message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxStatus {
    /// Not in a transaction block.
    Idle,
    /// In a transaction block.
    InTransaction,
    /// In a failed transaction block.
    Failed,
}

impl TxStatus {
    /// The status byte as sent on the wire.
    pub fn as_byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// Reads a `ReadyForQuery` message.
pub fn ready_for_query(body: &[u8]) -> Result<TxStatus, FieldError> {
    match Cursor::new(body, "ReadyForQuery").u8()? {
        b'I' => Ok(TxStatus::Idle),
        b'T' => Ok(TxStatus::InTransaction),
        b'E' => Ok(TxStatus::Failed),
        _ => Err(FieldError("ReadyForQuery")),
    }
}

/// Tag of a `CommandComplete` ('C') message, like `SELECT 1` or `COMMIT`.
pub fn command_tag(body: &[u8]) -> Result<&[u8], FieldError> {
    Cursor::new(body, "CommandComplete").cstr()
}

/// Fields of an `ErrorResponse` or `NoticeResponse`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ErrorFields<'a> {
    /// Severity, non-localized (`V`) if present, else localized (`S`).
    pub severity: &'a [u8],
    /// SQLSTATE code (`C`).
    pub code: &'a [u8],
    /// Primary message (`M`).
    pub message: &'a [u8],
}

/// Reads the interesting fields of an `ErrorResponse` ('E') or `NoticeResponse` ('N').
pub fn error_fields(body: &[u8]) -> Result<ErrorFields<'_>, FieldError> {
    let mut c = Cursor::new(body, "ErrorResponse");
    let mut out = ErrorFields::default();
    loop {
        let kind = c.u8()?;
        if kind == 0 {
            return Ok(out);
        }
        let value = c.cstr()?;
        match kind {
            b'V' => out.severity = value,
            b'S' if out.severity.is_empty() => out.severity = value,
            b'C' => out.code = value,
            b'M' => out.message = value,
            _ => {}
        }
    }
}

/// Name and value of a `ParameterStatus` ('S') message.
pub fn parameter_status(body: &[u8]) -> Result<(&[u8], &[u8]), FieldError> {
    let mut c = Cursor::new(body, "ParameterStatus");
    Ok((c.cstr()?, c.cstr()?))
}

/// Process id and secret of a `BackendKeyData` ('K') message.
///
/// Protocol 3.2 allows longer secrets; the proxy speaks 3.0 to servers, so
/// the secret is the classic 4 bytes.
pub fn backend_key(body: &[u8]) -> Result<(i32, i32), FieldError> {
    let mut c = Cursor::new(body, "BackendKeyData");
    Ok((c.i32()?, c.i32()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_parse() {
        let body = b"s1\0select $1\0\x00\x01\x00\x00\x00\x17";
        let p = parse(body).unwrap();
        assert_eq!(p.name, b"s1");
        assert_eq!(p.query, b"select $1");
        assert_eq!(p.param_types, b"\x00\x01\x00\x00\x00\x17");
        assert!(parse(b"s1\0select\0\x00\x02\x00\x00\x00\x17").is_err());
        assert!(parse(b"s1\0select").is_err());
        assert!(parse(b"s1\0select\0\xff\xff").is_err());
    }

    #[test]
    fn reads_bind_and_targets() {
        let b = bind(b"p\0s\0\x00\x00").unwrap();
        assert_eq!((b.portal, b.statement, b.rest), (&b"p"[..], &b"s"[..], &b"\x00\x00"[..]));
        assert_eq!(target(b"Sabc\0", "Describe").unwrap(), Target::Statement(b"abc"));
        assert_eq!(target(b"P\0", "Close").unwrap(), Target::Portal(b""));
        assert!(target(b"Xa\0", "Close").is_err());
        assert!(target(b"", "Close").is_err());
    }

    #[test]
    fn reads_backend_fields() {
        assert_eq!(ready_for_query(b"T").unwrap(), TxStatus::InTransaction);
        assert!(ready_for_query(b"").is_err());
        assert_eq!(command_tag(b"INSERT 0 1\0").unwrap(), b"INSERT 0 1");
        let e = error_fields(b"SERROR\0VERROR\0C42P01\0Mno such table\0\0").unwrap();
        assert_eq!((e.severity, e.code, e.message), (&b"ERROR"[..], &b"42P01"[..], &b"no such table"[..]));
        assert!(error_fields(b"SERROR").is_err());
        assert_eq!(parameter_status(b"TimeZone\0UTC\0").unwrap(), (&b"TimeZone"[..], &b"UTC"[..]));
        assert_eq!(backend_key(&[0, 0, 0, 7, 0, 0, 0, 9]).unwrap(), (7, 9));
    }
}
