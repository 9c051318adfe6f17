"""Type stub of the compiled fused trainer ``fastnn._ext.train`` (kernels/train/train.pyx).

The public names fastnn's Python code uses; ``__getattr__`` covers the private
helpers the tests call, so a new one needs no stub change."""
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

_F32 = npt.NDArray[np.float32]

MAX_LAYERS: int
PROFILE_SLOTS: int
OPT_KINDS: Dict[str, int]

def u8_to_f32(src: npt.NDArray[np.uint8], dst: _F32) -> None: ...
def simd_level() -> int: ...
def set_simd_level(level: int) -> int: ...
def simd_name() -> str: ...

class GradSignal:
    nlayers: int
    def __init__(self) -> None: ...
    def reset(self, nlayers: int) -> None: ...
    def finish(self, ok: bool = ...) -> None: ...
    def wait(self, layer: int, timeout: float = ...) -> bool: ...
    def order(self) -> List[int]: ...

class Trainer:
    batch: int
    dims: Tuple[int, ...]
    def __init__(self, dims: Sequence[int], relu: Sequence[bool], has_bias: Sequence[bool],
                 batch: int) -> None: ...
    def phase_names(self) -> List[str]: ...
    # returns (loss_sum, correct, steps, chunks that finished on one thread)
    def run(self, W: Sequence[_F32], b: Sequence[Optional[_F32]],
            s1W: Sequence[Optional[_F32]], s1b: Sequence[Optional[_F32]],
            s2W: Sequence[Optional[_F32]], s2b: Sequence[Optional[_F32]],
            x: npt.NDArray[Any], x_u8: bool, x_ld: int, y: npt.NDArray[np.int64],
            idx: npt.NDArray[np.int64], kind: str, lr: float, weight_decay: float = ...,
            momentum: float = ..., dampening: float = ..., nesterov: bool = ...,
            beta1: float = ..., beta2: float = ..., eps: float = ..., step: int = ...,
            nthreads: int = ..., lrs: Optional[_F32] = ...,
            profile: Optional[npt.NDArray[np.float64]] = ...) -> Tuple[float, int, int, int]: ...

    # returns (loss_sum, correct, the loss is finite)
    def grad_step(self, W: Optional[Sequence[_F32]], b: Optional[Sequence[Optional[_F32]]],
                  gW: Sequence[_F32], gb: Sequence[Optional[_F32]],
                  x: npt.NDArray[Any], x_u8: bool, x_ld: int, y: npt.NDArray[np.int64],
                  idx: npt.NDArray[np.int64], inv_b: float,
                  nthreads: int = ..., signal: Optional["GradSignal"] = ...
                  ) -> Tuple[float, int, bool]: ...
    def grad_apply(self, W: Sequence[_F32], b: Sequence[Optional[_F32]],
                   s1W: Sequence[Optional[_F32]], s1b: Sequence[Optional[_F32]],
                   s2W: Sequence[Optional[_F32]], s2b: Sequence[Optional[_F32]],
                   gW: Sequence[_F32], gb: Sequence[Optional[_F32]], kind: str, lr: float,
                   weight_decay: float = ..., momentum: float = ..., dampening: float = ...,
                   nesterov: bool = ..., beta1: float = ..., beta2: float = ...,
                   eps: float = ..., step: int = ..., nthreads: int = ..., nsrc: int = ...,
                   src_stride: int = ...) -> None: ...

def __getattr__(name: str) -> Any: ...
