"""Text options shared by several commands, parsed one way (a bad value is a usage error, exit 2)."""

from __future__ import annotations

import typer


def parse_int_list(text: str, option: str, example: str) -> list[int]:
    """Comma-separated integers (``"1,5,10"``), in the order given."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers such as {example}, got {text!r}",
                                 param_hint=option) from None


def parse_junk_pids(text: str) -> tuple[int, ...]:
    """``--junk-pids``: comma-separated identities removed from every ranking; 'none' (or '') for none."""
    if text.strip().lower() in ("", "none"):
        return ()
    return tuple(sorted(set(parse_int_list(text, "--junk-pids", "-1 (or 'none')"))))


def parse_cmc_ranks(text: str) -> tuple[int, ...]:
    ranks = sorted(set(parse_int_list(text, "--cmc-ranks", "1,5,10,20")))
    if not ranks or ranks[0] < 1:
        raise typer.BadParameter(f"ranks must be integers ≥ 1, got {text!r}", param_hint="--cmc-ranks")
    return tuple(ranks)


def parse_fars(text: str) -> tuple[float, ...]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers such as 1e-1,1e-3, got {text!r}",
                                 param_hint="--far") from None
    if not values or any(not 0 < v < 1 for v in values):
        raise typer.BadParameter(f"FAR targets must lie strictly between 0 and 1, got {text!r}", param_hint="--far")
    return tuple(values)


OVERWRITE_HELP = "Replace an existing output (default: an existing --out is refused)."

RAY_HELP = ("Run on Ray (needs retrieve[ray]): local[:N] starts Ray on this machine with N CPUs for this command; "
            "auto joins the cluster RAY_ADDRESS names (else the `ray start` head here); HOST:PORT joins that cluster. "
            "Results are identical to one process.")
