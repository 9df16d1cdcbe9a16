//! Refresh tokens, logout and revocation, through real servers: rotation, reuse detection,
//! propagation of revocations to student-service, persistence across restarts, revocation of a
//! disabled user's tokens, and the purge of expired entries.

// The helpers below fail the test the way the test bodies do.
#![allow(clippy::expect_used)]

use std::time::{Duration, Instant};

use auth_service::Role;
use integration_tests::{
    ADMIN, PASSWORD, RunningAuth, RunningStudent, SLOW_HASHING, STUDENT, Stack, TEACHER,
    sleep_until_fraction_of_second, with_token,
};
use school_proto::auth::v1::{ChangePasswordRequest, ResetPasswordRequest};
use school_proto::auth::v1::{
    LoginRequest, LoginResponse, LogoutRequest, RefreshTokenRequest, TokenInvalidReason,
    ValidateTokenRequest, WatchRevocationsRequest,
};
use school_proto::student::v1::ListStudentsRequest;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// How long a revocation may take to reach student-service before a test fails: the one second
/// that revocation promises. Measured delays are a few milliseconds.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(1);

/// How long a test waits for a resubscription after auth-service restarts.
const RECONNECT_LIMIT: Duration = Duration::from_secs(15);

fn reason(status: &Status) -> String {
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

async fn login(auth: &RunningAuth, username: &str) -> LoginResponse {
    auth.client()
        .await
        .login(LoginRequest {
            username: username.to_owned(),
            password: PASSWORD.to_owned(),
        })
        .await
        .expect("login")
        .into_inner()
}

async fn refresh(
    auth: &RunningAuth,
    refresh_token: &str,
) -> Result<school_proto::auth::v1::RefreshTokenResponse, Status> {
    auth.client()
        .await
        .refresh_token(RefreshTokenRequest {
            refresh_token: refresh_token.to_owned(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn logout(auth: &RunningAuth, access_token: &str) -> Result<(), Status> {
    auth.client()
        .await
        .logout(with_token(LogoutRequest {}, access_token))
        .await
        .map(|_| ())
}

/// Calls ListStudents, which teachers may call, with `token`.
async fn list_students(student: &RunningStudent, token: &str) -> Result<(), Status> {
    student
        .client()
        .await
        .list_students(with_token(ListStudentsRequest::default(), token))
        .await
        .map(|_| ())
}

/// Polls student-service with `token` until it is rejected, and returns the rejection and how
/// long it took, or fails the test after `limit`.
async fn wait_for_rejection(
    student: &RunningStudent,
    token: &str,
    limit: Duration,
) -> (Status, Duration) {
    let mut client = student.client().await;
    let started = Instant::now();
    loop {
        let result = client
            .list_students(with_token(ListStudentsRequest::default(), token))
            .await;
        if let Err(status) = result {
            return (status, started.elapsed());
        }
        assert!(
            started.elapsed() < limit,
            "student-service still accepts the token after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn assert_revoked(status: &Status) {
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert_eq!(reason(status), "TOKEN_REVOKED", "{status:?}");
}

#[tokio::test]
async fn login_returns_a_refresh_token() {
    let stack = Stack::start().await;

    let login = login(&stack.auth, STUDENT).await;

    assert!(login.refresh_token.len() >= 43, "256 bits in base64url");
    assert_eq!(login.refresh_expires_in, 7 * 24 * 60 * 60);
    assert_eq!(login.expires_in, 15 * 60);
}

#[tokio::test]
async fn refresh_rotates_the_refresh_token() {
    let stack = Stack::start().await;
    let first = login(&stack.auth, TEACHER).await;

    let second = refresh(&stack.auth, &first.refresh_token)
        .await
        .expect("first exchange");

    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    assert_eq!(second.token_type, "Bearer");
    list_students(&stack.student, &second.access_token)
        .await
        .expect("the new access token works");
    let third = refresh(&stack.auth, &second.refresh_token)
        .await
        .expect("the new refresh token works");
    assert_ne!(third.refresh_token, second.refresh_token);
}

#[tokio::test]
async fn reused_refresh_token_revokes_session() {
    let stack = Stack::start().await;
    let first = login(&stack.auth, TEACHER).await;
    let second = refresh(&stack.auth, &first.refresh_token)
        .await
        .expect("first exchange");
    list_students(&stack.student, &second.access_token)
        .await
        .expect("token works before the reuse");

    let replayed = refresh(&stack.auth, &first.refresh_token)
        .await
        .expect_err("a used refresh token is rejected");

    assert_eq!(replayed.code(), Code::Unauthenticated);
    assert_eq!(reason(&replayed), "INVALID_REFRESH_TOKEN");
    let successor = refresh(&stack.auth, &second.refresh_token)
        .await
        .expect_err("the whole session is revoked");
    assert_eq!(reason(&successor), "INVALID_REFRESH_TOKEN");
    for token in [&first.access_token, &second.access_token] {
        let (status, _) = wait_for_rejection(&stack.student, token, PROPAGATION_LIMIT).await;
        assert_revoked(&status);
    }
}

#[tokio::test]
async fn unknown_refresh_tokens_are_rejected() {
    let stack = Stack::start().await;
    let access = login(&stack.auth, TEACHER).await.access_token;

    for presented in [
        "",
        "not-a-token",
        &"A".repeat(43),
        &"A".repeat(10_000),
        &access,
    ] {
        let status = refresh(&stack.auth, presented).await.expect_err("rejected");
        assert_eq!(status.code(), Code::Unauthenticated, "{}", presented.len());
        assert_eq!(reason(&status), "INVALID_REFRESH_TOKEN");
    }
}

#[tokio::test]
async fn logout_reaches_student_service_within_a_second() {
    let stack = Stack::start().await;
    let mut delays = Vec::new();

    for _ in 0..20 {
        let session = login(&stack.auth, TEACHER).await;
        // Cache the token in the guard first, so the revocation must also defeat the cache.
        list_students(&stack.student, &session.access_token)
            .await
            .expect("token works before logout");

        logout(&stack.auth, &session.access_token)
            .await
            .expect("logout");
        let (status, delay) =
            wait_for_rejection(&stack.student, &session.access_token, PROPAGATION_LIMIT).await;

        assert_revoked(&status);
        delays.push(delay);
    }

    delays.sort();
    println!(
        "logout to rejection at student-service over {} samples: min {:?}, median {:?}, max {:?}",
        delays.len(),
        delays[0],
        delays[delays.len() / 2],
        delays[delays.len() - 1]
    );
}

#[tokio::test]
async fn logout_revokes_refresh_token_and_introspection() {
    let stack = Stack::start().await;
    let session = login(&stack.auth, TEACHER).await;

    logout(&stack.auth, &session.access_token)
        .await
        .expect("logout");

    let refreshed = refresh(&stack.auth, &session.refresh_token)
        .await
        .expect_err("refresh after logout");
    assert_eq!(reason(&refreshed), "INVALID_REFRESH_TOKEN");
    let introspected = stack
        .auth
        .client()
        .await
        .validate_token(ValidateTokenRequest {
            token: session.access_token.clone(),
        })
        .await
        .expect("introspection")
        .into_inner();
    assert!(!introspected.valid);
    assert_eq!(introspected.reason(), TokenInvalidReason::Revoked);
    let again = logout(&stack.auth, &session.access_token)
        .await
        .expect_err("a revoked token cannot log out again");
    assert_revoked(&again);
}

#[tokio::test]
async fn logout_needs_a_valid_access_token() {
    let stack = Stack::start().await;

    let anonymous = stack
        .auth
        .client()
        .await
        .logout(LogoutRequest {})
        .await
        .expect_err("no token");
    let forged = logout(&stack.auth, "e30.e30.e30")
        .await
        .expect_err("malformed token");

    assert_eq!(anonymous.code(), Code::Unauthenticated);
    assert_eq!(reason(&anonymous), "MISSING_CREDENTIALS");
    assert_eq!(forged.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn revocation_survives_restart_and_reconnect() {
    let stack = Stack::start().await;
    let before = login(&stack.auth, TEACHER).await;
    logout(&stack.auth, &before.access_token)
        .await
        .expect("logout");
    wait_for_rejection(&stack.student, &before.access_token, PROPAGATION_LIMIT).await;

    // auth-service restarts on the same port; student-service keeps running and resubscribes.
    let Stack {
        dir,
        auth,
        student,
        forger: _,
    } = stack;
    let port = auth.addr.to_string();
    auth.stop().await;
    let auth = RunningAuth::start(&dir.path().join("auth"), &["--listen", &port]).await;
    let after = login(&auth, TEACHER).await;
    list_students(&student, &after.access_token)
        .await
        .expect("new token works");
    logout(&auth, &after.access_token).await.expect("logout");

    let (status, delay) = wait_for_rejection(&student, &after.access_token, RECONNECT_LIMIT).await;
    assert_revoked(&status);
    println!("revocation after an auth-service restart reached student-service in {delay:?}");
    let (status, _) = wait_for_rejection(&student, &before.access_token, PROPAGATION_LIMIT).await;
    assert_revoked(&status);

    // A fresh student-service receives both from the persisted list in its first snapshot.
    student.stop().await;
    let student = RunningStudent::start(&dir.path().join("student"), &auth.url(), &[]).await;
    for token in [&before.access_token, &after.access_token] {
        let (status, _) = wait_for_rejection(&student, token, PROPAGATION_LIMIT).await;
        assert_revoked(&status);
    }
}

#[tokio::test]
async fn disabled_user_tokens_are_rejected() {
    let stack = Stack::start().await;
    let session = login(&stack.auth, TEACHER).await;
    list_students(&stack.student, &session.access_token)
        .await
        .expect("token works before the change");

    stack
        .auth
        .users()
        .set_disabled(TEACHER, true)
        .await
        .expect("disable");

    let (status, _) =
        wait_for_rejection(&stack.student, &session.access_token, PROPAGATION_LIMIT).await;
    assert_revoked(&status);
    let refreshed = refresh(&stack.auth, &session.refresh_token)
        .await
        .expect_err("refresh of a disabled user");
    assert_eq!(reason(&refreshed), "INVALID_REFRESH_TOKEN");
}

#[tokio::test]
async fn role_change_revokes_user_tokens() {
    let stack = Stack::start().await;
    let session = login(&stack.auth, TEACHER).await;
    list_students(&stack.student, &session.access_token)
        .await
        .expect("token works before the change");

    stack
        .auth
        .users()
        .update_role(TEACHER, Role::Student)
        .await
        .expect("demote");

    let (status, _) =
        wait_for_rejection(&stack.student, &session.access_token, PROPAGATION_LIMIT).await;
    assert_revoked(&status);
}

#[tokio::test]
async fn student_service_fails_closed_without_revocations() {
    let stack = Stack::start().await;
    let session = login(&stack.auth, TEACHER).await;
    logout(&stack.auth, &session.access_token)
        .await
        .expect("logout");

    // An attacker holds every revocation stream that auth-service allows its address, which is
    // also the address of the student-services below; the stack's own holds one of them.
    let mut held = Vec::new();
    loop {
        let opened = stack
            .auth
            .client()
            .await
            .watch_revocations(WatchRevocationsRequest {})
            .await;
        match opened {
            Ok(stream) => held.push(stream.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                break;
            }
        }
        assert!(
            held.len() <= auth_service::sessions::MAX_WATCHERS,
            "no stream limit"
        );
    }
    assert!(
        held.len() < auth_service::sessions::MAX_WATCHERS_PER_ADDRESS,
        "one address held {} streams",
        held.len()
    );

    // Another address still gets a stream.
    let other = tonic::transport::Endpoint::from_shared(stack.auth.url())
        .expect("URL")
        .local_address(Some("127.0.0.2".parse().expect("loopback address")))
        .connect()
        .await
        .expect("connect from 127.0.0.2");
    school_proto::auth::v1::auth_service_client::AuthServiceClient::new(other)
        .watch_revocations(WatchRevocationsRequest {})
        .await
        .expect("a stream for another address");

    // A student-service that starts now cannot load the list, so it must not trust any token.
    let dir = tempfile::tempdir().expect("temporary directory");
    let student = RunningStudent::start_unready(dir.path(), &stack.auth.url(), &[]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = list_students(&student, &session.access_token)
        .await
        .expect_err("a revoked token must not pass while the list is missing");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status), "REVOCATIONS_NOT_LOADED");
    let health =
        integration_tests::health_status(&student.url(), "school.student.v1.StudentService")
            .await
            .expect("health answers");
    assert_eq!(
        health,
        tonic_health::pb::health_check_response::ServingStatus::NotServing
    );

    // Once the streams are free again, the student-service loads the list and rejects the token.
    drop(held);
    let (status, _) =
        wait_for_rejection_with(&student, &session.access_token, RECONNECT_LIMIT, |status| {
            status.code() == Code::Unauthenticated
        })
        .await;
    assert_revoked(&status);
    student.stop().await;
}

/// Calls ListStudents until it fails with a status that `accept` approves, failing the test
/// after `limit`.
async fn wait_for_rejection_with(
    student: &RunningStudent,
    token: &str,
    limit: Duration,
    accept: impl Fn(&Status) -> bool,
) -> (Status, Duration) {
    let started = Instant::now();
    loop {
        if let Err(status) = list_students(student, token).await
            && accept(&status)
        {
            return (status, started.elapsed());
        }
        assert!(
            started.elapsed() < limit,
            "no accepted rejection after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn password_changes_revoke_sessions() {
    let stack = Stack::start().await;

    // An admin's reset ends the user's sessions.
    let session = login(&stack.auth, TEACHER).await;
    let admin = stack.token(ADMIN).await;
    stack
        .auth
        .user_client()
        .await
        .reset_password(with_token(
            ResetPasswordRequest {
                username: TEACHER.into(),
                new_password: "a brand new passphrase".into(),
            },
            &admin,
        ))
        .await
        .expect("admin resets the password");
    let (status, _) =
        wait_for_rejection(&stack.student, &session.access_token, PROPAGATION_LIMIT).await;
    assert_revoked(&status);
    let refreshed = refresh(&stack.auth, &session.refresh_token)
        .await
        .expect_err("refresh after a reset");
    assert_eq!(refreshed.code(), Code::Unauthenticated);

    // So does the user's own change, for every session they have.
    let first = login(&stack.auth, STUDENT).await;
    let second = login(&stack.auth, STUDENT).await;
    stack
        .auth
        .user_client()
        .await
        .change_password(with_token(
            ChangePasswordRequest {
                old_password: PASSWORD.into(),
                new_password: "another fresh passphrase".into(),
            },
            &first.access_token,
        ))
        .await
        .expect("student changes the password");
    for session in [&first, &second] {
        let (status, _) =
            wait_for_rejection(&stack.student, &session.access_token, PROPAGATION_LIMIT).await;
        assert_revoked(&status);
        let refreshed = refresh(&stack.auth, &session.refresh_token)
            .await
            .expect_err("refresh after a change");
        assert_eq!(refreshed.code(), Code::Unauthenticated);
    }
}

#[tokio::test]
async fn oldest_session_ends_beyond_the_per_user_limit() {
    let stack = Stack::start_with(&["--max-sessions-per-user", "2"], &[]).await;
    let first = login(&stack.auth, TEACHER).await;
    let second = login(&stack.auth, TEACHER).await;
    let other_user = login(&stack.auth, ADMIN).await;
    let third = login(&stack.auth, TEACHER).await;

    let rejected_refresh = refresh(&stack.auth, &first.refresh_token)
        .await
        .expect_err("the oldest session ended");
    assert_eq!(rejected_refresh.code(), Code::Unauthenticated);
    assert_eq!(reason(&rejected_refresh), "INVALID_REFRESH_TOKEN");
    let (rejected, _) =
        wait_for_rejection(&stack.student, &first.access_token, PROPAGATION_LIMIT).await;
    assert_revoked(&rejected);

    for (name, session) in [
        ("second", &second),
        ("third", &third),
        ("another user's", &other_user),
    ] {
        let renewed = refresh(&stack.auth, &session.refresh_token).await;
        assert!(renewed.is_ok(), "the {name} session ended: {renewed:?}");
        let listed = list_students(&stack.student, &session.access_token).await;
        assert!(listed.is_ok(), "the {name} session's token: {listed:?}");
    }
}

/// Runs a login of `username` with [`PASSWORD`] and `change` so that the change lands while the
/// login checks the password. Then asserts that the login leaves nothing usable: either it
/// fails with `ACCOUNT_CHANGED`, or its access token is revoked and its refresh token refused.
///
/// With [`SLOW_HASHING`] a hash takes about half a second. A change that hashes a password
/// itself starts 100 ms before the login, so it is written after the login read the user and
/// before the login's hash ends. Any other change starts 150 ms after the login.
async fn assert_change_during_login_wins<Fut>(
    stack: &Stack,
    username: &str,
    change_hashes: bool,
    change: Fut,
) where
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut client = stack.auth.client().await;
    let request = LoginRequest {
        username: username.to_owned(),
        password: PASSWORD.to_owned(),
    };
    let (login, change) = if change_hashes {
        let change = tokio::spawn(change);
        tokio::time::sleep(Duration::from_millis(100)).await;
        (
            tokio::spawn(async move { client.login(request).await }),
            change,
        )
    } else {
        // The change then falls late in one second and the login's token in the next, which
        // the change's revocation by `iat` alone would not cover.
        sleep_until_fraction_of_second(0.7).await;
        let login = tokio::spawn(async move { client.login(request).await });
        tokio::time::sleep(Duration::from_millis(150)).await;
        (login, tokio::spawn(change))
    };
    change.await.expect("change task");

    match login.await.expect("login task") {
        Err(status) => {
            assert_eq!(status.code(), Code::Aborted, "{status:?}");
            assert_eq!(reason(&status), "ACCOUNT_CHANGED", "{status:?}");
        }
        Ok(response) => {
            // The change came after the login finished, so its revocation covers the login.
            let session = response.into_inner();
            let refreshed = refresh(&stack.auth, &session.refresh_token).await;
            assert!(refreshed.is_err(), "{username}: refresh after the change");
            let (rejected, _) =
                wait_for_rejection(&stack.student, &session.access_token, PROPAGATION_LIMIT).await;
            assert_eq!(rejected.code(), Code::Unauthenticated, "{rejected:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_racing_an_account_change_leaves_nothing_usable() {
    let stack = Stack::start_with(&SLOW_HASHING, &[]).await;

    let users = stack.auth.users().clone();
    let reset = async move {
        let password = auth_service::password::Password::new("a brand new password".into());
        users
            .reset_password(TEACHER, password)
            .await
            .expect("reset the password");
    };
    assert_change_during_login_wins(&stack, TEACHER, true, reset).await;
    let users = stack.auth.users().clone();
    let disable = async move {
        users
            .set_disabled(STUDENT, true)
            .await
            .expect("disable the user");
    };
    assert_change_during_login_wins(&stack, STUDENT, false, disable).await;
}

#[tokio::test]
async fn expired_sessions_and_revocations_are_purged() {
    let auth_args = [
        "--token-ttl-secs",
        "1",
        "--refresh-token-ttl-secs",
        "2",
        "--session-purge-interval-secs",
        "1",
        "--leeway-secs",
        "0",
    ];
    let stack = Stack::start_with(&auth_args, &[]).await;
    let session = login(&stack.auth, TEACHER).await;
    logout(&stack.auth, &session.access_token)
        .await
        .expect("logout");
    assert_eq!(snapshot_len(&stack.auth).await, 1, "the logout is listed");

    let started = Instant::now();
    while snapshot_len(&stack.auth).await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the revocation was not purged after its token expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let stale = login(&stack.auth, TEACHER).await;
    tokio::time::sleep(Duration::from_millis(3_100)).await;
    let refreshed = refresh(&stack.auth, &stale.refresh_token)
        .await
        .expect_err("an expired refresh token");
    assert_eq!(reason(&refreshed), "INVALID_REFRESH_TOKEN");
}

/// Returns the number of entries in a new subscription's snapshot.
async fn snapshot_len(auth: &RunningAuth) -> usize {
    let mut stream = auth
        .client()
        .await
        .watch_revocations(WatchRevocationsRequest {})
        .await
        .expect("subscribe")
        .into_inner();
    let mut count = 0;
    while let Some(message) = stream.message().await.expect("snapshot message") {
        count += message.revocations.len();
        if message.snapshot_complete {
            return count;
        }
    }
    panic!("the stream ended before the snapshot was complete");
}

#[tokio::test]
async fn token_source_renews_with_refresh_token() {
    let stack = Stack::start_with(&["--token-ttl-secs", "2"], &[]).await;
    let channel = tonic::transport::Channel::from_shared(stack.auth.url())
        .expect("URL")
        .connect()
        .await
        .expect("connect");
    let credentials = school_client::Credentials::new(TEACHER, PASSWORD);
    let source = school_client::TokenSource::login_with_renewal(
        channel,
        credentials,
        Duration::from_secs(1),
    )
    .await
    .expect("first login");
    let first = bearer(&source).await;

    let started = Instant::now();
    while source.refresh_count() < 1 {
        assert!(started.elapsed() < Duration::from_secs(10), "no renewal");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let renewed = bearer(&source).await;

    assert_ne!(renewed, first);
    assert_eq!(source.login_count(), 1, "renewed without a password");
    list_students(&stack.student, &renewed)
        .await
        .expect("the renewed token works");

    // Logging out ends the session, so the next renewal falls back to Login.
    logout(&stack.auth, &renewed).await.expect("logout");
    let started = Instant::now();
    while source.login_count() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no fallback login"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = bearer(&source).await;
    list_students(&stack.student, &after)
        .await
        .expect("the token from the fallback login works");
}

/// Returns the current access token of `source`, without the `Bearer ` prefix.
async fn bearer(source: &school_client::TokenSource) -> String {
    let header = source.token().await.expect("token");
    let text = header.to_str().expect("ASCII");
    text.trim_start_matches("Bearer ").to_owned()
}
