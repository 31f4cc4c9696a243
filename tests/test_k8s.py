"""deploy/k8s/: every manifest valid against the Kubernetes API schema (kubernetes-validate, strict: an
unknown field is an error), and the set wired together: Secrets the pods name exist with the keys they read,
Services select pods that exist and name their ports, the commands are ours, the worker can be scaled, Redis
keeps its data on a volume, nothing runs as root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"  # the oldest release still maintained upstream when this was written


def documents() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in documents() if d["kind"] == kind}


def containers(workload: dict) -> list[dict]:
    return workload["spec"]["template"]["spec"]["containers"]


@pytest.mark.parametrize("doc", documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_manifest_is_valid_kubernetes(doc):
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_strict_validation_catches_a_typo():
    worker = by_kind("Deployment")["swordsec-worker"]
    broken = yaml.safe_load(yaml.safe_dump(worker))
    broken["spec"]["template"]["spec"]["containers"][0]["evn"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_set_is_complete():
    assert set(by_kind("StatefulSet")) == {"redis"}
    assert set(by_kind("Deployment")) == {"swordsec-server", "swordsec-worker"}
    assert set(by_kind("Service")) >= {"redis", "swordsec-server"}
    secret = by_kind("Secret")["swordsec"]
    # A template: the real values come from `kubectl create secret` (docs/DEPLOY.md), never from the repo.
    assert secret["stringData"] == {"redis-password": "", "token": ""}


def test_secrets_are_read_from_the_secret_that_exists():
    secret = by_kind("Secret")["swordsec"]
    keys = set(secret["stringData"])
    used = set()
    for workload in [*by_kind("Deployment").values(), *by_kind("StatefulSet").values()]:
        for container in containers(workload):
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "swordsec" and ref["key"] in keys, env
                    used.add(ref["key"])
                else:
                    assert "redis://:" not in env["value"] or "$(REDIS_PASSWORD)" in env["value"], \
                        f"{env['name']} holds a literal password"
    assert used == keys


def test_services_select_pods_and_ports_that_exist():
    workloads = [*by_kind("Deployment").values(), *by_kind("StatefulSet").values()]
    for name, service in by_kind("Service").items():
        selector = service["spec"]["selector"]
        matches = [w for w in workloads if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matches) == 1, f"Service {name} selects {len(matches)} workloads"
        ports = {p["name"] for c in containers(matches[0]) for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_redis_persists_to_its_own_volume():
    redis = by_kind("StatefulSet")["redis"]
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    (container,) = containers(redis)
    assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in container["volumeMounts"]
    script = container["args"][0]
    for setting in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction", "--dir /data"):
        assert setting in script
    assert "requirepass" in script and "$REDISCLI_AUTH" in script


def test_worker_deployment_scales_across_nodes():
    worker = by_kind("Deployment")["swordsec-worker"]
    spec = worker["spec"]["template"]["spec"]
    assert worker["spec"]["replicas"] >= 2
    (container,) = spec["containers"]
    assert container["args"][0] == "worker" and "ports" not in container and "volumeMounts" in container
    assert not any(v.get("persistentVolumeClaim") for v in spec.get("volumes", [])), "a worker must stay stateless"
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert "livenessProbe" in container


def test_nothing_runs_as_root():
    for workload in [*by_kind("Deployment").values(), *by_kind("StatefulSet").values()]:
        context = workload["spec"]["template"]["spec"]["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] != 0


def test_server_is_one_headless_watcher_with_our_arguments():
    from console.cli import build_parser

    server = by_kind("Deployment")["swordsec-server"]
    assert server["spec"]["replicas"] == 1 and server["spec"]["strategy"]["type"] == "Recreate"
    (container,) = containers(server)
    args = build_parser().parse_args(container["args"])
    assert args.no_ui and args.workers == 0
    probe = container["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["swordsec-console", "health"]


def test_our_commands_exist():
    for workload in by_kind("Deployment").values():
        for container in containers(workload):
            done = subprocess.run([sys.executable, "-m", "console.cli", *container["args"], "--help"],
                                  capture_output=True, text=True, timeout=60, cwd=ROOT)
            assert done.returncode == 0, done.stderr


def test_worker_probe_is_the_compose_healthcheck():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    in_compose = compose["services"]["worker"]["healthcheck"]["test"][1:]
    (container,) = containers(by_kind("Deployment")["swordsec-worker"])
    assert container["livenessProbe"]["exec"]["command"] == in_compose


@pytest.mark.parametrize("token", ["", "t" * 32])
def test_server_refuses_to_start_with_an_empty_token(token):
    """With SWORDSEC_INSECURE set, an empty token would mean an open plaintext server: the wrapper refuses."""
    (container,) = containers(by_kind("Deployment")["swordsec-server"])
    shell, flag, script, name = container["command"]
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "SWORDSEC_TOKEN": token}
    done = subprocess.run([shell, flag, script, name, "--version"], capture_output=True, text=True, timeout=60, env=env)
    if token:
        assert done.returncode == 0 and "swordsec-console" in done.stdout, done.stderr
    else:
        assert done.returncode == 1 and done.stderr.strip() == "swordsec-server: the token in Secret swordsec is empty"
