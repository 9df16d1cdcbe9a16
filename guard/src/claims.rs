//! The claims of the access tokens that auth-service signs and every verifier reads.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The payload of an access token.
///
/// `exp`, `iss`, `aud`, `sub` and `role` are required; a verifier rejects a token that lacks any
/// of them. Times are seconds since the Unix epoch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The username the token was issued to.
    pub sub: String,
    /// The role of the subject when the token was issued, such as `admin`.
    pub role: String,
    /// The issuer, which names the auth-service deployment that signed the token.
    pub iss: String,
    /// The services the token is meant for.
    pub aud: Audience,
    /// When the token was issued.
    #[serde(default)]
    pub iat: i64,
    /// The time before which the token must not be accepted.
    #[serde(default)]
    pub nbf: i64,
    /// When the token expires.
    pub exp: i64,
    /// The unique id of the token.
    #[serde(default)]
    pub jti: String,
}

/// The `aud` claim: one audience or several.
///
/// RFC 7519 allows both a single string and an array of strings. A single audience is written
/// as a plain string, because that is the form most JWT libraries expect.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Audience(pub Vec<String>);

impl Audience {
    /// Reports whether `audience` is one of the values.
    pub fn contains(&self, audience: &str) -> bool {
        self.0.iter().any(|value| value == audience)
    }

    /// Iterates over the values.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(String::as_str)
    }
}

impl From<String> for Audience {
    fn from(audience: String) -> Self {
        Audience(vec![audience])
    }
}

impl From<&str> for Audience {
    fn from(audience: &str) -> Self {
        Audience(vec![audience.to_owned()])
    }
}

impl Serialize for Audience {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [single] => serializer.serialize_str(single),
            many => many.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }

        Ok(match OneOrMany::deserialize(deserializer)? {
            OneOrMany::One(value) => Audience(vec![value]),
            OneOrMany::Many(values) => Audience(values),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audience_round_trips_as_string_or_array() -> Result<(), serde_json::Error> {
        let one = Audience::from("school");
        assert_eq!(serde_json::to_string(&one)?, "\"school\"");

        let many = Audience(vec!["a".into(), "b".into()]);
        assert_eq!(serde_json::to_string(&many)?, "[\"a\",\"b\"]");

        let parsed: Audience = serde_json::from_str("[\"x\",\"school\"]")?;
        assert!(parsed.contains("school"));
        assert!(!parsed.contains("schoo"));
        Ok(())
    }
}
