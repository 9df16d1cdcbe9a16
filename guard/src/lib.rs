//! Bearer-token authentication and method-level authorization for tonic servers.
pub mod claims;
pub mod keys;
pub mod verify;
