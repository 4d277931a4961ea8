#!/usr/bin/env python
"""Which CHORDS stop rule reproduces which of the paper's speedups (no model needed).

    python scripts/paper_stop_rules.py            # markdown table (docs/results.md holds its output)

CHORDS' hit rounds follow from the init sequence alone (Algorithm 1's scheduler): hit 0 (the
coarse shot) at round K, core k at round (k - 1) + N - init_t[k-1]. So a fixed ``core_index``
gives one speedup per (sequence, N), whatever the model. For every speedup the paper publishes
(Tables 1-4, CHORDS rows) this prints the speedups of hits 1 and 2 of the sequence the paper
names, whether one of them rounds to the published value, and otherwise the share p of samples
that must stop at hit 1 (the rest at hit 2) for N / mean round to give it:
p = (N / S - r2) / (r1 - r2). A value strictly between the two fixed-index speedups is what a
per-sample rule (the official residual rule) produces; eval's what-if tables compute that rule
from runs that kept every hit.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from chords import CHORDS  # noqa: E402
from chords.chords import preset_init_sequence, uniform_init_sequence  # noqa: E402

#: (table, model, K, N, sequence kind, published speedup)
PAPER = [
    *[("Table 1", m, k, 50, "preset", s) for m, row in (
        ("HunyuanVideo", (2.1, 2.5, 2.9)), ("Wan2.1", (1.8, 2.3, 2.7)), ("CogVideoX1.5", (2.0, 2.3, 2.4)))
      for k, s in zip((4, 6, 8), row)],
    *[("Table 2", m, k, 50, "preset", s) for m, row in (("SD3.5-Large", (2.0, 2.2, 2.4)), ("Flux", (2.0, 2.3, 2.6)))
      for k, s in zip((4, 6, 8), row)],
    *[("Table 3", m, k, 50, kind, s) for m, rows in (
        ("HunyuanVideo", {8: (2.9, 2.6), 6: (2.5, 2.1), 4: (2.1, 1.8)}), ("Flux", {8: (2.4, 2.2), 6: (2.3, 2.0), 4: (2.0, 1.8)}))
      for k, (ours, uni) in rows.items() for kind, s in (("preset", ours), ("uniform", uni))],
    *[("Table 4", "HunyuanVideo", 8, n, "preset", s) for n, s in ((50, 2.9), (75, 3.4), (100, 3.6))],
]


def rows() -> list[dict]:
    out = []
    for table, model, k, n, kind, published in PAPER:
        init = preset_init_sequence(k, n) if kind == "preset" else uniform_init_sequence(k, n)
        rounds = CHORDS(k, init).hit_rounds(n)
        r1, r2 = rounds[1], rounds[2]
        s1, s2 = n / r1, n / r2
        match = [i for i in (1, 2) if round(n / rounds[i], 1) == published]
        share = (n / published - r2) / (r1 - r2) if r1 != r2 else float("nan")
        out.append(dict(table=table, model=model, k=k, n=n, kind=kind, init="-".join(map(str, init)), published=published,
                        s1=s1, s2=s2, match=match, share=share))
    return out


def markdown() -> str:
    lines = ["| table | model | K | N | sequence | paper | hit 1 | hit 2 | fixed index that gives it | "
             "share at hit 1 (rest at hit 2) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows():
        fixed = ", ".join(f"core_index={i}" for i in r["match"]) or "none"
        share = (f"{100 * r['share']:.0f}%" if 0 <= r["share"] <= 1 else
                 "below hit 2: some samples stop at hit 3 or later" if r["share"] < 0 else "above hit 1")
        lines.append(f"| {r['table']} | {r['model']} | {r['k']} | {r['n']} | {r['kind']} {r['init']} | {r['published']} | "
                     f"{r['s1']:.2f} | {r['s2']:.2f} | {fixed} | {share if not r['match'] else '-'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()),
                                 epilog="Prints the markdown table that docs/results.md holds; takes no options.")
    ap.parse_args(argv)
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
