//! The login throttle: failed logins are counted per username and per client address, and a
//! key with too many recent failures is blocked for a while.
//!
//! Rules, all in whole seconds:
//!
//! - A failure is counted under the username, whether or not the account exists, and under the
//!   client's address (an IPv6 address by its /64 prefix, which one client usually controls).
//! - In [`ThrottleMode::Backoff`], the failure that reaches the free attempts blocks the key for
//!   1 second, and each further one doubles the block, up to `max_delay`. In
//!   [`ThrottleMode::Lockout`], each failure from the free attempts on blocks the key for
//!   `max_delay`.
//! - While either key is blocked, a login fails with [`Error::LoginThrottled`] before any
//!   password check, for known and unknown usernames alike, so the answer reveals nothing about
//!   the account. Attempts during a block are not counted.
//! - A successful login resets the username's counter, not the address's, so one valid
//!   account does not buy an address more guesses at others.
//! - A counter with no failure for `forget_after` is forgotten, so no block outlives
//!   `max_delay` and no account is locked for good.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use clap::ValueEnum;
use tokio::sync::Mutex;

use crate::clock::unix_now;
use crate::error::Error;
use crate::store::{ThrottleRecord, ThrottleStore};

/// How repeated failures are answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ThrottleMode {
    /// Blocks that double with each failure past the free attempts, up to the maximum delay.
    Backoff,
    /// A block of the maximum delay for each failure past the free attempts.
    Lockout,
    /// No throttling.
    Off,
}

/// The limits of the login throttle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// The way blocks grow after repeated failures.
    pub mode: ThrottleMode,
    /// Failures per username before it is blocked.
    pub username_free_attempts: u32,
    /// Failures per client address before it is blocked; higher, because many users can share
    /// one address behind a NAT.
    pub address_free_attempts: u32,
    /// The longest block, and the block of [`ThrottleMode::Lockout`].
    pub max_delay: Duration,
    /// How long a counter without failures is kept.
    pub forget_after: Duration,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        Self {
            mode: ThrottleMode::Backoff,
            username_free_attempts: 5,
            address_free_attempts: 20,
            max_delay: Duration::from_secs(15 * 60),
            forget_after: Duration::from_secs(60 * 60),
        }
    }
}

/// The longest accepted `--login-max-delay-secs`: one day, so that no block lasts longer.
const MAX_DELAY_LIMIT_SECS: u64 = 24 * 60 * 60;

/// The login throttle flags, flattened into [`crate::Config`].
#[derive(Clone, Debug, clap::Args)]
pub struct ThrottleArgs {
    /// How repeated failed logins are answered: doubling blocks (backoff), a fixed block
    /// (lockout), or not at all (off).
    #[arg(long, env = "AUTH_LOGIN_THROTTLE", value_enum, default_value_t = ThrottleMode::Backoff, global = true)]
    pub login_throttle: ThrottleMode,

    /// Failed logins per username before it is blocked.
    #[arg(
        long,
        env = "AUTH_LOGIN_USERNAME_ATTEMPTS",
        default_value_t = 5,
        global = true
    )]
    pub login_username_attempts: u32,

    /// Failed logins per client address (IPv6: per /64) before it is blocked.
    #[arg(
        long,
        env = "AUTH_LOGIN_ADDRESS_ATTEMPTS",
        default_value_t = 20,
        global = true
    )]
    pub login_address_attempts: u32,

    /// The longest block in seconds, and the block of every failure in lockout mode (1 to 86400).
    #[arg(
        long,
        env = "AUTH_LOGIN_MAX_DELAY_SECS",
        default_value_t = 900,
        global = true
    )]
    pub login_max_delay_secs: u64,

    /// Seconds without a failure after which a counter is forgotten (at least the maximum delay).
    #[arg(
        long,
        env = "AUTH_LOGIN_FORGET_SECS",
        default_value_t = 3600,
        global = true
    )]
    pub login_forget_secs: u64,

    /// The most failure counters kept; when full, the counter unchanged longest is dropped.
    #[arg(
        long,
        env = "AUTH_LOGIN_THROTTLE_ENTRIES",
        default_value_t = 100_000,
        global = true
    )]
    pub login_throttle_entries: usize,
}

impl ThrottleArgs {
    /// Checks the ranges; the error names the flag and its environment variable.
    pub fn validate(&self) -> Result<(), Error> {
        if self.login_username_attempts == 0 {
            return Err(Error::invalid_config(
                "login-username-attempts",
                "AUTH_LOGIN_USERNAME_ATTEMPTS",
                "must be at least 1",
            ));
        }
        if self.login_address_attempts == 0 {
            return Err(Error::invalid_config(
                "login-address-attempts",
                "AUTH_LOGIN_ADDRESS_ATTEMPTS",
                "must be at least 1",
            ));
        }
        if !(1..=MAX_DELAY_LIMIT_SECS).contains(&self.login_max_delay_secs) {
            return Err(Error::invalid_config(
                "login-max-delay-secs",
                "AUTH_LOGIN_MAX_DELAY_SECS",
                format!(
                    "must be 1 to {MAX_DELAY_LIMIT_SECS} seconds, got {}",
                    self.login_max_delay_secs
                ),
            ));
        }
        if self.login_forget_secs < self.login_max_delay_secs {
            return Err(Error::invalid_config(
                "login-forget-secs",
                "AUTH_LOGIN_FORGET_SECS",
                format!(
                    "must be at least --login-max-delay-secs ({}), got {}",
                    self.login_max_delay_secs, self.login_forget_secs
                ),
            ));
        }
        if self.login_throttle_entries == 0 {
            return Err(Error::invalid_config(
                "login-throttle-entries",
                "AUTH_LOGIN_THROTTLE_ENTRIES",
                "must be at least 1",
            ));
        }
        Ok(())
    }

    /// Returns the settings these flags describe.
    pub fn settings(&self) -> ThrottleSettings {
        ThrottleSettings {
            mode: self.login_throttle,
            username_free_attempts: self.login_username_attempts,
            address_free_attempts: self.login_address_attempts,
            max_delay: Duration::from_secs(self.login_max_delay_secs),
            forget_after: Duration::from_secs(self.login_forget_secs),
        }
    }

    /// Opens the counters in `<data_dir>/throttle` and returns the throttle.
    pub fn open(&self, data_dir: &std::path::Path) -> Result<LoginThrottle, Error> {
        let store = crate::store::SledThrottleStore::open(
            &data_dir.join("throttle"),
            self.login_throttle_entries,
        )?;
        Ok(LoginThrottle::new(self.settings(), Arc::new(store)))
    }
}

/// The first block of [`ThrottleMode::Backoff`].
const FIRST_DELAY_SECS: i64 = 1;

/// Counts failed logins and decides which logins are blocked. Cloning shares the counters.
#[derive(Clone)]
pub struct LoginThrottle {
    settings: ThrottleSettings,
    store: Arc<dyn ThrottleStore>,
    /// Serializes the read-modify-write of counters, so concurrent failures are all counted.
    updates: Arc<Mutex<()>>,
}

impl std::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginThrottle")
            .field("settings", &self.settings)
            .field("entries", &self.store.len())
            .finish()
    }
}

/// The keys one login attempt is counted under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptKeys {
    username: String,
    address: Option<String>,
}

impl AttemptKeys {
    /// Builds the keys for `username` from `client`, which is `None` when the transport does not
    /// know the peer address.
    pub fn new(username: &str, client: Option<SocketAddr>) -> Self {
        Self {
            username: format!("user\0{username}"),
            address: client.map(|addr| format!("addr\0{}", address_key(addr.ip()))),
        }
    }

    /// Builds the keys for an `IssueServiceToken` attempt with `client_id`. The client id is
    /// counted apart from usernames, and the address together with logins from it.
    pub fn for_service(client_id: &str, client: Option<SocketAddr>) -> Self {
        Self {
            username: format!("service\0{client_id}"),
            ..Self::new("", client)
        }
    }

    fn all(&self) -> impl Iterator<Item = (&str, bool)> {
        std::iter::once((self.username.as_str(), true))
            .chain(self.address.as_deref().map(|key| (key, false)))
    }
}

/// Returns the part of an address that one client controls: an IPv4 address whole, an IPv6
/// address by its /64 prefix, and an IPv4-mapped IPv6 address as IPv4.
fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let segments = v6.segments();
                format!(
                    "{:x}:{:x}:{:x}:{:x}::/64",
                    segments[0], segments[1], segments[2], segments[3]
                )
            }
        },
    }
}

impl LoginThrottle {
    /// Creates a throttle over `store`.
    pub fn new(settings: ThrottleSettings, store: Arc<dyn ThrottleStore>) -> Self {
        Self {
            settings,
            store,
            updates: Arc::new(Mutex::new(())),
        }
    }

    /// Fails with [`Error::LoginThrottled`] if any key of `keys` is blocked now, naming the
    /// longest remaining block.
    pub fn check(&self, keys: &AttemptKeys) -> Result<(), Error> {
        if self.settings.mode == ThrottleMode::Off {
            return Ok(());
        }
        let now = unix_now();
        let mut remaining = 0i64;
        for (key, _) in keys.all() {
            if let Some(record) = self.current(key, now)? {
                remaining = remaining.max(record.blocked_until.saturating_sub(now));
            }
        }
        if remaining > 0 {
            return Err(Error::LoginThrottled {
                retry_after: Duration::from_secs(remaining.unsigned_abs()),
            });
        }
        Ok(())
    }

    /// Counts a failed login under every key of `keys`.
    pub async fn record_failure(&self, keys: &AttemptKeys) -> Result<(), Error> {
        if self.settings.mode == ThrottleMode::Off {
            return Ok(());
        }
        let _serialized = self.updates.lock().await;
        let now = unix_now();
        for (key, is_username) in keys.all() {
            let mut record = self.current(key, now)?.unwrap_or_default();
            record.failures = record.failures.saturating_add(1);
            record.last_failure = now;
            let free = if is_username {
                self.settings.username_free_attempts
            } else {
                self.settings.address_free_attempts
            };
            if let Some(delay) = self.block_for(record.failures, free) {
                record.blocked_until = now.saturating_add(delay);
                tracing::info!(
                    throttle.kind = if is_username { "username" } else { "address" },
                    throttle.failures = record.failures,
                    throttle.delay_secs = delay,
                    "login blocked after repeated failures"
                );
            }
            self.store.put(key, record)?;
        }
        Ok(())
    }

    /// Resets the username's counter after a successful login.
    pub async fn record_success(&self, keys: &AttemptKeys) -> Result<(), Error> {
        if self.settings.mode == ThrottleMode::Off {
            return Ok(());
        }
        let _serialized = self.updates.lock().await;
        self.store.remove(&keys.username)
    }

    /// Returns the number of counters stored.
    pub fn entries(&self) -> usize {
        self.store.len()
    }

    /// Writes the counters to disk.
    pub fn flush(&self) -> Result<(), Error> {
        self.store.flush()
    }

    /// Returns the counter under `key` unless it is absent or old enough to forget.
    fn current(&self, key: &str, now: i64) -> Result<Option<ThrottleRecord>, Error> {
        let forget_after = secs(self.settings.forget_after);
        let record = match self.store.get(key) {
            Ok(record) => record,
            // A damaged counter must not lock anyone out; it is overwritten by the next failure.
            Err(Error::CorruptRecord { .. }) => None,
            Err(other) => return Err(other),
        };
        Ok(record.filter(|record| {
            let quiet_until = record
                .last_failure
                .max(record.blocked_until)
                .saturating_add(forget_after);
            now < quiet_until
        }))
    }

    /// Returns the block in seconds after the `failures`-th failure, or `None` below `free`.
    fn block_for(&self, failures: u32, free: u32) -> Option<i64> {
        if failures < free.max(1) {
            return None;
        }
        let max_delay = secs(self.settings.max_delay);
        let delay = match self.settings.mode {
            ThrottleMode::Backoff => {
                let doublings = failures - free.max(1);
                FIRST_DELAY_SECS
                    .checked_shl(doublings.min(62))
                    .unwrap_or(i64::MAX)
                    .min(max_delay)
            }
            ThrottleMode::Lockout => max_delay,
            ThrottleMode::Off => return None,
        };
        Some(delay)
    }
}

fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledThrottleStore;

    fn throttle(dir: &std::path::Path, settings: ThrottleSettings) -> Result<LoginThrottle, Error> {
        let store = SledThrottleStore::open(dir, 100)?;
        Ok(LoginThrottle::new(settings, Arc::new(store)))
    }

    fn temp_dir() -> Result<tempfile::TempDir, Error> {
        tempfile::tempdir().map_err(|source| Error::Io {
            operation: "create temporary directory",
            source,
        })
    }

    fn client() -> Option<SocketAddr> {
        Some(SocketAddr::from(([192, 0, 2, 7], 40_000)))
    }

    #[tokio::test]
    async fn backoff_blocks_after_free_attempts() -> Result<(), Error> {
        let dir = temp_dir()?;
        let settings = ThrottleSettings {
            username_free_attempts: 3,
            ..ThrottleSettings::default()
        };
        let throttle = throttle(dir.path(), settings)?;
        let keys = AttemptKeys::new("ann", client());

        throttle.record_failure(&keys).await?;
        throttle.record_failure(&keys).await?;
        assert!(throttle.check(&keys).is_ok(), "two failures are free");

        throttle.record_failure(&keys).await?;
        let blocked = throttle.check(&keys);
        assert!(
            matches!(blocked, Err(Error::LoginThrottled { retry_after }) if retry_after <= Duration::from_secs(1)),
            "{blocked:?}"
        );
        Ok(())
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() -> Result<(), Error> {
        let dir = temp_dir()?;
        let settings = ThrottleSettings {
            username_free_attempts: 5,
            max_delay: Duration::from_secs(10),
            ..ThrottleSettings::default()
        };
        let throttle = throttle(dir.path(), settings)?;

        let delays: Vec<Option<i64>> = (4..=11).map(|n| throttle.block_for(n, 5)).collect();

        assert_eq!(
            delays,
            [
                None,
                Some(1),
                Some(2),
                Some(4),
                Some(8),
                Some(10),
                Some(10),
                Some(10)
            ]
        );
        assert_eq!(throttle.block_for(u32::MAX, 5), Some(10));
        Ok(())
    }

    #[test]
    fn lockout_blocks_for_the_maximum() -> Result<(), Error> {
        let dir = temp_dir()?;
        let settings = ThrottleSettings {
            mode: ThrottleMode::Lockout,
            max_delay: Duration::from_secs(300),
            ..ThrottleSettings::default()
        };
        let throttle = throttle(dir.path(), settings)?;

        assert_eq!(throttle.block_for(4, 5), None);
        assert_eq!(throttle.block_for(5, 5), Some(300));
        assert_eq!(throttle.block_for(9, 5), Some(300));
        Ok(())
    }

    #[tokio::test]
    async fn success_resets_only_the_username() -> Result<(), Error> {
        let dir = temp_dir()?;
        let throttle = throttle(dir.path(), ThrottleSettings::default())?;
        let keys = AttemptKeys::new("ann", client());

        throttle.record_failure(&keys).await?;
        throttle.record_success(&keys).await?;

        assert_eq!(throttle.store.get("user\0ann")?, None);
        assert_eq!(
            throttle.store.get("addr\x00192.0.2.7")?.map(|r| r.failures),
            Some(1)
        );
        Ok(())
    }

    #[tokio::test]
    async fn old_failures_are_forgotten() -> Result<(), Error> {
        let dir = temp_dir()?;
        let throttle = throttle(dir.path(), ThrottleSettings::default())?;
        let long_ago = unix_now() - 2 * 60 * 60;
        throttle.store.put(
            "user\0ann",
            ThrottleRecord {
                failures: 1000,
                last_failure: long_ago,
                blocked_until: long_ago + 900,
            },
        )?;

        let keys = AttemptKeys::new("ann", None);
        assert!(throttle.check(&keys).is_ok());
        throttle.record_failure(&keys).await?;
        assert_eq!(
            throttle.store.get("user\0ann")?.map(|r| r.failures),
            Some(1)
        );
        Ok(())
    }

    #[test]
    fn ipv6_clients_share_their_prefix() {
        let first = AttemptKeys::new(
            "ann",
            Some("[2001:db8:1:2:aaaa::1]:1".parse().ok()).flatten(),
        );
        let second = AttemptKeys::new(
            "ann",
            Some("[2001:db8:1:2:bbbb::9]:2".parse().ok()).flatten(),
        );
        let mapped = AttemptKeys::new("ann", "[::ffff:192.0.2.7]:3".parse().ok());

        assert_eq!(first.address, second.address);
        assert_eq!(first.address.as_deref(), Some("addr\x002001:db8:1:2::/64"));
        assert_eq!(mapped.address.as_deref(), Some("addr\x00192.0.2.7"));
    }

    #[test]
    fn client_ids_are_counted_apart_from_usernames() {
        let client = "192.0.2.7:3".parse().ok();
        let user = AttemptKeys::new("svc-1", client);
        let service = AttemptKeys::for_service("svc-1", client);

        assert_ne!(user.username, service.username);
        assert_eq!(user.address, service.address);
    }
}
