"""End-to-end export of a tiny checkpoint into a bundle, then checks of every promise the bundle makes."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from google.protobuf import text_format
from triton_model_config import ModelConfig

from export.bundle import (
    INT8_MAE_RISE,
    INT8_MAX_F_DROP,
    INT8_MIN_TOP_WEIGHT_AGREEMENT,
    ExportOptions,
    export_bundle,
)
from export.checkpoint import load_checkpoint
from export.images import list_images, load_batch
from export.onnx_export import attention_output_name, describe_outputs, export_onnx
from export.parity import ParityError, check_parity, cpu_session, max_abs_diff, top_weight_agreement
from export.quantize import attention_consumer_nodes, input_conv_nodes, output_logit_nodes, quantize_int8
from export.tensorrt import detect_tensorrt
from service.manifest import BundleError, Manifest, load_manifest, resolve_bundle, sha256_file


@pytest.fixture(scope="module")
def labelled_root(tmp_path_factory: pytest.TempPathFactory, fixture_images: Path) -> Path:
    """A data root shaped like ../shared/data whose ``ECSSD_val`` is the 8 ECSSD fixture pairs."""
    root = tmp_path_factory.mktemp("data")
    (root / "ECSSD").mkdir()
    (root / "ECSSD" / "images").symlink_to(fixture_images)
    (root / "ECSSD" / "masks").symlink_to(fixture_images.parent / "masks")
    (root / "splits").mkdir()
    stems = [p.stem for p in sorted(fixture_images.glob("ecssd_*.jpg"))]
    (root / "splits" / "ECSSD_val.txt").write_text("\n".join(stems) + "\n")
    return root


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, fixture_images: Path, labelled_root: Path
):
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    out.mkdir()
    (out / "stale.txt").write_text("an earlier bundle's file")
    triton = out.parent / "triton"
    options = ExportOptions(
        checkpoint=tiny_checkpoint,
        out=out,
        int8=True,
        calib_images=fixture_images,
        calib_count=8,
        fp16=True,
        tensorrt=True,
        triton=triton,
        name="tiny",
        version="0.0.1",
        data_root=labelled_root,
        parity_images=fixture_images,
        parity_count=2,
        speed_runs=2,
    )
    report = export_bundle(options)
    return out, report, triton


def test_bundle_replaced_atomically_and_lists_every_file(exported) -> None:
    out, _, _ = exported
    assert not (out / "stale.txt").exists()
    assert not list(out.parent.glob(".tiny.*")), "temporary folders left behind"
    manifest = load_manifest(out)
    on_disk = {p.name for p in out.iterdir()} - {"manifest.json"}
    assert on_disk == set(manifest.files)
    for name, spec in manifest.files.items():
        assert spec.sha256 == sha256_file(out / name)


def test_offline_optimized_graph_is_timed_but_never_shipped(exported) -> None:
    out, report, _ = exported
    trial = report["graph_optimization"]
    assert set(trial["ms_per_image_b1"]) == {"online_basic", "online_all", "offline_all"}
    assert trial["shipped"] is False
    assert not (out / "model.ort-cpu.onnx").exists()  # tied to the exporting CPU's vector width
    assert all(spec.file != "model.ort-cpu.onnx" for spec in load_manifest(out).variants.values())


def test_manifest_round_trips_through_service_schema(exported, tiny_checkpoint: Path) -> None:
    out, _, _ = exported
    raw = (out / "manifest.json").read_text()
    manifest = Manifest.model_validate_json(raw)
    assert Manifest.model_validate_json(manifest.model_dump_json()) == manifest
    assert manifest.name == "tiny" and manifest.version == "0.0.1" and manifest.opset == 17
    assert manifest.preprocess.mean == (0.5, 0.45, 0.4) and manifest.preprocess.std == (0.25, 0.22, 0.2)
    assert manifest.source.sha256 == sha256_file(tiny_checkpoint)
    assert manifest.source.epoch == 3  # checkpoint epoch 2 is the third completed epoch
    assert manifest.training_data == ["ECSSD_train"]
    assert manifest.variants["fp32"].accuracy["ECSSD_val"]["n_images"] == 8
    assert manifest.variants["fp32"].speed["ms_per_image_b1"] > 0
    assert resolve_bundle(out) == out


def test_outputs_match_model_geometry_and_pytorch(exported, tiny_checkpoint: Path, fixture_images: Path) -> None:
    out, report, _ = exported
    manifest = load_manifest(out)
    ckpt = load_checkpoint(tiny_checkpoint)
    geometry = {attention_output_name(g.name): g for g in ckpt.model.attention_geometry()}
    attention = manifest.output("attention")
    assert {o.name for o in attention} == set(geometry)
    for spec in attention:
        g = geometry[spec.name]
        assert (spec.attention.kind, spec.attention.grid, spec.attention.dilation, spec.attention.stride) == (
            g.kind,
            g.grid,
            g.dilation,
            g.stride,
        )
    images = load_batch(list_images(fixture_images)[-3:], ckpt.preprocess)  # not the export's parity images
    session = cpu_session(out / "model.onnx")
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": images}), strict=True))
    with torch.no_grad():
        expected = ckpt.model(torch.from_numpy(images))
    np.testing.assert_allclose(got["saliency"], torch.sigmoid(expected.final).numpy(), atol=1e-4, rtol=0)
    for key, tensor in expected.attention.items():
        np.testing.assert_allclose(got[attention_output_name(key)], tensor.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got["attn_global"].sum(axis=1), 1.0, atol=1e-5)  # GAP softmax over the grid
    assert all(got[n].min() >= 0.0 and got[n].max() <= 1.0 for n in got)
    assert max(report["parity_fp32"]["max_abs_diff"].values()) <= 1e-4


def test_int8_shipped_only_within_accuracy_bound(exported) -> None:
    out, report, _ = exported
    manifest = load_manifest(out)
    fp32 = report["int8"]["accuracy"]["fp32"]
    int8 = report["int8"]["accuracy"]["int8"]
    within = fp32["max_f"] - int8["max_f"] <= INT8_MAX_F_DROP and int8["mae"] - fp32["mae"] <= INT8_MAE_RISE
    agreement = report["int8"]["attention_top_weight_agreement_vs_fp32"]
    assert set(agreement) == {o.name for o in manifest.outputs if o.attention and o.attention.kind != "spatial"}
    assert all(0.0 <= v <= 1.0 for v in agreement.values())
    within = within and min(agreement.values()) >= INT8_MIN_TOP_WEIGHT_AGREEMENT
    assert report["int8"]["shipped"] is within
    if within:
        assert (out / "model.int8.onnx").is_file() and manifest.variants["int8"].precision == "int8"
        assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(out / "model.int8.onnx")).graph.node}
    else:
        assert not (out / "model.int8.onnx").exists() and "int8" not in manifest.variants
        assert manifest.rejected_variants["int8"].accuracy["ECSSD_val"] == int8
        assert manifest.default_variant == "fp32"


def test_int8_keeps_the_first_layer_and_the_output_logit_convolutions_in_float(
    exported, tiny_checkpoint: Path, fixture_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, _, _ = exported
    fp32 = onnx.load(str(out / "model.onnx"))
    outputs = [o.name for o in fp32.graph.output if o.name != "embedding"]
    kept = set(output_logit_nodes(fp32, outputs))
    assert len(kept) == len(outputs)  # one logits convolution per saliency/attention output
    first = input_conv_nodes(fp32)
    assert len(first) == 1 and first[0] not in kept
    calibration = load_batch(list_images(fixture_images, limit=4), load_checkpoint(tiny_checkpoint).preprocess)
    int8 = onnx.load(str(quantize_int8(out / "model.onnx", tmp_path / "q.onnx", calibration, outputs, True)))
    assert capsys.readouterr().out == ""  # stdout carries the export's JSON report only
    dequantized = {o for n in int8.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    convs = {n.name: n for n in int8.graph.node if n.op_type == "Conv"}
    assert all(convs[name].input[1] not in dequantized for name in kept | set(first))  # float weights
    assert sum(n.input[1] in dequantized for n in convs.values()) > len(convs) // 2  # the rest is int8
    # GAP's pooling MatMul reads the softmax weights that attn_global outputs: it stays float, so the output does too.
    readers = attention_consumer_nodes(fp32, outputs)
    assert len(readers) == 1 and readers[0].endswith("MatMul")
    nodes = {n.name: n for n in int8.graph.node}
    assert not set(nodes[readers[0]].input) & dequantized


def test_attention_agreement_of_a_model_without_per_pixel_attention_is_empty(exported, fixture_images: Path) -> None:
    out, _, _ = exported
    session = cpu_session(out / "model.onnx")
    images = load_batch(list_images(fixture_images, limit=1), load_manifest(out).preprocess)
    assert top_weight_agreement(session, session, images, []) == {}  # not "every output", as ORT reads []


def test_fp16_variant_keeps_float_io_and_stays_close(exported, fixture_images: Path) -> None:
    out, _, _ = exported
    manifest = load_manifest(out)
    fp16_file = out / manifest.variants["fp16"].file
    assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in onnx.load(str(fp16_file)).graph.initializer)
    x = load_batch(list_images(fixture_images, limit=1), manifest.preprocess)
    s16, s32 = cpu_session(fp16_file), cpu_session(out / "model.onnx")
    assert all(o.type == "tensor(float)" for o in s16.get_outputs())
    for a, b in zip(s32.run(None, {"image": x}), s16.run(None, {"image": x}), strict=True):
        assert np.max(np.abs(a - b)) <= 2e-2


def test_corrupted_or_truncated_file_is_refused(exported, tmp_path: Path) -> None:
    out, _, _ = exported
    copy = tmp_path / "bundle"
    shutil.copytree(out, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"sha256 of model\.onnx is .*\(tampered or corrupted\)"):
        load_manifest(copy)
    (copy / "model.onnx").write_bytes(bytes(data[:-10]))
    with pytest.raises(BundleError, match=r"model\.onnx is \d+ bytes, manifest says"):
        load_manifest(copy)


def test_triton_config_is_valid_text_format(exported) -> None:
    out, _, triton = exported
    manifest = load_manifest(out)
    model_dir = triton / "tiny"
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), ModelConfig())
    assert config.name == "tiny" and config.platform == "onnxruntime_onnx"
    assert config.max_batch_size >= max(config.dynamic_batching.preferred_batch_size) > 0
    assert config.dynamic_batching.max_queue_delay_microseconds > 0
    assert [(i.name, list(i.dims)) for i in config.input] == [("image", [3, 224, 224])]
    assert [(o.name, list(o.dims)) for o in config.output] == [(o.name, o.shape[1:]) for o in manifest.outputs]
    fp32 = ModelConfig.DESCRIPTOR.fields_by_name["input"].message_type.fields_by_name["data_type"].enum_type
    assert {fp32.values_by_number[t.data_type].name for t in [*config.input, *config.output]} == {"TYPE_FP32"}
    assert sha256_file(model_dir / "1" / "model.onnx") == manifest.files["model.onnx"].sha256


def test_tensorrt_skipped_with_reason_on_cpu(exported) -> None:
    out, report, _ = exported
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device; the skip path applies to CPU machines")
    assert report["tensorrt"] == {"built": False, "skipped_because": detect_tensorrt().reason}
    assert "no CUDA device" in report["tensorrt"]["skipped_because"]
    assert not (out / "model.plan").exists() and "tensorrt" not in load_manifest(out).variants


def test_tensorrt_detection_names_missing_module(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    monkeypatch.setattr("export.tensorrt.cuda_device_count", lambda: 1)  # pretend a GPU to reach the import check
    availability = detect_tensorrt()
    assert not availability.available and "tensorrt is not importable" in availability.reason


def test_parity_failure_is_loud(tiny_checkpoint: Path, fixture_images: Path, tmp_path: Path) -> None:
    ckpt = load_checkpoint(tiny_checkpoint)
    graph = export_onnx(ckpt.model, tmp_path / "m.onnx", 224)
    model = onnx.load(str(graph.path))
    weight = next(i for i in model.graph.initializer if len(i.dims) == 4)  # perturb the first conv weight
    values = onnx.numpy_helper.to_array(weight) + 0.05
    weight.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), weight.name))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    images = load_batch(list_images(fixture_images, limit=2), ckpt.preprocess)
    diffs = max_abs_diff(graph.wrapper, cpu_session(tmp_path / "bad.onnx"), images)
    with pytest.raises(ParityError, match="saliency"):
        check_parity(diffs, 1e-4, "tampered graph")
    with pytest.raises(ParityError, match="nan"):
        check_parity({"saliency": float("nan")}, 1e-4, "nan output")


def test_parity_is_absolute_for_probabilities_and_relative_for_large_features() -> None:
    import torch

    class Wrapper(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.sigmoid(x), 20 * x  # a probability and features reaching 20

    class Session:
        def get_outputs(self) -> list[SimpleNamespace]:
            return [SimpleNamespace(name="probability"), SimpleNamespace(name="features")]

        def run(self, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            x = feeds["image"]
            return [1 / (1 + np.exp(-x)) + 1e-3, 20 * x + 1e-3]

    images = np.ones((2, 1, 1, 1), np.float32)
    diffs = max_abs_diff(Wrapper(), Session(), images)
    assert diffs["probability"] == pytest.approx(1e-3, rel=1e-3)
    assert diffs["features"] == pytest.approx(1e-3 / 20, rel=1e-2)


def test_failed_export_leaves_existing_bundle_untouched(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "keep"
    out.mkdir()
    (out / "marker").write_text("old")
    with pytest.raises(FileNotFoundError):
        export_bundle(ExportOptions(tiny_checkpoint, out, parity_images=tmp_path / "missing", speed_runs=1))
    assert (out / "marker").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"]


def test_describe_outputs_orders_saliency_first(tiny_checkpoint: Path) -> None:
    wrapper, specs = describe_outputs(load_checkpoint(tiny_checkpoint).model, 224)
    assert specs[0].name == "saliency" and specs[0].shape[0] == "batch"
    assert [s.name for s in specs[1:]] == [attention_output_name(k) for k in wrapper.attention_keys]


def test_a_saliency_floor_zeroes_the_haze_and_stretches_the_rest(
    tiny_checkpoint: Path, fixture_images: Path, tmp_path: Path
) -> None:
    from training.fit_saliency_floor import apply_floor

    ckpt = load_checkpoint(tiny_checkpoint)
    plain = export_onnx(ckpt.model, tmp_path / "plain.onnx", 224)
    floored = export_onnx(ckpt.model, tmp_path / "floored.onnx", 224, saliency_floor=0.3)
    images = load_batch(list_images(fixture_images, limit=2), ckpt.preprocess)
    p = cpu_session(plain.path).run(["saliency"], {"image": images})[0]
    q = cpu_session(floored.path).run(["saliency"], {"image": images})[0]
    np.testing.assert_allclose(q, apply_floor(p, 0.3), atol=1e-5)
    assert q.min() == 0.0 and q.max() <= 1.0  # the untrained model's map straddles the floor
    with pytest.raises(ValueError, match="saliency_floor"):
        describe_outputs(ckpt.model, 224, saliency_floor=1.0)
