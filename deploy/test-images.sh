#!/usr/bin/env bash
# Stand-ins for the images our Dockerfile and docker-compose.yml name, for a machine that cannot pull from
# an image registry (CI here, an air-gapped host): built offline from Debian packages with mmdebstrap and
# `docker import`, tagged with the very names the files use, so `docker build .` and `docker compose up` run
# the real files unchanged. On a machine that can pull, none of this is needed (docs/DEPLOY.md).
#
#   deploy/test-images.sh          build the stand-ins that are missing (a tag that exists is left alone,
#                                  whether a stand-in or the real image)
#   deploy/test-images.sh --force  rebuild every stand-in
#
# Needs root (mmdebstrap), docker, and Debian's mirror (apt sources of this machine). The rq-dashboard
# stand-in installs rq-dashboard from the package index through deploy/build.sh's settings.
set -euo pipefail
cd "$(dirname "$0")/.."
force=${1:-}
SUITE=${SUITE:-bookworm}
BASE=swordsec-standin/debian:$SUITE
LABEL=org.swordsec.standin=1

python_version=$(sed -n 's/^ARG PYTHON_VERSION=//p' Dockerfile)
python_image=$(sed -n 's/^FROM \(python:[^ ]*\).*/\1/p' Dockerfile | head -n 1)
python_image=${python_image//\$\{PYTHON_VERSION\}/$python_version}
redis_image=$(sed -n 's/^    image: \(redis:.*\)$/\1/p' docker-compose.yml)
dashboard_image=$(sed -n 's/^    image: \(.*rq-dashboard.*\)$/\1/p' docker-compose.yml)
dashboard_version=${dashboard_image##*:}
for name in python_image redis_image dashboard_image; do
  [ -n "${!name}" ] || { echo "test-images.sh: cannot find $name in Dockerfile/docker-compose.yml" >&2; exit 2; }
done

have() { [ "$force" != --force ] && docker image inspect "$1" >/dev/null 2>&1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if ! have "$BASE"; then
  # One Debian rootfs for the three: Python with pip and venv, Redis, CA certificates.
  mmdebstrap --quiet --variant=minbase \
    --include=python3,python3-pip,python3-venv,ca-certificates,redis-server \
    "$SUITE" "$work/rootfs.tar"
  docker import --change "LABEL $LABEL" --change 'ENV LANG=C.UTF-8' "$work/rootfs.tar" "$BASE" >/dev/null
  rm -f "$work/rootfs.tar"
fi

if ! have "$python_image"; then
  # Like the official image: `python` and `pip` on PATH, pip allowed to install (Debian marks its Python
  # externally managed; the official image's is not).
  cat > "$work/Dockerfile.python" <<DOCKERFILE
FROM $BASE
RUN ln -sf /usr/bin/python3 /usr/local/bin/python && ln -sf /usr/bin/pip3 /usr/local/bin/pip
ENV PIP_BREAK_SYSTEM_PACKAGES=1
LABEL $LABEL
CMD ["python3"]
DOCKERFILE
  docker build -q -t "$python_image" -f "$work/Dockerfile.python" "$work" >/dev/null
fi

if ! have "$redis_image"; then
  # Like the official entry point: option arguments get `redis-server` prepended; as root it owns /data and
  # drops to the redis user.
  cat > "$work/redis-entrypoint.sh" <<'SH'
#!/bin/sh
set -e
case "$1" in -*|*.conf) set -- redis-server "$@" ;; esac
if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then
  chown -R redis:redis /data
  exec setpriv --reuid=redis --regid=redis --init-groups "$@"
fi
exec "$@"
SH
  chmod +x "$work/redis-entrypoint.sh"
  cat > "$work/Dockerfile.redis" <<DOCKERFILE
FROM $BASE
RUN mkdir -p /data && chown redis:redis /data
COPY redis-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
VOLUME /data
EXPOSE 6379
LABEL $LABEL
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
DOCKERFILE
  docker build -q -t "$redis_image" -f "$work/Dockerfile.redis" "$work" >/dev/null
fi

if ! have "$dashboard_image"; then
  # Upstream's image: pip install rq-dashboard, entry point `python3 -m rq_dashboard`.
  mkdir -p "$work/dashboard"
  cat > "$work/dashboard/Dockerfile" <<DOCKERFILE
FROM $python_image
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG EXTRA_CA_PEM
RUN if [ -n "\$EXTRA_CA_PEM" ]; then \
      { cat /etc/ssl/certs/ca-certificates.crt; printf '%s\n' "\$EXTRA_CA_PEM"; } > /tmp/ca.pem \
      && export PIP_CERT=/tmp/ca.pem; \
    fi \
 && pip install --no-cache-dir --only-binary=:all: rq-dashboard==$dashboard_version six \
 && rm -f /tmp/ca.pem
EXPOSE 9181
LABEL $LABEL
ENTRYPOINT ["python3", "-m", "rq_dashboard"]
DOCKERFILE
  CONTEXT="$work/dashboard" IMAGE="$dashboard_image" deploy/build.sh -q >/dev/null
fi
echo "stand-ins ready: $python_image $redis_image $dashboard_image"
