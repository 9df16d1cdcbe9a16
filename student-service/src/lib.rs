//! student-service keeps the school's student roster in an embedded sled database and serves
//! it over gRPC (`school.student.v1.StudentService`).
//!
//! Every StudentService call passes through the `school-guard` layer, which verifies the
//! caller's access token locally with keys fetched from auth-service and checks the caller's
//! role against the authorization policy before a handler runs.
//!
//! [`bind`] prepares a server from a [`Config`] and binds its listener, so tests can use port 0
//! and read the port from [`BoundServer::local_addr`]; [`BoundServer::serve`] runs it until a
//! shutdown future completes.

pub mod config;
pub mod error;
pub mod operations;
pub mod page_token;
pub mod server;
pub mod service;
pub mod signal;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod validate;

pub use config::{Config, LogFormat};
pub use error::Error;
pub use server::{BoundServer, bind};
