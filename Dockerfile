# syntax=docker/dockerfile:1
# One image for every role: `swordsec-console --no-ui ...` (server), `swordsec-console worker` (RQ workers),
# `swordsec-console send FILE` (client). See docs/DEPLOY.md.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /build

# Dependencies first, from the project metadata alone: empty package stubs let `pip install .` resolve and
# install every dependency, then our stub is uninstalled. This layer is rebuilt only when pyproject.toml
# changes, so editing code never reinstalls grpcio, textual and the rest.
COPY pyproject.toml ./
RUN mkdir core console protobufs \
 && touch README.md core/__init__.py console/__init__.py protobufs/__init__.py \
 && pip install . \
 && pip uninstall -y swordsec-console \
 && rm -rf /build/*

# The code. --no-deps: everything it needs is already in the layer above.
COPY pyproject.toml README.md* ./
COPY protobufs ./protobufs
COPY core ./core
COPY console ./console
RUN pip install --no-deps . && rm -rf /build

# Never root: a bug in parsing untrusted JSON must not own the container. A fixed uid lets an operator
# give the bind-mounted drop/ and data/ folders to it (or run as their own uid: `user:` in compose).
RUN useradd --system --uid 10001 --user-group --home-dir /srv/swordsec --create-home swordsec \
 && mkdir -p /srv/swordsec/drop /srv/swordsec/data \
 && chown -R 10001:10001 /srv/swordsec
WORKDIR /srv/swordsec
USER 10001:10001

# gRPC and the Prometheus endpoint; both bind loopback unless told otherwise (see docs/DEPLOY.md).
EXPOSE 50051 9482
ENTRYPOINT ["swordsec-console"]
CMD ["--help"]
