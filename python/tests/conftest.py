"""Fixtures for the generated Python client test.

The client is generated from proto/ when the session starts, with the same command that
docs/clients.md shows, so the test proves that the proto files alone are enough. The services
come from the directory that tests/clients/run passes in CLIENT_STACK_DIR: its `endpoints`
file names the addresses and `data/dev-credentials` contains the accounts.
"""

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

REPO = Path(__file__).resolve().parents[2]
PROTOS = ["school/auth/v1/auth.proto", "school/student/v1/student.proto"]


def read_env_file(path):
    """Parse a file of NAME=value lines."""
    values = {}
    for line in path.read_text().splitlines():
        name, sep, value = line.partition("=")
        if sep:
            values[name.strip()] = value.strip()
    return values


@pytest.fixture(scope="session")
def generated(tmp_path_factory):
    """Generate the client into a temporary directory and make it importable."""
    out = tmp_path_factory.mktemp("generated")
    command = [
        sys.executable, "-m", "grpc_tools.protoc",
        "-I", "proto",
        f"--python_out={out}", f"--grpc_python_out={out}",
        *(f"proto/{proto}" for proto in PROTOS),
    ]
    subprocess.run(command, cwd=REPO, check=True)
    sys.path.insert(0, str(out))
    return out


@pytest.fixture(scope="session")
def stack():
    """Addresses and credentials of the running services."""
    directory = os.environ.get("CLIENT_STACK_DIR")
    if not directory:
        pytest.fail("CLIENT_STACK_DIR is not set: run tests/clients/run, which starts the services")
    directory = Path(directory)
    values = read_env_file(directory / "endpoints")
    values.update(read_env_file(directory / "data" / "dev-credentials"))
    return values


@pytest.fixture(scope="session")
def auth(generated, stack):
    """An AuthService stub on the running auth-service."""
    from school.auth.v1 import auth_pb2_grpc

    channel = grpc.insecure_channel(stack["AUTH_ADDR"])
    yield auth_pb2_grpc.AuthServiceStub(channel)
    channel.close()


@pytest.fixture(scope="session")
def student_channel(stack):
    """A channel to the running student-service."""
    channel = grpc.insecure_channel(stack["STUDENT_ADDR"])
    yield channel
    channel.close()


@pytest.fixture(scope="session")
def students(generated, student_channel):
    """A StudentService stub on the running student-service."""
    from school.student.v1 import student_pb2_grpc

    return student_pb2_grpc.StudentServiceStub(student_channel)
