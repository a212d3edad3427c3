"""The subset of Triton's ``model_config.proto`` that ``export.triton`` writes, as a protobuf descriptor.

Built in code because ``tritonclient[grpc]`` (which ships ``model_config_pb2``) would downgrade the project's
protobuf (7.x → 6.x) and ml_dtypes. Field names, types and enum values follow
triton-inference-server/common ``protobuf/model_config.proto``; text-format parsing of ``config.pbtxt`` checks
names and types, which is what Triton's own parser does first.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_DATA_TYPES = [
    "TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64", "TYPE_INT8",
    "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16",
]  # fmt: skip
_KINDS = ["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]


def _field(message, name: str, number: int, kind: int, label: int = _F.LABEL_OPTIONAL, type_name: str = "") -> None:
    field = message.field.add(name=name, number=number, type=kind, label=label)
    if type_name:
        field.type_name = type_name


def _build():
    file = descriptor_pb2.FileDescriptorProto(name="triton_subset/model_config.proto", package="inference")
    file.syntax = "proto3"
    for name, values in (("DataType", _DATA_TYPES), ("Kind", _KINDS)):
        enum = file.enum_type.add(name=name)
        for number, value in enumerate(values):
            enum.value.add(name=value, number=number)
    rep = _F.LABEL_REPEATED
    model_input = file.message_type.add(name="ModelInput")
    _field(model_input, "name", 1, _F.TYPE_STRING)
    _field(model_input, "data_type", 2, _F.TYPE_ENUM, type_name=".inference.DataType")
    _field(model_input, "dims", 4, _F.TYPE_INT64, rep)
    model_output = file.message_type.add(name="ModelOutput")
    _field(model_output, "name", 1, _F.TYPE_STRING)
    _field(model_output, "data_type", 2, _F.TYPE_ENUM, type_name=".inference.DataType")
    _field(model_output, "dims", 3, _F.TYPE_INT64, rep)
    batching = file.message_type.add(name="ModelDynamicBatching")
    _field(batching, "preferred_batch_size", 1, _F.TYPE_INT32, rep)
    _field(batching, "max_queue_delay_microseconds", 2, _F.TYPE_UINT64)
    group = file.message_type.add(name="ModelInstanceGroup")
    _field(group, "name", 1, _F.TYPE_STRING)
    _field(group, "count", 2, _F.TYPE_INT32)
    _field(group, "kind", 4, _F.TYPE_ENUM, type_name=".inference.Kind")
    config = file.message_type.add(name="ModelConfig")
    _field(config, "name", 1, _F.TYPE_STRING)
    _field(config, "platform", 2, _F.TYPE_STRING)
    _field(config, "max_batch_size", 4, _F.TYPE_INT32)
    _field(config, "input", 5, _F.TYPE_MESSAGE, rep, ".inference.ModelInput")
    _field(config, "output", 6, _F.TYPE_MESSAGE, rep, ".inference.ModelOutput")
    _field(config, "instance_group", 7, _F.TYPE_MESSAGE, rep, ".inference.ModelInstanceGroup")
    _field(config, "dynamic_batching", 11, _F.TYPE_MESSAGE, type_name=".inference.ModelDynamicBatching")
    _field(config, "backend", 17, _F.TYPE_STRING)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


ModelConfig = _build()
