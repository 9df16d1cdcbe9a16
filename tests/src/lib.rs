//! Test harness: starts auth-service and student-service in-process on loopback port 0, each on
//! its own temporary sled directory, and hands out real gRPC clients.
//!
//! Servers are stopped through their shutdown signal, the same path SIGTERM takes in the
//! binaries, so a restart test exercises the real flush-and-close sequence.

pub mod forge;
pub mod process;
pub mod walkthrough;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use auth_service::Role;
use clap::Parser as _;
use school_client::tls::ClientTls;
use school_proto::auth::v1::LoginRequest;
use school_proto::auth::v1::auth_service_client::AuthServiceClient;
use school_proto::auth::v1::user_service_client::UserServiceClient;
use school_proto::student::v1::student_service_client::StudentServiceClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The password every user created by [`Stack::start`] gets.
pub const PASSWORD: &str = "correct horse battery staple";

/// The users [`Stack::start`] creates: one per role, plus a second student.
pub const ADMIN: &str = "ada";
/// A teacher account.
pub const TEACHER: &str = "tom";
/// A student account that owns records in tests.
pub const STUDENT: &str = "sam";
/// A second student account, for checks that one student cannot read another's record.
pub const OTHER_STUDENT: &str = "sue";

/// auth-service flags that block a username or client id for 600 seconds after three failures,
/// in lockout mode so that no test races a short block. Addresses are allowed 1000 failures.
pub const LOCKOUT_AFTER_THREE: [&str; 8] = [
    "--login-throttle",
    "lockout",
    "--login-username-attempts",
    "3",
    "--login-address-attempts",
    "1000",
    "--login-max-delay-secs",
    "600",
];

/// auth-service flags that make each password hash take about half a second, on two hashing
/// threads, so that a test can act while a login is checking its password.
pub const SLOW_HASHING: [&str; 6] = [
    "--argon2-memory-kib",
    "262144",
    "--argon2-iterations",
    "3",
    "--hash-concurrency",
    "2",
];

/// Sleeps until the wall clock is `fraction` (0 to 1) of the way through a second, for tests
/// whose outcome depends on which whole second a token's `iat` falls in.
pub async fn sleep_until_fraction_of_second(fraction: f64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let into_second = f64::from(now.subsec_nanos()) / 1e9;
    let wait = (fraction - into_second).rem_euclid(1.0);
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
}

/// How long a test waits for a server to become ready before it fails.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// An auth-service running in this process.
pub struct RunningAuth {
    /// The bound loopback address.
    pub addr: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    users: auth_service::Users,
    guard: std::sync::Arc<school_guard::Guard>,
    /// How clients verify the server, when it speaks TLS.
    tls: Option<ClientTls>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), auth_service::Error>>,
}

impl RunningAuth {
    /// Starts auth-service on `127.0.0.1:0` with data in `data_dir` and extra command-line flags.
    pub async fn start(data_dir: &Path, extra_args: &[&str]) -> RunningAuth {
        Self::start_tls(data_dir, extra_args, None).await
    }

    /// Starts auth-service like [`RunningAuth::start`]; with `tls`, the flags must turn on TLS,
    /// and the harness's own clients connect over TLS with `tls`.
    pub async fn start_tls(
        data_dir: &Path,
        extra_args: &[&str],
        tls: Option<ClientTls>,
    ) -> RunningAuth {
        let mut args = vec![
            "auth-service".to_owned(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
        ];
        if !extra_args.contains(&"--listen") {
            args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        args.extend(extra_args.iter().map(|arg| (*arg).to_owned()));
        let server = retry_while_locked(|| {
            auth_service::bind(
                auth_service::Config::try_parse_from(&args).expect("auth-service flags"),
            )
        })
        .await
        .expect("auth-service binds");
        let addr = server.local_addr();
        let users = server.users();
        let guard = server.guard();
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = signal.await;
        }));

        let running = RunningAuth {
            addr,
            data_dir: data_dir.to_owned(),
            users,
            guard,
            tls,
            shutdown: Some(shutdown),
            task,
        };
        wait_until_serving_over(
            &running.url(),
            running.tls.as_ref(),
            "school.auth.v1.AuthService",
        )
        .await;
        running
    }

    /// Returns the URL of the server: `https://` when it speaks TLS, otherwise `http://`.
    pub fn url(&self) -> String {
        url_of(self.addr, self.tls.is_some())
    }

    /// Opens a channel to the server, over TLS when it speaks TLS.
    pub async fn channel(&self) -> Channel {
        connect(&self.url(), self.tls.as_ref())
            .await
            .expect("connect to auth-service")
    }

    /// Returns the user accounts of the running server.
    pub fn users(&self) -> &auth_service::Users {
        &self.users
    }

    /// Returns the guard in front of the server's services.
    pub fn guard(&self) -> &school_guard::Guard {
        &self.guard
    }

    /// Connects a new UserService client.
    pub async fn user_client(&self) -> UserServiceClient<Channel> {
        UserServiceClient::new(self.channel().await)
    }

    /// Connects a new AuthService client.
    pub async fn client(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel().await)
    }

    /// Logs in and returns the access token, failing the test if login fails.
    pub async fn login(&self, username: &str, password: &str) -> String {
        self.client()
            .await
            .login(LoginRequest {
                username: username.to_owned(),
                password: password.to_owned(),
            })
            .await
            .unwrap_or_else(|status| panic!("login as {username} failed: {status:?}"))
            .into_inner()
            .access_token
    }

    /// Stops the server gracefully and waits until its database is closed.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let result = (&mut self.task).await.expect("auth-service task");
        result.expect("auth-service stops cleanly");
    }
}

/// A student-service running in this process.
pub struct RunningStudent {
    /// The bound loopback address.
    pub addr: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    guard: std::sync::Arc<school_guard::Guard>,
    /// How clients verify the server, when it speaks TLS.
    tls: Option<ClientTls>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), student_service::Error>>,
}

impl RunningStudent {
    /// Starts student-service on `127.0.0.1:0` with data in `data_dir`, trusting the
    /// auth-service at `auth_url`, and waits until it reports SERVING.
    pub async fn start(data_dir: &Path, auth_url: &str, extra_args: &[&str]) -> RunningStudent {
        Self::start_tls(data_dir, auth_url, extra_args, None).await
    }

    /// Starts student-service like [`RunningStudent::start`]; with `tls`, the flags must turn
    /// on TLS, and the harness's own clients connect over TLS with `tls`.
    pub async fn start_tls(
        data_dir: &Path,
        auth_url: &str,
        extra_args: &[&str],
        tls: Option<ClientTls>,
    ) -> RunningStudent {
        let mut running = Self::start_unready(data_dir, auth_url, extra_args).await;
        running.tls = tls;
        wait_until_serving_over(
            &running.url(),
            running.tls.as_ref(),
            "school.student.v1.StudentService",
        )
        .await;
        running
    }

    /// Starts student-service without waiting for it to fetch keys.
    pub async fn start_unready(
        data_dir: &Path,
        auth_url: &str,
        extra_args: &[&str],
    ) -> RunningStudent {
        let mut args = vec![
            "student-service".to_owned(),
            "--listen".to_owned(),
            "127.0.0.1:0".to_owned(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--auth-url".to_owned(),
            auth_url.to_owned(),
        ];
        args.extend(extra_args.iter().map(|arg| (*arg).to_owned()));
        let server = retry_while_locked(|| {
            student_service::bind(
                student_service::Config::try_parse_from(&args).expect("student-service flags"),
            )
        })
        .await
        .expect("student-service binds");
        let addr = server.local_addr();
        let guard = server.guard();
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = signal.await;
        }));

        RunningStudent {
            addr,
            data_dir: data_dir.to_owned(),
            guard,
            tls: None,
            shutdown: Some(shutdown),
            task,
        }
    }

    /// Returns the URL of the server: `https://` when it speaks TLS, otherwise `http://`.
    pub fn url(&self) -> String {
        url_of(self.addr, self.tls.is_some())
    }

    /// Returns the guard in front of the server's services.
    pub fn guard(&self) -> &school_guard::Guard {
        &self.guard
    }

    /// Connects a new StudentService client.
    pub async fn client(&self) -> StudentServiceClient<Channel> {
        StudentServiceClient::new(self.channel().await)
    }

    /// Opens a channel to the server, for clients of other services it hosts.
    pub async fn channel(&self) -> Channel {
        connect(&self.url(), self.tls.as_ref())
            .await
            .expect("connect to student-service")
    }

    /// Stops the server and waits for it, accepting an error from its final flush, as after a
    /// disk filled up.
    pub async fn stop_allowing_error(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match (&mut self.task).await.expect("student-service task") {
            Ok(()) => {}
            Err(error) => println!("student-service stopped with an error: {error}"),
        }
    }

    /// Stops the server gracefully and waits until its database is closed.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let result = (&mut self.task).await.expect("student-service task");
        result.expect("student-service stops cleanly");
    }
}

/// Both services, with one user per role.
pub struct Stack {
    /// The temporary directory that contains both data directories.
    pub dir: tempfile::TempDir,
    /// The running auth-service.
    pub auth: RunningAuth,
    /// The running student-service.
    pub student: RunningStudent,
    /// A forger holding auth-service's own signing key, for tokens with chosen claims.
    pub forger: forge::Forger,
}

impl Stack {
    /// Starts both services on fresh data directories and creates the users [`ADMIN`],
    /// [`TEACHER`], [`STUDENT`] and [`OTHER_STUDENT`], all with [`PASSWORD`].
    pub async fn start() -> Stack {
        Self::start_with(&[], &[]).await
    }

    /// Starts both services with extra flags for each.
    pub async fn start_with(auth_args: &[&str], student_args: &[&str]) -> Stack {
        let accounts = [
            (ADMIN, PASSWORD, Role::Admin),
            (TEACHER, PASSWORD, Role::Teacher),
            (STUDENT, PASSWORD, Role::Student),
            (OTHER_STUDENT, PASSWORD, Role::Student),
        ];
        Self::start_with_accounts(auth_args, student_args, &accounts).await
    }

    /// Starts both services with extra flags for each and only the given accounts, each a
    /// username, password and role.
    pub async fn start_with_accounts(
        auth_args: &[&str],
        student_args: &[&str],
        accounts: &[(&str, &str, Role)],
    ) -> Stack {
        let dir = tempfile::tempdir().expect("temporary directory");
        let auth_dir = dir.path().join("auth");
        let auth = RunningAuth::start(&auth_dir, auth_args).await;
        for &(username, password, role) in accounts {
            auth.users()
                .create(username, password, role)
                .await
                .expect("create test user");
        }

        // Take the signing key while the database is closed, then start again on the same data.
        auth.stop().await;
        let forger = forge::Forger::from_auth_data_dir(&auth_dir).await;
        let auth = RunningAuth::start(&auth_dir, auth_args).await;

        let student =
            RunningStudent::start(&dir.path().join("student"), &auth.url(), student_args).await;
        Stack {
            dir,
            auth,
            student,
            forger,
        }
    }

    /// Logs in as `username` with [`PASSWORD`] and returns the access token.
    pub async fn token(&self, username: &str) -> String {
        self.auth.login(username, PASSWORD).await
    }

    /// Restarts both services on the same data directories with the same flags as
    /// [`Stack::start`].
    pub async fn restart(self) -> Stack {
        let Stack {
            dir,
            auth,
            student,
            forger,
        } = self;
        student.stop().await;
        auth.stop().await;
        let auth = RunningAuth::start(&dir.path().join("auth"), &[]).await;
        let student = RunningStudent::start(&dir.path().join("student"), &auth.url(), &[]).await;
        Stack {
            dir,
            auth,
            student,
            forger,
        }
    }
}

/// Runs `open` until it succeeds or fails for a reason other than a locked data directory.
///
/// A server stopped in this process releases its sled lock when the last of its tasks drops
/// its database handle, which can be a moment after `serve` returns.
pub async fn retry_while_locked<T, E, F, Fut>(mut open: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        match open().await {
            Err(error)
                if error.to_string().contains("lock") && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            result => return result,
        }
    }
}

/// Wraps `message` in a request that carries `authorization: Bearer <token>`.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}").parse().expect("ASCII token");
    request.metadata_mut().insert("authorization", value);
    request
}

/// Returns `https://addr` or `http://addr`.
fn url_of(addr: SocketAddr, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

/// Connects to `url`, over TLS with `tls`; an error names the URL and the cause.
pub async fn connect(url: &str, tls: Option<&ClientTls>) -> Result<Channel, String> {
    let endpoint = school_client::tls::endpoint(url, tls).map_err(|error| error.to_string())?;
    endpoint
        .connect()
        .await
        .map_err(|error| format!("connecting to {url} failed: {error:?}"))
}

/// Polls the health service at `url` until `service` reports SERVING, failing the test after
/// [`READY_TIMEOUT`].
pub async fn wait_until_serving(url: &str, service: &str) {
    wait_until_serving_over(url, None, service).await;
}

/// Like [`wait_until_serving`], over TLS with `tls`.
pub async fn wait_until_serving_over(url: &str, tls: Option<&ClientTls>, service: &str) {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut last = String::from("no answer yet");
    while tokio::time::Instant::now() < deadline {
        match health_status_over(url, tls, service).await {
            Ok(ServingStatus::Serving) => return,
            Ok(status) => last = format!("{status:?}"),
            Err(error) => last = error,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{service} at {url} did not become SERVING within {READY_TIMEOUT:?}: {last}");
}

/// Returns the health status that `service` at `url` reports.
pub async fn health_status(url: &str, service: &str) -> Result<ServingStatus, String> {
    health_status_over(url, None, service).await
}

/// Like [`health_status`], over TLS with `tls`.
pub async fn health_status_over(
    url: &str,
    tls: Option<&ClientTls>,
    service: &str,
) -> Result<ServingStatus, String> {
    let channel = connect(url, tls).await?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .map_err(|status| format!("{status:?}"))?;
    Ok(response.into_inner().status())
}
