//! What a client without proto files can find: reflection, health and the published keys.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use integration_tests::{ADMIN, Stack};
use school_proto::auth::v1::ListPublicKeysRequest;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::{v1, v1alpha};

async fn services_v1(channel: Channel) -> Vec<String> {
    use v1::server_reflection_client::ServerReflectionClient;
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1 answers")
        .into_inner();
    let response = responses
        .next()
        .await
        .expect("one response")
        .expect("no error");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

async fn services_v1alpha(channel: Channel) -> Vec<String> {
    use v1alpha::server_reflection_client::ServerReflectionClient;
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1alpha answers")
        .into_inner();
    let response = responses
        .next()
        .await
        .expect("one response")
        .expect("no error");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
            names.sort();
            names
        }
        other => panic!("unexpected reflection response {other:?}"),
    }
}

async fn file_for_symbol_v1(channel: Channel, symbol: &str) -> usize {
    use v1::server_reflection_client::ServerReflectionClient;
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_owned())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    match responses
        .next()
        .await
        .expect("response")
        .expect("no error")
        .message_response
    {
        Some(MessageResponse::FileDescriptorResponse(files)) => files.file_descriptor_proto.len(),
        other => panic!("unexpected reflection response for {symbol}: {other:?}"),
    }
}

async fn channel(url: String) -> Channel {
    Channel::from_shared(url)
        .expect("URL")
        .connect()
        .await
        .expect("connect")
}

#[tokio::test]
async fn reflection_lists_each_service() {
    let stack = Stack::start().await;

    let auth_v1 = services_v1(channel(stack.auth.url()).await).await;
    let auth_v1alpha = services_v1alpha(channel(stack.auth.url()).await).await;
    for services in [&auth_v1, &auth_v1alpha] {
        assert!(
            services.contains(&"school.auth.v1.AuthService".to_string()),
            "{services:?}"
        );
        assert!(
            services.contains(&"grpc.health.v1.Health".to_string()),
            "{services:?}"
        );
        assert!(!services.contains(&"school.student.v1.StudentService".to_string()));
    }

    let student_v1 = services_v1(channel(stack.student.url()).await).await;
    let student_v1alpha = services_v1alpha(channel(stack.student.url()).await).await;
    for services in [&student_v1, &student_v1alpha] {
        assert!(
            services.contains(&"school.student.v1.StudentService".to_string()),
            "{services:?}"
        );
        assert!(
            services.contains(&"grpc.health.v1.Health".to_string()),
            "{services:?}"
        );
        assert!(!services.contains(&"school.auth.v1.AuthService".to_string()));
    }

    // A client can fetch the descriptors it needs to build requests, imports included.
    let files = file_for_symbol_v1(
        channel(stack.student.url()).await,
        "school.student.v1.StudentService",
    )
    .await;
    assert!(files >= 1);
    let files = file_for_symbol_v1(
        channel(stack.auth.url()).await,
        "school.auth.v1.AuthService",
    )
    .await;
    assert!(files >= 1);
}

#[tokio::test]
async fn health_reports_serving() {
    let stack = Stack::start().await;
    for (url, service) in [
        (stack.auth.url(), "school.auth.v1.AuthService"),
        (stack.student.url(), "school.student.v1.StudentService"),
    ] {
        for name in ["", service] {
            let status = HealthClient::new(channel(url.clone()).await)
                .check(HealthCheckRequest {
                    service: name.to_owned(),
                })
                .await
                .expect("health answers without a token")
                .into_inner()
                .status();
            assert_eq!(status, ServingStatus::Serving, "{url} {name:?}");
        }
    }
}

#[tokio::test]
async fn published_keys_verify_issued_tokens() {
    let stack = Stack::start().await;
    let token = stack.token(ADMIN).await;
    let header: serde_json::Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().expect("header"))
            .expect("base64url"),
    )
    .expect("JSON header");

    let published = stack
        .auth
        .client()
        .await
        .list_public_keys(ListPublicKeysRequest {})
        .await
        .expect("keys are public")
        .into_inner();
    let key = published
        .keys
        .iter()
        .find(|key| key.key_id == header["kid"])
        .expect("the token's kid is published");
    assert_eq!(key.algorithm, "EdDSA");
    assert_eq!(key.curve, "Ed25519");
    assert_eq!(key.public_key.len(), 32);
    assert_eq!(key.key_id, school_guard::keys::key_id_for(&key.public_key));

    let jwks: serde_json::Value = serde_json::from_str(&published.jwks_json).expect("JWKS JSON");
    assert_eq!(jwks["keys"][0]["kid"], header["kid"]);
    assert_eq!(jwks["keys"][0]["kty"], "OKP");

    // An independent verifier built from the published key alone accepts the token.
    let parts: Vec<&str> = token.split('.').collect();
    let signature = URL_SAFE_NO_PAD.decode(parts[2]).expect("signature");
    let public_key = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ED25519,
        &key.public_key,
    );
    public_key
        .verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &signature)
        .expect("signature verifies with the published key");
}
