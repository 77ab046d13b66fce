//! Statement fingerprints: the cache key of the classifier.
//!
//! Data flow: client statement text → [`Fingerprinter::fingerprint`] → cache lookup in
//! [`super::cache`]; only on a miss does the statement reach the pg_query parser.
//!
//! Hand-written because no crate offers a PostgreSQL lexer that is cheap enough to run on every
//! simple query (pg_query's own scanner goes through C, protobuf and allocation per token, which
//! is the cost the cache is there to avoid). The lexer follows PostgreSQL's `scan.l` closely
//! enough that two statements with the same fingerprint differ only in literal values,
//! whitespace and comments, which never decide the route. Where the lexer and PostgreSQL could
//! disagree about token boundaries (adjacent literals, trailing junk after numbers), the only
//! statements that can share a fingerprint with a valid one are ones PostgreSQL rejects.
//!
//! Guarantees: one pass over the bytes (O(n); the dollar-quote terminator search uses the
//! linear-time `memchr::memmem` searcher), no panics on any input.

use siphasher::sip128::{Hasher128, SipHasher13};
use std::hash::Hasher;

/// The comment text that forces the primary; matched ASCII case-insensitively inside comments.
const HINT: &[u8] = b"tandem:primary";

/// Token tags written to the normalized form. Each token is `tag [content] 0xFF`; 0xFF never
/// occurs in UTF-8, so the encoding is prefix-free and token boundaries cannot blur.
mod tag {
    pub const WORD: u8 = b'w';
    pub const QUOTED_IDENT: u8 = b'q';
    pub const UNICODE_IDENT: u8 = b'u';
    pub const STRING: u8 = b's';
    pub const ESCAPE_STRING: u8 = b'e';
    pub const UNICODE_STRING: u8 = b'U';
    pub const BIT_STRING: u8 = b'b';
    pub const HEX_STRING: u8 = b'x';
    pub const NATIONAL_STRING: u8 = b'n';
    pub const DOLLAR_STRING: u8 = b'$';
    pub const NUMBER: u8 = b'9';
    pub const PARAM: u8 = b'p';
    pub const OPERATOR: u8 = b'o';
    pub const PUNCT: u8 = b'.';
    pub const HINT: u8 = b'H';
    pub const END: u8 = 0xFF;
}

/// The result of fingerprinting one statement string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint {
    /// 128-bit hash of the normalized token stream (hint flag included); the cache key.
    pub hash: u128,
    /// Whether a comment carried the `tandem:primary` hint, which forces the primary.
    pub hint: bool,
}

/// Computes fingerprints with a per-process random SipHash-1-3 (128-bit) key, so that nobody
/// can precompute colliding statements to steer a write to a replica.
#[derive(Clone, Debug)]
pub struct Fingerprinter {
    /// Key of the keyed hash.
    key: [u8; 16],
}

impl Default for Fingerprinter {
    fn default() -> Self {
        Fingerprinter::new()
    }
}

impl Fingerprinter {
    /// A fingerprinter with a fresh random key.
    pub fn new() -> Fingerprinter {
        Fingerprinter { key: rand::random() }
    }

    /// Fingerprints `sql`: literals, whitespace and comments are normalized away, keywords and
    /// unquoted identifiers are case-folded (ASCII only, as PostgreSQL does for UTF-8).
    ///
    /// This runs for every simple query, so the token stream is never materialized: tokens go
    /// into a small stack buffer that is hashed in one pass when it fills up and at the end
    /// (SipHash is a byte stream, so where the buffer is cut does not change the hash).
    pub fn fingerprint(&self, sql: &(impl AsRef<[u8]> + ?Sized)) -> Fingerprint {
        let sql = sql.as_ref();
        self.fingerprint_inner(sql, None)
    }

    /// [`Fingerprinter::fingerprint`] that also records where `sql`'s plain literals are,
    /// for the session's [`super::memo::StatementMemo`] (`spans` is cleared first).
    pub fn fingerprint_recording(&self, sql: &[u8], spans: &mut Vec<LiteralSpan>) -> Fingerprint {
        spans.clear();
        self.fingerprint_inner(sql, Some(spans))
    }

    fn fingerprint_inner(&self, sql: &[u8], spans: Option<&mut Vec<LiteralSpan>>) -> Fingerprint {
        let mut sink = HashSink { buf: [0; HASH_BUF], len: 0, hasher: SipHasher13::new_with_key(&self.key) };
        let hint = lex(sql, &mut sink, spans);
        sink.flush();
        Fingerprint { hash: sink.hasher.finish128().as_u128(), hint }
    }
}

/// Where the lexer found a literal whose value can change without changing the token stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiteralSpan {
    /// First byte of the token.
    pub start: u32,
    /// One past its last byte.
    pub end: u32,
    /// What kind of token it is.
    pub kind: LiteralKind,
}

/// The literal tokens [`LiteralSpan`] records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiteralKind {
    /// An integer of plain ASCII digits, followed by a byte that cannot continue a number
    /// (so any other run of digits in its place lexes as one number token too).
    Digits,
    /// A plain `'...'` string (no prefix letter): only its quotes decide where it ends.
    String,
}

/// The normalized token stream of a statement string (exposed for tests and debugging).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Normalized {
    /// Encoded tokens, see [`tag`].
    pub tokens: Vec<u8>,
    /// Whether the hint comment was seen.
    pub hint: bool,
}

/// Lexes `sql` into its normalized token stream (the bytes [`Fingerprinter::fingerprint`]
/// hashes).
pub fn normalize(sql: &(impl AsRef<[u8]> + ?Sized)) -> Normalized {
    let sql = sql.as_ref();
    let mut tokens = Vec::with_capacity(sql.len() + sql.len() / 2 + 16);
    let hint = lex(sql, &mut tokens, None);
    Normalized { tokens, hint }
}

/// Runs the lexer over `sql` into `out`, appending the hint token if a comment carried it.
fn lex<S: Sink>(sql: &[u8], out: &mut S, spans: Option<&mut Vec<LiteralSpan>>) -> bool {
    let mut lexer = Lexer { bytes: sql, pos: 0, out, hint: false, spans };
    lexer.run();
    let hint = lexer.hint;
    if hint {
        lexer.emit(tag::HINT, &[]);
    }
    hint
}

/// Where the lexer writes tokens: a `Vec` for [`normalize`], the hashing buffer for
/// [`Fingerprinter::fingerprint`].
trait Sink {
    /// Appends one token: tag, content, terminator.
    fn token(&mut self, tag: u8, content: &[u8]);
    /// Appends one token whose content is ASCII-lower-cased on the way.
    fn token_lowercase(&mut self, tag: u8, content: &[u8]);
}

impl Sink for Vec<u8> {
    fn token(&mut self, tag: u8, content: &[u8]) {
        self.push(tag);
        self.extend_from_slice(content);
        self.push(tag::END);
    }

    fn token_lowercase(&mut self, tag: u8, content: &[u8]) {
        self.push(tag);
        self.extend(content.iter().map(u8::to_ascii_lowercase));
        self.push(tag::END);
    }
}

/// Size of the stack buffer in front of the hasher: typical statements fit, so the hasher
/// usually runs once over one contiguous slice.
const HASH_BUF: usize = 256;

/// Copies `src` into `dst` (same length), ASCII-lower-casing it eight bytes at a time: words
/// are most of a statement's bytes, and a byte-at-a-time loop was the lexer's largest cost.
fn copy_lowercase(dst: &mut [u8], src: &[u8]) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let mut dst_chunks = dst.chunks_exact_mut(8);
    let mut src_chunks = src.chunks_exact(8);
    for (d, s) in dst_chunks.by_ref().zip(src_chunks.by_ref()) {
        let Ok(bytes) = <[u8; 8]>::try_from(s) else { continue };
        let x = u64::from_le_bytes(bytes);
        // Per byte, with the top bit cleared: adding 0x3F sets it for b >= 'A', adding 0x25
        // sets it for b > 'Z'; their difference marks 'A'..='Z'. Bytes >= 0x80 (UTF-8) stay.
        let low7 = x & (ONES * 0x7F);
        let upper = ((low7 + ONES * 0x3F) ^ (low7 + ONES * 0x25)) & !x & (ONES * 0x80);
        d.copy_from_slice(&(x | (upper >> 2)).to_le_bytes());
    }
    for (d, s) in dst_chunks.into_remainder().iter_mut().zip(src_chunks.remainder()) {
        *d = s.to_ascii_lowercase();
    }
}

/// A fixed buffer that feeds the hasher when full; tokens longer than the buffer are hashed
/// directly.
struct HashSink {
    buf: [u8; HASH_BUF],
    len: usize,
    hasher: SipHasher13,
}

impl HashSink {
    fn flush(&mut self) {
        if let Some(pending) = self.buf.get(..self.len) {
            self.hasher.write(pending);
        }
        self.len = 0;
    }

    /// Room for `n` more bytes, flushing first if needed; false if `n` exceeds the buffer.
    fn room(&mut self, n: usize) -> bool {
        if self.len + n > HASH_BUF {
            self.flush();
        }
        n <= HASH_BUF
    }
}

impl HashSink {
    /// Appends `tag content END`, lower-casing `content` (ASCII) if asked; a token longer
    /// than the buffer is hashed directly.
    #[inline]
    fn put(&mut self, tag: u8, content: &[u8], lowercase: bool) {
        let n = content.len() + 2;
        if !self.room(n) {
            self.hasher.write(&[tag]);
            if lowercase {
                for chunk in content.chunks(64) {
                    let mut lower = [0u8; 64];
                    let lower = &mut lower[..chunk.len()];
                    lower.copy_from_slice(chunk);
                    lower.make_ascii_lowercase();
                    self.hasher.write(lower);
                }
            } else {
                self.hasher.write(content);
            }
            self.hasher.write(&[tag::END]);
            return;
        }
        let Some(dst) = self.buf.get_mut(self.len..self.len + n) else { return };
        if let Some((first, rest)) = dst.split_first_mut() {
            *first = tag;
            if let Some((last, middle)) = rest.split_last_mut() {
                if lowercase {
                    copy_lowercase(middle, content);
                } else {
                    middle.copy_from_slice(content);
                }
                *last = tag::END;
            }
        }
        self.len += n;
    }
}

impl Sink for HashSink {
    #[inline]
    fn token(&mut self, tag: u8, content: &[u8]) {
        self.put(tag, content, false);
    }

    #[inline]
    fn token_lowercase(&mut self, tag: u8, content: &[u8]) {
        self.put(tag, content, true);
    }
}

/// Single-pass lexer state.
struct Lexer<'a, S> {
    bytes: &'a [u8],
    pos: usize,
    out: &'a mut S,
    hint: bool,
    /// Where to record literal positions, if anywhere.
    spans: Option<&'a mut Vec<LiteralSpan>>,
}

/// Character classes, looked up in [`CLASSES`] (one table probe instead of a chain of compares).
const SPACE: u8 = 1;
const IDENT_START: u8 = 2;
const IDENT_CONT: u8 = 4;
/// PostgreSQL's `op_chars`.
const OP: u8 = 8;

const CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        let mut class = 0;
        if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            class |= SPACE;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            class |= IDENT_START | IDENT_CONT;
        }
        if c.is_ascii_digit() || c == b'$' {
            class |= IDENT_CONT;
        }
        if matches!(
            c,
            b'~' | b'!'
                | b'@'
                | b'#'
                | b'^'
                | b'&'
                | b'|'
                | b'`'
                | b'?'
                | b'+'
                | b'-'
                | b'*'
                | b'/'
                | b'%'
                | b'<'
                | b'>'
                | b'='
        ) {
            class |= OP;
        }
        table[b] = class;
        b += 1;
    }
    table
};

fn has_class(b: u8, class: u8) -> bool {
    CLASSES[usize::from(b)] & class != 0
}

fn is_space(b: u8) -> bool {
    has_class(b, SPACE)
}

fn is_ident_start(b: u8) -> bool {
    has_class(b, IDENT_START)
}

fn is_ident_cont(b: u8) -> bool {
    has_class(b, IDENT_CONT)
}

fn is_op_char(b: u8) -> bool {
    has_class(b, OP)
}

impl<S: Sink> Lexer<'_, S> {
    /// Byte at `i`, or 0 past the end (0 matches no token class, so it ends every scan).
    fn at(&self, i: usize) -> u8 {
        self.bytes.get(i).copied().unwrap_or(0)
    }

    fn emit(&mut self, tag: u8, content: &[u8]) {
        self.out.token(tag, content);
    }

    fn run(&mut self) {
        while self.pos < self.bytes.len() {
            let b = self.at(self.pos);
            let next = self.at(self.pos + 1);
            match b {
                // Words first: they are the most common token and no other arm takes their bytes.
                _ if is_ident_start(b) => self.word(),
                _ if is_space(b) => {
                    let rest = self.bytes.get(self.pos + 1..).unwrap_or_default();
                    self.pos += 1 + rest.iter().position(|&b| !is_space(b)).unwrap_or(rest.len());
                }
                b'-' if next == b'-' => self.line_comment(),
                b'/' if next == b'*' => self.block_comment(),
                b'\'' => {
                    let start = self.pos;
                    self.pos += 1;
                    self.quoted_string(false, tag::STRING);
                    self.note_literal(start, LiteralKind::String);
                }
                b'"' => self.quoted_ident(tag::QUOTED_IDENT),
                b'$' => self.dollar(),
                b'0'..=b'9' => self.number(),
                b'.' if next.is_ascii_digit() => self.number(),
                b'.' if next == b'.' => self.punct(2),
                b':' if next == b':' || next == b'=' => self.punct(2),
                b',' | b'(' | b')' | b'[' | b']' | b'.' | b';' | b':' => self.punct(1),
                _ if is_op_char(b) => self.operator(),
                _ => self.punct(1),
            }
        }
    }

    /// Records the token that started at `start` and ended at `self.pos`.
    fn note_literal(&mut self, start: usize, kind: LiteralKind) {
        if let Some(spans) = self.spans.as_deref_mut() {
            if let (Ok(start), Ok(end)) = (u32::try_from(start), u32::try_from(self.pos)) {
                spans.push(LiteralSpan { start, end, kind });
            }
        }
    }

    fn punct(&mut self, len: usize) {
        let end = (self.pos + len).min(self.bytes.len());
        let bytes = self.bytes;
        self.emit(tag::PUNCT, bytes.get(self.pos..end).unwrap_or_default());
        self.pos = end;
    }

    /// Notes the hint if `text` contains it, ASCII case-insensitively.
    fn check_hint(&mut self, text: &[u8]) {
        if !self.hint && text.windows(HINT.len()).any(|w| w.eq_ignore_ascii_case(HINT)) {
            self.hint = true;
        }
    }

    fn line_comment(&mut self) {
        let start = self.pos;
        let mut i = self.pos + 2;
        while i < self.bytes.len() && !matches!(self.at(i), b'\n' | b'\r') {
            i += 1;
        }
        self.pos = i;
        let text = &self.bytes[start..i];
        self.check_hint(text);
    }

    /// Block comments nest in PostgreSQL; an unterminated one runs to the end.
    fn block_comment(&mut self) {
        let start = self.pos;
        let mut depth = 0usize;
        let mut i = self.pos;
        while i < self.bytes.len() {
            let b = self.at(i);
            let next = self.at(i + 1);
            if b == b'/' && next == b'*' {
                depth += 1;
                i += 2;
            } else if b == b'*' && next == b'/' {
                depth = depth.saturating_sub(1);
                i += 2;
                if depth == 0 {
                    break;
                }
            } else {
                i += 1;
            }
        }
        let end = i.min(self.bytes.len());
        self.pos = end;
        let text = &self.bytes[start..end];
        self.check_hint(text);
    }

    /// Scans a single-quoted literal whose opening quote is already consumed. `backslash`
    /// selects E'' escape processing. `''` is an escaped quote in every form that allows it.
    fn quoted_string(&mut self, backslash: bool, tag: u8) {
        let mut i = self.pos;
        while i < self.bytes.len() {
            match self.at(i) {
                b'\\' if backslash => i += 2,
                b'\'' if self.at(i + 1) == b'\'' => i += 2,
                b'\'' => {
                    i += 1;
                    break;
                }
                _ => i += 1,
            }
        }
        self.pos = i.min(self.bytes.len());
        self.emit(tag, &[]);
    }

    /// B'' and X'' literals end at the first quote (no doubling, as in `scan.l`).
    fn bit_string(&mut self, tag: u8) {
        let mut i = self.pos;
        while i < self.bytes.len() && self.at(i) != b'\'' {
            i += 1;
        }
        self.pos = (i + 1).min(self.bytes.len());
        self.emit(tag, &[]);
    }

    /// `"..."` identifier kept byte-exact (quoted identifiers are case-sensitive).
    fn quoted_ident(&mut self, tag: u8) {
        let start = self.pos;
        let mut i = self.pos + 1;
        while i < self.bytes.len() {
            if self.at(i) == b'"' {
                if self.at(i + 1) == b'"' {
                    i += 2;
                    continue;
                }
                i += 1;
                break;
            }
            i += 1;
        }
        let end = i.min(self.bytes.len());
        self.pos = end;
        let bytes = self.bytes;
        self.emit(tag, &bytes[start..end]);
    }

    /// `$1` parameters, `$tag$...$tag$` strings, or a stray `$`.
    fn dollar(&mut self) {
        let next = self.at(self.pos + 1);
        if next.is_ascii_digit() {
            let mut i = self.pos + 1;
            while self.at(i).is_ascii_digit() {
                i += 1;
            }
            self.pos = i;
            self.emit(tag::PARAM, &[]);
            return;
        }
        // Dollar-quote delimiter: `$` [ident_start ident_cont-without-$ *] `$`.
        let mut i = self.pos + 1;
        if is_ident_start(self.at(i)) {
            i += 1;
            while is_ident_start(self.at(i)) || self.at(i).is_ascii_digit() {
                i += 1;
            }
        }
        if self.at(i) != b'$' {
            self.punct(1);
            return;
        }
        let delimiter_end = i + 1;
        let Some(delimiter) = self.bytes.get(self.pos..delimiter_end) else {
            self.punct(1);
            return;
        };
        let body_start = delimiter_end;
        let end = match self.bytes.get(body_start..).and_then(|rest| memchr::memmem::find(rest, delimiter)) {
            Some(offset) => body_start + offset + delimiter.len(),
            None => self.bytes.len(),
        };
        self.pos = end;
        self.emit(tag::DOLLAR_STRING, &[]);
    }

    /// Numeric literal: decimal with fraction/exponent, or 0x/0o/0b with underscores.
    fn number(&mut self) {
        let start = self.pos;
        let mut i = self.pos;
        let radix_prefix = self.at(i) == b'0'
            && matches!(self.at(i + 1), b'x' | b'X' | b'o' | b'O' | b'b' | b'B')
            && self.at(i + 2).is_ascii_hexdigit();
        if radix_prefix {
            i += 2;
            while self.at(i).is_ascii_hexdigit() || self.at(i) == b'_' {
                i += 1;
            }
        } else {
            i = self.digits(i);
            if self.at(i) == b'.' && self.at(i + 1) != b'.' {
                i = self.digits(i + 1);
            }
            let exp_sign = matches!(self.at(i + 1), b'+' | b'-');
            let exp_digit = if exp_sign { i + 2 } else { i + 1 };
            if matches!(self.at(i), b'e' | b'E') && self.at(exp_digit).is_ascii_digit() {
                i = self.digits(exp_digit);
            }
        }
        self.pos = i;
        self.emit(tag::NUMBER, &[]);
        let next = self.at(i);
        if self.spans.is_some()
            && !is_ident_cont(next)
            && next != b'.'
            && self.bytes.get(start..i).is_some_and(|t| t.iter().all(u8::is_ascii_digit))
        {
            self.note_literal(start, LiteralKind::Digits);
        }
    }

    /// Skips digits with single underscores between them.
    fn digits(&self, mut i: usize) -> usize {
        loop {
            let b = self.at(i);
            if b.is_ascii_digit() || (b == b'_' && self.at(i + 1).is_ascii_digit()) {
                i += 1;
            } else {
                return i;
            }
        }
    }

    /// Operator run; like `scan.l`, a `--` or `/*` inside ends it (a comment starts there).
    fn operator(&mut self) {
        let start = self.pos;
        let mut i = self.pos;
        while is_op_char(self.at(i)) {
            if i > start
                && ((self.at(i) == b'-' && self.at(i + 1) == b'-') || (self.at(i) == b'/' && self.at(i + 1) == b'*'))
            {
                break;
            }
            i += 1;
        }
        self.pos = i;
        let bytes = self.bytes;
        self.emit(tag::OPERATOR, &bytes[start..i]);
    }

    /// Keyword or identifier, or the prefix of an E'', B'', X'', N'', U&'' literal or U&"" name.
    fn word(&mut self) {
        let start = self.pos;
        let first = self.at(start);
        let next = self.at(start + 1);
        if next == b'\'' {
            let literal = match first {
                b'e' | b'E' => Some((true, tag::ESCAPE_STRING)),
                b'n' | b'N' => Some((false, tag::NATIONAL_STRING)),
                _ => None,
            };
            if let Some((backslash, tag)) = literal {
                self.pos = start + 2;
                self.quoted_string(backslash, tag);
                return;
            }
            let bits = match first {
                b'b' | b'B' => Some(tag::BIT_STRING),
                b'x' | b'X' => Some(tag::HEX_STRING),
                _ => None,
            };
            if let Some(tag) = bits {
                self.pos = start + 2;
                self.bit_string(tag);
                return;
            }
        }
        if matches!(first, b'u' | b'U') && next == b'&' {
            match self.at(start + 2) {
                b'\'' => {
                    self.pos = start + 3;
                    self.quoted_string(false, tag::UNICODE_STRING);
                    return;
                }
                b'"' => {
                    self.pos = start + 2;
                    self.quoted_ident(tag::UNICODE_IDENT);
                    return;
                }
                _ => {}
            }
        }
        let rest = self.bytes.get(start..).unwrap_or_default();
        let len = rest.iter().position(|&b| !is_ident_cont(b)).unwrap_or(rest.len());
        self.pos = start + len;
        self.out.token_lowercase(tag::WORD, rest.get(..len).unwrap_or_default());
    }
}

#[cfg(test)]
#[path = "fingerprint_tests.rs"]
mod tests;
