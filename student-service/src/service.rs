//! Handlers of `school.student.v1.StudentService`.
//!
//! The guard layer has authenticated the caller and checked the role before a handler runs.
//! Handlers still fail closed without the [`Identity`] and [`Access`] that the layer inserts,
//! and they enforce [`Access::OwnerOnly`], which the layer cannot check because it depends on
//! the stored record.

use std::sync::Arc;
use std::time::SystemTime;

use school_guard::{Access, Identity};
use school_proto::student::v1::student_service_server::StudentService;
use school_proto::student::v1::{
    CreateStudentRequest, CreateStudentResponse, DeleteStudentRequest, DeleteStudentResponse,
    GetStudentRequest, GetStudentResponse, ListStudentsRequest, ListStudentsResponse, Student,
};
use tonic::{Request, Response, Status};
use tracing::field::Empty;
use uuid::Uuid;

use crate::error::Error;
use crate::page_token;
use crate::store::{SCHEMA_VERSION, StudentRecord, StudentStore};
use crate::validate;

/// The StudentService handlers over a [`StudentStore`].
pub struct StudentApi<S> {
    store: Arc<S>,
}

impl<S: StudentStore> StudentApi<S> {
    /// Creates the handlers over `store`.
    pub fn new(store: Arc<S>) -> Self {
        StudentApi { store }
    }

    async fn create(
        &self,
        identity: &Identity,
        request: CreateStudentRequest,
    ) -> Result<StudentRecord, Error> {
        let new = validate::new_student(request)?;
        let record = StudentRecord {
            schema_version: SCHEMA_VERSION,
            id: Uuid::new_v4(),
            name: new.name,
            email: new.email,
            account_username: new.account_username,
            grade_level: new.grade_level,
            create_time: SystemTime::now(),
            created_by: identity.subject.clone(),
        };
        tracing::Span::current().record("student.id", tracing::field::display(record.id));

        self.store.insert(&record).await?;
        Ok(record)
    }

    async fn get(
        &self,
        identity: &Identity,
        access: Access,
        request: GetStudentRequest,
    ) -> Result<StudentRecord, Error> {
        let id = validate::student_id(&request.id)?;
        tracing::Span::current().record("student.id", tracing::field::display(id));

        let record = self.store.get(id).await?;
        match access {
            Access::Full => record.ok_or(Error::NotFound { id }),
            Access::OwnerOnly => {
                // A missing record is denied like another student's, so that the response
                // does not reveal which ids exist.
                let owned = record.filter(|record| {
                    record.account_username.as_deref() == Some(identity.subject.as_str())
                });
                match owned {
                    Some(record) => Ok(record),
                    None => {
                        tracing::info!(
                            caller = %identity.subject,
                            role = %identity.role,
                            student.id = %id,
                            decision = "deny",
                            "caller may read only the student record linked to their own account"
                        );
                        Err(Error::PermissionDenied)
                    }
                }
            }
        }
    }

    async fn list(&self, request: ListStudentsRequest) -> Result<ListStudentsResponse, Error> {
        let limit = validate::page_size(request.page_size)?;
        let after = page_token::decode(&request.page_token)?;

        let page = self.store.list(after, limit).await?;

        let next_page_token = match page.records.last() {
            Some(last) if page.has_more => page_token::encode(last.id),
            _ => String::new(),
        };
        Ok(ListStudentsResponse {
            students: page.records.into_iter().map(to_message).collect(),
            next_page_token,
        })
    }

    async fn delete(&self, request: DeleteStudentRequest) -> Result<(), Error> {
        let id = validate::student_id(&request.id)?;
        tracing::Span::current().record("student.id", tracing::field::display(id));

        match self.store.delete(id).await? {
            Some(_) => Ok(()),
            None => Err(Error::NotFound { id }),
        }
    }
}

#[tonic::async_trait]
impl<S: StudentStore> StudentService for StudentApi<S> {
    #[tracing::instrument(
        skip_all,
        fields(rpc.method = "CreateStudent", caller = Empty, student.id = Empty)
    )]
    async fn create_student(
        &self,
        request: Request<CreateStudentRequest>,
    ) -> Result<Response<CreateStudentResponse>, Status> {
        let identity = full_access_caller(&request)?;

        let result = self.create(&identity, request.into_inner()).await;

        log_mutation(&result, "created");
        let record = result?;
        Ok(Response::new(CreateStudentResponse {
            student: Some(to_message(record)),
        }))
    }

    #[tracing::instrument(
        skip_all,
        fields(rpc.method = "GetStudent", caller = Empty, student.id = Empty)
    )]
    async fn get_student(
        &self,
        request: Request<GetStudentRequest>,
    ) -> Result<Response<GetStudentResponse>, Status> {
        let (identity, access) = caller(&request)?;

        let record = self.get(&identity, access, request.into_inner()).await?;

        Ok(Response::new(GetStudentResponse {
            student: Some(to_message(record)),
        }))
    }

    #[tracing::instrument(skip_all, fields(rpc.method = "ListStudents", caller = Empty))]
    async fn list_students(
        &self,
        request: Request<ListStudentsRequest>,
    ) -> Result<Response<ListStudentsResponse>, Status> {
        full_access_caller(&request)?;

        let response = self.list(request.into_inner()).await?;

        Ok(Response::new(response))
    }

    #[tracing::instrument(
        skip_all,
        fields(rpc.method = "DeleteStudent", caller = Empty, student.id = Empty)
    )]
    async fn delete_student(
        &self,
        request: Request<DeleteStudentRequest>,
    ) -> Result<Response<DeleteStudentResponse>, Status> {
        full_access_caller(&request)?;

        let result = self.delete(request.into_inner()).await;

        log_mutation(&result, "deleted");
        result?;
        Ok(Response::new(DeleteStudentResponse {}))
    }
}

/// Returns the identity and access level that the guard layer inserted, and records the caller
/// on the current span. Fails closed with [`Error::MissingIdentity`] when either is absent.
fn caller<T>(request: &Request<T>) -> Result<(Identity, Access), Error> {
    let extensions = request.extensions();
    let (Some(identity), Some(access)) = (extensions.get::<Identity>(), extensions.get::<Access>())
    else {
        return Err(Error::MissingIdentity);
    };
    tracing::Span::current().record("caller", identity.subject.as_str());
    Ok((identity.clone(), *access))
}

/// Like [`caller`], but also rejects [`Access::OwnerOnly`]: the methods that call it have no
/// owner check, so a policy granting owner-only access to them is a policy mistake.
fn full_access_caller<T>(request: &Request<T>) -> Result<Identity, Error> {
    let (identity, access) = caller(request)?;
    if access == Access::OwnerOnly {
        tracing::warn!(
            caller = %identity.subject,
            role = %identity.role,
            decision = "deny",
            "the policy grants owner-only access to a method that has no owner check; \
             list the role under `roles` or remove it from `owner_roles`"
        );
        return Err(Error::PermissionDenied);
    }
    Ok(identity)
}

/// Logs the outcome of a create or delete call. The span carries the method, caller and
/// student id.
fn log_mutation<T>(result: &Result<T, Error>, success: &'static str) {
    match result {
        Ok(_) => tracing::info!(outcome = success, "student record changed"),
        Err(Error::InvalidArgument { field, .. }) => {
            tracing::info!(outcome = "rejected", field = *field, "invalid request")
        }
        Err(Error::NotFound { .. }) => tracing::info!(outcome = "not_found", "no such student"),
        Err(Error::AccountTaken { existing, .. }) => tracing::info!(
            outcome = "rejected",
            existing.id = %existing,
            "account already linked to another student"
        ),
        // The conversion to a status logs the cause of the remaining errors.
        Err(_) => tracing::warn!(outcome = "failed", "change failed"),
    }
}

fn to_message(record: StudentRecord) -> Student {
    Student {
        id: record.id.to_string(),
        name: record.name,
        email: record.email,
        account_username: record.account_username.unwrap_or_default(),
        grade_level: record.grade_level,
        create_time: Some(record.create_time.into()),
        created_by: record.created_by,
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;
    use crate::store::SledStore;

    fn api() -> (tempfile::TempDir, StudentApi<SledStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        (dir, StudentApi::new(Arc::new(store)))
    }

    fn identity(subject: &str, role: &str) -> Identity {
        Identity {
            subject: subject.to_owned(),
            role: role.to_owned(),
            token_id: "token-1".to_owned(),
            expires_at: 0,
        }
    }

    fn as_caller<T>(message: T, subject: &str, role: &str, access: Access) -> Request<T> {
        let mut request = Request::new(message);
        request.extensions_mut().insert(identity(subject, role));
        request.extensions_mut().insert(access);
        request
    }

    fn create_request() -> CreateStudentRequest {
        CreateStudentRequest {
            name: "Ada".to_owned(),
            email: "ada@school.test".to_owned(),
            account_username: "ada".to_owned(),
            grade_level: 5,
        }
    }

    #[tokio::test]
    async fn missing_identity_fails_closed() {
        let (_dir, api) = api();

        let create = api.create_student(Request::new(create_request())).await;
        let get = api
            .get_student(Request::new(GetStudentRequest {
                id: Uuid::new_v4().to_string(),
            }))
            .await;
        let list = api
            .list_students(Request::new(ListStudentsRequest::default()))
            .await;
        let delete = api
            .delete_student(Request::new(DeleteStudentRequest {
                id: Uuid::new_v4().to_string(),
            }))
            .await;

        assert_eq!(create.unwrap_err().code(), Code::Internal);
        assert_eq!(get.unwrap_err().code(), Code::Internal);
        assert_eq!(list.unwrap_err().code(), Code::Internal);
        assert_eq!(delete.unwrap_err().code(), Code::Internal);
    }

    #[tokio::test]
    async fn missing_access_fails_closed() {
        let (_dir, api) = api();
        let mut request = Request::new(create_request());
        request
            .extensions_mut()
            .insert(identity("principal", "admin"));

        let status = api.create_student(request).await.unwrap_err();

        assert_eq!(status.code(), Code::Internal);
    }

    #[tokio::test]
    async fn owner_only_rejected_where_unchecked() {
        let (_dir, api) = api();

        let create = api
            .create_student(as_caller(
                create_request(),
                "ada",
                "student",
                Access::OwnerOnly,
            ))
            .await;
        let list = api
            .list_students(as_caller(
                ListStudentsRequest::default(),
                "ada",
                "student",
                Access::OwnerOnly,
            ))
            .await;
        let delete = api
            .delete_student(as_caller(
                DeleteStudentRequest {
                    id: Uuid::new_v4().to_string(),
                },
                "ada",
                "student",
                Access::OwnerOnly,
            ))
            .await;

        assert_eq!(create.unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(list.unwrap_err().code(), Code::PermissionDenied);
        assert_eq!(delete.unwrap_err().code(), Code::PermissionDenied);
    }

    #[tokio::test]
    async fn created_by_is_caller() {
        let (_dir, api) = api();

        let response = api
            .create_student(as_caller(
                create_request(),
                "principal",
                "admin",
                Access::Full,
            ))
            .await
            .unwrap();

        let student = response.into_inner().student.unwrap();
        assert_eq!(student.created_by, "principal");
    }

    #[tokio::test]
    async fn owner_reads_own_record() {
        let (_dir, api) = api();
        let created = api
            .create_student(as_caller(
                create_request(),
                "principal",
                "admin",
                Access::Full,
            ))
            .await
            .unwrap()
            .into_inner()
            .student
            .unwrap();
        let request = |subject: &str| {
            as_caller(
                GetStudentRequest {
                    id: created.id.clone(),
                },
                subject,
                "student",
                Access::OwnerOnly,
            )
        };

        let own = api.get_student(request("ada")).await;
        let other = api.get_student(request("bob")).await;

        assert_eq!(own.unwrap().into_inner().student.unwrap(), created);
        assert_eq!(other.unwrap_err().code(), Code::PermissionDenied);
    }
}
