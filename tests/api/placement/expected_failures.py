"""Upstream gabbi tests unicell deliberately does not pass, each with the reason.

Keys are ``(file, test name as written in the YAML)``. The harness turns each into a strict
expected failure: if the test starts passing, the run fails until the entry is removed.
"""

EXPECTED_FAILURES: dict[tuple[str, str], str] = {
}
