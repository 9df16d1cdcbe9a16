//! Loading a policy checked against the methods a server serves, and reloading it on SIGHUP.
//!
//! Both services load their policies through a [`PolicySource`], so an unknown method is a
//! start-up error in each of them, and a reload swaps the policy of their [`Guard`] atomically
//! or keeps the old one.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use prost::Message as _;
use prost_types::FileDescriptorSet;

use crate::layer::Guard;
use crate::policy::{Policy, PolicyError};

/// Returns every method of `services` (full names such as `school.auth.v1.UserService`), named
/// `package.Service/Method`, as described by the encoded `FileDescriptorSet`s in
/// `descriptor_sets`.
///
/// Fails with [`PolicyError::Descriptor`] if a set cannot be decoded. A service found in no set
/// contributes no methods, so a policy rule for it is reported as an unknown method.
pub fn served_methods(
    descriptor_sets: &[&[u8]],
    services: &[&str],
) -> Result<BTreeSet<String>, PolicyError> {
    let mut methods = BTreeSet::new();
    for encoded in descriptor_sets {
        let set = FileDescriptorSet::decode(*encoded).map_err(PolicyError::Descriptor)?;
        for file in &set.file {
            let package = file.package();
            for service in &file.service {
                let full_name = if package.is_empty() {
                    service.name().to_owned()
                } else {
                    format!("{package}.{}", service.name())
                };
                if !services.contains(&full_name.as_str()) {
                    continue;
                }
                for method in &service.method {
                    methods.insert(format!("{full_name}/{}", method.name()));
                }
            }
        }
    }
    Ok(methods)
}

/// The origin of a policy, and the methods of the server it must fit.
#[derive(Clone, Debug)]
pub struct PolicySource {
    origin: Origin,
    served: Arc<BTreeSet<String>>,
}

#[derive(Clone, Debug)]
enum Origin {
    File(PathBuf),
    BuiltIn(&'static str),
}

impl PolicySource {
    /// Creates a source that reads the policy from `path` at every load.
    pub fn file(path: PathBuf, served: Arc<BTreeSet<String>>) -> Self {
        PolicySource {
            origin: Origin::File(path),
            served,
        }
    }

    /// Creates a source for a policy compiled into the binary.
    pub fn built_in(text: &'static str, served: Arc<BTreeSet<String>>) -> Self {
        PolicySource {
            origin: Origin::BuiltIn(text),
            served,
        }
    }

    /// Returns the methods the service serves, named `package.Service/Method`.
    pub fn served(&self) -> &BTreeSet<String> {
        &self.served
    }

    /// Names the source for messages: the file path, or "built-in policy".
    pub fn describe(&self) -> String {
        match &self.origin {
            Origin::File(path) => path.display().to_string(),
            Origin::BuiltIn(_) => "built-in policy".to_owned(),
        }
    }

    /// Reads and validates the policy, then checks it against the served methods.
    ///
    /// Fails with [`PolicyError::UnknownMethod`], naming the line, if the policy names a method
    /// the server does not serve. Logs a warning for each served method the policy does not
    /// name: those are denied to every caller.
    pub fn load(&self) -> Result<Policy, PolicyError> {
        let policy = match &self.origin {
            Origin::File(path) => Policy::load(path)?,
            Origin::BuiltIn(text) => Policy::from_toml_str(text)?,
        };
        let unruled = policy.check_served_methods(self.served.iter().map(String::as_str))?;
        for method in unruled {
            tracing::warn!(
                grpc.method = method.as_str(),
                policy = self.describe(),
                "served method has no policy rule, so every call to it is denied"
            );
        }
        Ok(policy)
    }
}

/// Loads `enforced` and, if given, `shadow` again and swaps them into `guard`.
///
/// Each policy is replaced only if its new version loads, so an invalid file keeps the old one.
/// The first error is returned after both were tried.
pub fn reload(
    guard: &Guard,
    enforced: &PolicySource,
    shadow: Option<&PolicySource>,
) -> Result<(), PolicyError> {
    let enforced_result = enforced.load().map(|policy| guard.replace_policy(policy));
    let shadow_result = match shadow {
        Some(source) => source
            .load()
            .map(|policy| guard.set_shadow_policy(Some(policy))),
        None => Ok(()),
    };
    let result = enforced_result.and(shadow_result);
    guard.record_reload(result.is_ok());
    result
}

/// Spawns a task that reloads the policies of `guard` on every SIGHUP, logging the outcome.
///
/// Fails if the signal handler cannot be installed. The handler is installed before this
/// returns, so a SIGHUP sent afterwards is never lost.
pub fn reload_on_sighup(
    guard: Arc<Guard>,
    enforced: PolicySource,
    shadow: Option<PolicySource>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};

    let mut hangup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            match reload(&guard, &enforced, shadow.as_ref()) {
                Ok(()) => tracing::info!(
                    policy = enforced.describe(),
                    shadow_policy = shadow.as_ref().map(PolicySource::describe),
                    "policy reloaded"
                ),
                Err(error) => tracing::error!(
                    policy = enforced.describe(),
                    %error,
                    "policy reload failed; the previous policy stays in force"
                ),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_come_from_descriptors() -> Result<(), PolicyError> {
        let methods = served_methods(
            &[school_proto::FILE_DESCRIPTOR_SET],
            &["school.student.v1.StudentService"],
        )?;

        assert!(methods.contains("school.student.v1.StudentService/DeleteStudent"));
        assert!(methods.contains("school.student.v1.StudentService/GetStudent"));
        assert!(
            !methods
                .iter()
                .any(|method| method.starts_with("school.auth")),
            "{methods:?}"
        );
        Ok(())
    }

    #[test]
    fn failed_reload_keeps_the_old_policy() -> Result<(), Box<dyn std::error::Error>> {
        use crate::keys::KeySet;
        use crate::verify::{TokenVerifier, VerifierConfig};

        let dir = std::env::temp_dir().join(format!("guard-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("policy.toml");
        let served = Arc::new(BTreeSet::from(["pkg.Svc/A".to_owned()]));
        let source = PolicySource::file(path.clone(), served);
        let rule = "[roles]\nadmin = [\"p\"]\n\n[methods.\"pkg.Svc/A\"]\npermission = \"p\"\n";
        std::fs::write(&path, rule)?;
        let verifier = TokenVerifier::new(
            KeySet::new(),
            VerifierConfig {
                issuer: "iss".into(),
                audience: "aud".into(),
                leeway: std::time::Duration::ZERO,
            },
        );
        let guard = Guard::new(verifier, Policy::default());

        reload(&guard, &source, None)?;
        let loaded = guard.policy();
        std::fs::write(&path, "[methods.\"pkg.Svc/Unknown\"]\npermission = \"p\"\n")?;
        let failed = reload(&guard, &source, None);

        assert!(failed.is_err());
        assert!(
            Arc::ptr_eq(&loaded, &guard.policy()),
            "the old policy was replaced"
        );
        assert_eq!(loaded.methods(), ["pkg.Svc/A"]);
        assert_eq!(guard.reload_counts().succeeded, 1);
        assert_eq!(guard.reload_counts().failed, 1);
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn unknown_method_fails_the_load() {
        let served = Arc::new(BTreeSet::from(["pkg.Svc/A".to_owned()]));
        let source = PolicySource::built_in(
            "[roles]\nadmin = [\"p\"]\n\n[methods.\"pkg.Svc/B\"]\npermission = \"p\"\n",
            served,
        );

        let error = source
            .load()
            .map(|_| ())
            .err()
            .map(|error| error.to_string());

        assert_eq!(
            error.as_deref(),
            Some("invalid policy, line 4: method pkg.Svc/B is not served by this service")
        );
    }
}
