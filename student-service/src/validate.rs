//! Checks of request fields. Each error is [`Error::InvalidArgument`] naming the field.

use school_proto::student::v1::CreateStudentRequest;
use uuid::Uuid;

use crate::error::Error;

/// Maximum length of a name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Maximum length of an email address, in bytes (the limit of RFC 5321 forward paths less the
/// angle brackets).
pub const MAX_EMAIL_BYTES: usize = 254;
/// Maximum length of an account username, in bytes.
pub const MAX_USERNAME_BYTES: usize = 64;
/// Highest grade level; 0 means unknown.
pub const MAX_GRADE_LEVEL: i32 = 13;

/// The fields of a new student, checked and normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewStudent {
    /// Full name with surrounding whitespace removed.
    pub name: String,
    /// Email address.
    pub email: String,
    /// Account username, `None` when the request left it empty.
    pub account_username: Option<String>,
    /// Grade level, 0 to 13.
    pub grade_level: i32,
}

/// Checks every field of a CreateStudent request and returns them normalized.
pub fn new_student(request: CreateStudentRequest) -> Result<NewStudent, Error> {
    let name = validate_name(&request.name)?;
    validate_email(&request.email)?;
    let account_username = if request.account_username.is_empty() {
        None
    } else {
        validate_username(&request.account_username)?;
        Some(request.account_username)
    };
    validate_grade_level(request.grade_level)?;

    Ok(NewStudent {
        name,
        email: request.email,
        account_username,
        grade_level: request.grade_level,
    })
}

/// Parses a student id, which must be a UUID.
pub fn student_id(id: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(id).map_err(|_| {
        invalid(
            "id",
            "must be a UUID such as 0b5c2d4e-8f1a-4c3b-9d2e-7a6f5e4d3c2b",
        )
    })
}

/// Returns the number of records to list for a requested `page_size`: 0 means 20, and larger
/// sizes are capped at 100.
pub fn page_size(requested: i32) -> Result<usize, Error> {
    const DEFAULT: usize = 20;
    const MAX: usize = 100;

    match usize::try_from(requested) {
        Ok(0) => Ok(DEFAULT),
        Ok(size) => Ok(size.min(MAX)),
        Err(_) => Err(invalid("page_size", "must not be negative")),
    }
}

fn validate_name(name: &str) -> Result<String, Error> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(invalid("name", "must not be empty"));
    }
    if trimmed.chars().count() > MAX_NAME_CHARS {
        return Err(invalid(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(invalid("name", "must not contain control characters"));
    }
    Ok(trimmed.to_owned())
}

fn validate_email(email: &str) -> Result<(), Error> {
    if email.len() > MAX_EMAIL_BYTES {
        return Err(invalid(
            "email",
            format!("must be at most {MAX_EMAIL_BYTES} bytes"),
        ));
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "email",
            "must not contain whitespace or control characters",
        ));
    }
    let mut parts = email.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(invalid("email", "must contain exactly one '@'"));
    };
    if local.is_empty() || domain.is_empty() {
        return Err(invalid("email", "must have text on both sides of the '@'"));
    }
    Ok(())
}

fn validate_username(username: &str) -> Result<(), Error> {
    if username.len() > MAX_USERNAME_BYTES {
        return Err(invalid(
            "account_username",
            format!("must be at most {MAX_USERNAME_BYTES} bytes"),
        ));
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@');
    if !username.bytes().all(allowed) {
        return Err(invalid(
            "account_username",
            "may contain only ASCII letters, digits, '.', '_', '-' and '@'",
        ));
    }
    Ok(())
}

fn validate_grade_level(grade_level: i32) -> Result<(), Error> {
    if !(0..=MAX_GRADE_LEVEL).contains(&grade_level) {
        return Err(invalid(
            "grade_level",
            format!("must be between 0 (unknown) and {MAX_GRADE_LEVEL}, got {grade_level}"),
        ));
    }
    Ok(())
}

fn invalid(field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidArgument {
        field,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> CreateStudentRequest {
        CreateStudentRequest {
            name: "Ada Lovelace".to_owned(),
            email: "ada@school.test".to_owned(),
            account_username: "ada.l".to_owned(),
            grade_level: 9,
        }
    }

    fn rejected_field(request: CreateStudentRequest) -> &'static str {
        match new_student(request) {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn valid_request_accepted() {
        let student = new_student(request()).unwrap();

        assert_eq!(student.name, "Ada Lovelace");
        assert_eq!(student.email, "ada@school.test");
        assert_eq!(student.account_username.as_deref(), Some("ada.l"));
        assert_eq!(student.grade_level, 9);
    }

    #[test]
    fn name_trimmed() {
        let student = new_student(CreateStudentRequest {
            name: "  Ada  ".to_owned(),
            ..request()
        })
        .unwrap();

        assert_eq!(student.name, "Ada");
    }

    #[test]
    fn empty_account_is_none() {
        let student = new_student(CreateStudentRequest {
            account_username: String::new(),
            ..request()
        })
        .unwrap();

        assert_eq!(student.account_username, None);
    }

    #[test]
    fn name_limits() {
        let at_limit = "é".repeat(MAX_NAME_CHARS);
        let accepted = new_student(CreateStudentRequest {
            name: at_limit,
            ..request()
        });
        assert!(accepted.is_ok(), "{accepted:?}");

        for name in ["", "   ", &"a".repeat(MAX_NAME_CHARS + 1), "Ada\nLovelace"] {
            let field = rejected_field(CreateStudentRequest {
                name: name.to_owned(),
                ..request()
            });
            assert_eq!(field, "name", "name {name:?}");
        }
    }

    #[test]
    fn email_limits() {
        let local = "a".repeat(MAX_EMAIL_BYTES - "@b.c".len());
        let at_limit = format!("{local}@b.c");
        let accepted = new_student(CreateStudentRequest {
            email: at_limit.clone(),
            ..request()
        });
        assert!(accepted.is_ok(), "{accepted:?}");

        let too_long = format!("a{at_limit}");
        for email in [
            "",
            "ada",
            "@school.test",
            "ada@",
            "ada@@school.test",
            "a@b@c",
            "ada lovelace@school.test",
            too_long.as_str(),
        ] {
            let field = rejected_field(CreateStudentRequest {
                email: email.to_owned(),
                ..request()
            });
            assert_eq!(field, "email", "email {email:?}");
        }
    }

    #[test]
    fn username_limits() {
        let at_limit = "u".repeat(MAX_USERNAME_BYTES);
        let accepted = new_student(CreateStudentRequest {
            account_username: at_limit,
            ..request()
        });
        assert!(accepted.is_ok(), "{accepted:?}");

        let too_long = "u".repeat(MAX_USERNAME_BYTES + 1);
        for username in [
            "ada lovelace",
            "ada/..",
            "adá",
            "ada\u{202e}",
            too_long.as_str(),
        ] {
            let field = rejected_field(CreateStudentRequest {
                account_username: username.to_owned(),
                ..request()
            });
            assert_eq!(field, "account_username", "username {username:?}");
        }
    }

    #[test]
    fn grade_level_limits() {
        for grade_level in [0, 1, MAX_GRADE_LEVEL] {
            let accepted = new_student(CreateStudentRequest {
                grade_level,
                ..request()
            });
            assert!(accepted.is_ok(), "grade {grade_level}: {accepted:?}");
        }
        for grade_level in [-1, MAX_GRADE_LEVEL + 1, i32::MIN, i32::MAX] {
            let field = rejected_field(CreateStudentRequest {
                grade_level,
                ..request()
            });
            assert_eq!(field, "grade_level", "grade {grade_level}");
        }
    }

    #[test]
    fn page_size_defaults_and_caps() {
        assert_eq!(page_size(0).unwrap(), 20);
        assert_eq!(page_size(1).unwrap(), 1);
        assert_eq!(page_size(100).unwrap(), 100);
        assert_eq!(page_size(101).unwrap(), 100);
        assert_eq!(page_size(i32::MAX).unwrap(), 100);
    }

    #[test]
    fn negative_page_size_rejected() {
        for size in [-1, i32::MIN] {
            let error = page_size(size).unwrap_err();

            assert!(
                matches!(
                    error,
                    Error::InvalidArgument {
                        field: "page_size",
                        ..
                    }
                ),
                "{error:?}"
            );
        }
    }

    #[test]
    fn student_id_must_be_uuid() {
        let id = Uuid::new_v4();

        assert_eq!(student_id(&id.to_string()).unwrap(), id);
        for text in ["", "42", "not-a-uuid", "../etc/passwd"] {
            let error = student_id(text).unwrap_err();

            assert!(
                matches!(error, Error::InvalidArgument { field: "id", .. }),
                "{text:?}: {error:?}"
            );
        }
    }
}
