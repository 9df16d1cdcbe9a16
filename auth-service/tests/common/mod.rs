//! Starts an auth-service in-process on 127.0.0.1:0 with a given data directory.

#![allow(dead_code, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::Path;

use auth_service::{Config, Error, Users};
use clap::Parser as _;
use school_proto::auth::v1::LoginRequest;
use school_proto::auth::v1::auth_service_client::AuthServiceClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// Cheap Argon2 parameters so each test spends milliseconds, not seconds, on hashing.
pub const FAST_HASH_ARGS: [&str; 6] = [
    "--argon2-memory-kib",
    "64",
    "--argon2-iterations",
    "1",
    "--argon2-parallelism",
    "1",
];

/// Builds a configuration for `dir` on port 0 with fast hashing and the extra flags.
pub fn config(dir: &Path, extra: &[&str]) -> Config {
    let dir = dir.to_str().expect("temp dir path is UTF-8");
    let mut args = vec!["auth-service", "--listen", "127.0.0.1:0", "--data-dir", dir];
    args.extend_from_slice(&FAST_HASH_ARGS);
    args.extend_from_slice(extra);
    Config::try_parse_from(args).expect("test flags parse")
}

/// A server running in a background task.
pub struct TestServer {
    pub addr: SocketAddr,
    pub users: Users,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), Error>>,
}

impl TestServer {
    /// Binds and serves `config`, panicking if binding fails.
    pub async fn start(config: Config) -> Self {
        let server = auth_service::bind(config).await.expect("server binds");
        let addr = server.local_addr();
        let users = server.users();
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stop.await;
        }));
        Self {
            addr,
            users,
            shutdown,
            task,
        }
    }

    /// Connects a client. The listener is bound before `start` returns, so no retry is needed.
    pub async fn client(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel().await)
    }

    /// Connects a channel for the other services on the same port.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .expect("valid URI")
            .connect()
            .await
            .expect("connect to test server")
    }

    /// Logs in and returns the access token, panicking on failure.
    pub async fn token(&self, username: &str, password: &str) -> String {
        self.client()
            .await
            .login(login_request(username, password))
            .await
            .expect("login succeeds")
            .into_inner()
            .access_token
    }

    /// Stops the server and waits until it has flushed and released the data directory.
    pub async fn stop(self) {
        let _ = self.shutdown.send(());
        self.task
            .await
            .expect("server task joins")
            .expect("server stops cleanly");
    }
}

/// Builds a login request.
pub fn login_request(username: &str, password: &str) -> LoginRequest {
    LoginRequest {
        username: username.to_owned(),
        password: password.to_owned(),
    }
}
