"""Every SALIENCY_* value the images, compose files and Kubernetes manifests set is a real service setting and
passes the service's own validation (a typo or a bad value here would only show up as a crash-looping container)."""

from __future__ import annotations

import re

import pytest
import yaml
from deploy_checks import DEPLOY, REPO, Dockerfile
from pydantic import ValidationError

from service.settings import Settings

PREFIX = "SALIENCY_"


def _settings_from(env: dict[str, str], where: str) -> Settings:
    fields = set(Settings.model_fields)
    values = {}
    for name, value in env.items():
        if name.startswith(PREFIX):
            field = name.removeprefix(PREFIX).lower()
            assert field in fields, f"{where}: {name} is not a service setting ({sorted(fields)})"
            values[field] = value
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise AssertionError(f"{where}: the service would refuse to start: {exc}") from exc


def _compose_env(*files: str) -> dict[str, str]:
    merged: dict[str, str] = {}
    for file in files:
        merged |= yaml.safe_load((REPO / file).read_text())["services"]["saliency"].get("environment", {})
    return {k: str(v) for k, v in merged.items()}


@pytest.mark.parametrize("kind", ["cpu", "gpu"])
def test_image_environment_is_valid(dockerfiles: dict[str, Dockerfile], kind: str) -> None:
    settings = _settings_from(dockerfiles[kind].env(), f"Dockerfile.{kind}")
    assert settings.host == "0.0.0.0" and settings.port == 8000 and settings.bundle == "default"
    if kind == "gpu":
        assert settings.provider_preference()[:2] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]])
def test_compose_environment_is_valid(dockerfiles: dict[str, Dockerfile], files: list[str]) -> None:
    kind = "gpu" if len(files) == 2 else "cpu"
    settings = _settings_from(dockerfiles[kind].env() | _compose_env(*files), " + ".join(files))
    assert settings.queue_size >= settings.max_batch_size


def test_kubernetes_environment_is_valid(dockerfiles: dict[str, Dockerfile]) -> None:
    deployment = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    _settings_from(dockerfiles["cpu"].env() | env, "deployment.yaml")


def test_kubernetes_service_links_cannot_clobber_the_port_setting() -> None:
    """Kubernetes injects <SERVICE>_PORT=tcp://ip:port for every Service; ours is named "saliency", which makes
    SALIENCY_PORT, the server's port setting. The pod must switch service links off."""
    service = yaml.safe_load((DEPLOY / "k8s" / "service.yaml").read_text())
    injected = f"{service['metadata']['name'].upper().replace('-', '_')}_PORT"
    pod = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())["spec"]["template"]["spec"]
    if injected.removeprefix(PREFIX).lower() in Settings.model_fields and injected.startswith(PREFIX):
        with pytest.raises(ValidationError):
            Settings(port="tcp://10.0.0.1:8000")
        assert pod.get("enableServiceLinks") is False


def test_queue_alert_threshold_is_half_the_default_queue() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"][0]["rules"]
    expr = next(rule["expr"] for rule in rules if rule.get("alert") == "SaliencyQueueSaturated")
    (threshold,) = re.findall(r"avg_over_time\(saliency_queue_depth\[5m\]\) > (\d+)", expr)
    assert int(threshold) == Settings.model_fields["queue_size"].default // 2
