"""Placement's own gabbi files (from the pinned wheel) against ``unicell serve``.

Each YAML file runs against a fresh server (see ``fixtures.py``). The files run are those whose
fixtures ``fixtures.py`` provides (``RUN_FILES``); every other upstream file is listed in
``NOT_RUN`` with the reason. Tests unicell deliberately does not pass are in
``expected_failures.EXPECTED_FAILURES`` with their reasons; they are strict expected failures,
so one that starts passing fails the run until it is taken off the list.

Environment:
* ``UNICELL_GABBI_FILES``: comma-separated file names (``inventory.yaml``) to run a subset.
* ``UNICELL_GABBI_STORE``: store URL for the servers (default ``memory://``).
* ``UNICELL_GABBI_LOG``: file the servers' logs are appended to.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import unittest

import pytest
from gabbi import driver

from . import fixtures, server, upstream

#: Files whose fixtures unicell provides (every upstream file using plain ``APIFixture``, and
#: those using fixtures rebuilt over HTTP).
RUN_FILES = [
    # APIFixture
    "aggregate.yaml",
    "allocation-bad-class.yaml",
    "allocations-1-12.yaml",
    "allocations-1-8.yaml",
    "allocations-bug-1714072.yaml",
    "allocations-bug-1778591.yaml",
    "allocations-bug-1778743.yaml",
    "allocations-bug-1779717.yaml",
    "allocations-post.yaml",
    "allocations.yaml",
    "basic-http.yaml",
    "bug-1674694.yaml",
    "confirm-auth.yaml",
    "inventory.yaml",
    "microversion-bug-1724065.yaml",
    "microversion.yaml",
    "non-cors.yaml",
    "resource-class-in-use.yaml",
    "resource-classes-1-6.yaml",
    "resource-classes-1-7.yaml",
    "resource-classes-last-modified.yaml",
    "resource-classes.yaml",
    "resource-provider-aggregates.yaml",
    "resource-provider-bug-1779818.yaml",
    "resource-provider-duplication.yaml",
    "resource-provider-links.yaml",
    "resource-provider.yaml",
    "shared-resources.yaml",
    "traits.yaml",
    "unicode.yaml",
    "usage.yaml",
    # AllocationFixture (data created over HTTP)
    "allocations-1.28.yaml",
    "consumer-types-1.38.yaml",
    "consumer-types-bug-story-2009167.yaml",
    "ensure-consumer.yaml",
    "resource-provider-resources-query.yaml",
    "with-allocations.yaml",
]

_POLICY = ("exercises oslo.policy rules and roles (reader/member/admin, system scope) that unicell's "
           "noauth2 (admin or project member) does not model")
#: Upstream files not run, with the reason.
NOT_RUN = {
    "cors.yaml": "CORS middleware configuration is not part of unicell",
    "reshaper.yaml": "POST /reshaper is not implemented",
    "granular.yaml": "fixture GranularFixture (sharing providers via MISC_SHARES_VIA_AGGREGATE) not rebuilt: unicell has no sharing providers",
    "resource-provider-any-traits.yaml": "fixture GranularFixture not rebuilt (sharing providers)",
    "allocation-candidates.yaml": "fixture SharedStorageFixture: sharing providers, which unicell does not support",
    "allocation-candidates-member-of.yaml": "fixture NonSharedStorageFixture not rebuilt yet",
    "allocation-candidates-any-traits.yaml": "fixture GranularFixture not rebuilt (sharing providers)",
    "allocation-candidates-any-traits-groups.yaml": "fixture NeutronQoSMultiSegmentFixture not rebuilt yet",
    "allocation-candidates-bug-1792503.yaml": "fixture NUMAAggregateFixture: sharing providers",
    "allocation-candidates-mappings-numa.yaml": "fixture NUMANetworkFixture not rebuilt yet",
    "allocation-candidates-mappings-sharing.yaml": "fixture GranularFixture: sharing providers",
    "allocation-candidates-root-required.yaml": "fixture NUMANetworkFixture not rebuilt yet",
    "allocations-mappings.yaml": "fixture NUMANetworkFixture not rebuilt yet",
    "granular-same-subtree.yaml": "fixture NUMANetworkFixture not rebuilt yet",
    "same-subtree-deep.yaml": "fixture DeepNUMANetworkFixture not rebuilt yet",
    **{f: _POLICY for f in (
        "aggregate-legacy-rbac.yaml", "aggregate-policy.yaml", "aggregate-secure-rbac.yaml",
        "allocation-candidates-legacy-rbac.yaml", "allocation-candidates-policy.yaml",
        "allocation-candidates-secure-rbac.yaml", "allocations-legacy-rbac.yaml",
        "allocations-policy.yaml", "allocations-secure-rbac.yaml", "inventory-legacy-rbac.yaml",
        "inventory-policy.yaml", "inventory-secure-rbac.yaml", "reshaper-legacy-rbac.yaml",
        "reshaper-policy.yaml", "reshaper-secure-rbac.yaml", "resource-classes-legacy-rbac.yaml",
        "resource-classes-policy.yaml", "resource-classes-secure-rbac.yaml",
        "resource-provider-legacy-rbac.yaml", "resource-provider-policy.yaml",
        "resource-provider-secure-rbac.yaml", "traits-legacy-rbac.yaml", "traits-policy.yaml",
        "traits-secure-rbac.yaml", "usage-legacy-rbac.yaml", "usage-policy.yaml",
        "usage-secure-rbac.yaml")},
}

PORT = int(os.environ.setdefault("UNICELL_GABBI_PORT", str(server.free_port())))


def _selected_dir() -> pathlib.Path:
    """A directory holding the upstream files this run executes."""
    src = upstream.gabbits_dir()
    wanted = [f.strip() for f in os.environ.get("UNICELL_GABBI_FILES", "").split(",") if f.strip()]
    unknown = [f for f in wanted if f not in RUN_FILES]
    if unknown:
        raise ValueError(f"UNICELL_GABBI_FILES names files not in RUN_FILES: {unknown}")
    missing = sorted(set(RUN_FILES) - {p.name for p in src.glob('*.yaml')})
    if missing:
        raise RuntimeError(f"the pinned wheel lacks {missing}")
    out = upstream.CACHE / "run"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for name in wanted or RUN_FILES:
        shutil.copy(src / name, out / name)
    return out


def _cases():
    """`(id, suite, case)` for every upstream test, in file order.

    gabbi's own pytest plugin is not used: it is global once loaded and misreads other test
    modules' parametrized ids that contain a colon. Suites (one per YAML file) are started
    and stopped here instead (``_Suites``)."""
    top = driver.build_tests(str(_selected_dir()), unittest.TestLoader(), host="127.0.0.1", port=PORT,
                             fixture_module=fixtures, test_loader_name="placement")
    out = []
    for suite in top:
        for case in suite:
            out.append((f"placement:{type(case).__name__}", suite, case))
    return out


class _Suites:
    """The one suite (YAML file) whose fixtures (its fresh server) are running.

    Every file uses the same port, so a suite is stopped before the next one starts; a test
    selection (``-k``) that skips tests still starts each suite before its first test runs."""

    current = None

    @classmethod
    def enter(cls, suite) -> None:
        if cls.current is suite:
            return
        cls.stop()
        suite.start(unittest.TestResult())
        cls.current = suite

    @classmethod
    def stop(cls) -> None:
        if cls.current is not None:
            cls.current.stop()
            cls.current = None


@pytest.fixture(scope="module", autouse=True)
def _stop_last_suite():
    yield
    _Suites.stop()


_CASES = _cases()


@pytest.mark.parametrize("case", [c for _, _, c in _CASES], ids=[i for i, _, _ in _CASES])
def test_gabbi(case):
    suite = next(s for _, s, c in _CASES if c is case)
    _Suites.enter(suite)
    result = unittest.TestResult()
    case.run(result)
    for _, reason in result.skipped:
        pytest.skip(reason)
    problems = [text for _, text in result.errors + result.failures]
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_every_upstream_file_is_accounted_for():
    """Every upstream gabbi file is either run or listed with the reason it is not."""
    names = {p.name for p in upstream.gabbits_dir().glob("*.yaml")}
    assert names == set(RUN_FILES) | set(NOT_RUN), (
        f"unaccounted: {sorted(names - set(RUN_FILES) - set(NOT_RUN))}, "
        f"stale: {sorted((set(RUN_FILES) | set(NOT_RUN)) - names)}")
