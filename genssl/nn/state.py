"""Loading weights into a network with one clear error that lists what does not match."""

from __future__ import annotations

import torch
from torch import nn

from genssl.fileio import CheckpointError


def load_state_checked(net: nn.Module, state, where: str) -> None:
    """load_state_dict with one clear error listing missing and unexpected keys and shape mismatches."""
    # Modules may keep non-tensor state under "<prefix>_extra_state" (nn.Module.get_extra_state), e.g. the
    # EMA's update count; everything else must be a tensor.
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and (isinstance(v, torch.Tensor) or k.endswith("_extra_state"))
            for k, v in state.items()):
        raise CheckpointError(f"{where}: expected a state_dict (a dict of name -> tensor), got "
                              f"{type(state).__name__}" + (f" with keys {list(state)[:5]}" if isinstance(state, dict) else ""))
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs net {tuple(own[k].shape)}"
              for k in own if k in state and isinstance(own[k], torch.Tensor)
              and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def show(items):
            return ", ".join(items[:6]) + (f" ... ({len(items)} in all)" if len(items) > 6 else "")
        parts = ([f"missing keys: {show(missing)}"] if missing else []) + \
                ([f"unexpected keys: {show(unexpected)}"] if unexpected else []) + \
                ([f"shape mismatches: {show(shapes)}"] if shapes else [])
        raise CheckpointError(f"{where}: the weights do not match the architecture {type(net).__name__}; "
                              + "; ".join(parts))
    net.load_state_dict(state)
