"""Run a script (as ``python SCRIPT ARGS...`` would) and write its peak host memory as JSON.

    python tools/peak_memory.py OUT.json SCRIPT [ARGS...]

OUT.json gets {"peak_host_gib_main_process": ..., "peak_host_gib_largest_worker": ...} (the
largest resident set of this process and of its largest finished child, e.g. a data-loader
worker), written even when the script fails; the exit status is the script's.
"""
import json
import os
import resource
import runpy
import sys


def peak_gib():
    return {f"peak_host_gib_{name}": round(resource.getrusage(who).ru_maxrss / 2 ** 20, 3)
            for name, who in (("main_process", resource.RUSAGE_SELF), ("largest_worker", resource.RUSAGE_CHILDREN))}


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__.strip().splitlines()[2].strip())
    out, script, args = argv[0], argv[1], argv[2:]
    sys.argv = [script, *args]
    # the script imports its neighbours, as under `python SCRIPT` (sys.path[0] is its folder)
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        with open(out, "w") as f:
            json.dump(peak_gib(), f)


if __name__ == "__main__":
    main(sys.argv[1:])
