//! The auth service: stores users, checks their passwords and issues Ed25519-signed JWTs over
//! gRPC (`school.auth.v1.AuthService`), with health checks and server reflection.
//!
//! [`bind`] opens storage and binds the listener, so tests can bind port 0 and read the real
//! address before calling [`BoundServer::serve`].

pub mod accounts;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod keys;
pub mod operations;
pub mod password;
pub mod role;
pub mod server;
pub mod service;
pub mod sessions;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod tls;
pub mod tokens;
pub mod user_service;
pub mod users;

pub use config::Config;
pub use error::Error;
pub use role::Role;
pub use server::{BoundServer, bind};
pub use users::Users;
