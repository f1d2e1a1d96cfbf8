"""Signal handlers installed for the length of a `with` block: training's stop request (train.StopSignals) and the
study's forwarding to its runs (study.runner.ForwardedSignals)."""

import signal
import threading
from typing import Dict, Tuple


class SignalHandlers:
  """The base of `with Handlers() as handlers:`, in which `_handle(signum, frame)` handles each of `SIGNALS`.

  Handlers are installed from the main thread only (Python's rule: elsewhere the block handles nothing) and the
  previous ones come back at exit. With `KEEP_IGNORED`, a signal the process was started ignoring (nohup, a
  background job of a script) stays ignored.
  """

  SIGNALS: Tuple[int, ...] = ()
  KEEP_IGNORED = False

  def __enter__(self):
    self._previous: Dict[int, object] = {}
    if threading.current_thread() is threading.main_thread():
      for signum in self.SIGNALS:
        if not (self.KEEP_IGNORED and signal.getsignal(signum) is signal.SIG_IGN):
          self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous.clear()

  def _handle(self, signum, frame) -> None:
    raise NotImplementedError
