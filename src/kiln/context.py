"""The Context: settings, output and the boundaries (engine, ledger), passed explicitly.
Boundaries open on first use, so `kiln validate` needs neither Docker nor a database."""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.ledger.store import Ledger
from kiln.output import Output
from kiln.providers.docker import DockerProvider
from kiln.settings import Settings


@dataclass
class Context:
    settings: Settings
    out: Output
    _docker: DockerProvider | None = field(default=None, repr=False)
    _ledger: Ledger | None = field(default=None, repr=False)

    @property
    def docker(self) -> DockerProvider:
        if self._docker is None:
            self._docker = DockerProvider(self.settings.extra_labels)
        return self._docker

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            self._ledger = Ledger(self.settings.ledger_url)
        return self._ledger
