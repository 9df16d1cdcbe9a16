//! The login throttle seen from a client: blocks per username and per address, the retry hint,
//! no difference between known and unknown usernames, and state that survives a restart.

use auth_service::Role;
use integration_tests::{PASSWORD, RunningAuth};
use school_proto::auth::v1::LoginRequest;
use tonic::Code;
use tonic_types::StatusExt as _;

use integration_tests::LOCKOUT_AFTER_THREE as ATTEMPT_FLAGS;

async fn start(dir: &std::path::Path, flags: &[&str]) -> RunningAuth {
    let auth = RunningAuth::start(dir, flags).await;
    // create() rejects common and short passwords, so PASSWORD passes.
    let _ = auth.users().create("tom", PASSWORD, Role::Teacher).await;
    auth
}

async fn login(auth: &RunningAuth, username: &str, password: &str) -> Result<(), tonic::Status> {
    auth.client()
        .await
        .login(LoginRequest {
            username: username.to_owned(),
            password: password.to_owned(),
        })
        .await
        .map(drop)
}

/// Returns the code, message without digits, ErrorInfo reason and RetryInfo delay in whole
/// minutes of a failed login; the seconds left may differ between two calls.
fn describe(status: &tonic::Status) -> (Code, String, Option<String>, Option<u64>) {
    let details = status.get_error_details();
    (
        status.code(),
        status.message().replace(|c: char| c.is_ascii_digit(), ""),
        details.error_info().map(|info| info.reason.clone()),
        details
            .retry_info()
            .and_then(|info| info.retry_delay)
            .map(|delay| (delay.as_secs() + 30) / 60),
    )
}

#[tokio::test]
async fn username_is_blocked_after_failures() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let auth = start(dir.path(), &ATTEMPT_FLAGS).await;

    for attempt in 1..=3 {
        let status = login(&auth, "tom", "wrong password")
            .await
            .expect_err("wrong password");
        assert_eq!(status.code(), Code::Unauthenticated, "attempt {attempt}");
    }
    let blocked = login(&auth, "tom", PASSWORD)
        .await
        .expect_err("blocked even with the right password");

    let (code, message, reason, retry) = describe(&blocked);
    assert_eq!(code, Code::ResourceExhausted);
    assert_eq!(reason.as_deref(), Some("LOGIN_THROTTLED"));
    assert!(message.contains("retry in"), "{message}");
    assert_eq!(retry, Some(10), "RetryInfo of about 600 seconds");
    auth.stop().await;
}

#[tokio::test]
async fn unknown_username_is_throttled_identically() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let auth = start(dir.path(), &ATTEMPT_FLAGS).await;

    let mut answers = Vec::new();
    for username in ["tom", "nobody-by-this-name"] {
        let mut failures = Vec::new();
        for _ in 0..3 {
            let status = login(&auth, username, "wrong password")
                .await
                .expect_err("wrong");
            failures.push(describe(&status));
        }
        let blocked = login(&auth, username, "wrong password")
            .await
            .expect_err("blocked");
        answers.push((failures, describe(&blocked)));
    }

    let (known, unknown) = (&answers[0], &answers[1]);
    assert_eq!(
        known.0, unknown.0,
        "failures must not tell the accounts apart"
    );
    assert_eq!(known.1.0, unknown.1.0);
    assert_eq!(known.1.1, unknown.1.1);
    assert_eq!(known.1.2, unknown.1.2);
    assert_eq!(known.1.3, unknown.1.3);
    assert_eq!(known.1.0, Code::ResourceExhausted);
    auth.stop().await;
}

#[tokio::test]
async fn success_resets_the_username_counter() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let auth = start(dir.path(), &ATTEMPT_FLAGS).await;

    for round in 0..3 {
        for _ in 0..2 {
            let status = login(&auth, "tom", "wrong password")
                .await
                .expect_err("wrong");
            assert_eq!(status.code(), Code::Unauthenticated, "round {round}");
        }
        login(&auth, "tom", PASSWORD)
            .await
            .unwrap_or_else(|status| panic!("round {round}: {status:?}"));
    }
    auth.stop().await;
}

#[tokio::test]
async fn address_is_blocked_across_usernames() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let flags = [
        "--login-throttle",
        "lockout",
        "--login-username-attempts",
        "1000",
        "--login-address-attempts",
        "4",
    ];
    let auth = start(dir.path(), &flags).await;

    for index in 0..4 {
        let status = login(&auth, &format!("guess{index}"), "wrong password")
            .await
            .expect_err("unknown user");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let blocked = login(&auth, "tom", PASSWORD)
        .await
        .expect_err("the address is blocked for every username");

    assert_eq!(blocked.code(), Code::ResourceExhausted);
    auth.stop().await;
}

#[tokio::test]
async fn block_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let auth = start(dir.path(), &ATTEMPT_FLAGS).await;
    for _ in 0..4 {
        let _ = login(&auth, "tom", "wrong password").await;
    }
    auth.stop().await;

    let auth = start(dir.path(), &ATTEMPT_FLAGS).await;
    let blocked = login(&auth, "tom", PASSWORD)
        .await
        .expect_err("still blocked");

    assert_eq!(blocked.code(), Code::ResourceExhausted);
    auth.stop().await;
}

#[tokio::test]
async fn throttle_off_never_blocks() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let auth = start(
        dir.path(),
        &["--login-throttle", "off", "--login-username-attempts", "1"],
    )
    .await;

    for _ in 0..3 {
        let status = login(&auth, "tom", "wrong password")
            .await
            .expect_err("wrong");
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    login(&auth, "tom", PASSWORD).await.expect("not throttled");
    auth.stop().await;
}
