"""The layer forms of issue 17 against both oracles: GNU tar and Go's archive/tar (docker's reader).

Every check is :func:`tests.oracles.tar_oracles.check_archive`: what both readers accept alike we
accept; what we accept, Go reads with exactly our entries (names, types, sizes, modes, ids, times,
links, owner names, devices, xattrs, file data) and GNU tar with as many members; every byte comes
back from our events; a refusal is one line. The archives: each class of
:mod:`tests.oracles.tarbuild` (which must all be accepted), mutations of them, and Go's own tar
test suite (``GOROOT/src/archive/tar/testdata``), which no one here wrote.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from tests.oracles.tar_oracles import TAR, GoLister, check_archive, go_testdata
from tests.oracles.tarbuild import CLASSES, Built, archives, mutations

pytestmark = pytest.mark.skipif(TAR is None, reason="needs GNU tar")
_SETTINGS = settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("cls", CLASSES)
def test_generated_forms_are_accepted_and_read_like_go(go_tar: GoLister, cls: str) -> None:
    @_SETTINGS
    @given(archives(cls))
    def check(built: Built) -> None:
        verdict = check_archive(built.data, go_tar)
        assert verdict.accepted, "a generated archive of an accepted form was refused"

    check()


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(mutations())
def test_mutated_forms_never_smuggle_and_refuse_in_one_line(go_tar: GoLister, data: bytes) -> None:
    check_archive(data, go_tar)


# Go's suite: what both readers accept (Go reads to the end, GNU tar exits 0), and what not.
GO_SUITE_ACCEPTED = {
    "file-and-dir.tar", "gnu-incremental.tar", "gnu-long-nul.tar", "gnu-multi-hdrs.tar",
    "gnu-nil-sparse-data.tar", "gnu-nil-sparse-hole.tar", "gnu-not-utf8.tar",
    "gnu-sparse-big.tar", "gnu-utf8.tar", "gnu.tar", "hardlink.tar", "invalid-go17.tar",
    "nil-uid.tar", "pax-global-records.tar", "pax-multi-hdrs.tar", "pax-nil-sparse-data.tar",
    "pax-nil-sparse-hole.tar", "pax-path-hdr.tar", "pax-pos-size-file.tar", "pax-records.tar",
    "pax-sparse-big.tar", "pax.tar", "sparse-formats.tar", "star.tar", "trailing-slash.tar",
    "ustar-file-devs.tar", "ustar-file-reg.tar", "ustar.tar", "v7.tar", "writer.tar", "xattrs.tar",
}  # fmt: skip


def test_go_suite(go_tar: GoLister) -> None:
    testdata = go_testdata()
    assert testdata is not None
    accepted = set()
    for path in sorted(testdata.glob("*.tar")):
        verdict = check_archive(path.read_bytes(), go_tar)
        assert verdict.accepted == verdict.must_accept, path.name
        if verdict.accepted:
            accepted.add(path.name)
    assert accepted == GO_SUITE_ACCEPTED
