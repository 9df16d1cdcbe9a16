//! Storage for account management: changing and deleting users, listing them page by page, and
//! service accounts. The sled implementation lives here too, beside the interface.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::sled_backend::{corrupt, decode_user, encode_user, storage};
use super::{SledStore, UserRecord, UserStore};
use crate::error::Error;

/// The record layout version of service accounts.
const SERVICE_ACCOUNT_VERSION: u32 = 1;

const SERVICE_ACCOUNTS_TREE: &str = "service_accounts";

/// One service account: an internal caller that authenticates with a client id and secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccountRecord {
    /// The client id, which is also the `sub` claim of the account's tokens.
    pub client_id: String,
    /// The name people recognise the account by, unique among service accounts.
    pub name: String,
    /// The Argon2id hash of the client secret in PHC string form.
    pub secret_hash: String,
    /// The audiences the account may request tokens for.
    pub audiences: Vec<String>,
    /// Creation time in seconds since the Unix epoch.
    pub created_at: i64,
}

impl fmt::Debug for ServiceAccountRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceAccountRecord")
            .field("client_id", &self.client_id)
            .field("name", &self.name)
            .field("secret_hash", &"[redacted]")
            .field("audiences", &self.audiences)
            .field("created_at", &self.created_at)
            .finish()
    }
}

#[derive(Serialize, Deserialize)]
struct ServiceAccountRecordV1 {
    version: u32,
    #[serde(flatten)]
    account: ServiceAccountRecord,
}

/// A change to apply to one stored user. It may fail, which leaves the record unchanged.
pub type UserChange<'a> = &'a (dyn Fn(&mut UserRecord) -> Result<(), Error> + Send + Sync);

/// Persistent accounts beyond what login needs. Every write returns only after it is durable.
#[tonic::async_trait]
pub trait AccountStore: UserStore {
    /// Applies `change` to the user and returns the updated record, failing with
    /// [`Error::UserNotFound`] for an unknown name. `change` may run more than once when another
    /// writer changes the record at the same time.
    async fn update_user(
        &self,
        username: &str,
        change: UserChange<'_>,
    ) -> Result<UserRecord, Error>;

    /// Deletes the user, failing with [`Error::UserNotFound`] for an unknown name.
    async fn delete_user(&self, username: &str) -> Result<(), Error>;

    /// Returns at most `limit` users whose names sort after `after` (from the first when
    /// `None`), ordered by username bytes.
    async fn users_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, Error>;

    /// Stores a new service account, failing with [`Error::ServiceAccountExists`] if its client
    /// id is taken.
    async fn insert_service_account(&self, account: &ServiceAccountRecord) -> Result<(), Error>;

    /// Returns the service account with this client id, if any.
    async fn service_account(&self, client_id: &str)
    -> Result<Option<ServiceAccountRecord>, Error>;

    /// Returns every service account, ordered by client id.
    async fn service_accounts(&self) -> Result<Vec<ServiceAccountRecord>, Error>;

    /// Replaces the secret hash of a service account, failing with
    /// [`Error::ServiceAccountNotFound`] for an unknown client id.
    async fn set_service_account_secret(
        &self,
        client_id: &str,
        secret_hash: &str,
    ) -> Result<(), Error>;

    /// Deletes a service account, failing with [`Error::ServiceAccountNotFound`] for an unknown
    /// client id.
    async fn delete_service_account(&self, client_id: &str) -> Result<(), Error>;
}

#[tonic::async_trait]
impl AccountStore for SledStore {
    async fn update_user(
        &self,
        username: &str,
        change: UserChange<'_>,
    ) -> Result<UserRecord, Error> {
        let users = self.users_tree();
        // Compare-and-swap retries when another writer changed the record in between.
        let updated = loop {
            let Some(current) = users.get(username).map_err(storage("read user"))? else {
                return Err(Error::UserNotFound(username.to_owned()));
            };
            let mut user = decode_user(username, &current)?;
            change(&mut user)?;
            let encoded = encode_user(&user)?;

            let swapped = users
                .compare_and_swap(username, Some(&current), Some(encoded))
                .map_err(storage("update user"))?;
            if swapped.is_ok() {
                break user;
            }
        };

        self.flush().await?;
        Ok(updated)
    }

    async fn delete_user(&self, username: &str) -> Result<(), Error> {
        let removed = self
            .users_tree()
            .remove(username)
            .map_err(storage("delete user"))?;
        if removed.is_none() {
            return Err(Error::UserNotFound(username.to_owned()));
        }
        self.flush().await
    }

    async fn users_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<UserRecord>, Error> {
        let users = self.users_tree();
        let entries = match after {
            Some(after) => users.range::<&[u8], _>((
                std::ops::Bound::Excluded(after.as_bytes()),
                std::ops::Bound::Unbounded,
            )),
            None => users.iter(),
        };
        let mut page = Vec::new();
        for entry in entries.take(limit) {
            let (key, bytes) = entry.map_err(storage("list users"))?;
            page.push(decode_user(&String::from_utf8_lossy(&key), &bytes)?);
        }
        Ok(page)
    }

    async fn insert_service_account(&self, account: &ServiceAccountRecord) -> Result<(), Error> {
        let tree = self.service_accounts_tree()?;
        let record = ServiceAccountRecordV1 {
            version: SERVICE_ACCOUNT_VERSION,
            account: account.clone(),
        };
        let bytes =
            serde_json::to_vec(&record).map_err(|error| corrupt(&account.client_id, error))?;

        let swapped = tree
            .compare_and_swap(&account.client_id, None::<&[u8]>, Some(bytes))
            .map_err(storage("insert service account"))?;
        if swapped.is_err() {
            return Err(Error::ServiceAccountExists(account.client_id.clone()));
        }
        self.flush().await
    }

    async fn service_account(
        &self,
        client_id: &str,
    ) -> Result<Option<ServiceAccountRecord>, Error> {
        let tree = self.service_accounts_tree()?;
        let Some(bytes) = tree
            .get(client_id)
            .map_err(storage("read service account"))?
        else {
            return Ok(None);
        };
        decode_service_account(client_id, &bytes).map(Some)
    }

    async fn service_accounts(&self) -> Result<Vec<ServiceAccountRecord>, Error> {
        let tree = self.service_accounts_tree()?;
        let mut accounts = Vec::new();
        for entry in tree.iter() {
            let (key, bytes) = entry.map_err(storage("list service accounts"))?;
            accounts.push(decode_service_account(
                &String::from_utf8_lossy(&key),
                &bytes,
            )?);
        }
        Ok(accounts)
    }

    async fn set_service_account_secret(
        &self,
        client_id: &str,
        secret_hash: &str,
    ) -> Result<(), Error> {
        let tree = self.service_accounts_tree()?;
        // Compare-and-swap retries when another writer changed the record in between.
        loop {
            let Some(current) = tree
                .get(client_id)
                .map_err(storage("read service account"))?
            else {
                return Err(Error::ServiceAccountNotFound(client_id.to_owned()));
            };
            let mut account = decode_service_account(client_id, &current)?;
            account.secret_hash = secret_hash.to_owned();
            let record = ServiceAccountRecordV1 {
                version: SERVICE_ACCOUNT_VERSION,
                account,
            };
            let bytes = serde_json::to_vec(&record).map_err(|error| corrupt(client_id, error))?;
            let swapped = tree
                .compare_and_swap(client_id, Some(current), Some(bytes))
                .map_err(storage("update service account"))?;
            if swapped.is_ok() {
                break;
            }
        }
        self.flush().await
    }

    async fn delete_service_account(&self, client_id: &str) -> Result<(), Error> {
        let removed = self
            .service_accounts_tree()?
            .remove(client_id)
            .map_err(storage("delete service account"))?;
        if removed.is_none() {
            return Err(Error::ServiceAccountNotFound(client_id.to_owned()));
        }
        self.flush().await
    }
}

impl SledStore {
    /// Opens the tree of service accounts; sled returns the same tree on every call.
    fn service_accounts_tree(&self) -> Result<sled::Tree, Error> {
        self.db()
            .open_tree(SERVICE_ACCOUNTS_TREE)
            .map_err(storage("open service accounts tree"))
    }
}

fn decode_service_account(key: &str, bytes: &[u8]) -> Result<ServiceAccountRecord, Error> {
    let record: ServiceAccountRecordV1 =
        serde_json::from_slice(bytes).map_err(|error| corrupt(key, error))?;
    if record.version != SERVICE_ACCOUNT_VERSION {
        return Err(corrupt(
            key,
            format!("unsupported record version {}", record.version),
        ));
    }
    Ok(record.account)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::role::Role;

    fn user(name: &str) -> UserRecord {
        UserRecord {
            username: name.to_owned(),
            password_hash: "$argon2id$placeholder".into(),
            role: Role::Student,
            disabled: false,
            created_at: 1,
        }
    }

    #[tokio::test]
    async fn users_after_pages_in_name_order() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SledStore::open(dir.path()).await?;
        for name in ["carol", "alice", "bob", "dave"] {
            store.insert_new(&user(name)).await?;
        }

        let first = store.users_after(None, 2).await?;
        let second = store.users_after(Some("bob"), 2).await?;
        let last = store.users_after(Some("dave"), 2).await?;

        let names = |page: &[UserRecord]| -> Vec<String> {
            page.iter().map(|user| user.username.clone()).collect()
        };
        assert_eq!(names(&first), ["alice", "bob"]);
        assert_eq!(names(&second), ["carol", "dave"]);
        assert!(last.is_empty());
        Ok(())
    }

    #[tokio::test]
    async fn failed_change_leaves_user_unchanged() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SledStore::open(dir.path()).await?;
        store.insert_new(&user("alice")).await?;

        let refused = store
            .update_user("alice", &|user| {
                user.role = Role::Admin;
                Err(Error::LastAdmin("alice".to_owned()))
            })
            .await;

        assert!(matches!(refused, Err(Error::LastAdmin(_))));
        assert_eq!(store.get("alice").await?, Some(user("alice")));
        Ok(())
    }

    #[tokio::test]
    async fn delete_unknown_user_is_not_found() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SledStore::open(dir.path()).await?;
        store.insert_new(&user("alice")).await?;

        store.delete_user("alice").await?;
        let again = store.delete_user("alice").await;

        assert!(matches!(again, Err(Error::UserNotFound(_))));
        assert_eq!(store.get("alice").await?, None);
        Ok(())
    }

    #[tokio::test]
    async fn service_accounts_round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = SledStore::open(dir.path()).await?;
        let account = ServiceAccountRecord {
            client_id: "svc-1".into(),
            name: "reporting".into(),
            secret_hash: "$argon2id$placeholder".into(),
            audiences: vec!["student-service".into()],
            created_at: 1,
        };

        store.insert_service_account(&account).await?;
        let again = store.insert_service_account(&account).await;

        assert!(matches!(again, Err(Error::ServiceAccountExists(_))));
        assert_eq!(store.service_account("svc-1").await?, Some(account.clone()));
        assert_eq!(store.service_accounts().await?, vec![account]);
        assert!(!format!("{:?}", store.service_accounts().await?).contains("argon2id"));
        Ok(())
    }
}
