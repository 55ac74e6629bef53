"""What every backbone declares, so the embedder, evaluation and export read it without probing."""
from torch import nn


class Backbone(nn.Module):
    """A speaker-embedding backbone: ``features[B, T, D]`` (and ``lengths[B]`` in frames) -> ``[B, embd_dim]``.

    ``min_frames``: the fewest feature frames it turns into an embedding (its receptive field);
    ``cpu_batch_frames``: None, or the feature frames per forward pass beyond which a CPU batch is
    split (the 2-D ResNets run slower per utterance once a pass outgrows the caches);
    ``exportable``: whether its graph exports (ONNX, OpenVINO) for every length; export refuses
    one that does not at once, instead of converting for minutes to a graph that fails.
    """

    min_frames = 1
    cpu_batch_frames = None
    exportable = True
