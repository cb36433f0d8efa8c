"""The Context: settings, output and the boundaries (engine, ledger), passed explicitly.
Boundaries open on first use, so `kiln validate` needs neither Docker nor a database."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kiln.output import Output
from kiln.settings import Settings

if TYPE_CHECKING:  # imported on first use: SQLAlchemy and the Docker SDK cost ~0.4 s to import
    from kiln.ledger.store import Ledger
    from kiln.providers.docker import DockerProvider


@dataclass
class Context:
    settings: Settings
    out: Output
    lost_lock: threading.Event | None = None  # set when the environment lock this command holds is lost
    _docker: DockerProvider | None = field(default=None, repr=False)
    _ledger: Ledger | None = field(default=None, repr=False)

    @property
    def docker(self) -> DockerProvider:
        if self._docker is None:
            from kiln.providers.docker import DockerProvider
            from kiln.secretref import lookup

            self._docker = DockerProvider(self.settings.extra_labels, secrets=lambda name: lookup(self.settings, name))
        return self._docker

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            from kiln.ledger.store import Ledger

            self._ledger = Ledger(self.settings.ledger_url)
        return self._ledger
