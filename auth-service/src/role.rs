//! The roles a user can hold.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// The role of a user, copied into the `role` claim of every token issued to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Manages users and every record.
    Admin,
    /// Reads and edits the records of students.
    Teacher,
    /// Reads their own record.
    Student,
}

impl Role {
    /// Returns the role's name as it appears in tokens and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Teacher => "teacher",
            Self::Student => "student",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = Error;

    /// Parses `admin`, `teacher` or `student`, in lower case only.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        match name {
            "admin" => Ok(Self::Admin),
            "teacher" => Ok(Self::Teacher),
            "student" => Ok(Self::Student),
            _ => Err(Error::InvalidArgument {
                field: "role",
                reason: "must be admin, teacher or student",
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip() {
        for role in [Role::Admin, Role::Teacher, Role::Student] {
            assert_eq!(role.to_string().parse::<Role>().ok(), Some(role));
        }
    }

    #[test]
    fn role_rejects_unknown_and_mixed_case() {
        assert!("root".parse::<Role>().is_err());
        assert!("Admin".parse::<Role>().is_err());
        assert!("".parse::<Role>().is_err());
    }

    #[test]
    fn role_serializes_lowercase() -> Result<(), serde_json::Error> {
        assert_eq!(serde_json::to_string(&Role::Teacher)?, "\"teacher\"");
        assert_eq!(serde_json::from_str::<Role>("\"student\"")?, Role::Student);
        assert!(serde_json::from_str::<Role>("\"janitor\"").is_err());
        Ok(())
    }
}
