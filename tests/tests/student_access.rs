//! Authentication and role checks in front of StudentService: who may do what, and that a
//! rejected call never reaches a handler.

use http::uri::PathAndQuery;
use integration_tests::forge::{self, Forger, claims, unsigned};
use integration_tests::{ADMIN, OTHER_STUDENT, STUDENT, Stack, TEACHER, with_token};
use school_proto::student::v1::{
    CreateStudentRequest, DeleteStudentRequest, DeleteStudentResponse, GetStudentRequest,
    ListStudentsRequest, Student,
};
use serde_json::json;
use tonic::Code;
use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue};

async fn create_record(stack: &Stack, owner: &str) -> Student {
    let admin = stack.token(ADMIN).await;
    stack
        .student
        .client()
        .await
        .create_student(with_token(
            CreateStudentRequest {
                name: "Rita Record".into(),
                email: "rita@example.org".into(),
                account_username: owner.into(),
                grade_level: 9,
            },
            &admin,
        ))
        .await
        .expect("admin creates a record")
        .into_inner()
        .student
        .expect("created record")
}

/// Asserts, as an admin, that the record with `id` still exists.
async fn assert_record_exists(stack: &Stack, id: &str) {
    let admin = stack.token(ADMIN).await;
    let found = stack
        .student
        .client()
        .await
        .get_student(with_token(GetStudentRequest { id: id.into() }, &admin))
        .await;
    assert!(found.is_ok(), "record {id} must still exist: {found:?}");
}

fn delete_request(id: &str) -> tonic::Request<DeleteStudentRequest> {
    tonic::Request::new(DeleteStudentRequest { id: id.into() })
}

#[tokio::test]
async fn delete_student_requires_admin() {
    let stack = Stack::start().await;
    let record = create_record(&stack, STUDENT).await;
    let mut client = stack.student.client().await;

    for username in [STUDENT, TEACHER, OTHER_STUDENT] {
        let token = stack.token(username).await;
        let status = client
            .delete_student(with_token(
                DeleteStudentRequest {
                    id: record.id.clone(),
                },
                &token,
            ))
            .await
            .expect_err("only an admin may delete");
        assert_eq!(status.code(), Code::PermissionDenied, "as {username}");
        assert!(!status.message().contains(&token));
        assert_record_exists(&stack, &record.id).await;
    }

    let admin = stack.token(ADMIN).await;
    client
        .delete_student(with_token(
            DeleteStudentRequest {
                id: record.id.clone(),
            },
            &admin,
        ))
        .await
        .expect("admin deletes");
    let gone = client
        .get_student(with_token(
            GetStudentRequest {
                id: record.id.clone(),
            },
            &admin,
        ))
        .await
        .expect_err("record is gone");
    assert_eq!(gone.code(), Code::NotFound);

    let again = client
        .delete_student(with_token(DeleteStudentRequest { id: record.id }, &admin))
        .await
        .expect_err("second delete");
    assert_eq!(again.code(), Code::NotFound);
}

#[tokio::test]
async fn roles_follow_the_default_policy() {
    let stack = Stack::start().await;
    let record = create_record(&stack, STUDENT).await;
    let mut client = stack.student.client().await;
    let teacher = stack.token(TEACHER).await;
    let student = stack.token(STUDENT).await;

    let listed = client
        .list_students(with_token(ListStudentsRequest::default(), &teacher))
        .await
        .expect("teacher lists");
    assert_eq!(listed.into_inner().students.len(), 1);
    client
        .get_student(with_token(
            GetStudentRequest {
                id: record.id.clone(),
            },
            &teacher,
        ))
        .await
        .expect("teacher reads");

    let create = client
        .create_student(with_token(
            CreateStudentRequest {
                name: "Not Allowed".into(),
                ..Default::default()
            },
            &teacher,
        ))
        .await
        .expect_err("teacher may not create");
    assert_eq!(create.code(), Code::PermissionDenied);

    let list = client
        .list_students(with_token(ListStudentsRequest::default(), &student))
        .await
        .expect_err("student may not list");
    assert_eq!(list.code(), Code::PermissionDenied);

    let create = client
        .create_student(with_token(
            CreateStudentRequest {
                name: "Self Made".into(),
                account_username: STUDENT.into(),
                ..Default::default()
            },
            &student,
        ))
        .await
        .expect_err("student may not create");
    assert_eq!(create.code(), Code::PermissionDenied);

    let listed = client
        .list_students(with_token(ListStudentsRequest::default(), &teacher))
        .await
        .expect("teacher lists");
    assert_eq!(listed.into_inner().students.len(), 1, "no record was added");
}

#[tokio::test]
async fn student_reads_only_own_record() {
    let stack = Stack::start().await;
    let own = create_record(&stack, STUDENT).await;
    let other = create_record(&stack, OTHER_STUDENT).await;
    let unowned = create_record(&stack, "").await;
    let mut client = stack.student.client().await;
    let student = stack.token(STUDENT).await;

    let read = client
        .get_student(with_token(
            GetStudentRequest { id: own.id.clone() },
            &student,
        ))
        .await
        .expect("student reads own record")
        .into_inner()
        .student
        .expect("record");
    assert_eq!(read.id, own.id);
    assert_eq!(read.account_username, STUDENT);

    let missing = "00000000-0000-4000-8000-000000000000".to_owned();
    for id in [other.id, unowned.id, missing] {
        let status = client
            .get_student(with_token(GetStudentRequest { id: id.clone() }, &student))
            .await
            .expect_err("another record");
        assert_eq!(status.code(), Code::PermissionDenied, "record {id}");
    }
}

#[tokio::test]
async fn missing_or_bad_credentials_are_unauthenticated() {
    let stack = Stack::start().await;
    let record = create_record(&stack, STUDENT).await;
    let mut client = stack.student.client().await;
    let admin = stack.token(ADMIN).await;
    let forger = &stack.forger;
    let now = forge::now();
    let admin_claims = claims(ADMIN, "admin");
    let with = |name: &str, value: serde_json::Value| {
        let mut changed = admin_claims.clone();
        changed[name] = value;
        changed
    };
    let without = |name: &str| {
        let mut changed = admin_claims.clone();
        changed.as_object_mut().expect("object").remove(name);
        changed
    };

    let bearer = |token: &str| format!("Bearer {token}");
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("no authorization entry", vec![]),
        ("empty value", vec![String::new()]),
        ("scheme only", vec!["Bearer".into()]),
        ("scheme and space", vec!["Bearer ".into()]),
        ("token without scheme", vec![admin.clone()]),
        ("basic scheme", vec![format!("Basic {admin}")]),
        ("token scheme", vec![format!("Token {admin}")]),
        ("scheme glued to token", vec![format!("Bearer{admin}")]),
        ("trailing space", vec![format!("Bearer {admin} ")]),
        ("trailing garbage", vec![format!("Bearer {admin}.x")]),
        (
            "comma list",
            vec![format!("Bearer {admin}, Bearer {admin}")],
        ),
        ("two entries", vec![bearer(&admin), bearer(&admin)]),
        (
            "valid then garbage",
            vec![bearer(&admin), "Bearer x.y.z".into()],
        ),
        (
            "garbage then valid",
            vec!["Bearer x.y.z".into(), bearer(&admin)],
        ),
        ("garbage token", vec![bearer("not-a-jwt")]),
        ("alg none", vec![bearer(&unsigned(&admin_claims))]),
        (
            "alg none signed",
            vec![bearer(&forger.sign_with_header(
                &json!({"alg": "none", "kid": forger.key_id}),
                &admin_claims,
            ))],
        ),
        (
            "alg HS256 header",
            vec![bearer(&forger.sign_with_header(
                &json!({"alg": "HS256", "kid": forger.key_id}),
                &admin_claims,
            ))],
        ),
        (
            "unknown key",
            vec![bearer(&Forger::random().sign(&admin_claims))],
        ),
        (
            "expired",
            vec![bearer(&forger.sign(&with("exp", json!(now - 60))))],
        ),
        (
            "not yet valid",
            vec![bearer(&forger.sign(&with("nbf", json!(now + 600))))],
        ),
        (
            "other issuer",
            vec![bearer(&forger.sign(&with("iss", json!("evil-auth"))))],
        ),
        (
            "other audience",
            vec![bearer(&forger.sign(&with("aud", json!("billing"))))],
        ),
        (
            "exp as string",
            vec![bearer(&forger.sign(&with("exp", json!("9999999999"))))],
        ),
        (
            "exp as float",
            vec![bearer(&forger.sign(&with("exp", json!(9.9e9))))],
        ),
        ("no role", vec![bearer(&forger.sign(&without("role")))]),
        ("no sub", vec![bearer(&forger.sign(&without("sub")))]),
        ("no exp", vec![bearer(&forger.sign(&without("exp")))]),
        ("oversized token", vec![bearer(&"a".repeat(10_000))]),
    ];

    for (name, values) in cases {
        let mut request = delete_request(&record.id);
        for value in &values {
            let value: AsciiMetadataValue = value.parse().expect("ASCII metadata");
            request.metadata_mut().append("authorization", value);
        }
        let status = client.delete_student(request).await.expect_err(name);
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{name}: {}",
            status.message()
        );
        for value in &values {
            if value.len() > 20 {
                assert!(
                    !status.message().contains(value.as_str()),
                    "{name} echoes the token"
                );
            }
        }
    }

    // Past the HTTP/2 header list limit (16 KiB) the transport itself rejects the request with
    // HTTP 431, which gRPC clients report as UNKNOWN; the guard never sees it.
    let mut huge = delete_request(&record.id);
    let value = bearer(&"a".repeat(40_000)).parse().expect("ASCII");
    huge.metadata_mut().insert("authorization", value);
    let result = client.delete_student(huge).await;
    assert!(result.is_err(), "a huge header must not be served");

    assert_record_exists(&stack, &record.id).await;
}

#[tokio::test]
async fn non_text_credentials_are_unauthenticated() {
    let stack = Stack::start().await;
    let record = create_record(&stack, STUDENT).await;
    let mut client = stack.student.client().await;
    let admin = stack.token(ADMIN).await;

    let mut binary = delete_request(&record.id);
    binary.metadata_mut().insert_bin(
        "authorization-bin",
        BinaryMetadataValue::from_bytes(format!("Bearer {admin}").as_bytes()),
    );
    let status = client
        .delete_student(binary)
        .await
        .expect_err("binary entry");
    assert_eq!(status.code(), Code::Unauthenticated);

    // Bytes outside visible ASCII, which tonic's own metadata types refuse to build, sent as
    // a raw HTTP/2 header.
    let mut non_ascii = delete_request(&record.id);
    let value = http::HeaderValue::from_bytes(format!("Bearer {admin}\u{e9}").as_bytes())
        .expect("opaque header bytes");
    non_ascii
        .metadata_mut()
        .as_mut()
        .insert(http::header::AUTHORIZATION, value);
    let status = client.delete_student(non_ascii).await;
    assert!(
        matches!(&status, Err(status) if status.code() == Code::Unauthenticated),
        "non-ASCII authorization: {status:?}"
    );

    assert_record_exists(&stack, &record.id).await;
}

#[tokio::test]
async fn scheme_name_ignores_case() {
    let stack = Stack::start().await;
    let mut client = stack.student.client().await;
    let admin = stack.token(ADMIN).await;

    for scheme in ["bearer", "BEARER", "bEaReR"] {
        let mut request = tonic::Request::new(ListStudentsRequest::default());
        let value = format!("{scheme} {admin}").parse().expect("ASCII");
        request.metadata_mut().insert("authorization", value);
        client.list_students(request).await.expect(scheme);
    }
}

#[tokio::test]
async fn forged_roles_do_not_match() {
    let stack = Stack::start().await;
    let record = create_record(&stack, STUDENT).await;
    let mut client = stack.student.client().await;

    for role in [
        "Admin",
        "ADMIN",
        "admin ",
        " admin",
        "admin\u{0}",
        "administrator",
        "root",
    ] {
        let token = stack.forger.sign(&claims("mallory", role));
        let status = client
            .delete_student(with_token(
                DeleteStudentRequest {
                    id: record.id.clone(),
                },
                &token,
            ))
            .await
            .expect_err(role);
        assert_eq!(status.code(), Code::PermissionDenied, "role {role:?}");
    }
    assert_record_exists(&stack, &record.id).await;
}

#[tokio::test]
async fn unusual_paths_never_reach_a_handler() {
    let stack = Stack::start().await;
    let record = create_record(&stack, STUDENT).await;
    let student = stack.token(STUDENT).await;
    let channel = stack.student.channel().await;

    let paths = [
        "/school.student.v1.StudentService/deletestudent",
        "/school.student.v1.studentservice/DeleteStudent",
        "/SCHOOL.STUDENT.V1.STUDENTSERVICE/DELETESTUDENT",
        "//school.student.v1.StudentService/DeleteStudent",
        "/school.student.v1.StudentService//DeleteStudent",
        "/school.student.v1.StudentService/DeleteStudent/",
        "/school.student.v1.StudentService/Delete%53tudent",
        "/school.student.v1.StudentService%2FDeleteStudent",
        "/school.student.v1.StudentService/DeleteStudent?role=admin",
        "/./school.student.v1.StudentService/DeleteStudent",
        "/grpc.health.v1.Health/Check/../../school.student.v1.StudentService/DeleteStudent",
        "/grpc.health.v1.Health/../school.student.v1.StudentService/DeleteStudent",
        "/school.student.v1.StudentService/GetStudent/../DeleteStudent",
    ];

    for token in [None, Some(student.as_str())] {
        for path in paths {
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            grpc.ready().await.expect("channel ready");
            let request = match token {
                Some(token) => with_token(
                    DeleteStudentRequest {
                        id: record.id.clone(),
                    },
                    token,
                ),
                None => delete_request(&record.id),
            };
            let result: Result<tonic::Response<DeleteStudentResponse>, tonic::Status> = grpc
                .unary(
                    request,
                    PathAndQuery::from_static(path),
                    tonic_prost::ProstCodec::default(),
                )
                .await;
            let status = result.expect_err(path);
            assert_ne!(status.code(), Code::Ok, "{path}");
            if token.is_none() {
                assert_eq!(
                    status.code(),
                    Code::Unauthenticated,
                    "{path} without a token"
                );
            }
        }
    }
    assert_record_exists(&stack, &record.id).await;
}

#[tokio::test]
async fn tokens_for_other_deployments_are_rejected() {
    // A student-service that expects another issuer or audience rejects tokens that are
    // genuine for the default deployment.
    for flags in [["--issuer", "other-school"], ["--audience", "billing"]] {
        let stack = Stack::start_with(&[], &flags).await;
        let admin = stack.token(ADMIN).await;
        let status = stack
            .student
            .client()
            .await
            .list_students(with_token(ListStudentsRequest::default(), &admin))
            .await
            .expect_err("token for another deployment");
        assert_eq!(status.code(), Code::Unauthenticated, "{flags:?}");
    }
}
