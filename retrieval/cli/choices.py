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
