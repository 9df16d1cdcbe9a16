//! student-service keeps the school's student roster in an embedded sled database and serves
//! it over gRPC (`school.student.v1.StudentService`).

pub mod config;
pub mod error;
pub mod page_token;
pub mod store;
pub mod validate;

pub use config::{Config, LogFormat};
pub use error::Error;
