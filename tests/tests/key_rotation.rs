//! Signing-key rotation without downtime: tokens signed before and after a rotation both verify
//! at student-service, and unknown key ids cannot make a verifier hammer auth-service.

use std::sync::Arc;
use std::time::Duration;

use integration_tests::forge::{Forger, claims};
use integration_tests::{Stack, TEACHER, with_token};
use school_guard::keys::KeySet;
use school_guard::remote::KeyFetcher;
use school_proto::auth::v1::auth_service_client::AuthServiceClient;
use school_proto::student::v1::ListStudentsRequest;
use serde_json::json;
use tonic::Code;

fn key_id(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .expect("token header")
        .kid
        .expect("kid")
}

#[tokio::test]
async fn tokens_before_and_after_rotation_verify() {
    let stack = Stack::start_with(
        &["--key-rotation-secs", "3", "--key-publish-lead-secs", "2"],
        &["--key-refresh-secs", "1"],
    )
    .await;
    let before = stack.token(TEACHER).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let after = loop {
        let token = stack.token(TEACHER).await;
        if key_id(&token) != key_id(&before) {
            break token;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no token signed by a new key within 20 seconds"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let mut client = stack.student.client().await;
    for (name, token) in [("before", &before), ("after", &after)] {
        let listed = client
            .list_students(with_token(ListStudentsRequest::default(), token))
            .await;
        assert!(
            listed.is_ok(),
            "token signed {name} the rotation: {listed:?}"
        );
    }
    let published = stack
        .auth
        .client()
        .await
        .list_public_keys(school_proto::auth::v1::ListPublicKeysRequest {})
        .await
        .expect("ListPublicKeys")
        .into_inner()
        .keys;
    let published: Vec<&str> = published.iter().map(|key| key.key_id.as_str()).collect();
    assert!(
        published.contains(&key_id(&before).as_str()),
        "old key still published"
    );
    assert!(published.contains(&key_id(&after).as_str()));
}

#[tokio::test]
async fn random_key_ids_cause_no_refresh_storm() {
    let stack = Stack::start().await;
    let channel = tonic::transport::Channel::from_shared(stack.auth.url())
        .expect("URL")
        .connect()
        .await
        .expect("connect");
    let fetcher = Arc::new(KeyFetcher::new(
        AuthServiceClient::new(channel),
        KeySet::new(),
    ));
    fetcher.fetch().await.expect("first fetch");

    let misses = (0..200).map(|_| {
        let fetcher = Arc::clone(&fetcher);
        tokio::spawn(async move { fetcher.refresh_for_unknown_key().await })
    });
    let refreshed = futures::future::join_all(misses).await;

    let refreshes = refreshed
        .into_iter()
        .filter(|r| matches!(r, Ok(true)))
        .count();
    assert_eq!(
        refreshes, 1,
        "200 unknown key ids within the interval refresh once"
    );
    assert_eq!(fetcher.calls(), 2, "the first fetch and one refresh");

    // The same through student-service: tokens with random kids are all rejected.
    let mut client = stack.student.client().await;
    for index in 0..20 {
        let forger = Forger::random();
        let token = forger.sign_with_header(
            &json!({"alg": "EdDSA", "typ": "JWT", "kid": format!("random-{index}")}),
            &claims(TEACHER, "teacher"),
        );
        let status = client
            .list_students(with_token(ListStudentsRequest::default(), &token))
            .await
            .expect_err("unknown key id");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
}
