#!/usr/bin/env python3
"""Compares pytest JUnit XML reports of one suite run directly and through the proxy.

Usage: junit_diff.py DIRECT.xml OTHER.xml... (missing files are skipped)

Prints pass/fail/error/skip counts per report and every test whose outcome in a proxied run
differs from the direct run, with the first line of its failure message. Exits 1 if any test
that passes directly does not pass through the proxy.
"""

import os
import sys
import xml.etree.ElementTree as ET


def outcomes(path):
    """{test id: (outcome, message)} of one report."""
    result = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                message = (child.get("message") or child.text or "").strip().splitlines()
                message = message[0][:160] if message else ""
                if outcome != "skipped":
                    break
        # A test that failed and then errored in teardown is reported twice; keep the worst.
        if name not in result or result[name][0] in ("passed", "skipped"):
            result[name] = (outcome, message)
    return result


def counts(res):
    c = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for outcome, _ in res.values():
        c[outcome] += 1
    return c


def main(paths):
    paths = [p for p in paths if os.path.exists(p)]
    if not paths:
        print("no reports")
        return 2
    runs = [(os.path.basename(p).rsplit(".", 1)[0], outcomes(p)) for p in paths]
    for label, res in runs:
        c = counts(res)
        print(f"{label}: {c['passed']} passed, {c['failed']} failed, {c['error']} errors, {c['skipped']} skipped")
    base_label, base = runs[0]
    worse = 0
    for label, res in runs[1:]:
        diffs = []
        for name in sorted(set(base) | set(res)):
            want = base.get(name, ("missing", ""))
            got = res.get(name, ("missing", ""))
            if want[0] != got[0]:
                diffs.append((name, want, got))
                if want[0] == "passed":
                    worse += 1
        print(f"\n{label} vs {base_label}: {len(diffs)} differences")
        for name, want, got in diffs:
            print(f"  {name}: {want[0]} -> {got[0]}")
            if got[1]:
                print(f"      {got[1]}")
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
