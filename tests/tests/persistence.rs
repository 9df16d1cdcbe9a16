//! Durability across restarts, and one process per data directory.

use integration_tests::{ADMIN, RunningAuth, RunningStudent, STUDENT, Stack, with_token};
use school_proto::auth::v1::{ListPublicKeysRequest, ValidateTokenRequest};
use school_proto::student::v1::{CreateStudentRequest, GetStudentRequest, ListStudentsRequest};

#[tokio::test]
async fn users_students_and_keys_survive_restart() {
    let stack = Stack::start().await;
    let admin = stack.token(ADMIN).await;
    let keys_before = stack
        .auth
        .client()
        .await
        .list_public_keys(ListPublicKeysRequest {})
        .await
        .expect("keys")
        .into_inner()
        .keys;
    let mut ids = Vec::new();
    for index in 0..5 {
        let created = stack
            .student
            .client()
            .await
            .create_student(with_token(
                CreateStudentRequest {
                    name: format!("Student {index}"),
                    email: format!("s{index}@example.org"),
                    account_username: String::new(),
                    grade_level: 3,
                },
                &admin,
            ))
            .await
            .expect("create")
            .into_inner()
            .student
            .expect("record");
        ids.push(created.id);
    }

    let stack = stack.restart().await;

    let keys_after = stack
        .auth
        .client()
        .await
        .list_public_keys(ListPublicKeysRequest {})
        .await
        .expect("keys")
        .into_inner()
        .keys;
    assert_eq!(keys_after, keys_before, "the signing key is kept");

    let validated = stack
        .auth
        .client()
        .await
        .validate_token(ValidateTokenRequest {
            token: admin.clone(),
        })
        .await
        .expect("validate")
        .into_inner();
    assert!(
        validated.valid,
        "a token issued before the restart stays valid"
    );

    let mut client = stack.student.client().await;
    for id in &ids {
        let record = client
            .get_student(with_token(GetStudentRequest { id: id.clone() }, &admin))
            .await
            .expect("record survives, and the old token is accepted")
            .into_inner()
            .student
            .expect("record");
        assert_eq!(&record.id, id);
    }
    let listed = client
        .list_students(with_token(ListStudentsRequest::default(), &admin))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.students.len(), ids.len());

    // Users survive too: a fresh login works for every role.
    stack.token(STUDENT).await;
}

#[tokio::test]
async fn second_instance_on_same_directory_fails() {
    let stack = Stack::start().await;

    let auth_dir = stack.auth.data_dir.clone();
    let config = <auth_service::Config as clap::Parser>::try_parse_from([
        "auth-service",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        auth_dir.to_str().expect("UTF-8 path"),
    ])
    .expect("flags");
    let error = auth_service::bind(config)
        .await
        .expect_err("second auth-service must not start");
    assert!(
        error
            .to_string()
            .contains(auth_dir.to_str().expect("UTF-8 path")),
        "error names the directory: {error}"
    );

    let student_dir = stack.student.data_dir.clone();
    let config = <student_service::Config as clap::Parser>::try_parse_from([
        "student-service",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        student_dir.to_str().expect("UTF-8 path"),
        "--auth-url",
        &stack.auth.url(),
    ])
    .expect("flags");
    let error = student_service::bind(config)
        .await
        .err()
        .expect("second student-service must not start");
    assert!(
        error
            .to_string()
            .contains(student_dir.to_str().expect("UTF-8 path")),
        "error names the directory: {error}"
    );

    // The first instances are unharmed.
    stack.token(ADMIN).await;
}

#[tokio::test]
async fn student_service_waits_for_keys() {
    let dir = tempfile::tempdir().expect("temporary directory");

    // Reserve a loopback port and release it, so nothing listens there yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("reserve a port")
        .local_addr()
        .expect("address")
        .port();
    let auth_url = format!("http://127.0.0.1:{port}");

    let student = RunningStudent::start_unready(&dir.path().join("student"), &auth_url, &[]).await;
    let status =
        integration_tests::health_status(&student.url(), "school.student.v1.StudentService")
            .await
            .expect("health answers");
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing,
        "no keys yet"
    );

    let auth = RunningAuth::start(
        &dir.path().join("auth"),
        &["--listen", &format!("127.0.0.1:{port}")],
    )
    .await;
    integration_tests::wait_until_serving(&student.url(), "school.student.v1.StudentService").await;

    student.stop().await;
    auth.stop().await;
}
