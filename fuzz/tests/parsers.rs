//! Fuzz targets for every parser of untrusted input: the `authorization` metadata, JWT headers
//! and claims, the policy file and stored student records.
//!
//! Each target replays the files in `corpus/<target>/` and then proptest's generated cases.
//! `PROPTEST_CASES` raises the number of generated cases for a longer run; proptest keeps
//! failing cases in `proptest-regressions/`, which belongs in the repository beside the corpus.

// A failed step in a helper fails the test, which is what `expect` does here.
#![allow(clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use http::header::{AUTHORIZATION, HeaderValue};
use proptest::prelude::*;
use school_guard::Policy;
use school_guard::bearer::bearer_token;
use school_guard::keys::{KeySet, VerificationKey, key_id_for};
use school_guard::verify::{TokenVerifier, VerifierConfig};
use student_service::store::{SledStore, StudentStore as _};
use uuid::Uuid;

/// Returns the contents of every file in `corpus/<target>/`, sorted by file name.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("read corpus {}: {error}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    paths.sort();
    let files: Vec<Vec<u8>> = paths
        .iter()
        .map(|path| std::fs::read(path).expect("read corpus file"))
        .collect();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
}

fn check_authorization(value: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, value.clone());

    if let Ok(token) = bearer_token(&headers) {
        assert!(!token.is_empty(), "empty token accepted from {value:?}");
        assert!(
            value.as_bytes().ends_with(token.as_bytes()),
            "token {token:?} is not the end of {value:?}"
        );
        assert!(!token.contains(' '), "token {token:?} contains a space");
    }
}

#[test]
fn authorization_corpus() {
    for value in corpus("authorization") {
        check_authorization(&value);
    }
}

proptest! {
    #[test]
    fn authorization_bytes(value in proptest::collection::vec(any::<u8>(), 0..200)) {
        check_authorization(&value);
    }

    #[test]
    fn authorization_shaped(
        scheme in "(?i:bearer)|Basic|",
        spaces in " {0,3}",
        token in "[A-Za-z0-9._~+/=-]{0,40}",
        tail in "( [a-z]{1,3})?",
    ) {
        let value = format!("{scheme}{spaces}{token}{tail}");
        check_authorization(value.as_bytes());
    }
}

/// A verifier that trusts one fresh key, and a way to sign with it.
struct Signer {
    pair: Ed25519KeyPair,
    key_id: String,
    verifier: TokenVerifier,
}

impl Signer {
    fn new() -> Signer {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("generate key");
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("valid PKCS#8");
        let public_key = pair.public_key().as_ref().to_vec();
        let key_id = key_id_for(&public_key);
        let keys = KeySet::new();
        keys.replace(vec![VerificationKey {
            key_id: key_id.clone(),
            public_key,
        }])
        .expect("valid key");
        let verifier = TokenVerifier::new(
            keys,
            VerifierConfig {
                issuer: "school-auth".to_owned(),
                audience: "school".to_owned(),
                leeway: Duration::from_secs(5),
            },
        );
        Signer {
            pair,
            key_id,
            verifier,
        }
    }

    /// Signs `header` and `payload` as they are, after replacing `KID` with the real key id.
    fn sign(&self, header: &str, payload: &str) -> String {
        let header = header.replace("KID", &self.key_id);
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = self.pair.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }

    /// Verifies a token signed over `header` and `payload`. A token that verifies must carry
    /// the configured issuer and audience in its payload.
    fn check(&self, header: &str, payload: &str) -> bool {
        let token = self.sign(header, payload);
        let Ok(claims) = self.verifier.verify(&token) else {
            return false;
        };
        let payload: serde_json::Value =
            serde_json::from_str(payload).expect("a verified payload is JSON");
        assert_eq!(claims.iss, "school-auth");
        assert_eq!(payload["iss"], "school-auth");
        true
    }
}

#[test]
fn token_corpus() {
    let signer = Signer::new();
    for file in corpus("token") {
        let text = String::from_utf8(file).expect("UTF-8 corpus file");
        let (header, payload) = text
            .split_once('\n')
            .expect("header line, then payload line");
        let verified = signer.check(header, payload.trim_end());
        let valid =
            header.contains("EdDSA") && payload.contains("4102444800") && header.contains("KID");
        assert!(
            !verified || valid,
            "token verified from {header} and {payload}"
        );
    }
    let valid = corpus("token").into_iter().any(|file| {
        let text = String::from_utf8(file).expect("UTF-8 corpus file");
        let (header, payload) = text.split_once('\n').expect("two lines");
        signer.check(header, payload.trim_end())
    });
    assert!(
        valid,
        "no corpus token verified, so the corpus tests nothing past the signature"
    );
}

fn json_leaf() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "[a-z-]{0,12}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from("school-auth")),
        Just(serde_json::Value::from("school")),
        Just(serde_json::json!(["school", 1])),
        Just(serde_json::json!({"nested": true})),
    ]
}

fn claims() -> impl Strategy<Value = serde_json::Value> {
    let names = prop_oneof![
        Just("iss"),
        Just("aud"),
        Just("sub"),
        Just("role"),
        Just("iat"),
        Just("nbf"),
        Just("exp"),
        Just("jti"),
        Just("extra"),
    ];
    proptest::collection::btree_map(names, json_leaf(), 0..9).prop_map(|map| {
        serde_json::Value::Object(
            map.into_iter()
                .map(|(name, value)| (name.to_owned(), value))
                .collect(),
        )
    })
}

fn header() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(r#"{"alg":"EdDSA","typ":"JWT","kid":"KID"}"#.to_owned()),
        Just(r#"{"alg":"EdDSA","kid":"KID","crit":["x"]}"#.to_owned()),
        Just(r#"{"alg":"HS256","kid":"KID"}"#.to_owned()),
        Just(r#"{"alg":"EdDSA"}"#.to_owned()),
        "\\PC{0,40}",
    ]
}

proptest! {
    #[test]
    fn token_signed_claims(header in header(), claims in claims()) {
        let signer = Signer::new();
        signer.check(&header, &claims.to_string());
    }

    #[test]
    fn token_arbitrary_text(token in "[A-Za-z0-9._-]{0,300}|\\PC{0,100}") {
        let signer = Signer::new();
        prop_assert!(signer.verifier.verify(&token).is_err());
    }
}

fn check_policy(text: &str) {
    if let Ok(policy) = Policy::from_toml_str(text) {
        for method in policy.methods() {
            let _ = policy.rule(method);
        }
        let _ = policy.rule("/unknown.Service/Method");
    }
}

#[test]
fn policy_corpus() {
    for file in corpus("policy") {
        check_policy(&String::from_utf8_lossy(&file));
    }
}

proptest! {
    #[test]
    fn policy_arbitrary_text(text in "\\PC{0,200}") {
        check_policy(&text);
    }

    #[test]
    fn policy_mutated(position in any::<proptest::sample::Index>(), replacement in "[\\[\\]=\"., a-z\n]{0,4}") {
        let original = String::from_utf8(corpus("policy").swap_remove(1)).expect("UTF-8 policy");
        let at = position.index(original.len());
        let at = (0..=at).rev().find(|index| original.is_char_boundary(*index)).unwrap_or(0);
        let mutated = format!("{}{replacement}{}", &original[..at], &original[at..]);
        check_policy(&mutated);
    }
}

/// Writes `value` as the stored record of a fresh id, then reads it back through the store,
/// which must return the record or an error, never panic.
fn check_stored_record(value: &[u8]) {
    let id = Uuid::new_v4();
    let value = String::from_utf8_lossy(value).replace("\"ID\"", &format!("\"{id}\""));
    let dir = tempfile::tempdir().expect("temporary directory");
    {
        let db = sled::Config::new()
            .path(dir.path())
            .open()
            .expect("open raw database");
        db.open_tree("students")
            .expect("students tree")
            .insert(id.as_bytes(), value.as_bytes())
            .expect("write raw record");
        db.flush().expect("flush raw database");
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = open_when_unlocked(dir.path()).await;
        if let Ok(Some(record)) = store.get(id).await {
            assert_eq!(record.id, id);
        }
        let _ = store.list(None, 10).await;
    });
}

/// Opens the store, waiting while sled's background thread of the dropped raw handle still
/// holds the lock.
async fn open_when_unlocked(dir: &std::path::Path) -> SledStore {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match SledStore::open(dir) {
            Ok(store) => return store,
            Err(student_service::Error::DataDirLocked { .. })
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(error) => panic!("open store: {error:?}"),
        }
    }
}

#[test]
fn student_record_corpus() {
    for file in corpus("student_record") {
        check_stored_record(&file);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn student_record_mutated(position in any::<proptest::sample::Index>(), replacement in "\\PC{0,6}") {
        let original = String::from_utf8(corpus("student_record").swap_remove(2)).expect("UTF-8 record");
        let at = position.index(original.len());
        let mutated = format!("{}{replacement}{}", &original[..at], &original[at..]);
        check_stored_record(mutated.as_bytes());
    }
}
