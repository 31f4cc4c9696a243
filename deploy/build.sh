#!/usr/bin/env bash
# Build the real Dockerfile the way this machine's pip reaches the package index, and nothing more:
#   [IMAGE=swordsec-console:latest] deploy/build.sh [other docker build options]
#
# What the host's pip uses is handed to the build stages as build args (see the Dockerfile's header):
#   - the index settings pip resolves from its config files and PIP_* environment (pip config list):
#     index-url, extra-index-url (http/https entries only: a file:// index is not in the container),
#     trusted-host;
#   - the CA certificates this machine added to its trust store (/usr/local/share/ca-certificates, or the
#     file pip's `cert` names when it is not the system bundle): a TLS-inspecting proxy signs with one;
#   - the host's network (--network host), so the build goes out the way the host does.
# None of it reaches the runtime image (its stage declares no ARG). On a machine with plain internet
# access this is just `docker build -t swordsec-console:latest .`.
set -euo pipefail
context=${CONTEXT:-$(cd "$(dirname "$0")/.." && pwd)}  # the repository, unless told otherwise
PIP=${PIP:-$(command -v pip3 || command -v pip || true)}
args=(--network host)

pip_setting() {  # the last value pip would use for KEY, from `pip config list` (files, then environment)
  [ -n "$PIP" ] || return 0
  "$PIP" config list 2>/dev/null | sed -n "s/^[^=]*\.$1='\(.*\)'$/\1/p" | tail -n 1
}
keep_http() { tr ' ' '\n' | grep -E '^https?://' | paste -sd' ' - || true; }

index=$(pip_setting index-url | keep_http)
extra=$(pip_setting extra-index-url | keep_http)
trusted=$(pip_setting trusted-host)
[ -n "$index" ] && args+=(--build-arg "PIP_INDEX_URL=$index")
[ -n "$extra" ] && args+=(--build-arg "PIP_EXTRA_INDEX_URL=$extra")
[ -n "$trusted" ] && args+=(--build-arg "PIP_TRUSTED_HOST=$trusted")

cert=$(pip_setting cert)
system_bundle=/etc/ssl/certs/ca-certificates.crt
ca=""
if [ -n "$cert" ] && [ -f "$cert" ] && [ "$(readlink -f "$cert")" != "$(readlink -f "$system_bundle")" ]; then
  ca=$(cat "$cert")
elif compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
  ca=$(cat /usr/local/share/ca-certificates/*.crt)
fi
[ -n "$ca" ] && args+=(--build-arg "EXTRA_CA_PEM=$ca")

exec docker build "${args[@]}" -t "${IMAGE:-swordsec-console:latest}" "$@" "$context"
