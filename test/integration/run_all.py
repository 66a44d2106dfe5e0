#!/usr/bin/env python3
"""Run every test_*.py here, each in its own process with a timeout, and summarise.

    PGW_BIN=build/prequal-gw PGW_BACKEND=build/pgw-backend python3 test/integration/run_all.py [names...]

(CTest runs the same files one by one; this is for a quick local loop.)"""

import glob
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    names = sys.argv[1:]
    files = sorted(glob.glob(os.path.join(HERE, "test_*.py")))
    if names:
        files = [f for f in files if any(n in os.path.basename(f) for n in names)]
    results = []
    for f in files:
        t0 = time.monotonic()
        try:
            p = subprocess.run([sys.executable, f], timeout=300)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
        results.append((os.path.basename(f), rc, time.monotonic() - t0))
    print("\nsummary:")
    for name, rc, dt in results:
        print("  %-24s %-8s %6.1fs" % (name, "ok" if rc == 0 else "FAIL(%s)" % rc, dt))
    sys.exit(0 if all(rc == 0 for _, rc, _ in results) else 1)


if __name__ == "__main__":
    main()
