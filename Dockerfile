# One image for every role: `swordsec-console --no-ui ...` (server), `swordsec-console worker` (RQ workers),
# `swordsec-console send FILE` (client). See docs/DEPLOY.md.
#
# No `# syntax=` line and no BuildKit-only instruction: the file builds with the legacy builder and with
# BuildKit, and needs nothing from a registry but the base image.
#
# Reaching the package index: the build stages pass PIP_* build args to pip (PIP_INDEX_URL,
# PIP_EXTRA_INDEX_URL, PIP_TRUSTED_HOST) and EXTRA_CA_PEM, a PEM bundle appended to the image's own CA list for
# pip only (a TLS-inspecting proxy). They live in the build stages alone: the runtime stage below declares none,
# so neither its layers nor its history carry anything of the machine that built it (docs/DEPLOY.md).
ARG PYTHON_VERSION=3.11.14
FROM python:${PYTHON_VERSION}-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# Dependencies, from the lock alone: this layer is rebuilt only when deploy/requirements.lock changes, so
# editing code never reinstalls grpcio, textual and the rest. Wheels only: the image has no compiler.
FROM base AS deps
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG EXTRA_CA_PEM
COPY deploy/requirements.lock /tmp/requirements.lock
RUN if [ -n "$EXTRA_CA_PEM" ]; then \
      { cat /etc/ssl/certs/ca-certificates.crt; printf '%s\n' "$EXTRA_CA_PEM"; } > /tmp/ca.pem \
      && export PIP_CERT=/tmp/ca.pem; \
    fi \
 && python -m venv --without-pip /opt/venv \
 && pip --python /opt/venv/bin/python install --no-deps --only-binary=:all: -r /tmp/requirements.lock \
 && rm -f /tmp/ca.pem /tmp/requirements.lock

# Our code as a wheel, built with a pinned backend in a stage of its own.
FROM base AS wheel
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ARG EXTRA_CA_PEM
COPY deploy/build-requirements.lock /tmp/build-requirements.lock
RUN if [ -n "$EXTRA_CA_PEM" ]; then \
      { cat /etc/ssl/certs/ca-certificates.crt; printf '%s\n' "$EXTRA_CA_PEM"; } > /tmp/ca.pem \
      && export PIP_CERT=/tmp/ca.pem; \
    fi \
 && python -m venv /opt/build \
 && /opt/build/bin/pip install --only-binary=:all: -r /tmp/build-requirements.lock
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protobufs ./protobufs
COPY core ./core
COPY console ./console
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

FROM base
# Never root: a bug in parsing untrusted JSON must not own the container. A fixed uid lets an operator
# give the bind-mounted drop/ and data/ folders to it (or run as their own uid: `user:` in compose).
RUN useradd --system --uid 10001 --user-group --home-dir /srv/swordsec --create-home swordsec \
 && mkdir -p /srv/swordsec/drop /srv/swordsec/data \
 && chown -R 10001:10001 /srv/swordsec
COPY --from=deps /opt/venv /opt/venv
# --no-deps: everything it needs is in the layer above. The base image's pip installs into the venv, which
# itself carries no pip.
COPY --from=wheel /wheels /tmp/wheels
RUN pip --python /opt/venv/bin/python install --no-deps /tmp/wheels/*.whl && rm -rf /tmp/wheels
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /srv/swordsec
USER 10001:10001

# gRPC and the Prometheus endpoint; both bind loopback unless told otherwise (see docs/DEPLOY.md).
EXPOSE 50051 9482
ENTRYPOINT ["swordsec-console"]
CMD ["--help"]
