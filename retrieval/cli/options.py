"""Text options shared by several commands, parsed one way (a bad value is a usage error, exit 2)."""

from __future__ import annotations

from typing import Callable, Optional, TypeVar

from retrieval.errors import OptionError

Number = TypeVar("Number", int, float)


def at_least(minimum: Number, option: str) -> Callable[[Optional[Number]], Optional[Number]]:
    """A typer callback: values below ``minimum`` are a usage error in the product's one wording
    ("invalid value for --k: must be at least 1, got 0"), the same as the jobs' own checks."""

    def check(value: Optional[Number]) -> Optional[Number]:
        if value is not None and value < minimum:
            raise OptionError(f"must be at least {minimum}, got {value}", option)
        return value

    return check


def parse_int_list(text: str, option: str, example: str) -> list[int]:
    """Comma-separated integers (``"1,5,10"``), in the order given."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise OptionError(f"expected comma-separated integers such as {example}, got {text!r}", option) from None


def parse_junk_pids(text: str) -> tuple[int, ...]:
    """``--junk-pids``: comma-separated identities removed from every ranking; 'none' (or '') for none."""
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(sorted(set(parse_int_list(text, "--junk-pids", "-1 (or 'none')"))))


def parse_cmc_ranks(text: str) -> tuple[int, ...]:
    ranks = sorted(set(parse_int_list(text, "--cmc-ranks", "1,5,10,20")))
    if not ranks or ranks[0] < 1:
        raise OptionError(f"ranks must be integers ≥ 1, got {text!r}", "--cmc-ranks")
    return tuple(ranks)


def parse_fars(text: str, name: str = "FAR", option: str = "--far") -> tuple[float, ...]:
    """Comma-separated false-accept (or false-positive identification) rate targets in (0, 1)."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise OptionError(f"expected comma-separated numbers such as 1e-1,1e-3, got {text!r}", option) from None
    if not values or any(not 0 < v < 1 for v in values):
        raise OptionError(f"{name} targets must lie strictly between 0 and 1, got {text!r}", option)
    return tuple(values)


OVERWRITE_HELP = "Replace an existing output (default: an existing --out is refused)."

RAY_HELP = ("Run on Ray (needs retrieve[ray]): local[:N] starts Ray on this machine with N CPUs for this command; "
            "auto joins the cluster RAY_ADDRESS names (else the `ray start` head here); HOST:PORT joins that cluster. "
            "Results are identical to one process.")
