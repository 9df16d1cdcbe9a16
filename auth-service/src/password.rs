//! Argon2id password hashing, run off the async runtime with bounded concurrency.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use argon2::password_hash::{Output, ParamsString, PasswordHash, Salt, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use school_guard::threads::WorkerThreads;
use tokio::sync::Semaphore;
use unicode_normalization::UnicodeNormalization as _;
use zeroize::Zeroizing;

use crate::error::Error;

/// The longest accepted password, in bytes of UTF-8.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The shortest accepted new password, in Unicode characters. NIST SP 800-63B (section 5.1.1.1)
/// sets 8 as the minimum for passwords that users choose.
pub const MIN_NEW_PASSWORD_CHARS: usize = 8;

/// Passwords too common to accept as new ones, one per line, compared in lower case.
static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> = LazyLock::new(|| {
    include_str!("../common-passwords.txt")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .collect()
});

/// The highest Argon2 memory cost, in KiB, for new hashes and for stored ones: 1 GiB. A hashing
/// thread keeps the memory of the largest cost it has met, so this bounds what one thread holds.
pub const MAX_MEMORY_KIB: u32 = 1024 * 1024;

/// Salt length in bytes; 16 is the length RFC 9106 recommends.
const SALT_BYTES: usize = 16;

/// How many operations may wait for a permit, per permit, unless
/// [`PasswordHasher::with_queue_limit`] sets another limit. At about 13 ms a hash (OWASP minimum
/// parameters on one core of a 2-core cloud VM), four waiters per permit wait at most about 65 ms.
pub const DEFAULT_QUEUE_PER_PERMIT: usize = 4;

/// The scheduling niceness of the hashing threads unless configured otherwise: a login may
/// wait a little longer when the CPUs are busy, so token checks are not delayed by hashing.
pub const DEFAULT_HASH_NICE: i32 = school_guard::threads::DEFAULT_NICE;

/// A password in memory: zeroized on drop, printed as `[redacted]`.
#[derive(Clone)]
pub struct Password(Zeroizing<String>);

impl Password {
    /// Wraps a password; the caller's `String` moves in and is zeroized with it.
    pub fn new(password: String) -> Self {
        Self(Zeroizing::new(password))
    }

    /// Returns the password text, for hashing or verification only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Returns the password in Unicode Normalization Form KC, the form that is hashed and
    /// verified. NIST SP 800-63B (section 5.1.1.2) suggests NFKC or NFKD so that one password
    /// typed on two systems, such as "é" as one code point or as "e" plus a combining accent,
    /// or a full-width "Ａ" and "A", gives the same bytes. Length limits apply to the text as
    /// received, before normalization.
    pub fn normalized(&self) -> Zeroizing<String> {
        Zeroizing::new(self.0.nfkc().collect())
    }

    /// Checks the length limits of the proto contract: 1 to [`MAX_PASSWORD_BYTES`] bytes.
    pub fn validate(&self) -> Result<(), Error> {
        if self.0.is_empty() || self.0.len() > MAX_PASSWORD_BYTES {
            return Err(Error::InvalidArgument {
                field: "password",
                reason: "must be 1 to 1024 bytes",
            });
        }
        Ok(())
    }
}

impl Password {
    /// Checks a password that is about to be set, following NIST SP 800-63B: at least
    /// [`MIN_NEW_PASSWORD_CHARS`] characters, at most [`MAX_PASSWORD_BYTES`] bytes, and not on
    /// the project's list of common passwords (`common-passwords.txt`, compared without regard
    /// to case). There are no composition rules. `field` names the password in the error.
    ///
    /// Existing passwords are checked at login with [`Password::validate`] only, so a user
    /// whose password predates these rules can still log in and change it.
    pub fn validate_new(&self, field: &'static str) -> Result<(), Error> {
        let invalid = |reason| Err(Error::InvalidArgument { field, reason });
        if self.0.len() > MAX_PASSWORD_BYTES {
            return invalid("must be at most 1024 bytes");
        }
        if self.0.chars().count() < MIN_NEW_PASSWORD_CHARS {
            return invalid("must be at least 8 characters");
        }
        if COMMON_PASSWORDS.contains(self.0.to_lowercase().as_str()) {
            return invalid("is too common; choose a longer or less predictable password");
        }
        Ok(())
    }
}

impl From<String> for Password {
    fn from(password: String) -> Self {
        Self::new(password)
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password([redacted])")
    }
}

/// Argon2id cost parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashParams {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism (lanes).
    pub parallelism: u32,
}

impl Default for HashParams {
    /// Returns the OWASP Password Storage Cheat Sheet minimum for Argon2id:
    /// m = 19456 KiB, t = 2, p = 1.
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl HashParams {
    /// Converts to argon2 parameters, failing when argon2 rejects a value.
    pub fn to_argon2(self) -> Result<Params, argon2::Error> {
        Params::new(self.memory_kib, self.iterations, self.parallelism, None)
    }
}

/// Hashes and verifies passwords with Argon2id.
///
/// Each operation runs on one of `concurrency` dedicated threads while it owns a semaphore
/// permit. Every thread keeps its Argon2 memory between operations, so hashing uses at most
/// `concurrency` times the memory cost, however many logins arrive. Later requests wait for a
/// permit, up to the queue limit. Beyond it they fail at once with [`Error::Overloaded`], so the
/// excess of a login flood is rejected without delay.
#[derive(Clone)]
pub struct PasswordHasher {
    params: Params,
    /// The hashing threads, each with the Argon2 memory it keeps between hashes. Argon2 fills
    /// that memory completely for every hash, so reusing one buffer per thread costs nothing.
    /// With a fresh allocation per hash on tokio's blocking pool, the resident size grew in
    /// steps of the memory cost under a login load. Reused buffers keep it flat.
    threads: Arc<WorkerThreads<Vec<Block>>>,
    permits: Arc<Semaphore>,
    /// The operations waiting for a permit now.
    waiting: Arc<AtomicUsize>,
    queue_limit: usize,
    /// A hash of a random password, verified when the user does not exist so that an unknown
    /// username costs as much time as a wrong password.
    dummy_hash: Arc<str>,
}

impl fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("params", &self.params)
            .field("available_permits", &self.permits.available_permits())
            .field("waiting", &self.waiting.load(Ordering::Relaxed))
            .field("queue_limit", &self.queue_limit)
            .finish_non_exhaustive()
    }
}

impl PasswordHasher {
    /// Creates a hasher and computes its dummy hash once, off the runtime.
    ///
    /// `concurrency` is the number of hashing threads, and so of hashes that may run at once; 0
    /// is treated as 1. Up to [`DEFAULT_QUEUE_PER_PERMIT`] operations per permit may wait for one.
    pub async fn new(params: HashParams, concurrency: usize) -> Result<Self, Error> {
        Self::with_thread_nice(params, concurrency, DEFAULT_HASH_NICE).await
    }

    /// Creates a hasher like [`PasswordHasher::new`] whose threads run `nice` steps of niceness
    /// below the process (0 to 19, where 0 is the process's own priority).
    pub async fn with_thread_nice(
        params: HashParams,
        concurrency: usize,
        nice: i32,
    ) -> Result<Self, Error> {
        let params = params
            .to_argon2()
            .map_err(|error| Error::PasswordHash(argon2::password_hash::Error::from(error)))?;
        let concurrency = concurrency.max(1);
        let mut hasher = Self {
            threads: Arc::new(
                WorkerThreads::start("argon2", concurrency, nice, Vec::new).map_err(|source| {
                    Error::Io {
                        operation: "start the password hashing threads",
                        source,
                    }
                })?,
            ),
            params,
            permits: Arc::new(Semaphore::new(concurrency)),
            waiting: Arc::new(AtomicUsize::new(0)),
            queue_limit: concurrency.saturating_mul(DEFAULT_QUEUE_PER_PERMIT),
            dummy_hash: Arc::from(""),
        };

        let mut random = Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(random.as_mut())
            .map_err(|_| Error::Crypto("generate random bytes"))?;
        let dummy_password = Password::new(base64_encode(random.as_ref()));
        hasher.dummy_hash = Arc::from(hasher.hash(dummy_password).await?);

        Ok(hasher)
    }

    /// Sets how many operations may wait for a permit before new ones fail with
    /// [`Error::Overloaded`]; 0 rejects every operation that finds no permit free.
    pub fn with_queue_limit(mut self, limit: usize) -> Self {
        self.queue_limit = limit;
        self
    }

    /// Returns the number of operations waiting for a permit now, the depth of the hashing
    /// queue.
    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Hashes a password with a fresh random salt and returns the PHC string.
    pub async fn hash(&self, password: Password) -> Result<String, Error> {
        let mut salt = [0u8; SALT_BYTES];
        aws_lc_rs::rand::fill(&mut salt).map_err(|_| Error::Crypto("generate random bytes"))?;
        let salt = SaltString::encode_b64(&salt).map_err(Error::PasswordHash)?;

        let settings = self.settings();
        self.run_on_worker(move |memory| {
            settings
                .compute(&password, salt.as_salt(), memory)
                .map(|hash| hash.to_string())
                .map_err(Error::PasswordHash)
        })
        .await
    }

    /// Verifies a password against a stored PHC string, or against the dummy hash when
    /// `stored_hash` is `None`, in which case the result is always `false`.
    ///
    /// The stored hash's own algorithm, version and parameters apply, so hashes made with older
    /// settings still verify. The outputs are compared in constant time.
    pub async fn verify(
        &self,
        password: Password,
        stored_hash: Option<&str>,
    ) -> Result<bool, Error> {
        let user_exists = stored_hash.is_some();
        let phc: Arc<str> = match stored_hash {
            Some(hash) => Arc::from(hash),
            None => Arc::clone(&self.dummy_hash),
        };

        let matches = self
            .run_on_worker(move |memory| {
                let stored = PasswordHash::new(&phc).map_err(Error::PasswordHash)?;
                let (Some(salt), Some(expected)) = (stored.salt, stored.hash) else {
                    return Ok(false);
                };
                let computed = Settings::of(&stored)
                    .and_then(|settings| settings.compute(&password, salt, memory))
                    .map_err(Error::PasswordHash)?;
                // `Output` compares in constant time.
                Ok(computed.hash == Some(expected))
            })
            .await?;

        Ok(matches && user_exists)
    }

    /// Returns whether `stored_hash` was made with other settings than new hashes get: another
    /// algorithm or version, or other Argon2 parameters. Such a hash is replaced on the next
    /// successful login. A hash that does not parse needs no rehash here, because it cannot
    /// verify.
    pub fn needs_rehash(&self, stored_hash: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(stored_hash) else {
            return false;
        };
        let current_algorithm = parsed.algorithm.as_str() == Algorithm::Argon2id.ident().as_str();
        let current_version = parsed.version == Some(Version::V0x13.into());
        let current_params = Params::try_from(&parsed).is_ok_and(|params| {
            params.m_cost() == self.params.m_cost()
                && params.t_cost() == self.params.t_cost()
                && params.p_cost() == self.params.p_cost()
        });
        !(current_algorithm && current_version && current_params)
    }

    fn settings(&self) -> Settings {
        Settings {
            algorithm: Algorithm::Argon2id,
            version: Version::V0x13,
            params: self.params.clone(),
        }
    }

    /// Runs `work` on a hashing thread once a permit is free, giving it that thread's memory,
    /// which is empty until the thread's first hash.
    async fn run_on_worker<T, F>(&self, work: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Vec<Block>) -> Result<T, Error> + Send + 'static,
    {
        let permit = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let place = WaitingPlace::take(&self.waiting, self.queue_limit)?;
                // Acquiring fails only on a closed semaphore, and nothing closes this one.
                let permit = Arc::clone(&self.permits)
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::Crypto("password hashing queue closed"))?;
                drop(place);
                permit
            }
        };

        // The permit goes with the work, so it is held until the hash ends, also when the
        // caller has stopped waiting: the number of running hashes never exceeds the permits.
        self.threads
            .run(move |memory: &mut Vec<Block>| {
                let result = work(memory);
                drop(permit);
                result
            })
            .await
            .map_err(|_| Error::HashWorker)?
    }
}

/// The settings of one Argon2 computation: those of new hashes, or those a stored hash names.
struct Settings {
    algorithm: Algorithm,
    version: Version,
    params: Params,
}

impl Settings {
    /// Reads the settings a stored hash was made with.
    fn of(stored: &PasswordHash<'_>) -> Result<Settings, argon2::password_hash::Error> {
        Ok(Settings {
            algorithm: Algorithm::try_from(stored.algorithm)?,
            version: stored
                .version
                .map(Version::try_from)
                .transpose()?
                .unwrap_or_default(),
            params: Params::try_from(stored)?,
        })
    }

    /// Computes the hash of `password` with `salt` in `memory`, a hashing thread's own.
    ///
    /// `memory` grows to the memory cost when it is smaller, and keeps that size, so a thread
    /// keeps the largest cost it has met, the configured one or that of a stored hash made
    /// with more, up to [`MAX_MEMORY_KIB`]. A stored hash above that limit fails to verify with
    /// an error, because computing it would take more memory than any thread may keep.
    fn compute<'a>(
        &self,
        password: &Password,
        salt: Salt<'a>,
        memory: &mut Vec<Block>,
    ) -> Result<PasswordHash<'a>, argon2::password_hash::Error> {
        let blocks = self.params.block_count();
        if memory.len() < blocks {
            if self.params.m_cost() > MAX_MEMORY_KIB {
                return Err(argon2::password_hash::Error::ParamValueInvalid(
                    argon2::password_hash::errors::InvalidValue::TooLong,
                ));
            }
            *memory = vec![Block::default(); blocks];
        }
        // Reused memory needs no reset: Argon2 writes every block before it reads it.
        let argon2 = Argon2::new(self.algorithm, self.version, self.params.clone());
        let mut salt_buffer = [0u8; Salt::MAX_LENGTH];
        let salt_bytes = salt.decode_b64(&mut salt_buffer)?;
        let normalized = password.normalized();
        let output_len = self
            .params
            .output_len()
            .unwrap_or(Params::DEFAULT_OUTPUT_LEN);
        let output = Output::init_with(output_len, |out| {
            let password = normalized.as_bytes();
            argon2
                .hash_password_into_with_memory(password, salt_bytes, out, &mut memory[..blocks])
                .map_err(Into::into)
        })?;
        Ok(PasswordHash {
            algorithm: self.algorithm.ident(),
            version: Some(self.version.into()),
            params: ParamsString::try_from(&self.params)?,
            salt: Some(salt),
            hash: Some(output),
        })
    }
}

/// A place in the queue of operations waiting for a permit, given back on drop, also when the
/// waiting request is cancelled.
struct WaitingPlace<'a>(&'a AtomicUsize);

impl<'a> WaitingPlace<'a> {
    /// Takes a place if fewer than `limit` operations wait, or fails with [`Error::Overloaded`].
    fn take(waiting: &'a AtomicUsize, limit: usize) -> Result<Self, Error> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |count| {
                (count < limit).then_some(count + 1)
            })
            .map_err(|_| Error::Overloaded)?;
        Ok(WaitingPlace(waiting))
    }
}

impl Drop for WaitingPlace<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_passwords_follow_nist_rules() {
        let rejected = [
            ("", "must be at least 8 characters"),
            ("seven77", "must be at least 8 characters"),
            ("password", "is too common"),
            ("PassWord1", "is too common"),
            ("qwertyuiop", "is too common"),
        ];
        for (text, reason) in rejected {
            let checked = Password::new(text.to_owned()).validate_new("password");
            let message = checked
                .err()
                .map(|error| error.to_string())
                .unwrap_or_default();
            assert!(message.contains(reason), "{text:?} gave {message:?}");
        }
        let too_long = Password::new("x".repeat(MAX_PASSWORD_BYTES + 1));
        assert!(too_long.validate_new("password").is_err());

        // Length decides, not composition: lower-case words and multi-byte text pass.
        for text in [
            "correct horse battery staple",
            "eightchr",
            "ünïcödé!",
            &"x".repeat(MAX_PASSWORD_BYTES),
        ] {
            let checked = Password::new(text.to_owned()).validate_new("password");
            assert!(checked.is_ok(), "{text:?} was rejected");
        }
    }

    #[test]
    fn common_password_list_is_loaded() {
        assert!(COMMON_PASSWORDS.len() > 300);
        assert!(COMMON_PASSWORDS.contains("iloveyou"));
        assert!(!COMMON_PASSWORDS.iter().any(|entry| entry.starts_with('#')));
    }

    /// Cheap parameters so the tests run fast; the production defaults are tested separately.
    fn test_params() -> HashParams {
        HashParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        }
    }

    #[test]
    fn default_params_follow_owasp() {
        let params = HashParams::default();

        assert_eq!(params.memory_kib, 19_456);
        assert_eq!(params.iterations, 2);
        assert_eq!(params.parallelism, 1);
    }

    #[tokio::test]
    async fn hash_then_verify() -> Result<(), Error> {
        let hasher = PasswordHasher::new(test_params(), 2).await?;

        let hash = hasher.hash(Password::new("correct horse".into())).await?;

        assert!(hash.starts_with("$argon2id$v=19$m=64,t=1,p=1$"));
        assert!(
            hasher
                .verify(Password::new("correct horse".into()), Some(&hash))
                .await?
        );
        assert!(
            !hasher
                .verify(Password::new("wrong horse".into()), Some(&hash))
                .await?
        );
        Ok(())
    }

    #[tokio::test]
    async fn same_password_gets_different_salts() -> Result<(), Error> {
        let hasher = PasswordHasher::new(test_params(), 1).await?;

        let first = hasher.hash(Password::new("pw".into())).await?;
        let second = hasher.hash(Password::new("pw".into())).await?;

        assert_ne!(first, second);
        Ok(())
    }

    #[tokio::test]
    async fn verify_without_user_is_false() -> Result<(), Error> {
        let hasher = PasswordHasher::new(test_params(), 1).await?;

        let matches = hasher
            .verify(Password::new("anything".into()), None)
            .await?;

        assert!(!matches);
        Ok(())
    }

    #[tokio::test]
    async fn verify_uses_stored_params() -> Result<(), Error> {
        let old = PasswordHasher::new(test_params(), 1).await?;
        let hash = old.hash(Password::new("pw".into())).await?;
        let stronger = HashParams {
            memory_kib: 128,
            iterations: 2,
            parallelism: 1,
        };
        let new = PasswordHasher::new(stronger, 1).await?;

        assert!(new.verify(Password::new("pw".into()), Some(&hash)).await?);
        Ok(())
    }

    #[tokio::test]
    async fn hashes_match_the_argon2_crate_both_ways() -> Result<(), Error> {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};

        let params = test_params()
            .to_argon2()
            .map_err(|error| Error::PasswordHash(error.into()))?;
        let reference = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let hasher = PasswordHasher::new(test_params(), 1).await?;

        // A hash stored before the hasher kept its own memory still verifies.
        let salt = SaltString::encode_b64(&[9u8; SALT_BYTES]).map_err(Error::PasswordHash)?;
        let stored = reference
            .hash_password(b"pw", &salt)
            .map_err(Error::PasswordHash)?
            .to_string();
        assert!(
            hasher
                .verify(Password::new("pw".into()), Some(&stored))
                .await?
        );
        assert!(
            !hasher
                .verify(Password::new("pv".into()), Some(&stored))
                .await?
        );

        // A hash made now verifies with the crate's own verifier.
        let new_hash = hasher.hash(Password::new("pw".into())).await?;
        let parsed = PasswordHash::new(&new_hash).map_err(Error::PasswordHash)?;
        assert!(reference.verify_password(b"pw", &parsed).is_ok());
        assert!(reference.verify_password(b"pv", &parsed).is_err());
        Ok(())
    }

    #[tokio::test]
    async fn stored_settings_apply_whatever_the_configured_ones() -> Result<(), Error> {
        use argon2::password_hash::PasswordHasher as _;

        let hasher = PasswordHasher::new(test_params(), 1).await?;
        let salt = SaltString::encode_b64(&[3u8; SALT_BYTES]).map_err(Error::PasswordHash)?;
        let stored = |algorithm, version, memory_kib| -> Result<String, Error> {
            let params = HashParams {
                memory_kib,
                ..test_params()
            }
            .to_argon2()
            .map_err(|error| Error::PasswordHash(error.into()))?;
            Ok(Argon2::new(algorithm, version, params)
                .hash_password(b"pw", &salt)
                .map_err(Error::PasswordHash)?
                .to_string())
        };

        // More memory than the configured cost, another algorithm, the older version.
        for hash in [
            stored(Algorithm::Argon2id, Version::V0x13, 256)?,
            stored(Algorithm::Argon2i, Version::V0x13, 64)?,
            stored(Algorithm::Argon2d, Version::V0x10, 64)?,
        ] {
            assert!(
                hasher
                    .verify(Password::new("pw".into()), Some(&hash))
                    .await?,
                "{hash} does not verify"
            );
            assert!(
                !hasher
                    .verify(Password::new("pv".into()), Some(&hash))
                    .await?
            );
        }
        // The thread kept the largest memory it met, so the next verification allocates none.
        let kept_blocks = hasher
            .threads
            .run(|memory: &mut Vec<Block>| memory.len())
            .await
            .map_err(|_| Error::HashWorker)?;
        assert_eq!(kept_blocks, 256);
        Ok(())
    }

    #[tokio::test]
    async fn damaged_stored_hashes_never_verify() -> Result<(), Error> {
        let hasher = PasswordHasher::new(test_params(), 1).await?;
        let good = hasher.hash(Password::new("pw".into())).await?;
        let without_output = good
            .rsplit_once('$')
            .map_or("", |(head, _)| head)
            .to_owned();
        let other_output = format!("{without_output}$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");

        for damaged in [
            String::new(),
            "not a PHC string".to_owned(),
            good.replacen("argon2id", "scrypt", 1),
            good.replacen("m=64", "m=1", 1),
            other_output,
        ] {
            let verified = hasher
                .verify(Password::new("pw".into()), Some(&damaged))
                .await;
            assert!(!matches!(verified, Ok(true)), "{damaged:?} verified");
        }
        assert!(
            !hasher
                .verify(Password::new("pw".into()), Some(&without_output))
                .await
                .unwrap_or(false),
            "a hash without its output verified"
        );
        let beyond_limit = good.replacen("m=64", &format!("m={}", MAX_MEMORY_KIB + 1), 1);
        let rejected = hasher
            .verify(Password::new("pw".into()), Some(&beyond_limit))
            .await;
        assert!(
            rejected.is_err(),
            "a memory cost over the limit: {rejected:?}"
        );
        Ok(())
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn hashing_threads_run_at_the_configured_niceness() -> Result<(), Error> {
        let niceness = || rustix::process::getpriority_process(Some(rustix::thread::gettid()));
        let own = niceness().map_err(|_| Error::Crypto("read niceness"))?;
        let hasher = PasswordHasher::with_thread_nice(test_params(), 1, 7).await?;

        let hashing = hasher
            .threads
            .run(move |_memory: &mut Vec<Block>| niceness())
            .await
            .map_err(|_| Error::HashWorker)?;

        assert_eq!(hashing.ok(), Some((own + 7).min(19)));
        Ok(())
    }

    #[tokio::test]
    async fn invalid_params_are_rejected() {
        let params = HashParams {
            memory_kib: 1,
            iterations: 1,
            parallelism: 1,
        };

        assert!(PasswordHasher::new(params, 1).await.is_err());
    }

    #[tokio::test]
    async fn full_queue_fails_fast_with_overloaded() -> Result<(), Error> {
        let hasher = PasswordHasher::new(test_params(), 1)
            .await?
            .with_queue_limit(1);
        let hash = hasher.hash(Password::new("pw".into())).await?;

        // Hold the only permit, so the next operation waits and the one after finds no place.
        let held = Arc::clone(&hasher.permits)
            .try_acquire_owned()
            .map_err(|_| Error::Crypto("permit"))?;
        let waiter = tokio::spawn({
            let hasher = hasher.clone();
            let hash = hash.clone();
            async move { hasher.verify(Password::new("pw".into()), Some(&hash)).await }
        });
        while hasher.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }

        let rejected = hasher.verify(Password::new("pw".into()), Some(&hash)).await;
        assert!(matches!(rejected, Err(Error::Overloaded)), "{rejected:?}");

        drop(held);
        let waited = waiter.await.map_err(Error::Task)?;
        assert!(waited?, "the queued operation runs once a permit is free");
        assert_eq!(hasher.waiting.load(Ordering::Acquire), 0);
        Ok(())
    }

    #[tokio::test]
    async fn cancelled_waiter_gives_its_place_back() -> Result<(), Error> {
        let hasher = PasswordHasher::new(test_params(), 1)
            .await?
            .with_queue_limit(1);
        let held = Arc::clone(&hasher.permits)
            .try_acquire_owned()
            .map_err(|_| Error::Crypto("permit"))?;

        let waiter = tokio::spawn({
            let hasher = hasher.clone();
            async move { hasher.hash(Password::new("pw".into())).await }
        });
        while hasher.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;

        assert_eq!(hasher.waiting.load(Ordering::Acquire), 0);
        drop(held);
        Ok(())
    }

    #[tokio::test]
    async fn equivalent_unicode_encodings_match() -> Result<(), Error> {
        let hasher = PasswordHasher::new(test_params(), 1).await?;
        // "é" as one code point, and as "e" followed by U+0301 COMBINING ACUTE ACCENT.
        let composed = "caf\u{e9} au lait";
        let decomposed = "cafe\u{301} au lait";
        // Full-width Latin letters, as some input methods produce them, fold to ASCII in NFKC.
        let full_width = "\u{ff30}\u{ff41}\u{ff53}\u{ff53}";
        assert_ne!(composed.as_bytes(), decomposed.as_bytes());

        let hash = hasher.hash(Password::new(composed.into())).await?;
        let ascii_hash = hasher.hash(Password::new("Pass".into())).await?;

        assert!(
            hasher
                .verify(Password::new(decomposed.into()), Some(&hash))
                .await?
        );
        assert!(
            hasher
                .verify(Password::new(full_width.into()), Some(&ascii_hash))
                .await?
        );
        assert!(
            !hasher
                .verify(Password::new("cafe au lait".into()), Some(&hash))
                .await?,
            "dropping the accent is a different password"
        );
        Ok(())
    }

    #[tokio::test]
    async fn rehash_is_needed_only_for_other_params() -> Result<(), Error> {
        let old = PasswordHasher::new(test_params(), 1).await?;
        let stronger = HashParams {
            memory_kib: 128,
            ..test_params()
        };
        let new = PasswordHasher::new(stronger, 1).await?;
        let old_hash = old.hash(Password::new("pw".into())).await?;
        let new_hash = new.hash(Password::new("pw".into())).await?;
        use argon2::password_hash::PasswordHasher as _;
        let argon2i_hash = Argon2::new(
            Algorithm::Argon2i,
            Version::V0x13,
            test_params()
                .to_argon2()
                .map_err(|e| Error::PasswordHash(e.into()))?,
        )
        .hash_password(
            b"pw",
            &SaltString::encode_b64(&[7u8; SALT_BYTES]).map_err(Error::PasswordHash)?,
        )
        .map_err(Error::PasswordHash)?
        .to_string();

        assert!(new.needs_rehash(&old_hash));
        assert!(!new.needs_rehash(&new_hash));
        assert!(
            old.needs_rehash(&argon2i_hash),
            "another algorithm is replaced"
        );
        assert!(!new.needs_rehash("not a PHC string"));
        Ok(())
    }

    #[test]
    fn password_debug_is_redacted() {
        let password = Password::new("hunter2".into());

        assert_eq!(format!("{password:?}"), "Password([redacted])");
    }

    #[test]
    fn password_length_limits() {
        assert!(Password::new(String::new()).validate().is_err());
        assert!(Password::new("a".repeat(1024)).validate().is_ok());
        assert!(Password::new("a".repeat(1025)).validate().is_err());
    }
}
