"""docker-compose.yml (and the GPU override) parse, point at files that exist, and wire the stack together:
Prometheus scrapes the service's port, Grafana reads Prometheus and the dashboard folder."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from deploy_checks import DEPLOY, REPO, Dockerfile

COMPOSE = REPO / "docker-compose.yml"
COMPOSE_GPU = REPO / "docker-compose.gpu.yml"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _bind_mounts(service: dict) -> list[tuple[Path, str]]:
    """``(host path, container path)`` of the bind mounts (relative host paths), named volumes left out."""
    mounts = []
    for volume in service.get("volumes", []):
        host, container = volume.split(":")[:2]
        if host.startswith((".", "/")):
            mounts.append(((REPO / host).resolve(), container))
    return mounts


def test_compose_services_build_and_mount_files_that_exist() -> None:
    for path in (COMPOSE, COMPOSE_GPU):
        for name, service in _load(path)["services"].items():
            if "build" in service:
                context = REPO / service["build"]["context"]
                assert (context / service["build"]["dockerfile"]).is_file(), f"{path.name}: {name} Dockerfile"
            for host, _ in _bind_mounts(service):
                assert host.exists(), f"{path.name}: {name} mounts {host}, which does not exist"


def test_compose_images_are_pinned() -> None:
    for path in (COMPOSE, COMPOSE_GPU):
        for name, service in _load(path)["services"].items():
            image = service["image"]
            tag = image.rpartition(":")[2]
            assert ":" in image and tag != "latest" and any(c.isdigit() for c in tag), f"{name}: {image}"


def test_prometheus_scrapes_the_compose_service_on_its_exposed_port(dockerfiles: dict[str, Dockerfile]) -> None:
    compose = _load(COMPOSE)["services"]
    prometheus_mounts = dict((container, host) for host, container in _bind_mounts(compose["prometheus"]))
    config_path = prometheus_mounts["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_path.read_text())
    for rule_file in config["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in prometheus_mounts, f"rule file {rule_file} is not mounted"
    job = next(job for job in config["scrape_configs"] if job["job_name"] == "saliency")
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in compose and port == dockerfiles["cpu"].env()["SALIENCY_PORT"]
    assert f"{port}:{port}" in compose[host]["ports"]
    assert job["metrics_path"] == "/metrics"


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards() -> None:
    compose = _load(COMPOSE)["services"]
    mounts = dict((container, host) for host, container in _bind_mounts(compose["grafana"]))
    datasources = yaml.safe_load((mounts["/etc/grafana/provisioning/datasources"] / "prometheus.yml").read_text())
    (datasource,) = datasources["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and "9090:9090" in compose["prometheus"]["ports"]
    providers = yaml.safe_load((mounts["/etc/grafana/provisioning/dashboards"] / "saliency.yml").read_text())
    dashboards_dir = providers["providers"][0]["options"]["path"]
    assert mounts[dashboards_dir] == (DEPLOY / "grafana" / "dashboards").resolve()
    home = compose["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (mounts[dashboards_dir] / Path(home).name).is_file()


def test_dashboard_uses_the_provisioned_datasource(dashboard: dict) -> None:
    datasources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasources["datasources"][0]["uid"]
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert all(target["datasource"]["uid"] == uid for target in panel["targets"]), panel["title"]


def test_gpu_override_reserves_a_gpu_and_caches_engines(dockerfiles: dict[str, Dockerfile]) -> None:
    service = _load(COMPOSE_GPU)["services"]["saliency"]
    assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile.gpu"
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    cache = dockerfiles["gpu"].env()["ORT_TENSORRT_CACHE_PATH"]
    assert any(volume.split(":")[1] == cache for volume in service["volumes"])
    assert "trt-engine-cache" in _load(COMPOSE_GPU)["volumes"]


def _compose_cli() -> list[str] | None:
    """Docker Compose v2 (`docker compose`) if the client has the plugin, else v1 (`docker-compose`), else None."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return ["docker-compose"] if shutil.which("docker-compose") else None


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]])
def test_compose_config_validates(files: list[str]) -> None:
    """`docker compose config` resolves and validates the files without talking to a Docker engine."""
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    args = [arg for file in files for arg in ("-f", file)]
    result = subprocess.run([*cli, *args, "config"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == {"saliency", "prometheus", "grafana"}
    expected = "Dockerfile.gpu" if len(files) == 2 else "Dockerfile.cpu"
    assert resolved["services"]["saliency"]["build"]["dockerfile"].endswith(expected)
