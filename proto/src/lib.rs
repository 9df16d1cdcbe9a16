//! Generated gRPC types and stubs for the school services.
//!
//! The `.proto` files beside this crate are the contract; this crate only compiles them. Messages
//! that carry a password or a token have a `Debug` implementation that prints `[redacted]` in
//! place of the secret.

use std::fmt;

/// Types and stubs of the `school.auth.v1` package.
pub mod auth {
    /// Version 1 of the authentication API.
    #[allow(missing_docs)]
    pub mod v1 {
        tonic::include_proto!("school.auth.v1");
    }
}

/// Types and stubs of the `school.student.v1` package.
pub mod student {
    /// Version 1 of the student roster API.
    #[allow(missing_docs)]
    pub mod v1 {
        tonic::include_proto!("school.student.v1");
    }
}

/// The encoded `FileDescriptorSet` of every file this crate compiles, imports included, for
/// server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("school_descriptor");

const REDACTED: &str = "[redacted]";

impl fmt::Debug for auth::v1::LoginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .field("password", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for auth::v1::LoginResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginResponse")
            .field("access_token", &REDACTED)
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &REDACTED)
            .field("refresh_expires_in", &self.refresh_expires_in)
            .finish()
    }
}

impl fmt::Debug for auth::v1::RefreshTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshTokenRequest")
            .field("refresh_token", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for auth::v1::RefreshTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshTokenResponse")
            .field("access_token", &REDACTED)
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &REDACTED)
            .field("refresh_expires_in", &self.refresh_expires_in)
            .finish()
    }
}

impl fmt::Debug for auth::v1::ValidateTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidateTokenRequest")
            .field("token", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for auth::v1::IssueServiceTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssueServiceTokenRequest")
            .field("client_id", &self.client_id)
            .field("client_secret", &REDACTED)
            .field("audience", &self.audience)
            .finish()
    }
}

impl fmt::Debug for auth::v1::IssueServiceTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssueServiceTokenResponse")
            .field("access_token", &REDACTED)
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

impl fmt::Debug for auth::v1::CreateUserRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateUserRequest")
            .field("username", &self.username)
            .field("password", &REDACTED)
            .field("role", &self.role)
            .finish()
    }
}

impl fmt::Debug for auth::v1::ChangePasswordRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChangePasswordRequest")
            .field("old_password", &REDACTED)
            .field("new_password", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for auth::v1::ResetPasswordRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResetPasswordRequest")
            .field("username", &self.username)
            .field("new_password", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for auth::v1::CreateServiceAccountResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateServiceAccountResponse")
            .field("client_id", &self.client_id)
            .field("client_secret", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for auth::v1::RotateServiceAccountSecretResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateServiceAccountSecretResponse")
            .field("client_secret", &REDACTED)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::auth::v1::{
        ChangePasswordRequest, CreateServiceAccountResponse, IssueServiceTokenRequest,
        LoginRequest, LoginResponse, RotateServiceAccountSecretResponse, ValidateTokenRequest,
    };

    #[test]
    fn debug_output_redacts_secrets() {
        let login = LoginRequest {
            username: "alice".into(),
            password: "hunter2-secret".into(),
        };
        let issued = LoginResponse {
            access_token: "eyJ.secret.token".into(),
            token_type: "Bearer".into(),
            expires_in: 900,
            refresh_token: "refresh-secret.token".into(),
            refresh_expires_in: 604_800,
        };
        let validate = ValidateTokenRequest {
            token: "eyJ.secret.token".into(),
        };

        let service = IssueServiceTokenRequest {
            client_id: "svc-1".into(),
            client_secret: "hunter2-secret".into(),
            audience: "student-service".into(),
        };
        let change = ChangePasswordRequest {
            old_password: "hunter2-secret".into(),
            new_password: "hunter2-secret".into(),
        };
        let account = CreateServiceAccountResponse {
            client_id: "svc-1".into(),
            client_secret: "hunter2-secret".into(),
        };

        let rotated = RotateServiceAccountSecretResponse {
            client_secret: "hunter2-secret".into(),
        };

        let printed = format!(
            "{login:?} {issued:?} {validate:?} {service:?} {change:?} {account:?} {rotated:?}"
        );

        assert!(printed.contains("alice"));
        assert!(!printed.contains("hunter2-secret"));
        assert!(!printed.contains("secret.token"));
    }
}
