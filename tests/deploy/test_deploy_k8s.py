"""Kubernetes manifests parse and fit together: selectors match the pods, probes hit the service's health routes on
the container's port, the pod runs as the image's non-root user, autoscaling and monitoring point at the right
objects, and the PrometheusRule carries exactly the alert rules Prometheus is tested with."""

from __future__ import annotations

import pytest
import yaml
from deploy_checks import DEPLOY, Dockerfile

K8S = DEPLOY / "k8s"


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict]:
    """Every object in deploy/k8s by kind (one object of each kind)."""
    objects: dict[str, dict] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            assert document["kind"] not in objects, f"two {document['kind']} objects"
            objects[document["kind"]] = document
    return objects


def test_expected_objects_exist_in_one_namespace(manifests: dict[str, dict]) -> None:
    expected = {
        "Namespace",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "PrometheusRule",
        "Kustomization",
    }
    assert expected == set(manifests)
    namespace = manifests["Namespace"]["metadata"]["name"]
    for kind, obj in manifests.items():
        if kind not in {"Namespace", "Kustomization"}:
            assert obj["metadata"]["namespace"] == namespace, kind
    assert manifests["Kustomization"]["namespace"] == namespace


def test_kustomization_lists_files_that_exist(manifests: dict[str, dict]) -> None:
    resources = manifests["Kustomization"]["resources"]
    assert resources[0] == "namespace.yaml"
    for resource in resources:
        assert (K8S / resource).is_file(), resource
    image = manifests["Kustomization"]["images"][0]["name"]
    container = manifests["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].split(":")[0] == image


def test_deployment_selects_its_pods_and_probes_the_health_routes(manifests: dict[str, dict]) -> None:
    deployment = manifests["Deployment"]["spec"]
    pod_labels = deployment["template"]["metadata"]["labels"]
    assert deployment["selector"]["matchLabels"].items() <= pod_labels.items()
    (container,) = deployment["template"]["spec"]["containers"]
    port_names = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in port_names, probe
    annotations = deployment["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) in port_names.values()


def test_deployment_resources_and_threads_agree(manifests: dict[str, dict]) -> None:
    (container,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert {"cpu", "memory"} <= requests.keys() and {"cpu", "memory"} <= limits.keys()
    env = {item["name"]: item["value"] for item in container["env"]}
    # ONNX Runtime threads beyond the CPU quota only add throttling.
    assert int(env["SALIENCY_INTRA_OP_THREADS"]) <= int(limits["cpu"])
    assert all(name.startswith("SALIENCY_") for name in env)


def test_pod_runs_as_the_images_non_root_user(manifests: dict[str, dict], dockerfiles: dict[str, Dockerfile]) -> None:
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    image_uid = next(a for k, a in dockerfiles["cpu"].final_stage() if k == "ARG" and a.startswith("APP_UID="))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(image_uid.split("=")[1]) != 0
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert "/tmp" in mounts, "a read-only root filesystem needs a writable /tmp"


def test_service_and_monitor_reach_the_pods(manifests: dict[str, dict]) -> None:
    pod_labels = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    (container,) = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    service = manifests["Service"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}
    monitor = manifests["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] == port["name"] and monitor["endpoints"][0]["path"] == "/metrics"
    assert service["metadata"]["namespace"] in monitor["namespaceSelector"]["matchNames"]


def test_autoscaler_and_budget_target_the_deployment(manifests: dict[str, dict]) -> None:
    deployment = manifests["Deployment"]
    hpa = manifests["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 1 <= hpa["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["maxReplicas"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "cpu" in container["resources"]["requests"], "CPU utilization targets need a CPU request"
    pdb = manifests["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert pdb["minAvailable"] < hpa["minReplicas"]


def test_prometheus_rule_matches_the_tested_alert_rules(manifests: dict[str, dict]) -> None:
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    assert manifests["PrometheusRule"]["spec"]["groups"] == alerts["groups"]
