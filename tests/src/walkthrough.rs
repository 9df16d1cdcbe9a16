//! The main job end to end, as the dev command shows it: log in, create a student record, show
//! that only an admin may delete it, then delete it.

use school_proto::auth::v1::LoginRequest;
use school_proto::auth::v1::auth_service_client::AuthServiceClient;
use school_proto::student::v1::student_service_client::StudentServiceClient;
use school_proto::student::v1::{CreateStudentRequest, DeleteStudentRequest, GetStudentRequest};
use tonic::Code;
use tonic::transport::Channel;

use crate::with_token;

/// A username and password.
pub struct Credentials {
    /// The account name.
    pub username: String,
    /// The password.
    pub password: String,
}

/// A step whose outcome differed from the expected one.
#[derive(Debug)]
pub struct StepFailed {
    /// What the step did.
    pub step: &'static str,
    /// The expected gRPC code.
    pub expected: Code,
    /// The code that came back.
    pub actual: Code,
    /// The status message that came back.
    pub message: String,
}

impl std::fmt::Display for StepFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: expected {:?}, got {:?} ({})",
            self.step, self.expected, self.actual, self.message
        )
    }
}

impl std::error::Error for StepFailed {}

/// Runs the walkthrough against running services and prints one line per step to `out`.
///
/// `student` is an account with the `student` role; the created record is owned by it.
pub async fn run(
    auth: Channel,
    students: Channel,
    admin: &Credentials,
    student: &Credentials,
    out: &mut (dyn std::io::Write + Send),
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut auth = AuthServiceClient::new(auth);
    let mut students = StudentServiceClient::new(students);

    let admin_token = login(&mut auth, admin).await?;
    writeln!(
        out,
        "ok   Login as {:?} (admin): got a Bearer token",
        admin.username
    )?;

    let created = students
        .create_student(with_token(
            CreateStudentRequest {
                name: "Sam Example".into(),
                email: "sam@example.org".into(),
                account_username: student.username.clone(),
                grade_level: 10,
            },
            &admin_token,
        ))
        .await?
        .into_inner()
        .student
        .ok_or("CreateStudent returned no record")?;
    let id = created.id;
    writeln!(out, "ok   CreateStudent as admin: id {id}")?;

    let student_token = login(&mut auth, student).await?;
    writeln!(out, "ok   Login as {:?} (student)", student.username)?;

    students
        .get_student(with_token(
            GetStudentRequest { id: id.clone() },
            &student_token,
        ))
        .await?;
    writeln!(out, "ok   GetStudent as the record's own student: allowed")?;

    let denied = students
        .delete_student(with_token(
            DeleteStudentRequest { id: id.clone() },
            &student_token,
        ))
        .await;
    expect_code(denied, Code::PermissionDenied, "DeleteStudent as a student")?;
    writeln!(out, "ok   DeleteStudent as a student: PERMISSION_DENIED")?;

    let anonymous = students
        .delete_student(DeleteStudentRequest { id: id.clone() })
        .await;
    expect_code(
        anonymous,
        Code::Unauthenticated,
        "DeleteStudent without a token",
    )?;
    writeln!(out, "ok   DeleteStudent without a token: UNAUTHENTICATED")?;

    students
        .delete_student(with_token(
            DeleteStudentRequest { id: id.clone() },
            &admin_token,
        ))
        .await?;
    writeln!(out, "ok   DeleteStudent as admin: deleted")?;

    let gone = students
        .get_student(with_token(GetStudentRequest { id }, &admin_token))
        .await;
    expect_code(gone, Code::NotFound, "GetStudent after the delete")?;
    writeln!(out, "ok   GetStudent after the delete: NOT_FOUND")?;
    Ok(())
}

async fn login(
    auth: &mut AuthServiceClient<Channel>,
    credentials: &Credentials,
) -> Result<String, tonic::Status> {
    let response = auth
        .login(LoginRequest {
            username: credentials.username.clone(),
            password: credentials.password.clone(),
        })
        .await?;
    Ok(response.into_inner().access_token)
}

fn expect_code<T>(
    result: Result<T, tonic::Status>,
    expected: Code,
    step: &'static str,
) -> Result<(), StepFailed> {
    let (actual, message) = match result {
        Ok(_) => (Code::Ok, String::new()),
        Err(status) => (status.code(), status.message().to_owned()),
    };
    if actual == expected {
        Ok(())
    } else {
        Err(StepFailed {
            step,
            expected,
            actual,
            message,
        })
    }
}
