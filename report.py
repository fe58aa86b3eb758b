"""Summarise result records (JSON lines written by the forget_*_main.py scripts) as a table.

python report.py results/results.jsonl [more.jsonl ...]
Rows: setting, data set, net and method; values: mean ± std over every record in the group
(seeds and forget targets). Dr = RetainTestAcc, Df and accuracies in %, MIA a fraction,
time = MethodTime in seconds (the method alone, without evaluation).
"""
import math
from collections import OrderedDict

from utils import Parser, UserError, cli, read_records

COLUMNS = [("Dr", "RetainTestAcc", "{:.2f}"), ("Df", "Df", "{:.2f}"), ("MIA", "MIA", "{:.3f}"),
           ("Test", "TestAcc", "{:.2f}"), ("time (s)", "MethodTime", "{:.2f}")]


def mean_std(values):
    n = len(values)
    m = sum(values) / n
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return m, s


def summarise(records):
    groups = OrderedDict()
    for r in records:
        groups.setdefault((r["setting"], r["dataset"], r["net"], r["method"]), []).append(r)
    rows = []
    for (setting, dataset, net, method), rs in groups.items():
        row = OrderedDict(setting=setting, dataset=dataset, net=net, method=method, n=len(rs))
        for name, key, fmt in COLUMNS:
            m, s = mean_std([float(r[key]) for r in rs])
            row[name] = fmt.format(m) if len(rs) == 1 else f"{fmt.format(m)} ± {fmt.format(s)}"
        rows.append(row)
    return rows


def markdown(rows):
    if not rows:
        return "(no records)"
    head = list(rows[0])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(r[h]) for h in head) + " |" for r in rows]
    return "\n".join(lines)


def main():
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", help="results JSON-lines files")
    args = p.parse_args()
    records = []
    for f in args.files:
        rs = read_records(f)
        if not rs:
            raise UserError(f"no records in {f}")
        records += rs
    print(markdown(summarise(records)))


if __name__ == "__main__":
    cli(main)
