"""Write a copy of a GGUF file in which every block-quantized tensor is dequantized to F16.

Run through scripts/make-f16-gguf, which supplies the reference environment's interpreter.
Tensors of the plain types (F32, F16, BF16, F64 and the integer types) are copied unchanged,
so F32 norms stay F32. Every metadata key/value is copied in its original order and with its
original value type, except general.file_type, which becomes 1 (llama.cpp's MOSTLY_F16).
Tensor data is streamed one tensor at a time, so peak memory is about one F32 copy of the
largest tensor, and the output appears under its name only after it was read back and checked.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGUFValueType, GGUFWriter, GGMLQuantizationType, GGML_QUANT_SIZES
from gguf.quants import dequantize

FILE_TYPE_KEY = "general.file_type"
# LLAMA_FTYPE_MOSTLY_F16 in llama.cpp's include/llama.h (as vendored by llama-cpp-python 0.3.36).
FILE_TYPE_MOSTLY_F16 = 1

PLAIN_TYPES = {
    GGMLQuantizationType.F32,
    GGMLQuantizationType.F16,
    GGMLQuantizationType.BF16,
    GGMLQuantizationType.F64,
    GGMLQuantizationType.I8,
    GGMLQuantizationType.I16,
    GGMLQuantizationType.I32,
    GGMLQuantizationType.I64,
}


class ConversionError(Exception):
    """A failure that is reported as one line on stderr."""


def log(message: str) -> None:
    print(f"make-f16-gguf: {message}", file=sys.stderr)


def field_value(field):
    """Return a reader field's value as the Python value GGUFWriter packs back."""
    main_type = field.types[0]
    if main_type == GGUFValueType.ARRAY and field.types[-1] == GGUFValueType.ARRAY:
        raise ConversionError(f"metadata key {field.name} is an array of arrays, which this script does not copy")
    return field.contents()


def output_type(tensor) -> GGMLQuantizationType:
    if tensor.tensor_type in PLAIN_TYPES:
        return tensor.tensor_type
    return GGMLQuantizationType.F16


def output_data(tensor) -> np.ndarray:
    """Return the tensor's data as written to the output, shaped in numpy order."""
    if tensor.tensor_type in PLAIN_TYPES:
        return tensor.data
    try:
        values = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as error:
        raise ConversionError(f"tensor {tensor.name}: gguf cannot dequantize {tensor.tensor_type.name}") from error
    half = values.astype(np.float16)
    overflow = np.isfinite(values) & ~np.isfinite(half)
    if overflow.any():
        raise ConversionError(
            f"tensor {tensor.name}: {int(overflow.sum())} dequantized values exceed the F16 range "
            f"(largest magnitude {float(np.abs(values).max())})"
        )
    return half


def numpy_shape(tensor) -> tuple[int, ...]:
    """Return the logical shape in numpy order (GGUF lists ne0, the contiguous axis, first)."""
    return tuple(int(n) for n in reversed(tensor.shape.tolist()))


def copy_metadata(reader: GGUFReader, writer: GGUFWriter) -> None:
    for name, field in reader.fields.items():
        # GGUF.* fields are the reader's view of the file header, and the writer adds
        # general.architecture itself.
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == "general.alignment":
            writer.data_alignment = int(field.contents())
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == GGUFValueType.ARRAY else None
        value = FILE_TYPE_MOSTLY_F16 if name == FILE_TYPE_KEY else field_value(field)
        # add_key_value keeps empty strings and arrays, which add_string and add_array would drop.
        writer.add_key_value(name, value, value_type, sub_type)


def convert(source: Path, partial: Path) -> None:
    reader = GGUFReader(source)
    architecture = reader.fields.get("general.architecture")
    if architecture is None:
        raise ConversionError(f"{source} has no general.architecture key")

    writer = GGUFWriter(partial, architecture.contents())
    copy_metadata(reader, writer)
    if FILE_TYPE_KEY not in reader.fields:
        writer.add_uint32(FILE_TYPE_KEY, FILE_TYPE_MOSTLY_F16)

    for tensor in reader.tensors:
        new_type = output_type(tensor)
        dtype = np.float16 if new_type == GGMLQuantizationType.F16 else tensor.data.dtype
        nbytes = tensor.n_elements * GGML_QUANT_SIZES[new_type][1] // GGML_QUANT_SIZES[new_type][0]
        writer.add_tensor_info(tensor.name, numpy_shape(tensor), np.dtype(dtype), nbytes, raw_dtype=new_type)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        data = output_data(tensor)
        writer.write_tensor_data(np.ascontiguousarray(data).reshape(numpy_shape(tensor)))
    writer.close()


def verify(source: Path, written: Path) -> None:
    """Read the written file back and check it against the source, key by key and value by value."""
    original = GGUFReader(source)
    copy = GGUFReader(written)

    original_keys = [name for name in original.fields if not name.startswith("GGUF.")]
    copied_keys = [name for name in copy.fields if not name.startswith("GGUF.")]
    if FILE_TYPE_KEY not in original.fields:
        original_keys.append(FILE_TYPE_KEY)
    if original_keys != copied_keys:
        raise ConversionError(f"metadata keys differ after writing: {original_keys} != {copied_keys}")
    for name in copied_keys:
        field = copy.fields[name]
        if name == FILE_TYPE_KEY:
            if field.contents() != FILE_TYPE_MOSTLY_F16:
                raise ConversionError(f"{FILE_TYPE_KEY} is {field.contents()} in the output, expected {FILE_TYPE_MOSTLY_F16}")
            continue
        before = original.fields[name]
        if field.types != before.types or field.contents() != before.contents():
            raise ConversionError(f"metadata key {name} changed while copying")

    if len(copy.tensors) != len(original.tensors):
        raise ConversionError(f"output has {len(copy.tensors)} tensors, source has {len(original.tensors)}")
    for before, after in zip(original.tensors, copy.tensors):
        if after.name != before.name or numpy_shape(after) != numpy_shape(before):
            raise ConversionError(f"tensor {before.name} {numpy_shape(before)} was written as {after.name} {numpy_shape(after)}")
        if after.tensor_type != output_type(before):
            raise ConversionError(f"tensor {before.name} was written as {after.tensor_type.name}, expected {output_type(before).name}")
        if not np.array_equal(np.asarray(after.data).reshape(-1), output_data(before).reshape(-1)):
            raise ConversionError(f"tensor {before.name}: data read back differs from the data written")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="GGUF file to read")
    parser.add_argument("output", type=Path, help="GGUF file to write; replaced if it exists")
    args = parser.parse_args()

    if not args.input.is_file():
        log(f"input {args.input} not found")
        return 1
    partial = args.output.with_name(args.output.name + ".partial")
    try:
        log(f"converting {args.input}")
        convert(args.input, partial)
        log(f"checking {partial}")
        verify(args.input, partial)
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        os.replace(partial, args.output)
    except (ConversionError, ValueError, OSError) as error:
        partial.unlink(missing_ok=True)
        log(f"failed to convert {args.input}: {error}")
        return 1
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
