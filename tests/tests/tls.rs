//! TLS and mutual TLS through real servers, with a CA and certificates generated for each test.

use std::path::{Path, PathBuf};

use auth_service::Role;
use integration_tests::{
    ADMIN, PASSWORD, RunningAuth, RunningStudent, connect, health_status_over, process, with_token,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use school_client::tls::{ClientTls, read_certificates, read_identity};
use school_proto::student::v1::CreateStudentRequest;

/// A CA and the PEM files it signed, in a temporary directory removed on drop.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// Creates `ca.pem`, `server.pem`/`server.key` for 127.0.0.1 and localhost, and
    /// `client.pem`/`client.key`, plus `other-ca.pem`, a CA that signed none of them.
    fn generate() -> Pki {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (ca, issuer) = certificate_authority("school test CA");
        write(dir.path(), "ca.pem", &ca);
        let (other_ca, _) = certificate_authority("unrelated CA");
        write(dir.path(), "other-ca.pem", &other_ca);

        let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        leaf(
            dir.path(),
            "server",
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
            &issuer,
        );
        let client_names = vec!["student-service".to_owned()];
        leaf(
            dir.path(),
            "client",
            client_names,
            ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
        );
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Trusts `ca_file`, with the client certificate when `with_identity`.
    fn client_tls(&self, ca_file: &str, with_identity: bool) -> ClientTls {
        let tls = ClientTls::new(read_certificates(&self.path(ca_file)).expect("CA file"));
        if with_identity {
            let identity = read_identity(&self.path("client.pem"), &self.path("client.key"))
                .expect("client identity");
            return tls.with_identity(identity);
        }
        tls
    }

    fn server_flags(&self) -> Vec<String> {
        vec![
            "--tls-cert".to_owned(),
            self.arg("server.pem"),
            "--tls-key".to_owned(),
            self.arg("server.key"),
        ]
    }
}

fn certificate_authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let certificate = params.self_signed(&key).expect("self-signed CA");
    (certificate.pem(), Issuer::new(params, key))
}

fn leaf(
    dir: &Path,
    name: &str,
    subject_alt_names: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'static, KeyPair>,
) {
    let key = KeyPair::generate().expect("leaf key");
    let mut params = CertificateParams::new(subject_alt_names).expect("leaf parameters");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    let certificate = params.signed_by(&key, issuer).expect("signed leaf");
    write(dir, &format!("{name}.pem"), &certificate.pem());
    write(dir, &format!("{name}.key"), &key.serialize_pem());
}

fn write(dir: &Path, name: &str, contents: &str) {
    std::fs::write(dir.join(name), contents).expect("write PEM file");
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

async fn start_tls_auth(pki: &Pki, data: &Path, extra: &[String]) -> RunningAuth {
    let mut args = pki.server_flags();
    args.extend_from_slice(extra);
    let auth =
        RunningAuth::start_tls(data, &strs(&args), Some(pki.client_tls("ca.pem", true))).await;
    auth.users()
        .create(ADMIN, PASSWORD, Role::Admin)
        .await
        .expect("create admin");
    auth
}

#[tokio::test]
async fn tls_login_and_guarded_call_work() {
    let pki = Pki::generate();
    let data = tempfile::tempdir().expect("data directory");
    let auth = start_tls_auth(&pki, &data.path().join("auth"), &[]).await;
    let mut student_args = pki.server_flags();
    student_args.extend(["--auth-ca".to_owned(), pki.arg("ca.pem")]);

    // SERVING means student-service fetched the verification keys over TLS.
    let student = RunningStudent::start_tls(
        &data.path().join("student"),
        &auth.url(),
        &strs(&student_args),
        Some(pki.client_tls("ca.pem", false)),
    )
    .await;
    let token = auth.login(ADMIN, PASSWORD).await;
    let created = student
        .client()
        .await
        .create_student(with_token(
            CreateStudentRequest {
                name: "Ada Pupil".to_owned(),
                email: "ada@example.org".to_owned(),
                grade_level: 7,
                ..Default::default()
            },
            &token,
        ))
        .await;

    assert!(auth.url().starts_with("https://"), "{}", auth.url());
    assert!(student.url().starts_with("https://"), "{}", student.url());
    assert!(created.is_ok(), "{created:?}");
    student.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn plaintext_client_to_tls_server_fails() {
    let pki = Pki::generate();
    let data = tempfile::tempdir().expect("data directory");
    let auth = start_tls_auth(&pki, data.path(), &[]).await;
    let plaintext_url = format!("http://{}", auth.addr);

    let status = health_status_over(&plaintext_url, None, "").await;

    assert!(status.is_err(), "plaintext call answered: {status:?}");
    auth.stop().await;
}

#[tokio::test]
async fn server_signed_by_another_ca_is_rejected() {
    let pki = Pki::generate();
    let data = tempfile::tempdir().expect("data directory");
    let auth = start_tls_auth(&pki, data.path(), &[]).await;
    let wrong_ca = pki.client_tls("other-ca.pem", false);

    let channel = connect(&auth.url(), Some(&wrong_ca)).await;

    let error = channel.expect_err("a server outside the trusted CA must be rejected");
    assert!(error.contains("UnknownIssuer"), "{error}");
    auth.stop().await;
}

#[tokio::test]
async fn required_client_certificate_is_enforced() {
    let pki = Pki::generate();
    let data = tempfile::tempdir().expect("data directory");
    let mtls = ["--tls-client-ca".to_owned(), pki.arg("ca.pem")];
    let auth = start_tls_auth(&pki, &data.path().join("auth"), &mtls).await;

    let without_certificate =
        health_status_over(&auth.url(), Some(&pki.client_tls("ca.pem", false)), "").await;
    let with_certificate =
        health_status_over(&auth.url(), Some(&pki.client_tls("ca.pem", true)), "").await;

    assert!(
        without_certificate.is_err(),
        "a client without a certificate got an answer: {without_certificate:?}"
    );
    assert!(with_certificate.is_ok(), "{with_certificate:?}");

    // student-service presents its certificate, fetches keys and reports SERVING.
    let student_args = [
        "--auth-ca".to_owned(),
        pki.arg("ca.pem"),
        "--auth-client-cert".to_owned(),
        pki.arg("client.pem"),
        "--auth-client-key".to_owned(),
        pki.arg("client.key"),
    ];
    let student = RunningStudent::start(
        &data.path().join("student"),
        &auth.url(),
        &strs(&student_args),
    )
    .await;
    student.stop().await;
    auth.stop().await;
}

#[tokio::test]
async fn optional_client_certificate_admits_both() {
    let pki = Pki::generate();
    let data = tempfile::tempdir().expect("data directory");
    let mtls = [
        "--tls-client-ca".to_owned(),
        pki.arg("ca.pem"),
        "--tls-client-auth".to_owned(),
        "optional".to_owned(),
    ];
    let auth = start_tls_auth(&pki, data.path(), &mtls).await;

    let without_certificate =
        health_status_over(&auth.url(), Some(&pki.client_tls("ca.pem", false)), "").await;
    let with_certificate =
        health_status_over(&auth.url(), Some(&pki.client_tls("ca.pem", true)), "").await;

    assert!(without_certificate.is_ok(), "{without_certificate:?}");
    assert!(with_certificate.is_ok(), "{with_certificate:?}");
    auth.stop().await;
}

#[tokio::test]
async fn student_rejects_tls_flags_with_http_url() {
    let pki = Pki::generate();
    let data = tempfile::tempdir().expect("data directory");
    let data_dir = data.path().display().to_string();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data_dir,
        "--auth-url",
        "http://127.0.0.1:9",
        "--auth-ca",
        &pki.arg("ca.pem"),
    ];

    let output = std::process::Command::new(process::binary("student-service"))
        .args(args)
        .output()
        .expect("run student-service");

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--auth-url"), "{stderr}");
    assert!(stderr.contains("https://"), "{stderr}");
}

/// Binds auth-service with the given certificate and key files and returns the error.
async fn auth_bind_error(certificate: &str, key: &str) -> auth_service::Error {
    let data = tempfile::tempdir().expect("data directory");
    let config = <auth_service::Config as clap::Parser>::try_parse_from([
        "auth-service",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        &data.path().display().to_string(),
        "--tls-cert",
        certificate,
        "--tls-key",
        key,
    ])
    .expect("flags parse");

    match auth_service::bind(config).await {
        Ok(_) => panic!("auth-service bound with {certificate} and {key}"),
        Err(error) => error,
    }
}

#[tokio::test]
async fn unreadable_certificate_names_its_flag() {
    let pki = Pki::generate();

    let error = auth_bind_error(&pki.arg("missing.pem"), &pki.arg("server.key")).await;

    let message = error.to_string();
    assert!(message.contains("--tls-cert"), "{message}");
    assert!(message.contains("missing.pem"), "{message}");
}

#[tokio::test]
async fn key_of_another_certificate_names_tls_key() {
    let pki = Pki::generate();

    let error = auth_bind_error(&pki.arg("server.pem"), &pki.arg("client.key")).await;

    let message = error.to_string();
    assert!(message.contains("--tls-key"), "{message}");
}

/// Runs `auth-service user --server <url>` with `flags` before the `user` operation `operation`,
/// as an admin, and returns the exit code and standard error. The binary runs on a blocking
/// thread, so the server in this test's runtime keeps serving.
async fn user_online(
    url: &str,
    token: &str,
    flags: &[String],
    operation: &[&str],
) -> (Option<i32>, String) {
    let mut args = vec!["user".to_owned(), "--server".to_owned(), url.to_owned()];
    args.extend_from_slice(flags);
    args.extend(operation.iter().map(|arg| (*arg).to_owned()));
    let token = token.to_owned();
    tokio::task::spawn_blocking(move || {
        let (status, stderr) = process::run_to_exit(
            &process::binary("auth-service"),
            &strs(&args),
            &[
                ("AUTH_ADMIN_TOKEN", token.as_str()),
                ("AUTH_USER_PASSWORD", "a new teacher's password"),
            ],
            std::time::Duration::from_secs(30),
        );
        (status.code(), stderr)
    })
    .await
    .expect("run auth-service user")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_commands_reach_a_mutual_tls_server() {
    let pki = Pki::generate();
    let data = tempfile::tempdir().expect("data directory");
    let mtls = ["--tls-client-ca".to_owned(), pki.arg("ca.pem")];
    let auth = start_tls_auth(&pki, &data.path().join("auth"), &mtls).await;
    let token = auth.login(ADMIN, PASSWORD).await;
    let url = auth.url();
    let ca = ["--server-ca".to_owned(), pki.arg("ca.pem")];
    let full = [
        ca[0].clone(),
        ca[1].clone(),
        "--server-client-cert".to_owned(),
        pki.arg("client.pem"),
        "--server-client-key".to_owned(),
        pki.arg("client.key"),
    ];
    let add = ["add", "tina", "--role", "teacher"];

    let (code, stderr) = user_online(&url, &token, &full, &add).await;
    assert_eq!(code, Some(0), "{stderr}");
    let created = auth.users().get("tina").await;
    assert!(created.is_ok(), "{created:?}");

    // Settings that do not fit stop before any connection, naming the flag.
    let plaintext_url = url.replacen("https://", "http://", 1);
    let cases: [(&str, &[String], &str); 4] = [
        (&url, &[], "--server (AUTH_SERVER)"),
        (&plaintext_url, &ca, "--server (AUTH_SERVER)"),
        (
            &url,
            &full[..4],
            "--server-client-key (AUTH_SERVER_CLIENT_KEY)",
        ),
        (&url, &full[2..], "--server-ca (AUTH_SERVER_CA)"),
    ];
    for (target, flags, named) in cases {
        let (code, stderr) = user_online(target, &token, flags, &["list"]).await;
        assert_eq!(code, Some(64), "{flags:?}: {stderr}");
        assert!(stderr.contains(named), "{flags:?}: {stderr}");
    }

    // The CA alone does not pass a server that requires a client certificate.
    let (code, stderr) = user_online(&url, &token, &ca, &["list"]).await;
    assert_ne!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    auth.stop().await;
}

#[tokio::test]
async fn student_service_can_require_client_certificates() {
    let pki = Pki::generate();
    let data = tempfile::tempdir().expect("data directory");
    let auth = start_tls_auth(&pki, &data.path().join("auth"), &[]).await;
    let mut student_args = pki.server_flags();
    student_args.extend([
        "--auth-ca".to_owned(),
        pki.arg("ca.pem"),
        "--tls-client-ca".to_owned(),
        pki.arg("ca.pem"),
    ]);
    let student = RunningStudent::start_tls(
        &data.path().join("student"),
        &auth.url(),
        &strs(&student_args),
        Some(pki.client_tls("ca.pem", true)),
    )
    .await;

    let without_certificate =
        health_status_over(&student.url(), Some(&pki.client_tls("ca.pem", false)), "").await;
    let with_certificate =
        health_status_over(&student.url(), Some(&pki.client_tls("ca.pem", true)), "").await;

    assert!(
        without_certificate.is_err(),
        "a client without a certificate got an answer: {without_certificate:?}"
    );
    assert!(with_certificate.is_ok(), "{with_certificate:?}");
    student.stop().await;
    auth.stop().await;
}
