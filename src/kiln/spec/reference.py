"""The kiln.yaml reference, written from the same models that validate it, so the two cannot
drift apart. `python -m kiln.spec.reference > docs/spec.md`; a unit test checks it is current."""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from kiln.spec.durations import parse_duration
from kiln.spec.models import (
    AgentPolicy,
    Analysis,
    Base,
    Build,
    CanaryStep,
    Environment,
    HealthCheck,
    Meltdown,
    Placement,
    Resources,
    ResourcesOverride,
    RolloutPolicy,
    Service,
    ServiceOverride,
    Spec,
    VmBuild,
    _count_or_percent,
)
from kiln.spec.pipeline import Pipeline, Promote, Sidecar, Step
from kiln.spec.sizes import format_size, parse_disk, parse_memory
from kiln.spec.smoke import Check, SmokeCheck

_SIZES = (parse_memory, parse_disk)

SECTIONS: list[tuple[str, type[BaseModel]]] = [
    ("top level", Spec),
    ("build", Build),
    ("build.base", Base),
    ("build.vm", VmBuild),
    ("services.NAME", Service),
    ("services.NAME.healthcheck", HealthCheck),
    ("services.NAME.resources", Resources),
    ("services.NAME.rollout", RolloutPolicy),
    ("services.NAME.rollout.steps[]", CanaryStep),
    ("services.NAME.rollout.analysis", Analysis),
    ("services.NAME.rollout.smoke[]", SmokeCheck),
    ("environments.NAME", Environment),
    ("environments.NAME.services.NAME", ServiceOverride),
    ("environments.NAME.services.NAME.resources", ResourcesOverride),
    ("environments.NAME.placement", Placement),
    ("environments.NAME.agent", AgentPolicy),
    ("environments.NAME.agent.meltdown", Meltdown),
    ("pipeline", Pipeline),
    ("pipeline.steps[]", Step),
    ("pipeline.steps[].promote", Promote),
    ("pipeline.steps[].checks[]", Check),
    ("pipeline.steps[].services.NAME", Sidecar),
]


def _type_name(ann: typing.Any) -> str:
    if isinstance(ann, str):
        return ann
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin in (tuple, list):
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"mapping of {_type_name(args[1])}"
    if typing.get_origin(ann) is typing.Annotated:
        if any(getattr(m, "func", None) in _SIZES for m in args[1:]):
            return "size"
        return _type_name(args[0])
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "mapping"
    if typing.get_origin(ann) is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    return {str: "string", int: "integer", bool: "boolean", float: "number"}.get(ann, str(ann))


def _default(field: typing.Any) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()
        return "" if value in ({}, ()) or isinstance(value, BaseModel) else f"`{value}`"
    if field.default is PydanticUndefined or field.default is None:
        return ""
    value = field.default
    if isinstance(value, tuple):
        value = [v.model_dump() if isinstance(v, BaseModel) else v for v in value]
    if isinstance(value, bool):
        value = str(value).lower()
    if any(getattr(m, "func", None) in _SIZES for m in field.metadata):
        value = format_size(value)
    return f"`{value}`"


def render() -> str:
    out = ["# kiln.yaml reference", "",
           "Generated from `src/kiln/spec/models.py` by `python -m kiln.spec.reference`; do not edit by hand.",
           "Durations are written like `500ms`, `2s`, `1m30s` or a number of seconds.",
           "Sizes are written like `512M`, `1G`, `65536K` (powers of 1024) or a number of bytes.", ""]
    for title, model in SECTIONS:
        out += [f"## {title}", "", (model.__doc__ or "").strip(), "", "| key | type | default | meaning |",
                "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            ann: object = field.annotation
            if any(getattr(m, "func", None) is parse_duration for m in field.metadata):
                ann = "duration"
            elif any(getattr(m, "func", None) in _SIZES for m in field.metadata):
                ann = "size"
            elif any(getattr(m, "func", None) is _count_or_percent for m in field.metadata):
                ann = "count or percentage"
            out.append(f"| `{field.alias or name}` | {_type_name(ann)} | {_default(field)} | {field.description or ''} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render())
