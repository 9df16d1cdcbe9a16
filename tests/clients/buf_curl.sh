#!/usr/bin/env bash
# Drives the services with `buf curl` through server reflection alone, with no proto files, and
# checks the protos with `buf lint` and `buf format`.
#
# Usage: tests/clients/buf_curl.sh STACK_DIR, where STACK_DIR was written by the client_stack
# example (tests/clients/run starts it). Prints one line per check and ends with
# "N passed, N failed"; exits 1 if any check failed. Tokens are kept in variables and never
# printed.
set -uo pipefail
cd "$(dirname "$0")/../.."

stack_dir=${1:?usage: buf_curl.sh STACK_DIR}
buf=$PWD/.tools/buf/node_modules/.bin/buf
# shellcheck disable=SC1091
source "$stack_dir/endpoints"
# shellcheck disable=SC1091
source "$stack_dir/data/dev-credentials"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1: $2"; }

# buf curl exits with the gRPC code shifted left by 3 when a call fails (buf 1.75 `curl --help`).
exit_code_for() {
  case $1 in
    OK) echo 0 ;; PERMISSION_DENIED) echo $((7 << 3)) ;; UNAUTHENTICATED) echo $((16 << 3)) ;;
  esac
}

# Runs "$@", keeping stdout in $work/out and stderr in $work/err, and sets $status.
run() {
  "$@" >"$work/out" 2>"$work/err"
  status=$?
}

# Decodes base64 that may lack padding or use the URL-safe alphabet, as buf prints it.
decode_base64() {
  local value=$1
  while ((${#value} % 4)); do value+="="; done
  printf '%s' "$value" | tr '_-' '/+' | base64 -d 2>/dev/null
}

# Checks that the last call failed with `code` and an ErrorInfo whose encoded form contains
# `reason`. buf prints details it has no schema for as base64, so the reason is found in the
# decoded bytes.
expect_error() {
  local name=$1 code=$2 reason=$3
  local expected_status actual_code
  expected_status=$(exit_code_for "$code")
  actual_code=$(jq -r .code "$work/err" 2>/dev/null)
  if [[ $status != "$expected_status" ]]; then
    fail "$name" "exit status $status, expected $expected_status: $(head -c 300 "$work/err")"
  elif [[ $actual_code != "${code,,}" ]]; then
    fail "$name" "code $actual_code, expected ${code,,}"
  elif ! decode_base64 "$(jq -r '.details[] | select(.type == "google.rpc.ErrorInfo") | .value' \
    "$work/err")" | grep -aq "$reason"; then
    fail "$name" "no ErrorInfo with reason $reason: $(head -c 300 "$work/err")"
  else
    pass "$name"
  fi
}

# --- The contract: lint and format ---------------------------------------------------------

run "$buf" lint proto
if [[ $status == 0 ]]; then pass "buf lint proto (STANDARD, COMMENTS)"; else
  fail "buf lint proto" "$(cat "$work/out" "$work/err")"
fi

run "$buf" format --diff --exit-code proto
if [[ $status == 0 ]]; then pass "buf format leaves proto/ unchanged"; else
  fail "buf format --diff proto" "$(cat "$work/out" "$work/err")"
fi

# --- Discovery through reflection ------------------------------------------------------------

run "$buf" curl --protocol grpc --list-services "http://$STUDENT_ADDR"
if [[ $status == 0 ]] && grep -qx school.student.v1.StudentService "$work/out" &&
  grep -qx grpc.health.v1.Health "$work/out"; then
  pass "list services"
else
  fail "list services" "status $status: $(cat "$work/out" "$work/err")"
fi

run "$buf" curl --protocol grpc --list-methods "http://$STUDENT_ADDR"
if [[ $status == 0 ]] && grep -qx school.student.v1.StudentService/DeleteStudent "$work/out"; then
  pass "list methods"
else
  fail "list methods" "status $status: $(cat "$work/out" "$work/err")"
fi

# buf curl has no `describe`, so ask the reflection service itself (which buf also reaches
# through reflection) for the file that defines the method, and decode it with `buf convert`.
# buf prints bytes as base64 without padding, which the jq filter restores for `base64 -d`.
# These are the commands docs/clients.md shows.
(
  cd "$work" || exit 1
  "$buf" curl --protocol grpc \
    -d '{"file_containing_symbol": "school.student.v1.StudentService.DeleteStudent"}' \
    "http://$STUDENT_ADDR/grpc.reflection.v1.ServerReflection/ServerReflectionInfo" |
    jq -r '.fileDescriptorResponse.fileDescriptorProto[0] | . + "=" * ((4 - length % 4) % 4)' |
    base64 -d >student.binpb
  "$buf" convert --type google.protobuf.FileDescriptorProto --from student.binpb#format=binpb \
    --to -#format=json | jq -c '.service[].method[] | select(.name == "DeleteStudent")'
) >"$work/out" 2>"$work/err"
status=$?
method=$(cat "$work/out")
expected='{"name":"DeleteStudent","inputType":".school.student.v1.DeleteStudentRequest","outputType":".school.student.v1.DeleteStudentResponse"}'
if [[ $method == "$expected" ]]; then pass "describe DeleteStudent"; else
  fail "describe DeleteStudent" "status $status, got ${method:-nothing}: $(head -c 300 "$work/err")"
fi

# --- The main flow ---------------------------------------------------------------------------

login() {
  jq -n --arg username "$1" --arg password "$2" '{username: $username, password: $password}' |
    "$buf" curl --protocol grpc -d @- "http://$AUTH_ADDR/school.auth.v1.AuthService/Login" \
      2>"$work/err" | jq -r '.accessToken // empty'
}

admin_token=$(login "$ADMIN_USERNAME" "$ADMIN_PASSWORD")
if [[ $admin_token == *.*.* ]]; then pass "Login as admin"; else
  fail "Login as admin" "no token: $(head -c 300 "$work/err")"
fi
student_token=$(login "$STUDENT_USERNAME" "$STUDENT_PASSWORD")
if [[ $student_token == *.*.* ]]; then pass "Login as student"; else
  fail "Login as student" "no token: $(head -c 300 "$work/err")"
fi

run "$buf" curl --protocol grpc -H "authorization: Bearer $admin_token" \
  -d '{"name": "Ada Pupil", "email": "ada@example.org", "grade_level": 7}' \
  "http://$STUDENT_ADDR/school.student.v1.StudentService/CreateStudent"
id=$(jq -r '.student.id // empty' "$work/out" 2>/dev/null)
if [[ $status == 0 && $id =~ ^[0-9a-f-]{36}$ ]]; then pass "CreateStudent as admin"; else
  fail "CreateStudent as admin" "status $status: $(head -c 300 "$work/err")"
fi

run "$buf" curl --protocol grpc -H "authorization: Bearer $student_token" -d "{\"id\": \"$id\"}" \
  "http://$STUDENT_ADDR/school.student.v1.StudentService/DeleteStudent"
expect_error "DeleteStudent as student is PERMISSION_DENIED" PERMISSION_DENIED PERMISSION_DENIED

run "$buf" curl --protocol grpc -d "{\"id\": \"$id\"}" \
  "http://$STUDENT_ADDR/school.student.v1.StudentService/DeleteStudent"
expect_error "DeleteStudent without a token is UNAUTHENTICATED" UNAUTHENTICATED MISSING_CREDENTIALS

run "$buf" curl --protocol grpc -H "authorization: Bearer $admin_token" -d "{\"id\": \"$id\"}" \
  "http://$STUDENT_ADDR/school.student.v1.StudentService/DeleteStudent"
if [[ $status == 0 && $(jq -c . "$work/out") == '{}' ]]; then pass "DeleteStudent as admin"; else
  fail "DeleteStudent as admin" "status $status: $(head -c 300 "$work/err")"
fi

run "$buf" curl --protocol grpc -d '{"service": "school.student.v1.StudentService"}' \
  "http://$STUDENT_ADDR/grpc.health.v1.Health/Check"
if [[ $status == 0 && $(jq -r .status "$work/out") == SERVING ]]; then pass "health check"; else
  fail "health check" "status $status: $(cat "$work/out" "$work/err")"
fi

echo "buf curl: $passed passed, $failed failed"
[[ $failed == 0 ]]
