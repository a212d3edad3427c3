"""ONNX Runtime session of a verified bundle, run by one inference thread.

Inference is serialized on purpose: two ``session.run`` calls at once on one session tripled memory and doubled p99
on this machine, and a plain lock is unfair (MEASURED.md). A single-worker executor is one thread fed by a FIFO
queue, so batches run one after another in arrival order while the event loop stays free.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.grouping import InstanceEncoders
from service.manifest import BundleError, Manifest, OutputSpec, load_manifest, resolve_bundle

log = logging.getLogger(__name__)
# Crops go through the crop encoder this many at a time: one image can bring 48 candidate boxes, and a batch that
# size holds hundreds of MiB of activations (measured: a server doing groups grew past 1 GiB).
CROP_CHUNK = 8


def choose_variant(manifest: Manifest, requested: str) -> str:
    """The variant to load: ``auto`` takes int8 when the bundle ships one, else fp32, else the manifest default.

    The export only lists an int8 variant in the manifest after it passed its accuracy gate (within 0.005 max F and
    MAE of fp32 on ECSSD_val), so its presence is the "passed" signal.

    Raises:
        BundleError: an explicit variant the bundle does not have, or one ONNX Runtime cannot run.
    """
    runnable = {name: v for name, v in manifest.variants.items() if v.runtime == "onnxruntime"}
    if requested == "auto":
        for name in ("int8", "fp32", manifest.default_variant):
            if name in runnable:
                return name
        raise BundleError(f"bundle {manifest.name} has no variant ONNX Runtime can run (variants: {sorted(runnable)})")
    if requested not in runnable:
        raise BundleError(f"variant {requested!r} is not in bundle {manifest.name} (has: {sorted(runnable)})")
    return requested


@dataclass(frozen=True)
class EngineInfo:
    """What ``/models`` reports about the loaded model."""

    bundle_dir: Path
    manifest: Manifest
    variant: str
    provider: str
    providers: list[str]


class Engine:
    """A verified bundle's ONNX Runtime session behind a single inference thread.

    Args:
        bundle: bundle name under ``bundles/`` or a bundle folder; files are checked against their sha256.
        variant: ``auto`` or a variant name of the bundle.
        providers: ONNX Runtime provider names, best first; those not available in this build are skipped.
        intra_op_threads: threads per inference (0 = ONNX Runtime's default).
        spinning: let idle ONNX Runtime threads spin-wait for work. Off by default: on 2 shared cores, spinning
            threads fought the decode/encode threads and other processes: a batch-8 run took 1.3–13× longer per
            image with spinning (e.g. 248 vs 146 ms, 1,593 vs 120 ms; measured here under load from other
            processes); on dedicated cores spinning can shave a little latency.
    """

    def __init__(
        self,
        bundle: str | Path,
        variant: str,
        providers: list[str],
        intra_op_threads: int = 0,
        spinning: bool = False,
    ) -> None:
        bundle_dir = resolve_bundle(bundle)
        manifest = load_manifest(bundle_dir, verify=True)
        chosen = choose_variant(manifest, variant)
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = set(ort.get_available_providers())
        wanted = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        model_path = bundle_dir / manifest.variants[chosen].file
        try:
            self._session = ort.InferenceSession(str(model_path), sess_options=options, providers=wanted)
        except Exception as exc:  # ORT raises its own exception types for unloadable graphs
            raise BundleError(f"ONNX Runtime cannot load {model_path}: {exc}") from exc
        # What the session really got, not what the build lists (an onnxruntime-gpu build lists CUDA without a GPU).
        in_use = self._session.get_providers()
        self.info = EngineInfo(bundle_dir, manifest, chosen, in_use[0], in_use)
        self.output_names = [o.name for o in self._session.get_outputs()]
        missing = [o.name for o in manifest.outputs if o.name not in self.output_names]
        if missing:
            raise BundleError(f"{model_path} lacks outputs {missing} that the manifest declares")
        self._regions = self._head_session(bundle_dir / manifest.regions.file) if manifest.regions else None
        self._crops = self._head_session(bundle_dir / manifest.crops.file) if manifest.crops else None
        self._quality = self._head_session(bundle_dir / manifest.quality.file) if manifest.quality else None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        log.info("loaded bundle %s variant %s on %s", bundle_dir, chosen, in_use)

    @staticmethod
    def _head_session(path: Path) -> ort.InferenceSession:
        """A co-saliency bundle's instance graph (region head, crop encoder, quality head): one thread, run on the
        caller's (post-processing) thread."""
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for unloadable graphs
            raise BundleError(f"ONNX Runtime cannot load {path}: {exc}") from exc

    def embed_regions(self, pooled: np.ndarray) -> np.ndarray:
        """The regional feature mapping head of a co-saliency bundle: pooled ``[K, C*P*P]`` → unit vectors."""
        if self._regions is None or self.manifest.regions is None:
            raise BundleError(f"bundle {self.manifest.name} has no regional feature mapping head")
        spec = self.manifest.regions
        return self._regions.run([spec.output_name], {spec.input_name: pooled.astype(np.float32)})[0]

    def encode_crops(self, crops: np.ndarray) -> np.ndarray:
        """The crop encoder of a co-saliency bundle: normalized crops ``[K, 3, S, S]`` → features ``[K, C, s, s]``."""
        if self._crops is None or self.manifest.crops is None:
            raise BundleError(f"bundle {self.manifest.name} has no crop encoder")
        spec, crops = self.manifest.crops, crops.astype(np.float32)
        chunks = [
            self._crops.run([spec.output_name], {spec.input_name: crops[start : start + CROP_CHUNK]})[0]
            for start in range(0, len(crops), CROP_CHUNK)
        ]
        return np.concatenate(chunks)

    def score_instances(self, inputs: np.ndarray) -> np.ndarray:
        """The instance quality head of a co-saliency bundle: ``quality_inputs`` ``[K, C + 2, s, s]`` → ``[K]``."""
        if self._quality is None or self.manifest.quality is None:
            raise BundleError(f"bundle {self.manifest.name} has no instance quality head")
        spec = self.manifest.quality
        return self._quality.run([spec.output_name], {spec.input_name: inputs.astype(np.float32)})[0]

    def instance_encoders(self) -> InstanceEncoders:
        """The bundle's graphs that describe instances, for ``service.grouping``."""
        if self.manifest.regions is None:
            raise BundleError(f"bundle {self.manifest.name} has no regional feature mapping head")
        crops = self.encode_crops if self._crops is not None else None
        quality = self.score_instances if self._quality is not None else None
        return InstanceEncoders(
            self.embed_regions, self.manifest.regions, self.manifest.preprocess, crops, self.manifest.crops, quality
        )

    @property
    def manifest(self) -> Manifest:
        return self.info.manifest

    @property
    def input_size(self) -> int:
        return self.manifest.preprocess.input_size

    def outputs(self, kind: str) -> list[OutputSpec]:
        return self.manifest.output(kind)

    def run_sync(self, batch: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        """Run one batch ``[B,3,S,S]`` on the calling thread; returns every output by name and the seconds taken."""
        start = time.perf_counter()
        values = self._session.run(None, {self.manifest.input_name: batch})
        return dict(zip(self.output_names, values, strict=True)), time.perf_counter() - start

    async def run(self, batch: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        """Run one batch on the inference thread without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.run_sync, batch)

    def warm_up(self) -> None:
        """Run one zero image so the first request pays no allocation or kernel-selection cost."""
        size = self.input_size
        self._executor.submit(self.run_sync, np.zeros((1, 3, size, size), np.float32)).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True)
