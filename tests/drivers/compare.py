"""Shared by the driver suites: their command line, and judging one check's direct and
proxied outcomes."""

import argparse


def parse_args():
    """`--direct DSN --proxy DSN [--mode transaction|session] [--only NAME] [-v]`."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--direct", required=True)
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--mode", default="transaction")
    ap.add_argument("--only", default=None)
    ap.add_argument("-v", action="store_true")
    return ap.parse_args()


def report(name, want, got, seconds, verbose):
    """Prints the verdict of one check; True if direct and proxy agree (and neither timed out
    or raised outside the check)."""
    failed_run = isinstance(want, tuple) and want and want[0] in ("TIMEOUT", "exception")
    if want == got and not failed_run:
        print(f"ok {name} ({seconds:.1f}s)")
        if verbose:
            print(f"   {want!r}")
        return True
    print(f"MISMATCH {name} ({seconds:.1f}s)\n   direct: {want!r}\n   proxy:  {got!r}")
    return False
