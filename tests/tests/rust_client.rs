//! The `school-client` library as an internal Rust service uses it: token renewal shared by
//! many tasks, the bearer-token interceptor against the real services, and the example binary.

// The helpers outside the test functions fail the test on purpose when setup goes wrong.
#![allow(clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use integration_tests::{ADMIN, PASSWORD, STUDENT, Stack, with_token};
use school_client::{Credentials, TokenSource, error_info};
use school_proto::auth::v1::auth_service_server::{AuthService, AuthServiceServer};
use school_proto::auth::v1::{
    IssueServiceTokenRequest, IssueServiceTokenResponse, ListPublicKeysRequest,
    ListPublicKeysResponse, LoginRequest, LoginResponse, LogoutRequest, LogoutResponse,
    RefreshTokenRequest, RefreshTokenResponse, ValidateTokenRequest, ValidateTokenResponse,
    WatchRevocationsRequest, WatchRevocationsResponse,
};
use school_proto::student::v1::student_service_client::StudentServiceClient;
use school_proto::student::v1::{
    CreateStudentRequest, DeleteStudentRequest, ListStudentsRequest, Student,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};

/// How many tasks share one token source in the concurrency tests.
const TASKS: usize = 64;

/// An auth-service stand-in that counts `Login` calls, returns each after `delay` with a token
/// that lives `lifetime_secs`, and fails them while `failing` is set.
struct CountingAuth {
    logins: Arc<AtomicU64>,
    failing: Arc<AtomicBool>,
    delay: Duration,
    lifetime_secs: i64,
}

#[tonic::async_trait]
impl AuthService for CountingAuth {
    async fn login(&self, _: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
        let number = self.logins.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(self.delay).await;
        if self.failing.load(Ordering::SeqCst) {
            return Err(Status::unavailable("auth-service is down"));
        }
        Ok(Response::new(LoginResponse {
            access_token: format!("token-{number}"),
            token_type: "Bearer".to_owned(),
            expires_in: self.lifetime_secs,
            // No refresh token, so every renewal is a Login and the counts below hold.
            refresh_token: String::new(),
            refresh_expires_in: 0,
        }))
    }

    async fn validate_token(
        &self,
        _: Request<ValidateTokenRequest>,
    ) -> Result<Response<ValidateTokenResponse>, Status> {
        Err(Status::unimplemented("not needed by these tests"))
    }

    async fn list_public_keys(
        &self,
        _: Request<ListPublicKeysRequest>,
    ) -> Result<Response<ListPublicKeysResponse>, Status> {
        Err(Status::unimplemented("not needed by these tests"))
    }

    async fn issue_service_token(
        &self,
        _: Request<IssueServiceTokenRequest>,
    ) -> Result<Response<IssueServiceTokenResponse>, Status> {
        Err(Status::unimplemented("not needed by these tests"))
    }

    async fn refresh_token(
        &self,
        _: Request<RefreshTokenRequest>,
    ) -> Result<Response<RefreshTokenResponse>, Status> {
        Err(Status::unimplemented("not needed by these tests"))
    }

    async fn logout(&self, _: Request<LogoutRequest>) -> Result<Response<LogoutResponse>, Status> {
        Err(Status::unimplemented("not needed by these tests"))
    }

    type WatchRevocationsStream = tokio_stream::Empty<Result<WatchRevocationsResponse, Status>>;

    async fn watch_revocations(
        &self,
        _: Request<WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        Err(Status::unimplemented("not needed by these tests"))
    }
}

struct FakeAuth {
    channel: Channel,
    logins: Arc<AtomicU64>,
    failing: Arc<AtomicBool>,
}

async fn start_fake_auth(delay: Duration, lifetime_secs: i64) -> FakeAuth {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    let logins = Arc::new(AtomicU64::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let service = CountingAuth {
        logins: Arc::clone(&logins),
        failing: Arc::clone(&failing),
        delay,
        lifetime_secs,
    };
    tokio::spawn(
        Server::builder()
            .add_service(AuthServiceServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("valid URL")
        .connect()
        .await
        .expect("connect to the fake auth-service");
    FakeAuth {
        channel,
        logins,
        failing,
    }
}

fn credentials() -> Credentials {
    Credentials::new("reporting", "service password")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_share_one_login_per_renewal() {
    // Tokens live 2 s and are renewed halfway; each login takes 200 ms, so tasks pile up
    // behind every renewal.
    let fake = start_fake_auth(Duration::from_millis(200), 2).await;
    let source = TokenSource::login(fake.channel.clone(), credentials())
        .await
        .expect("first login");
    assert_eq!(fake.logins.load(Ordering::SeqCst), 1);

    let run_for = Duration::from_millis(2600);
    let deadline = tokio::time::Instant::now() + run_for;
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let source = Arc::clone(&source);
        tasks.push(tokio::spawn(async move {
            let mut calls = 0_u32;
            while tokio::time::Instant::now() < deadline {
                source.token().await.expect("a fresh token");
                calls += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            calls
        }));
    }
    let mut calls = 0;
    for task in tasks {
        calls += task.await.expect("task finished");
    }

    // Renewals fall due at about 1.0 s and 2.2 s. Without single-flight renewal each of the
    // 64 tasks would log in at each of them.
    let logins = fake.logins.load(Ordering::SeqCst);
    assert!(calls > TASKS as u32 * 10, "only {calls} token requests ran");
    assert!(
        (2..=4).contains(&logins),
        "{logins} Login calls for {TASKS} tasks over {run_for:?}"
    );
    assert_eq!(source.login_count(), logins);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_tasks_share_a_failed_login() {
    let fake = start_fake_auth(Duration::from_millis(300), 2).await;
    let source = TokenSource::login(fake.channel.clone(), credentials())
        .await
        .expect("first login");
    fake.failing.store(true, Ordering::SeqCst);
    // Past the renewal point at 1 s, while the background renewal is still in its 300 ms call.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let source = Arc::clone(&source);
        tasks.push(tokio::spawn(async move { source.token().await }));
    }
    let mut failures = 0;
    for task in tasks {
        if task.await.expect("task finished").is_err() {
            failures += 1;
        }
    }

    // The first login, the background renewal's failed attempt, and at most one more: tasks
    // that waited for a failed attempt, or came soon after it, return its error instead of
    // trying again.
    let logins = fake.logins.load(Ordering::SeqCst);
    assert_eq!(failures, TASKS);
    assert!(
        (2..=3).contains(&logins),
        "{logins} Login calls for {TASKS} waiting tasks"
    );
}

#[tokio::test]
async fn wrong_password_fails_at_login() {
    let stack = Stack::start().await;
    let auth = Channel::from_shared(stack.auth.url())
        .expect("valid URL")
        .connect()
        .await
        .expect("connect");

    let error = TokenSource::login(auth, Credentials::new(ADMIN, "wrong password"))
        .await
        .unwrap_err();

    let school_client::ClientError::Login { status, .. } = error else {
        panic!("expected a login error, got {error:?}");
    };
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        error_info(&status).map(|info| info.reason).as_deref(),
        Some("INVALID_CREDENTIALS")
    );
}

async fn token_source(stack: &Stack, username: &str) -> Arc<TokenSource> {
    let auth = Channel::from_shared(stack.auth.url())
        .expect("valid URL")
        .connect()
        .await
        .expect("connect to auth-service");
    TokenSource::login(auth, Credentials::new(username, PASSWORD))
        .await
        .expect("login")
}

async fn create_record(stack: &Stack) -> Student {
    let token = stack.token(ADMIN).await;
    stack
        .student
        .client()
        .await
        .create_student(with_token(
            CreateStudentRequest {
                name: "Ada Pupil".to_owned(),
                email: "ada@example.org".to_owned(),
                account_username: String::new(),
                grade_level: 7,
            },
            &token,
        ))
        .await
        .expect("create a record")
        .into_inner()
        .student
        .expect("created record")
}

#[tokio::test]
async fn interceptor_authenticates_every_call() {
    let stack = Stack::start().await;
    let record = create_record(&stack).await;
    let admin = token_source(&stack, ADMIN).await;
    let student = token_source(&stack, STUDENT).await;
    let channel = stack.student.channel().await;

    let denied = StudentServiceClient::with_interceptor(channel.clone(), student.interceptor())
        .delete_student(DeleteStudentRequest {
            id: record.id.clone(),
        })
        .await
        .unwrap_err();
    let mut as_admin = StudentServiceClient::with_interceptor(channel, admin.interceptor());
    let deleted = as_admin
        .delete_student(DeleteStudentRequest {
            id: record.id.clone(),
        })
        .await;
    let again = as_admin
        .delete_student(DeleteStudentRequest { id: record.id })
        .await
        .unwrap_err();

    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(
        error_info(&denied).map(|info| info.reason).as_deref(),
        Some("PERMISSION_DENIED")
    );
    assert!(deleted.is_ok(), "{deleted:?}");
    assert_eq!(again.code(), Code::NotFound);
    assert_eq!(admin.login_count(), 1);
}

#[tokio::test]
async fn revoked_token_is_renewed_once_reported() {
    let stack = Stack::start().await;
    let source = token_source(&stack, ADMIN).await;
    let channel = stack.student.channel().await;
    let mut students = StudentServiceClient::with_interceptor(channel, source.interceptor());
    let sent = source.token().await.expect("first token");
    let mut logout = Request::new(LogoutRequest {});
    logout.metadata_mut().insert("authorization", sent.clone());
    stack
        .auth
        .client()
        .await
        .logout(logout)
        .await
        .expect("logout revokes the token and its session");

    let rejected = loop {
        match students.list_students(ListStudentsRequest::default()).await {
            Err(status) => break status,
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    assert_eq!(
        error_info(&rejected).map(|info| info.reason).as_deref(),
        Some("TOKEN_REVOKED")
    );
    assert!(source.token_rejected(&sent, &rejected));
    assert!(
        !source.token_rejected(&sent, &Status::permission_denied("denied")),
        "a denial says nothing about the token"
    );
    assert!(
        !source.token_rejected(&sent, &Status::unauthenticated("no reason")),
        "a rejection without the reason renews nothing"
    );

    // The background renewal picks the report up; calls through the interceptor recover
    // without anyone calling `token()`.
    let reported = std::time::Instant::now();
    while let Err(status) = students.list_students(ListStudentsRequest::default()).await {
        assert!(
            reported.elapsed() < Duration::from_secs(2),
            "still rejected: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let renewed = source.token().await.expect("renewed token");
    assert_ne!(renewed, sent);
    // The session ended with the logout, so the renewal logged in again.
    assert_eq!(source.login_count(), 2);
    // Reporting the old token again changes nothing.
    assert!(source.token_rejected(&sent, &rejected));
    assert_eq!(source.token().await.expect("current token"), renewed);
}

/// Returns the path of the `delete_student` example, which `scripts/test` builds before the
/// tests run.
fn example_binary() -> PathBuf {
    let test_binary = std::env::current_exe().expect("path of the test binary");
    // target/debug/deps/rust_client-<hash> -> target/debug/examples/delete_student
    let profile_dir = test_binary
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile directory");
    let path = profile_dir.join("examples").join("delete_student");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p school-client --examples` \
         (scripts/test does)",
        path.display()
    );
    path
}

async fn run_example(stack: &Stack, username: &str, id: &str) -> std::process::Output {
    tokio::process::Command::new(example_binary())
        .arg(id)
        .env("AUTH_URL", stack.auth.url())
        .env("STUDENT_URL", stack.student.url())
        .env("CLIENT_USERNAME", username)
        .env("CLIENT_PASSWORD", PASSWORD)
        .output()
        .await
        .expect("run the delete_student example")
}

#[tokio::test]
async fn delete_student_example_deletes_as_admin_only() {
    let stack = Stack::start().await;
    let record = create_record(&stack).await;

    let as_student = run_example(&stack, STUDENT, &record.id).await;
    let as_admin = run_example(&stack, ADMIN, &record.id).await;

    let student_stderr = String::from_utf8_lossy(&as_student.stderr);
    assert_eq!(as_student.status.code(), Some(1), "{student_stderr}");
    assert!(
        student_stderr.contains("PERMISSION_DENIED (school-guard)"),
        "{student_stderr}"
    );
    let admin_stdout = String::from_utf8_lossy(&as_admin.stdout);
    assert!(
        as_admin.status.success(),
        "{}",
        String::from_utf8_lossy(&as_admin.stderr)
    );
    assert_eq!(
        admin_stdout.trim(),
        format!("deleted student {}", record.id)
    );
}
