"""The Context: settings, output and the boundaries (engines, router factory, ledger), passed
explicitly. Every boundary is injected: `Context.real` wires Docker, HAProxy and the SQL ledger;
tests hand in fakes. Real boundaries open on first use, so `kiln validate` needs neither Docker
nor a database."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kiln.engines import DEFAULT_ENGINE, kind
from kiln.output import Output
from kiln.settings import Settings

if TYPE_CHECKING:  # imported on first use: SQLAlchemy and the Docker SDK cost ~0.4 s to import
    from kiln.ledger.store import Ledger
    from kiln.providers.base import Engine
    from kiln.router.base import Router, RouterFactory
    from kiln.spec.resolve import EnvConfig


def open_engine(settings: Settings, name: str) -> Engine:
    """The real engine called `name` (a spec's environments.NAME.engine), as kiln/engines.py opens it."""
    from kiln.secretstore import lookup

    return kind(name).open(settings, lambda secret: lookup(settings, secret))


@dataclass
class Context:
    settings: Settings
    out: Output
    engines: Callable[[str], Engine] | None = None  # engine by name; default: open_engine
    routers: RouterFactory | None = None  # default: an HAProxy router per environment
    _ledger: Ledger | None = field(default=None, repr=False)
    _open: dict[str, Engine] = field(default_factory=dict, repr=False)

    def secret(self, name: str) -> str | None:
        """The value `secret:NAME` resolves to, as the engine resolves it (for masking output)."""
        from kiln.secretstore import lookup

        return lookup(self.settings, name)

    def engine(self, name: str = DEFAULT_ENGINE) -> Engine:
        """The engine called `name`, opened once per Context."""
        if name not in self._open:
            self._open[name] = (self.engines or (lambda n: open_engine(self.settings, n)))(name)
        return self._open[name]

    def engine_for(self, cfg: EnvConfig) -> Engine:
        return self.engine(cfg.engine)

    def router(self, cfg: EnvConfig) -> Router:
        """The router of the environment `cfg` describes, on that environment's engine."""
        if self.routers is None:
            from kiln.router.haproxy import haproxy_routers

            self.routers = haproxy_routers(self.settings.home, self.out)
        return self.routers(self.engine_for(cfg), cfg)

    def derive(self, out: Output, own_engines: bool = False) -> Context:
        """The same boundaries with another output; `own_engines` for a thread of its own (an
        engine client is not shared between threads)."""
        return Context(self.settings, out, self.engines, self.routers, _ledger=self.ledger,
                       _open={} if own_engines else self._open)

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            from kiln.ledger.store import Ledger

            self._ledger = Ledger(self.settings.ledger_url)
        return self._ledger
