//! Changes to existing accounts: roles, status, deletion and passwords, with the rule that the
//! last enabled admin stays, and service accounts.
//!
//! Disabling, deleting or changing the role of a user also revokes the user's sessions when
//! the [`Users`] handle has a revoker, as every handle from `server::open_users` does.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use zeroize::Zeroizing;

use crate::clock::unix_now;
use crate::error::Error;
use crate::password::Password;
use crate::role::Role;
use crate::store::{ServiceAccountRecord, UserRecord};
use crate::users::{UserSummary, Users, validate_new_username, validate_username};

/// The maximum number of audiences of one service account.
pub const MAX_AUDIENCES: usize = 16;

/// The longest accepted audience, in bytes.
pub const MAX_AUDIENCE_BYTES: usize = 64;

/// Random bytes in a client secret: 256 bits, written as 43 base64url characters.
const SECRET_BYTES: usize = 32;

/// Prefix of every client id, so that logs tell service accounts from users at a glance.
pub const CLIENT_ID_PREFIX: &str = "svc-";

/// The credentials of a new service account. `Debug` leaves the secret out.
pub struct NewServiceAccount {
    /// The client id, also the `sub` claim of the account's tokens.
    pub client_id: String,
    /// The client secret, shown once; only its hash is stored.
    pub client_secret: Password,
}

impl std::fmt::Debug for NewServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewServiceAccount")
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

impl Users {
    /// Returns one user, failing with [`Error::UserNotFound`].
    pub async fn get(&self, username: &str) -> Result<UserSummary, Error> {
        validate_username(username)?;
        self.store
            .get(username)
            .await?
            .map(UserSummary::from)
            .ok_or_else(|| Error::UserNotFound(username.to_owned()))
    }

    /// Returns at most `limit` users whose names sort after `after`, ordered by username bytes.
    pub async fn list_page(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UserSummary>, Error> {
        let users = self.store.users_after(after, limit).await?;
        Ok(users.into_iter().map(UserSummary::from).collect())
    }

    /// Sets the role copied into the user's future tokens, and revokes the user's sessions if
    /// the role changed. Fails with [`Error::LastAdmin`] when it would demote the last enabled
    /// admin.
    pub async fn update_role(&self, username: &str, role: Role) -> Result<UserSummary, Error> {
        validate_username(username)?;
        let _admin_changes = self.admin_changes.lock().await;
        let other_admins = self.other_enabled_admins(username).await?;
        let changed = std::sync::atomic::AtomicBool::new(false);
        let updated = self
            .store
            .update_user(username, &|user| {
                if role != Role::Admin && is_enabled_admin(user) && other_admins == 0 {
                    return Err(Error::LastAdmin(user.username.clone()));
                }
                changed.store(user.role != role, std::sync::atomic::Ordering::Relaxed);
                user.role = role;
                Ok(())
            })
            .await?;
        if changed.load(std::sync::atomic::Ordering::Relaxed) {
            self.revoke_user_sessions(username).await?;
        }
        Ok(UserSummary::from(updated))
    }

    /// Disables or re-enables login for a user, failing with [`Error::UserNotFound`], and with
    /// [`Error::LastAdmin`] when it would disable the last enabled admin. Disabling revokes the
    /// user's sessions.
    pub async fn set_disabled(&self, username: &str, disabled: bool) -> Result<UserSummary, Error> {
        validate_username(username)?;
        let _admin_changes = self.admin_changes.lock().await;
        let other_admins = self.other_enabled_admins(username).await?;
        let updated = self
            .store
            .update_user(username, &|user| {
                if disabled && is_enabled_admin(user) && other_admins == 0 {
                    return Err(Error::LastAdmin(user.username.clone()));
                }
                user.disabled = disabled;
                Ok(())
            })
            .await?;
        if disabled {
            self.revoke_user_sessions(username).await?;
        }
        Ok(UserSummary::from(updated))
    }

    /// Deletes a user and revokes their sessions, failing with [`Error::UserNotFound`], and with
    /// [`Error::LastAdmin`] for the last enabled admin.
    pub async fn delete(&self, username: &str) -> Result<(), Error> {
        validate_username(username)?;
        let _admin_changes = self.admin_changes.lock().await;
        let user = self
            .store
            .get(username)
            .await?
            .ok_or_else(|| Error::UserNotFound(username.to_owned()))?;
        if is_enabled_admin(&user) && self.other_enabled_admins(username).await? == 0 {
            return Err(Error::LastAdmin(username.to_owned()));
        }
        self.store.delete_user(username).await?;
        self.revoke_user_sessions(username).await
    }

    /// Changes a user's own password after checking the current one, and revokes every session
    /// of the user, the caller's own included, so a stolen token or refresh token stops working.
    ///
    /// A wrong current password fails with [`Error::InvalidCredentials`]; the new one must pass
    /// [`Password::validate_new`].
    pub async fn change_password(
        &self,
        username: &str,
        current: Password,
        new: Password,
    ) -> Result<(), Error> {
        validate_username(username)?;
        current.validate()?;
        new.validate_new("new_password")?;

        let user = self.store.get(username).await?;
        let stored_hash = user.as_ref().map(|user| user.password_hash.as_str());
        if !self.hasher.verify(current, stored_hash).await? || user.is_none() {
            return Err(Error::InvalidCredentials);
        }
        self.set_password_hash(username, new).await?;
        self.revoke_user_sessions(username).await
    }

    /// Sets a new password for any user without the old one, as an admin does, and revokes
    /// every session of the user.
    pub async fn reset_password(&self, username: &str, new: Password) -> Result<(), Error> {
        validate_username(username)?;
        new.validate_new("new_password")?;
        self.set_password_hash(username, new).await?;
        self.revoke_user_sessions(username).await
    }

    async fn set_password_hash(&self, username: &str, password: Password) -> Result<(), Error> {
        let hash = self.hasher.hash(password).await?;
        self.store
            .update_user(username, &|user| {
                user.password_hash.clone_from(&hash);
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Counts the enabled admins other than `username`.
    async fn other_enabled_admins(&self, username: &str) -> Result<usize, Error> {
        let users = self.store.list().await?;
        Ok(users
            .iter()
            .filter(|user| user.username != username && is_enabled_admin(user))
            .count())
    }

    /// Creates a service account that may request tokens for `audiences`, and returns its
    /// client id and a freshly generated secret. Only the secret's hash is stored.
    ///
    /// The name follows the username rules and must be unique among service accounts
    /// ([`Error::ServiceAccountExists`]). There must be 1 to [`MAX_AUDIENCES`] audiences, each
    /// of 1 to [`MAX_AUDIENCE_BYTES`] bytes without whitespace.
    pub async fn create_service_account(
        &self,
        name: &str,
        audiences: Vec<String>,
    ) -> Result<NewServiceAccount, Error> {
        validate_new_username(name).map_err(|_| Error::InvalidArgument {
            field: "name",
            reason: "must be 1 to 64 bytes of ASCII letters, digits, '.', '_', '-' and '@'",
        })?;
        validate_audiences(&audiences)?;

        let (secret, secret_hash) = self.new_client_secret().await?;

        let _admin_changes = self.admin_changes.lock().await;
        let existing = self.store.service_accounts().await?;
        if existing.iter().any(|account| account.name == name) {
            return Err(Error::ServiceAccountExists(name.to_owned()));
        }
        let client_id = format!("{CLIENT_ID_PREFIX}{}", uuid::Uuid::new_v4().simple());
        self.store
            .insert_service_account(&ServiceAccountRecord {
                client_id: client_id.clone(),
                name: name.to_owned(),
                secret_hash,
                audiences,
                created_at: unix_now(),
            })
            .await?;

        Ok(NewServiceAccount {
            client_id,
            client_secret: secret,
        })
    }

    /// Returns every service account, ordered by client id.
    pub async fn service_accounts(&self) -> Result<Vec<ServiceAccountRecord>, Error> {
        self.store.service_accounts().await
    }

    /// Gives a service account a new secret and returns it. The old secret stops working, and
    /// every token issued to the account until now is revoked. An unknown client id fails with
    /// [`Error::ServiceAccountNotFound`].
    pub async fn rotate_service_account_secret(&self, client_id: &str) -> Result<Password, Error> {
        validate_client_id(client_id)?;
        let (secret, secret_hash) = self.new_client_secret().await?;
        self.store
            .set_service_account_secret(client_id, &secret_hash)
            .await?;
        self.revoke_user_sessions(client_id).await?;
        Ok(secret)
    }

    /// Deletes a service account and revokes every token issued to it. An unknown client id
    /// fails with [`Error::ServiceAccountNotFound`].
    pub async fn delete_service_account(&self, client_id: &str) -> Result<(), Error> {
        validate_client_id(client_id)?;
        self.store.delete_service_account(client_id).await?;
        self.revoke_user_sessions(client_id).await
    }

    /// Generates a client secret of [`SECRET_BYTES`] random bytes and hashes it.
    async fn new_client_secret(&self) -> Result<(Password, String), Error> {
        let mut random = Zeroizing::new([0u8; SECRET_BYTES]);
        aws_lc_rs::rand::fill(random.as_mut())
            .map_err(|_| Error::Crypto("generate random bytes"))?;
        let secret = Password::new(URL_SAFE_NO_PAD.encode(random.as_ref()));
        let secret_hash = self.hasher.hash(secret.clone()).await?;
        Ok((secret, secret_hash))
    }

    /// Checks a service account's secret and that it may use `audience`, and returns the
    /// account.
    ///
    /// An unknown client id and a wrong secret both fail with [`Error::InvalidCredentials`]
    /// after one Argon2 verification. An audience the account was not created with fails with
    /// [`Error::AudienceNotAllowed`].
    pub async fn authenticate_service(
        &self,
        client_id: &str,
        secret: Password,
        audience: &str,
    ) -> Result<ServiceAccountRecord, Error> {
        validate_client_id(client_id)?;
        secret.validate().map_err(|_| Error::InvalidArgument {
            field: "client_secret",
            reason: "must be 1 to 1024 bytes",
        })?;

        let account = self.store.service_account(client_id).await?;
        let stored_hash = account.as_ref().map(|account| account.secret_hash.as_str());
        let matches = self.hasher.verify(secret, stored_hash).await?;
        let account = match account {
            Some(account) if matches => account,
            Some(_) | None => {
                tracing::info!(client.id = ?client_id, outcome = "failure", "service login");
                return Err(Error::InvalidCredentials);
            }
        };
        if !account.audiences.iter().any(|allowed| allowed == audience) {
            tracing::info!(
                client.id = ?client_id,
                audience,
                outcome = "failure",
                "service login for an audience the account may not use"
            );
            return Err(Error::AudienceNotAllowed {
                audience: audience.to_owned(),
            });
        }
        Ok(account)
    }
}

/// Checks the length of a client id received from a caller.
fn validate_client_id(client_id: &str) -> Result<(), Error> {
    if client_id.is_empty() || client_id.len() > MAX_AUDIENCE_BYTES {
        return Err(Error::InvalidArgument {
            field: "client_id",
            reason: "must be 1 to 64 bytes",
        });
    }
    Ok(())
}

fn is_enabled_admin(user: &UserRecord) -> bool {
    user.role == Role::Admin && !user.disabled
}

fn validate_audiences(audiences: &[String]) -> Result<(), Error> {
    if audiences.is_empty() || audiences.len() > MAX_AUDIENCES {
        return Err(Error::InvalidArgument {
            field: "audiences",
            reason: "must list 1 to 16 audiences",
        });
    }
    let valid = |audience: &String| {
        !audience.is_empty()
            && audience.len() <= MAX_AUDIENCE_BYTES
            && !audience
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
    };
    if !audiences.iter().all(valid) {
        return Err(Error::InvalidArgument {
            field: "audiences",
            reason: "must each be 1 to 64 bytes without whitespace",
        });
    }
    let distinct: std::collections::HashSet<&String> = audiences.iter().collect();
    if distinct.len() != audiences.len() {
        return Err(Error::InvalidArgument {
            field: "audiences",
            reason: "must not repeat an audience",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::tests::users;

    const PASSWORD: &str = "long enough password";

    #[tokio::test]
    async fn last_admin_cannot_be_removed() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let users = users(dir.path()).await?;
        users.create("root", PASSWORD, Role::Admin).await?;

        let demoted = users.update_role("root", Role::Teacher).await;
        let disabled = users.set_disabled("root", true).await;
        let deleted = users.delete("root").await;

        assert!(matches!(demoted, Err(Error::LastAdmin(_))), "{demoted:?}");
        assert!(matches!(disabled, Err(Error::LastAdmin(_))), "{disabled:?}");
        assert!(matches!(deleted, Err(Error::LastAdmin(_))), "{deleted:?}");
        assert_eq!(users.get("root").await?.role, Role::Admin);
        Ok(())
    }

    #[tokio::test]
    async fn second_admin_can_be_removed() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let users = users(dir.path()).await?;
        users.create("root", PASSWORD, Role::Admin).await?;
        users.create("deputy", PASSWORD, Role::Admin).await?;

        users.update_role("deputy", Role::Teacher).await?;
        let root_disabled = users.set_disabled("root", true).await;

        assert!(matches!(root_disabled, Err(Error::LastAdmin(_))));
        users.update_role("deputy", Role::Admin).await?;
        users.set_disabled("root", true).await?;
        users.delete("root").await?;
        assert!(matches!(
            users.get("root").await,
            Err(Error::UserNotFound(_))
        ));
        Ok(())
    }

    #[tokio::test]
    async fn change_password_needs_current_one() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let users = users(dir.path()).await?;
        users.create("alice", PASSWORD, Role::Student).await?;
        let new = "another long password";

        let wrong = users
            .change_password(
                "alice",
                Password::new("wrong password".into()),
                Password::new(new.into()),
            )
            .await;
        let common = users
            .change_password(
                "alice",
                Password::new(PASSWORD.into()),
                Password::new("iloveyou".into()),
            )
            .await;
        users
            .change_password(
                "alice",
                Password::new(PASSWORD.into()),
                Password::new(new.into()),
            )
            .await?;

        assert!(matches!(wrong, Err(Error::InvalidCredentials)));
        assert!(matches!(
            common,
            Err(Error::InvalidArgument {
                field: "new_password",
                ..
            })
        ));
        assert!(
            users
                .authenticate("alice", Password::new(new.into()))
                .await
                .is_ok()
        );
        Ok(())
    }

    #[tokio::test]
    async fn repeated_audiences_are_rejected() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let users = users(dir.path()).await?;

        let created = users
            .create_service_account("reporting", vec!["x".into(), "x".into()])
            .await;

        assert!(
            matches!(
                created,
                Err(Error::InvalidArgument {
                    field: "audiences",
                    ..
                })
            ),
            "a repeated audience was accepted"
        );
        Ok(())
    }

    #[tokio::test]
    async fn service_secret_and_audience_are_checked() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let users = users(dir.path()).await?;
        let created = users
            .create_service_account("reporting", vec!["student-service".into()])
            .await?;
        let id = created.client_id.as_str();

        let wrong = users
            .authenticate_service(id, Password::new("x".repeat(43)), "student-service")
            .await;
        let foreign = users
            .authenticate_service(id, created.client_secret.clone(), "auth-service")
            .await;
        let allowed = users
            .authenticate_service(id, created.client_secret.clone(), "student-service")
            .await?;
        let again = users
            .create_service_account("reporting", vec!["student-service".into()])
            .await;

        assert!(id.starts_with(CLIENT_ID_PREFIX));
        assert_eq!(created.client_secret.expose().len(), 43);
        assert!(matches!(wrong, Err(Error::InvalidCredentials)));
        assert!(matches!(foreign, Err(Error::AudienceNotAllowed { .. })));
        assert_eq!(allowed.name, "reporting");
        assert_ne!(allowed.secret_hash, created.client_secret.expose());
        assert!(matches!(again, Err(Error::ServiceAccountExists(_))));
        Ok(())
    }
}
