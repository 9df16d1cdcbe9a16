//! The dev command's walkthrough, run against in-process services.

use integration_tests::walkthrough::{Credentials, run};
use integration_tests::{ADMIN, PASSWORD, STUDENT, Stack};
use tonic::transport::Channel;

#[tokio::test]
async fn walkthrough_passes() {
    let stack = Stack::start().await;
    let auth = Channel::from_shared(stack.auth.url())
        .expect("URL")
        .connect()
        .await
        .expect("connect");
    let students = stack.student.channel().await;
    let admin = Credentials {
        username: ADMIN.into(),
        password: PASSWORD.into(),
    };
    let student = Credentials {
        username: STUDENT.into(),
        password: PASSWORD.into(),
    };

    let mut output = Vec::new();
    run(auth, students, &admin, &student, &mut output)
        .await
        .expect("walkthrough passes");

    let output = String::from_utf8(output).expect("UTF-8");
    assert_eq!(output.lines().count(), 8, "{output}");
    assert!(!output.contains(PASSWORD));
}
