//! ValidateToken: introspection that reports why a token is bad instead of failing the call.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac_forgery::hs256_with_key;
use integration_tests::forge::{self, Forger, claims, encode, unsigned};
use integration_tests::{ADMIN, Stack, TEACHER};
use school_proto::auth::v1::{
    ListPublicKeysRequest, TokenInvalidReason, ValidateTokenRequest, ValidateTokenResponse,
};
use serde_json::{Value, json};

async fn validate(stack: &Stack, token: &str) -> ValidateTokenResponse {
    stack
        .auth
        .client()
        .await
        .validate_token(ValidateTokenRequest {
            token: token.to_owned(),
        })
        .await
        .expect("ValidateToken answers a well-formed request")
        .into_inner()
}

fn with(mut claims: Value, name: &str, value: Value) -> Value {
    claims[name] = value;
    claims
}

fn without(mut claims: Value, name: &str) -> Value {
    claims.as_object_mut().expect("object").remove(name);
    claims
}

#[tokio::test]
async fn valid_token_reports_its_claims() {
    let stack = Stack::start().await;
    let token = stack.token(TEACHER).await;

    let answer = validate(&stack, &token).await;

    assert!(answer.valid);
    assert_eq!(answer.reason(), TokenInvalidReason::Unspecified);
    assert_eq!(answer.subject, TEACHER);
    assert_eq!(answer.role, "teacher");
    assert_eq!(answer.issuer, "school-auth");
    assert_eq!(answer.audience, vec!["school".to_string()]);
    assert!(!answer.token_id.is_empty());
    assert!(answer.expires_at > forge::now());
    assert!(answer.issued_at <= forge::now());
}

#[tokio::test]
async fn bad_tokens_report_their_reason() {
    let stack = Stack::start().await;
    let genuine = stack.token(ADMIN).await;
    let base = claims(ADMIN, "admin");
    let now = forge::now();
    let stranger = Forger::random();
    let mut impostor = Forger::random();
    impostor.key_id = stack.forger.key_id.clone();
    let public_key = stack
        .auth
        .client()
        .await
        .list_public_keys(ListPublicKeysRequest {})
        .await
        .expect("keys")
        .into_inner()
        .keys
        .remove(0)
        .public_key;

    let parts: Vec<&str> = genuine.split('.').collect();
    let promoted = encode(&with(base.clone(), "sub", json!("mallory")));
    let tampered = format!("{}.{promoted}.{}", parts[0], parts[2]);
    let mut flipped_signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("signature");
    flipped_signature[0] ^= 1;
    let bad_signature = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        URL_SAFE_NO_PAD.encode(flipped_signature)
    );

    let forger = &stack.forger;
    let cases: Vec<(&str, String, TokenInvalidReason)> = vec![
        (
            "garbage",
            "not a token".into(),
            TokenInvalidReason::Malformed,
        ),
        ("empty", String::new(), TokenInvalidReason::Malformed),
        (
            "two parts",
            format!("{}.{}", parts[0], parts[1]),
            TokenInvalidReason::Malformed,
        ),
        (
            "oversized",
            format!("{genuine}{}", "A".repeat(10_000)),
            TokenInvalidReason::Malformed,
        ),
        (
            "tampered payload",
            tampered,
            TokenInvalidReason::BadSignature,
        ),
        (
            "flipped signature bit",
            bad_signature,
            TokenInvalidReason::BadSignature,
        ),
        (
            "alg none, no signature",
            unsigned(&base),
            TokenInvalidReason::Malformed,
        ),
        (
            "alg none, signed anyway",
            forger.sign_with_header(&json!({"alg": "none", "kid": forger.key_id}), &base),
            TokenInvalidReason::UnsupportedAlgorithm,
        ),
        (
            "HS256 keyed with the public key",
            hs256_with_key(&public_key, &forger.key_id, &base),
            TokenInvalidReason::UnsupportedAlgorithm,
        ),
        (
            "foreign key",
            stranger.sign(&base),
            TokenInvalidReason::UnknownKey,
        ),
        (
            "foreign key under our kid",
            impostor.sign(&base),
            TokenInvalidReason::BadSignature,
        ),
        (
            "expired",
            forger.sign(&with(
                with(base.clone(), "exp", json!(now - 60)),
                "iat",
                json!(now - 960),
            )),
            TokenInvalidReason::Expired,
        ),
        (
            "not yet valid",
            forger.sign(&with(base.clone(), "nbf", json!(now + 600))),
            TokenInvalidReason::NotYetValid,
        ),
        (
            "wrong issuer",
            forger.sign(&with(base.clone(), "iss", json!("evil-auth"))),
            TokenInvalidReason::WrongIssuer,
        ),
        (
            "wrong audience",
            forger.sign(&with(base.clone(), "aud", json!(["billing"]))),
            TokenInvalidReason::WrongAudience,
        ),
        (
            "no exp",
            forger.sign(&without(base.clone(), "exp")),
            TokenInvalidReason::MissingClaim,
        ),
        (
            "no sub",
            forger.sign(&without(base.clone(), "sub")),
            TokenInvalidReason::MissingClaim,
        ),
        (
            "no iss",
            forger.sign(&without(base.clone(), "iss")),
            TokenInvalidReason::MissingClaim,
        ),
        (
            "no aud",
            forger.sign(&without(base.clone(), "aud")),
            TokenInvalidReason::MissingClaim,
        ),
        (
            "no role",
            forger.sign(&without(base.clone(), "role")),
            TokenInvalidReason::MissingClaim,
        ),
        (
            "exp as a string",
            forger.sign(&with(base.clone(), "exp", json!((now + 600).to_string()))),
            TokenInvalidReason::Malformed,
        ),
        (
            "nbf as a string",
            forger.sign(&with(base.clone(), "nbf", json!("0"))),
            TokenInvalidReason::Malformed,
        ),
        (
            "role as a list",
            forger.sign(&with(base.clone(), "role", json!(["admin"]))),
            TokenInvalidReason::Malformed,
        ),
    ];

    for (name, token, expected) in cases {
        let answer = validate(&stack, &token).await;
        assert!(!answer.valid, "{name} must be invalid");
        assert_eq!(answer.reason(), expected, "{name}");
        assert!(answer.subject.is_empty(), "{name} reveals no subject");
        assert!(answer.role.is_empty(), "{name} reveals no role");
    }
}

#[tokio::test]
async fn ambiguous_json_is_rejected() {
    // Each token below is signed with auth-service's own key, so only the parsing rules stand
    // between it and acceptance.
    let stack = Stack::start().await;
    let forger = &stack.forger;
    let kid = forger.key_id.clone();
    let header = format!(r#"{{"alg":"EdDSA","kid":"{kid}"}}"#);
    let now = forge::now();
    let base =
        format!(r#""sub":"mallory","iss":"school-auth","aud":"school","iat":{now},"nbf":{now}"#);
    let exp = now + 600;
    let mut impostor = Forger::random();
    impostor.key_id = kid.clone();

    let cases: Vec<(&str, String, TokenInvalidReason)> = vec![
        (
            "duplicate role claim",
            forger.sign_raw(
                &header,
                &format!(r#"{{{base},"exp":{exp},"role":"student","role":"admin"}}"#),
            ),
            TokenInvalidReason::Malformed,
        ),
        (
            "duplicate alg header",
            forger.sign_raw(
                &format!(r#"{{"alg":"none","alg":"EdDSA","kid":"{kid}"}}"#),
                &format!(r#"{{{base},"exp":{exp},"role":"admin"}}"#),
            ),
            TokenInvalidReason::Malformed,
        ),
        (
            "exp beyond i64",
            forger.sign_raw(
                &header,
                &format!(r#"{{{base},"exp":1e400,"role":"admin"}}"#),
            ),
            TokenInvalidReason::Malformed,
        ),
        (
            "negative exp",
            forger.sign_raw(&header, &format!(r#"{{{base},"exp":-1,"role":"admin"}}"#)),
            TokenInvalidReason::Expired,
        ),
        (
            "payload is an array",
            forger.sign_raw(&header, "[1,2]"),
            TokenInvalidReason::Malformed,
        ),
        (
            "payload is a string",
            forger.sign_raw(&header, r#""admin""#),
            TokenInvalidReason::Malformed,
        ),
        (
            "payload is not JSON",
            forger.sign_raw(&header, "{role:admin}"),
            TokenInvalidReason::Malformed,
        ),
        (
            "header is an array",
            forger.sign_raw(
                r#"["EdDSA"]"#,
                &format!(r#"{{{base},"exp":{exp},"role":"admin"}}"#),
            ),
            TokenInvalidReason::Malformed,
        ),
        (
            "kid with path traversal",
            forger.sign_with_header(
                &json!({"alg": "EdDSA", "kid": "../../../etc/passwd"}),
                &claims(ADMIN, "admin"),
            ),
            TokenInvalidReason::UnknownKey,
        ),
        (
            "embedded jwk under an unknown kid",
            Forger::random().sign_with_header(
                &json!({"alg": "EdDSA", "kid": "attacker",
                        "jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"}}),
                &claims(ADMIN, "admin"),
            ),
            TokenInvalidReason::UnknownKey,
        ),
        (
            "jku header, signed by another key under our kid",
            impostor.sign_with_header(
                &json!({"alg": "EdDSA", "kid": kid, "jku": "http://127.0.0.1:1/keys"}),
                &claims(ADMIN, "admin"),
            ),
            TokenInvalidReason::BadSignature,
        ),
    ];

    for (name, token, expected) in cases {
        let answer = validate(&stack, &token).await;
        assert!(!answer.valid, "{name} must be invalid");
        assert_eq!(answer.reason(), expected, "{name}");
    }
}

#[tokio::test]
async fn forged_token_with_real_key_is_valid() {
    // The forger holds auth-service's own key: this proves the bad-token cases above fail for
    // the reason they name and not because the forger signs differently.
    let stack = Stack::start().await;
    let answer = validate(&stack, &stack.forger.sign(&claims("zed", "teacher"))).await;
    assert!(answer.valid);
    assert_eq!(answer.subject, "zed");
}

mod hmac_forgery {
    use serde_json::{Value, json};

    use integration_tests::forge::encode;

    /// Signs `claims` with HS256 keyed by `key`, the classic confusion attack against verifiers
    /// that take the algorithm from the token.
    pub fn hs256_with_key(key: &[u8], key_id: &str, claims: &Value) -> String {
        let header = json!({"alg": "HS256", "typ": "JWT", "kid": key_id});
        let signing_input = format!("{}.{}", encode(&header), encode(claims));
        let tag = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key),
            signing_input.as_bytes(),
        );
        use base64::Engine as _;
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(tag.as_ref());
        format!("{signing_input}.{signature}")
    }
}
