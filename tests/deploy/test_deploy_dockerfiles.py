"""The Dockerfiles would build: every COPY source exists and survives .dockerignore, bases are pinned, the image runs
as a non-root user with a /readyz health check, and the CPU image installs no torch. (No Docker engine here.)"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys

import pytest
from deploy_checks import DOCKERFILES, REPO, Dockerfile

sys.path.insert(0, str(REPO / "deploy" / "docker"))
from serve_requirements import requirement_name, serve_requirements


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax (Go filepath.Match plus ``**``) as a regex over slash-separated paths."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(rules: list[str], path: str) -> bool:
    """Whether Docker leaves ``path`` out of the build context: the last rule matching it or a parent wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for rule in rules:
        negated = rule.startswith("!")
        regex = _dockerignore_regex(rule.lstrip("!").strip("/"))
        if any(regex.match(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def _dockerignore_rules() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _copy_sources(dockerfile: Dockerfile) -> list[str]:
    """Sources of COPY instructions that read the build context (not ``--from=`` another stage)."""
    sources = []
    for args in dockerfile.all("COPY"):
        tokens = shlex.split(args)
        if any(token.startswith("--from") for token in tokens):
            continue
        paths = [token for token in tokens if not token.startswith("--")]
        sources.extend(paths[:-1])
    return sources


def _files_of(source: str) -> list[str]:
    path = REPO / source
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    return [p.relative_to(REPO).as_posix() for p in files]


def test_dockerignore_matcher_follows_docker_semantics() -> None:
    rules = ["*", "!service/", "**/__pycache__", "!keep.txt", "docs/**/*.md"]
    assert dockerignore_excludes(rules, ".git/config")
    assert dockerignore_excludes(rules, "runs/picanet/best.pt")
    assert not dockerignore_excludes(rules, "service/app.py")
    assert dockerignore_excludes(rules, "service/__pycache__/app.cpython-311.pyc")
    assert not dockerignore_excludes(rules, "keep.txt")
    assert dockerignore_excludes(["docs/**/*.md"], "docs/a/b/c.md")
    assert not dockerignore_excludes(["docs/**/*.md"], "docs/a/b/c.txt")


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_copy_sources_exist_and_reach_the_build_context(dockerfiles: dict[str, Dockerfile], kind: str) -> None:
    rules = _dockerignore_rules()
    sources = _copy_sources(dockerfiles[kind])
    assert {"pyproject.toml", "service/", "bundles/"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), f"{kind}: COPY source {source} does not exist in the repository"
        files = _files_of(source)
        assert files, f"{kind}: COPY source {source} is empty"
        excluded = [f for f in files if dockerignore_excludes(rules, f)]
        assert not excluded, f"{kind}: .dockerignore drops {excluded[:3]} that COPY {source} needs"


def test_dockerignore_keeps_secrets_weights_and_data_out() -> None:
    rules = _dockerignore_rules()
    for path in [
        ".git/HEAD",
        ".venv/bin/python",
        "runs/picanet_lite_cpu/best.pt",
        "tests/deploy/conftest.py",
        "training/train.py",
        "models/picanet.py",
        "export/__init__.py",
        ".env",
        "service/__pycache__/x.pyc",
    ]:
        assert dockerignore_excludes(rules, path), f"{path} would be sent to the Docker daemon"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_base_images_are_pinned_and_stages_resolve(dockerfiles: dict[str, Dockerfile], kind: str) -> None:
    dockerfile = dockerfiles[kind]
    stages: set[str] = set()
    for args in dockerfile.all("FROM"):
        tokens = args.split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: dockerfile.global_args[m.group(1)], tokens[0])
        if image not in stages:
            tag = image.rpartition(":")[2]
            assert re.search(r"\d+\.\d+", tag) and "latest" not in tag, f"{kind}: base {image} is not pinned"
        if len(tokens) == 3 and tokens[1].upper() == "AS":
            stages.add(tokens[2])
    assert {"build", "runtime"} <= stages, f"{kind}: expected a multi-stage build, got stages {stages}"
    assert dockerfile.final_stage()[0][1].endswith("AS runtime")
    for args in dockerfile.all("COPY"):
        source_stage = re.search(r"--from=(\S+)", args)
        if source_stage:
            assert source_stage.group(1) in stages, f"{kind}: COPY --from an unknown stage: {args}"


@pytest.mark.parametrize("kind", sorted(DOCKERFILES))
def test_runtime_is_non_root_exposes_8000_and_checks_readyz(dockerfiles: dict[str, Dockerfile], kind: str) -> None:
    dockerfile = dockerfiles[kind]
    runtime = dockerfile.final_stage()
    users = [args for key, args in runtime if key == "USER"]
    uid_arg = next(args for key, args in runtime if key == "ARG" and args.startswith("APP_UID="))
    assert users == ["${APP_UID}:${APP_UID}"] and int(uid_arg.split("=")[1]) >= 1000
    assert [args for key, args in runtime if key == "EXPOSE"] == ["8000"]
    env = dockerfile.env()
    assert env["SALIENCY_HOST"] == "0.0.0.0" and env["SALIENCY_PORT"] == "8000" and env["SALIENCY_BUNDLE"] == "default"
    health = dockerfile.last("HEALTHCHECK")
    command = json.loads(health.split(" CMD ", 1)[1])
    assert command[:2] == ["python", "-c"] and "/readyz" in command[2]
    compile(command[2], "HEALTHCHECK", "exec")
    assert json.loads(dockerfile.last("CMD")) == ["python", "-m", "service"]


def test_gpu_image_has_tensorrt_libraries_and_an_engine_cache_volume(dockerfiles: dict[str, Dockerfile]) -> None:
    gpu = dockerfiles["gpu"]
    assert "cudnn" in gpu.global_args["CUDA_IMAGE"] and "runtime" in gpu.global_args["CUDA_IMAGE"]
    env = gpu.env()
    cache = env["ORT_TENSORRT_CACHE_PATH"]
    assert json.loads(gpu.last("VOLUME")) == [cache]
    assert env["ORT_TENSORRT_ENGINE_CACHE_ENABLE"] == "1"
    assert "tensorrt_libs" in env["LD_LIBRARY_PATH"]
    assert env["SALIENCY_PROVIDERS"].split(",")[0] == "tensorrt"
    installs = " ".join(gpu.all("RUN"))
    assert re.search(r'"tensorrt-cu13-libs==\$\{TENSORRT_LIBS_VERSION\}"', installs)
    assert re.fullmatch(r"TENSORRT_LIBS_VERSION=10(\.\d+)+", next(a for a in gpu.all("ARG") if "TENSORRT" in a))
    assert "--gpu" in installs


def test_cpu_requirements_come_from_pyproject_without_torch() -> None:
    requirements = serve_requirements(REPO / "pyproject.toml")
    names = [requirement_name(r) for r in requirements]
    assert "onnxruntime" in names and "fastapi" in names and "prometheus-client" in names
    assert not {"torch", "onnx", "onnxruntime-gpu", "opencv-contrib-python-headless"} & set(names)
    assert len(names) == len(set(names))


def test_gpu_requirements_swap_onnxruntime_for_the_gpu_wheel() -> None:
    cpu = serve_requirements(REPO / "pyproject.toml")
    gpu = serve_requirements(REPO / "pyproject.toml", gpu=True)
    names = [requirement_name(r) for r in gpu]
    assert "onnxruntime" not in names and "onnxruntime-gpu" in names
    assert {r for r in cpu if requirement_name(r) != "onnxruntime"} <= set(gpu)


def test_requirement_name_normalizes() -> None:
    assert requirement_name("uvicorn[standard]==0.54.0") == "uvicorn"
    assert requirement_name("Python_Multipart>=0.0.9") == "python-multipart"
    with pytest.raises(ValueError):
        requirement_name("==1.0")


def test_requirements_cli_prints_one_requirement_per_line() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(REPO / "deploy" / "docker" / "serve_requirements.py"),
            str(REPO / "pyproject.toml"),
            "--gpu",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out == serve_requirements(REPO / "pyproject.toml", gpu=True)
