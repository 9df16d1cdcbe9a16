//! The account a [`crate::TokenSource`] logs in as: a user with a password, or a service account
//! with a client id and secret.

use std::fmt;

use zeroize::Zeroizing;

/// The credentials of one account. `Debug` leaves the password or secret out, and it is
/// zeroized when dropped.
#[derive(Clone)]
pub struct Credentials {
    username: String,
    password: Zeroizing<String>,
    /// The audience to request, for a service account; `None` for a user.
    audience: Option<String>,
}

impl Credentials {
    /// Creates credentials for the user account `username`, which log in with `Login`.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: Zeroizing::new(password.into()),
            audience: None,
        }
    }

    /// Creates credentials for a service account, which get their tokens from
    /// `IssueServiceToken` for `audience`, the service they will call (such as
    /// `student-service`). The audience must be one the account was created with.
    pub fn service_account(
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        audience: impl Into<String>,
    ) -> Self {
        Credentials {
            username: client_id.into(),
            password: Zeroizing::new(client_secret.into()),
            audience: Some(audience.into()),
        }
    }

    /// Returns the account name: the username, or the client id of a service account.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Returns the requested audience of a service account, or `None` for a user.
    pub fn audience(&self) -> Option<&str> {
        self.audience.as_deref()
    }

    pub(crate) fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"[redacted]")
            .field("audience", &self.audience)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_password() {
        let credentials = Credentials::new("reporting", "hunter2-secret");

        let printed = format!("{credentials:?}");

        assert!(printed.contains("reporting"));
        assert!(!printed.contains("hunter2-secret"));
    }

    #[test]
    fn service_account_debug_hides_secret() {
        let credentials =
            Credentials::service_account("svc-1", "hunter2-secret", "student-service");

        let printed = format!("{credentials:?}");

        assert!(printed.contains("svc-1"));
        assert!(printed.contains("student-service"));
        assert!(!printed.contains("hunter2-secret"));
    }
}
