//! Runs student-service in-process on loopback and calls it over gRPC.
//!
//! A fake auth-service publishes the public half of an Ed25519 key generated per test, and the
//! tests sign their own access tokens with the private half.

// Helpers outside `#[test]` functions panic on set-up failures too, which clippy's test
// exemption does not cover.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use clap::Parser;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use school_guard::claims::Claims;
use school_guard::keys::key_id_for;
use school_proto::auth::v1::auth_service_server::{AuthService, AuthServiceServer};
use school_proto::auth::v1::{
    IssueServiceTokenRequest, IssueServiceTokenResponse, ListPublicKeysRequest,
    ListPublicKeysResponse, LoginRequest, LoginResponse, LogoutRequest, LogoutResponse, PublicKey,
    RefreshTokenRequest, RefreshTokenResponse, ValidateTokenRequest, ValidateTokenResponse,
    WatchRevocationsRequest, WatchRevocationsResponse,
};
use school_proto::student::v1::student_service_client::StudentServiceClient;
use school_proto::student::v1::{
    CreateStudentRequest, DeleteStudentRequest, GetStudentRequest, ListStudentsRequest, Student,
};
use student_service::{BoundServer, Config, Error};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

const STUDENT_SERVICE: &str = "school.student.v1.StudentService";
const WAIT_LIMIT: Duration = Duration::from_secs(10);

/// Ed25519 signing key of a test, with the key id auth-service would publish for it.
struct SigningKey {
    encoding: EncodingKey,
    key_id: String,
    public_key: Vec<u8>,
}

impl SigningKey {
    fn generate() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let public_key = pair.public_key().as_ref().to_vec();
        SigningKey {
            encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
            key_id: key_id_for(&public_key),
            public_key,
        }
    }

    fn sign(&self, claims: &Claims) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key_id.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    fn token(&self, subject: &str, role: &str) -> String {
        self.sign(&claims(subject, role))
    }
}

fn now() -> i64 {
    let elapsed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(elapsed.as_secs()).unwrap()
}

fn claims(subject: &str, role: &str) -> Claims {
    let issued = now();
    Claims {
        sub: subject.to_owned(),
        role: role.to_owned(),
        iss: "school-auth".to_owned(),
        aud: "school".into(),
        iat: issued,
        nbf: issued,
        exp: issued + 600,
        jti: format!("{subject}-{issued}"),
    }
}

/// auth-service stand-in that serves only ListPublicKeys, and only once `open` is true.
struct FakeAuth {
    keys: Vec<PublicKey>,
    open: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl AuthService for FakeAuth {
    async fn login(&self, _: Request<LoginRequest>) -> Result<Response<LoginResponse>, Status> {
        Err(Status::unimplemented("not part of the fake"))
    }

    async fn validate_token(
        &self,
        _: Request<ValidateTokenRequest>,
    ) -> Result<Response<ValidateTokenResponse>, Status> {
        Err(Status::unimplemented("not part of the fake"))
    }

    async fn issue_service_token(
        &self,
        _: Request<IssueServiceTokenRequest>,
    ) -> Result<Response<IssueServiceTokenResponse>, Status> {
        Err(Status::unimplemented("not part of the fake"))
    }

    async fn refresh_token(
        &self,
        _: Request<RefreshTokenRequest>,
    ) -> Result<Response<RefreshTokenResponse>, Status> {
        Err(Status::unimplemented("not part of the fake"))
    }

    async fn logout(&self, _: Request<LogoutRequest>) -> Result<Response<LogoutResponse>, Status> {
        Err(Status::unimplemented("not part of the fake"))
    }

    type WatchRevocationsStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<WatchRevocationsResponse, Status>> + Send>,
    >;

    /// Sends an empty snapshot, then keeps the stream open without revocations.
    async fn watch_revocations(
        &self,
        _: Request<WatchRevocationsRequest>,
    ) -> Result<Response<Self::WatchRevocationsStream>, Status> {
        let snapshot = WatchRevocationsResponse {
            revocations: Vec::new(),
            snapshot_complete: true,
            sent_at_unix_ms: 0,
        };
        let stream = tokio_stream::once(Ok(snapshot)).chain(tokio_stream::pending());
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_public_keys(
        &self,
        _: Request<ListPublicKeysRequest>,
    ) -> Result<Response<ListPublicKeysResponse>, Status> {
        if !*self.open.borrow() {
            return Err(Status::unavailable("fake auth-service is not ready"));
        }
        Ok(Response::new(ListPublicKeysResponse {
            keys: self.keys.clone(),
            jwks_json: String::new(),
        }))
    }
}

async fn spawn_fake_auth(key: &SigningKey, open: watch::Receiver<bool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = FakeAuth {
        keys: vec![PublicKey {
            key_id: key.key_id.clone(),
            algorithm: "EdDSA".to_owned(),
            curve: "Ed25519".to_owned(),
            public_key: key.public_key.clone(),
        }],
        open,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthServiceServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

fn config(data_dir: &std::path::Path, auth: SocketAddr) -> Config {
    Config::try_parse_from([
        "student-service",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--auth-url",
        &format!("http://{auth}"),
        "--shutdown-grace-secs",
        "1",
    ])
    .unwrap()
}

/// A running student-service with its fake auth-service and data directory.
struct TestApp {
    addr: SocketAddr,
    key: SigningKey,
    auth_open: watch::Sender<bool>,
    auth_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    serving: Option<JoinHandle<Result<(), Error>>>,
    data_dir: tempfile::TempDir,
}

impl TestApp {
    /// Starts the service; auth-service publishes keys only once `open_auth` is called.
    async fn start_closed() -> TestApp {
        init_test_logs();
        let key = SigningKey::generate();
        let (auth_open, open) = watch::channel(false);
        let auth_addr = spawn_fake_auth(&key, open).await;
        let data_dir = tempfile::tempdir().unwrap();

        let server = student_service::bind(config(data_dir.path(), auth_addr))
            .await
            .unwrap();
        let (addr, stop, serving) = run(server);

        TestApp {
            addr,
            key,
            auth_open,
            auth_addr,
            stop: Some(stop),
            serving: Some(serving),
            data_dir,
        }
    }

    /// Starts the service and waits until it reports SERVING.
    async fn start() -> TestApp {
        let app = TestApp::start_closed().await;
        app.open_auth();
        app.wait_for_status(STUDENT_SERVICE, ServingStatus::Serving)
            .await;
        app
    }

    fn open_auth(&self) {
        self.auth_open.send_replace(true);
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    async fn students(&self) -> StudentServiceClient<Channel> {
        StudentServiceClient::new(self.channel().await)
    }

    async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    async fn health_status(&self, service: &str) -> ServingStatus {
        let response = self
            .health()
            .await
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap();
        status_of(response.get_ref())
    }

    /// Watches the health of `service` until it reports `expected`.
    async fn wait_for_status(&self, service: &str, expected: ServingStatus) {
        let mut updates = self
            .health()
            .await
            .watch(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .unwrap()
            .into_inner();
        let reached = tokio::time::timeout(WAIT_LIMIT, async {
            while let Some(update) = updates.next().await {
                if status_of(&update.unwrap()) == expected {
                    return;
                }
            }
            panic!("health stream ended before {expected:?}");
        })
        .await;
        assert!(
            reached.is_ok(),
            "{service} not {expected:?} after {WAIT_LIMIT:?}"
        );
    }

    /// Stops the service gracefully and returns its data directory.
    async fn stop(
        mut self,
    ) -> (
        tempfile::TempDir,
        SigningKey,
        watch::Sender<bool>,
        SocketAddr,
    ) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).unwrap();
        }
        if let Some(serving) = self.serving.take() {
            tokio::time::timeout(WAIT_LIMIT, serving)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
        }
        (self.data_dir, self.key, self.auth_open, self.auth_addr)
    }
}

/// Sends logs to the test's captured output, which is shown only when the test fails.
fn init_test_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_test_writer()
        .try_init();
}

fn run(
    server: BoundServer,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    JoinHandle<Result<(), Error>>,
) {
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    (addr, stop, serving)
}

fn status_of(response: &HealthCheckResponse) -> ServingStatus {
    ServingStatus::try_from(response.status).unwrap()
}

fn authorized<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", value);
    request
}

fn new_student(name: &str, account: &str) -> CreateStudentRequest {
    CreateStudentRequest {
        name: name.to_owned(),
        email: format!(
            "{}@school.test",
            name.trim().to_lowercase().replace(' ', ".")
        ),
        account_username: account.to_owned(),
        grade_level: 8,
    }
}

async fn create(app: &TestApp, request: CreateStudentRequest) -> Student {
    let token = app.key.token("principal", "admin");
    app.students()
        .await
        .create_student(authorized(request, &token))
        .await
        .unwrap()
        .into_inner()
        .student
        .unwrap()
}

async fn get(app: &TestApp, id: &str, subject: &str, role: &str) -> Result<Student, Status> {
    let token = app.key.token(subject, role);
    let request = GetStudentRequest { id: id.to_owned() };
    let response = app
        .students()
        .await
        .get_student(authorized(request, &token))
        .await?;
    Ok(response.into_inner().student.unwrap())
}

async fn list_page(
    app: &TestApp,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<String>, String), Status> {
    let token = app.key.token("principal", "admin");
    let request = ListStudentsRequest {
        page_size,
        page_token: page_token.to_owned(),
    };
    let response = app
        .students()
        .await
        .list_students(authorized(request, &token))
        .await?
        .into_inner();
    let ids = response.students.into_iter().map(|s| s.id).collect();
    Ok((ids, response.next_page_token))
}

async fn delete(app: &TestApp, id: &str, role: &str) -> Result<(), Status> {
    let token = app.key.token("someone", role);
    let request = DeleteStudentRequest { id: id.to_owned() };
    app.students()
        .await
        .delete_student(authorized(request, &token))
        .await?;
    Ok(())
}

#[tokio::test]
async fn health_waits_for_keys() {
    let app = TestApp::start_closed().await;

    assert_eq!(app.health_status("").await, ServingStatus::NotServing);
    assert_eq!(
        app.health_status(STUDENT_SERVICE).await,
        ServingStatus::NotServing
    );

    app.open_auth();
    app.wait_for_status("", ServingStatus::Serving).await;
    app.wait_for_status(STUDENT_SERVICE, ServingStatus::Serving)
        .await;
    app.stop().await;
}

#[tokio::test]
async fn create_then_get_as_admin() {
    let app = TestApp::start().await;

    let created = create(&app, new_student("  Ada Lovelace ", "ada")).await;
    let fetched = get(&app, &created.id, "principal", "admin").await.unwrap();

    assert!(uuid::Uuid::parse_str(&created.id).is_ok(), "{}", created.id);
    assert_eq!(created.name, "Ada Lovelace");
    assert_eq!(created.email, "ada.lovelace@school.test");
    assert_eq!(created.account_username, "ada");
    assert_eq!(created.grade_level, 8);
    assert_eq!(created.created_by, "principal");
    assert!(created.create_time.is_some());
    assert_eq!(fetched, created);
    app.stop().await;
}

#[tokio::test]
async fn missing_token_is_unauthenticated() {
    let app = TestApp::start().await;

    let status = app
        .students()
        .await
        .list_students(ListStudentsRequest::default())
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::Unauthenticated);
    app.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated() {
    let app = TestApp::start().await;
    let expired = Claims {
        exp: now() - 3600,
        ..claims("principal", "admin")
    };
    let wrong_audience = Claims {
        aud: "elsewhere".into(),
        ..claims("principal", "admin")
    };
    let foreign_key = SigningKey::generate().token("principal", "admin");
    let tokens = [
        ("expired", app.key.sign(&expired)),
        ("wrong audience", app.key.sign(&wrong_audience)),
        ("unknown key", foreign_key),
        ("garbage", "not.a.jwt".to_owned()),
    ];

    for (case, token) in tokens {
        let status = app
            .students()
            .await
            .list_students(authorized(ListStudentsRequest::default(), &token))
            .await
            .unwrap_err();

        assert_eq!(status.code(), Code::Unauthenticated, "{case}");
    }
    app.stop().await;
}

#[tokio::test]
async fn create_requires_admin() {
    let app = TestApp::start().await;

    for role in ["teacher", "student", "janitor"] {
        let token = app.key.token("someone", role);
        let status = app
            .students()
            .await
            .create_student(authorized(new_student("Eve", ""), &token))
            .await
            .unwrap_err();

        assert_eq!(status.code(), Code::PermissionDenied, "role {role}");
    }
    let (ids, _) = list_page(&app, 0, "").await.unwrap();
    assert!(ids.is_empty(), "{ids:?}");
    app.stop().await;
}

#[tokio::test]
async fn delete_requires_admin() {
    let app = TestApp::start().await;
    let ada = create(&app, new_student("Ada", "ada")).await;

    for role in ["teacher", "student"] {
        let status = delete(&app, &ada.id, role).await.unwrap_err();

        assert_eq!(status.code(), Code::PermissionDenied, "role {role}");
    }
    assert!(get(&app, &ada.id, "principal", "admin").await.is_ok());
    app.stop().await;
}

#[tokio::test]
async fn student_reads_only_own_record() {
    let app = TestApp::start().await;
    let ada = create(&app, new_student("Ada", "ada")).await;
    let bob = create(&app, new_student("Bob", "bob")).await;
    let unlinked = create(&app, new_student("Cy", "")).await;
    let missing = uuid::Uuid::new_v4().to_string();

    let own = get(&app, &ada.id, "ada", "student").await;
    let other = get(&app, &bob.id, "ada", "student").await;
    let no_owner = get(&app, &unlinked.id, "ada", "student").await;
    let absent = get(&app, &missing, "ada", "student").await;

    assert_eq!(own.unwrap(), ada);
    assert_eq!(other.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(no_owner.unwrap_err().code(), Code::PermissionDenied);
    assert_eq!(absent.unwrap_err().code(), Code::PermissionDenied);
    app.stop().await;
}

#[tokio::test]
async fn teacher_reads_any_record() {
    let app = TestApp::start().await;
    let ada = create(&app, new_student("Ada", "ada")).await;

    let fetched = get(&app, &ada.id, "mr.smith", "teacher").await;
    let missing = get(
        &app,
        &uuid::Uuid::new_v4().to_string(),
        "mr.smith",
        "teacher",
    )
    .await;

    assert_eq!(fetched.unwrap(), ada);
    assert_eq!(missing.unwrap_err().code(), Code::NotFound);
    app.stop().await;
}

#[tokio::test]
async fn student_cannot_list() {
    let app = TestApp::start().await;
    let token = app.key.token("ada", "student");

    let status = app
        .students()
        .await
        .list_students(authorized(ListStudentsRequest::default(), &token))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::PermissionDenied);
    app.stop().await;
}

#[tokio::test]
async fn invalid_fields_are_named() {
    let app = TestApp::start().await;
    let token = app.key.token("principal", "admin");
    let cases = [
        (
            "name",
            CreateStudentRequest {
                name: " ".to_owned(),
                ..new_student("Ada", "")
            },
        ),
        (
            "email",
            CreateStudentRequest {
                email: "ada".to_owned(),
                ..new_student("Ada", "")
            },
        ),
        ("account_username", new_student("Ada", "ada lovelace")),
        (
            "grade_level",
            CreateStudentRequest {
                grade_level: 14,
                ..new_student("Ada", "")
            },
        ),
    ];

    for (field, request) in cases {
        let status = app
            .students()
            .await
            .create_student(authorized(request, &token))
            .await
            .unwrap_err();

        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    let bad_id = get(&app, "not-a-uuid", "principal", "admin")
        .await
        .unwrap_err();
    assert_eq!(bad_id.code(), Code::InvalidArgument);
    app.stop().await;
}

#[tokio::test]
async fn account_links_to_one_student() {
    let app = TestApp::start().await;
    let token = app.key.token("principal", "admin");
    create(&app, new_student("Ada", "ada")).await;

    let status = app
        .students()
        .await
        .create_student(authorized(new_student("Ada Again", "ada"), &token))
        .await
        .unwrap_err();

    assert_eq!(status.code(), Code::AlreadyExists);
    app.stop().await;
}

#[tokio::test]
async fn delete_then_get_not_found() {
    let app = TestApp::start().await;
    let ada = create(&app, new_student("Ada", "ada")).await;

    delete(&app, &ada.id, "admin").await.unwrap();
    let after = get(&app, &ada.id, "principal", "admin").await;
    let again = delete(&app, &ada.id, "admin").await;

    assert_eq!(after.unwrap_err().code(), Code::NotFound);
    assert_eq!(again.unwrap_err().code(), Code::NotFound);
    app.stop().await;
}

#[tokio::test]
async fn list_pages_through_all() {
    let app = TestApp::start().await;
    let mut expected = Vec::new();
    for i in 0..5 {
        expected.push(
            create(&app, new_student(&format!("Student {i}"), ""))
                .await
                .id,
        );
    }
    expected.sort();

    let (first, token1) = list_page(&app, 2, "").await.unwrap();
    let (second, token2) = list_page(&app, 2, &token1).await.unwrap();
    let (third, token3) = list_page(&app, 2, &token2).await.unwrap();
    let (everything, no_token) = list_page(&app, 0, "").await.unwrap();

    assert_eq!(first, expected[0..2]);
    assert_eq!(second, expected[2..4]);
    assert_eq!(third, expected[4..]);
    assert!(!token1.is_empty());
    assert!(!token2.is_empty());
    assert_eq!(token3, "");
    assert_eq!(everything, expected);
    assert_eq!(no_token, "");
    app.stop().await;
}

#[tokio::test]
async fn list_rejects_bad_paging() {
    let app = TestApp::start().await;

    let negative = list_page(&app, -1, "").await.unwrap_err();
    let bad_token = list_page(&app, 10, "%%%").await.unwrap_err();

    assert_eq!(negative.code(), Code::InvalidArgument);
    assert!(
        negative.message().contains("page_size"),
        "{}",
        negative.message()
    );
    assert_eq!(bad_token.code(), Code::InvalidArgument);
    assert!(
        bad_token.message().contains("page_token"),
        "{}",
        bad_token.message()
    );
    app.stop().await;
}

#[tokio::test]
async fn records_survive_restart() {
    let app = TestApp::start().await;
    let ada = create(&app, new_student("Ada", "ada")).await;
    let (data_dir, key, auth_open, auth_addr) = app.stop().await;

    let server = student_service::bind(config(data_dir.path(), auth_addr))
        .await
        .unwrap();
    let (addr, stop, serving) = run(server);
    let app = TestApp {
        addr,
        key,
        auth_open,
        auth_addr,
        stop: Some(stop),
        serving: Some(serving),
        data_dir,
    };
    app.wait_for_status(STUDENT_SERVICE, ServingStatus::Serving)
        .await;

    let fetched = get(&app, &ada.id, "principal", "admin").await;

    assert_eq!(fetched.unwrap(), ada);
    app.stop().await;
}

#[tokio::test]
async fn second_instance_reports_locked_dir() {
    let app = TestApp::start().await;

    let second = student_service::bind(config(app.data_dir.path(), app.auth_addr)).await;

    let Err(error) = second else {
        panic!("second instance bound the same data directory");
    };
    assert!(matches!(error, Error::DataDirLocked { .. }), "{error:?}");
    let message = error.to_string();
    let dir = app.data_dir.path().display().to_string();
    assert!(message.contains(&dir), "{message}");
    app.stop().await;
}

/// The services reflection should list. AuthService is in the same descriptor set but must not
/// appear.
fn advertised_services() -> BTreeSet<String> {
    [STUDENT_SERVICE, "grpc.health.v1.Health"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn reflection_lists_own_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let app = TestApp::start_closed().await;
    let mut client = ServerReflectionClient::new(app.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };

    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();

    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    assert_eq!(names, advertised_services());
    app.stop().await;
}

#[tokio::test]
async fn reflection_v1alpha_lists_own_services() {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;

    let app = TestApp::start_closed().await;
    let mut client = ServerReflectionClient::new(app.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };

    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();

    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response {response:?}");
    };
    let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    assert_eq!(names, advertised_services());
    app.stop().await;
}

#[test]
fn binary_rejects_bad_flag_with_64() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_student-service"))
        .args(["--leeway-secs", "1000"])
        .env_remove("STUDENT_LEEWAY_SECS")
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--leeway-secs"), "{stderr}");
}

#[test]
fn binary_rejects_unparsable_flag_with_64() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_student-service"))
        .args(["--listen", "nowhere"])
        .output()
        .unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--listen"), "{stderr}");
}

#[tokio::test]
async fn binary_exits_on_locked_dir() {
    let app = TestApp::start().await;

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_student-service"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(app.data_dir.path())
        .output()
        .await
        .unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is locked by another process"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    app.stop().await;
}

#[tokio::test]
async fn shutdown_finishes_despite_open_watch() {
    let app = TestApp::start().await;
    let mut watch = app
        .health()
        .await
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(status_of(&first), ServingStatus::Serving);

    let stopping = tokio::spawn(app.stop());
    let update = watch.next().await.unwrap().unwrap();

    assert_eq!(status_of(&update), ServingStatus::NotServing);
    stopping.await.unwrap();
}
