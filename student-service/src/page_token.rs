//! Page tokens of ListStudents: the unpadded base64url encoding of the 16 bytes of the last id
//! of the previous page. Clients must treat them as opaque.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use uuid::Uuid;

use crate::error::Error;

/// Length of every token this module encodes: 16 bytes in unpadded base64.
const TOKEN_LEN: usize = 22;

/// Encodes the token that continues a listing after `last_id`.
pub fn encode(last_id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(last_id.as_bytes())
}

/// Decodes a request's page token: `None` for the empty token of the first page, otherwise the
/// id after which the page starts.
pub fn decode(token: &str) -> Result<Option<Uuid>, Error> {
    if token.is_empty() {
        return Ok(None);
    }
    if token.len() != TOKEN_LEN {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let id = Uuid::from_slice(&bytes).map_err(|_| invalid())?;
    Ok(Some(id))
}

fn invalid() -> Error {
    Error::InvalidArgument {
        field: "page_token",
        reason: "is not a token from this service; pass the next_page_token of the previous \
                 response, or an empty token for the first page"
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips() {
        let id = Uuid::new_v4();

        let token = encode(id);

        assert_eq!(token.len(), TOKEN_LEN);
        assert_eq!(decode(&token).unwrap(), Some(id));
    }

    #[test]
    fn empty_token_starts_listing() {
        assert_eq!(decode("").unwrap(), None);
    }

    #[test]
    fn bad_tokens_rejected() {
        let valid = encode(Uuid::new_v4());
        let padded = format!("{valid}==");
        let truncated = &valid[..TOKEN_LEN - 1];
        let cases = [
            "x",
            "!!!!!!!!!!!!!!!!!!!!!!",
            "AAAAAAAAAAAAAAAAAAAAA+",
            "AAAAAAAAAAAAAAAAAAAAAAAA",
            padded.as_str(),
            truncated,
        ];
        for token in cases {
            let error = decode(token).unwrap_err();

            assert!(
                matches!(
                    error,
                    Error::InvalidArgument {
                        field: "page_token",
                        ..
                    }
                ),
                "{token:?}: {error:?}"
            );
        }
    }

    #[test]
    fn noncanonical_trailing_bits_rejected() {
        // 22 base64 characters carry 132 bits; the last 4 must be zero for 16 bytes.
        let mut token = encode(Uuid::nil());
        token.replace_range(TOKEN_LEN - 1.., "B");

        assert!(decode(&token).is_err());
    }
}
