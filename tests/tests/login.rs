//! Login: credentials in, signed access token out, and no hint about which usernames exist.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use integration_tests::{ADMIN, PASSWORD, STUDENT, Stack};
use school_proto::auth::v1::LoginRequest;
use serde_json::Value;
use tonic::Code;

fn login_request(username: &str, password: &str) -> LoginRequest {
    LoginRequest {
        username: username.to_owned(),
        password: password.to_owned(),
    }
}

fn decode_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("JWS part");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("JSON")
}

#[tokio::test]
async fn login_returns_signed_bearer_token() {
    let stack = Stack::start().await;
    let response = stack
        .auth
        .client()
        .await
        .login(login_request(ADMIN, PASSWORD))
        .await
        .expect("login succeeds")
        .into_inner();

    assert_eq!(response.token_type, "Bearer");
    assert_eq!(response.expires_in, 900);

    let header = decode_part(&response.access_token, 0);
    assert_eq!(header["alg"], "EdDSA");
    assert!(header["kid"].as_str().is_some_and(|kid| !kid.is_empty()));

    let claims = decode_part(&response.access_token, 1);
    assert_eq!(claims["sub"], ADMIN);
    assert_eq!(claims["role"], "admin");
    assert_eq!(claims["iss"], "school-auth");
    assert_eq!(claims["aud"], "school");
    for time in ["iat", "nbf", "exp"] {
        assert!(claims[time].is_i64(), "{time} is an integer");
    }
    assert_eq!(
        claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
        900
    );
    assert!(claims["jti"].as_str().is_some_and(|jti| !jti.is_empty()));
}

#[tokio::test]
async fn each_login_gets_a_new_token_id() {
    let stack = Stack::start().await;
    let first = stack.token(STUDENT).await;
    let second = stack.token(STUDENT).await;
    assert_ne!(
        decode_part(&first, 1)["jti"],
        decode_part(&second, 1)["jti"]
    );
}

#[tokio::test]
async fn failed_logins_are_indistinguishable() {
    let stack = Stack::start().await;
    stack
        .auth
        .users()
        .set_disabled(STUDENT, true)
        .await
        .expect("disable user");
    let mut client = stack.auth.client().await;

    let attempts = [
        login_request(ADMIN, "wrong password"),
        login_request("nobody", PASSWORD),
        login_request(STUDENT, PASSWORD),
        login_request(&ADMIN.to_uppercase(), PASSWORD),
    ];
    let mut answers = Vec::new();
    for attempt in attempts {
        let status = client.login(attempt).await.expect_err("login fails");
        answers.push((status.code(), status.message().to_owned()));
    }

    assert_eq!(answers[0].0, Code::Unauthenticated);
    for answer in &answers[1..] {
        assert_eq!(answer, &answers[0]);
    }
}

#[tokio::test]
async fn login_rejects_empty_and_oversized_fields() {
    let stack = Stack::start().await;
    let mut client = stack.auth.client().await;
    let long_name = "u".repeat(65);
    let long_password = "p".repeat(1025);

    let cases = [
        (login_request("", PASSWORD), "username"),
        (login_request(ADMIN, ""), "password"),
        (login_request(&long_name, PASSWORD), "username"),
        (login_request(ADMIN, &long_password), "password"),
    ];
    for (request, field) in cases {
        let status = client.login(request).await.expect_err("invalid login");
        assert_eq!(status.code(), Code::InvalidArgument, "field {field}");
        assert!(status.message().contains(field), "{:?}", status.message());
        assert!(!status.message().contains(&long_password));
    }
}

#[tokio::test]
async fn login_accepts_longest_allowed_fields() {
    let stack = Stack::start().await;
    let username = "n".repeat(64);
    let password = "p".repeat(1024);
    stack
        .auth
        .users()
        .create(&username, &password, auth_service::Role::Teacher)
        .await
        .expect("create user with maximum lengths");

    let token = stack.auth.login(&username, &password).await;
    assert_eq!(decode_part(&token, 1)["sub"], username.as_str());
}
