"""API tokens of `kiln serve`: stored by name with their role, environments and SHA-256 only."""

from __future__ import annotations

import json

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from kiln.access import Token, digest, matches
from kiln.errors import UsageError
from kiln.ledger.db import Database, changed, now
from kiln.ledger.schema import TokenRow


def _token(row: TokenRow) -> Token:
    return Token(row.name, row.role, tuple(json.loads(row.envs or "[]")), row.digest, row.created_at,
                 row.last_used_at)


class Tokens:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, name: str, role: str, envs: tuple[str, ...], token: str) -> Token:
        """Store `token` (its digest) as `name`; UsageError when the name is taken."""
        try:
            with self.db.session(passing=(IntegrityError,)) as s, s.begin():
                row = TokenRow(name=name, role=role, envs=json.dumps(list(envs)), digest=digest(token),
                               created_at=now())
                s.add(row)
        except IntegrityError:
            raise UsageError(f"there is already a token named {name!r}.",
                             f"Revoke it first (`kiln token revoke {name}`) or choose another name.") from None
        return _token(row)

    def all(self) -> list[Token]:
        with self.db.session() as s:
            return [_token(r) for r in s.scalars(select(TokenRow).order_by(TokenRow.name))]

    def revoke(self, name: str) -> bool:
        with self.db.session() as s, s.begin():
            return changed(s.execute(delete(TokenRow).where(TokenRow.name == name))) > 0

    def find(self, token: str) -> Token | None:
        """The stored token `token` is, or None (the digest compared again in constant time)."""
        found = self.with_digest(digest(token))
        return found if found and matches(token, found.digest) else None

    def with_digest(self, wanted: str) -> Token | None:
        """The stored token whose SHA-256 is `wanted`: how a dashboard session, which keeps the
        digest and never the token, finds its token again."""
        with self.db.session() as s:
            row = s.scalar(select(TokenRow).where(TokenRow.digest == wanted))
            return _token(row) if row else None

    def used(self, name: str) -> None:
        with self.db.session() as s, s.begin():
            s.execute(update(TokenRow).where(TokenRow.name == name).values(last_used_at=now()))
