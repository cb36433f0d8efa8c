"""The API's actions (a router under /api/v1, to a deployer of the environment or an admin; a
dashboard session also needs its CSRF token): deploy an image already baked, roll back, promote
(a waiting blue-green release, or one environment's image to another), abort a rollout, approve
or cancel a CI run. Each goes through server/plane.py to the use case the CLI calls, which takes
the environment's lock, and is recorded as an event naming the token; the answer is the use
case's typed value with what it said (kiln/views.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from kiln import views
from kiln.server.api import TheAuth, ThePlane, Who, actor
from kiln.spec.models import strategy_of

router = APIRouter()


class DeployBody(BaseModel):
    image: str = Field(description="An image a release of the app recorded: id, registry reference or tag.")
    strategy: str | None = Field(None, description="rolling, blue-green or canary (default: the spec's).")


class RollbackBody(BaseModel):
    to: int | None = Field(None, description="Release number (default: the one that served before).")
    strategy: str | None = None


class PromoteBody(BaseModel):
    source: str = Field(alias="from", description="Environment whose running image is promoted.")
    to: str
    strategy: str | None = None


@router.post("/apps/{app}/envs/{env}/deploy", summary="Deploy an image already baked (no bake)")
def deploy(app: str, env: str, body: DeployBody, who: Who, auth: TheAuth, plane: ThePlane,
           request: Request) -> views.ActionOutcome:
    return plane.deploy(actor(auth, who, request, env), app, env, body.image, strategy_of(body.strategy))


@router.post("/apps/{app}/envs/{env}/rollback", summary="Put an earlier release back in service")
def rollback(app: str, env: str, body: RollbackBody, who: Who, auth: TheAuth, plane: ThePlane,
             request: Request) -> views.ActionOutcome:
    return plane.rollback(actor(auth, who, request, env), app, env, body.to, strategy_of(body.strategy))


@router.post("/apps/{app}/envs/{env}/promote", summary="Switch traffic to the blue-green release waiting for promotion")
def promote(app: str, env: str, who: Who, auth: TheAuth, plane: ThePlane, request: Request) -> views.ActionOutcome:
    return plane.promote(actor(auth, who, request, env), app, env)


@router.post("/apps/{app}/promote", summary="Promote the image one environment runs to another")
def promote_artifact(app: str, body: PromoteBody, who: Who, auth: TheAuth, plane: ThePlane,
                     request: Request) -> views.ActionOutcome:
    return plane.promote_artifact(actor(auth, who, request, body.to), app, body.source, body.to,
                                  strategy_of(body.strategy))


@router.post("/apps/{app}/envs/{env}/rollouts/abort", summary="Abort the unfinished rollout")
def abort(app: str, env: str, who: Who, auth: TheAuth, plane: ThePlane, request: Request) -> views.AbortOutcome:
    return plane.abort(actor(auth, who, request, env), app, env)


@router.post("/ci/runs/{run_id}/approve", summary="Let a run's waiting promotion go ahead")
def approve(run_id: int, who: Who, auth: TheAuth, plane: ThePlane, request: Request) -> views.CiAction:
    return plane.ci(actor(auth, who, request, None), run_id, "approve")


@router.post("/ci/runs/{run_id}/cancel", summary="Cancel a queued or running run")
def cancel(run_id: int, who: Who, auth: TheAuth, plane: ThePlane, request: Request) -> views.CiAction:
    return plane.ci(actor(auth, who, request, None), run_id, "cancel")
