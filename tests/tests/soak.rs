//! A bounded soak test on loopback: many concurrent clients mix logins, token checks, creates,
//! reads and deletes for a few seconds. Afterwards no call may have failed except with the
//! denials the policy prescribes, and every acknowledged write must be in place.

// A failed step in a helper fails the test, which is what `expect` does here.
#![allow(clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::{ADMIN, OTHER_STUDENT, PASSWORD, STUDENT, Stack, TEACHER, with_token};
use school_proto::auth::v1::{LoginRequest, ValidateTokenRequest};
use school_proto::student::v1::{
    CreateStudentRequest, DeleteStudentRequest, GetStudentRequest, ListStudentsRequest,
};
use tonic::Code;

/// How long the clients run.
const SOAK: Duration = Duration::from_secs(6);

/// The maximum resident memory the test process may reach, both services and all clients included.
const MAX_RESIDENT_KIB: u64 = 1536 * 1024;
const CLIENTS: usize = 16;

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

/// Returns the resident set size of this process in KiB, or 0 where /proc is missing.
fn resident_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
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

async fn run_client(
    stack: Arc<Stack>,
    tokens: Arc<BTreeMap<&'static str, String>>,
    client: usize,
    tally: Arc<Mutex<Tally>>,
) {
    let mut auth = stack.auth.client().await;
    let mut students = stack.student.client().await;
    let deadline = Instant::now() + SOAK;
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
                    username: TEACHER.to_owned(),
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
            2 | 3 => {
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
                None => (
                    students
                        .list_students(with_token(
                            ListStudentsRequest {
                                page_size: 20,
                                page_token: String::new(),
                            },
                            &tokens[TEACHER],
                        ))
                        .await
                        .map(drop),
                    &[],
                ),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_keeps_writes_and_policy() {
    let stack = Arc::new(Stack::start().await);
    let mut tokens = BTreeMap::new();
    for username in [ADMIN, TEACHER, STUDENT, OTHER_STUDENT] {
        tokens.insert(username, stack.token(username).await);
    }
    let tokens = Arc::new(tokens);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let resident_before = resident_kib();
    let sampler = tokio::spawn(async {
        let mut samples = Vec::new();
        let started = tokio::time::Instant::now();
        while started.elapsed() < SOAK {
            samples.push(resident_kib());
            tokio::time::sleep(SOAK / 24).await;
        }
        samples
    });

    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            tokio::spawn(run_client(
                Arc::clone(&stack),
                Arc::clone(&tokens),
                client,
                Arc::clone(&tally),
            ))
        })
        .collect();
    for client in clients {
        client.await.expect("client task");
    }
    let resident_after = resident_kib();
    let samples = sampler.await.expect("memory sampler");

    let tally = std::mem::take(&mut *tally.lock().expect("tally lock"));
    let mut students = stack.student.client().await;
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
        "{} calls by {CLIENTS} clients in {SOAK:?}, {} expected denials, {} creates, {} deletes, \
         resident memory {resident_before} KiB before and {resident_after} KiB after",
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

    // Resident memory must stay bounded. It is not flat over a run this short: it grows in
    // steps while caches, thread pools and the allocator's arenas fill.
    // TODO: find what the late steps are (a longer soak, a heap profile) and assert flatness.
    eprintln!("resident memory samples (KiB): {samples:?}");
    let peak = samples.iter().copied().max().unwrap_or(resident_after);
    assert!(
        peak < MAX_RESIDENT_KIB,
        "resident memory reached {peak} KiB, over the {MAX_RESIDENT_KIB} KiB bound"
    );
    assert!(!tally.deleted.is_empty(), "no delete was exercised");
}
