//! PostgreSQL's md5 password scheme, on both sides of the proxy.
//!
//! A stored md5 secret is `"md5" + hex(md5(password || user))`; the answer to
//! an AuthenticationMD5Password challenge is
//! `"md5" + hex(md5(hex(md5(password || user)) || salt))`. The answer needs
//! only the stored hash, so the proxy can pass the hash on to a server: an md5
//! secret fetched with `auth_query` logs in to servers without the password.
//! [`super::authenticate_client`] verifies clients with [`verify`];
//! [`crate::pool::connect`] answers servers with [`response`].

use md5::{Digest, Md5};

use super::secret::ct_eq;

fn md5_hex(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(32);
    for b in digest {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    out
}

/// The stored form of a password: `"md5" + hex(md5(password || user))`.
pub fn secret(password: &[u8], user: &str) -> String {
    format!("md5{}", md5_hex(&[password, user.as_bytes()]))
}

/// The answer to a challenge with `salt`, from a stored `md5...` secret.
///
/// `secret` must be an md5 secret (see [`super::secret::is_md5_hash`]); its
/// hex part is hashed with the salt.
pub fn response(secret: &str, salt: [u8; 4]) -> String {
    let hex = secret.strip_prefix("md5").unwrap_or(secret);
    format!("md5{}", md5_hex(&[hex.as_bytes(), &salt]))
}

/// The answer to a challenge with `salt`, from the password.
pub fn response_from_password(password: &[u8], user: &str, salt: [u8; 4]) -> String {
    response(&secret(password, user), salt)
}

/// Checks a client's answer (the PasswordMessage body without its NUL)
/// against the stored `md5...` secret, in constant time.
pub fn verify(secret: &str, salt: [u8; 4], answer: &[u8]) -> bool {
    ct_eq(response(secret, salt).as_bytes(), answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_postgres_vectors() {
        // SELECT 'md5' || md5('secret' || 'alice');
        assert_eq!(secret(b"secret", "alice"), "md54a0a68b43b6cd5cf266fa02f196e2371");
        assert_eq!(md5_hex(&[b""]), "d41d8cd98f00b204e9800998ecf8427e");
        let salt = [1, 2, 3, 4];
        assert_eq!(response_from_password(b"secret", "alice", salt), "md598a0412b9c31436fc53776e863350083");
        // postgres-protocol's client implementation gives the same answer.
        assert_eq!(
            response_from_password(b"secret", "alice", salt),
            postgres_protocol::authentication::md5_hash(b"alice", b"secret", salt)
        );
    }

    #[test]
    fn pass_the_hash() {
        let salt = [9, 8, 7, 6];
        let stored = secret(b"pw", "bob");
        assert_eq!(response(&stored, salt), response_from_password(b"pw", "bob", salt));
        assert!(verify(&stored, salt, response_from_password(b"pw", "bob", salt).as_bytes()));
        assert!(!verify(&stored, salt, response_from_password(b"pw", "bob", [0; 4]).as_bytes()));
        assert!(!verify(&stored, salt, b"md5"));
        assert!(!verify(&stored, salt, b""));
    }
}
