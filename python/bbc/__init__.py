"""bbc: compile a model of a ``.bb`` spec and run it on NumPy arrays.

    >>> import numpy as np, bbc
    >>> m = bbc.compile("specs/convnext.bb", model="convnext_test", dims={"H": 64, "W": 64})
    >>> m.inputs
    [TensorInfo(name='x', shape=(1, 3, 64, 64))]
    >>> y = m(np.ones((1, 3, 64, 64), np.float32))  # one output: one array
    >>> y.shape
    (1, 10)

``compile`` and ``compile_str`` build a ``Model``; calling it runs one inference. Inputs are
anything ``numpy.asarray(x, dtype=numpy.float32)`` accepts (NumPy arrays, CPU torch tensors,
nested lists); C-contiguous float32 arrays are read in place, without a copy. The GIL is
released while a model compiles and while it runs, so other Python threads keep going and
several threads can share one model. Every error is a ``BbcError`` whose message is what the
``bbc`` command prints (diagnostics with ``file:line:column`` and the source line);
inputs that do not fit the model raise ``InputError``, which is also a ``ValueError``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from ._bbc import BbcError, InputError
from ._bbc import CompiledModel as _CompiledModel
from ._bbc import compile as _compile

__all__ = ["BbcError", "InputError", "Model", "TensorInfo", "compile", "compile_str"]

#: Where the weights come from: ``None`` or an int seeds PyTorch's default initialisation
#: (``None`` is seed 0, as ``bbc run`` does); a str or path names a safetensors checkpoint;
#: a mapping holds arrays by state_dict key. Checkpoints and mappings are checked against the
#: model (missing, unexpected and mis-shaped keys are reported at the spec line declaring them).
WeightsSource = Union[None, int, str, "os.PathLike[str]", Mapping[str, Any]]

#: A value of a model argument: the Python form of a spec literal.
ArgValue = Union[int, float, bool, str, None, Sequence[Any]]


class TensorInfo(NamedTuple):
    """The name and static shape of one input or output of a model (always float32)."""

    name: str
    shape: Tuple[int, ...]


_MISSING = object()


class Model:
    """A model compiled for one target, with its weights: compile once, run many times.

    Build one with ``compile`` or ``compile_str``. A model may be shared between threads;
    runs release the GIL.
    """

    def __init__(self, compiled: _CompiledModel) -> None:
        self._compiled = compiled
        self._inputs = [TensorInfo(name, tuple(shape)) for name, shape in compiled.inputs]
        self._outputs = [TensorInfo(name, tuple(shape)) for name, shape in compiled.outputs]
        self._input_index = {info.name: i for i, info in enumerate(self._inputs)}

    @property
    def name(self) -> str:
        """The model's name in the spec (a model variant's own name)."""
        return self._compiled.name

    @property
    def target(self) -> str:
        """Where the model runs: ``"cpu"``, ``"interp"``, ``"gpu"`` or ``"cuda"``."""
        return self._compiled.target

    @property
    def inputs(self) -> List[TensorInfo]:
        """The inputs, in the order the spec declares them (and positional calls take them)."""
        return list(self._inputs)

    @property
    def outputs(self) -> List[TensorInfo]:
        """The outputs, in the order the spec declares them (and calls return them)."""
        return list(self._outputs)

    def __call__(self, /, *arrays: Any, **named: Any) -> Union[np.ndarray, Tuple[np.ndarray, ...]]:
        """Runs one inference.

        Inputs are given in ``inputs`` order, by name, or both (``m(x, mask=m)``). Returns
        the output as a float32 ``numpy.ndarray`` when the model has one output, else a
        tuple of arrays in ``outputs`` order (``run`` returns them by name).

        Raises ``InputError`` when an input is missing, unknown, given twice, or has the
        wrong shape.
        """
        results = self._compiled.run(self._bind(arrays, named))
        return results[0] if len(results) == 1 else tuple(results)

    def run(self, inputs: Mapping[str, Any]) -> Dict[str, np.ndarray]:
        """Runs one inference on inputs by name and returns the outputs by name."""
        results = self._compiled.run(self._bind((), dict(inputs)))
        return {info.name: array for info, array in zip(self._outputs, results)}

    def _bind(self, arrays: Sequence[Any], named: Mapping[str, Any]) -> List[Any]:
        """The inputs in ``inputs`` order, from positional and named ones."""
        names = ", ".join(info.name for info in self._inputs)
        if len(arrays) > len(self._inputs):
            raise InputError(
                f"model `{self.name}` has {len(self._inputs)} input(s) ({names}), "
                f"but {len(arrays)} were given"
            )
        bound: List[Any] = list(arrays) + [_MISSING] * (len(self._inputs) - len(arrays))
        for key, value in named.items():
            index = self._input_index.get(key)
            if index is None:
                raise InputError(f"model `{self.name}` has no input `{key}`; its inputs: {names}")
            if bound[index] is not _MISSING:
                raise InputError(f"input `{key}` of model `{self.name}` is given twice")
            bound[index] = value
        missing = [info.name for info, value in zip(self._inputs, bound) if value is _MISSING]
        if missing:
            raise InputError(
                f"model `{self.name}` needs input(s) {', '.join(missing)}; its inputs: {names}"
            )
        return bound

    def __repr__(self) -> str:
        def show(infos: List[TensorInfo]) -> str:
            return ", ".join(f"{i.name}: {list(i.shape)}" for i in infos)

        return (
            f"<bbc.Model {self.name!r} on {self.target}: "
            f"({show(self._inputs)}) -> ({show(self._outputs)})>"
        )


def compile(
    spec_path: Union[str, "os.PathLike[str]"],
    model: Optional[str] = None,
    *,
    weights: WeightsSource = None,
    dims: Optional[Mapping[str, int]] = None,
    args: Optional[Mapping[str, ArgValue]] = None,
    opt_level: Optional[int] = None,
    threads: Optional[int] = None,
    target: str = "cpu",
) -> Model:
    """Compiles a model of the spec at ``spec_path`` (its imports are read relative to it).

    Args:
        spec_path: the ``.bb`` file.
        model: the model or model variant to build; default: the spec's last one.
        weights: a seed (int; default 0), a safetensors checkpoint path, or a mapping of
            arrays by state_dict key. Seeded weights equal ``bbc run --seed N``'s.
        dims: size parameters of the inputs, e.g. ``{"H": 64, "W": 64}`` for
            ``input x: f32[B=1, 3, H=224, W=224]``; others keep their defaults.
        args: parameters of the model itself, e.g. ``{"phi": 3}`` or ``{"pool": "mean"}``:
            ints, floats, bools, strs, None and lists of them.
        opt_level: 0 none, 1 cleanup, 2 everything; default 2 (0 on the interp target).
        threads: threads of the cpu target, the calling one included; default all cores.
        target: ``"cpu"`` (native code), ``"interp"`` (the reference interpreter),
            ``"gpu"`` (WGSL on Vulkan) or ``"cuda"``.

    Raises:
        BbcError: the spec, the weights or an option is wrong; the message holds the
            diagnostics as ``bbc`` prints them.
    """
    return _build(spec_path, None, model, weights, dims, args, opt_level, threads, target)


def compile_str(
    text: str,
    model: Optional[str] = None,
    *,
    filename: str = "<string>",
    weights: WeightsSource = None,
    dims: Optional[Mapping[str, int]] = None,
    args: Optional[Mapping[str, ArgValue]] = None,
    opt_level: Optional[int] = None,
    threads: Optional[int] = None,
    target: str = "cpu",
) -> Model:
    """Compiles a model of a spec given as text.

    ``filename`` is the name diagnostics show (``<string>:3:5``); imports are read relative
    to it. The other arguments are those of ``compile``.
    """
    return _build(filename, text, model, weights, dims, args, opt_level, threads, target)


def _build(
    spec: Union[str, "os.PathLike[str]"],
    text: Optional[str],
    model: Optional[str],
    weights: WeightsSource,
    dims: Optional[Mapping[str, int]],
    args: Optional[Mapping[str, ArgValue]],
    opt_level: Optional[int],
    threads: Optional[int],
    target: str,
) -> Model:
    """Compiles with the native module, which takes plain dicts for the mappings."""

    def plain(mapping: Optional[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
        return None if mapping is None else dict(mapping)

    compiled = _compile(
        spec,
        text,
        model=model,
        weights=plain(weights) if isinstance(weights, Mapping) else weights,
        dims=plain(dims),
        args=plain(args),
        opt_level=opt_level,
        threads=threads,
        target=target,
    )
    return Model(compiled)
