//! The hostile-input table: each attack on either service, the exact status code it gets, and
//! proof that no handler ran and no data changed.
//!
//! Token and credential attacks on StudentService (forged, unsigned, HMAC and `none` tokens,
//! wrong claim types, duplicate and binary `authorization` entries, other schemes) are in the
//! table of `student_access.rs`. The login throttle has its own cases in `login_throttle.rs`,
//! and a flood of unknown key ids in `key_rotation.rs`. This table adds size limits, exposure
//! and the remaining token cases, and runs every one against a live stack.

use integration_tests::forge::{Forger, claims, unsigned};
use integration_tests::{ADMIN, PASSWORD, Stack, TEACHER, with_token};
use school_proto::auth::v1::LoginRequest;
use school_proto::student::v1::{CreateStudentRequest, ListStudentsRequest, Student};
use serde_json::json;
use tonic::Code;
use tonic::metadata::AsciiMetadataValue;

/// An HTTP/2 header list over the 16 KiB limit of both servers.
const OVERSIZED_HEADER_BYTES: usize = 20 * 1024;

/// A message over the 64 KiB decoding limit of both servers.
const OVERSIZED_MESSAGE_BYTES: usize = 100 * 1024;

/// Adds a metadata entry too large for the servers' header list limit.
fn pad_metadata<T>(request: &mut tonic::Request<T>) {
    let padding =
        AsciiMetadataValue::try_from("p".repeat(OVERSIZED_HEADER_BYTES)).expect("ASCII padding");
    request.metadata_mut().insert("x-padding", padding);
}

async fn records(stack: &Stack) -> Vec<Student> {
    let admin = stack.token(ADMIN).await;
    stack
        .student
        .client()
        .await
        .list_students(with_token(ListStudentsRequest::default(), &admin))
        .await
        .expect("admin lists")
        .into_inner()
        .students
}

fn create_request(name: String) -> CreateStudentRequest {
    CreateStudentRequest {
        name,
        email: "eve@example.org".into(),
        account_username: String::new(),
        grade_level: 7,
    }
}

#[tokio::test]
async fn every_attack_gets_its_status() {
    let stack = Stack::start().await;
    let admin = stack.token(ADMIN).await;
    let teacher = stack.token(TEACHER).await;
    let before = records(&stack).await;
    let mut students = stack.student.client().await;
    let mut auth = stack.auth.client().await;
    let stolen = &stack.forger;

    let mut outcomes: Vec<(&str, Result<(), tonic::Status>, Code)> = Vec::new();

    // Size limits, checked before any handler or password hash runs. An oversized header list
    // gets HTTP 431 from hyper before gRPC starts, which tonic's client reports as UNKNOWN;
    // an oversized message gets OUT_OF_RANGE from tonic's decoder.
    let mut request = with_token(create_request("Eve".into()), &admin);
    pad_metadata(&mut request);
    outcomes.push((
        "student: metadata over 16 KiB",
        students.create_student(request).await.map(drop),
        Code::Unknown,
    ));
    let mut request = tonic::Request::new(LoginRequest {
        username: ADMIN.into(),
        password: PASSWORD.into(),
    });
    pad_metadata(&mut request);
    outcomes.push((
        "auth: metadata over 16 KiB",
        auth.login(request).await.map(drop),
        Code::Unknown,
    ));
    outcomes.push((
        "student: message over 64 KiB",
        students
            .create_student(with_token(
                create_request("E".repeat(OVERSIZED_MESSAGE_BYTES)),
                &admin,
            ))
            .await
            .map(drop),
        Code::OutOfRange,
    ));
    outcomes.push((
        "auth: message over 64 KiB",
        auth.login(LoginRequest {
            username: ADMIN.into(),
            password: "p".repeat(OVERSIZED_MESSAGE_BYTES),
        })
        .await
        .map(drop),
        Code::OutOfRange,
    ));
    outcomes.push((
        "auth: password over 1024 bytes",
        auth.login(LoginRequest {
            username: ADMIN.into(),
            password: "p".repeat(1025),
        })
        .await
        .map(drop),
        Code::InvalidArgument,
    ));
    outcomes.push((
        "auth: username over 64 bytes",
        auth.login(LoginRequest {
            username: "u".repeat(65),
            password: PASSWORD.into(),
        })
        .await
        .map(drop),
        Code::InvalidArgument,
    ));
    let huge_token = format!(
        "{}.{}.{}",
        "a".repeat(4096),
        "b".repeat(4096),
        "c".repeat(100)
    );
    outcomes.push((
        "student: token over 8 KiB",
        students
            .create_student(with_token(create_request("Eve".into()), &huge_token))
            .await
            .map(drop),
        Code::Unauthenticated,
    ));

    // Tokens: claims of the wrong JSON type, a missing claim, hostile headers.
    let mut wrong_exp = claims(ADMIN, "admin");
    wrong_exp["exp"] = json!("never");
    let mut wrong_nbf = claims(ADMIN, "admin");
    wrong_nbf["nbf"] = json!({"after": 0});
    let mut missing_role = claims(ADMIN, "admin");
    missing_role
        .as_object_mut()
        .map(|object| object.remove("role"));
    let token_cases = [
        ("token: exp is a string", stolen.sign(&wrong_exp)),
        ("token: nbf is an object", stolen.sign(&wrong_nbf)),
        ("token: role missing", stolen.sign(&missing_role)),
        (
            "token: kid is a number",
            stolen.sign_with_header(&json!({"alg": "EdDSA", "kid": 7}), &claims(ADMIN, "admin")),
        ),
        (
            "token: alg HS256 with the stolen key's kid",
            stolen.sign_with_header(
                &json!({"alg": "HS256", "kid": stolen.key_id}),
                &claims(ADMIN, "admin"),
            ),
        ),
        ("token: alg none", unsigned(&claims(ADMIN, "admin"))),
        (
            "token: foreign key",
            Forger::random().sign(&claims(ADMIN, "admin")),
        ),
    ];
    for (name, token) in token_cases {
        outcomes.push((
            name,
            students
                .create_student(with_token(create_request("Eve".into()), &token))
                .await
                .map(drop),
            Code::Unauthenticated,
        ));
    }

    // Exposure: a teacher's valid token does not reach an admin method.
    outcomes.push((
        "student: teacher calls CreateStudent",
        students
            .create_student(with_token(create_request("Eve".into()), &teacher))
            .await
            .map(drop),
        Code::PermissionDenied,
    ));

    let mut failures = Vec::new();
    for (name, outcome, expected) in &outcomes {
        match outcome {
            Ok(()) => failures.push(format!("{name}: succeeded, expected {expected:?}")),
            Err(status) if status.code() != *expected => failures.push(format!(
                "{name}: got {:?} ({}), expected {expected:?}",
                status.code(),
                status.message()
            )),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(records(&stack).await, before, "no attack changed a record");
}

#[tokio::test]
async fn reflection_can_be_switched_off() {
    let stack = Stack::start_with(&["--reflection", "off"], &["--reflection", "off"]).await;

    for url in [stack.auth.url(), stack.student.url()] {
        let channel = tonic::transport::Channel::from_shared(url.clone())
            .expect("URL")
            .connect()
            .await
            .expect("connect");
        let mut client =
            tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
                channel,
            );
        let request = tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(
                    String::new(),
                ),
            ),
        };
        let outcome = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await;
        let code = match outcome {
            Ok(response) => {
                let mut stream = response.into_inner();
                match stream.message().await {
                    Ok(message) => panic!("{url}: reflection answered: {message:?}"),
                    Err(status) => status.code(),
                }
            }
            Err(status) => status.code(),
        };
        assert_eq!(code, Code::Unimplemented, "{url}");
    }
}
