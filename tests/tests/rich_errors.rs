//! Every rejection carries a `google.rpc.ErrorInfo` that clients can branch on, read here the way
//! a generated client reads it: from the `grpc-status-details-bin` trailer.

use std::collections::HashMap;

use integration_tests::forge::{claims, now};
use integration_tests::{ADMIN, STUDENT, Stack, with_token};
use school_proto::auth::v1::LoginRequest;
use school_proto::student::v1::{CreateStudentRequest, DeleteStudentRequest};
use serde_json::json;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

/// Returns the reason, domain and metadata of a status's `ErrorInfo`, or empty strings without one.
fn error_info(status: &Status) -> (String, String, HashMap<String, String>) {
    match status.get_error_details().error_info() {
        Some(info) => (
            info.reason.clone(),
            info.domain.clone(),
            info.metadata.clone(),
        ),
        None => Default::default(),
    }
}

fn delete_request(id: &str) -> DeleteStudentRequest {
    DeleteStudentRequest { id: id.to_owned() }
}

#[tokio::test]
async fn missing_token_is_missing_credentials() {
    let stack = Stack::start().await;

    let status = stack
        .student
        .client()
        .await
        .delete_student(delete_request("any"))
        .await
        .unwrap_err();

    let (reason, domain, _) = error_info(&status);
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason, "MISSING_CREDENTIALS");
    assert_eq!(domain, "school-guard");
}

#[tokio::test]
async fn expired_and_bad_tokens_have_distinct_reasons() {
    let stack = Stack::start().await;
    let mut expired = claims(ADMIN, "admin");
    expired["exp"] = json!(now() - 3600);
    let cases = [
        (
            "expired",
            stack.forger.sign(&expired),
            "TOKEN_EXPIRED",
            None,
        ),
        (
            "garbage",
            "not-a-jwt".to_owned(),
            "TOKEN_INVALID",
            Some("malformed"),
        ),
        (
            "foreign key",
            integration_tests::forge::Forger::random().sign(&claims(ADMIN, "admin")),
            "TOKEN_INVALID",
            Some("unknown_key"),
        ),
    ];

    for (case, token, expected_reason, expected_problem) in cases {
        let status = stack
            .student
            .client()
            .await
            .delete_student(with_token(delete_request("any"), &token))
            .await
            .unwrap_err();

        let (reason, domain, metadata) = error_info(&status);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}");
        assert_eq!(reason, expected_reason, "{case}");
        assert_eq!(domain, "school-guard", "{case}");
        assert_eq!(
            metadata.get("problem").map(String::as_str),
            expected_problem,
            "{case}"
        );
    }
}

#[tokio::test]
async fn denial_names_method_and_allowed_roles() {
    let stack = Stack::start().await;
    let token = stack.token(STUDENT).await;

    let status = stack
        .student
        .client()
        .await
        .delete_student(with_token(delete_request("any"), &token))
        .await
        .unwrap_err();

    let (reason, domain, metadata) = error_info(&status);
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason, "PERMISSION_DENIED");
    assert_eq!(domain, "school-guard");
    assert_eq!(
        metadata.get("method").map(String::as_str),
        Some("school.student.v1.StudentService/DeleteStudent")
    );
    assert_eq!(metadata.get("role").map(String::as_str), Some("student"));
    assert_eq!(
        metadata.get("allowed_roles").map(String::as_str),
        Some("admin")
    );
}

#[tokio::test]
async fn handler_errors_carry_service_details() {
    let stack = Stack::start().await;
    let token = stack.token(ADMIN).await;
    let mut students = stack.student.client().await;

    let invalid = students
        .create_student(with_token(
            CreateStudentRequest {
                name: "Ada".to_owned(),
                email: "not-an-email".to_owned(),
                account_username: String::new(),
                grade_level: 5,
            },
            &token,
        ))
        .await
        .unwrap_err();
    let missing_id = "00000000-0000-4000-8000-000000000000";
    let missing = students
        .delete_student(with_token(delete_request(missing_id), &token))
        .await
        .unwrap_err();

    assert_eq!(invalid.code(), Code::InvalidArgument);
    let details = invalid.get_error_details();
    let violations = details
        .bad_request()
        .map(|bad_request| bad_request.field_violations.clone())
        .unwrap_or_default();
    assert_eq!(violations.len(), 1);
    assert_eq!(violations[0].field, "email");
    assert_eq!(error_info(&invalid).0, "INVALID_ARGUMENT");
    assert_eq!(error_info(&invalid).1, "student-service");

    assert_eq!(missing.code(), Code::NotFound);
    let (reason, domain, metadata) = error_info(&missing);
    assert_eq!(reason, "STUDENT_NOT_FOUND");
    assert_eq!(domain, "student-service");
    assert_eq!(metadata.get("id").map(String::as_str), Some(missing_id));
}

#[tokio::test]
async fn failed_login_is_invalid_credentials() {
    let stack = Stack::start().await;

    let status = stack
        .auth
        .client()
        .await
        .login(LoginRequest {
            username: ADMIN.to_owned(),
            password: "wrong password".to_owned(),
        })
        .await
        .unwrap_err();

    let (reason, domain, _) = error_info(&status);
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(reason, "INVALID_CREDENTIALS");
    assert_eq!(domain, "auth-service");
}
