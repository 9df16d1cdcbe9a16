//! The revocation list: access tokens that must be rejected before their `exp`.
//!
//! auth-service keeps the authoritative list and streams it through
//! `AuthService/WatchRevocations`. [`RevocationWatcher`] subscribes to that stream and keeps a
//! [`RevocationList`] in step with it, so a verifier rejects a revoked token without a call per
//! request. An entry revokes either one token, by its `jti`, or every token of a subject whose
//! `iat` is at or before a time. Entries name tokens and subjects by SHA-256 digest, so the
//! stream reveals neither token ids nor usernames to a watcher that does not already know them.
//!
//! Each entry carries the time at which every token it matches has expired. Entries are dropped
//! after that time, so the list is bounded by the rate of revocations times the token lifetime.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use school_proto::auth::v1::auth_service_client::AuthServiceClient;
use school_proto::auth::v1::revocation::Target;
use school_proto::auth::v1::{Revocation, WatchRevocationsRequest};
use tonic::transport::Channel;

use crate::cache::TokenCache;
use crate::claims::Claims;
use crate::verify::unix_now;

/// A SHA-256 digest of a token id or a subject.
pub type Digest = [u8; 32];

/// How often expired entries are dropped, at most.
const PURGE_INTERVAL_SECS: i64 = 30;

/// The first and the longest wait before the watcher reconnects after the stream fails.
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// Returns the SHA-256 digest of `value`, the form in which the list names token ids and
/// subjects.
pub fn digest_of(value: &str) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, value.as_bytes()).as_ref());
    out
}

/// One entry of the revocation list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RevokedEntry {
    /// One access token, named by the digest of its `jti`.
    Token {
        /// The SHA-256 digest of the `jti` claim.
        token_id: Digest,
        /// When the token expires, leeway included, in seconds since the Unix epoch.
        expires_at: i64,
    },
    /// Every token of one subject issued at or before a time.
    Subject {
        /// The SHA-256 digest of the `sub` claim.
        subject: Digest,
        /// The latest `iat` revoked, in seconds since the Unix epoch.
        issued_at_or_before: i64,
        /// When every token this entry revokes has expired, in seconds since the Unix epoch.
        expires_at: i64,
    },
}

impl RevokedEntry {
    /// Returns when the entry may be dropped, in seconds since the Unix epoch.
    pub fn expires_at(&self) -> i64 {
        match *self {
            RevokedEntry::Token { expires_at, .. } | RevokedEntry::Subject { expires_at, .. } => {
                expires_at
            }
        }
    }

    /// Reports whether this entry revokes a token with `claims`.
    pub fn matches(&self, claims: &Claims) -> bool {
        match *self {
            RevokedEntry::Token { token_id, .. } => {
                !claims.jti.is_empty() && digest_of(&claims.jti) == token_id
            }
            RevokedEntry::Subject {
                subject,
                issued_at_or_before,
                ..
            } => claims.iat <= issued_at_or_before && digest_of(&claims.sub) == subject,
        }
    }

    /// Converts the wire form, or returns `None` if a digest is not 32 bytes or no target is
    /// set.
    pub fn from_proto(revocation: &Revocation) -> Option<Self> {
        match revocation.target.as_ref()? {
            Target::TokenIdSha256(bytes) => Some(RevokedEntry::Token {
                token_id: Digest::try_from(bytes.as_slice()).ok()?,
                expires_at: revocation.expires_at,
            }),
            Target::SubjectSha256(bytes) => Some(RevokedEntry::Subject {
                subject: Digest::try_from(bytes.as_slice()).ok()?,
                issued_at_or_before: revocation.issued_at_or_before,
                expires_at: revocation.expires_at,
            }),
        }
    }

    /// Returns the wire form.
    pub fn to_proto(&self) -> Revocation {
        match *self {
            RevokedEntry::Token {
                token_id,
                expires_at,
            } => Revocation {
                target: Some(Target::TokenIdSha256(token_id.to_vec())),
                issued_at_or_before: 0,
                expires_at,
            },
            RevokedEntry::Subject {
                subject,
                issued_at_or_before,
                expires_at,
            } => Revocation {
                target: Some(Target::SubjectSha256(subject.to_vec())),
                issued_at_or_before,
                expires_at,
            },
        }
    }
}

#[derive(Default)]
struct Entries {
    /// Token id digest to expiry.
    tokens: HashMap<Digest, i64>,
    /// Subject digest to the latest revoked `iat` and the expiry of the entry.
    subjects: HashMap<Digest, (i64, i64)>,
    /// When expired entries are next dropped.
    next_purge: i64,
}

impl Entries {
    fn insert(&mut self, entry: RevokedEntry) {
        match entry {
            RevokedEntry::Token {
                token_id,
                expires_at,
            } => {
                let stored = self.tokens.entry(token_id).or_insert(expires_at);
                *stored = (*stored).max(expires_at);
            }
            RevokedEntry::Subject {
                subject,
                issued_at_or_before,
                expires_at,
            } => {
                // A later revocation of the same subject covers every token the earlier one did.
                let stored = self
                    .subjects
                    .entry(subject)
                    .or_insert((issued_at_or_before, expires_at));
                stored.0 = stored.0.max(issued_at_or_before);
                stored.1 = stored.1.max(expires_at);
            }
        }
    }

    fn purge_if_due(&mut self, now: i64) {
        if now >= self.next_purge {
            self.purge(now);
        }
    }

    fn purge(&mut self, now: i64) -> usize {
        let before = self.len();
        self.tokens.retain(|_, expires_at| *expires_at >= now);
        self.subjects
            .retain(|_, (_, expires_at)| *expires_at >= now);
        self.next_purge = now.saturating_add(PURGE_INTERVAL_SECS);
        before - self.len()
    }

    fn len(&self) -> usize {
        self.tokens.len() + self.subjects.len()
    }
}

/// The in-memory revocation list that a [`crate::verify::TokenVerifier`] consults after every
/// successful verification, cached or not. Clones share the list.
#[derive(Clone, Default)]
pub struct RevocationList {
    entries: Arc<RwLock<Entries>>,
    /// Set once a complete snapshot from auth-service is in force.
    synchronized: Arc<AtomicBool>,
}

impl fmt::Debug for RevocationList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevocationList")
            .field("entries", &self.len())
            .finish()
    }
}

impl RevocationList {
    /// Creates an empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reports whether a complete snapshot has been received since the list was created. It
    /// stays true while the stream reconnects, because the entries received before stay in force.
    pub fn is_synchronized(&self) -> bool {
        self.synchronized.load(Ordering::Acquire)
    }

    fn read(&self) -> RwLockReadGuard<'_, Entries> {
        self.entries
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Entries> {
        self.entries
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reports whether a token with `claims` is revoked.
    pub fn is_revoked(&self, claims: &Claims) -> bool {
        let entries = self.read();
        if entries.tokens.is_empty() && entries.subjects.is_empty() {
            return false;
        }
        if !claims.jti.is_empty() && entries.tokens.contains_key(&digest_of(&claims.jti)) {
            return true;
        }
        entries
            .subjects
            .get(&digest_of(&claims.sub))
            .is_some_and(|&(issued_at_or_before, _)| claims.iat <= issued_at_or_before)
    }

    /// Adds an entry, unless it has already expired. Merging with an existing entry keeps the
    /// wider revocation.
    pub fn insert(&self, entry: RevokedEntry) {
        let now = unix_now();
        if entry.expires_at() < now {
            return;
        }
        let mut entries = self.write();
        entries.insert(entry);
        entries.purge_if_due(now);
    }

    /// Replaces the whole list with `snapshot`, as after a resynchronization.
    pub fn replace(&self, snapshot: impl IntoIterator<Item = RevokedEntry>) {
        let now = unix_now();
        let mut fresh = Entries::default();
        for entry in snapshot {
            if entry.expires_at() >= now {
                fresh.insert(entry);
            }
        }
        fresh.next_purge = now.saturating_add(PURGE_INTERVAL_SECS);
        *self.write() = fresh;
        self.synchronized.store(true, Ordering::Release);
    }

    /// Drops the entries that expired before `now`, in seconds since the Unix epoch, and
    /// returns how many were dropped.
    pub fn purge_expired(&self, now: i64) -> usize {
        self.write().purge(now)
    }

    /// Returns every entry, in no particular order.
    pub fn entries(&self) -> Vec<RevokedEntry> {
        let entries = self.read();
        let tokens = entries
            .tokens
            .iter()
            .map(|(&token_id, &expires_at)| RevokedEntry::Token {
                token_id,
                expires_at,
            });
        let subjects =
            entries
                .subjects
                .iter()
                .map(
                    |(&subject, &(issued_at_or_before, expires_at))| RevokedEntry::Subject {
                        subject,
                        issued_at_or_before,
                        expires_at,
                    },
                );
        tokens.chain(subjects).collect()
    }

    /// Returns the number of entries, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Reports whether the list has no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The reason one subscription to the revocation stream ended.
#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("WatchRevocations call failed: {0}")]
    Call(#[from] tonic::Status),
    #[error("auth-service closed the revocation stream")]
    Closed,
}

/// Keeps a [`RevocationList`] in step with auth-service through `WatchRevocations`.
///
/// Each subscription starts with a snapshot that replaces the whole list, so revocations made
/// while the stream was down arrive at the next resynchronization. Every token a new entry
/// revokes is also dropped from the verifier's [`TokenCache`].
pub struct RevocationWatcher {
    client: AuthServiceClient<Channel>,
    list: RevocationList,
    cache: TokenCache,
    lag_observer: Option<LagObserver>,
}

/// A callback that receives the delay between auth-service sending a new revocation and this
/// watcher applying it.
pub type LagObserver = Box<dyn Fn(Duration) + Send + Sync>;

impl fmt::Debug for RevocationWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationWatcher")
            .field("list", &self.list)
            .finish_non_exhaustive()
    }
}

impl RevocationWatcher {
    /// Creates a watcher that writes into `list` and drops revoked tokens from `cache`.
    ///
    /// The channel should have no per-call timeout, because the stream is meant to stay open,
    /// and should send HTTP/2 keep-alive pings, so that a silently dropped connection is noticed
    /// and replaced.
    pub fn new(
        client: AuthServiceClient<Channel>,
        list: RevocationList,
        cache: TokenCache,
    ) -> Self {
        Self {
            client,
            list,
            cache,
            lag_observer: None,
        }
    }

    /// Reports the lag of every new revocation to `observer`: the time from auth-service sending
    /// it to this watcher applying it, by the two hosts' clocks. Snapshot entries are not
    /// reported, because they may be old.
    pub fn with_lag_observer(
        mut self,
        observer: impl Fn(Duration) + Send + Sync + 'static,
    ) -> Self {
        self.lag_observer = Some(Box::new(observer));
        self
    }

    /// Starts a task that subscribes, and resubscribes with exponential backoff whenever the
    /// stream fails or ends, until the task is aborted.
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    /// Subscribes, and resubscribes with exponential backoff whenever the stream fails or ends.
    /// Never returns.
    pub async fn run(self) {
        let mut delay = FIRST_RETRY_DELAY;
        let mut attempt = 1u32;
        loop {
            let mut synchronized = false;
            let error = self.watch(&mut synchronized).await;
            if synchronized {
                // The last subscription worked, so this failure starts a new series of retries.
                delay = FIRST_RETRY_DELAY;
                attempt = 1;
            }
            // NOTE: the old list stays in force while disconnected, so a revocation made in that
            // time takes effect only at the next resynchronization.
            tracing::warn!(
                %error,
                attempt,
                retry.delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "revocation stream failed, resubscribing"
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY_DELAY);
            attempt = attempt.saturating_add(1);
        }
    }

    /// Runs one subscription until it fails, setting `synchronized` once its snapshot is in
    /// force.
    async fn watch(&self, synchronized: &mut bool) -> WatchError {
        let mut client = self.client.clone();
        let mut stream = match client.watch_revocations(WatchRevocationsRequest {}).await {
            Ok(response) => response.into_inner(),
            Err(status) => return WatchError::Call(status),
        };
        let mut snapshot = Vec::new();
        let mut purge = tokio::time::interval(Duration::from_secs(
            u64::try_from(PURGE_INTERVAL_SECS).unwrap_or(30),
        ));

        loop {
            let message = tokio::select! {
                message = stream.message() => message,
                _ = purge.tick() => {
                    let dropped = self.list.purge_expired(unix_now());
                    if dropped > 0 {
                        tracing::debug!(revocations.dropped = dropped, "expired revocations dropped");
                    }
                    continue;
                }
            };
            let message = match message {
                Ok(Some(message)) => message,
                Ok(None) => return WatchError::Closed,
                Err(status) => return WatchError::Call(status),
            };

            let entries = message.revocations.iter().filter_map(|revocation| {
                let entry = RevokedEntry::from_proto(revocation);
                if entry.is_none() {
                    tracing::warn!("ignoring a revocation entry without a 32-byte digest");
                }
                entry
            });
            if *synchronized {
                for entry in entries {
                    self.list.insert(entry);
                    self.cache.remove_where(move |claims| entry.matches(claims));
                    tracing::info!(
                        revocations.count = self.list.len(),
                        "token revocation received"
                    );
                }
                if let Some(observer) = &self.lag_observer {
                    observer(lag_since(message.sent_at_unix_ms));
                }
            } else {
                snapshot.extend(entries);
                if message.snapshot_complete {
                    let received = std::mem::take(&mut snapshot);
                    let count = received.len();
                    self.list.replace(received);
                    let list = self.list.clone();
                    self.cache
                        .remove_where(move |claims| list.is_revoked(claims));
                    *synchronized = true;
                    tracing::info!(revocations.count = count, "revocation list synchronized");
                }
            }
        }
    }
}

/// Returns the time from `sent_at_unix_ms` until now, or zero when the sender's clock is ahead
/// or the time is unset.
fn lag_since(sent_at_unix_ms: i64) -> Duration {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        });
    if sent_at_unix_ms <= 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(u64::try_from(now_ms.saturating_sub(sent_at_unix_ms)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::Audience;

    fn claims(sub: &str, jti: &str, iat: i64) -> Claims {
        Claims {
            sub: sub.into(),
            role: "student".into(),
            iss: "school-auth".into(),
            aud: Audience::from("school"),
            iat,
            nbf: iat,
            exp: iat + 900,
            jti: jti.into(),
        }
    }

    #[test]
    fn token_entry_revokes_only_that_token() {
        let list = RevocationList::new();
        let now = unix_now();
        list.insert(RevokedEntry::Token {
            token_id: digest_of("jti-1"),
            expires_at: now + 900,
        });

        assert!(list.is_revoked(&claims("sam", "jti-1", now)));
        assert!(!list.is_revoked(&claims("sam", "jti-2", now)));
        assert!(!list.is_revoked(&claims("sam", "", now)));
    }

    #[test]
    fn subject_entry_revokes_tokens_issued_until_then() {
        let list = RevocationList::new();
        let now = unix_now();
        list.insert(RevokedEntry::Subject {
            subject: digest_of("sam"),
            issued_at_or_before: now,
            expires_at: now + 900,
        });

        assert!(list.is_revoked(&claims("sam", "a", now - 10)));
        assert!(list.is_revoked(&claims("sam", "b", now)));
        assert!(!list.is_revoked(&claims("sam", "c", now + 1)));
        assert!(!list.is_revoked(&claims("sue", "d", now - 10)));
    }

    #[test]
    fn expired_entries_are_dropped() {
        let list = RevocationList::new();
        let now = unix_now();
        list.insert(RevokedEntry::Token {
            token_id: digest_of("old"),
            expires_at: now - 1,
        });
        assert!(list.is_empty());

        list.insert(RevokedEntry::Token {
            token_id: digest_of("soon"),
            expires_at: now + 5,
        });
        assert_eq!(list.purge_expired(now + 6), 1);
        assert!(list.is_empty());
    }

    #[test]
    fn replace_discards_the_old_entries() {
        let list = RevocationList::new();
        let now = unix_now();
        list.insert(RevokedEntry::Token {
            token_id: digest_of("a"),
            expires_at: now + 60,
        });

        list.replace([RevokedEntry::Token {
            token_id: digest_of("b"),
            expires_at: now + 60,
        }]);

        assert!(!list.is_revoked(&claims("sam", "a", now)));
        assert!(list.is_revoked(&claims("sam", "b", now)));
    }

    #[test]
    fn later_subject_revocation_widens_the_entry() {
        let list = RevocationList::new();
        let now = unix_now();
        for issued_at_or_before in [now - 5, now, now - 20] {
            list.insert(RevokedEntry::Subject {
                subject: digest_of("sam"),
                issued_at_or_before,
                expires_at: now + 60,
            });
        }

        assert_eq!(list.len(), 1);
        assert!(list.is_revoked(&claims("sam", "x", now)));
    }

    #[test]
    fn wire_form_round_trips() {
        let entries = [
            RevokedEntry::Token {
                token_id: digest_of("jti"),
                expires_at: 10,
            },
            RevokedEntry::Subject {
                subject: digest_of("sam"),
                issued_at_or_before: 5,
                expires_at: 20,
            },
        ];
        for entry in entries {
            assert_eq!(RevokedEntry::from_proto(&entry.to_proto()), Some(entry));
        }

        let short = Revocation {
            target: Some(Target::TokenIdSha256(vec![1, 2, 3])),
            issued_at_or_before: 0,
            expires_at: 10,
        };
        assert_eq!(RevokedEntry::from_proto(&short), None);
        assert_eq!(RevokedEntry::from_proto(&Revocation::default()), None);
    }
}
