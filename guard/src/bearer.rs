//! Extraction of the bearer token from gRPC request metadata (RFC 6750, section 2.1).

use http::HeaderMap;
use http::header::AUTHORIZATION;

use crate::verify::MAX_TOKEN_LEN;

/// A reason the `authorization` metadata does not carry a usable bearer token.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum CredentialError {
    /// No `authorization` entry was sent.
    #[error("missing bearer token: send the metadata entry `authorization: Bearer <token>`")]
    Missing,
    /// More than one `authorization` entry was sent, so which one counts would be ambiguous.
    #[error("more than one authorization metadata entry")]
    Duplicate,
    /// The scheme is not `Bearer`.
    #[error("unsupported authorization scheme: use `Bearer <token>`")]
    UnsupportedScheme,
    /// The value is not visible ASCII, has no token after the scheme, or the token contains
    /// characters that a bearer token cannot contain.
    #[error("malformed authorization metadata: expected `Bearer <token>`")]
    Malformed,
    /// The value is longer than any token this service issues.
    #[error("authorization metadata is too large")]
    TooLarge,
}

impl CredentialError {
    /// Returns a stable lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialError::Missing => "missing_credentials",
            CredentialError::Duplicate => "duplicate_credentials",
            CredentialError::UnsupportedScheme => "unsupported_scheme",
            CredentialError::Malformed => "malformed_credentials",
            CredentialError::TooLarge => "credentials_too_large",
        }
    }
}

const SCHEME: &str = "bearer";

/// Returns the bearer token of a request.
///
/// Exactly one `authorization` entry must be present. The scheme name is matched without regard
/// to case, as RFC 7235 requires. One or more spaces follow it, then a token of RFC 6750
/// `b64token` characters with nothing after it.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, CredentialError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(CredentialError::Missing)?;
    if values.next().is_some() {
        return Err(CredentialError::Duplicate);
    }
    if value.len() > MAX_TOKEN_LEN + SCHEME.len() + 16 {
        return Err(CredentialError::TooLarge);
    }

    let value = value.to_str().map_err(|_| CredentialError::Malformed)?;
    let (scheme, rest) = value
        .split_once(' ')
        .ok_or(if value.eq_ignore_ascii_case(SCHEME) {
            CredentialError::Malformed
        } else {
            CredentialError::UnsupportedScheme
        })?;
    if !scheme.eq_ignore_ascii_case(SCHEME) {
        return Err(CredentialError::UnsupportedScheme);
    }

    let token = rest.trim_start_matches(' ');
    if token.is_empty() || !token.bytes().all(is_b64token_byte) {
        return Err(CredentialError::Malformed);
    }
    let padding = token.bytes().rev().take_while(|&byte| byte == b'=').count();
    if token[..token.len() - padding].contains('=') || padding == token.len() {
        return Err(CredentialError::Malformed);
    }
    Ok(token)
}

fn is_b64token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(
                AUTHORIZATION,
                HeaderValue::from_bytes(value).expect("header value"),
            );
        }
        map
    }

    #[test]
    fn accepts_bearer_in_any_case() {
        for value in [
            &b"Bearer abc.def.ghi"[..],
            b"bearer abc.def.ghi",
            b"BEARER abc.def.ghi",
            b"Bearer   abc.def.ghi",
        ] {
            assert_eq!(bearer_token(&headers(&[value])), Ok("abc.def.ghi"));
        }
    }

    #[test]
    fn rejects_bad_metadata() {
        let cases: &[(&[&[u8]], CredentialError)] = &[
            (&[], CredentialError::Missing),
            (
                &[b"Bearer a.b.c", b"Bearer a.b.c"],
                CredentialError::Duplicate,
            ),
            (
                &[b"Bearer a.b.c", b"Basic Zm9vOmJhcg=="],
                CredentialError::Duplicate,
            ),
            (&[b"Basic Zm9vOmJhcg=="], CredentialError::UnsupportedScheme),
            (&[b"Token a.b.c"], CredentialError::UnsupportedScheme),
            (&[b"Bearera.b.c"], CredentialError::UnsupportedScheme),
            (&[b"a.b.c"], CredentialError::UnsupportedScheme),
            (&[b"Bearer"], CredentialError::Malformed),
            (&[b"Bearer "], CredentialError::Malformed),
            (&[b"Bearer a.b.c "], CredentialError::Malformed),
            (&[b"Bearer a.b .c"], CredentialError::Malformed),
            (&[b"Bearer\ta.b.c"], CredentialError::UnsupportedScheme),
            (&[b"Bearer a.b.c\t"], CredentialError::Malformed),
            (&[b"Bearer a,b.c"], CredentialError::Malformed),
            (&[b"Bearer a=b.c"], CredentialError::Malformed),
            (&[b"Bearer ==="], CredentialError::Malformed),
            (&[b"Bearer a.b.\xc3\xa9"], CredentialError::Malformed),
            (&[b"Bearer a.b.\x80"], CredentialError::Malformed),
        ];
        for (values, expected) in cases {
            assert_eq!(
                bearer_token(&headers(values)),
                Err(*expected),
                "values {values:?}"
            );
        }
    }

    #[test]
    fn rejects_oversized_value() {
        let value = format!("Bearer {}", "a".repeat(MAX_TOKEN_LEN + 100));
        assert_eq!(
            bearer_token(&headers(&[value.as_bytes()])),
            Err(CredentialError::TooLarge)
        );
    }
}
