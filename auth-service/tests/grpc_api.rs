//! The gRPC API of an in-process auth-service on 127.0.0.1:0, called through the generated client.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use auth_service::keys::KeyRing;
use auth_service::store::SledStore;
use auth_service::tokens::TokenIssuer;
use auth_service::{Error, Role};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{TestServer, config, login_request};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use school_guard::claims::{Audience, Claims};
use school_guard::keys::key_id_for;
use school_proto::auth::v1::{
    ListPublicKeysRequest, TokenInvalidReason, ValidateTokenRequest, ValidateTokenResponse,
};
use tonic::Code;

const PASSWORD: &str = "correct horse battery staple";

async fn validate(server: &TestServer, token: &str) -> ValidateTokenResponse {
    server
        .client()
        .await
        .validate_token(ValidateTokenRequest {
            token: token.to_owned(),
        })
        .await
        .expect("ValidateToken never fails with an RPC error")
        .into_inner()
}

fn now() -> i64 {
    auth_service::clock::unix_now()
}

fn claims(sub: &str) -> Claims {
    Claims {
        sub: sub.to_owned(),
        role: "teacher".to_owned(),
        iss: "school-auth".to_owned(),
        aud: Audience::from("school".to_owned()),
        iat: now(),
        nbf: now(),
        exp: now() + 600,
        jti: "test-token".to_owned(),
    }
}

/// Loads (creating on first use) the data directory's signing key, so tests can sign tokens
/// with the server's own key. The store closes before this returns.
async fn own_key_issuer(dir: &Path) -> TokenIssuer {
    let store = SledStore::open(dir).await.expect("open store");
    let keys = KeyRing::load_or_create(&store).await.expect("load keys");
    TokenIssuer::new(
        Arc::new(keys),
        "school-auth".into(),
        "school".into(),
        Duration::from_secs(900),
    )
}

fn encode_part(json: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(json).expect("JSON encodes"))
}

#[tokio::test]
async fn login_issues_token_that_validates() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path(), &[])).await;
    server
        .users
        .create("alice", PASSWORD, Role::Teacher)
        .await
        .unwrap();

    let issued = server
        .client()
        .await
        .login(login_request("alice", PASSWORD))
        .await
        .expect("login succeeds")
        .into_inner();
    let introspected = validate(&server, &issued.access_token).await;

    assert_eq!(issued.token_type, "Bearer");
    assert_eq!(issued.expires_in, 900);
    assert!(introspected.valid);
    assert_eq!(introspected.reason, TokenInvalidReason::Unspecified as i32);
    assert_eq!(introspected.subject, "alice");
    assert_eq!(introspected.role, "teacher");
    assert_eq!(introspected.issuer, "school-auth");
    assert_eq!(introspected.audience, vec!["school".to_owned()]);
    assert_eq!(introspected.expires_at - introspected.issued_at, 900);
    assert!(uuid::Uuid::parse_str(&introspected.token_id).is_ok());
    server.stop().await;
}

#[tokio::test]
async fn failed_logins_look_identical() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path(), &[])).await;
    server
        .users
        .create("alice", PASSWORD, Role::Student)
        .await
        .unwrap();
    server
        .users
        .create("bob", PASSWORD, Role::Student)
        .await
        .unwrap();
    server.users.set_disabled("bob", true).await.unwrap();
    let mut client = server.client().await;

    let attempts = [
        ("wrong password", login_request("alice", "not the password")),
        ("unknown user", login_request("mallory", PASSWORD)),
        ("disabled user", login_request("bob", PASSWORD)),
        ("case-changed name", login_request("ALICE", PASSWORD)),
    ];

    for (case, request) in attempts {
        let status = client.login(request).await.expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}");
        assert_eq!(status.message(), "invalid username or password", "{case}");
    }
    server.stop().await;
}

#[tokio::test]
async fn login_rejects_bad_field_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path(), &[])).await;
    let mut client = server.client().await;
    let long_password = "p".repeat(1025);

    let cases = [
        ("username", login_request("", PASSWORD)),
        ("username", login_request(&"u".repeat(65), PASSWORD)),
        ("password", login_request("alice", "")),
        ("password", login_request("alice", &long_password)),
    ];

    for (field, request) in cases {
        let status = client.login(request).await.expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(status.message().starts_with(field), "{}", status.message());
        assert!(!status.message().contains(PASSWORD));
        assert!(!status.message().contains("ppp"));
    }
    server.stop().await;
}

#[tokio::test]
async fn validate_token_reports_each_reason() {
    let dir = tempfile::tempdir().unwrap();
    let own_key = own_key_issuer(dir.path()).await;
    let expired = own_key
        .sign(&Claims {
            exp: now() - 60,
            iat: now() - 960,
            nbf: now() - 960,
            ..claims("alice")
        })
        .unwrap();
    let not_yet_valid = own_key
        .sign(&Claims {
            nbf: now() + 600,
            ..claims("alice")
        })
        .unwrap();
    let wrong_issuer = own_key
        .sign(&Claims {
            iss: "someone-else".into(),
            ..claims("alice")
        })
        .unwrap();
    let wrong_audience = own_key
        .sign(&Claims {
            aud: Audience::from("billing".to_owned()),
            ..claims("alice")
        })
        .unwrap();
    let genuine = own_key.sign(&claims("alice")).unwrap();

    let server = TestServer::start(config(dir.path(), &[])).await;
    let public_key = server
        .client()
        .await
        .list_public_keys(ListPublicKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys
        .remove(0);
    let kid = public_key.key_id.clone();

    // Flip one character of the payload so the signature no longer matches.
    let mut parts: Vec<String> = genuine.split('.').map(str::to_owned).collect();
    let payload = URL_SAFE_NO_PAD.decode(&parts[1]).unwrap();
    let tampered_payload = String::from_utf8(payload)
        .unwrap()
        .replace("alice", "admin");
    parts[1] = URL_SAFE_NO_PAD.encode(tampered_payload);
    let tampered = parts.join(".");

    let claims_part = genuine.split('.').nth(1).unwrap().to_owned();
    let none_header = encode_part(&serde_json::json!({"alg": "none", "kid": kid}));
    let alg_none_unsigned = format!("{none_header}.{claims_part}.");
    let alg_none_signed = format!("{none_header}.{claims_part}.c2lnbmF0dXJl");

    // HS256 keyed with the published public key: the classic algorithm-confusion attack.
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some(kid.clone());
    let hs256_public_key = jsonwebtoken::encode(
        &hs_header,
        &claims("alice"),
        &EncodingKey::from_secret(&public_key.public_key).unwrap(),
    )
    .unwrap();

    let foreign = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let foreign_public = Ed25519KeyPair::from_pkcs8(foreign.as_ref())
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();
    let foreign_key = EncodingKey::from_ed_der(foreign.as_ref());
    let mut foreign_header = Header::new(Algorithm::EdDSA);
    foreign_header.kid = Some(key_id_for(&foreign_public));
    let foreign_kid =
        jsonwebtoken::encode(&foreign_header, &claims("alice"), &foreign_key).unwrap();
    foreign_header.kid = Some(kid.clone());
    let foreign_with_our_kid =
        jsonwebtoken::encode(&foreign_header, &claims("alice"), &foreign_key).unwrap();

    let oversized = format!("{genuine}{}", "A".repeat(9 * 1024));

    let cases = [
        ("expired", expired, TokenInvalidReason::Expired),
        (
            "not yet valid",
            not_yet_valid,
            TokenInvalidReason::NotYetValid,
        ),
        (
            "wrong issuer",
            wrong_issuer,
            TokenInvalidReason::WrongIssuer,
        ),
        (
            "wrong audience",
            wrong_audience,
            TokenInvalidReason::WrongAudience,
        ),
        ("tampered", tampered, TokenInvalidReason::BadSignature),
        (
            "garbage",
            "not-a-token".to_owned(),
            TokenInvalidReason::Malformed,
        ),
        ("empty", String::new(), TokenInvalidReason::Malformed),
        (
            "alg none unsigned",
            alg_none_unsigned,
            TokenInvalidReason::Malformed,
        ),
        (
            "alg none signed",
            alg_none_signed,
            TokenInvalidReason::UnsupportedAlgorithm,
        ),
        (
            "HS256 with public key",
            hs256_public_key,
            TokenInvalidReason::UnsupportedAlgorithm,
        ),
        ("foreign key", foreign_kid, TokenInvalidReason::UnknownKey),
        (
            "foreign key, our kid",
            foreign_with_our_kid,
            TokenInvalidReason::BadSignature,
        ),
        ("oversized", oversized, TokenInvalidReason::Malformed),
    ];

    for (case, token, expected) in cases {
        let introspected = validate(&server, &token).await;
        assert!(!introspected.valid, "{case} was accepted");
        assert_eq!(
            introspected.reason(),
            expected,
            "{case}: got {:?}",
            introspected.reason()
        );
        assert!(introspected.subject.is_empty(), "{case} leaked claims");
    }
    assert!(validate(&server, &genuine).await.valid);
    server.stop().await;
}

#[tokio::test]
async fn leeway_accepts_recent_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let own_key = own_key_issuer(dir.path()).await;
    let just_expired = own_key
        .sign(&Claims {
            exp: now() - 2,
            ..claims("alice")
        })
        .unwrap();

    let lenient = TestServer::start(config(dir.path(), &["--leeway-secs", "30"])).await;
    let accepted = validate(&lenient, &just_expired).await;
    lenient.stop().await;
    let strict = TestServer::start(config(dir.path(), &["--leeway-secs", "0"])).await;
    let rejected = validate(&strict, &just_expired).await;
    strict.stop().await;

    assert!(accepted.valid);
    assert!(!rejected.valid);
    assert_eq!(rejected.reason(), TokenInvalidReason::Expired);
}

#[tokio::test]
async fn public_keys_verify_issued_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path(), &[])).await;
    server
        .users
        .create("alice", PASSWORD, Role::Admin)
        .await
        .unwrap();
    let token = server.token("alice", PASSWORD).await;

    let listed = server
        .client()
        .await
        .list_public_keys(ListPublicKeysRequest {})
        .await
        .unwrap()
        .into_inner();

    assert_eq!(listed.keys.len(), 1);
    let key = &listed.keys[0];
    assert_eq!(key.algorithm, "EdDSA");
    assert_eq!(key.curve, "Ed25519");
    assert_eq!(key.public_key.len(), 32);
    assert_eq!(key.key_id, key_id_for(&key.public_key));
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(key.key_id.as_str()));

    // Verify with jsonwebtoken directly, independently of school-guard.
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&["school"]);
    validation.set_issuer(&["school-auth"]);
    let decoded = jsonwebtoken::decode::<Claims>(
        &token,
        &DecodingKey::from_ed_der(&key.public_key),
        &validation,
    )
    .unwrap();
    assert_eq!(decoded.claims.sub, "alice");

    let jwks: serde_json::Value = serde_json::from_str(&listed.jwks_json).unwrap();
    let jwk = &jwks["keys"][0];
    assert_eq!(jwk["kid"], key.key_id.as_str());
    assert_eq!(jwk["kty"], "OKP");
    assert_eq!(jwk["crv"], "Ed25519");
    assert_eq!(jwk["x"], URL_SAFE_NO_PAD.encode(&key.public_key).as_str());
    server.stop().await;
}

#[tokio::test]
async fn restart_keeps_keys_and_users() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestServer::start(config(dir.path(), &[])).await;
    first
        .users
        .create("alice", PASSWORD, Role::Teacher)
        .await
        .unwrap();
    first
        .users
        .create("bob", PASSWORD, Role::Student)
        .await
        .unwrap();
    first.users.set_disabled("bob", true).await.unwrap();
    let token = first.token("alice", PASSWORD).await;
    first.stop().await;

    let second = TestServer::start(config(dir.path(), &[])).await;
    let introspected = validate(&second, &token).await;
    let bob_login = second
        .client()
        .await
        .login(login_request("bob", PASSWORD))
        .await;

    assert!(introspected.valid, "reason {:?}", introspected.reason());
    assert_eq!(introspected.subject, "alice");
    assert!(!second.token("alice", PASSWORD).await.is_empty());
    assert_eq!(bob_login.unwrap_err().code(), Code::Unauthenticated);
    second.stop().await;
}

#[tokio::test]
async fn second_bind_names_locked_dir() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path(), &[])).await;

    let second = auth_service::bind(config(dir.path(), &[])).await;

    let error = second.expect_err("second bind on the same directory fails");
    assert!(matches!(error, Error::DataDirLocked { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains(&dir.path().display().to_string()),
        "{error}"
    );
    server.stop().await;
}

#[tokio::test]
async fn invalid_config_fails_before_opening_storage() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("never-created");

    let bound = auth_service::bind(config(&data_dir, &["--token-ttl-secs", "0"])).await;

    let error = bound.expect_err("invalid TTL is rejected");
    assert!(matches!(error, Error::InvalidConfig { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("--token-ttl-secs (AUTH_TOKEN_TTL_SECS)")
    );
    assert!(!data_dir.exists());
}

#[tokio::test]
async fn bootstrap_admin_is_created_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut first_config = config(dir.path(), &["--bootstrap-admin-username", "root"]);
    first_config.bootstrap_admin_password = Some("first password".to_owned().into());
    let first = TestServer::start(first_config).await;
    let token = first.token("root", "first password").await;
    assert_eq!(validate(&first, &token).await.role, "admin");
    first.stop().await;

    // A later start with another password leaves the existing account alone.
    let mut second_config = config(dir.path(), &["--bootstrap-admin-username", "root"]);
    second_config.bootstrap_admin_password = Some("second password".to_owned().into());
    let second = TestServer::start(second_config).await;
    let with_second = second
        .client()
        .await
        .login(login_request("root", "second password"))
        .await;

    assert_eq!(with_second.unwrap_err().code(), Code::Unauthenticated);
    assert!(!second.token("root", "first password").await.is_empty());
    second.stop().await;
}

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path(), &[])).await;
    let mut health = HealthClient::new(server.channel().await);

    for service in ["", "school.auth.v1.AuthService"] {
        let response = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn reflection_lists_only_own_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(config(dir.path(), &[])).await;
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };

    let mut responses = reflection
        .server_reflection_info(tokio_stream::once(request))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().expect("one response");

    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let mut names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "school.auth.v1.AuthService",
            "school.auth.v1.UserService",
        ]
    );
    server.stop().await;
}
