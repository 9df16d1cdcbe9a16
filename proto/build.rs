//! Generates the Rust types and gRPC stubs from the `.proto` files with a vendored `protoc`, so
//! no system-wide protobuf compiler is needed.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "school/auth/v1/auth.proto",
    "school/auth/v1/user_service.proto",
    "school/student/v1/student.proto",
];

/// Messages that carry a password or a token: their generated `Debug` is replaced by a redacting
/// one in `lib.rs`, so a stray `{:?}` can never log a secret.
const SECRET_MESSAGES: &[&str] = &[
    "school.auth.v1.LoginRequest",
    "school.auth.v1.LoginResponse",
    "school.auth.v1.RefreshTokenRequest",
    "school.auth.v1.RefreshTokenResponse",
    "school.auth.v1.ValidateTokenRequest",
    "school.auth.v1.IssueServiceTokenRequest",
    "school.auth.v1.IssueServiceTokenResponse",
    "school.auth.v1.CreateUserRequest",
    "school.auth.v1.ChangePasswordRequest",
    "school.auth.v1.ResetPasswordRequest",
    "school.auth.v1.CreateServiceAccountResponse",
    "school.auth.v1.RotateServiceAccountSecretResponse",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);

    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("school_descriptor.bin"))
        .skip_debug(SECRET_MESSAGES.iter().copied())
        .compile_with_config(config, PROTOS, &["."])?;

    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
