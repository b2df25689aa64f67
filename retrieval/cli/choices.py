"""Option choices shared by several commands (one definition, the same spelling everywhere)."""

from enum import Enum


class DeviceName(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class ProtocolName(str, Enum):
    market = "market"
    no_camera = "no-camera"
    leave_one_out = "leave-one-out"


class SimilarityMetric(str, Enum):
    """identify / cluster: cosine (1 − cos, reported as a similarity by identify) or euclidean."""

    cosine = "cosine"
    euclidean = "euclidean"
