//! The declarative authorization policy: which roles may call which gRPC method.
//!
//! A policy is a TOML document:
//!
//! ```toml
//! [public]
//! methods = ["grpc.health.v1.Health/Check"]
//!
//! [methods."school.student.v1.StudentService/GetStudent"]
//! roles = ["admin", "teacher"]
//! owner_roles = ["student"]
//! ```
//!
//! Methods are named `package.Service/Method`, as in the HTTP/2 path without its leading slash.
//! Public methods need no token. A caller of any other method needs a role listed in `roles`
//! (full access) or in `owner_roles` (access to the caller's own records only). A method that the
//! policy does not name is denied to everyone.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::identity::Access;

/// A policy that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("failed to read policy file {path}")]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The document is not valid TOML or does not have the policy's shape. The message names
    /// the line and column.
    #[error("invalid policy: {0}")]
    Syntax(#[from] toml::de::Error),
    /// A method name is not of the form `package.Service/Method`.
    #[error("invalid method name {0:?}: expected `package.Service/Method`")]
    InvalidMethod(String),
    /// A role name is empty or has characters other than `a-z`, `0-9`, `_` and `-`.
    #[error("invalid role name {role:?} in the rule for {method}")]
    InvalidRole {
        /// The method whose rule names the role.
        method: String,
        /// The rejected role name.
        role: String,
    },
    /// A method is listed both as public and with a rule.
    #[error("method {0} is both public and protected by a rule")]
    PublicAndProtected(String),
    /// A method is listed twice as public.
    #[error("method {0} is listed twice in [public].methods")]
    DuplicatePublic(String),
    /// A rule allows no role at all.
    #[error("the rule for {0} allows no role: list at least one in roles or owner_roles")]
    EmptyRule(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    public: PublicSection,
    #[serde(default)]
    methods: HashMap<String, RuleSection>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PublicSection {
    #[serde(default)]
    methods: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSection {
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    owner_roles: Vec<String>,
}

/// The roles that may call one method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodRule {
    roles: BTreeSet<String>,
    owner_roles: BTreeSet<String>,
}

impl MethodRule {
    /// Returns the access that `role` grants on this method, or `None` if it grants none.
    pub fn access_for(&self, role: &str) -> Option<Access> {
        if self.roles.contains(role) {
            Some(Access::Full)
        } else if self.owner_roles.contains(role) {
            Some(Access::OwnerOnly)
        } else {
            None
        }
    }

    /// Returns the roles with full access, sorted.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.roles.iter().map(String::as_str)
    }
}

/// The policy decision for a request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule<'a> {
    /// The method needs no token.
    Public,
    /// The method needs a token whose role the rule allows.
    Protected(&'a MethodRule),
    /// The policy does not name the method, so everyone is denied.
    Unknown,
}

/// A validated authorization policy.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    public: BTreeSet<String>,
    methods: HashMap<String, MethodRule>,
}

impl Policy {
    /// Parses and validates a policy document.
    pub fn from_toml_str(text: &str) -> Result<Policy, PolicyError> {
        let document: Document = toml::from_str(text)?;

        let mut public = BTreeSet::new();
        for method in document.public.methods {
            check_method_name(&method)?;
            if !public.insert(method.clone()) {
                return Err(PolicyError::DuplicatePublic(method));
            }
        }

        let mut methods = HashMap::with_capacity(document.methods.len());
        for (method, section) in document.methods {
            check_method_name(&method)?;
            if public.contains(&method) {
                return Err(PolicyError::PublicAndProtected(method));
            }
            if section.roles.is_empty() && section.owner_roles.is_empty() {
                return Err(PolicyError::EmptyRule(method));
            }
            for role in section.roles.iter().chain(&section.owner_roles) {
                if !is_role_name(role) {
                    return Err(PolicyError::InvalidRole {
                        method,
                        role: role.clone(),
                    });
                }
            }
            let rule = MethodRule {
                roles: section.roles.into_iter().collect(),
                owner_roles: section.owner_roles.into_iter().collect(),
            };
            methods.insert(method, rule);
        }

        Ok(Policy { public, methods })
    }

    /// Reads, parses and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Policy::from_toml_str(&text)
    }

    /// Returns the rule for an HTTP/2 request path such as
    /// `/school.student.v1.StudentService/GetStudent`.
    ///
    /// Only the exact path matches: a path that differs in case, has extra or missing slashes,
    /// percent-encoding or a query is [`Rule::Unknown`], so it can never reach a rule that the
    /// canonical path would not.
    pub fn rule(&self, path: &str) -> Rule<'_> {
        let Some(method) = path.strip_prefix('/') else {
            return Rule::Unknown;
        };
        if self.public.contains(method) {
            Rule::Public
        } else if let Some(rule) = self.methods.get(method) {
            Rule::Protected(rule)
        } else {
            Rule::Unknown
        }
    }

    /// Returns every method named by the policy, public ones included, sorted.
    pub fn methods(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .public
            .iter()
            .chain(self.methods.keys())
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names
    }
}

/// Checks that `method` reads `package.Service/Method`, with protobuf identifiers for every part.
fn check_method_name(method: &str) -> Result<(), PolicyError> {
    let invalid = || PolicyError::InvalidMethod(method.to_owned());
    let (service, name) = method.split_once('/').ok_or_else(invalid)?;
    let (package, _service_name) = service.rsplit_once('.').ok_or_else(invalid)?;
    let parts = package
        .split('.')
        .chain(service.rsplit('.').take(1))
        .chain(std::iter::once(name));
    for part in parts {
        if !is_identifier(part) {
            return Err(invalid());
        }
    }
    Ok(())
}

fn is_identifier(text: &str) -> bool {
    let mut bytes = text.bytes();
    matches!(bytes.next(), Some(first) if first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

fn is_role_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_' || byte == b'-'
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
        [public]
        methods = ["grpc.health.v1.Health/Check"]

        [methods."school.student.v1.StudentService/DeleteStudent"]
        roles = ["admin"]

        [methods."school.student.v1.StudentService/GetStudent"]
        roles = ["admin", "teacher"]
        owner_roles = ["student"]
    "#;

    #[test]
    fn rules_match_exact_paths_only() {
        let policy = Policy::from_toml_str(POLICY).expect("valid policy");
        assert_eq!(policy.rule("/grpc.health.v1.Health/Check"), Rule::Public);

        let Rule::Protected(delete) =
            policy.rule("/school.student.v1.StudentService/DeleteStudent")
        else {
            panic!("DeleteStudent must be protected");
        };
        assert_eq!(delete.access_for("admin"), Some(Access::Full));
        assert_eq!(delete.access_for("teacher"), None);
        assert_eq!(delete.access_for("Admin"), None);

        let Rule::Protected(get) = policy.rule("/school.student.v1.StudentService/GetStudent")
        else {
            panic!("GetStudent must be protected");
        };
        assert_eq!(get.access_for("student"), Some(Access::OwnerOnly));

        for path in [
            "school.student.v1.StudentService/DeleteStudent",
            "//school.student.v1.StudentService/DeleteStudent",
            "/school.student.v1.StudentService//DeleteStudent",
            "/school.student.v1.StudentService/DeleteStudent/",
            "/school.student.v1.studentservice/deletestudent",
            "/school.student.v1.StudentService/Delete%53tudent",
            "/school.student.v1.StudentService/DeleteStudent?x=1",
            "/grpc.health.v1.Health/Check/../../school.student.v1.StudentService/DeleteStudent",
            "/grpc.health.v1.Health/check",
            "/",
            "",
        ] {
            assert_eq!(policy.rule(path), Rule::Unknown, "path {path:?}");
        }
    }

    #[test]
    fn invalid_documents_are_rejected() {
        let cases = [
            (
                "[methods.\"bad name\"]\nroles = [\"admin\"]",
                "invalid method name",
            ),
            (
                "[methods.\"pkg.Svc/Method/Extra\"]\nroles = [\"admin\"]",
                "invalid method name",
            ),
            (
                "[methods.\"Svc/Method\"]\nroles = [\"admin\"]",
                "invalid method name",
            ),
            (
                "[methods.\"pkg.Svc/Method\"]\nroles = [\"Admin\"]",
                "invalid role name",
            ),
            (
                "[methods.\"pkg.Svc/Method\"]\nroles = [\"\"]",
                "invalid role name",
            ),
            ("[methods.\"pkg.Svc/Method\"]\nroles = []", "allows no role"),
            (
                "[methods.\"pkg.Svc/Method\"]\nrole = [\"admin\"]",
                "unknown field",
            ),
            (
                "[public]\nmethods = [\"pkg.Svc/M\", \"pkg.Svc/M\"]",
                "listed twice",
            ),
            (
                "[public]\nmethods = [\"pkg.Svc/M\"]\n[methods.\"pkg.Svc/M\"]\nroles = [\"admin\"]",
                "both public and protected",
            ),
            (
                "[methods.\"pkg.Svc/M\"]\nroles = [\"a\"]\n[methods.\"pkg.Svc/M\"]\nroles = [\"b\"]",
                "line 3",
            ),
        ];
        for (text, expected) in cases {
            let error = Policy::from_toml_str(text).expect_err(text).to_string();
            assert!(error.contains(expected), "{text:?} gave {error:?}");
        }
    }
}
