"""The Open Inference Protocol (KServe v2, as Triton speaks it) under ``/v2``, for existing Triton/KServe clients.

Inputs of ``.../infer``: one tensor named ``image``, either ``BYTES`` ``[N]`` (encoded image files; in JSON each
element is the file in base64, in binary data the raw file) or ``FP32`` ``[N,3,S,S]`` preprocessed as the manifest's
``preprocess`` says (what a client of the bundle's Triton repository sends). Outputs: the bundle's ONNX outputs by
name (``saliency`` at the model's resolution, ``attn_*``, ``embedding``), all of them unless the request lists some.
Every image goes through the same dynamic batcher, limits, deadline, API key and metrics as ``/saliency``; errors
are ``{"error": "..."}`` as the protocol wants.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Header, Request
from fastapi.responses import Response

from service import __version__
from service.deps import State
from service.kserve import (
    InferRequest,
    InputTensor,
    ProtocolError,
    decompress,
    encode_infer_response,
    parse_infer_request,
)
from service.manifest import Manifest
from service.pipeline import Pipeline
from service.repository import ServedModel
from service.state import ServiceState

SERVER_NAME = "saliency-service"
EXTENSIONS = ["binary_tensor_data", "model_repository"]
PLATFORM = "onnxruntime_onnx"

router = APIRouter(prefix="/v2", tags=["kserve-v2"])


def _served(state: ServiceState, name: str, version: str | None) -> ServedModel:
    """The repository's model called ``name`` (``default``: the default) at ``version``; 404 for any other, 503 while
    the models load."""
    if state.repository is None:
        raise ProtocolError(503, "the models are not loaded yet")
    served = state.repository.find(name)
    if served is None:
        raise ProtocolError(404, f"unknown {state.repository.unknown_message(name)}")
    if version is not None and version != served.engine.manifest.version:
        raise ProtocolError(
            404, f"model {name!r} has no version {version!r}; it serves version {served.engine.manifest.version!r}"
        )
    return served


def _dims(shape: list[int | str]) -> list[int]:
    return [d if isinstance(d, int) else -1 for d in shape]


@router.get("")
async def server_metadata() -> dict:
    """Server name, version and protocol extensions."""
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}


@router.get("/health/live")
async def live() -> Response:
    """200 while the process is up (the status code is the answer)."""
    return Response(status_code=200)


@router.get("/health/ready")
async def ready(state: State) -> Response:
    """200 once the model is loaded and warmed up, 503 before and while draining."""
    return Response(status_code=200 if state.ready else 503)


@router.get("/models/{name}")
@router.get("/models/{name}/versions/{version}")
async def model_metadata(name: str, state: State, version: str | None = None) -> dict:
    """Name, versions, platform, and the input/output tensors of the served model."""
    manifest = _served(state, name, version).engine.manifest
    size = manifest.preprocess.input_size
    return {
        "name": manifest.name,
        "versions": [manifest.version],
        "platform": PLATFORM,
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "image", "datatype": "FP32", "shape": [-1, 3, size, size]},
        ],
        "outputs": [{"name": o.name, "datatype": "FP32", "shape": _dims(o.shape)} for o in manifest.outputs],
        "parameters": {
            "preprocess": manifest.preprocess.model_dump(),
            "image_input": "BYTES: encoded files (base64 in JSON); FP32: [N,3,S,S] normalised with preprocess",
        },
    }


@router.get("/models/{name}/ready")
@router.get("/models/{name}/versions/{version}/ready")
async def model_ready(name: str, state: State, version: str | None = None) -> Response:
    """200 when the named model can infer, 503 while it loads or drains, 404 for another name."""
    served = _served(state, name, version)
    return Response(status_code=200 if state.ready and served.ready else 503)


@router.post("/repository/index")
async def repository_index(state: State) -> list[dict]:
    """Every model of the repository with its state (``READY`` or ``UNAVAILABLE`` and why)."""
    if state.repository is None:
        return []
    index = []
    for served in state.repository.models:
        entry = {"name": served.name, "version": served.engine.manifest.version}
        if state.ready and served.ready:
            entry["state"] = "READY"
        else:
            entry |= {"state": "UNAVAILABLE", "reason": "loading or draining"}
        index.append(entry)
    return index


def _image_input(request: InferRequest, manifest: Manifest, limit: int) -> InputTensor:
    if len(request.inputs) != 1 or request.inputs[0].name != "image":
        names = [i.name for i in request.inputs]
        raise ProtocolError(400, f"expected one input named 'image' (BYTES or FP32), got {names}")
    tensor = request.inputs[0]
    size = manifest.preprocess.input_size
    if tensor.datatype == "BYTES":
        if len(tensor.shape) != 1:
            raise ProtocolError(400, f"a BYTES 'image' has shape [N] (one encoded file each), got {tensor.shape}")
    elif tensor.datatype == "FP32":
        if len(tensor.shape) != 4 or tensor.shape[1:] != [3, size, size]:
            raise ProtocolError(400, f"an FP32 'image' has shape [N,3,{size},{size}], got {tensor.shape}")
        if not np.isfinite(tensor.value).all():
            raise ProtocolError(400, "the FP32 'image' holds NaN or infinite values")
    else:
        raise ProtocolError(400, f"'image' must be BYTES (encoded files) or FP32 (preprocessed), not {tensor.datatype}")
    count = tensor.shape[0]
    if not 1 <= count <= limit:
        raise ProtocolError(400, f"'image' holds {count} images; send 1 to {limit} per request")
    return tensor


def _encoded_files(tensor: InputTensor) -> list[bytes]:
    if tensor.binary:
        return list(tensor.value)
    files = []
    for index, text in enumerate(tensor.value):
        try:
            files.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(400, f"image[{index}] in JSON must be the file in base64: {exc}") from exc
    return files


async def _infer_all(pipeline: Pipeline, tensor: InputTensor) -> list[dict[str, np.ndarray]]:
    if tensor.datatype == "BYTES":
        jobs = [pipeline.infer_encoded(data) for data in _encoded_files(tensor)]
    else:
        batch = np.ascontiguousarray(tensor.value, dtype=np.float32)
        jobs = [pipeline.infer_tensor(batch[i]) for i in range(batch.shape[0])]
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:  # a ServiceError (corrupt image, 503, 504) keeps its status; the app answers it in this protocol's shape
        results = await asyncio.gather(*tasks)
    finally:
        for task in tasks:  # one image failed: the others' answers are not wanted any more
            task.cancel()
    return [r.outputs for r in results]


@router.post("/models/{name}/infer")
@router.post("/models/{name}/versions/{version}/infer")
async def infer(
    name: str,
    request: Request,
    state: State,
    version: str | None = None,
    inference_header_content_length: Annotated[str | None, Header()] = None,
    content_encoding: Annotated[str | None, Header()] = None,
) -> Response:
    """Run the model on the ``image`` input; answer the requested outputs as JSON or binary tensor data."""
    model = _served(state, name, version)
    if not state.ready or model.pipeline is None:
        raise ProtocolError(503, "the model is not loaded yet or the server is stopping")
    request.state.model = model.name
    manifest = model.engine.manifest
    settings = state.settings
    # A compressed body may expand to one upload's worth (the byte budget counted its compressed size).
    body = decompress(await request.body(), content_encoding, settings.max_upload_bytes)
    parsed = parse_infer_request(body, inference_header_content_length)
    tensor = _image_input(parsed, manifest, settings.max_batch_images)
    served = [o.name for o in manifest.outputs]
    wanted = parsed.outputs if parsed.outputs is not None else dict.fromkeys(served, parsed.binary_default)
    unknown = sorted(set(wanted) - set(served))
    if unknown:
        raise ProtocolError(400, f"unknown outputs {unknown}; model {manifest.name!r} has {served}")
    per_image = await _infer_all(model.pipeline, tensor)
    outputs = [(out, np.stack([i[out] for i in per_image]).astype(np.float32), wire) for out, wire in wanted.items()]
    content, header_length = encode_infer_response(manifest.name, manifest.version, parsed.id, outputs)
    if header_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(header_length)},
    )
