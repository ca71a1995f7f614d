"""Coupled channel groups of a TorchScript model, and removing channels from them.

- `analyse(model, sample_inputs, protect)`: which channels must go together, and which must stay.
- `magnitude_scores` / `activation_scores`: importance of each removable component.
- `remove_components(model, analysis, removed)`: slice the parameters and rewrite baked shapes.
- `pruned_consumers` / `reconstruct`: refit the layers that lost input channels by least squares.
- `recalibrate_batchnorm(model, batch)`: re-estimate BatchNorm statistics once channels are gone.
- `set_tensor_attribute(model, path, tensor)`: replace a parameter/buffer of a ScriptModule by dotted name.
"""

from . import handlers as _handlers  # noqa: F401  (registers the op handlers)
from . import layout_handlers as _layout_handlers  # noqa: F401  (and those that move the channel dim)
from .analysis import ChannelAnalysis, ChannelGroup, analyse
from .apply import remove_components, set_tensor_attribute
from .batchnorm import recalibrate_batchnorm
from .importance import activation_scores, magnitude_scores
from .reconstruction import Refit, pruned_consumers, reconstruct

__all__ = [
    "ChannelAnalysis", "ChannelGroup", "analyse", "remove_components", "set_tensor_attribute", "activation_scores", "magnitude_scores",
    "recalibrate_batchnorm", "Refit", "pruned_consumers", "reconstruct",
]
