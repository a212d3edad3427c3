"""Settings validation and ``python -m service`` refusing bad settings or bundles before listening."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.engine import choose_variant
from service.manifest import BundleError, Manifest, VariantSpec, load_manifest
from service.settings import Settings


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SALIENCY_PORT", "9001")
    monkeypatch.setenv("SALIENCY_API_KEYS", " a , b,")
    monkeypatch.setenv("SALIENCY_PROVIDERS", "cuda,cpu")
    monkeypatch.setenv("SALIENCY_MAX_BATCH_SIZE", "4")
    settings = Settings()
    assert settings.port == 9001 and settings.api_keys == ["a", "b"] and settings.max_batch_size == 4
    assert settings.provider_preference() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert settings.cors_origins == [] and settings.host == "127.0.0.1"
    assert Settings(providers="auto").provider_preference() == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("max_batch_size", -1, "max_batch_size"),
        ("port", 70000, "port"),
        ("variant", "int4", "unknown variant"),
        ("providers", "tpu", "unknown provider"),
        ("queue_size", 2, "queue_size"),
        ("max_delay_ms", -5, "max_delay_ms"),
        ("max_upload_bytes", 0, "max_upload_bytes"),
        ("log_level", "LOUD", "log_level"),
    ],
)
def test_nonsense_is_refused(field: str, value: object, says: str) -> None:
    with pytest.raises(ValidationError, match=says):
        Settings(**{field: value})


def test_unknown_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError):
        Settings(max_batch=3)  # type: ignore[call-arg]


def test_variant_choice(bundle_dir: Path) -> None:
    manifest = load_manifest(bundle_dir)
    assert choose_variant(manifest, "fp32") == "fp32"
    assert choose_variant(manifest, "auto") == ("int8" if "int8" in manifest.variants else "fp32")
    with_int8 = Manifest.model_validate(
        manifest.model_dump()
        | {"variants": {**manifest.variants, "int8": VariantSpec(file="model.onnx", precision="int8")}}
    )
    assert choose_variant(with_int8, "auto") == "int8"
    only_fp32 = Manifest.model_validate(manifest.model_dump() | {"variants": {"fp32": manifest.variants["fp32"]}})
    with pytest.raises(BundleError, match="int8"):
        choose_variant(only_fp32, "int8")


def run_service(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def test_missing_bundle_exits_with_a_clear_message(tmp_path: Path) -> None:
    result = run_service("--bundle", str(tmp_path / "nothing"), "--port", "1")
    assert result.returncode == 2
    assert "cannot load the models" in result.stderr and "no bundle" in result.stderr


def test_tampered_bundle_exits_with_a_clear_message(bundle_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    model = copy / manifest["variants"]["fp32"]["file"]
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    result = run_service("--bundle", str(copy))
    assert result.returncode == 2
    assert "sha256" in result.stderr and "tampered" in result.stderr


def test_invalid_settings_exit_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    result = run_service(env={**os.environ, "SALIENCY_MAX_BATCH_SIZE": "-3"})
    assert result.returncode == 2 and "invalid settings" in result.stderr and "max_batch_size" in result.stderr


def test_service_imports_no_torch() -> None:
    code = (
        "import sys, service.app, service.__main__, service.client, service.loadtest; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'models', 'training', 'export')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_missing_model_beside_the_default_refuses_start(bundle_dir: Path, tmp_path: Path) -> None:
    result = run_service("--bundle", str(bundle_dir), "--models", f"{bundle_dir},{tmp_path / 'gone'}", "--port", "1")
    assert result.returncode == 2
    assert "cannot load the models" in result.stderr and "gone" in result.stderr
