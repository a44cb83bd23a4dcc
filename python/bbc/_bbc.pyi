"""Types of the native half of the package (python/src/lib.rs); use `bbc` itself."""

import os
from typing import Any, List, Mapping, Optional, Tuple, Union

import numpy as np

class BbcError(Exception): ...
class InputError(BbcError, ValueError): ...

class CompiledModel:
    @property
    def name(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def inputs(self) -> List[Tuple[str, List[int]]]: ...
    @property
    def outputs(self) -> List[Tuple[str, List[int]]]: ...
    def run(self, inputs: List[Any]) -> List[np.ndarray]: ...

def compile(
    spec: Union[str, "os.PathLike[str]"],
    text: Optional[str] = None,
    *,
    model: Optional[str] = None,
    weights: Any = None,
    dims: Optional[Mapping[str, int]] = None,
    args: Optional[Mapping[str, Any]] = None,
    opt_level: Optional[int] = None,
    threads: Optional[int] = None,
    target: str = "cpu",
) -> CompiledModel: ...
