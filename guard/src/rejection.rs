//! The gRPC statuses the guard layer returns, in the standard rich error model.
//!
//! Every rejection carries a `google.rpc.ErrorInfo` detail in its `grpc-status-details-bin`
//! trailer, so that generated clients in any language can branch on a stable reason instead of
//! parsing the message. The domain is always [`DOMAIN`], and the reasons are:
//!
//! | reason | code | when | metadata |
//! | --- | --- | --- | --- |
//! | `MISSING_CREDENTIALS` | `UNAUTHENTICATED` | no `authorization` entry | none |
//! | `MALFORMED_CREDENTIALS` | `UNAUTHENTICATED` | the entry is not one `Bearer <token>` | `problem` |
//! | `TOKEN_EXPIRED` | `UNAUTHENTICATED` | `exp` is in the past | none |
//! | `TOKEN_NOT_YET_VALID` | `UNAUTHENTICATED` | `nbf` is in the future | none |
//! | `TOKEN_REVOKED` | `UNAUTHENTICATED` | the token was revoked, as by `Logout` | none |
//! | `TOKEN_INVALID` | `UNAUTHENTICATED` | any other token failure | `problem` |
//! | `PERMISSION_DENIED` | `PERMISSION_DENIED` | the caller's role may not call the method | `method`, `role`, `permission`, `allowed_roles` |
//! | `NO_POLICY_RULE` | `PERMISSION_DENIED` | the policy does not name the method | `method` |
//!
//! `problem` is the same lower-case name that the guard logs, such as `bad_signature`.
//! `permission` is the one the method needs, and `allowed_roles` lists the roles that grant it,
//! separated by commas.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt as _};

use crate::bearer::CredentialError;
use crate::identity::Identity;
use crate::policy::Rule;
use crate::verify::TokenError;

/// The `ErrorInfo.domain` of every guard rejection.
pub const DOMAIN: &str = "school-guard";

/// `ErrorInfo.reason` when the request has no `authorization` metadata entry.
pub const MISSING_CREDENTIALS: &str = "MISSING_CREDENTIALS";
/// `ErrorInfo.reason` when the `authorization` metadata is not a single `Bearer <token>`.
pub const MALFORMED_CREDENTIALS: &str = "MALFORMED_CREDENTIALS";
/// `ErrorInfo.reason` when the token's `exp` has passed: log in again and retry.
pub const TOKEN_EXPIRED: &str = "TOKEN_EXPIRED";
/// `ErrorInfo.reason` when the token's `nbf` is in the future, usually because of clock skew.
pub const TOKEN_NOT_YET_VALID: &str = "TOKEN_NOT_YET_VALID";
/// `ErrorInfo.reason` when the token was revoked before its `exp`: log in again.
pub const TOKEN_REVOKED: &str = "TOKEN_REVOKED";
/// `ErrorInfo.reason` for every other token failure.
pub const TOKEN_INVALID: &str = "TOKEN_INVALID";
/// `ErrorInfo.reason` when the caller's role may not call the method.
pub const PERMISSION_DENIED: &str = "PERMISSION_DENIED";
/// `ErrorInfo.reason` when the policy does not name the method, so every caller is denied.
pub const NO_POLICY_RULE: &str = "NO_POLICY_RULE";

/// `ErrorInfo.reason` when the service cannot check tokens yet, because it has not received
/// the revocation list: retry with backoff.
pub const REVOCATIONS_NOT_LOADED: &str = "REVOCATIONS_NOT_LOADED";

/// Builds the `UNAVAILABLE` status for a protected call that arrives before the revocation list
/// is loaded.
pub fn revocations_not_loaded() -> Status {
    with_error_info(
        Code::Unavailable,
        "the revocation list is not loaded yet; retry shortly".to_owned(),
        REVOCATIONS_NOT_LOADED,
        HashMap::new(),
    )
}

/// Builds the `UNAUTHENTICATED` status for a request whose metadata carries no usable bearer
/// token.
pub fn credential_rejected(error: CredentialError) -> Status {
    let (reason, metadata) = match error {
        CredentialError::Missing => (MISSING_CREDENTIALS, HashMap::new()),
        CredentialError::Duplicate
        | CredentialError::UnsupportedScheme
        | CredentialError::Malformed
        | CredentialError::TooLarge => (MALFORMED_CREDENTIALS, problem(error.as_str())),
    };
    with_error_info(Code::Unauthenticated, error.to_string(), reason, metadata)
}

/// Builds the `UNAUTHENTICATED` status for a bearer token that failed verification.
pub fn token_rejected(error: TokenError) -> Status {
    let (reason, metadata) = match error {
        TokenError::Expired => (TOKEN_EXPIRED, HashMap::new()),
        TokenError::NotYetValid => (TOKEN_NOT_YET_VALID, HashMap::new()),
        TokenError::Revoked => (TOKEN_REVOKED, HashMap::new()),
        TokenError::Malformed
        | TokenError::BadSignature
        | TokenError::UnknownKey
        | TokenError::WrongIssuer
        | TokenError::WrongAudience
        | TokenError::UnsupportedAlgorithm
        | TokenError::MissingClaim => (TOKEN_INVALID, problem(error.as_str())),
    };
    with_error_info(Code::Unauthenticated, error.to_string(), reason, metadata)
}

/// Builds the `PERMISSION_DENIED` status, with `message`, for an authenticated caller that `rule`
/// does not allow to call `path`.
pub fn access_denied(path: &str, identity: &Identity, rule: Rule<'_>, message: String) -> Status {
    let method = path.trim_start_matches('/');
    let mut metadata = HashMap::from([("method".to_owned(), method.to_owned())]);
    match rule {
        Rule::Protected(method_rule) => {
            metadata.insert("role".to_owned(), identity.role.clone());
            metadata.insert("permission".to_owned(), method_rule.permission().to_owned());
            let allowed: Vec<&str> = method_rule.roles().collect();
            metadata.insert("allowed_roles".to_owned(), allowed.join(","));
            if let Some(owner_permission) = method_rule.owner_permission() {
                let owner_roles: Vec<&str> = method_rule.owner_roles().collect();
                metadata.insert("owner_permission".to_owned(), owner_permission.to_owned());
                metadata.insert("owner_roles".to_owned(), owner_roles.join(","));
            }
            with_error_info(Code::PermissionDenied, message, PERMISSION_DENIED, metadata)
        }
        Rule::Public | Rule::Unknown => {
            with_error_info(Code::PermissionDenied, message, NO_POLICY_RULE, metadata)
        }
    }
}

fn problem(name: &str) -> HashMap<String, String> {
    HashMap::from([("problem".to_owned(), name.to_owned())])
}

fn with_error_info(
    code: Code,
    message: impl Into<String>,
    reason: &str,
    metadata: HashMap<String, String>,
) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, DOMAIN, metadata),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

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

    #[test]
    fn every_credential_error_has_a_reason() {
        let cases = [
            (CredentialError::Missing, MISSING_CREDENTIALS, None),
            (
                CredentialError::Duplicate,
                MALFORMED_CREDENTIALS,
                Some("duplicate_credentials"),
            ),
            (
                CredentialError::UnsupportedScheme,
                MALFORMED_CREDENTIALS,
                Some("unsupported_scheme"),
            ),
            (
                CredentialError::Malformed,
                MALFORMED_CREDENTIALS,
                Some("malformed_credentials"),
            ),
            (
                CredentialError::TooLarge,
                MALFORMED_CREDENTIALS,
                Some("credentials_too_large"),
            ),
        ];
        for (error, reason, problem) in cases {
            let status = credential_rejected(error);

            let (actual_reason, domain, metadata) = error_info(&status);
            assert_eq!(status.code(), Code::Unauthenticated, "{error:?}");
            assert_eq!(actual_reason, reason, "{error:?}");
            assert_eq!(domain, DOMAIN, "{error:?}");
            assert_eq!(
                metadata.get("problem").map(String::as_str),
                problem,
                "{error:?}"
            );
        }
    }

    #[test]
    fn every_token_error_has_a_reason() {
        let cases = [
            (TokenError::Expired, TOKEN_EXPIRED),
            (TokenError::NotYetValid, TOKEN_NOT_YET_VALID),
            (TokenError::Revoked, TOKEN_REVOKED),
            (TokenError::Malformed, TOKEN_INVALID),
            (TokenError::BadSignature, TOKEN_INVALID),
            (TokenError::UnknownKey, TOKEN_INVALID),
            (TokenError::WrongIssuer, TOKEN_INVALID),
            (TokenError::WrongAudience, TOKEN_INVALID),
            (TokenError::UnsupportedAlgorithm, TOKEN_INVALID),
            (TokenError::MissingClaim, TOKEN_INVALID),
        ];
        for (error, reason) in cases {
            let status = token_rejected(error);

            let (actual_reason, domain, metadata) = error_info(&status);
            assert_eq!(status.code(), Code::Unauthenticated, "{error:?}");
            assert_eq!(status.message(), error.to_string(), "{error:?}");
            assert_eq!(actual_reason, reason, "{error:?}");
            assert_eq!(domain, DOMAIN, "{error:?}");
            if reason == TOKEN_INVALID {
                assert_eq!(
                    metadata.get("problem").map(String::as_str),
                    Some(error.as_str()),
                    "{error:?}"
                );
            }
        }
    }

    #[test]
    fn denial_names_method_and_allowed_roles() {
        let policy = Policy::from_toml_str(
            r#"
            [roles]
            admin = ["students.delete"]
            principal = ["students.delete"]
            student = []

            [methods."school.student.v1.StudentService/DeleteStudent"]
            permission = "students.delete"
            "#,
        )
        .unwrap();
        let path = "/school.student.v1.StudentService/DeleteStudent";
        let identity = Identity {
            subject: "sam".to_owned(),
            role: "student".to_owned(),
            token_id: "id".to_owned(),
            expires_at: 0,
        };

        let status = access_denied(path, &identity, policy.rule(path), "denied".to_owned());

        let (reason, domain, metadata) = error_info(&status);
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(reason, PERMISSION_DENIED);
        assert_eq!(domain, DOMAIN);
        assert_eq!(
            metadata.get("method").map(String::as_str),
            Some("school.student.v1.StudentService/DeleteStudent")
        );
        assert_eq!(metadata.get("role").map(String::as_str), Some("student"));
        assert_eq!(
            metadata.get("permission").map(String::as_str),
            Some("students.delete")
        );
        assert_eq!(
            metadata.get("allowed_roles").map(String::as_str),
            Some("admin,principal")
        );
    }

    #[test]
    fn unknown_method_denial_has_its_own_reason() {
        let identity = Identity {
            subject: "ada".to_owned(),
            role: "admin".to_owned(),
            token_id: "id".to_owned(),
            expires_at: 0,
        };

        let status = access_denied(
            "/pkg.Service/Unlisted",
            &identity,
            Rule::Unknown,
            "denied".to_owned(),
        );

        let (reason, _, metadata) = error_info(&status);
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(reason, NO_POLICY_RULE);
        assert_eq!(
            metadata.get("method").map(String::as_str),
            Some("pkg.Service/Unlisted")
        );
        assert!(!metadata.contains_key("allowed_roles"));
    }
}
