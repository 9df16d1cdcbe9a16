//! Rejected calls must not poison the HTTP/2 connection they share with other calls.

use integration_tests::{ADMIN, STUDENT, Stack, with_token};
use school_proto::student::v1::{DeleteStudentRequest, ListStudentsRequest};
use tonic::Code;

/// Many concurrent rejections on one connection, interleaved with allowed calls. A server
/// that resets each rejected stream without reading its body trips HTTP/2's reset-flood
/// protection, which closes the connection and fails unrelated calls on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_keep_the_connection_usable() {
    let stack = Stack::start().await;
    let channel = stack.student.channel().await;
    let student = stack.token(STUDENT).await;
    let admin = stack.token(ADMIN).await;

    let mut tasks = Vec::new();
    for task in 0..32 {
        let channel = channel.clone();
        let student = student.clone();
        let admin = admin.clone();
        tasks.push(tokio::spawn(async move {
            let mut client =
                school_proto::student::v1::student_service_client::StudentServiceClient::new(
                    channel,
                );
            let mut unexpected = Vec::new();
            for call in 0..200 {
                let (result, expected) = match (task + call) % 3 {
                    0 => (
                        client
                            .delete_student(DeleteStudentRequest {
                                id: "x".repeat(200),
                            })
                            .await
                            .map(|_| ()),
                        Code::Unauthenticated,
                    ),
                    1 => (
                        client
                            .delete_student(with_token(
                                DeleteStudentRequest {
                                    id: "x".repeat(200),
                                },
                                &student,
                            ))
                            .await
                            .map(|_| ()),
                        Code::PermissionDenied,
                    ),
                    _ => (
                        client
                            .list_students(with_token(ListStudentsRequest::default(), &admin))
                            .await
                            .map(|_| ()),
                        Code::Ok,
                    ),
                };
                let code = result.err().map_or(Code::Ok, |status| status.code());
                if code != expected {
                    unexpected.push((expected, code));
                }
            }
            unexpected
        }));
    }

    let mut unexpected = Vec::new();
    for task in tasks {
        unexpected.extend(task.await.expect("task"));
    }
    assert!(
        unexpected.is_empty(),
        "{} unexpected codes: {:?}",
        unexpected.len(),
        &unexpected[..unexpected.len().min(10)]
    );
}
