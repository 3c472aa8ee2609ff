"""The numpy reference executor, op by op against PyTorch.

Each program is built with coremltools' MIL builder (or converted from a small torch module),
saved as an `.mlpackage`, loaded back through the milproto loader as the engine does, and run
by `MilProgram`. Every op our converter emits (`mil.CONVERTER_OPS`) has a test here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from whisper_coreml.coreml import mil
from whisper_coreml.coreml.mil import CONVERTER_OPS, OPS, MilProgram, UnsupportedOpError
from whisper_coreml.errors import ModelError

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ct = pytest.importorskip("coremltools")
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

TESTED: set[str] = set()  # ops exercised by the tests below, checked against CONVERTER_OPS at the end
RNG = np.random.default_rng(0)


def covers(*ops: str) -> Callable[[Callable], Callable]:
    TESTED.update(ops)
    return lambda fn: fn


def randn(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.fixture
def run(tmp_path: Path) -> Callable[..., dict[str, np.ndarray]]:
    """`run(specs, body, inputs, target=iOS18)`: build, save, reload and execute a one-function program."""
    counter = iter(range(1000))

    def run_program(
        specs: list[tuple[tuple[int, ...], Any]], body: Callable, inputs: dict[str, np.ndarray], target: Any = None
    ) -> dict[str, np.ndarray]:
        target = target or ct.target.iOS18
        names = list(inputs)
        program = mb.program(
            input_specs=[mb.TensorSpec(shape=shape, dtype=dtype) for shape, dtype in specs], opset_version=target
        )(body)
        # keep the builder's argument names as the input names the test passes in
        func = program.functions["main"]
        assert list(func.inputs) == names, f"name the body's arguments {names}"
        path = tmp_path / f"p{next(counter)}.mlpackage"
        model = ct.convert(
            program,
            convert_to="mlprogram",
            pass_pipeline=ct.PassPipeline.EMPTY,
            minimum_deployment_target=target,
            compute_precision=ct.precision.FLOAT32,
            skip_model_load=True,
        )
        model.save(str(path))
        return MilProgram.load(path).predict(inputs)

    return run_program


def close(a: Any, b: Any, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), atol=atol, rtol=rtol)


def only(outputs: dict[str, np.ndarray]) -> np.ndarray:
    (value,) = outputs.values()
    return value


FP32 = types.fp32
FP16 = types.fp16
I32 = types.int32


# --- elementwise ---------------------------------------------------------------------------------


@covers("add", "mul", "greater", "greater_equal", "select")
def test_elementwise_and_select(run: Callable) -> None:
    x, y = randn(2, 3, 4), randn(3, 1)

    def body(x: Any, y: Any) -> Any:
        s = mb.add(x=x, y=y)
        p = mb.mul(x=s, y=y)
        gt = mb.greater(x=x, y=y)
        ge = mb.greater_equal(x=x, y=0.25)
        return s, p, mb.select(cond=gt, a=p, b=s), mb.cast(x=ge, dtype="int32")

    out = list(run([((2, 3, 4), FP32), ((3, 1), FP32)], body, {"x": x, "y": y}).values())
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    close(out[0], tx + ty)
    close(out[1], (tx + ty) * ty)
    close(out[2], torch.where(tx > ty, (tx + ty) * ty, tx + ty))
    np.testing.assert_array_equal(out[3], (tx >= 0.25).int().numpy())


def test_float16_arithmetic_rounds_like_torch_half(run: Callable) -> None:
    """An fp16 op computes exactly, then rounds to fp16: bit-identical to PyTorch's CPU half ops."""
    x, y = randn(64, 64) * 100, randn(64, 64)
    out = run(
        [((64, 64), FP16), ((64, 64), FP16)],
        lambda x, y: (mb.add(x=x, y=y), mb.mul(x=x, y=y)),
        {"x": x.astype(np.float16), "y": y.astype(np.float16)},
    )
    tx, ty = torch.from_numpy(x).half(), torch.from_numpy(y).half()
    added, multiplied = out.values()
    assert added.dtype == np.float16
    np.testing.assert_array_equal(added, (tx + ty).numpy())
    np.testing.assert_array_equal(multiplied, (tx * ty).numpy())


def test_float16_rounding_handles_subnormals_and_overflow() -> None:
    x = (RNG.standard_normal(200_000) * 10.0 ** RNG.uniform(-12, 5.5, 200_000)).astype(np.float32)
    x = np.concatenate([x, np.array([0, 65504, 65519, 65520, 1e6, -1e6, 2**-24, 2**-25, 3 * 2**-26], np.float32)])
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).astype(np.float32)
        np.testing.assert_array_equal(mil._round16(x.copy()), expected)
        np.testing.assert_array_equal(mil._round16(x), expected)  # not in place: x is not the op's own
    few = randn(10_000) * 100
    few[::997] = np.float32(3e-6)  # a handful of subnormals takes numpy's own conversion
    np.testing.assert_array_equal(mil._round16(few.copy()), few.astype(np.float16).astype(np.float32))


@covers("cast")
def test_cast(run: Callable) -> None:
    x = randn(5, 7) * 40
    out = run(
        [((5, 7), FP32)],
        lambda x: (mb.cast(x=x, dtype="fp16"), mb.cast(x=x, dtype="int32")),
        {"x": x},
    )
    half, ints = out.values()
    np.testing.assert_array_equal(half, torch.from_numpy(x).half().numpy())
    np.testing.assert_array_equal(ints, torch.from_numpy(x).to(torch.int32).numpy())  # truncation


# --- linear algebra ------------------------------------------------------------------------------


@covers("linear")
def test_linear(run: Callable) -> None:
    x, w, b = randn(1, 5, 16), randn(24, 16), randn(24)
    out = run(
        [((1, 5, 16), FP32)],
        lambda x: (mb.linear(x=x, weight=w, bias=b), mb.linear(x=x, weight=w)),
        {"x": x},
    )
    with_bias, without = out.values()
    close(with_bias, F.linear(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)))
    close(without, F.linear(torch.from_numpy(x), torch.from_numpy(w)))


@covers("matmul")
def test_matmul(run: Callable) -> None:
    a, b, c = randn(3, 4, 8), randn(3, 6, 8), randn(1, 8, 4)
    out = run(
        [((3, 4, 8), FP32), ((3, 6, 8), FP32), ((1, 8, 4), FP32)],
        lambda a, b, c: (
            mb.matmul(x=a, y=b, transpose_y=True),
            mb.matmul(x=c, y=b, transpose_x=True, transpose_y=True),
        ),
        {"a": a, "b": b, "c": c},
    )
    ta, tb, tc = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
    first, second = out.values()
    close(first, ta @ tb.transpose(-1, -2), atol=1e-4)
    close(second, tc.transpose(-1, -2) @ tb.transpose(-1, -2), atol=1e-4)


@covers("conv")
@pytest.mark.parametrize(
    "stride,pad_type,pad,dilation,groups",
    [(1, "custom", [1, 1], 1, 1), (2, "custom", [1, 1], 1, 1), (1, "same", None, 2, 2), (3, "valid", None, 1, 1)],
)
def test_conv1d(run: Callable, stride: int, pad_type: str, pad: list[int] | None, dilation: int, groups: int) -> None:
    x, w, b = randn(1, 8, 50), randn(6, 8 // groups, 3), randn(6)
    kwargs: dict[str, Any] = {"strides": [stride], "pad_type": pad_type, "dilations": [dilation], "groups": groups}
    if pad is not None:
        kwargs["pad"] = pad
    out = only(run([((1, 8, 50), FP32)], lambda x: mb.conv(x=x, weight=w, bias=b, **kwargs), {"x": x}))
    torch_pad: Any = pad[0] if pad else ("same" if pad_type == "same" else 0)
    expected = F.conv1d(
        torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride, torch_pad, dilation, groups
    )
    close(out, expected, atol=1e-4)


def test_conv2d(run: Callable) -> None:
    x, w = randn(2, 3, 9, 11), randn(4, 3, 3, 2)
    out = only(
        run(
            [((2, 3, 9, 11), FP32)],
            lambda x: mb.conv(x=x, weight=w, strides=[2, 1], pad_type="custom", pad=[1, 1, 0, 1]),
            {"x": x},
        )
    )
    expected = F.conv2d(F.pad(torch.from_numpy(x), (0, 1, 1, 1)), torch.from_numpy(w), stride=(2, 1))
    close(out, expected, atol=1e-4)


# --- activations and normalisation -----------------------------------------------------------------


@covers("gelu")
def test_gelu(run: Callable) -> None:
    x = randn(4, 300) * 4
    out = run(
        [((4, 300), FP32)],
        lambda x: (mb.gelu(x=x, mode="EXACT"), mb.gelu(x=x, mode="TANH_APPROXIMATION")),
        {"x": x},
    )
    exact, tanh = out.values()
    close(exact, F.gelu(torch.from_numpy(x)), atol=1e-6)
    close(tanh, F.gelu(torch.from_numpy(x), approximate="tanh"), atol=1e-6)


@covers("softmax")
def test_softmax(run: Callable) -> None:
    x = randn(2, 5, 7) * 10
    out = run([((2, 5, 7), FP32)], lambda x: (mb.softmax(x=x, axis=-1), mb.softmax(x=x, axis=1)), {"x": x})
    last, middle = out.values()
    close(last, torch.from_numpy(x).softmax(-1), atol=1e-6)
    close(middle, torch.from_numpy(x).softmax(1), atol=1e-6)


@covers("layer_norm")
def test_layer_norm(run: Callable) -> None:
    x, g, b = randn(1, 6, 32) * 3 + 1, randn(32), randn(32)
    out = only(
        run([((1, 6, 32), FP32)], lambda x: mb.layer_norm(x=x, axes=[-1], gamma=g, beta=b, epsilon=1e-5), {"x": x})
    )
    close(out, F.layer_norm(torch.from_numpy(x), (32,), torch.from_numpy(g), torch.from_numpy(b)), atol=1e-5)


# --- shapes and indexing ---------------------------------------------------------------------------------


@covers("reshape", "transpose", "expand_dims", "stack", "concat")
def test_shape_ops(run: Callable) -> None:
    x, y = randn(2, 3, 4), randn(2, 3, 4)

    def body(x: Any, y: Any) -> Any:
        return (
            mb.reshape(x=x, shape=[-1, 3, 2, 2]),
            mb.transpose(x=x, perm=[2, 0, 1]),
            mb.expand_dims(x=x, axes=[0, -1]),
            mb.stack(values=[x, y], axis=1),
            mb.concat(values=[x, y, x], axis=-1),
        )

    out = list(run([((2, 3, 4), FP32), ((2, 3, 4), FP32)], body, {"x": x, "y": y}).values())
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    close(out[0], tx.reshape(-1, 3, 2, 2))
    close(out[1], tx.permute(2, 0, 1))
    close(out[2], tx[None, ..., None])
    close(out[3], torch.stack([tx, ty], 1))
    close(out[4], torch.cat([tx, ty, tx], -1))


@covers("slice_by_index")
def test_slice_by_index(run: Callable) -> None:
    x = randn(4, 6, 8)

    def body(x: Any) -> Any:
        return (
            mb.slice_by_index(x=x, begin=[1, 0, 2], end=[3, 6, 8], stride=[1, 2, 3]),
            mb.slice_by_index(
                x=x, begin=[2, 0, 0], end=[3, 6, 8], end_mask=[False, True, True], squeeze_mask=[True, False, False]
            ),
            mb.slice_by_index(x=x, begin=[0, -2, 0], end=[0, 0, 5], begin_mask=[True, False, True],
                              end_mask=[True, True, False]),
        )  # fmt: skip

    out = list(run([((4, 6, 8), FP32)], body, {"x": x}).values())
    t = torch.from_numpy(x)
    close(out[0], t[1:3, 0:6:2, 2:8:3])
    close(out[1], t[2])
    close(out[2], t[:, -2:, :5])


@covers("slice_update")
def test_slice_update_at_a_runtime_position(run: Callable) -> None:
    """As the stateful decoder writes one token's keys: the begin/end come from an input."""
    cache, update = randn(2, 3, 10, 4), randn(1, 3, 1, 4)

    def body(cache: Any, update: Any, position: Any) -> Any:
        begin = mb.concat(
            values=[np.array([1], np.int32), np.array([0], np.int32), position, np.array([0], np.int32)], axis=0
        )
        end = mb.concat(values=[np.array([2], np.int32), np.array([3], np.int32), mb.add(x=position, y=1),
                                np.array([4], np.int32)], axis=0)  # fmt: skip
        return mb.slice_update(x=cache, update=update, begin=begin, end=end)

    specs = [((2, 3, 10, 4), FP32), ((1, 3, 1, 4), FP32), ((1,), I32)]
    out = only(run(specs, body, {"cache": cache, "update": update, "position": np.array([7], np.int32)}))
    expected = torch.from_numpy(cache).clone()
    expected[1:2, :, 7:8] = torch.from_numpy(update)
    close(out, expected)


@covers("gather")
def test_gather(run: Callable) -> None:
    table = randn(50, 8)
    out = run(
        [((1, 3), I32)],
        lambda ids: (
            mb.gather(x=table, indices=ids, axis=0),
            mb.gather(x=table, indices=mb.cast(x=ids, dtype="uint16"), axis=0),
        ),
        {"ids": np.array([[0, 49, 7]], np.int32)},
    )
    by_int, by_uint16 = out.values()
    expected = F.embedding(torch.tensor([[0, 49, 7]]), torch.from_numpy(table))
    close(by_int, expected)
    close(by_uint16, expected)
    negative = run(
        [((2,), I32)], lambda ids: mb.gather(x=table, indices=ids, axis=0), {"ids": np.array([-1, 3], np.int32)}
    )
    close(only(negative), table[[49, 3]])


# --- state -----------------------------------------------------------------------------------------------


class Accumulator(torch.nn.Module):
    """Writes x into a cache row chosen at run time and returns the cache's row sums (a decoder in miniature)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("cache", torch.zeros(1, 6, 4, dtype=torch.float16))
        self.register_buffer("total", torch.zeros(1, 4, dtype=torch.float16))

    def forward(self, x: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        p = position[0]
        self.cache[:, p : p + 1, :] = x.to(torch.float16)
        self.total.add_(x[0].to(torch.float16))
        return self.cache.float().sum(-1) + self.total.float().sum()


@covers("read_state", "coreml_update_state")
def test_state_is_read_and_updated_across_calls(tmp_path: Path) -> None:
    module = Accumulator().eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (torch.zeros(1, 1, 4), torch.zeros(1, dtype=torch.int32)), check_trace=False)
        model = ct.convert(
            traced,
            inputs=[ct.TensorType("x", (1, 1, 4), dtype=np.float32), ct.TensorType("position", (1,), dtype=np.int32)],
            outputs=[ct.TensorType("y", dtype=np.float32)],
            states=[
                ct.StateType(ct.TensorType(shape=(1, 6, 4), dtype=np.float16), name="cache"),
                ct.StateType(ct.TensorType(shape=(1, 4), dtype=np.float16), name="total"),
            ],
            minimum_deployment_target=ct.target.macOS15,
            skip_model_load=True,
        )
    model.save(str(tmp_path / "acc.mlpackage"))
    program = MilProgram.load(tmp_path / "acc.mlpackage")
    assert {"read_state", "coreml_update_state", "slice_update"} <= set(program.op_types)
    assert set(program.states) == {"cache", "total"}
    state, other = program.make_state(), program.make_state()
    reference = Accumulator().eval()
    for position in [0, 3, 1, 3]:
        x = randn(1, 1, 4)
        feed = {"x": x, "position": np.array([position], np.int32)}
        got = program.predict(feed, state)["y"]
        with torch.no_grad():
            expected = reference(torch.from_numpy(x), torch.tensor([position], dtype=torch.int32))
        close(got, expected, atol=2e-2, rtol=2e-3)  # fp16 state and compute
        np.testing.assert_allclose(state.read_state("cache"), reference.cache.numpy(), atol=1e-3)
        assert state.read_state("cache").dtype == np.float16
    assert not other.read_state("cache").any(), "states are independent"
    other.write_state("cache", np.ones((1, 6, 4), np.float16))
    assert program.predict({"x": np.zeros((1, 1, 4), np.float32), "position": np.array([0], np.int32)}, other)[
        "y"
    ].tolist() == [[0.0, 4.0, 4.0, 4.0, 4.0, 4.0]]
    with pytest.raises(ValueError, match="shape"):
        other.write_state("cache", np.ones((6, 4), np.float16))
    with pytest.raises(ValueError, match="needs a state"):
        program.predict(feed)


# --- compressed weights ---------------------------------------------------------------------------------------


@covers("constexpr_blockwise_shift_scale", "constexpr_lut_to_dense", "constexpr_affine_dequantize")
@pytest.mark.parametrize("target", ["iOS16", "iOS18"])
@pytest.mark.parametrize("compression", ["int8", "palettize-6", "palettize-4-grouped"])
def test_compressed_weights(tmp_path: Path, target: str, compression: str) -> None:
    """Decompression matches coremltools' own, and the layer matches torch with the decompressed weight."""
    import coremltools.optimize.coreml as cto
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto
    from coremltools.models.utils import load_spec

    if compression == "palettize-4-grouped" and target == "iOS16":
        pytest.skip("grouped palettes need iOS 18")
    layer = torch.nn.Linear(64, 96).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(layer, torch.zeros(1, 64))
        model = ct.convert(
            traced,
            inputs=[ct.TensorType("x", (1, 64), dtype=np.float32)],
            minimum_deployment_target=getattr(ct.target, target),
            skip_model_load=True,
        )
        if compression == "int8":
            config: Any = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel")
            model = cto.linear_quantize_weights(model, cto.OptimizationConfig(global_config=config))
        elif compression == "palettize-6":
            config = cto.OpPalettizerConfig(nbits=6, mode="kmeans", granularity="per_tensor")
            model = cto.palettize_weights(model, cto.OptimizationConfig(global_config=config))
        else:
            config = cto.OpPalettizerConfig(nbits=4, mode="kmeans", granularity="per_grouped_channel", group_size=16)
            model = cto.palettize_weights(model, cto.OptimizationConfig(global_config=config))
    path = tmp_path / "compressed.mlpackage"
    model.save(str(path))
    program = MilProgram.load(path)
    (constexpr,) = [op for op in program.op_types if op.startswith("constexpr_")]
    if compression != "int8":
        assert constexpr == "constexpr_lut_to_dense"
    else:
        assert constexpr == ("constexpr_affine_dequantize" if target == "iOS16" else "constexpr_blockwise_shift_scale")
    spec = load_spec(str(path))
    loaded = load_milproto(spec, spec.specificationVersion, str(path / "Data" / "com.apple.CoreML" / "weights"))
    (op,) = [o for o in loaded.functions["main"].operations if o.op_type == constexpr]
    expected_weight = np.asarray(op.materialized_val_inference(), dtype=np.float32)
    ours = program._base[program._slots[op.outputs[0].name + "#T"]].T  # the linear's weight, decompressed at load
    np.testing.assert_array_equal(ours, expected_weight.astype(np.float16).astype(np.float32))
    x = randn(1, 64)
    (out,) = program.predict({"x": x}).values()
    with torch.no_grad():
        expected = F.linear(torch.from_numpy(x), torch.from_numpy(expected_weight), layer.bias.half().float())
    close(out, expected, atol=3e-2, rtol=1e-2)  # fp16 compute
    assert np.abs(expected_weight - layer.weight.detach().numpy()).max() < (0.05 if compression == "int8" else 0.2)


# --- errors and coverage -------------------------------------------------------------------------------------


def test_unknown_op_is_a_clear_error(tmp_path: Path) -> None:
    program = mb.program(input_specs=[mb.TensorSpec(shape=(4,), dtype=FP32)], opset_version=ct.target.iOS18)(
        lambda x: mb.cumsum(x=x, axis=0)
    )
    model = ct.convert(
        program, convert_to="mlprogram", pass_pipeline=ct.PassPipeline.EMPTY, skip_model_load=True,
        minimum_deployment_target=ct.target.iOS18,
    )  # fmt: skip
    model.save(str(tmp_path / "cumsum.mlpackage"))
    with pytest.raises(UnsupportedOpError, match="cumsum") as info:
        MilProgram.load(tmp_path / "cumsum.mlpackage")
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ModelError)


def test_not_a_package_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty.mlpackage").mkdir()
    with pytest.raises(ModelError, match=r"not an \.mlpackage"):
        MilProgram.load(tmp_path / "empty.mlpackage")


def test_inputs_are_checked(run: Callable) -> None:
    with pytest.raises(ValueError, match="must have shape"):
        run([((2, 3), FP32)], lambda x: mb.softmax(x=x), {"x": randn(3, 2)})


def test_every_converter_op_is_implemented_and_tested() -> None:
    assert CONVERTER_OPS <= set(OPS), sorted(CONVERTER_OPS - set(OPS))
    assert sorted(CONVERTER_OPS - TESTED) == []
