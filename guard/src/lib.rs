//! Bearer-token authentication and method-level authorization for tonic servers.
//!
//! The crate is shared by both services, so that auth-service's `ValidateToken` and every
//! protected service verify tokens with the same code:
//!
//! - [`verify::TokenVerifier`] checks an access token against a [`keys::KeySet`];
//! - [`remote::KeyFetcher`] keeps that key set in step with auth-service;
//! - [`policy::Policy`] maps each gRPC method to the roles that may call it;
//! - [`GuardLayer`] runs both steps in front of a tonic server: authentication turns the
//!   `authorization` metadata into an [`Identity`], then authorization asks the policy whether
//!   that identity may call the method. A handler is reached only when both succeed.

pub mod bearer;
pub mod cache;
pub mod claims;
pub mod identity;
pub mod keys;
pub mod layer;
pub mod policy;
pub mod rejection;
pub mod reload;
pub mod remote;
pub mod revocation;
pub mod threads;
pub mod verify;

pub use identity::{Access, Grant, Identity};
pub use layer::{Authorized, Guard, GuardLayer, GuardService, ReloadCounts, ShadowCounts};
pub use policy::Policy;
