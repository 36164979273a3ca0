"""The deployment descriptions (deploy/compose.yaml, deploy/k8s/, deploy/Dockerfile) hold together:
they parse and match the Compose and Kubernetes schemas, every command is a real `mediagate`
command with real options, every variable is a setting the code reads, every SLA pool has a
worker, and every name one object refers to exists.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from typing import Any

import pytest
import typer
import yaml

from tests.support import ROOT

DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
# What production refuses to start without, or cannot work without.
REQUIRED_ENV = {"MEDIAGATE_ENV", "MEDIAGATE_DATABASE_URL", "MEDIAGATE_BROKER_URL", "MEDIAGATE_REDIS_URL",
                "MEDIAGATE_SECRET_KEY", "MEDIAGATE_MASTER_KEY", "MEDIAGATE_ADMIN_KEY",
                "MEDIAGATE_STRIPE_API_KEY", "MEDIAGATE_STRIPE_WEBHOOK_SECRET", "MEDIAGATE_PUBLIC_URL"}
KUBERNETES_VERSION = "1.33"


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def k8s_objects() -> list[dict[str, Any]]:
    return [doc for name in kustomization()["resources"]
            for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


def secret_example() -> dict[str, Any]:
    return yaml.safe_load((K8S / "secret.example.yaml").read_text())


def of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in k8s_objects() if o["kind"] == kind}


def pod_specs() -> dict[str, dict[str, Any]]:
    """Every pod template, by the name of the object that owns it."""
    out = {}
    for o in k8s_objects():
        if o["kind"] in ("Deployment", "Job"):
            out[o["metadata"]["name"]] = o["spec"]["template"]["spec"]
    return out


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return spec.get("initContainers", []) + spec["containers"]


def cli_invocations() -> list[tuple[str, list[str]]]:
    """(where, argv after `mediagate`) of every mediagate command the files run."""
    found = []
    for name, service in compose()["services"].items():
        found.append((f"compose {name}", list(service["command"])))
    for owner, spec in pod_specs().items():
        for c in containers(spec):
            if "args" in c:  # the image's entrypoint is `mediagate`
                found.append((f"k8s {owner}/{c['name']}", list(c["args"])))
            for script in c.get("command", [])[2:] if c.get("command", [])[:2] == ["sh", "-c"] else []:
                for m in re.finditer(r"mediagate ([^;&|]+)", script):
                    found.append((f"k8s {owner}/{c['name']}", m.group(1).split()))
    return found


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def settings_env_names() -> set[str]:
    from billing.settings import BillingSettings
    from gateway.config import GatewaySettings
    from kit.settings import Settings
    from moderation.config import ModerationSettings

    names = set()
    for cls in (Settings, GatewaySettings, BillingSettings, ModerationSettings):
        prefix = cls.model_config["env_prefix"]
        names |= {f"{prefix}{field}".upper() for field in cls.model_fields}
    return names


def compose_env() -> dict[str, str]:
    env = compose()["x-environment"]
    return {k: str(v) for k, v in env.items()}


def k8s_env() -> dict[str, str]:
    config = of_kind("ConfigMap")["mediagate-config"]["data"]
    return {**config, **secret_example()["stringData"]}


def operator_value(value: str) -> str:
    """A compose value as the operator's environment makes it: `${X:-default}` is the default."""
    def fill(m: re.Match[str]) -> str:
        return m.group(2) if m.group(1) == ":-" else "set-by-the-operator"

    return re.sub(r"\$\{\w+(?:(:[-?])([^}]*))?\}", fill, value)


# -- parsing and schemas -------------------------------------------------------------------


def test_compose_file_matches_the_compose_specification() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    pytest.importorskip("check_jsonschema")
    from importlib import resources

    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor")
                        .joinpath("compose-spec.json").read_text())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(compose())]
    assert errors == []


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    validate = pytest.importorskip("kubernetes_validate")
    objects = k8s_objects() + [secret_example()]
    assert len(objects) >= 15
    for obj in objects:
        validate.validate(obj, KUBERNETES_VERSION, strict=True)  # unknown fields are errors too


def test_kustomization_lists_every_manifest_and_renders() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == on_disk
    if shutil.which("kubectl") is None:
        return  # kustomize's own rendering is checked where kubectl is installed
    rendered = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert len(docs) == len(k8s_objects())
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"mediagate"}
    images = {c["image"] for d in docs if d["kind"] in ("Deployment", "Job")
              for c in containers(d["spec"]["template"]["spec"])}
    assert images == {"mediagate/mediagate:0.1.0", "mediagate/mediagate-worker:0.1.0"}


# -- commands and settings -----------------------------------------------------------------


def test_every_command_is_a_mediagate_command_with_real_options() -> None:
    from gateway.cli import app

    group = typer.main.get_command(app)
    invocations = cli_invocations()
    assert len(invocations) >= 12
    for where, argv in invocations:
        command = group.commands.get(argv[0])
        assert command is not None, f"{where}: no command `mediagate {argv[0]}`"
        try:  # parses and type-checks the options without running anything
            command.make_context(argv[0], argv[1:])
        except typer.exceptions.TyperException as exc:
            pytest.fail(f"{where}: `mediagate {' '.join(argv)}`: {exc.format_message()}")


def test_every_variable_is_a_setting_and_production_has_what_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    known = settings_env_names()
    for where, env in (("compose", compose_env()), ("k8s", k8s_env())):
        unknown = sorted(set(env) - known)
        assert unknown == [], f"{where} sets variables no setting reads: {unknown}"
        assert REQUIRED_ENV <= set(env), f"{where} misses {sorted(REQUIRED_ENV - set(env))}"
        assert env["MEDIAGATE_ENV"] == "production"
        # The values parse as the settings' types, and production accepts them.
        from billing.settings import BillingSettings
        from gateway.config import GatewaySettings
        from kit.settings import Settings
        from moderation.config import ModerationSettings

        for name, value in env.items():
            monkeypatch.setenv(name, operator_value(value))
        for cls in (Settings, GatewaySettings, BillingSettings, ModerationSettings):
            cls(_env_file=None)
        assert not Settings(_env_file=None).db_url.startswith("sqlite")  # never the embedded database
        for name in env:
            monkeypatch.delenv(name)


def test_every_process_gets_the_configuration_and_the_secrets() -> None:
    secret = secret_example()["metadata"]["name"]
    configs = set(of_kind("ConfigMap"))
    for owner, spec in pod_specs().items():
        for c in containers(spec):
            refs = c.get("envFrom", [])
            assert {r["secretRef"]["name"] for r in refs if "secretRef" in r} == {secret}, owner
            assert {r["configMapRef"]["name"] for r in refs if "configMapRef" in r} <= configs, owner
            assert any(r.get("configMapRef", {}).get("name") == "mediagate-config" for r in refs), owner
    for name, service in compose()["services"].items():
        assert set(service["environment"]) == set(compose_env()), name


# -- pools, workers and names --------------------------------------------------------------


def test_every_pool_has_a_gpu_worker_in_compose_and_kubernetes_and_the_autoscaler_scales_them() -> None:
    services = compose()["services"]
    compose_pools = {}
    for name, service in services.items():
        if service["command"][0] == "worker":
            compose_pools[option(service["command"], "--pools")] = name
            devices = service["deploy"]["resources"]["reservations"]["devices"]
            assert any("gpu" in d["capabilities"] for d in devices), name
            assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert set(compose_pools) >= {"shared"}
    assert all(name == f"worker-{pool}" for pool, name in compose_pools.items())

    deployments = of_kind("Deployment")
    k8s_pools = {}
    for name, d in deployments.items():
        worker = [c for c in d["spec"]["template"]["spec"]["containers"] if c.get("args", [""])[0] == "worker"]
        if worker:
            pool = option(worker[0]["args"], "--pools")
            k8s_pools[pool] = name
            assert name == f"mediagate-worker-{pool}"
            assert d["spec"]["template"]["metadata"]["labels"]["mediagate.dev/pool"] == pool
            for kind in ("requests", "limits"):
                assert worker[0]["resources"][kind]["nvidia.com/gpu"] >= 1, name
    assert set(k8s_pools) == set(compose_pools)

    # The autoscaler, in both, scales exactly the pools that have workers.
    autoscaler = deployments["mediagate-autoscaler"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert set(option(autoscaler, "--pools").split(",")) == set(k8s_pools)
    template = option(autoscaler, "--kubernetes")
    assert {template.format(pool=p) for p in k8s_pools} == set(k8s_pools.values())
    assert set(option(services["autoscale"]["command"], "--pools").split(",")) == set(compose_pools)
    role = of_kind("Role")["mediagate-autoscaler"]["rules"]
    assert {n for rule in role for n in rule["resourceNames"]} == set(k8s_pools.values())
    assert all(rule["resources"] == ["deployments/scale"] for rule in role)
    # It plans with the concurrency the workers really run.
    worker_concurrency = {option(s["command"], "--concurrency") for s in services.values() if s["command"][0] == "worker"}
    worker_concurrency |= {option(c["args"], "--concurrency") for d in deployments.values()
                           for c in d["spec"]["template"]["spec"]["containers"] if c.get("args", [""])[0] == "worker"}
    assert worker_concurrency == {option(autoscaler, "--concurrency"), option(services["autoscale"]["command"], "--concurrency")}
    assert worker_concurrency == {of_kind("ConfigMap")["mediagate-config"]["data"]["MEDIAGATE_WORKER_CONCURRENCY"]}
    policy = json.loads(of_kind("ConfigMap")["mediagate-autoscale"]["data"]["pools.json"])
    assert set(policy) == set(k8s_pools)
    from gateway.autoscale import PoolPolicy, policies_from

    built = policies_from(sorted(policy), PoolPolicy(pool="*"), policy, {})
    assert all(p.min_replicas <= p.max_replicas for p in built)


def test_migrations_run_once_before_everything_else() -> None:
    job = of_kind("Job")["mediagate-migrate"]["spec"]["template"]["spec"]
    assert job["containers"][0]["args"] == ["migrate"]
    for name, spec in pod_specs().items():
        if name != "mediagate-migrate":
            waits = [c for c in spec.get("initContainers", []) if "mediagate migrate --check" in " ".join(c["command"])]
            assert waits, f"{name} starts without waiting for the schema"
    services = compose()["services"]
    assert services["migrate"]["command"] == ["migrate"] and services["migrate"]["restart"] == "no"
    for name, service in services.items():
        if name != "migrate":
            assert service["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
    # One beat: two would send every periodic task twice.
    beat = of_kind("Deployment")["mediagate-beat"]["spec"]
    assert beat["replicas"] == 1 and beat["strategy"]["type"] == "Recreate"


def test_every_name_one_object_refers_to_exists() -> None:
    deployments, services = of_kind("Deployment"), of_kind("Service")
    claims, accounts = set(of_kind("PersistentVolumeClaim")), set(of_kind("ServiceAccount"))
    configs = set(of_kind("ConfigMap"))
    for name, d in deployments.items():
        selector = d["spec"]["selector"]["matchLabels"]
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), name
    for name, spec in pod_specs().items():
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, name
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configs, name
        mounted = {v["name"] for v in spec.get("volumes", [])}
        for c in containers(spec):
            assert {m["name"] for m in c.get("volumeMounts", [])} <= mounted, name
        if "serviceAccountName" in spec:
            assert spec["serviceAccountName"] in accounts, name
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments.values()]
    for name, service in services.items():
        if service["spec"].get("type") == "ExternalName":
            continue
        assert any(service["spec"]["selector"].items() <= labels.items() for labels in pod_labels), name
    for hpa in of_kind("HorizontalPodAutoscaler").values():
        assert hpa["spec"]["scaleTargetRef"]["name"] in deployments
    for binding in of_kind("RoleBinding").values():
        assert binding["roleRef"]["name"] in of_kind("Role")
        assert {s["name"] for s in binding["subjects"]} <= accounts
    # The database and Redis URLs of the example secret name the external services.
    hosts = {re.search(r"@([^:/]+)", v).group(1) for k, v in secret_example()["stringData"].items()
             if k.endswith("_URL")}
    assert hosts <= set(services)


def test_the_image_builds_what_compose_and_kubernetes_run() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", dockerfile, re.M))
    for name, service in compose()["services"].items():
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()
        assert build["target"] in targets, name
        assert ("worker" in service["image"]) == (build["target"] == "worker"), name
    copied = re.findall(r"^COPY (\S+) ", dockerfile, re.M) + re.findall(r"^COPY ((?:\S+ )+)\./$", dockerfile, re.M)
    paths = {p for group in copied for p in group.split()}
    allowed = {line[1:] for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert paths and paths <= allowed
    assert all((ROOT / p).exists() for p in paths)
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert {p.rstrip("*") for p in packages} <= paths  # every package the distribution ships is copied
    # The sandboxes' Debian packages are in the image.
    assert "bubblewrap" in dockerfile and "libseccomp2" in dockerfile
    for name, d in of_kind("Deployment").items():
        for c in containers(d["spec"]["template"]["spec"]):
            worker = c.get("args", [""])[0] == "worker" or "worker" in name
            assert c["image"] == ("mediagate/mediagate-worker" if worker else "mediagate/mediagate"), name
