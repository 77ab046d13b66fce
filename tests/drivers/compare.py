"""Shared by the driver suites: judging one check's direct and proxied outcomes."""


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
