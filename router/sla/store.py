"""The SLA policy in force: `PolicyStore` re-reads the policy file when it changes, and keeps the last good
policy in force when a new version does not validate."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from router.errors import SlaPolicyError
from router.sla.schema import DEFAULT_POLICY, SlaPolicy, load_policy_file, parse_policy

logger = logging.getLogger(__name__)


class PolicyStore:
    """The policy in force. With a file, a change is picked up on the next access after
    `reload_interval_s`; a file that fails validation is logged and reported, and the last good
    policy stays in force."""

    def __init__(
        self, path: str | Path | None = None, *, reload_interval_s: float = 2.0, models: list[str] | None = None
    ) -> None:
        self.path = Path(path) if path else None
        self.reload_interval_s = reload_interval_s
        self.models = models
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._checked = 0.0
        self.version = 0
        self.loaded_at = time.time()
        self.last_error: str | None = None
        self.reloads = {"ok": 0, "rejected": 0}
        if self.path is None:
            self._policy = parse_policy(DEFAULT_POLICY, source="built-in", models=models)
        else:
            self._policy = load_policy_file(self.path, models=models)  # a bad file at start is fatal
            self._stamp = self._file_stamp()
        self.version = 1

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat() if self.path else None
        except OSError:
            return None
        return None if st is None else (st.st_mtime_ns, st.st_size)

    @property
    def policy(self) -> SlaPolicy:
        if self.path is not None and time.monotonic() - self._checked >= self.reload_interval_s:
            self.maybe_reload()
        return self._policy

    def maybe_reload(self) -> bool:
        """Re-read the file if it changed; True when a new policy came into force."""
        with self._lock:
            self._checked = time.monotonic()
            stamp = self._file_stamp()
            if stamp is None or stamp == self._stamp:
                return False
            self._stamp = stamp
            try:
                policy = load_policy_file(self.path, models=self.models)  # type: ignore[arg-type]
            except SlaPolicyError as exc:
                self.last_error = str(exc)
                self.reloads["rejected"] += 1
                logger.error("SLA policy reload rejected, the previous policy stays in force: %s", exc)
                return False
            self._policy = policy
            self.version += 1
            self.loaded_at = time.time()
            self.last_error = None
            self.reloads["ok"] += 1
            logger.info("SLA policy version %d in force from %s", self.version, self.path)
            return True

    def status(self) -> dict[str, Any]:
        return {
            "source": str(self.path) if self.path else "built-in",
            "version": self.version,
            "loaded_at": self.loaded_at,
            "last_reload_error": self.last_error,
            "reloads": dict(self.reloads),
        }
