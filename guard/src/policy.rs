//! The declarative authorization policy: which permissions each gRPC method needs, and which
//! permissions each role grants.
//!
//! A policy is a TOML document:
//!
//! ```toml
//! [roles]
//! admin = ["students.read", "students.delete"]
//! student = ["students.read.own"]
//!
//! [public]
//! methods = ["grpc.health.v1.Health/Check"]
//!
//! [methods."school.student.v1.StudentService/GetStudent"]
//! permission = "students.read"
//! owner_permission = "students.read.own"
//! ```
//!
//! Methods are named `package.Service/Method`, as in the HTTP/2 path without its leading slash.
//! Public methods need no token. A caller of any other method needs a role that grants the
//! method's `permission` (full access) or its `owner_permission` (access to the caller's own
//! records only). A method that the policy does not name is denied to everyone.
//!
//! Tokens carry only the role, so a change to a role's permissions takes effect without new
//! tokens.

use std::collections::{BTreeMap, BTreeSet, HashMap};
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
    #[error(
        "invalid policy, line {line}: invalid method name {method:?}, expected `package.Service/Method`"
    )]
    InvalidMethod {
        /// The rejected name.
        method: String,
        /// The line that names it, counted from 1, or 0 if it was not found.
        line: usize,
    },
    /// A role or permission name is empty, too long, or has characters other than `a-z`, `0-9`,
    /// `.`, `_` and `-`.
    #[error(
        "invalid policy, line {line}: invalid name {name:?}: use 1 to 64 characters of a-z, 0-9, '.', '_' and '-'"
    )]
    InvalidName {
        /// The rejected name.
        name: String,
        /// The line that names it, counted from 1, or 0 if it was not found.
        line: usize,
    },
    /// A method is listed both as public and with a rule.
    #[error("invalid policy, line {line}: method {method} is both public and protected by a rule")]
    PublicAndProtected {
        /// The method listed twice.
        method: String,
        /// The line of its rule.
        line: usize,
    },
    /// A method is listed twice as public.
    #[error("invalid policy, line {line}: method {method} is listed twice in [public].methods")]
    DuplicatePublic {
        /// The method listed twice.
        method: String,
        /// The line of its second listing.
        line: usize,
    },
    /// A role grants a permission that no method needs, which is most often a typo.
    #[error(
        "invalid policy, line {line}: role {role:?} grants {permission:?}, which no method needs"
    )]
    UnknownPermission {
        /// The role that grants it.
        role: String,
        /// The unknown permission.
        permission: String,
        /// The line of the role.
        line: usize,
    },
    /// The descriptors of the served services, which the policy is checked against, could not
    /// be decoded.
    #[error("failed to decode the descriptors of the served services")]
    Descriptor(#[source] prost::DecodeError),
    /// A method named by the policy is not served by the service that loads it.
    #[error("invalid policy, line {line}: method {method} is not served by this service")]
    UnknownMethod {
        /// The method the service does not serve.
        method: String,
        /// The line that names it.
        line: usize,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    #[serde(default)]
    roles: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    public: PublicSection,
    #[serde(default)]
    methods: BTreeMap<String, RuleSection>,
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
    permission: String,
    #[serde(default)]
    owner_permission: Option<String>,
}

/// The permissions one method needs, resolved against the roles of the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodRule {
    permission: String,
    owner_permission: Option<String>,
    /// Roles that grant `permission`.
    full_roles: BTreeSet<String>,
    /// Roles that grant `owner_permission` but not `permission`.
    owner_roles: BTreeSet<String>,
}

impl MethodRule {
    /// Returns the access that `role` grants on this method, or `None` if it grants none.
    pub fn access_for(&self, role: &str) -> Option<Access> {
        if self.full_roles.contains(role) {
            Some(Access::Full)
        } else if self.owner_roles.contains(role) {
            Some(Access::OwnerOnly)
        } else {
            None
        }
    }

    /// Returns the permission that grants full access to the method.
    pub fn permission(&self) -> &str {
        &self.permission
    }

    /// Returns the permission that grants access to the caller's own records, if the method has
    /// one.
    pub fn owner_permission(&self) -> Option<&str> {
        self.owner_permission.as_deref()
    }

    /// Returns the roles with full access, sorted.
    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.full_roles.iter().map(String::as_str)
    }

    /// Returns the roles with access to the caller's own records only, sorted.
    pub fn owner_roles(&self) -> impl Iterator<Item = &str> {
        self.owner_roles.iter().map(String::as_str)
    }
}

/// The policy decision for a request path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule<'a> {
    /// The method needs no token.
    Public,
    /// The method needs a token whose role grants the rule's permission.
    Protected(&'a MethodRule),
    /// The policy does not name the method, so everyone is denied.
    Unknown,
}

/// A validated authorization policy.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    public: BTreeSet<String>,
    methods: HashMap<String, MethodRule>,
    /// Line numbers of method names in the source text, for later validation errors.
    lines: HashMap<String, usize>,
}

impl Policy {
    /// Parses and validates a policy document.
    pub fn from_toml_str(text: &str) -> Result<Policy, PolicyError> {
        let document: Document = toml::from_str(text)?;
        let line_of = |quoted: &str| line_of(text, quoted);

        let mut public = BTreeSet::new();
        for method in document.public.methods {
            check_method_name(&method, line_of(&format!("\"{method}\"")))?;
            if public.contains(&method) {
                let line = last_line_of(text, &format!("\"{method}\""));
                return Err(PolicyError::DuplicatePublic { method, line });
            }
            public.insert(method);
        }

        let mut needed = BTreeSet::new();
        for (method, rule) in &document.methods {
            let line = line_of(&format!("methods.\"{method}\""));
            check_method_name(method, line)?;
            if public.contains(method) {
                return Err(PolicyError::PublicAndProtected {
                    method: method.clone(),
                    line,
                });
            }
            for permission in std::iter::once(&rule.permission).chain(&rule.owner_permission) {
                check_name(permission, line)?;
                needed.insert(permission.as_str());
            }
        }

        for (role, permissions) in &document.roles {
            let line = line_of(&format!("{role} ="));
            check_name(role, line)?;
            for permission in permissions {
                check_name(permission, line)?;
                if !needed.contains(permission.as_str()) {
                    return Err(PolicyError::UnknownPermission {
                        role: role.clone(),
                        permission: permission.clone(),
                        line,
                    });
                }
            }
        }

        let grants = |permission: &str| -> BTreeSet<String> {
            document
                .roles
                .iter()
                .filter(|(_, permissions)| permissions.iter().any(|p| p == permission))
                .map(|(role, _)| role.clone())
                .collect()
        };
        let mut methods = HashMap::with_capacity(document.methods.len());
        let mut lines = HashMap::new();
        for (method, section) in document.methods {
            let full_roles = grants(&section.permission);
            let owner_roles = section
                .owner_permission
                .as_deref()
                .map(grants)
                .unwrap_or_default()
                .difference(&full_roles)
                .cloned()
                .collect();
            lines.insert(method.clone(), line_of(&format!("methods.\"{method}\"")));
            let rule = MethodRule {
                permission: section.permission,
                owner_permission: section.owner_permission,
                full_roles,
                owner_roles,
            };
            methods.insert(method, rule);
        }
        for method in &public {
            lines.insert(method.clone(), line_of(&format!("\"{method}\"")));
        }

        Ok(Policy {
            public,
            methods,
            lines,
        })
    }

    /// Reads, parses and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.to_owned(),
            source,
        })?;
        Policy::from_toml_str(&text)
    }

    /// Checks the policy against the methods a service actually serves, each named
    /// `package.Service/Method`.
    ///
    /// Fails if the policy names a method that is not served. Returns the served methods that
    /// the policy does not name, sorted: they are denied to every caller, which the service
    /// should report.
    pub fn check_served_methods<'a>(
        &self,
        served: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<String>, PolicyError> {
        let served: BTreeSet<&str> = served.into_iter().collect();
        let mut named: Vec<&str> = self
            .public
            .iter()
            .chain(self.methods.keys())
            .map(String::as_str)
            .collect();
        named.sort_unstable();
        if let Some(unknown) = named.iter().find(|method| !served.contains(*method)) {
            return Err(PolicyError::UnknownMethod {
                method: (*unknown).to_owned(),
                line: self.lines.get(*unknown).copied().unwrap_or(0),
            });
        }
        Ok(served
            .into_iter()
            .filter(|method| !self.public.contains(*method) && !self.methods.contains_key(*method))
            .map(str::to_owned)
            .collect())
    }

    /// Returns the rule for an HTTP/2 request path such as
    /// `/school.student.v1.StudentService/GetStudent`.
    ///
    /// Only the exact path matches. A path that differs in case, has extra or missing slashes,
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

/// Returns the number of the first line of `text` that contains `needle`, counted from 1, or 0.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|line| line.contains(needle))
        .map_or(0, |index| index + 1)
}

/// Returns the number of the last line of `text` that contains `needle`, counted from 1, or 0.
fn last_line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, line)| line.contains(needle))
        .last()
        .map_or(0, |(index, _)| index + 1)
}

/// Checks that `method` reads `package.Service/Method`, with protobuf identifiers for every part.
fn check_method_name(method: &str, line: usize) -> Result<(), PolicyError> {
    let invalid = || PolicyError::InvalidMethod {
        method: method.to_owned(),
        line,
    };
    let (service, name) = method.split_once('/').ok_or_else(invalid)?;
    if !service.contains('.') {
        return Err(invalid());
    }
    if !service
        .split('.')
        .chain(std::iter::once(name))
        .all(is_identifier)
    {
        return Err(invalid());
    }
    Ok(())
}

fn is_identifier(text: &str) -> bool {
    let mut bytes = text.bytes();
    matches!(bytes.next(), Some(first) if first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
}

/// Checks a role or permission name.
fn check_name(name: &str, line: usize) -> Result<(), PolicyError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || matches!(byte, b'.' | b'_' | b'-')
        });
    if valid {
        Ok(())
    } else {
        Err(PolicyError::InvalidName {
            name: name.to_owned(),
            line,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
        [roles]
        admin = ["students.delete", "students.read"]
        teacher = ["students.read"]
        student = ["students.read.own"]

        [public]
        methods = ["grpc.health.v1.Health/Check"]

        [methods."school.student.v1.StudentService/DeleteStudent"]
        permission = "students.delete"

        [methods."school.student.v1.StudentService/GetStudent"]
        permission = "students.read"
        owner_permission = "students.read.own"
    "#;

    #[test]
    fn roles_resolve_to_access() {
        let policy = Policy::from_toml_str(POLICY).expect("valid policy");
        assert_eq!(policy.rule("/grpc.health.v1.Health/Check"), Rule::Public);

        let Rule::Protected(delete) =
            policy.rule("/school.student.v1.StudentService/DeleteStudent")
        else {
            panic!("DeleteStudent must be protected");
        };
        assert_eq!(delete.permission(), "students.delete");
        assert_eq!(delete.access_for("admin"), Some(Access::Full));
        assert_eq!(delete.access_for("teacher"), None);
        assert_eq!(delete.access_for("Admin"), None);
        assert_eq!(delete.access_for("nobody"), None);

        let Rule::Protected(get) = policy.rule("/school.student.v1.StudentService/GetStudent")
        else {
            panic!("GetStudent must be protected");
        };
        assert_eq!(get.access_for("admin"), Some(Access::Full));
        assert_eq!(get.access_for("teacher"), Some(Access::Full));
        assert_eq!(get.access_for("student"), Some(Access::OwnerOnly));
        assert_eq!(get.owner_permission(), Some("students.read.own"));
    }

    #[test]
    fn rules_match_exact_paths_only() {
        let policy = Policy::from_toml_str(POLICY).expect("valid policy");
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
    fn invalid_documents_name_the_problem() {
        let cases = [
            (
                "[methods.\"bad name\"]\npermission = \"p\"",
                "invalid method name",
            ),
            (
                "[methods.\"pkg.Svc/Method/Extra\"]\npermission = \"p\"",
                "line 1",
            ),
            (
                "[methods.\"Svc/Method\"]\npermission = \"p\"",
                "invalid method name",
            ),
            (
                "[methods.\"pkg.Svc/M\"]\npermission = \"Students.Read\"",
                "invalid name",
            ),
            ("[methods.\"pkg.Svc/M\"]\npermission = \"\"", "invalid name"),
            (
                "[methods.\"pkg.Svc/M\"]\nroles = [\"admin\"]",
                "unknown field",
            ),
            (
                "[methods.\"pkg.Svc/M\"]\nowner_permission = \"p\"",
                "missing field",
            ),
            (
                "[roles]\nadmin = [\"students.delet\"]\n[methods.\"pkg.Svc/M\"]\npermission = \"students.delete\"",
                "line 2: role \"admin\" grants \"students.delet\"",
            ),
            ("[roles]\nAdmin = []", "invalid name"),
            (
                "[public]\nmethods = [\"pkg.Svc/M\",\n \"pkg.Svc/M\"]",
                "line 3",
            ),
            (
                "[public]\nmethods = [\"pkg.Svc/M\"]\n[methods.\"pkg.Svc/M\"]\npermission = \"p\"",
                "line 3: method pkg.Svc/M is both public",
            ),
            (
                "[methods.\"pkg.Svc/M\"]\npermission = \"a\"\n[methods.\"pkg.Svc/M\"]\npermission = \"b\"",
                "line 3",
            ),
            ("[rolez]\nadmin = []", "unknown field"),
        ];
        for (text, expected) in cases {
            let error = Policy::from_toml_str(text).expect_err(text).to_string();
            assert!(error.contains(expected), "{text:?} gave {error:?}");
        }
    }

    #[test]
    fn served_methods_are_checked() {
        let policy = Policy::from_toml_str(POLICY).expect("valid policy");
        let served = [
            "grpc.health.v1.Health/Check",
            "school.student.v1.StudentService/DeleteStudent",
            "school.student.v1.StudentService/GetStudent",
            "school.student.v1.StudentService/ListStudents",
        ];
        assert_eq!(
            policy
                .check_served_methods(served)
                .expect("all named methods are served"),
            vec!["school.student.v1.StudentService/ListStudents".to_string()]
        );

        let error = policy
            .check_served_methods(["grpc.health.v1.Health/Check"])
            .expect_err("DeleteStudent is not served");
        assert!(
            error
                .to_string()
                .contains("line 10: method school.student.v1.StudentService/DeleteStudent"),
            "{error}"
        );
    }
}
