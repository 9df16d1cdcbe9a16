//! Service accounts: created by an admin, exchanging a client id and secret for a token with
//! role `service`, restricted to one audience, and used through the Rust client library.

#![allow(clippy::expect_used)]

use integration_tests::{
    ADMIN, LOCKOUT_AFTER_THREE, RunningStudent, SLOW_HASHING, Stack,
    sleep_until_fraction_of_second, with_token,
};
use school_client::{Credentials, TokenSource, error_info};
use school_proto::auth::v1::{
    CreateServiceAccountRequest, CreateServiceAccountResponse, DeleteServiceAccountRequest,
    IssueServiceTokenRequest, ListServiceAccountsRequest, RotateServiceAccountSecretRequest,
};
use school_proto::student::v1::ListStudentsRequest;
use school_proto::student::v1::student_service_client::StudentServiceClient;
use tonic::Code;
use tonic::transport::Channel;

/// The audience that the second student-service in these tests checks.
const STUDENT_AUDIENCE: &str = "student-service";

async fn create_account(stack: &Stack, name: &str) -> CreateServiceAccountResponse {
    let admin = stack.token(ADMIN).await;
    stack
        .auth
        .user_client()
        .await
        .create_service_account(with_token(
            CreateServiceAccountRequest {
                name: name.to_owned(),
                audiences: vec![STUDENT_AUDIENCE.to_owned()],
            },
            &admin,
        ))
        .await
        .expect("admin creates a service account")
        .into_inner()
}

async fn issue(
    stack: &Stack,
    client_id: &str,
    client_secret: &str,
    audience: &str,
) -> Result<String, tonic::Status> {
    stack
        .auth
        .client()
        .await
        .issue_service_token(IssueServiceTokenRequest {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            audience: audience.to_owned(),
        })
        .await
        .map(|response| response.into_inner().access_token)
}

async fn list_code(student: &RunningStudent, token: &str) -> (Code, Option<String>) {
    let listed = student
        .client()
        .await
        .list_students(with_token(ListStudentsRequest::default(), token))
        .await;
    match listed {
        Ok(_) => (Code::Ok, None),
        Err(status) => {
            let problem =
                error_info(&status).and_then(|info| info.metadata.get("problem").cloned());
            (status.code(), problem)
        }
    }
}

/// Calls `student` with `token` until it is rejected, for at most a second, and returns the
/// `ErrorInfo` reason.
async fn rejection_reason(student: &RunningStudent, token: &str) -> Option<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let listed = student
            .client()
            .await
            .list_students(with_token(ListStudentsRequest::default(), token))
            .await;
        match listed {
            Err(status) => return error_info(&status).map(|info| info.reason),
            Ok(_) if std::time::Instant::now() > deadline => return None,
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(5)).await,
        }
    }
}

/// Returns the UserService client of `stack` and an admin token.
async fn admin_users(
    stack: &Stack,
) -> (
    school_proto::auth::v1::user_service_client::UserServiceClient<Channel>,
    String,
) {
    (stack.auth.user_client().await, stack.token(ADMIN).await)
}

/// Creates a service account named `name`, starts a student-service that checks
/// [`STUDENT_AUDIENCE`], and issues the account a token for it.
async fn account_with_token(
    stack: &Stack,
    name: &str,
) -> (CreateServiceAccountResponse, RunningStudent, String) {
    let account = create_account(stack, name).await;
    let own_audience = RunningStudent::start(
        &stack.dir.path().join("student-own-audience"),
        &stack.auth.url(),
        &["--audience", STUDENT_AUDIENCE],
    )
    .await;
    let token = issue(
        stack,
        &account.client_id,
        &account.client_secret,
        STUDENT_AUDIENCE,
    )
    .await
    .expect("service token");
    (account, own_audience, token)
}

/// Asserts that `account`'s original secret gets no token and that `token` is rejected as
/// revoked by `student`.
async fn assert_secret_and_token_dead(
    stack: &Stack,
    account: &CreateServiceAccountResponse,
    student: &RunningStudent,
    token: &str,
) {
    let rejected = issue(
        stack,
        &account.client_id,
        &account.client_secret,
        STUDENT_AUDIENCE,
    )
    .await
    .expect_err("the original secret gets no token");
    assert_eq!(rejected.code(), Code::Unauthenticated);
    assert_eq!(
        rejection_reason(student, token).await.as_deref(),
        Some("TOKEN_REVOKED")
    );
}

#[tokio::test]
async fn rotation_revokes_old_secret_and_tokens() {
    let stack = Stack::start().await;
    let (account, own_audience, old_token) = account_with_token(&stack, "reporting").await;
    let (mut users, admin) = admin_users(&stack).await;

    let rotated = users
        .rotate_service_account_secret(with_token(
            RotateServiceAccountSecretRequest {
                client_id: account.client_id.clone(),
            },
            &admin,
        ))
        .await
        .expect("admin rotates the secret")
        .into_inner();

    assert_ne!(rotated.client_secret, account.client_secret);
    assert_eq!(rotated.client_secret.len(), 43);
    assert_secret_and_token_dead(&stack, &account, &own_audience, &old_token).await;
    // Revocation covers tokens issued in the same second, so wait for the next one.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let new_token = issue(
        &stack,
        &account.client_id,
        &rotated.client_secret,
        STUDENT_AUDIENCE,
    )
    .await
    .expect("the new secret works");
    assert_eq!(list_code(&own_audience, &new_token).await, (Code::Ok, None));
    own_audience.stop().await;
}

#[tokio::test]
async fn deleted_account_loses_its_secret_and_tokens() {
    let stack = Stack::start().await;
    let (account, own_audience, token) = account_with_token(&stack, "reporting").await;
    let remaining = create_account(&stack, "billing").await;
    let (mut users, admin) = admin_users(&stack).await;

    users
        .delete_service_account(with_token(
            DeleteServiceAccountRequest {
                client_id: account.client_id.clone(),
            },
            &admin,
        ))
        .await
        .expect("admin deletes the account");

    assert_secret_and_token_dead(&stack, &account, &own_audience, &token).await;
    let listed = users
        .list_service_accounts(with_token(ListServiceAccountsRequest {}, &admin))
        .await
        .expect("admin lists service accounts")
        .into_inner()
        .service_accounts;
    let ids: Vec<&str> = listed
        .iter()
        .map(|entry| entry.client_id.as_str())
        .collect();
    assert_eq!(ids, [remaining.client_id.as_str()]);
    assert_eq!(listed[0].name, "billing");
    assert_eq!(listed[0].audiences, [STUDENT_AUDIENCE]);
    own_audience.stop().await;
}

#[tokio::test]
async fn unknown_or_malformed_client_ids_are_rejected() {
    let stack = Stack::start().await;
    let (mut users, admin) = admin_users(&stack).await;
    let cases = [
        (
            "svc-unknown".to_owned(),
            Code::NotFound,
            "SERVICE_ACCOUNT_NOT_FOUND",
        ),
        (String::new(), Code::InvalidArgument, "INVALID_ARGUMENT"),
        ("x".repeat(65), Code::InvalidArgument, "INVALID_ARGUMENT"),
    ];

    for (client_id, code, reason) in cases {
        let rotated = users
            .rotate_service_account_secret(with_token(
                RotateServiceAccountSecretRequest {
                    client_id: client_id.clone(),
                },
                &admin,
            ))
            .await
            .expect_err("rotation of a missing account");
        let deleted = users
            .delete_service_account(with_token(
                DeleteServiceAccountRequest {
                    client_id: client_id.clone(),
                },
                &admin,
            ))
            .await
            .expect_err("deletion of a missing account");

        for status in [rotated, deleted] {
            assert_eq!(status.code(), code, "{client_id:?}");
            assert_eq!(
                error_info(&status).map(|info| info.reason).as_deref(),
                Some(reason),
                "{client_id:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_request_racing_rotation_or_deletion_is_withheld() {
    let stack = Stack::start_with(&SLOW_HASHING, &[]).await;
    let (users, admin) = admin_users(&stack).await;

    for delete in [false, true] {
        let name = if delete { "deleted" } else { "rotated" };
        let (account, own_audience, _) = account_with_token(&stack, name).await;
        let mut request = users.clone();
        let client_id = account.client_id.clone();
        let admin = admin.clone();
        // Rotation hashes a secret too, so it starts first and is written while the token
        // request checks the old secret. Deletion is quick, so it starts during that check.
        let change = async move {
            if delete {
                request
                    .delete_service_account(with_token(
                        DeleteServiceAccountRequest { client_id },
                        &admin,
                    ))
                    .await
                    .map(drop)
            } else {
                request
                    .rotate_service_account_secret(with_token(
                        RotateServiceAccountSecretRequest { client_id },
                        &admin,
                    ))
                    .await
                    .map(drop)
            }
        };
        let (issued, changed) = if delete {
            // The deletion then falls late in one second and the token in the next, which
            // the deletion's revocation by `iat` alone would not cover.
            sleep_until_fraction_of_second(0.7).await;
            let issued = issue(
                &stack,
                &account.client_id,
                &account.client_secret,
                STUDENT_AUDIENCE,
            );
            let delayed = async {
                tokio::time::sleep(std::time::Duration::from_millis(150)).await;
                change.await
            };
            tokio::join!(issued, delayed)
        } else {
            let change = tokio::spawn(change);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let issued = issue(
                &stack,
                &account.client_id,
                &account.client_secret,
                STUDENT_AUDIENCE,
            )
            .await;
            (issued, change.await.expect("rotation task"))
        };
        changed.expect("the admin's change");

        match issued {
            Err(status) => assert!(
                matches!(status.code(), Code::Aborted | Code::Unauthenticated),
                "{name}: {status:?}"
            ),
            Ok(token) => assert_eq!(
                rejection_reason(&own_audience, &token).await.as_deref(),
                Some("TOKEN_REVOKED"),
                "{name}: a token issued during the change still works"
            ),
        }
        own_audience.stop().await;
    }
}

#[tokio::test]
async fn service_token_is_bound_to_its_audience() {
    let stack = Stack::start().await;
    let (account, own_audience, token) = account_with_token(&stack, "reporting").await;

    assert!(account.client_id.starts_with("svc-"));
    assert_eq!(list_code(&own_audience, &token).await, (Code::Ok, None));
    // The stack's student-service checks the audience `school`.
    assert_eq!(
        list_code(&stack.student, &token).await,
        (Code::Unauthenticated, Some("wrong_audience".to_owned()))
    );
    own_audience.stop().await;
}

#[tokio::test]
async fn wrong_secrets_are_throttled_per_client_id() {
    let stack = Stack::start_with(&LOCKOUT_AFTER_THREE, &[]).await;
    let account = create_account(&stack, "reporting").await;
    let other = create_account(&stack, "billing").await;

    for attempt in 1..=3 {
        let wrong = issue(&stack, &account.client_id, "guess", STUDENT_AUDIENCE)
            .await
            .expect_err("wrong secret");
        assert_eq!(wrong.code(), Code::Unauthenticated, "attempt {attempt}");
    }
    let blocked = issue(
        &stack,
        &account.client_id,
        &account.client_secret,
        STUDENT_AUDIENCE,
    )
    .await
    .expect_err("the right secret is blocked too once the client id is");

    assert_eq!(blocked.code(), Code::ResourceExhausted);
    assert_eq!(
        error_info(&blocked).map(|info| info.reason).as_deref(),
        Some("LOGIN_THROTTLED")
    );
    let unaffected = issue(
        &stack,
        &other.client_id,
        &other.client_secret,
        STUDENT_AUDIENCE,
    )
    .await;
    assert!(unaffected.is_ok(), "another client id: {unaffected:?}");
    let user_login = stack.token(ADMIN).await;
    assert!(!user_login.is_empty(), "a user login from the same address");
}

#[tokio::test]
async fn service_token_needs_secret_and_allowed_audience() {
    let stack = Stack::start().await;
    let account = create_account(&stack, "reporting").await;

    let wrong_secret = issue(
        &stack,
        &account.client_id,
        "not the secret",
        STUDENT_AUDIENCE,
    )
    .await
    .expect_err("wrong secret");
    let unknown = issue(
        &stack,
        "svc-unknown",
        &account.client_secret,
        STUDENT_AUDIENCE,
    )
    .await
    .expect_err("unknown client id");
    let foreign = issue(&stack, &account.client_id, &account.client_secret, "school")
        .await
        .expect_err("audience the account was not created with");

    assert_eq!(wrong_secret.code(), Code::Unauthenticated);
    assert_eq!(unknown.code(), Code::Unauthenticated);
    assert_eq!(wrong_secret.message(), unknown.message());
    assert_eq!(foreign.code(), Code::PermissionDenied);
    assert_eq!(
        error_info(&foreign).map(|info| info.reason).as_deref(),
        Some("AUDIENCE_NOT_ALLOWED")
    );

    let duplicate = stack
        .auth
        .user_client()
        .await
        .create_service_account(with_token(
            CreateServiceAccountRequest {
                name: "reporting".into(),
                audiences: vec![STUDENT_AUDIENCE.into()],
            },
            &stack.token(ADMIN).await,
        ))
        .await
        .expect_err("name taken");
    assert_eq!(duplicate.code(), Code::AlreadyExists);
}

#[tokio::test]
async fn rust_client_uses_service_credentials() {
    let stack = Stack::start().await;
    let account = create_account(&stack, "nightly-report").await;
    let student = RunningStudent::start(
        &stack.dir.path().join("student-client"),
        &stack.auth.url(),
        &["--audience", STUDENT_AUDIENCE],
    )
    .await;
    let auth = Channel::from_shared(stack.auth.url())
        .expect("URL")
        .connect()
        .await
        .expect("connect to auth-service");

    let tokens = TokenSource::login(
        auth,
        Credentials::service_account(
            account.client_id.clone(),
            account.client_secret.clone(),
            STUDENT_AUDIENCE,
        ),
    )
    .await
    .expect("service account logs in");
    let mut students =
        StudentServiceClient::with_interceptor(student.channel().await, tokens.interceptor());
    let listed = students.list_students(ListStudentsRequest::default()).await;

    assert!(listed.is_ok(), "{listed:?}");
    assert_eq!(tokens.username(), account.client_id);
    assert_eq!(tokens.login_count(), 1);
    student.stop().await;
}
