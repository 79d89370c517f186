"""ledger/collector.py: the collector is off inside `paused()` and as it was after, however the
work ended; a collector turned off by something else stays off."""

import gc

import pytest

from ledger import collector


@pytest.fixture(autouse=True)
def collector_restored():
    yield
    gc.enable()


@pytest.mark.parametrize("enabled", [True, False], ids=["on before", "off before"])
@pytest.mark.parametrize("fails", [False, True], ids=["returned", "raised"])
def test_the_collector_is_off_inside_and_as_it_was_after(enabled, fails):
    (gc.enable if enabled else gc.disable)()
    inside = []

    @collector.paused()
    def work():
        inside.append(gc.isenabled())
        if fails:
            raise RuntimeError("the work failed")

    for _ in range(2):  # as a decorator, each call pauses it anew
        if fails:
            with pytest.raises(RuntimeError, match="the work failed"):
                work()
        else:
            work()
        assert gc.isenabled() is enabled
    assert inside == [False, False]


def test_a_pause_inside_another_leaves_the_collector_off_until_the_outer_one_ends():
    gc.enable()
    with collector.paused():
        with collector.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()
