//! A bounded soak test on loopback against the real binaries: many concurrent clients mix
//! logins, token checks, creates, reads and deletes. Afterwards no call may have failed except
//! with the denials the policy prescribes, every acknowledged write must be in place, and the
//! resident memory of each service must have stayed flat once warmed up.
//!
//! `SOAK_SECS` sets the length of the run; the default keeps `cargo test` short.

// A failed step in a helper fails the test, which is what `expect` does here.
#![allow(clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::process::{ServiceProcess, binary, run_to_exit};
use integration_tests::{ADMIN, OTHER_STUDENT, PASSWORD, STUDENT, TEACHER, with_token};
use school_proto::auth::v1::auth_service_client::AuthServiceClient;
use school_proto::auth::v1::{LoginRequest, ValidateTokenRequest};
use school_proto::student::v1::student_service_client::StudentServiceClient;
use school_proto::student::v1::{
    CreateStudentRequest, DeleteStudentRequest, GetStudentRequest, ListStudentsRequest,
};
use tonic::Code;
use tonic::transport::Channel;

/// How long the clients run unless `SOAK_SECS` sets another length in seconds.
const DEFAULT_SOAK: Duration = Duration::from_secs(20);
const CLIENTS: usize = 16;
/// The user the clients log in as. Each login starts a session, and beyond the per-user limit
/// it ends the oldest one and revokes its tokens, so the tokens the clients call with belong to
/// other users.
const LOGIN_USER: &str = "lee";
/// How often each service's resident memory is read.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// The share of the run, at its start, in which memory may still grow.
const WARM_UP_FRACTION: f64 = 0.25;
/// How much resident memory may grow after the warm-up, for the allocator's footprint, which
/// moves by a few MiB either way.
const MAX_GROWTH_AFTER_WARM_UP_KIB: u64 = 16 * 1024;
/// How much more it may grow per minute of the run. Stored data grows: a login beyond the
/// session limit revokes the oldest session's token, and the revocation is kept until that
/// token expires, 15 minutes later (measured: about 2.6 MiB a minute).
const MAX_GROWTH_PER_MINUTE_KIB: u64 = 4 * 1024;
/// Password hashing threads in auth-service, and the memory each keeps for Argon2 (the
/// default memory cost).
const HASH_THREADS: u64 = 2;
const ARGON2_MEMORY_KIB: u64 = 19_456;
/// What auth-service may hold above its idle size besides the hashing memory: caches,
/// connections, buffers and the allocator's slack.
const MAX_OTHER_GROWTH_KIB: u64 = 64 * 1024;

/// What the clients did, and every unexpected failure.
#[derive(Default)]
struct Tally {
    calls: u64,
    denials: u64,
    unexpected: Vec<String>,
    /// Acknowledged creates by id, with the name sent.
    created: BTreeMap<String, String>,
    /// Ids whose delete was acknowledged.
    deleted: Vec<String>,
}

/// The two services under test, as child processes.
struct Services {
    auth: ServiceProcess,
    student: ServiceProcess,
}

fn soak_duration() -> Duration {
    std::env::var("SOAK_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .map_or(DEFAULT_SOAK, Duration::from_secs)
}

/// Returns the resident set size of process `pid` in KiB, or 0 where /proc is missing.
fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// Creates the users offline, then starts both binaries on loopback with the production
/// password hashing parameters.
fn start_services(dir: &Path) -> Services {
    let auth_dir = dir.join("auth").display().to_string();
    let auth_binary = binary("auth-service");
    for (username, role) in [
        (TEACHER, "teacher"),
        (STUDENT, "student"),
        (OTHER_STUDENT, "student"),
        (LOGIN_USER, "teacher"),
    ] {
        let (status, stderr) = run_to_exit(
            &auth_binary,
            &[
                "--data-dir",
                &auth_dir,
                "user",
                "add",
                username,
                "--role",
                role,
            ],
            &[("AUTH_USER_PASSWORD", PASSWORD)],
            Duration::from_secs(30),
        );
        assert!(status.success(), "user add {username} failed: {stderr}");
    }
    let hash_threads = HASH_THREADS.to_string();
    let auth = ServiceProcess::start(
        &auth_binary,
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &auth_dir,
            "--hash-concurrency",
            &hash_threads,
        ],
        &[
            ("AUTH_BOOTSTRAP_ADMIN_USERNAME", ADMIN),
            ("AUTH_BOOTSTRAP_ADMIN_PASSWORD", PASSWORD),
        ],
    );
    let student = ServiceProcess::start(
        &binary("student-service"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &dir.join("student").display().to_string(),
            "--auth-url",
            &auth.url(),
        ],
        &[],
    );
    Services { auth, student }
}

async fn connect(url: String) -> Channel {
    Channel::from_shared(url)
        .expect("service URL")
        .connect()
        .await
        .expect("connect to a service")
}

async fn login(auth_url: &str, username: &str) -> String {
    AuthServiceClient::new(connect(auth_url.to_owned()).await)
        .login(LoginRequest {
            username: username.to_owned(),
            password: PASSWORD.to_owned(),
        })
        .await
        .expect("login before the soak")
        .into_inner()
        .access_token
}

async fn run_client(
    urls: Arc<(String, String)>,
    tokens: Arc<BTreeMap<&'static str, String>>,
    client: usize,
    deadline: Instant,
    tally: Arc<Mutex<Tally>>,
) {
    let mut auth = AuthServiceClient::new(connect(urls.0.clone()).await);
    let mut students = StudentServiceClient::new(connect(urls.1.clone()).await);
    let mut own: Vec<String> = Vec::new();
    let mut step = 0usize;
    while Instant::now() < deadline {
        step += 1;
        // Each client has its own mix, so every kind of call runs at the same time as the others.
        let action = (client + step) % 6;
        let (outcome, expected): (Result<(), tonic::Status>, &[Code]) = match action {
            // Only a quarter of the clients log in, so the password hashing queue never fills.
            0 if client.is_multiple_of(4) => (
                auth.login(LoginRequest {
                    username: LOGIN_USER.to_owned(),
                    password: PASSWORD.to_owned(),
                })
                .await
                .map(drop),
                &[],
            ),
            0 | 1 => {
                let checked = auth
                    .validate_token(ValidateTokenRequest {
                        token: tokens[STUDENT].clone(),
                    })
                    .await
                    .map(|response| response.into_inner().valid);
                let outcome = match checked {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(tonic::Status::internal(
                        "a valid token was reported invalid",
                    )),
                    Err(status) => Err(status),
                };
                (outcome, &[])
            }
            // As many creates as deletes, so the stored data, and with it the memory that
            // legitimately grows with data, stays about the same size.
            2 => {
                let name = format!("soak-{client}-{step}");
                let created = students
                    .create_student(with_token(
                        CreateStudentRequest {
                            name: name.clone(),
                            email: format!("{name}@example.org"),
                            account_username: String::new(),
                            grade_level: 5,
                        },
                        &tokens[ADMIN],
                    ))
                    .await;
                match created {
                    Ok(response) => {
                        let id = response.into_inner().student.expect("created record").id;
                        tally
                            .lock()
                            .expect("tally lock")
                            .created
                            .insert(id.clone(), name);
                        own.push(id);
                        (Ok(()), &[])
                    }
                    Err(status) => (Err(status), &[]),
                }
            }
            3 => match own.last() {
                Some(id) => (
                    students
                        .get_student(with_token(
                            GetStudentRequest { id: id.clone() },
                            &tokens[TEACHER],
                        ))
                        .await
                        .map(drop),
                    &[],
                ),
                None => (list_first_page(&mut students, &tokens[TEACHER]).await, &[]),
            },
            4 => match own.pop() {
                Some(id) => {
                    let deleted = students
                        .delete_student(with_token(
                            DeleteStudentRequest { id: id.clone() },
                            &tokens[ADMIN],
                        ))
                        .await;
                    if deleted.is_ok() {
                        tally.lock().expect("tally lock").deleted.push(id);
                    }
                    (deleted.map(drop), &[])
                }
                None => (list_first_page(&mut students, &tokens[TEACHER]).await, &[]),
            },
            _ => {
                // Another student's record, or a deletion by a student: both are denied.
                let denied = match own.last() {
                    Some(id) => students
                        .get_student(with_token(
                            GetStudentRequest { id: id.clone() },
                            &tokens[OTHER_STUDENT],
                        ))
                        .await
                        .map(drop),
                    None => students
                        .delete_student(with_token(
                            DeleteStudentRequest {
                                id: uuid_like(client, step),
                            },
                            &tokens[STUDENT],
                        ))
                        .await
                        .map(drop),
                };
                let outcome = match denied {
                    Ok(()) => Err(tonic::Status::internal(
                        "a call the policy forbids succeeded",
                    )),
                    Err(status) => Err(status),
                };
                (outcome, &[Code::PermissionDenied])
            }
        };

        let mut tally = tally.lock().expect("tally lock");
        tally.calls += 1;
        if let Err(status) = outcome {
            if expected.contains(&status.code()) {
                tally.denials += 1;
            } else {
                tally.unexpected.push(format!(
                    "client {client} action {action}: {:?} {}",
                    status.code(),
                    status.message()
                ));
            }
        }
    }
}

fn uuid_like(client: usize, step: usize) -> String {
    format!("00000000-0000-4000-8000-{:012x}", client * 1_000_000 + step)
}

/// Reads the first page of student records with `token`.
async fn list_first_page(
    students: &mut StudentServiceClient<Channel>,
    token: &str,
) -> Result<(), tonic::Status> {
    let request = ListStudentsRequest {
        page_size: 20,
        page_token: String::new(),
    };
    students
        .list_students(with_token(request, token))
        .await
        .map(drop)
}

/// Samples the resident memory of each process until `deadline`.
async fn sample_memory(pids: [u32; 2], deadline: Instant) -> Vec<[u64; 2]> {
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        samples.push(pids.map(resident_kib));
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_keeps_writes_policy_and_memory() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let services = start_services(dir.path());
    let urls = Arc::new((services.auth.url(), services.student.url()));
    let pids = [services.auth.pid(), services.student.pid()];
    let idle = pids.map(resident_kib);
    // Concurrent logins, so that every hashing thread has its memory before the warm-up ends.
    let users = [ADMIN, TEACHER, STUDENT, OTHER_STUDENT];
    let logins = futures::future::join_all(users.map(|username| login(&urls.0, username))).await;
    let tokens = Arc::new(users.into_iter().zip(logins).collect::<BTreeMap<_, _>>());
    let tally = Arc::new(Mutex::new(Tally::default()));
    let soak = soak_duration();
    let deadline = Instant::now() + soak;
    let sampler = tokio::spawn(sample_memory(pids, deadline));

    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            tokio::spawn(run_client(
                Arc::clone(&urls),
                Arc::clone(&tokens),
                client,
                deadline,
                Arc::clone(&tally),
            ))
        })
        .collect();
    for client in clients {
        client.await.expect("client task");
    }
    let samples = sampler.await.expect("memory sampler");

    let tally = std::mem::take(&mut *tally.lock().expect("tally lock"));
    let mut students = StudentServiceClient::new(connect(urls.1.clone()).await);
    for (id, name) in &tally.created {
        let found = students
            .get_student(with_token(
                GetStudentRequest { id: id.clone() },
                &tokens[ADMIN],
            ))
            .await;
        if tally.deleted.contains(id) {
            assert_eq!(
                found.expect_err("deleted record").code(),
                Code::NotFound,
                "record {id} was deleted"
            );
        } else {
            let record = found
                .expect("acknowledged record")
                .into_inner()
                .student
                .expect("record");
            assert_eq!(&record.name, name);
        }
    }
    eprintln!(
        "{} calls by {CLIENTS} clients in {soak:?}, {} expected denials, {} creates, {} deletes",
        tally.calls,
        tally.denials,
        tally.created.len(),
        tally.deleted.len()
    );
    assert!(
        tally.unexpected.is_empty(),
        "unexpected failures: {:#?}",
        tally.unexpected
    );
    assert!(tally.denials > 0, "no denial was exercised");
    assert!(!tally.deleted.is_empty(), "no delete was exercised");

    // Memory: after the warm-up no service may grow by more than a little, and auth-service
    // may never hold more than its idle size plus the hashing threads' memory and a margin.
    let warm_up = ((samples.len() as f64 * WARM_UP_FRACTION) as usize).max(1);
    assert!(
        samples.len() > warm_up + 4,
        "too few memory samples: {}",
        samples.len()
    );
    let allowed_growth =
        MAX_GROWTH_AFTER_WARM_UP_KIB + MAX_GROWTH_PER_MINUTE_KIB * soak.as_secs().div_ceil(60);
    for (index, name) in ["auth-service", "student-service"].into_iter().enumerate() {
        let series: Vec<u64> = samples.iter().map(|sample| sample[index]).collect();
        eprintln!(
            "{name} resident memory (KiB): idle {}, then every {SAMPLE_EVERY:?}: {series:?}",
            idle[index]
        );
        let settled = series[warm_up - 1];
        let later_peak = series[warm_up..].iter().copied().max().unwrap_or(settled);
        assert!(
            later_peak <= settled + allowed_growth,
            "{name} grew from {settled} KiB after the warm-up to {later_peak} KiB, over the \
             {allowed_growth} KiB allowed"
        );
    }
    let auth_bound = idle[0] + HASH_THREADS * ARGON2_MEMORY_KIB + MAX_OTHER_GROWTH_KIB;
    let auth_peak = samples.iter().map(|sample| sample[0]).max().unwrap_or(0);
    assert!(
        auth_peak <= auth_bound,
        "auth-service reached {auth_peak} KiB, over its bound of {auth_bound} KiB"
    );
    drop(services);
}
