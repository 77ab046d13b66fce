//! Tests of the fingerprint lexer: normalization, distinctness, hint, robustness.

use super::*;

fn same(a: &str, b: &str) {
    assert_eq!(normalize(a), normalize(b), "{a:?} vs {b:?}");
    let f = Fingerprinter::new();
    assert_eq!(f.fingerprint(a), f.fingerprint(b), "{a:?} vs {b:?}");
}

fn differ(a: &str, b: &str) {
    assert_ne!(normalize(a), normalize(b), "{a:?} vs {b:?}");
    let f = Fingerprinter::new();
    assert_ne!(f.fingerprint(a), f.fingerprint(b), "{a:?} vs {b:?}");
}

#[test]
fn literals_whitespace_comments_and_case_are_normalized() {
    let pairs = [
        ("SELECT 1", "select   2"),
        ("SELECT 1.5e10, .5, 1_000", "SELECT 2, 3.25, 7"),
        ("SELECT 0x1F", "SELECT 0b101"),
        ("SELECT 'a''b'", "SELECT 'zzz'"),
        ("SELECT E'a\\'b'", "SELECT E'x'"),
        ("SELECT B'0101', X'FF'", "SELECT b'1', x'00'"),
        ("SELECT $$a'b$$", "SELECT $$x$$"),
        ("SELECT $fn$ $$ inner $$ $fn$", "SELECT $fn$x$fn$"),
        ("SELECT N'x', U&'\\0041'", "SELECT n'y', u&'z'"),
        ("SELECT * FROM t WHERE a = $1", "select * from T where A=$2"),
        ("SELECT 1 -- trailing\n", "SELECT 7"),
        ("/* a /* nested */ comment */ SELECT 1", "SELECT 1"),
        ("SELECT\t1\r\n;", "SELECT 1;"),
        ("SELECT a/**/FROM t", "SELECT a FROM t"),
        ("SELECT 'é', ünïcode", "SELECT 'x', ünïcode"),
    ];
    for (a, b) in pairs {
        same(a, b);
    }
}

#[test]
fn structure_and_identifiers_are_kept() {
    let pairs = [
        ("SELECT a FROM t", "SELECT b FROM t"),
        ("SELECT \"Foo\"", "SELECT foo"),
        ("SELECT \"Foo\"", "SELECT \"foo\""),
        ("SELECT ab", "SELECT a b"),
        ("SELECT a <= b", "SELECT a < = b"),
        ("SELECT 1", "SELECT '1'"),
        ("SELECT E'x'", "SELECT E 'x'"),
        ("SELECT 1; SELECT 2", "SELECT 1 SELECT 2"),
        ("SELECT f(1)", "SELECT g(1)"),
        ("SELECT 1 /* tandem:primary */", "SELECT 1"),
        ("SELECT 1.5", "SELECT 1. 5"),
        ("SELECT a --b\n", "SELECT a - - b"),
        ("SELECT ÄB", "SELECT äb"),
        ("SELECT x::int", "SELECT x: :int"),
    ];
    for (a, b) in pairs {
        differ(a, b);
    }
}

#[test]
fn hint_detection() {
    let f = Fingerprinter::new();
    assert!(f.fingerprint("/* tandem:primary */ SELECT 1").hint);
    assert!(f.fingerprint("SELECT 1 /*TANDEM:PRIMARY*/").hint);
    assert!(f.fingerprint("SELECT 1 -- Tandem:Primary").hint);
    assert!(!f.fingerprint("SELECT '/* tandem:primary */'").hint);
    assert!(!f.fingerprint("SELECT 1 /* tandem */").hint);
}

#[test]
fn unterminated_constructs_do_not_panic() {
    let f = Fingerprinter::new();
    for sql in [
        "'",
        "E'\\",
        "\"",
        "$$",
        "$a$ x",
        "/*",
        "/* /*",
        "--",
        "U&",
        "U&'",
        "U&\"",
        "B'",
        "0x",
        "1e",
        "1e+",
        ".",
        "..",
        "$",
        "$1",
        "$é$x$é$",
        "é",
        "\u{0}",
        "x'",
        "::",
        ":",
    ] {
        let _ = f.fingerprint(sql);
    }
}

#[test]
fn arbitrary_bytes_do_not_panic() {
    // Deterministic pseudo-random inputs biased towards the lexer's special characters.
    let alphabet: &[u8] = b"'\"$-/*eEbBxXuU&0123456789._ \n\\;:abc\xc3\xa9";
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let f = Fingerprinter::new();
    for _ in 0..5000 {
        let len = (state % 40) as usize;
        let mut bytes = Vec::with_capacity(len);
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            bytes.push(alphabet[(state % alphabet.len() as u64) as usize]);
        }
        // Raw bytes, not only UTF-8: the fingerprint runs before any validation.
        let _ = f.fingerprint(&bytes);
        let _ = f.fingerprint(&*String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn linear_on_long_input() {
    let long = "$a$".to_string() + &"$a".repeat(200_000);
    let f = Fingerprinter::new();
    let started = std::time::Instant::now();
    let _ = f.fingerprint(&long);
    let _ = f.fingerprint(&"/*".repeat(200_000));
    let _ = f.fingerprint(&"'".repeat(200_001));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn streamed_hash_equals_hash_of_the_token_stream() {
    // The fingerprint hashes tokens through a fixed buffer (flushed when full, long tokens
    // hashed directly); it must equal one hash over the whole normalized stream.
    let f = Fingerprinter::new();
    let long_word = "Abc".repeat(700);
    let many = (0..300).map(|i| format!("C{i}")).collect::<Vec<_>>().join(", ");
    let statements = [
        "SELECT abalance FROM pgbench_accounts WHERE aid = 1;".to_string(),
        format!("SELECT {long_word} FROM t WHERE x = 1"),
        format!("SELECT \"{long_word}\", {many} FROM t /* tandem:primary */"),
        String::new(),
    ];
    for sql in &statements {
        let normalized = normalize(sql);
        let mut hasher = SipHasher13::new_with_key(&f.key);
        hasher.write(&normalized.tokens);
        let expected = Fingerprint { hash: hasher.finish128().as_u128(), hint: normalized.hint };
        assert_eq!(f.fingerprint(sql), expected, "{sql:.60}");
    }
    same(&format!("SELECT {long_word}"), &format!("select {}", long_word.to_lowercase()));
    differ(&format!("SELECT {long_word}a"), &format!("SELECT {long_word}b"));
    differ(&format!("SELECT {many}, z"), &format!("SELECT {many}, y"));
}

#[test]
fn eight_byte_lowercasing_matches_std_for_every_byte() {
    let all: Vec<u8> = (0..=255u8).collect();
    for offset in 0..8 {
        let src = &all[offset..];
        let mut dst = vec![0u8; src.len()];
        copy_lowercase(&mut dst, src);
        assert_eq!(dst, src.to_ascii_lowercase());
    }
}
