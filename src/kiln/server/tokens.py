"""The API's tokens (a router under /api/v1, to admins; a change from a dashboard session also
needs its CSRF token): list them (never their values), make one (its value shown once), revoke one.
Each calls the use case `kiln token …` calls (usecases/tokens.py)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from kiln import views
from kiln.server.api import Admin, ThePlane
from kiln.usecases import tokens

router = APIRouter()


class TokenBody(BaseModel):
    name: str
    role: str
    envs: list[str] = []


@router.get("/tokens", summary="API tokens (never their values)")
def listing(who: Admin, plane: ThePlane) -> list[views.Token]:
    return tokens.listing(plane.ctx())


@router.post("/tokens", summary="Make a token; its value is shown once")
def create(body: TokenBody, who: Admin, plane: ThePlane) -> views.NewToken:
    return tokens.create(plane.ctx(), body.name, body.role, tuple(body.envs))


@router.delete("/tokens/{name}", summary="Revoke a token")
def revoke(name: str, who: Admin, plane: ThePlane) -> views.Revoked:
    return tokens.revoke(plane.ctx(), name)
