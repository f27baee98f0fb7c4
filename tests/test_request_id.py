import re

import pytest

from proxy.pipeline.request_id import RequestIds, normalise_request_id

IDS = RequestIds()

FRESH = re.compile(r"[0-9a-f-]{36}-span-1")


def test_kept_with_span():
    assert normalise_request_id("abc-123-span-7", IDS) == "abc-123-span-7"


def test_span_added():
    assert normalise_request_id("dashboard:42/x+y=.z_", IDS) == "dashboard:42/x+y=.z_-span-1"


@pytest.mark.parametrize("bad", [None, "", "a b", "x" * 129, "évil", "a\nb", "<script>"])
def test_replaced(bad):
    assert FRESH.fullmatch(normalise_request_id(bad, IDS))


def test_max_length_kept():
    assert normalise_request_id("x" * 128, IDS) == "x" * 128 + "-span-1"


def test_fresh_ids_are_unique_and_differ_between_processes():
    ids = RequestIds()
    made = {ids.fresh() for _ in range(10_000)}
    assert len(made) == 10_000 and all(FRESH.fullmatch(i) for i in made)
    assert RequestIds().fresh()[:23] != ids.fresh()[:23]  # another process draws another prefix
