//! The scenarios: each runs a reference (A) and a measured case (B) in turn, A B A B, and
//! compares their medians.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use school_guard::keys::KeySet;
use school_guard::remote::KeyFetcher;
use school_guard::verify::{TokenVerifier, VerifierConfig};
use school_proto::auth::v1::auth_service_client::AuthServiceClient;
use school_proto::auth::v1::{LoginRequest, ValidateTokenRequest};
use school_proto::student::v1::student_service_client::StudentServiceClient;
use school_proto::student::v1::{DeleteStudentRequest, GetStudentRequest};
use tonic::Code;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use crate::BenchError;
use crate::load::{ProcessProbe, RunStats, closed_loop, open_loop};
use crate::report::{Row, median};
use crate::serve::Setup;

/// The load and duration of each run.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// The length of one run.
    pub run: Duration,
    /// Runs of each side; the report shows medians.
    pub runs: usize,
    /// HTTP/2 connections per target.
    pub connections: usize,
    /// Calls in flight at once, spread over the connections.
    pub concurrency: usize,
}

/// Connections to every server of the server process.
pub struct Bench {
    settings: Settings,
    setup: Arc<Setup>,
    probe: ProcessProbe,
    guarded: Arc<Vec<Channel>>,
    baseline: Arc<Vec<Channel>>,
    auth: Arc<Vec<Channel>>,
    echo: Arc<Vec<Channel>>,
    admin: Arc<Vec<AsciiMetadataValue>>,
}

/// The token a call sends.
#[derive(Clone, Copy)]
enum Pick {
    /// Each worker sends its own token on every call.
    PerWorker,
    /// Each call sends the next token of the list.
    PerCall,
}

impl Bench {
    /// Opens `settings.connections` connections to each server of `setup`, which runs as
    /// process `server_pid`.
    pub async fn connect(
        settings: Settings,
        setup: Setup,
        server_pid: u32,
    ) -> Result<Bench, BenchError> {
        let admin = bearer_values(&setup.admin_tokens)?;
        Ok(Bench {
            guarded: Arc::new(channels(setup.guarded, settings.connections).await?),
            baseline: Arc::new(channels(setup.baseline, settings.connections).await?),
            auth: Arc::new(channels(setup.auth, settings.connections).await?),
            echo: Arc::new(channels(setup.echo, settings.connections).await?),
            admin: Arc::new(admin),
            probe: ProcessProbe::new(server_pid),
            setup: Arc::new(setup),
            settings,
        })
    }

    /// Returns the names of every scenario, in the order [`Bench::run`] takes.
    pub fn scenario_names() -> &'static [&'static str] {
        &[
            "reused", "cold", "hostile", "badsig", "validate", "login", "denial",
        ]
    }

    /// Runs the scenario called `name`.
    pub async fn run(&self, name: &str) -> Result<Row, BenchError> {
        match name {
            "reused" => Ok(self.reused().await),
            "cold" => self.cold().await,
            "hostile" => self.hostile().await,
            "badsig" => self.bad_signature().await,
            "validate" => Ok(self.validate().await),
            "login" => Ok(self.login_flood().await),
            "denial" => Ok(self.denial().await),
            other => Err(BenchError::UnknownScenario(other.to_owned())),
        }
    }

    async fn reused(&self) -> Row {
        let (baseline, guarded) = self
            .alternate(
                || self.get_student(false, Arc::clone(&self.admin), Pick::PerWorker),
                || self.get_student(true, Arc::clone(&self.admin), Pick::PerWorker),
            )
            .await;
        let mut row = Row::new(
            "guarded GetStudent, reused tokens",
            "baseline",
            baseline,
            "guarded",
            guarded,
        );
        row.target_throughput(0.95);
        row.target_p99(1.1);
        row.expect_codes(Code::Ok, Code::Ok);
        row
    }

    async fn cold(&self) -> Result<Row, BenchError> {
        let cold = Arc::new(bearer_values(&self.setup.cold_tokens)?);
        let verifier = self.raw_verifier().await?;
        let mut bounds = Vec::new();
        let mut baseline = Vec::new();
        let mut guarded = Vec::new();
        for _ in 0..self.settings.runs {
            baseline.push(
                self.measure(self.get_student(false, Arc::clone(&cold), Pick::PerCall))
                    .await,
            );
            guarded.push(
                self.measure(self.get_student(true, Arc::clone(&cold), Pick::PerCall))
                    .await,
            );
            bounds.push(raw_verifications_per_sec(&verifier, &self.setup.cold_tokens).await?);
        }
        let raw = median(&bounds);
        let served = median(&baseline.iter().map(|s| s.calls_per_sec).collect::<Vec<_>>());
        // A server on one core that verifies and then serves can reach at most this rate.
        let combined = 1.0 / (1.0 / raw + 1.0 / served);

        let mut row = Row::new(
            "every call a new valid token (cold)",
            "baseline",
            baseline,
            "guarded",
            guarded,
        );
        row.expect_codes(Code::Ok, Code::Ok);
        row.note(format!(
            "raw verification bound (TokenVerifier without cache, one core of the load \
             generator): {raw:.0}/s; verify-then-serve bound: {combined:.0}/s"
        ));
        row.target_against("verify-then-serve bound", combined, 0.9);
        row.note(format!(
            "guarded / raw verification bound: {:.2}",
            row.measured_calls() / raw
        ));
        Ok(row)
    }

    async fn hostile(&self) -> Result<Row, BenchError> {
        let hostile = Arc::new(bearer_values(&self.setup.hostile_tokens)?);
        let (baseline, guarded) = self
            .alternate(
                || self.get_student(false, Arc::clone(&hostile), Pick::PerCall),
                || self.get_student(true, Arc::clone(&hostile), Pick::PerCall),
            )
            .await;
        let mut row = Row::new(
            "hostile flood: malformed, expired, unknown kid, wrong issuer",
            "baseline",
            baseline,
            "guarded",
            guarded,
        );
        row.target_throughput(0.8);
        row.expect_codes(Code::Ok, Code::Unauthenticated);
        Ok(row)
    }

    async fn bad_signature(&self) -> Result<Row, BenchError> {
        let bad = Arc::new(bearer_values(&self.setup.bad_signature_tokens)?);
        // The legitimate caller gets a connection of its own; the flood uses the others.
        let legit_channel = Arc::new(vec![channel(self.setup.guarded).await?]);
        let legit = || {
            let call = get_student_call(
                Arc::clone(&legit_channel),
                Arc::clone(&self.setup),
                true,
                Arc::clone(&self.admin),
                Pick::PerWorker,
            );
            closed_loop(1, self.settings.run, call)
        };
        let flood_rates = std::sync::Mutex::new(Vec::new());
        let (alone, flooded) = self
            .alternate(legit, || async {
                let flood = self.get_student(true, Arc::clone(&bad), Pick::PerCall);
                let (legit_stats, flood_stats) = tokio::join!(legit(), flood);
                if let Ok(mut rates) = flood_rates.lock() {
                    rates.push((
                        flood_stats.calls_per_sec,
                        flood_stats.unexpected(Code::Unauthenticated),
                    ));
                }
                legit_stats
            })
            .await;
        let rates = flood_rates.into_inner().unwrap_or_default();
        let flood_rate = median(&rates.iter().map(|(rate, _)| *rate).collect::<Vec<_>>());
        let flood_unexpected: u64 = rates.iter().map(|(_, count)| count).sum();

        let mut row = Row::new(
            "bad-signature flood: p99 of a legitimate caller on its own connection",
            "alone",
            alone,
            "during flood",
            flooded,
        );
        row.target_p99(2.0);
        row.expect_codes(Code::Ok, Code::Ok);
        row.note(format!(
            "flood answered {flood_rate:.0} calls/s, all UNAUTHENTICATED except \
             {flood_unexpected}; each costs one signature check, as none is cached"
        ));
        Ok(row)
    }

    async fn validate(&self) -> Row {
        let (echo, validate) = self
            .alternate(|| self.echo_calls(), || self.validate_calls())
            .await;
        let mut row = Row::new(
            "ValidateToken, reused token, vs bare tonic health Check",
            "echo",
            echo,
            "ValidateToken",
            validate,
        );
        row.target_throughput(0.5);
        row.expect_codes(Code::Ok, Code::Ok);
        row
    }

    async fn login_flood(&self) -> Row {
        let capacity = self.login_capacity().await;
        let rate = 10.0 * capacity;
        let probe = self.probe;
        let idle_kib = probe.resident_kib().unwrap_or(0);
        let checks = || {
            let channels = Arc::new(vec![self.auth[0].clone()]);
            let token = self.setup.admin_tokens[0].clone();
            closed_loop(1, self.settings.run, move |_, _| {
                let mut client = AuthServiceClient::new(channels[0].clone());
                let token = token.clone();
                async move {
                    let request = ValidateTokenRequest { token };
                    code_of(client.validate_token(request).await)
                }
            })
        };
        let logins = std::sync::Mutex::new(Vec::new());
        let peak_kib = std::sync::atomic::AtomicU64::new(idle_kib);
        let (idle, flooded) = self
            .alternate(checks, || async {
                let flood = self.login_open_loop(rate);
                let sampler = async {
                    let deadline = Instant::now() + self.settings.run;
                    while Instant::now() < deadline {
                        if let Some(kib) = probe.resident_kib() {
                            peak_kib.fetch_max(kib, std::sync::atomic::Ordering::Relaxed);
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                };
                let (check_stats, (login_stats, skipped), ()) =
                    tokio::join!(checks(), flood, sampler);
                if let Ok(mut logins) = logins.lock() {
                    logins.push((login_stats, skipped));
                }
                check_stats
            })
            .await;

        let mut row = Row::new(
            "Login flood at 10x hashing capacity: p99 of ValidateToken on auth-service",
            "idle",
            idle,
            "during flood",
            flooded,
        );
        row.target_p99(2.0);
        row.expect_codes(Code::Ok, Code::Ok);
        let logins = logins.into_inner().unwrap_or_default();
        if let Some((stats, skipped)) = logins.get(logins.len() / 2) {
            row.note(format!(
                "hashing capacity {capacity:.0} logins/s; offered {rate:.0}/s; one run's \
                 Login codes {:?}, p50/p90/p99 {:.1}/{:.1}/{:.1} ms, {skipped} not sent \
                 (generator cap)",
                stats.codes,
                stats.p50_us / 1000.0,
                stats.p90_us / 1000.0,
                stats.p99_us / 1000.0
            ));
        }
        row.note(format!(
            "server process RSS: {} MiB before the first flood, peak {} MiB during floods",
            idle_kib / 1024,
            peak_kib.load(std::sync::atomic::Ordering::Relaxed) / 1024
        ));
        row
    }

    async fn denial(&self) -> Row {
        let teacher = Arc::new(
            bearer_values(std::slice::from_ref(&self.setup.teacher_token)).unwrap_or_default(),
        );
        let (allow, deny) = self
            .alternate(
                || self.get_student(true, Arc::clone(&self.admin), Pick::PerWorker),
                || {
                    let channels = Arc::clone(&self.guarded);
                    let setup = Arc::clone(&self.setup);
                    let teacher = Arc::clone(&teacher);
                    closed_loop(
                        self.settings.concurrency,
                        self.settings.run,
                        move |worker, _| {
                            let mut client = StudentServiceClient::new(
                                channels[worker % channels.len()].clone(),
                            );
                            let mut request = tonic::Request::new(DeleteStudentRequest {
                                id: setup.guarded_student_id.clone(),
                            });
                            if let Some(token) = teacher.first() {
                                request
                                    .metadata_mut()
                                    .insert("authorization", token.clone());
                            }
                            async move { code_of(client.delete_student(request).await) }
                        },
                    )
                },
            )
            .await;
        let mut row = Row::new(
            "denial path: teacher DeleteStudent vs admin GetStudent",
            "allow",
            allow,
            "deny",
            deny,
        );
        row.target_throughput(1.0);
        row.expect_codes(Code::Ok, Code::PermissionDenied);
        row
    }

    /// Runs `a` then `b`, `runs` times, measuring the server CPU time of each run.
    async fn alternate<FA, FutA, FB, FutB>(&self, a: FA, b: FB) -> (Vec<RunStats>, Vec<RunStats>)
    where
        FA: Fn() -> FutA,
        FutA: Future<Output = RunStats>,
        FB: Fn() -> FutB,
        FutB: Future<Output = RunStats>,
    {
        let mut first = Vec::with_capacity(self.settings.runs);
        let mut second = Vec::with_capacity(self.settings.runs);
        for _ in 0..self.settings.runs {
            first.push(self.measure(a()).await);
            second.push(self.measure(b()).await);
        }
        (first, second)
    }

    async fn measure(&self, run: impl Future<Output = RunStats>) -> RunStats {
        let before = self.probe.cpu_time();
        let mut stats = run.await;
        let after = self.probe.cpu_time();
        if let (Some(before), Some(after)) = (before, after) {
            let calls = stats.calls_per_sec * self.settings.run.as_secs_f64();
            if calls > 0.0 {
                let micros = after.saturating_sub(before).as_secs_f64() * 1e6;
                stats.server_cpu_us_per_call = Some(micros / calls);
            }
        }
        stats
    }

    fn get_student(
        &self,
        guarded: bool,
        tokens: Arc<Vec<AsciiMetadataValue>>,
        pick: Pick,
    ) -> impl Future<Output = RunStats> + use<> {
        let channels = if guarded {
            Arc::clone(&self.guarded)
        } else {
            Arc::clone(&self.baseline)
        };
        let call = get_student_call(channels, Arc::clone(&self.setup), guarded, tokens, pick);
        closed_loop(self.settings.concurrency, self.settings.run, call)
    }

    fn echo_calls(&self) -> impl Future<Output = RunStats> + use<> {
        let channels = Arc::clone(&self.echo);
        closed_loop(
            self.settings.concurrency,
            self.settings.run,
            move |worker, _| {
                let mut client = HealthClient::new(channels[worker % channels.len()].clone());
                async move {
                    let request = HealthCheckRequest {
                        service: String::new(),
                    };
                    code_of(client.check(request).await)
                }
            },
        )
    }

    fn validate_calls(&self) -> impl Future<Output = RunStats> + use<> {
        let channels = Arc::clone(&self.auth);
        let setup = Arc::clone(&self.setup);
        closed_loop(
            self.settings.concurrency,
            self.settings.run,
            move |worker, _| {
                let mut client = AuthServiceClient::new(channels[worker % channels.len()].clone());
                let tokens = &setup.admin_tokens;
                let token = tokens[worker % tokens.len()].clone();
                async move { code_of(client.validate_token(ValidateTokenRequest { token }).await) }
            },
        )
    }

    /// Measures how many logins a second auth-service completes when kept just busy.
    async fn login_capacity(&self) -> f64 {
        let channels = Arc::clone(&self.auth);
        let (username, password) = self.setup.login.clone();
        let stats = closed_loop(2, self.settings.run, move |worker, _| {
            let mut client = AuthServiceClient::new(channels[worker % channels.len()].clone());
            let request = LoginRequest {
                username: username.clone(),
                password: password.clone(),
            };
            async move { code_of(client.login(request).await) }
        })
        .await;
        stats.calls_per_sec.max(1.0)
    }

    fn login_open_loop(&self, rate: f64) -> impl Future<Output = (RunStats, u64)> + use<> {
        let channels = Arc::clone(&self.auth);
        let (username, password) = self.setup.login.clone();
        // Skip the first connection, which the ValidateToken caller uses.
        open_loop(rate, 10_000, self.settings.run, move |sequence| {
            let index = 1 + sequence % channels.len().saturating_sub(1).max(1);
            let mut client =
                AuthServiceClient::new(channels[index.min(channels.len() - 1)].clone());
            let request = LoginRequest {
                username: username.clone(),
                password: password.clone(),
            };
            async move { code_of(client.login(request).await) }
        })
    }

    /// Builds a verifier with the keys auth-service publishes and no cache, the bound that a
    /// server verifying every call could at best reach.
    async fn raw_verifier(&self) -> Result<TokenVerifier, BenchError> {
        let keys = KeySet::new();
        let fetcher = KeyFetcher::new(AuthServiceClient::new(self.auth[0].clone()), keys.clone());
        fetcher.fetch().await.map_err(BenchError::KeyFetch)?;
        let config = VerifierConfig {
            issuer: "school-auth".into(),
            audience: "school".into(),
            leeway: Duration::from_secs(5),
        };
        Ok(TokenVerifier::new(keys, config).with_cache_capacity(0))
    }
}

fn get_student_call(
    channels: Arc<Vec<Channel>>,
    setup: Arc<Setup>,
    guarded: bool,
    tokens: Arc<Vec<AsciiMetadataValue>>,
    pick: Pick,
) -> impl Fn(usize, usize) -> std::pin::Pin<Box<dyn Future<Output = Code> + Send>>
+ Clone
+ Send
+ Sync
+ 'static {
    move |worker, sequence| {
        let mut client = StudentServiceClient::new(channels[worker % channels.len()].clone());
        let id = if guarded {
            setup.guarded_student_id.clone()
        } else {
            setup.baseline_student_id.clone()
        };
        let index = match pick {
            Pick::PerWorker => worker,
            Pick::PerCall => sequence,
        };
        let mut request = tonic::Request::new(GetStudentRequest { id });
        if let Some(token) = tokens.get(index % tokens.len().max(1)) {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Box::pin(async move { code_of(client.get_student(request).await) })
    }
}

/// Verifies `tokens` in turn on a blocking thread for half a second and returns the rate.
async fn raw_verifications_per_sec(
    verifier: &TokenVerifier,
    tokens: &[String],
) -> Result<f64, BenchError> {
    let verifier = verifier.clone();
    let tokens: Vec<String> = tokens.to_vec();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut verified = 0usize;
        while started.elapsed() < Duration::from_millis(500) {
            for _ in 0..64 {
                let token = tokens
                    .get(verified % tokens.len().max(1))
                    .ok_or(BenchError::Missing("a cold token"))?;
                if verifier.verify(token).is_err() {
                    return Err(BenchError::Missing("a valid cold token"));
                }
                verified += 1;
            }
        }
        Ok(verified as f64 / started.elapsed().as_secs_f64())
    })
    .await
    .map_err(|_| BenchError::Missing("raw verification result"))?
}

fn code_of<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

fn bearer_values(tokens: &[String]) -> Result<Vec<AsciiMetadataValue>, BenchError> {
    tokens
        .iter()
        .map(|token| {
            MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| BenchError::Missing("an ASCII token"))
        })
        .collect()
}

async fn channel(addr: std::net::SocketAddr) -> Result<Channel, BenchError> {
    Channel::from_shared(format!("http://{addr}"))
        .map_err(|_| BenchError::Missing("a valid server URL"))?
        .connect()
        .await
        .map_err(BenchError::Connect)
}

async fn channels(addr: std::net::SocketAddr, count: usize) -> Result<Vec<Channel>, BenchError> {
    let mut opened = Vec::with_capacity(count.max(1));
    for _ in 0..count.max(1) {
        opened.push(channel(addr).await?);
    }
    Ok(opened)
}
