"""RWKV-7 ("x070") on the CPU: a recurrent LM whose state stays constant in size.

    from edgewise.rwkv import RWKV
    model = RWKV.load("model.pth", quant="int8")
    logits, state = model.forward(tokens)
"""

from edgewise.rwkv.runtime import RWKV
from edgewise.rwkv.state import RWKVState

__all__ = ["RWKV", "RWKVState"]
