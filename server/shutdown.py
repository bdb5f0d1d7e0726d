"""Graceful shutdown: on SIGTERM (or Ctrl-C), stop taking work, finish what is in flight, exit 0.

uvicorn alone closes its listening socket at once and, once done, raises the signal again, so a
supervisor sees the process killed by it. kiln drains instead: `/health` turns 503 and every new
request is answered 503 ("shutting down") while the requests already admitted finish, for up to
`KILN_SHUTDOWN_GRACE` seconds; then uvicorn shuts down and the process exits 0. A second signal
stops at once.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType

import uvicorn

from server.service import Service

log = logging.getLogger("kiln.server")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Service, grace_s: float) -> None:
        super().__init__(config)
        self.service, self.grace_s = service, grace_s
        self.asked = 0.0

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        if self.service.closing:
            # A SIGTERM to a process group reaches the server twice (once from `make`, say): a
            # repeat within a second is the same request; a later one, or Ctrl-C, stops at once.
            if sig == signal.SIGTERM and now - self.asked < 1.0:
                return
            self.should_exit = self.force_exit = True
            return
        self.service.closing, self.asked = True, now
        threading.Thread(target=self._drain, name="kiln-drain", daemon=True).start()

    def _drain(self) -> None:
        deadline = time.monotonic() + self.grace_s
        admission = self.service.admission
        if admission.admitted:
            log.info("shutting down: %d request(s) in flight, up to %.0f s to finish", admission.admitted, self.grace_s)
        while admission.admitted and time.monotonic() < deadline:
            time.sleep(0.05)
        if admission.admitted:
            log.warning("shutting down with %d request(s) unfinished after %.0f s", admission.admitted, self.grace_s)
        self.should_exit = True
