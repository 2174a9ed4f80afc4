"""The driver's stop signals (scheduler.driver.StopRequest), sent to this very process."""

import os
import signal

import pytest

from scheduler.driver import StopRequest


@pytest.fixture
def dispositions():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


def test_sighup_twice_asks_once_and_never_kills(dispositions):
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGHUP)  # a closing SSH session may send two
        assert stop.requested and stop.signal_name == "SIGHUP" and not stop.forced
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL  # restored


def test_a_second_sigterm_forces(dispositions):
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and not stop.forced
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.forced


def test_nohup_keeps_sighup_ignored_but_sigint_is_always_heard(dispositions):
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job of a shell
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGHUP)
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signal_name == "SIGINT"
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
