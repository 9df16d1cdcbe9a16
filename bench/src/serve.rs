//! The server process: auth-service, the guarded student-service, the unguarded baseline and a
//! bare echo server, all on loopback port 0 in one process, plus the tokens the load needs.
//!
//! The driver starts this process (pinned to its own core when asked), reads the [`Setup`] it
//! writes, drives it, and closes its stdin to stop it.

use std::future::Future;
use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use integration_tests::forge::{self, Forger};
use integration_tests::{ADMIN, PASSWORD, Stack, TEACHER, with_token};
use school_guard::{Access, Identity};
use school_proto::student::v1::CreateStudentRequest;
use school_proto::student::v1::student_service_client::StudentServiceClient;
use school_proto::student::v1::student_service_server::StudentServiceServer;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use student_service::service::StudentApi;
use student_service::store::SledStore;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tower::{Layer, Service};

use crate::BenchError;

/// The addresses and tokens of a running server process.
#[derive(Serialize, Deserialize)]
pub struct Setup {
    /// auth-service.
    pub auth: SocketAddr,
    /// student-service behind its guard layer.
    pub guarded: SocketAddr,
    /// student-service without the guard layer.
    pub baseline: SocketAddr,
    /// A tonic server with only the health service and no layer.
    pub echo: SocketAddr,
    /// The id of the student record in the guarded store.
    pub guarded_student_id: String,
    /// The id of the student record in the baseline store.
    pub baseline_student_id: String,
    /// Admin tokens issued by Login, one per connection.
    pub admin_tokens: Vec<String>,
    /// A teacher token issued by Login, which the policy denies DeleteStudent.
    pub teacher_token: String,
    /// Distinct valid admin tokens, each used once per cycle.
    pub cold_tokens: Vec<String>,
    /// Malformed, expired, unknown-key and wrong-issuer tokens.
    pub hostile_tokens: Vec<String>,
    /// Well-formed tokens with a valid key id and claims but a wrong signature.
    pub bad_signature_tokens: Vec<String>,
    /// The username and password that Login accepts.
    pub login: (String, String),
}

/// How many tokens of each generated kind the server process makes.
pub struct TokenCounts {
    /// Distinct valid tokens for the cold scenario.
    pub cold: usize,
    /// Admin tokens issued by Login, one per connection of the load.
    pub admin: usize,
}

/// Starts every server, writes the [`Setup`] to `out` as JSON, prints `ready` and serves until
/// stdin closes.
pub async fn serve(out: &Path, counts: TokenCounts) -> Result<(), BenchError> {
    let stack = Stack::start().await;
    let baseline_dir = tempfile::tempdir().map_err(BenchError::io("create baseline directory"))?;
    let baseline = start_baseline(baseline_dir.path()).await?;
    let echo = start_echo().await?;

    let mut admin_tokens = Vec::with_capacity(counts.admin);
    for _ in 0..counts.admin.max(1) {
        admin_tokens.push(stack.token(ADMIN).await);
    }
    let teacher_token = stack.token(TEACHER).await;
    let guarded_student_id = create_student(&stack.student.url(), &admin_tokens[0]).await?;
    let baseline_student_id =
        create_student(&format!("http://{baseline}"), &admin_tokens[0]).await?;

    let forger = &stack.forger;
    let setup = Setup {
        auth: stack.auth.addr,
        guarded: stack.student.addr,
        baseline,
        echo,
        guarded_student_id,
        baseline_student_id,
        admin_tokens,
        teacher_token,
        cold_tokens: (0..counts.cold)
            .map(|index| forger.sign(&admin_claims(&format!("cold-{index}"))))
            .collect(),
        hostile_tokens: hostile_tokens(forger),
        bad_signature_tokens: bad_signature_tokens(forger, 256),
        login: (ADMIN.to_owned(), PASSWORD.to_owned()),
    };
    let text = serde_json::to_vec(&setup).map_err(BenchError::Json)?;
    std::fs::write(out, text).map_err(BenchError::io("write setup file"))?;
    println!("ready");

    // The driver keeps the write end of stdin open, so EOF means it finished or died.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::stdin().read_to_end(&mut sink)
    })
    .await;
    drop(stack);
    Ok(())
}

/// Valid admin claims for one hour, with `jti` set so that each token is distinct.
fn admin_claims(jti: &str) -> Value {
    let mut claims = forge::claims(ADMIN, "admin");
    claims["exp"] = json!(forge::now() + 3600);
    claims["jti"] = json!(jti);
    claims
}

/// Tokens that the guard rejects before any signature check, in equal numbers of each kind.
fn hostile_tokens(forger: &Forger) -> Vec<String> {
    let stranger = Forger::random();
    let mut tokens = Vec::new();
    for index in 0..16 {
        let jti = format!("hostile-{index}");
        tokens.push(format!("not-a-token-{index}"));

        let mut expired = admin_claims(&jti);
        expired["exp"] = json!(forge::now() - 3600);
        tokens.push(forger.sign(&expired));

        tokens.push(stranger.sign(&admin_claims(&jti)));

        let mut foreign = admin_claims(&jti);
        foreign["iss"] = json!("someone-else");
        tokens.push(forger.sign(&foreign));
    }
    tokens
}

/// Tokens whose header and claims are valid but whose signature belongs to another payload.
fn bad_signature_tokens(forger: &Forger, count: usize) -> Vec<String> {
    (0..count)
        .filter_map(|index| {
            let genuine = forger.sign(&admin_claims(&format!("bad-{index}")));
            let donor = forger.sign(&admin_claims(&format!("donor-{index}")));
            let (signing_input, _) = genuine.rsplit_once('.')?;
            let (_, signature) = donor.rsplit_once('.')?;
            Some(format!("{signing_input}.{signature}"))
        })
        .collect()
}

async fn create_student(url: &str, token: &str) -> Result<String, BenchError> {
    let mut client = StudentServiceClient::connect(url.to_owned())
        .await
        .map_err(BenchError::Connect)?;
    let request = CreateStudentRequest {
        name: "Bench Student".into(),
        email: "bench@example.org".into(),
        account_username: String::new(),
        grade_level: 9,
    };
    let response = client
        .create_student(with_token(request, token))
        .await
        .map_err(BenchError::Setup)?;
    response
        .into_inner()
        .student
        .map(|student| student.id)
        .ok_or(BenchError::Missing("student in CreateStudent response"))
}

/// Starts student-service's handlers over a fresh store, behind [`FixedCallerLayer`] in place
/// of the guard, and returns the bound address.
async fn start_baseline(dir: &Path) -> Result<SocketAddr, BenchError> {
    let store = Arc::new(SledStore::open(dir).map_err(BenchError::Baseline)?);
    let students = StudentServiceServer::new(StudentApi::new(store));
    let (listener, addr) = bind_loopback().await?;
    tokio::spawn(
        Server::builder()
            .layer(FixedCallerLayer)
            .add_service(students)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ok(addr)
}

/// Starts a tonic server with only the health service, the cheapest unary call tonic serves.
async fn start_echo() -> Result<SocketAddr, BenchError> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let (listener, addr) = bind_loopback().await?;
    tokio::spawn(
        Server::builder()
            .add_service(health)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ok(addr)
}

async fn bind_loopback() -> Result<(TcpListener, SocketAddr), BenchError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(BenchError::io("bind loopback listener"))?;
    let addr = listener
        .local_addr()
        .map_err(BenchError::io("read listener address"))?;
    Ok((listener, addr))
}

/// Gives every request the identity and access an admin would get from the guard, without
/// reading the `authorization` header, so the handlers do the same work as behind the guard.
#[derive(Clone)]
struct FixedCallerLayer;

impl<S> Layer<S> for FixedCallerLayer {
    type Service = FixedCaller<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FixedCaller { inner }
    }
}

#[derive(Clone)]
struct FixedCaller<S> {
    inner: S,
}

impl<S, Body> Service<http::Request<Body>> for FixedCaller<S>
where
    S: Service<http::Request<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    Body: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The clone takes the place of the service that poll_ready made ready, as tower requires.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        request.extensions_mut().insert(Identity {
            subject: ADMIN.to_owned(),
            role: "admin".to_owned(),
            token_id: String::new(),
            expires_at: i64::MAX,
        });
        request.extensions_mut().insert(Access::Full);
        Box::pin(async move { inner.call(request).await })
    }
}
