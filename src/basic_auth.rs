//! HTTP Basic authentication between partners (RFC 7617): the `Authorization` value we
//! send, and the check of what a partner sends us against a salted hash of its password
//! (`config.db` never holds an inbound password). Comparisons take the same time whatever
//! matches, so that timing tells an attacker nothing.

use crate::as2::encoding::{base64_decode, base64_encode, hex_lower};
use crate::store::InboundCredentials;

/// The longest `Authorization` value looked at; anything longer is refused unread.
const MAX_AUTHORIZATION_BYTES: usize = 4096;

/// The `Authorization` header value for `user` and `password`.
pub fn authorization_value(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64_encode(format!("{user}:{password}").as_bytes())
    )
}

fn salted_digest(salt: &[u8], password: &str) -> [u8; 32] {
    let mut h = openssl::sha::Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    h.finish()
}

/// `salt$sha256(salt || password)`, both in hex, with a fresh 16-byte salt.
pub fn hash_password(password: &str) -> Result<String, openssl::error::ErrorStack> {
    let mut salt = [0u8; 16];
    openssl::rand::rand_bytes(&mut salt)?;
    Ok(format!(
        "{}${}",
        hex_lower(&salt),
        hex_lower(&salted_digest(&salt, password))
    ))
}

fn hex_decode(text: &str) -> Option<Vec<u8>> {
    let b = text.as_bytes();
    if b.len() % 2 != 0 {
        return None;
    }
    b.chunks(2)
        .map(|pair| {
            let high = crate::as2::encoding::hex_digit_value(pair[0])?;
            let low = crate::as2::encoding::hex_digit_value(pair[1])?;
            Some(high * 16 + low)
        })
        .collect()
}

/// Whether `authorization` (the request's header value, if any) carries the user and
/// password of `expected`. Malformed, missing or oversized values are simply `false`.
pub fn matches(authorization: Option<&str>, expected: &InboundCredentials) -> bool {
    let Some(value) = authorization.filter(|v| v.len() <= MAX_AUTHORIZATION_BYTES) else {
        return false;
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64_decode(encoded.trim().as_bytes()) else {
        return false;
    };
    let Ok(decoded) = String::from_utf8(decoded) else {
        return false;
    };
    let Some((user, password)) = decoded.split_once(':') else {
        return false;
    };
    let Some((salt_hex, digest_hex)) = expected.password_hash.split_once('$') else {
        return false;
    };
    let (Some(salt), Some(want)) = (hex_decode(salt_hex), hex_decode(digest_hex)) else {
        return false;
    };
    // Compared as digests: equal lengths whatever was sent, so the comparison itself is
    // constant-time, and both parts are always compared.
    let user_ok = openssl::memcmp::eq(
        &openssl::sha::sha256(user.as_bytes()),
        &openssl::sha::sha256(expected.user.as_bytes()),
    );
    let got = salted_digest(&salt, password);
    let password_ok = want.len() == got.len() && openssl::memcmp::eq(&got, &want);
    user_ok & password_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected(user: &str, password: &str) -> InboundCredentials {
        InboundCredentials {
            user: user.into(),
            password_hash: hash_password(password).unwrap(),
        }
    }

    #[test]
    fn the_right_user_and_password_match_and_nothing_else_does() {
        let creds = expected("partner", "s3cret:with colon");
        let good = authorization_value("partner", "s3cret:with colon");
        assert!(matches(Some(&good), &creds));
        assert!(matches(Some(&good.replace("Basic", "basic")), &creds));
        for bad in [
            authorization_value("partner", "s3cret"),
            authorization_value("other", "s3cret:with colon"),
            "Bearer abc".to_string(),
            "Basic !!!".to_string(),
            "Basic".to_string(),
            format!("Basic {}", "A".repeat(5000)),
        ] {
            assert!(!matches(Some(&bad), &creds), "{bad}");
        }
        assert!(!matches(None, &creds));
    }

    #[test]
    fn hashes_are_salted_and_hold_no_password() {
        let (a, b) = (
            hash_password("hunter2").unwrap(),
            hash_password("hunter2").unwrap(),
        );
        assert_ne!(a, b, "the same password hashes differently each time");
        assert!(!a.contains("hunter2"));
        for hash in [a, b] {
            let creds = InboundCredentials {
                user: "u".into(),
                password_hash: hash,
            };
            assert!(matches(Some(&authorization_value("u", "hunter2")), &creds));
        }
    }
}
