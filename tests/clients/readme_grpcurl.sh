#!/usr/bin/env bash
# Runs the README's grpcurl session word for word and checks each command's outcome.
#
# grpcurl cannot be installed here, so `grpcurl` is a shell function that translates the flags
# the session uses into `buf curl`, which speaks the same reflection protocols, and prints
# errors in grpcurl's "ERROR: / Code: / Message:" form. The session's two addresses are replaced
# by those of the running stack, and it runs in STACK_DIR, whose data/dev-credentials has the
# form scripts/dev writes.
#
# Every command of the session must have an entry in EXPECTATIONS below, and every entry a
# command, so an edit to the README that this test does not know about fails it.
#
# Usage: tests/clients/readme_grpcurl.sh STACK_DIR. Prints one line per command and ends with
# "N passed, N failed"; exits 1 if any check failed.
set -uo pipefail
cd "$(dirname "$0")/../.."

stack_dir=${1:?usage: readme_grpcurl.sh STACK_DIR}
repo=$PWD
buf=$repo/.tools/buf/node_modules/.bin/buf
# shellcheck disable=SC1091
source "$stack_dir/endpoints"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1: $2"; }

# --- The grpcurl stand-in --------------------------------------------------------------------

# Turns buf's error code ("permission_denied") into grpcurl's ("PermissionDenied").
grpcurl_code() {
  local word result=""
  IFS=_ read -ra words <<<"$1"
  for word in "${words[@]}"; do result+="${word^}"; done
  printf '%s' "$result"
}

grpcurl_describe() {
  local addr=$1 symbol=$2
  local service=${symbol%.*} method=${symbol##*.}
  "$buf" curl --protocol grpc -d "{\"file_containing_symbol\": \"$symbol\"}" \
    "http://$addr/grpc.reflection.v1.ServerReflection/ServerReflectionInfo" >"$work/reflection" ||
    return 1
  local encoded
  encoded=$(jq -r '.fileDescriptorResponse.fileDescriptorProto[0]' "$work/reflection")
  while ((${#encoded} % 4)); do encoded+="="; done
  printf '%s' "$encoded" | base64 -d >"$work/file.binpb" || return 1
  (cd "$work" && "$buf" convert --type google.protobuf.FileDescriptorProto \
    --from file.binpb#format=binpb --to -#format=json) |
    jq -r --arg service "${service##*.}" --arg method "$method" --arg symbol "$symbol" '
      .service[] | select(.name == $service) | .method[] | select(.name == $method) |
      "\($symbol) is a method:\nrpc \(.name) ( \(.inputType) ) returns ( \(.outputType) );"'
}

grpcurl() {
  local plaintext=0 data="" has_data=0
  local headers=() positional=()
  while (($#)); do
    case $1 in
      -plaintext) plaintext=1 ;;
      -H) headers+=(-H "$2") && shift ;;
      -d) data=$2 && has_data=1 && shift ;;
      -*) echo "grpcurl stand-in: unsupported flag $1" >&2 && return 2 ;;
      *) positional+=("$1") ;;
    esac
    shift
  done
  if ((!plaintext)); then
    echo "grpcurl stand-in: only -plaintext sessions are supported" >&2
    return 2
  fi

  local addr=${positional[0]} verb=${positional[1]-}
  case $verb in
    list) "$buf" curl --protocol grpc --list-services "http://$addr" ;;
    describe) grpcurl_describe "$addr" "${positional[2]}" ;;
    */*)
      # grpcurl reads the request from standard input with `-d @`, buf with `-d @-`.
      [[ $data == @ ]] && data=@-
      local data_flag=()
      ((has_data)) && data_flag=(-d "$data")
      "$buf" curl --protocol grpc "${headers[@]}" "${data_flag[@]}" "http://$addr/$verb" \
        2>"$work/call-error"
      local status=$?
      if ((status != 0)); then
        {
          echo "ERROR:"
          echo "  Code: $(grpcurl_code "$(jq -r .code "$work/call-error" 2>/dev/null)")"
          echo "  Message: $(jq -r .message "$work/call-error" 2>/dev/null)"
        } >&2
        return 1
      fi
      ;;
    *) echo "grpcurl stand-in: unsupported command ${positional[*]}" >&2 && return 2 ;;
  esac
}

# --- What each command must do ---------------------------------------------------------------

# Each check reads the command's exit status in $status and its combined output in $output.
check_credentials() { [[ $status == 0 && -n ${ADMIN_PASSWORD-} ]]; }
check_list() { [[ $status == 0 ]] && grep -qx school.student.v1.StudentService <<<"$output"; }
check_describe() {
  [[ $status == 0 ]] && grep -qF 'rpc DeleteStudent ( .school.student.v1.DeleteStudentRequest ) returns ( .school.student.v1.DeleteStudentResponse );' <<<"$output"
}
check_token() { [[ $status == 0 && ${TOKEN-} == *.*.* ]]; }
check_id() { [[ $status == 0 && ${ID-} =~ ^[0-9a-f-]{36}$ ]]; }
check_deleted() { [[ $status == 0 && $(jq -c . <<<"$output") == '{}' ]]; }
check_unauthenticated() { [[ $status != 0 ]] && grep -qx '  Code: Unauthenticated' <<<"$output"; }
check_serving() { [[ $status == 0 && $(jq -r .status <<<"$output") == SERVING ]]; }

declare -A EXPECTATIONS=(
  ['source data/dev-credentials']=check_credentials
  ['grpcurl -plaintext 127.0.0.1:50052 list']=check_list
  ['grpcurl -plaintext 127.0.0.1:50052 describe school.student.v1.StudentService.DeleteStudent']=check_describe
  ['TOKEN=$(grpcurl -plaintext -d "{\"username\": \"admin\", \"password\": \"$ADMIN_PASSWORD\"}" 127.0.0.1:50051 school.auth.v1.AuthService/Login | jq -r .accessToken)']=check_token
  ['ID=$(grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d '"'"'{"name": "Ada Pupil", "email": "ada@example.org", "grade_level": 7}'"'"' 127.0.0.1:50052 school.student.v1.StudentService/CreateStudent | jq -r .student.id)']=check_id
  ['grpcurl -plaintext -H "authorization: Bearer $TOKEN" -d "{\"id\": \"$ID\"}" 127.0.0.1:50052 school.student.v1.StudentService/DeleteStudent']=check_deleted
  ['grpcurl -plaintext -d "{\"id\": \"$ID\"}" 127.0.0.1:50052 school.student.v1.StudentService/DeleteStudent']=check_unauthenticated
  ['grpcurl -plaintext -d '"'"'{"service": "school.student.v1.StudentService"}'"'"' 127.0.0.1:50052 grpc.health.v1.Health/Check']=check_serving
)

# --- The session as the README has it ----------------------------------------------------------

# The sh block under "## A session with grpcurl", one command per entry: comments and blank
# lines dropped, backslash continuations joined with their indentation collapsed.
commands=()
in_block=0
in_section=0
current=""
while IFS= read -r line; do
  if [[ $line == '## A session with grpcurl' ]]; then in_section=1 && continue; fi
  ((in_section)) || continue
  if ((!in_block)); then
    [[ $line == '```sh' ]] && in_block=1
    [[ $line == '## '* ]] && break
    continue
  fi
  [[ $line == '```' ]] && break
  [[ -z $current && ($line =~ ^[[:space:]]*# || -z ${line// /}) ]] && continue
  line=${line#"${line%%[![:space:]]*}"}
  if [[ $line == *'\' ]]; then
    current+="${line%\\}"
  else
    commands+=("$current$line")
    current=""
  fi
done <"$repo/README.md"

if ((${#commands[@]} == 0)); then
  fail "README session" "no sh block found under '## A session with grpcurl'"
fi
for command in "${commands[@]}"; do
  [[ -n ${EXPECTATIONS[$command]-} ]] ||
    fail "README command has a matching check" "no check for: $command"
done
for command in "${!EXPECTATIONS[@]}"; do
  found=0
  for readme_command in "${commands[@]}"; do
    [[ $readme_command == "$command" ]] && found=1
  done
  ((found)) || fail "every check has a README command" "the README no longer runs: $command"
done

cd "$stack_dir" || exit 1
for command in "${commands[@]}"; do
  check=${EXPECTATIONS[$command]-}
  [[ -n $check ]] || continue
  runnable=${command//127.0.0.1:50051/$AUTH_ADDR}
  runnable=${runnable//127.0.0.1:50052/$STUDENT_ADDR}
  # Run in this shell, not a subshell, so that TOKEN and ID stay set for later commands.
  eval "$runnable" >"$work/output" 2>&1
  status=$?
  output=$(cat "$work/output")
  # Name the command by its first words, which carry no token or password.
  name=$(cut -c1-90 <<<"$command")
  if "$check"; then pass "$name"; else
    fail "$name" "exit status $status, output: $(head -c 300 "$work/output")"
  fi
done

echo "README grpcurl session: $passed passed, $failed failed"
[[ $failed == 0 ]]
