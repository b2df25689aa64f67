"""Command start-up: `retrieve --version` and `retrieve --help`, whole process, min of N.

    bench/peers/.venv/bin/python bench/peers/bench_startup.py [--repeats 5]

With the interpreter's own start (``python -c pass``) and ``import numpy`` as floors, each a
process of its own, interleaved. Writes bench/results/peers_startup.json.
"""

from __future__ import annotations

import argparse

import ours
from harness import (PYTHON, Contender, bench_status, fmt, machine_info, require_venv, run_rounds, summarise, table,
                     write_results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    require_venv()
    cs = [Contender("python -c pass", "the interpreter alone", lambda r: [str(PYTHON), "-c", "pass"], kind="floor"),
          Contender("python -c 'import numpy'", "the interpreter + numpy", lambda r: [str(PYTHON), "-c", "import numpy"],
                    kind="floor")]
    cs += [Contender(name, name, lambda r, argv=argv: argv, kind="ours") for name, argv in ours.startup_argvs().items()]
    runs = run_rounds(cs, args.repeats, mem_cap_bytes=None)
    rows = [summarise(c, runs[c.name]) for c in cs]
    print(table([[r["name"], fmt(r.get("wall_s"), ".3f"), fmt(r.get("peak_rss_mb"), ".0f"), r.get("error") or ""]
                 for r in rows], ["command", f"wall s (min of {args.repeats})", "peak RSS MB", "error"]))
    path = write_results("startup", {"status": bench_status(), "machine": machine_info(), "repeats": args.repeats,
                                     "rows": rows})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
