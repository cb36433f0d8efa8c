"""The ledger: the one object a Context opens. It holds the database and one repository per
aggregate, each in its own module:

    ledger.releases      releases.py      append-only releases, what became of each
    ledger.rollouts      rollouts.py      rollouts, their phase and their journalled steps
    ledger.locks         locks.py         per-environment locks and agent leases
    ledger.environments  environments.py  environments kiln made, and pinned releases
    ledger.events        events.py        what happened to an environment
    ledger.tokens        tokens.py        `kiln serve`'s API tokens (hashed)
    ledger.samples       samples.py       traffic per release over time (the agent samples HAProxy)

The pipeline's part (runs, steps, logs, webhook deliveries) is ci_store.CiStore(ledger). Names
stored in rows (event kinds, step actions, rollout states) are constants in kinds.py."""

from __future__ import annotations

from kiln.ledger.db import Database
from kiln.ledger.environments import Environments
from kiln.ledger.events import Events
from kiln.ledger.locks import Locks
from kiln.ledger.releases import Releases
from kiln.ledger.rollouts import Rollouts
from kiln.ledger.samples import Samples
from kiln.ledger.tokens import Tokens


class Ledger:
    def __init__(self, url: str) -> None:
        self.db = Database(url)  # opens it, bringing the schema to the newest revision
        self.releases = Releases(self.db)
        self.rollouts = Rollouts(self.db)
        self.locks = Locks(self.db)
        self.environments = Environments(self.db)
        self.events = Events(self.db)
        self.tokens = Tokens(self.db)
        self.samples = Samples(self.db)
