//! Login sessions and revocation: refresh tokens with rotation and reuse detection, `Logout`,
//! and the revocation list that verifiers follow through `WatchRevocations`.
//!
//! `Login` starts a session, a family of refresh tokens. `RefreshToken` exchanges the newest
//! token of a family for a new access token and the family's next refresh token. A refresh
//! token presented a second time has leaked, because the legitimate client replaced it. So the
//! whole family and every access token issued in it are revoked (reuse detection).
//!
//! Revocations are written to sled before they are published, so they survive a restart, and
//! each is kept until every token it matches has expired.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use school_guard::Identity;
use school_guard::revocation::{RevocationList, RevokedEntry, digest_of};
use school_proto::auth::v1::{RefreshTokenResponse, WatchRevocationsResponse};
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use zeroize::Zeroizing;

use crate::clock::unix_now;
use crate::error::Error;
use crate::store::{
    AccessTokenRef, NewRefreshToken, PurgeCounts, RefreshDigest, Rotation, SessionStore,
    StoredRevocation, UserStore,
};
use crate::tokens::{IssuedToken, TokenIssuer};

/// Random bytes in a refresh token: 256 bits, written as 43 base64url characters.
const REFRESH_TOKEN_BYTES: usize = 32;

/// The maximum length of a refresh token worth looking up, because issued ones have 43 characters.
const MAX_REFRESH_TOKEN_LEN: usize = 64;

/// The most `WatchRevocations` streams open at once. Each costs a task and a snapshot copy, and
/// the method needs no token, so the number must be bounded.
pub const MAX_WATCHERS: usize = 256;

/// The most `WatchRevocations` streams one client address may hold open. A verifier needs one;
/// the rest is room for restarts and several services behind one address.
pub const MAX_WATCHERS_PER_ADDRESS: usize = 16;

/// The maximum number of entries in one `WatchRevocations` message, so that a large snapshot stays far below
/// the 4 MiB default message limit of gRPC clients (about 80 bytes an entry).
const SNAPSHOT_CHUNK: usize = 1_000;

/// Revocations buffered for each watcher. A watcher that falls further behind is disconnected
/// and resynchronizes from a new snapshot.
const EVENT_BUFFER: usize = 1_024;

/// The maximum number of live sessions per user unless configured otherwise. A login beyond it
/// ends the user's oldest session, so the stored sessions stay bounded by users × limit.
pub const DEFAULT_MAX_SESSIONS_PER_USER: usize = 100;

/// The token type of every issued token (RFC 6750).
const TOKEN_TYPE: &str = "Bearer";

/// An opaque refresh token. `Debug` prints `[redacted]`, and the text is zeroized on drop.
pub struct RefreshToken(Zeroizing<String>);

impl RefreshToken {
    /// Wraps a token received from a client.
    pub fn new(token: String) -> Self {
        Self(Zeroizing::new(token))
    }

    fn generate() -> Result<Self, Error> {
        let mut bytes = Zeroizing::new([0u8; REFRESH_TOKEN_BYTES]);
        SystemRandom::new()
            .fill(bytes.as_mut())
            .map_err(|_| Error::Crypto("generate refresh token"))?;
        Ok(Self::new(URL_SAFE_NO_PAD.encode(bytes.as_ref())))
    }

    /// Returns the token text, to send to its owner and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn digest(&self) -> RefreshDigest {
        let mut out = [0u8; 32];
        out.copy_from_slice(digest::digest(&digest::SHA256, self.0.as_bytes()).as_ref());
        out
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RefreshToken([redacted])")
    }
}

/// Persists revocations, applies them to the in-memory [`RevocationList`] and publishes them to
/// every `WatchRevocations` stream. Clones share all three.
#[derive(Clone)]
pub struct Revoker {
    store: Arc<dyn SessionStore>,
    list: RevocationList,
    events: broadcast::Sender<RevokedEntry>,
    /// Set to `true` at shutdown, which ends every open stream.
    closing: watch::Sender<bool>,
    watchers: Arc<Semaphore>,
    /// Open streams per client address, so one address cannot hold every stream.
    watchers_per_address: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// How long after a revocation by subject its tokens may still be live: the access token
    /// lifetime plus the clock skew allowance.
    subject_retention_secs: i64,
    leeway_secs: i64,
    /// When each subject's tokens were last revoked, kept for [`RECENT_REVOCATION_WINDOW`], so
    /// that a credential check that ran meanwhile can tell; see [`Revoker::revoked_since`].
    recent_subject_revocations: Arc<Mutex<HashMap<String, Instant>>>,
}

/// How long [`Revoker::revoked_since`] remembers a revocation by subject: longer than any login
/// can take, which the 30-second request timeout bounds.
const RECENT_REVOCATION_WINDOW: Duration = Duration::from_secs(120);

impl fmt::Debug for Revoker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revoker")
            .field("list", &self.list)
            .field("subject_retention_secs", &self.subject_retention_secs)
            .finish_non_exhaustive()
    }
}

impl Revoker {
    /// Loads the persisted revocations into a new in-memory list.
    ///
    /// Entries are kept until `token_ttl` plus `leeway` after the tokens they match were
    /// issued.
    // NOTE: verifiers with a larger leeway than this service's accept an expired token for that
    // much longer, after its entry is dropped; give every service the same `--leeway-secs`.
    pub async fn load(
        store: Arc<dyn SessionStore>,
        token_ttl: Duration,
        leeway: Duration,
    ) -> Result<Self, Error> {
        let leeway_secs = i64::try_from(leeway.as_secs()).unwrap_or(i64::MAX);
        let ttl_secs = i64::try_from(token_ttl.as_secs()).unwrap_or(i64::MAX);
        let list = RevocationList::new();
        list.replace(store.revocations().await?.iter().map(to_entry));
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let (closing, _) = watch::channel(false);

        Ok(Self {
            store,
            list,
            events,
            closing,
            watchers: Arc::new(Semaphore::new(MAX_WATCHERS)),
            watchers_per_address: Arc::default(),
            subject_retention_secs: ttl_secs.saturating_add(leeway_secs),
            leeway_secs,
            recent_subject_revocations: Arc::default(),
        })
    }

    /// Returns whether `subject`'s tokens were revoked at or after `since`.
    ///
    /// A login or service-token request checks the credentials, then issues a token. An admin
    /// action in between (disable, delete, role or password change, secret rotation) revokes
    /// the tokens issued until then. But that revocation covers `iat` only up to its own
    /// second, and its scan of sessions may run before the new session exists. So the issuer calls this
    /// after issuing, with the time it started, and withholds the token when it returns `true`.
    /// A revocation that starts after that call finds the new session and covers its `iat`.
    pub fn revoked_since(&self, subject: &str, since: Instant) -> bool {
        self.recent_subject_revocations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(subject)
            .is_some_and(|revoked_at| *revoked_at >= since)
    }

    /// Records that `subject`'s tokens are being revoked now, and drops records older than
    /// [`RECENT_REVOCATION_WINDOW`].
    fn note_subject_revocation(&self, subject: &str) {
        let now = Instant::now();
        let mut recent = self
            .recent_subject_revocations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        recent.retain(|_, revoked_at| now.duration_since(*revoked_at) < RECENT_REVOCATION_WINDOW);
        recent.insert(subject.to_owned(), now);
    }

    /// Returns the in-memory list, for this service's own verifier.
    pub fn list(&self) -> &RevocationList {
        &self.list
    }

    /// Revokes single access tokens until they expire.
    pub async fn revoke_tokens(&self, tokens: &[AccessTokenRef]) -> Result<(), Error> {
        let revocations: Vec<StoredRevocation> = tokens
            .iter()
            .map(|token| StoredRevocation::Token {
                token_id: token.token_id.clone(),
                expires_at: token.expires_at.saturating_add(self.leeway_secs),
            })
            .collect();
        self.publish(&revocations).await
    }

    /// Revokes every session of `username`: each access token issued until now, and every
    /// refresh token. Disabling, deleting and changing the role of a user call this.
    ///
    /// Tokens carry `iat` in whole seconds, so a token issued later in the same second is
    /// revoked too.
    pub async fn revoke_user_sessions(&self, username: &str) -> Result<(), Error> {
        // Recorded first, so that an issuer checking afterwards finds it; see `revoked_since`.
        self.note_subject_revocation(username);
        let now = unix_now();
        let revocation = StoredRevocation::Subject {
            subject: username.to_owned(),
            issued_at_or_before: now,
            expires_at: now.saturating_add(self.subject_retention_secs),
        };
        self.publish(std::slice::from_ref(&revocation)).await?;
        let ended = self.store.end_sessions_of(username, now).await?;
        tracing::info!(
            user.name = username,
            sessions.ended = ended,
            "user sessions revoked"
        );
        Ok(())
    }

    async fn publish(&self, revocations: &[StoredRevocation]) -> Result<(), Error> {
        self.store.insert_revocations(revocations).await?;
        for entry in revocations.iter().map(to_entry) {
            self.list.insert(entry);
            // Sending fails only when no stream is open, which is no error.
            let _ = self.events.send(entry);
        }
        Ok(())
    }

    /// Opens a `WatchRevocations` stream: the current list in messages of at most
    /// [`SNAPSHOT_CHUNK`] entries, the last with `snapshot_complete`, then each new revocation.
    ///
    /// Fails with [`Error::TooManyWatchers`] when [`MAX_WATCHERS`] streams are open, or
    /// [`MAX_WATCHERS_PER_ADDRESS`] from `peer`. The stream ends with
    /// [`Error::RevocationStreamLagged`] if its receiver falls [`EVENT_BUFFER`] revocations
    /// behind, and ends cleanly at [`Revoker::close_streams`].
    pub fn watch(
        &self,
        peer: Option<IpAddr>,
    ) -> Result<ReceiverStream<Result<WatchRevocationsResponse, Status>>, Error> {
        let address_place = match peer {
            Some(peer) => Some(
                AddressPlace::take(&self.watchers_per_address, peer)
                    .ok_or(Error::TooManyWatchers)?,
            ),
            None => None,
        };
        let permit = Arc::clone(&self.watchers)
            .try_acquire_owned()
            .map_err(|_| Error::TooManyWatchers)?;
        // Subscribing before copying the list means that no revocation falls between the two; one
        // in both is sent twice, which the receiver ignores.
        let events = self.events.subscribe();
        let snapshot = self.list.entries();
        let closing = self.closing.subscribe();
        let (sender, receiver) = mpsc::channel(4);

        tokio::spawn(async move {
            let _permit = permit;
            let _address_place = address_place;
            tracing::info!(
                revocations.count = snapshot.len(),
                "revocation watcher subscribed"
            );
            let reason = forward_revocations(snapshot, events, closing, &sender).await;
            tracing::info!(reason, "revocation watcher stream ended");
        });
        Ok(ReceiverStream::new(receiver))
    }

    /// Ends every open `WatchRevocations` stream, so that graceful shutdown need not wait for
    /// streams that never end by themselves.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Removes the sessions and revocations that have expired, from sled and from the list.
    pub async fn purge_expired(&self) -> Result<PurgeCounts, Error> {
        let now = unix_now();
        self.list.purge_expired(now);
        self.store.purge_expired(now).await
    }

    /// Starts a task that purges expired records every `every`, until it is aborted.
    pub fn spawn_purge(&self, every: Duration) -> JoinHandle<()> {
        let revoker = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                match revoker.purge_expired().await {
                    Ok(counts) if counts != PurgeCounts::default() => tracing::info!(
                        refresh_tokens = counts.refresh_tokens,
                        sessions = counts.sessions,
                        access_tokens = counts.access_tokens,
                        revocations = counts.revocations,
                        "expired sessions and revocations purged"
                    ),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(
                        error = %error.report(),
                        "purging expired sessions failed; retrying at the next interval"
                    ),
                }
            }
        })
    }
}

/// A stream's place among those of its client address, given back on drop. The table holds only
/// addresses with open streams, so it is bounded by [`MAX_WATCHERS`].
struct AddressPlace {
    peer: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl AddressPlace {
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, peer: IpAddr) -> Option<Self> {
        let mut table = counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = table.entry(peer).or_insert(0);
        if *count >= MAX_WATCHERS_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(AddressPlace {
            peer,
            counts: Arc::clone(counts),
        })
    }
}

impl Drop for AddressPlace {
    fn drop(&mut self) {
        let mut table = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = table.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                table.remove(&self.peer);
            }
        }
    }
}

/// Sends the snapshot and then each event to one watcher, and returns why it stopped.
async fn forward_revocations(
    snapshot: Vec<RevokedEntry>,
    mut events: broadcast::Receiver<RevokedEntry>,
    mut closing: watch::Receiver<bool>,
    sender: &mpsc::Sender<Result<WatchRevocationsResponse, Status>>,
) -> &'static str {
    let chunk_count = snapshot.len().div_ceil(SNAPSHOT_CHUNK).max(1);
    let mut chunks = snapshot.chunks(SNAPSHOT_CHUNK);
    for index in 0..chunk_count {
        let chunk = chunks.next().unwrap_or(&[]);
        let message = WatchRevocationsResponse {
            revocations: chunk.iter().map(RevokedEntry::to_proto).collect(),
            snapshot_complete: index + 1 == chunk_count,
            sent_at_unix_ms: unix_now_ms(),
        };
        if sender.send(Ok(message)).await.is_err() {
            return "client disconnected";
        }
    }

    loop {
        let entry = tokio::select! {
            event = events.recv() => event,
            _ = closing.wait_for(|closing| *closing) => return "server shutting down",
            () = sender.closed() => return "client disconnected",
        };
        let message = match entry {
            Ok(entry) => Ok(WatchRevocationsResponse {
                revocations: vec![entry.to_proto()],
                snapshot_complete: false,
                sent_at_unix_ms: unix_now_ms(),
            }),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let _ = sender
                    .send(Err(Status::from(Error::RevocationStreamLagged)))
                    .await;
                return "receiver fell behind";
            }
            Err(broadcast::error::RecvError::Closed) => return "server shutting down",
        };
        if sender.send(message).await.is_err() {
            return "client disconnected";
        }
    }
}

fn to_entry(revocation: &StoredRevocation) -> RevokedEntry {
    match revocation {
        StoredRevocation::Token {
            token_id,
            expires_at,
        } => RevokedEntry::Token {
            token_id: digest_of(token_id),
            expires_at: *expires_at,
        },
        StoredRevocation::Subject {
            subject,
            issued_at_or_before,
            expires_at,
        } => RevokedEntry::Subject {
            subject: digest_of(subject),
            issued_at_or_before: *issued_at_or_before,
            expires_at: *expires_at,
        },
    }
}

/// Starts, rotates and ends login sessions.
#[derive(Clone)]
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    users: Arc<dyn UserStore>,
    issuer: TokenIssuer,
    revoker: Revoker,
    refresh_ttl_secs: i64,
    max_sessions_per_user: usize,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("refresh_ttl_secs", &self.refresh_ttl_secs)
            .field("max_sessions_per_user", &self.max_sessions_per_user)
            .finish_non_exhaustive()
    }
}

/// A refresh token and its lifetime in seconds.
#[derive(Debug)]
pub struct IssuedRefreshToken {
    /// The token, for its owner only.
    pub token: RefreshToken,
    /// Seconds from now until it expires.
    pub expires_in: i64,
}

impl Sessions {
    /// Creates the session handling. Refresh tokens live for `refresh_ttl`; `users` is read at
    /// each refresh, so a refreshed token carries the user's current role.
    pub fn new(
        store: Arc<dyn SessionStore>,
        users: Arc<dyn UserStore>,
        issuer: TokenIssuer,
        revoker: Revoker,
        refresh_ttl: Duration,
    ) -> Self {
        Self {
            store,
            users,
            issuer,
            revoker,
            refresh_ttl_secs: i64::try_from(refresh_ttl.as_secs()).unwrap_or(i64::MAX),
            max_sessions_per_user: DEFAULT_MAX_SESSIONS_PER_USER,
        }
    }

    /// Sets the most live sessions one user may have; 0 is treated as 1. A login beyond the
    /// limit ends the user's oldest sessions and revokes their access tokens.
    pub fn with_max_sessions_per_user(mut self, limit: usize) -> Self {
        self.max_sessions_per_user = limit.max(1);
        self
    }

    /// Returns the revoker that records this service's revocations.
    pub fn revoker(&self) -> &Revoker {
        &self.revoker
    }

    /// Starts a session for `subject`, whose first access token is `access`, and returns its
    /// first refresh token. `authenticated_since` is when the credential check began: if the
    /// user's tokens were revoked since, the session is ended at once and the call fails with
    /// [`Error::AccountChanged`], so the caller must withhold `access` too.
    pub async fn start(
        &self,
        subject: &str,
        access: &IssuedToken,
        authenticated_since: Instant,
    ) -> Result<IssuedRefreshToken, Error> {
        // UUIDv7 ids sort by creation time, which orders a user's sessions for the limit.
        let family_id = uuid::Uuid::now_v7().to_string();
        let (token, first) = self.new_refresh_token(access)?;
        self.store
            .create_session(&family_id, subject, &first)
            .await?;
        if self.revoker.revoked_since(subject, authenticated_since) {
            self.end_session(&family_id).await?;
            tracing::info!(
                session.id = %family_id,
                user.name = subject,
                "login withheld: the account changed while its password was checked"
            );
            return Err(Error::AccountChanged);
        }
        tracing::info!(session.id = %family_id, token.id = %access.token_id, "session started");
        self.end_sessions_beyond_limit(subject, &family_id).await?;
        Ok(IssuedRefreshToken {
            token,
            expires_in: self.refresh_ttl_secs,
        })
    }

    /// Ends `subject`'s oldest sessions while the user has more than the limit, and revokes the
    /// access tokens issued in them. The session `newest`, just started, is never ended, even
    /// when a clock set back gave it an id that sorts first.
    async fn end_sessions_beyond_limit(&self, subject: &str, newest: &str) -> Result<(), Error> {
        let oldest = self
            .store
            .sessions_beyond(subject, self.max_sessions_per_user, newest)
            .await?;
        for family_id in &oldest {
            let live = self.store.end_session(family_id, unix_now()).await?;
            self.revoker.revoke_tokens(&live).await?;
            tracing::info!(
                session.id = %family_id,
                user.name = subject,
                sessions.limit = self.max_sessions_per_user,
                tokens.revoked = live.len(),
                "oldest session ended: the user has more sessions than the limit"
            );
        }
        Ok(())
    }

    /// Exchanges `presented` for a new access token and refresh token.
    ///
    /// Every failure is [`Error::InvalidRefreshToken`], so the client learns only that it must
    /// log in again; the log records the cause. A token used before revokes its whole session.
    pub async fn refresh(&self, presented: RefreshToken) -> Result<RefreshTokenResponse, Error> {
        let started = Instant::now();
        if presented.expose().is_empty() || presented.expose().len() > MAX_REFRESH_TOKEN_LEN {
            return Err(self.reject("malformed", None));
        }
        let digest = presented.digest();
        let Some(state) = self.store.refresh_token(&digest).await? else {
            return Err(self.reject("unknown", None));
        };
        tracing::Span::current().record("session.id", state.family_id.as_str());
        if state.used {
            self.revoke_reused(&state.family_id).await?;
            return Err(self.reject("reused", Some(&state.family_id)));
        }
        if state.expires_at < unix_now() {
            return Err(self.reject("expired", Some(&state.family_id)));
        }

        let role = match self.users.get(&state.subject).await? {
            Some(user) if !user.disabled => user.role,
            _ => {
                self.end_session(&state.family_id).await?;
                return Err(self.reject("user disabled or deleted", Some(&state.family_id)));
            }
        };
        let access = self.issuer.issue(&state.subject, role)?;
        let (token, next) = self.new_refresh_token(&access)?;

        match self
            .store
            .rotate_refresh_token(&digest, &next, unix_now())
            .await?
        {
            Rotation::Rotated => {}
            Rotation::Reused => {
                // Another exchange of the same token won the race.
                self.revoke_reused(&state.family_id).await?;
                return Err(self.reject("reused", Some(&state.family_id)));
            }
            Rotation::Invalid => {
                return Err(self.reject("session ended", Some(&state.family_id)));
            }
        }
        // A revocation of the user's tokens that ran meanwhile may not cover this new token.
        if self.revoker.revoked_since(&state.subject, started) {
            self.end_session(&state.family_id).await?;
            return Err(self.reject("user changed", Some(&state.family_id)));
        }
        tracing::info!(
            session.id = %state.family_id,
            token.id = %access.token_id,
            "refresh token rotated"
        );

        Ok(RefreshTokenResponse {
            access_token: access.access_token,
            token_type: TOKEN_TYPE.to_owned(),
            expires_in: access.expires_in,
            refresh_token: token.expose().to_owned(),
            refresh_expires_in: self.refresh_ttl_secs,
        })
    }

    /// Ends the session of the caller's access token and revokes that token and every other
    /// live access token of the session. A token issued outside a session is revoked alone.
    pub async fn logout(&self, caller: &Identity) -> Result<(), Error> {
        let mut revoked = vec![AccessTokenRef {
            token_id: caller.token_id.clone(),
            expires_at: caller.expires_at,
        }];
        let session = self.store.session_of_access_token(&caller.token_id).await?;
        if let Some(family_id) = &session {
            revoked.extend(self.store.end_session(family_id, unix_now()).await?);
        }
        self.revoker.revoke_tokens(&revoked).await?;
        tracing::info!(
            session.id = session.as_deref().unwrap_or(""),
            token.id = %caller.token_id,
            tokens.revoked = revoked.len(),
            "logged out"
        );
        Ok(())
    }

    fn new_refresh_token(
        &self,
        access: &IssuedToken,
    ) -> Result<(RefreshToken, NewRefreshToken), Error> {
        let now = unix_now();
        let token = RefreshToken::generate()?;
        let record = NewRefreshToken {
            digest: token.digest(),
            expires_at: now.saturating_add(self.refresh_ttl_secs),
            access_token: AccessTokenRef {
                token_id: access.token_id.clone(),
                // One second more, because the issuer read the clock before this did.
                expires_at: now.saturating_add(access.expires_in).saturating_add(1),
            },
        };
        Ok((token, record))
    }

    async fn end_session(&self, family_id: &str) -> Result<(), Error> {
        let live = self.store.end_session(family_id, unix_now()).await?;
        self.revoker.revoke_tokens(&live).await
    }

    async fn revoke_reused(&self, family_id: &str) -> Result<(), Error> {
        tracing::warn!(
            session.id = %family_id,
            "a used refresh token was presented again; revoking its session"
        );
        self.end_session(family_id).await
    }

    fn reject(&self, reason: &'static str, family_id: Option<&str>) -> Error {
        tracing::info!(
            session.id = family_id.unwrap_or(""),
            reason,
            "refresh token rejected"
        );
        Error::InvalidRefreshToken
    }
}

/// Returns the current time in milliseconds since the Unix epoch, or 0 if the clock is before it.
fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}
