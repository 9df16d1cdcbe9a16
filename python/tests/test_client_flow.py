"""The main flow through a Python client generated from proto/, with the status codes and the
google.rpc.ErrorInfo details that the services promise."""

import base64
import json
import time

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

STUDENT_SERVICE = "school.student.v1.StudentService"


def bearer(token):
    return (("authorization", f"Bearer {token}"),)


def details(error):
    """Return the ErrorInfo and BadRequest details of a failed call, or None for each."""
    status = rpc_status.from_call(error)
    info = bad_request = None
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
    return info, bad_request


def login(auth, username, password):
    from school.auth.v1 import auth_pb2

    return auth.Login(auth_pb2.LoginRequest(username=username, password=password))


def encode(value):
    text = json.dumps(value).encode()
    return base64.urlsafe_b64encode(text).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def admin_token(auth, stack):
    return login(auth, stack["ADMIN_USERNAME"], stack["ADMIN_PASSWORD"]).access_token


@pytest.fixture(scope="module")
def student_token(auth, stack):
    return login(auth, stack["STUDENT_USERNAME"], stack["STUDENT_PASSWORD"]).access_token


@pytest.fixture()
def record(students, admin_token):
    from school.student.v1 import student_pb2

    request = student_pb2.CreateStudentRequest(
        name="Ada Pupil", email="ada@example.org", grade_level=7
    )
    return students.CreateStudent(request, metadata=bearer(admin_token)).student


def delete_request(student_id):
    from school.student.v1 import student_pb2

    return student_pb2.DeleteStudentRequest(id=student_id)


def test_login_returns_bearer_token(auth, stack):
    response = login(auth, stack["ADMIN_USERNAME"], stack["ADMIN_PASSWORD"])

    assert response.token_type == "Bearer"
    assert response.access_token.count(".") == 2
    assert response.expires_in > 0


def test_wrong_password_is_invalid_credentials(auth, stack):
    with pytest.raises(grpc.RpcError) as caught:
        login(auth, stack["ADMIN_USERNAME"], "wrong password")

    info, _ = details(caught.value)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert info.reason == "INVALID_CREDENTIALS"
    assert info.domain == "auth-service"


def test_validate_token_reports_claims(auth, admin_token, stack):
    from school.auth.v1 import auth_pb2

    response = auth.ValidateToken(auth_pb2.ValidateTokenRequest(token=admin_token))

    assert response.valid
    assert response.subject == stack["ADMIN_USERNAME"]
    assert response.role == "admin"


def test_create_student_as_admin(record):
    assert len(record.id) == 36
    assert record.name == "Ada Pupil"
    assert record.created_by == "admin"


def test_invalid_field_is_a_field_violation(students, admin_token):
    from school.student.v1 import student_pb2

    request = student_pb2.CreateStudentRequest(name="Ada", email="not-an-email")
    with pytest.raises(grpc.RpcError) as caught:
        students.CreateStudent(request, metadata=bearer(admin_token))

    info, bad_request = details(caught.value)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.reason == "INVALID_ARGUMENT"
    assert [violation.field for violation in bad_request.field_violations] == ["email"]


def test_delete_as_student_is_permission_denied(students, student_token, record):
    with pytest.raises(grpc.RpcError) as caught:
        students.DeleteStudent(delete_request(record.id), metadata=bearer(student_token))

    info, _ = details(caught.value)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert info.reason == "PERMISSION_DENIED"
    assert info.domain == "school-guard"
    assert info.metadata["method"] == f"{STUDENT_SERVICE}/DeleteStudent"
    assert info.metadata["role"] == "student"
    assert info.metadata["allowed_roles"].split(",") == ["admin"]


def test_delete_without_token_is_missing_credentials(students, record):
    with pytest.raises(grpc.RpcError) as caught:
        students.DeleteStudent(delete_request(record.id))

    info, _ = details(caught.value)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert info.reason == "MISSING_CREDENTIALS"
    assert info.domain == "school-guard"


def test_garbage_token_is_token_invalid(students, record):
    with pytest.raises(grpc.RpcError) as caught:
        students.DeleteStudent(delete_request(record.id), metadata=bearer("not-a-jwt"))

    info, _ = details(caught.value)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert info.reason == "TOKEN_INVALID"
    assert info.metadata["problem"] == "malformed"


def test_expired_token_is_token_expired(students, record):
    # The guard checks the claims before the signature, so an expired token is reported as
    # expired even though this test cannot sign it.
    now = int(time.time())
    header = {"alg": "EdDSA", "typ": "JWT", "kid": "unknown-key"}
    claims = {
        "sub": "admin", "role": "admin", "iss": "school-auth", "aud": "school",
        "iat": now - 7200, "nbf": now - 7200, "exp": now - 3600, "jti": "expired",
    }
    signature = base64.urlsafe_b64encode(bytes(64)).rstrip(b"=").decode()
    token = f"{encode(header)}.{encode(claims)}.{signature}"

    with pytest.raises(grpc.RpcError) as caught:
        students.DeleteStudent(delete_request(record.id), metadata=bearer(token))

    info, _ = details(caught.value)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert info.reason == "TOKEN_EXPIRED"


def test_delete_as_admin_then_not_found(students, admin_token, record):
    students.DeleteStudent(delete_request(record.id), metadata=bearer(admin_token))
    with pytest.raises(grpc.RpcError) as caught:
        students.DeleteStudent(delete_request(record.id), metadata=bearer(admin_token))

    info, _ = details(caught.value)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.reason == "STUDENT_NOT_FOUND"
    assert info.metadata["id"] == record.id


def test_health_check_is_serving(student_channel):
    health = health_pb2_grpc.HealthStub(student_channel)

    response = health.Check(health_pb2.HealthCheckRequest(service=STUDENT_SERVICE))

    assert response.status == health_pb2.HealthCheckResponse.SERVING
