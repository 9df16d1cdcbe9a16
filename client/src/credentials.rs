//! The username and password a [`crate::TokenSource`] logs in with.

use std::fmt;

use zeroize::Zeroizing;

/// A username and password. `Debug` leaves the password out, and the password is zeroized when
/// dropped.
#[derive(Clone)]
pub struct Credentials {
    username: String,
    password: Zeroizing<String>,
}

impl Credentials {
    /// Creates credentials for the account `username`.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: Zeroizing::new(password.into()),
        }
    }

    /// Returns the account name.
    pub fn username(&self) -> &str {
        &self.username
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
}
