"""deploy/k8s/: every manifest passes Kubernetes' own schemas (offline, kubernetes-validate ships them),
and the pods it describes run commands and settings the image really has."""

from __future__ import annotations

import re

import pytest

from server_harness import REPO

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed (in the test extras)")
yaml = pytest.importorskip("yaml")

KUBERNETES_VERSION = "1.30"
MANIFESTS = sorted((REPO / "deploy" / "k8s").glob("*.yaml"))


def documents() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def of_kind(kind: str) -> list[dict]:
    return [doc for doc in documents() if doc["kind"] == kind]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda path: path.name)
def test_manifest_passes_the_schema_check(path):
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_set_is_complete():
    kinds = sorted(doc["kind"] for doc in documents())
    assert kinds == ["ConfigMap", "Deployment", "Deployment", "HorizontalPodAutoscaler", "Secret", "Service"]


def test_pods_run_the_images_commands_with_valid_settings():
    from clients.cli import build_parser
    from clients.server_commands import server_arguments
    from server.settings import Settings

    env = {**of_kind("ConfigMap")[0]["data"], **of_kind("Secret")[0]["stringData"]}
    assert all(name.startswith("AWS_") or name.removeprefix("OPTISERVE_").lower() in Settings.model_fields for name in env), env
    settings = Settings(**{name.removeprefix("OPTISERVE_").lower(): value for name, value in env.items() if name.startswith("OPTISERVE_")})
    assert settings.shared and settings.auth
    entrypoint = re.search(r'^ENTRYPOINT \["(\w+)"\]', (REPO / "Dockerfile").read_text(), re.MULTILINE).group(1)
    commands = {}
    for deployment in of_kind("Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"].split(":")[0] == "optiserve" and entrypoint == "optiserve"
        args = build_parser().parse_args(container["args"])  # the image's CLI accepts them
        flags = server_arguments(args.command, args.server_flags)
        commands[deployment["metadata"]["name"]] = (args.command, flags.jobs)
    assert commands == {"optiserve-api": ("serve", False), "optiserve-worker": ("worker", None)}


def test_service_and_autoscaler_point_at_the_api_replicas():
    (api,) = [doc for doc in of_kind("Deployment") if doc["metadata"]["name"] == "optiserve-api"]
    pod = api["spec"]["template"]
    (service,) = of_kind("Service")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    ports = {port["name"] for port in pod["spec"]["containers"][0]["ports"]}
    assert all(port["targetPort"] in ports for port in service["spec"]["ports"])
    (autoscaler,) = of_kind("HorizontalPodAutoscaler")
    assert autoscaler["spec"]["scaleTargetRef"]["name"] == "optiserve-api"
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    probes = {probe: pod["spec"]["containers"][0][probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe")}
    assert probes == {"readinessProbe": "/ready", "livenessProbe": "/health"}


def test_every_pod_states_the_dev_shm_size_it_needs():
    # A container's /dev/shm is 64 MiB unless the pod says otherwise; large tensors cross it.
    for deployment in of_kind("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        assert volume["emptyDir"]["medium"] == "Memory" and volume["emptyDir"]["sizeLimit"], deployment["metadata"]["name"]
