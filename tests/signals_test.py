"""The base of the signal handlers of training and the study (training/signals.py), on harmless signals."""

import os
import signal
import threading

from segrecon_jax.training import signals


class _Recorder(signals.SignalHandlers):
  SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)

  def __init__(self):
    self.received = []

  def _handle(self, signum, frame):
    del frame
    self.received.append(signum)


class _KeepsIgnored(_Recorder):
  KEEP_IGNORED = True


def test_handlers_last_the_block_and_an_ignored_signal_stays_ignored_where_asked():
  previous = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
  before = signal.getsignal(signal.SIGUSR1)
  try:
    with _KeepsIgnored() as keeps_ignored:
      os.kill(os.getpid(), signal.SIGUSR1)
      os.kill(os.getpid(), signal.SIGUSR2)  # Ignored on entry: still ignored.
    with _Recorder() as handles_both:
      os.kill(os.getpid(), signal.SIGUSR2)
    assert keeps_ignored.received == [signal.SIGUSR1] and handles_both.received == [signal.SIGUSR2]
    assert signal.getsignal(signal.SIGUSR1) is before and signal.getsignal(signal.SIGUSR2) is signal.SIG_IGN
  finally:
    signal.signal(signal.SIGUSR2, previous)


def test_outside_the_main_thread_nothing_is_installed():
  before = signal.getsignal(signal.SIGUSR1)
  seen = []

  def enter():
    with _Recorder():
      seen.append(signal.getsignal(signal.SIGUSR1))

  thread = threading.Thread(target=enter)
  thread.start()
  thread.join()
  assert seen == [before]
