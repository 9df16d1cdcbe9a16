//! Operations: the Prometheus endpoints, load shedding with RESOURCE_EXHAUSTED, and
//! student-service carrying on while auth-service is down.

// A failed step in a helper fails the test, which is what `expect` does here.
#![allow(clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use auth_service::Role;
use auth_service::password::Password;
use clap::Parser as _;
use integration_tests::{
    ADMIN, PASSWORD, RunningAuth, STUDENT, Stack, health_status, wait_until_serving, with_token,
};
use school_proto::auth::v1::auth_service_client::AuthServiceClient;
use school_proto::auth::v1::{LoginRequest, LogoutRequest};
use school_proto::student::v1::student_service_client::StudentServiceClient;
use school_proto::student::v1::{CreateStudentRequest, DeleteStudentRequest, GetStudentRequest};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// Fetches `GET /metrics` over plain HTTP/1.1 and returns the body.
async fn scrape(addr: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("send the scrape request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("read the scrape response");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .expect("HTTP response with a body");
    assert!(head.starts_with("HTTP/1.1 200"), "scrape failed: {head}");
    body.to_owned()
}

/// Returns the value of the sample whose line starts with `series`, such as
/// `requests_shed_total`, or `None` when there is none.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|line| line.starts_with(series) && line[series.len()..].starts_with(' '))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Starts student-service in this process with the metrics endpoint on a loopback port, and
/// returns its URL, the metrics address and the sender that stops it.
async fn start_student_with_metrics(
    data_dir: &Path,
    auth_url: &str,
) -> (String, SocketAddr, oneshot::Sender<()>) {
    let config = student_service::Config::try_parse_from([
        "student-service",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().expect("UTF-8 path"),
        "--auth-url",
        auth_url,
    ])
    .expect("student-service flags");
    let server = student_service::bind(config)
        .await
        .expect("student-service binds");
    let url = format!("http://{}", server.local_addr());
    let metrics = server.metrics_addr().expect("metrics endpoint bound");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    wait_until_serving(&url, "school.student.v1.StudentService").await;
    (url, metrics, stop)
}

#[tokio::test]
async fn student_metrics_count_outcomes() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let auth = RunningAuth::start(&dir.path().join("auth"), &[]).await;
    for (username, role) in [(ADMIN, Role::Admin), (STUDENT, Role::Student)] {
        auth.users()
            .create(username, PASSWORD, role)
            .await
            .expect("create test user");
    }
    let (url, metrics_addr, _stop) =
        start_student_with_metrics(&dir.path().join("student"), &auth.url()).await;
    let admin = auth.login(ADMIN, PASSWORD).await;
    let student = auth.login(STUDENT, PASSWORD).await;
    let mut client = StudentServiceClient::connect(url)
        .await
        .expect("connect to student-service");

    let created = client
        .create_student(with_token(
            CreateStudentRequest {
                name: "Mia Metric".into(),
                email: "mia@example.org".into(),
                account_username: String::new(),
                grade_level: 4,
            },
            &admin,
        ))
        .await
        .expect("admin creates a record")
        .into_inner()
        .student
        .expect("created record");
    let denied = client
        .delete_student(with_token(
            DeleteStudentRequest {
                id: created.id.clone(),
            },
            &student,
        ))
        .await
        .expect_err("a student may not delete");
    let unauthenticated = client
        .get_student(GetStudentRequest { id: created.id })
        .await
        .expect_err("no token");
    let text = scrape(metrics_addr).await;

    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
    assert_eq!(
        sample(
            &text,
            r#"grpc_server_requests_total{method="/school.student.v1.StudentService/CreateStudent",code="Ok"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"authorization_denials_total{method="/school.student.v1.StudentService/DeleteStudent"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"authentication_failures_total{reason="MISSING_CREDENTIALS"}"#
        ),
        Some(1.0),
        "{text}"
    );
    let commits = sample(&text, "storage_commits_total").expect("storage_commits_total");
    assert!(commits >= 1.0, "{text}");
    let size = sample(&text, "storage_size_bytes").expect("storage_size_bytes");
    assert!(size > 0.0, "{text}");
}

#[tokio::test]
async fn revocation_lag_is_measured() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let auth = RunningAuth::start(&dir.path().join("auth"), &[]).await;
    auth.users()
        .create(STUDENT, PASSWORD, Role::Student)
        .await
        .expect("create test user");
    let (_url, metrics_addr, _stop) =
        start_student_with_metrics(&dir.path().join("student"), &auth.url()).await;
    let token = auth.login(STUDENT, PASSWORD).await;

    // The watcher may still be subscribing: log out only once the stream has its snapshot,
    // which the first revocation after it proves by raising the lag count.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut token = token;
    loop {
        auth.client()
            .await
            .logout(with_token(LogoutRequest {}, &token))
            .await
            .expect("logout");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let text = scrape(metrics_addr).await;
        let count = sample(&text, "revocation_lag_seconds_count").unwrap_or(0.0);
        if count >= 1.0 {
            let total = sample(&text, "revocation_lag_seconds_sum").expect("lag sum");
            assert!(
                total / count < 1.0,
                "average lag {} s: {text}",
                total / count
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no revocation lag recorded: {text}"
        );
        token = auth.login(STUDENT, PASSWORD).await;
    }
}

/// Binds auth-service in this process with a bootstrap admin, metrics and a concurrency limit.
async fn bind_auth(data_dir: &Path, max_concurrent: &str) -> auth_service::BoundServer {
    let mut config = auth_service::Config::try_parse_from([
        "auth-service",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "127.0.0.1:0",
        "--max-concurrent-requests",
        max_concurrent,
        "--bootstrap-admin-username",
        ADMIN,
        "--data-dir",
        data_dir.to_str().expect("UTF-8 path"),
    ])
    .expect("auth-service flags");
    config.bootstrap_admin_password = Some(Password::new(PASSWORD.to_owned()));
    auth_service::bind(config)
        .await
        .expect("auth-service binds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_sheds_then_recovers() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let server = bind_auth(&dir.path().join("auth"), "1").await;
    let url = format!("http://{}", server.local_addr());
    let metrics_addr = server.metrics_addr().expect("metrics endpoint bound");
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    wait_until_serving(&url, "school.auth.v1.AuthService").await;
    let client = AuthServiceClient::connect(url.clone())
        .await
        .expect("connect to auth-service");

    // Each login hashes with Argon2 for milliseconds, so with room for one request most of a
    // burst finds the server full.
    let burst: Vec<_> = (0..16)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .login(LoginRequest {
                        username: ADMIN.to_owned(),
                        password: PASSWORD.to_owned(),
                    })
                    .await
            })
        })
        .collect();
    let mut codes = Vec::new();
    for login in burst {
        let outcome = login.await.expect("login task");
        codes.push(outcome.map_or_else(|status| status.code(), |_| Code::Ok));
    }
    let after = client
        .clone()
        .login(LoginRequest {
            username: ADMIN.to_owned(),
            password: PASSWORD.to_owned(),
        })
        .await;
    let text = scrape(metrics_addr).await;

    assert!(codes.contains(&Code::Ok), "{codes:?}");
    assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
    assert!(
        codes
            .iter()
            .all(|code| matches!(code, Code::Ok | Code::ResourceExhausted)),
        "{codes:?}"
    );
    assert!(after.is_ok(), "login after the burst: {after:?}");
    let shed = sample(&text, "requests_shed_total").expect("requests_shed_total");
    assert!(shed >= 1.0, "{text}");
    let logins = sample(
        &text,
        r#"grpc_server_handling_seconds_count{method="/school.auth.v1.AuthService/Login"}"#,
    )
    .expect("login latency histogram");
    assert!(logins >= 2.0, "{text}");
    let queue = sample(&text, "argon2_queue_depth").expect("argon2_queue_depth");
    assert_eq!(queue, 0.0, "no hash waits once the burst is over");
}

#[tokio::test]
async fn student_verifies_while_auth_down() {
    let Stack {
        dir: _dir,
        auth,
        student,
        forger: _forger,
    } = Stack::start().await;
    let admin = auth.login(ADMIN, PASSWORD).await;
    let auth_url = auth.url();

    auth.stop().await;
    let mut client = student.client().await;
    let created = client
        .create_student(with_token(
            CreateStudentRequest {
                name: "Dana Down".into(),
                email: "dana@example.org".into(),
                account_username: String::new(),
                grade_level: 2,
            },
            &admin,
        ))
        .await;
    let health = health_status(&student.url(), "school.student.v1.StudentService").await;
    let login = AuthServiceClient::connect(auth_url).await;

    assert!(
        created.is_ok(),
        "create with a token issued before: {created:?}"
    );
    assert_eq!(health, Ok(ServingStatus::Serving));
    assert!(login.is_err(), "auth-service is stopped");
}

#[tokio::test]
async fn oversized_request_rejected() {
    let stack = Stack::start().await;
    let admin = stack.token(ADMIN).await;
    let mut client = stack.student.client().await;
    let request = |name: String| {
        with_token(
            CreateStudentRequest {
                name,
                email: "olga@example.org".into(),
                account_username: String::new(),
                grade_level: 3,
            },
            &admin,
        )
    };

    let oversized = client.create_student(request("O".repeat(100 * 1024))).await;
    let normal = client.create_student(request("Olga Ordinary".into())).await;

    // tonic 0.14 rejects a message above the decoding limit with OUT_OF_RANGE.
    assert_eq!(
        oversized.expect_err("a 100 KiB name").code(),
        Code::OutOfRange
    );
    assert!(
        normal.is_ok(),
        "the same connection still works: {normal:?}"
    );
}

/// Opens a Login call whose request body never arrives, as a slow or hostile client would, and
/// returns the task that waits for its answer.
fn stalled_login(channel: tonic::transport::Channel) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut grpc = tonic::client::Grpc::new(channel);
        if grpc.ready().await.is_err() {
            return;
        }
        let never = tokio_stream::pending::<LoginRequest>();
        let path = http::uri::PathAndQuery::from_static("/school.auth.v1.AuthService/Login");
        let codec =
            tonic_prost::ProstCodec::<LoginRequest, school_proto::auth::v1::LoginResponse>::default(
            );
        let _ = grpc
            .client_streaming(tonic::Request::new(never), path, codec)
            .await;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_cannot_starve_others() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let server = bind_auth(&dir.path().join("auth"), "16").await;
    let addr = server.local_addr();
    let url = format!("http://{addr}");
    let (_stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    wait_until_serving(&url, "school.auth.v1.AuthService").await;

    // One client address opens more stalled calls than the whole limit.
    let attacker = tonic::transport::Endpoint::from_shared(url.clone())
        .expect("URL")
        .connect()
        .await
        .expect("connect");
    let stalled: Vec<_> = (0..24).map(|_| stalled_login(attacker.clone())).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Its own further calls are shed, but health checks still succeed.
    let shed = AuthServiceClient::new(attacker.clone())
        .login(LoginRequest {
            username: ADMIN.to_owned(),
            password: PASSWORD.to_owned(),
        })
        .await
        .expect_err("the stalling address has used its share");
    assert_eq!(shed.code(), Code::ResourceExhausted, "{shed:?}");
    let health = integration_tests::health_status(&url, "school.auth.v1.AuthService")
        .await
        .expect("health answers under load");
    assert_eq!(health, ServingStatus::Serving);

    // A client from another address is served.
    let other = tonic::transport::Endpoint::from_shared(url.clone())
        .expect("URL")
        .local_address(Some("127.0.0.2".parse().expect("loopback address")))
        .connect()
        .await
        .expect("connect from 127.0.0.2");
    AuthServiceClient::new(other)
        .login(LoginRequest {
            username: ADMIN.to_owned(),
            password: PASSWORD.to_owned(),
        })
        .await
        .expect("another client address logs in");

    for task in stalled {
        task.abort();
    }
}

#[tokio::test]
async fn login_fails_fast_while_auth_is_down() {
    // Reserve a loopback port and release it, so nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("reserve a port")
        .local_addr()
        .expect("address")
        .port();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("URL")
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy();

    let started = tokio::time::Instant::now();
    let status = AuthServiceClient::new(channel)
        .login(LoginRequest {
            username: ADMIN.to_owned(),
            password: PASSWORD.to_owned(),
        })
        .await
        .expect_err("nothing listens");

    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn server_honours_client_deadline() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let auth = RunningAuth::start(&dir.path().join("auth"), &[]).await;
    let channel = tonic::transport::Endpoint::from_shared(auth.url())
        .expect("URL")
        .connect()
        .await
        .expect("connect");

    // A Login whose body never arrives, with a 300 ms deadline in its grpc-timeout header and
    // no deadline enforced by the client itself: only the server can end it.
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let mut request = tonic::Request::new(tokio_stream::pending::<LoginRequest>());
    request.set_timeout(Duration::from_millis(300));
    let path = http::uri::PathAndQuery::from_static("/school.auth.v1.AuthService/Login");
    let codec =
        tonic_prost::ProstCodec::<LoginRequest, school_proto::auth::v1::LoginResponse>::default();
    let started = tokio::time::Instant::now();
    let outcome = tokio::time::timeout(
        Duration::from_secs(10),
        grpc.client_streaming(request, path, codec),
    )
    .await
    .expect("the server ends the call at its deadline");

    let status = outcome.expect_err("the call cannot succeed");
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}
