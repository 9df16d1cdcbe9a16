//! Crash safety of the real binaries: SIGKILL at random moments under concurrent writes must
//! lose no acknowledged write, leave no half-written record, and never stop the database from
//! opening again. A damaged database makes the binary exit with a message instead.

// A failed step in a helper fails the test, which is what `expect` does here.
#![allow(clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use integration_tests::process::{ServiceProcess, binary, run_to_exit};
use integration_tests::{wait_until_serving, with_token};
use school_proto::auth::v1::LoginRequest;
use school_proto::auth::v1::auth_service_client::AuthServiceClient;
use school_proto::student::v1::student_service_client::StudentServiceClient;
use school_proto::student::v1::{
    CreateStudentRequest, DeleteStudentRequest, ListStudentsRequest, Student,
};
use tonic::transport::Channel;

const ROUNDS: usize = 10;
const WRITERS: usize = 8;
const ADMIN: &str = "crash-admin";
const ADMIN_PASSWORD: &str = "crash test password 1";

/// What the test sent for one record and what the service acknowledged.
#[derive(Clone, Debug, Default)]
struct Intent {
    request: CreateStudentRequest,
    /// The id from an acknowledged create.
    created: Option<String>,
    delete_sent: bool,
    delete_acknowledged: bool,
}

/// Every record the writers tried to create, keyed by its unique name.
type Ledger = Arc<Mutex<BTreeMap<String, Intent>>>;

/// A small xorshift generator, seeded from the clock and printed, so a failing run can be
/// repeated by setting `CRASH_SEED`.
struct Random(u64);

impl Random {
    fn new() -> Random {
        let seed = std::env::var("CRASH_SEED")
            .ok()
            .and_then(|seed| seed.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(1, |elapsed| elapsed.as_nanos() as u64)
                    | 1
            });
        eprintln!("CRASH_SEED={seed}");
        Random(seed)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

fn start_auth(data_dir: &std::path::Path) -> ServiceProcess {
    ServiceProcess::start(
        &binary("auth-service"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_dir.display().to_string(),
            // Cheap hashes keep logins fast; the crash test is not about password strength.
            "--argon2-memory-kib",
            "8192",
            "--argon2-iterations",
            "1",
        ],
        &[
            ("AUTH_BOOTSTRAP_ADMIN_USERNAME", ADMIN),
            ("AUTH_BOOTSTRAP_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ],
    )
}

fn start_student(data_dir: &std::path::Path, auth_url: &str) -> ServiceProcess {
    ServiceProcess::start(
        &binary("student-service"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            &data_dir.display().to_string(),
            "--auth-url",
            auth_url,
        ],
        &[],
    )
}

async fn login(auth_url: &str) -> String {
    AuthServiceClient::connect(auth_url.to_owned())
        .await
        .expect("connect to auth-service")
        .login(LoginRequest {
            username: ADMIN.to_owned(),
            password: ADMIN_PASSWORD.to_owned(),
        })
        .await
        .expect("admin login after restart")
        .into_inner()
        .access_token
}

/// Creates and deletes records until a call fails, which happens once the process is killed.
async fn write_until_killed(
    mut client: StudentServiceClient<Channel>,
    token: String,
    ledger: Ledger,
    round: usize,
    writer: usize,
) {
    let mut mine: Vec<String> = Vec::new();
    for sequence in 0u32.. {
        // Delete every third acknowledged record, so deletes race with the kill too.
        if sequence % 3 == 2
            && let Some(name) = mine.pop()
        {
            let id = {
                let mut ledger = ledger.lock().expect("ledger lock");
                let intent = ledger.get_mut(&name).expect("own record");
                intent.delete_sent = true;
                intent.created.clone().expect("acknowledged create")
            };
            let deleted = client
                .delete_student(with_token(DeleteStudentRequest { id }, &token))
                .await;
            if deleted.is_err() {
                return;
            }
            ledger
                .lock()
                .expect("ledger lock")
                .get_mut(&name)
                .expect("own record")
                .delete_acknowledged = true;
            continue;
        }

        let name = format!("r{round}w{writer}n{sequence}");
        let request = CreateStudentRequest {
            name: name.clone(),
            email: format!("{name}@example.org"),
            account_username: format!("acct-{name}"),
            grade_level: i32::try_from(sequence % 13 + 1).expect("small grade"),
        };
        ledger.lock().expect("ledger lock").insert(
            name.clone(),
            Intent {
                request: request.clone(),
                ..Intent::default()
            },
        );
        let Ok(created) = client.create_student(with_token(request, &token)).await else {
            return;
        };
        let id = created.into_inner().student.expect("created record").id;
        ledger
            .lock()
            .expect("ledger lock")
            .get_mut(&name)
            .expect("own record")
            .created = Some(id);
        mine.push(name);
    }
}

async fn list_all(client: &mut StudentServiceClient<Channel>, token: &str) -> Vec<Student> {
    let mut students = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_students(with_token(
                ListStudentsRequest {
                    page_size: 100,
                    page_token: page_token.clone(),
                },
                token,
            ))
            .await
            .expect("list students after restart")
            .into_inner();
        students.extend(page.students);
        if page.next_page_token.is_empty() {
            return students;
        }
        page_token = page.next_page_token;
    }
}

/// Checks the restarted service against the ledger and returns how many records it holds.
async fn check_against_ledger(
    client: &mut StudentServiceClient<Channel>,
    token: &str,
    ledger: &Ledger,
) -> usize {
    let students = list_all(client, token).await;
    let ledger = ledger.lock().expect("ledger lock").clone();

    let mut seen = BTreeSet::new();
    for student in &students {
        assert!(
            seen.insert(student.name.clone()),
            "{} listed twice",
            student.name
        );
        let intent = ledger
            .get(&student.name)
            .unwrap_or_else(|| panic!("record {} was never sent", student.name));
        assert_eq!(
            student.email, intent.request.email,
            "email of {}",
            student.name
        );
        assert_eq!(
            student.account_username, intent.request.account_username,
            "account of {}",
            student.name
        );
        assert_eq!(
            student.grade_level, intent.request.grade_level,
            "grade of {}",
            student.name
        );
        if let Some(id) = &intent.created {
            assert_eq!(&student.id, id, "id of {}", student.name);
        }
        assert!(
            !intent.delete_acknowledged,
            "acknowledged delete of {} was lost",
            student.name
        );
    }

    for (name, intent) in &ledger {
        if intent.created.is_some() && !intent.delete_sent {
            assert!(
                seen.contains(name),
                "acknowledged create of {name} was lost"
            );
        }
    }
    students.len()
}

/// Creates a record with the account of every record that is absent, which fails with
/// ALREADY_EXISTS if a crash left the account link without its record.
async fn check_no_orphan_links(
    client: &mut StudentServiceClient<Channel>,
    token: &str,
    ledger: &Ledger,
    present: &BTreeSet<String>,
) {
    let absent: Vec<Intent> = ledger
        .lock()
        .expect("ledger lock")
        .iter()
        .filter(|(name, _)| !present.contains(*name))
        .map(|(_, intent)| intent.clone())
        .collect();
    for intent in absent {
        let mut probe = intent.request.clone();
        probe.name = format!("probe-{}", intent.request.name);
        let created = client
            .create_student(with_token(probe, token))
            .await
            .unwrap_or_else(|status| {
                panic!(
                    "account {} of absent record {} is still linked: {status:?}",
                    intent.request.account_username, intent.request.name
                )
            })
            .into_inner()
            .student
            .expect("probe record");
        client
            .delete_student(with_token(DeleteStudentRequest { id: created.id }, token))
            .await
            .expect("delete probe record");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_writes_loses_nothing_acknowledged() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temporary directory");
    let auth_dir = dir.path().join("auth");
    let student_dir = dir.path().join("student");
    let ledger: Ledger = Arc::default();
    let mut random = Random::new();
    let mut acknowledged = 0;

    for round in 0..ROUNDS {
        let auth = start_auth(&auth_dir);
        let student = start_student(&student_dir, &auth.url());
        wait_until_serving(&student.url(), "school.student.v1.StudentService").await;
        let token = login(&auth.url()).await;
        let mut client = StudentServiceClient::connect(student.url())
            .await
            .expect("connect to student-service");

        let count = check_against_ledger(&mut client, &token, &ledger).await;
        eprintln!("round {round}: {count} records after restart");

        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                tokio::spawn(write_until_killed(
                    client.clone(),
                    token.clone(),
                    Arc::clone(&ledger),
                    round,
                    writer,
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(150 + random.below(600))).await;

        // Kill auth-service first in odd rounds, so it also dies while student-service is busy.
        if round % 2 == 1 {
            auth.kill();
            student.kill();
        } else {
            student.kill();
            auth.kill();
        }
        for writer in writers {
            writer.await.expect("writer task");
        }
    }

    let auth = start_auth(&auth_dir);
    let student = start_student(&student_dir, &auth.url());
    wait_until_serving(&student.url(), "school.student.v1.StudentService").await;
    let token = login(&auth.url()).await;
    let mut client = StudentServiceClient::connect(student.url())
        .await
        .expect("connect to student-service");
    check_against_ledger(&mut client, &token, &ledger).await;
    let present: BTreeSet<String> = list_all(&mut client, &token)
        .await
        .into_iter()
        .map(|student| student.name)
        .collect();
    check_no_orphan_links(&mut client, &token, &ledger, &present).await;

    for intent in ledger.lock().expect("ledger lock").values() {
        if intent.created.is_some() {
            acknowledged += 1;
        }
    }
    assert!(
        acknowledged > ROUNDS * WRITERS,
        "only {acknowledged} creates were acknowledged; the kills came too early to test anything"
    );
    eprintln!(
        "{ROUNDS} rounds, {acknowledged} acknowledged creates, {} records left, {:?}",
        present.len(),
        started.elapsed()
    );
}

/// Overwrites the middle of every file in `dir` with garbage.
fn damage_files(dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).expect("read data directory") {
        let path = entry.expect("directory entry").path();
        if !path.is_file() {
            continue;
        }
        let mut bytes = std::fs::read(&path).expect("read database file");
        let middle = bytes.len() / 2;
        for byte in bytes.iter_mut().skip(middle).take(64) {
            *byte ^= 0xA5;
        }
        if bytes.is_empty() {
            bytes.extend_from_slice(b"\xff\xff\xff\xff");
        }
        std::fs::write(&path, bytes).expect("write database file");
    }
}

#[test]
fn damaged_student_database_exits_with_recovery_step() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let student_dir = dir.path().join("student");
    let url = "http://127.0.0.1:9";
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        student_dir.to_str().expect("UTF-8 path"),
        "--auth-url",
        url,
    ];
    start_student(&student_dir, url).kill();
    damage_files(&student_dir);

    for attempt in 0..2 {
        let (status, stderr) = run_to_exit(
            &binary("student-service"),
            &args,
            &[],
            Duration::from_secs(20),
        );

        assert!(!status.success(), "attempt {attempt}: exit status {status}");
        assert!(
            status.code().is_some(),
            "attempt {attempt}: killed by a signal"
        );
        assert!(
            stderr.contains(&student_dir.display().to_string()),
            "attempt {attempt}: the message names no directory: {stderr}"
        );
        assert!(
            stderr.contains("backup"),
            "attempt {attempt}: the message names no recovery step: {stderr}"
        );
    }
}

#[test]
fn damaged_auth_database_exits_with_recovery_step() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let auth_dir = dir.path().join("auth");
    start_auth(&auth_dir).kill();
    damage_files(&auth_dir.join("sled"));

    let (status, stderr) = run_to_exit(
        &binary("auth-service"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            auth_dir.to_str().expect("UTF-8 path"),
        ],
        &[],
        Duration::from_secs(20),
    );

    assert!(!status.success(), "exit status {status}");
    assert!(status.code().is_some(), "killed by a signal");
    assert!(
        stderr.contains(&auth_dir.display().to_string()),
        "the message names no directory: {stderr}"
    );
    assert!(
        stderr.contains("backup"),
        "the message names no recovery step: {stderr}"
    );
}
