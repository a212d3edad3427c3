"""Open Inference Protocol (KServe v2) tensors: JSON and binary-data request/response codec, numpy only.

The protocol is the one Triton Inference Server and KServe speak (``docs/predict-api/v2/required_api.md`` of
KServe, plus Triton's binary tensor data extension): a JSON inference header, optionally followed by the raw bytes of
tensors whose header entry carries ``parameters.binary_data_size``; ``Inference-Header-Content-Length`` says where
the JSON ends. ``BYTES`` elements travel in binary as a 4-byte little-endian length followed by the bytes.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Wire datatype -> numpy dtype (little-endian, as the protocol's binary form is).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}


# JSON tensors become Python lists (~40 bytes a number): past this, a client must use the binary data extension.
MAX_JSON_BYTES = 16 * 2**20


class ProtocolError(Exception):
    """A request the protocol layer refuses; answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class InputTensor:
    """One decoded request input. ``value`` is an ndarray of ``shape``; ``BYTES`` gives a list of ``bytes``.

    ``binary``: it came as binary tensor data (else as JSON ``data``, where BYTES elements are text).
    """

    name: str
    datatype: str
    shape: list[int]
    value: np.ndarray | list[bytes]
    binary: bool = False


@dataclass
class InferRequest:
    """A decoded inference request.

    Attributes:
        id: the client's request id (echoed back), or "".
        inputs: decoded input tensors in request order.
        outputs: requested output names with whether each goes back as binary data; ``None`` = every output.
        binary_default: binary form for outputs not named in ``outputs`` (``parameters.binary_data_output``).
    """

    id: str
    inputs: list[InputTensor]
    outputs: dict[str, bool] | None
    binary_default: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate`` without ever holding more than ``limit`` bytes (no zip bombs)."""
    if not encoding or encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise ProtocolError(415, f"unsupported Content-Encoding {encoding!r}: send identity, gzip or deflate")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ProtocolError(400, f"the {encoding} body cannot be decompressed: {exc}") from exc
    if len(data) > limit:
        raise ProtocolError(413, f"the decompressed body is over the {limit}-byte limit")
    return data


def _shape(raw: object, where: str) -> list[int]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw):
        raise ProtocolError(400, f"{where}: shape must be a list of non-negative integers, got {raw!r}")
    return raw


def _flatten(data: object) -> list:
    if isinstance(data, list):
        out: list = []
        for item in data:
            out.extend(_flatten(item) if isinstance(item, list) else [item])
        return out
    return [data]


def _split_bytes(blob: bytes, count: int, where: str) -> list[bytes]:
    """Binary BYTES elements: each is a 4-byte little-endian length and that many bytes."""
    items, offset = [], 0
    while offset < len(blob):
        if offset + 4 > len(blob):
            raise ProtocolError(400, f"{where}: truncated BYTES element length at byte {offset}")
        length = int.from_bytes(blob[offset : offset + 4], "little")
        offset += 4
        if offset + length > len(blob):
            raise ProtocolError(400, f"{where}: BYTES element of {length} bytes runs past the tensor's data")
        items.append(blob[offset : offset + length])
        offset += length
    if len(items) != count:
        raise ProtocolError(400, f"{where}: {len(items)} BYTES elements for a shape of {count} elements")
    return items


def _decode_input(raw: dict, binary: bytes | None) -> InputTensor:
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(400, "every input needs a name")
    where = f"input {name!r}"
    datatype = raw.get("datatype")
    if datatype != "BYTES" and datatype not in DATATYPES:
        raise ProtocolError(400, f"{where}: unknown datatype {datatype!r}")
    shape = _shape(raw.get("shape"), where)
    count = int(np.prod(shape)) if shape else 1
    if datatype == "BYTES":
        if binary is not None:
            return InputTensor(name, datatype, shape, _split_bytes(binary, count, where), binary=True)
        items = _flatten(raw.get("data"))
        if len(items) != count or not all(isinstance(i, str) for i in items):
            raise ProtocolError(400, f"{where}: JSON data must hold {count} strings for shape {shape}")
        return InputTensor(name, datatype, shape, [i.encode("utf-8") for i in items])
    dtype = DATATYPES[datatype]
    if binary is not None:
        if len(binary) != count * dtype.itemsize:
            raise ProtocolError(
                400, f"{where}: {len(binary)} bytes of binary data for {count} {datatype} elements "
                f"({count * dtype.itemsize} bytes expected)",
            )  # fmt: skip
        return InputTensor(name, datatype, shape, np.frombuffer(binary, dtype).reshape(shape), binary=True)
    if datatype == "FP16":  # no portable JSON form (the spec says so); Triton refuses it too
        raise ProtocolError(400, f"{where}: FP16 data must be sent as binary data, not JSON")
    items = _flatten(raw.get("data"))
    if len(items) != count:
        raise ProtocolError(400, f"{where}: JSON data holds {len(items)} elements for shape {shape} ({count})")
    try:
        values = np.asarray(items, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(400, f"{where}: JSON data is not {datatype}: {exc}") from exc
    return InputTensor(name, datatype, shape, values.reshape(shape))


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    """Decode an inference request body (JSON, or JSON + binary tensor data).

    Args:
        body: the request body, already decompressed.
        header_length: the ``Inference-Header-Content-Length`` header, when binary data follows the JSON.

    Raises:
        ProtocolError: 400 naming what is malformed.
    """
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            message = f"Inference-Header-Content-Length {header_length!r} is not a length within the body"
            raise ProtocolError(400, message)
        split = int(header_length)
        header_bytes, binary = body[:split], body[split:]
    else:
        header_bytes, binary = body, b""
    if len(header_bytes) > MAX_JSON_BYTES:
        raise ProtocolError(
            413, f"the JSON part is over {MAX_JSON_BYTES} bytes: send large tensors as binary data "
            "(Inference-Header-Content-Length, parameters.binary_data_size)",
        )  # fmt: skip
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(400, f"the inference header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ProtocolError(400, "the inference header must be a JSON object")
    raw_inputs = header.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs or not all(isinstance(i, dict) for i in raw_inputs):
        raise ProtocolError(400, "the request needs a non-empty 'inputs' list of tensor objects")
    inputs, offset = [], 0
    for raw in raw_inputs:
        size = (raw.get("parameters") or {}).get("binary_data_size")
        chunk = None
        if size is not None:
            if header_length is None:
                raise ProtocolError(400, "binary_data_size given without an Inference-Header-Content-Length header")
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise ProtocolError(400, f"input {raw.get('name')!r}: binary_data_size {size!r} runs past the body")
            chunk, offset = binary[offset : offset + size], offset + size
        inputs.append(_decode_input(raw, chunk))
    if offset != len(binary):
        raise ProtocolError(400, f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    parameters = header.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError(400, "'parameters' must be an object")
    outputs = None
    if header.get("outputs") is not None:
        raw_outputs = header["outputs"]
        if not isinstance(raw_outputs, list) or not all(isinstance(o, dict) and "name" in o for o in raw_outputs):
            raise ProtocolError(400, "'outputs' must be a list of objects with a name")
        outputs = {
            str(o["name"]): bool((o.get("parameters") or {}).get("binary_data", parameters.get("binary_data_output")))
            for o in raw_outputs
        }
    request_id = header.get("id", "")
    return InferRequest(
        id=str(request_id),
        inputs=inputs,
        outputs=outputs,
        binary_default=bool(parameters.get("binary_data_output", False)),
        parameters=parameters,
    )


def datatype_of(array: np.ndarray) -> str:
    """The wire datatype of a numpy array."""
    for name, dtype in DATATYPES.items():
        if array.dtype == dtype:
            return name
    raise ValueError(f"no Open Inference Protocol datatype for numpy {array.dtype}")


def encode_infer_response(
    model_name: str, model_version: str, request_id: str, outputs: list[tuple[str, np.ndarray, bool]]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it (else ``None``).

    Args:
        outputs: ``(name, array, binary)`` per output, in the order to send them.
    """
    entries, blobs = [], []
    for name, array, binary in outputs:
        array = np.ascontiguousarray(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if binary:
            blob = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1).tolist()
        entries.append(entry)
    header: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": entries}
    if request_id:
        header["id"] = request_id
    text = json.dumps(header, separators=(",", ":")).encode()
    if not blobs:
        return text, None
    return text + b"".join(blobs), len(text)
