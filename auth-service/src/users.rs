//! User accounts: creation, listing and password checks. Changes to existing accounts are in
//! [`crate::accounts`].

use std::fmt;
use std::sync::Arc;

use crate::clock::unix_now;
use crate::error::Error;
use crate::password::{Password, PasswordHasher};
use crate::role::Role;
use crate::sessions::Revoker;
use crate::store::{AccountStore, UserRecord};

/// The longest accepted username, in bytes of UTF-8.
pub const MAX_USERNAME_BYTES: usize = 64;

/// A user as listed by [`Users::list`], without the password hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    /// The account name.
    pub username: String,
    /// The role copied into issued tokens.
    pub role: Role,
    /// Whether login is rejected.
    pub disabled: bool,
    /// Creation time in seconds since the Unix epoch.
    pub created_at: i64,
}

impl From<UserRecord> for UserSummary {
    fn from(user: UserRecord) -> Self {
        UserSummary {
            username: user.username,
            role: user.role,
            disabled: user.disabled,
            created_at: user.created_at,
        }
    }
}

/// A cloneable handle to the user accounts, shared by the gRPC service, the bootstrap step,
/// the `user` subcommands and tests.
#[derive(Clone)]
pub struct Users {
    pub(crate) store: Arc<dyn AccountStore>,
    pub(crate) hasher: PasswordHasher,
    /// Held by every change that can affect who is an enabled admin, so that the last-admin
    /// check and the change cannot interleave with another such change.
    pub(crate) admin_changes: Arc<tokio::sync::Mutex<()>>,
    /// Revokes a user's sessions when the user is disabled, deleted or changes role.
    pub(crate) revoker: Option<Revoker>,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Users")
            .field("hasher", &self.hasher)
            .finish_non_exhaustive()
    }
}

impl Users {
    /// Creates a handle over a store, hashing passwords with `hasher`.
    pub fn new(store: Arc<dyn AccountStore>, hasher: PasswordHasher) -> Self {
        Self {
            store,
            hasher,
            admin_changes: Arc::new(tokio::sync::Mutex::new(())),
            revoker: None,
        }
    }

    /// Returns the password hasher, whose queue depth the metrics report.
    pub fn hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    /// Revokes a user's sessions through `revoker` whenever the user is disabled, deleted or
    /// given another role. Without it those changes apply to new logins only.
    pub fn with_revoker(mut self, revoker: Revoker) -> Self {
        self.revoker = Some(revoker);
        self
    }

    /// Revokes every access and refresh token of `username` issued until now, if this handle
    /// has a revoker.
    pub async fn revoke_user_sessions(&self, username: &str) -> Result<(), Error> {
        match &self.revoker {
            Some(revoker) => revoker.revoke_user_sessions(username).await,
            None => Ok(()),
        }
    }

    /// Creates an enabled user, failing with [`Error::UserExists`] if the name is taken.
    ///
    /// The username must be 1 to 64 bytes of ASCII letters, digits, `.`, `_`, `-` and `@`, and the
    /// password must pass [`Password::validate_new`]; otherwise the error is
    /// [`Error::InvalidArgument`].
    #[tracing::instrument(skip_all, fields(user.name = ?username, user.role = %role))]
    pub async fn create(&self, username: &str, password: &str, role: Role) -> Result<(), Error> {
        validate_new_username(username)?;
        // Client ids are token subjects too; a user named like one would share its revocations.
        if username.starts_with(crate::accounts::CLIENT_ID_PREFIX) {
            return Err(Error::InvalidArgument {
                field: "username",
                reason: "must not start with \"svc-\", which marks service account client ids",
            });
        }
        let password = Password::new(password.to_owned());
        password.validate_new("password")?;

        let password_hash = self.hasher.hash(password).await?;
        let user = UserRecord {
            username: username.to_owned(),
            password_hash,
            role,
            disabled: false,
            created_at: unix_now(),
        };
        self.store.insert_new(&user).await?;

        tracing::info!("user created");
        Ok(())
    }

    /// Returns every user, ordered by username bytes.
    pub async fn list(&self) -> Result<Vec<UserSummary>, Error> {
        let users = self.store.list().await?;
        Ok(users.into_iter().map(UserSummary::from).collect())
    }

    /// Creates the user as admin unless a user with that name exists; returns whether it was
    /// created. An existing user keeps its password, role and status.
    pub async fn ensure_admin(&self, username: &str, password: &Password) -> Result<bool, Error> {
        if self.store.get(username).await?.is_some() {
            return Ok(false);
        }
        match self.create(username, password.expose(), Role::Admin).await {
            Ok(()) => Ok(true),
            // Another writer created it between the check and the insert.
            Err(Error::UserExists(_)) => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// Checks a password and returns the user's role.
    ///
    /// An unknown user, a wrong password and a disabled account all fail with
    /// [`Error::InvalidCredentials`] after one Argon2 verification each, so neither the error
    /// nor the time taken reveals which usernames exist. The log records the real outcome.
    pub async fn authenticate(&self, username: &str, password: Password) -> Result<Role, Error> {
        validate_username(username)?;
        password.validate()?;

        let user = self.store.get(username).await?;
        let stored_hash = user.as_ref().map(|user| user.password_hash.as_str());
        let stale_hash = stored_hash
            .filter(|hash| self.hasher.needs_rehash(hash))
            .map(str::to_owned);
        let retained = stale_hash.as_ref().map(|_| password.clone());
        let password_matches = self.hasher.verify(password, stored_hash).await?;

        let outcome = match user {
            None => Err("unknown_user"),
            Some(_) if !password_matches => Err("wrong_password"),
            Some(user) if user.disabled => Err("disabled"),
            Some(user) => Ok(user.role),
        };
        match outcome {
            Ok(role) => {
                tracing::info!(user.name = ?username, outcome = "success", "login");
                if let (Some(old_hash), Some(password)) = (stale_hash, retained) {
                    self.upgrade_hash(username, &old_hash, password).await;
                }
                Ok(role)
            }
            Err(reason) => {
                tracing::info!(user.name = ?username, outcome = "failure", reason, "login");
                Err(Error::InvalidCredentials)
            }
        }
    }

    /// Replaces `old_hash` with a hash under the current parameters, unless the password was
    /// changed in the meantime. A failure is logged and leaves the old hash, which still
    /// verifies, so the login that triggered it succeeds anyway.
    async fn upgrade_hash(&self, username: &str, old_hash: &str, password: Password) {
        let upgraded = async {
            let new_hash = self.hasher.hash(password).await?;
            self.store
                .update_user(username, &|user| {
                    if user.password_hash == old_hash {
                        user.password_hash.clone_from(&new_hash);
                    }
                    Ok(())
                })
                .await
        };
        match upgraded.await {
            Ok(_) => {
                tracing::info!(user.name = ?username, "password hash upgraded to the current parameters")
            }
            Err(error) => tracing::warn!(
                user.name = ?username,
                error = %error.report(),
                "upgrading the password hash failed; the old hash stays"
            ),
        }
    }
}

/// Checks the length limits of the proto contract: 1 to [`MAX_USERNAME_BYTES`] bytes.
pub fn validate_username(username: &str) -> Result<(), Error> {
    if username.is_empty() || username.len() > MAX_USERNAME_BYTES {
        return Err(Error::InvalidArgument {
            field: "username",
            reason: "must be 1 to 64 bytes",
        });
    }
    Ok(())
}

/// Checks a name for a new account: the length limits and the characters.
///
/// New names are limited to ASCII letters, digits, `.`, `_`, `-` and `@`. That keeps out
/// look-alike, invisible and bidirectional-override characters, which would let two names read
/// the same in logs and listings, and matches what student-service accepts as an account link.
pub(crate) fn validate_new_username(username: &str) -> Result<(), Error> {
    validate_username(username)?;
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if !username.chars().all(allowed) {
        return Err(Error::InvalidArgument {
            field: "username",
            reason: "may contain only ASCII letters, digits, '.', '_', '-' and '@'",
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::password::HashParams;
    use crate::store::SledStore;

    /// Opens a store in `dir` with the cheapest Argon2 parameters, for fast tests.
    pub(crate) async fn users(dir: &std::path::Path) -> Result<Users, Error> {
        let store = SledStore::open(dir).await?;
        let params = HashParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let hasher = PasswordHasher::new(params, 2).await?;
        Ok(Users::new(Arc::new(store), hasher))
    }

    #[tokio::test]
    async fn usernames_like_client_ids_are_rejected() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let users = users(dir.path()).await?;

        let created = users.create("svc-1234", "s3cret-pass", Role::Teacher).await;

        assert!(
            matches!(
                created,
                Err(Error::InvalidArgument {
                    field: "username",
                    ..
                })
            ),
            "{created:?}"
        );
        users.create("svcs", "s3cret-pass", Role::Teacher).await?;
        Ok(())
    }

    #[tokio::test]
    async fn create_then_authenticate() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let users = users(dir.path()).await?;

        users.create("alice", "s3cret-pass", Role::Teacher).await?;
        let role = users
            .authenticate("alice", Password::new("s3cret-pass".into()))
            .await?;

        assert_eq!(role, Role::Teacher);
        Ok(())
    }

    #[tokio::test]
    async fn authenticate_failures_look_alike() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let users = users(dir.path()).await?;
        users.create("alice", "s3cret-pass", Role::Student).await?;
        users.create("bob", "s3cret-pass", Role::Student).await?;
        users.set_disabled("bob", true).await?;

        let wrong_password = users
            .authenticate("alice", Password::new("nope-nope".into()))
            .await;
        let unknown_user = users
            .authenticate("carol", Password::new("s3cret-pass".into()))
            .await;
        let disabled = users
            .authenticate("bob", Password::new("s3cret-pass".into()))
            .await;

        assert!(matches!(wrong_password, Err(Error::InvalidCredentials)));
        assert!(matches!(unknown_user, Err(Error::InvalidCredentials)));
        assert!(matches!(disabled, Err(Error::InvalidCredentials)));
        Ok(())
    }

    #[tokio::test]
    async fn reenabled_user_can_log_in() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let users = users(dir.path()).await?;
        users.create("alice", "s3cret-pass", Role::Teacher).await?;

        users.set_disabled("alice", true).await?;
        users.set_disabled("alice", false).await?;

        assert!(
            users
                .authenticate("alice", Password::new("s3cret-pass".into()))
                .await
                .is_ok()
        );
        Ok(())
    }

    #[tokio::test]
    async fn create_rejects_bad_usernames() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let users = users(dir.path()).await?;

        let cases = [
            "",
            "two words",
            "tab\there",
            "line\nbreak",
            "ad\u{e1}",
            "admin\u{202e}",
            "zero\u{200b}width",
            "a/b",
            &"x".repeat(65),
        ];
        for name in cases {
            let created = users.create(name, "pw-long-enough", Role::Student).await;
            assert!(
                matches!(
                    created,
                    Err(Error::InvalidArgument {
                        field: "username",
                        ..
                    })
                ),
                "username {name:?} was accepted"
            );
        }
        assert!(
            users
                .create(&"x".repeat(64), "pw-long-enough", Role::Student)
                .await
                .is_ok()
        );
        assert!(
            users
                .create("ada.l@school-1_x", "pw-long-enough", Role::Student)
                .await
                .is_ok()
        );
        Ok(())
    }

    #[tokio::test]
    async fn ensure_admin_keeps_existing_user() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let users = users(dir.path()).await?;
        users.create("root", "original-pw", Role::Teacher).await?;

        let created = users
            .ensure_admin("root", &Password::new("other-pw".into()))
            .await?;

        assert!(!created);
        let role = users
            .authenticate("root", Password::new("original-pw".into()))
            .await?;
        assert_eq!(role, Role::Teacher);
        Ok(())
    }

    #[tokio::test]
    async fn login_upgrades_a_weaker_hash() -> Result<(), Box<dyn std::error::Error>> {
        use crate::store::UserStore as _;

        let dir = tempfile::tempdir()?;
        let store = Arc::new(SledStore::open(dir.path()).await?);
        let weak = HashParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let strong = HashParams {
            memory_kib: 128,
            iterations: 2,
            parallelism: 1,
        };
        let old_users = Users::new(store.clone(), PasswordHasher::new(weak, 1).await?);
        old_users
            .create("alice", "s3cret-passphrase", Role::Teacher)
            .await?;
        let users = Users::new(store.clone(), PasswordHasher::new(strong, 1).await?);

        let wrong = users
            .authenticate("alice", Password::new("wrong-passphrase".into()))
            .await;
        let after_failure = store.get("alice").await?.map(|user| user.password_hash);
        users
            .authenticate("alice", Password::new("s3cret-passphrase".into()))
            .await?;
        let after_success = store.get("alice").await?.map(|user| user.password_hash);

        assert!(matches!(wrong, Err(Error::InvalidCredentials)));
        assert!(after_failure.is_some_and(|hash| hash.contains("m=64,t=1,p=1")));
        assert!(
            after_success
                .as_deref()
                .is_some_and(|hash| hash.contains("$argon2id$v=19$m=128,t=2,p=1$")),
            "{after_success:?}"
        );
        users
            .authenticate("alice", Password::new("s3cret-passphrase".into()))
            .await?;
        Ok(())
    }

    #[tokio::test]
    async fn ensure_admin_creates_missing_user() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let users = users(dir.path()).await?;

        let created = users
            .ensure_admin("root", &Password::new("pw-long-enough".into()))
            .await?;

        assert!(created);
        let listed = users.list().await?;
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].username, "root");
        assert_eq!(listed[0].role, Role::Admin);
        Ok(())
    }
}
