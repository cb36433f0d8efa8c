"""`python -m bench.kiln_noretries ARGS…`: the real `kiln ARGS…`, except that the router it starts
has HAProxy's retries off (`retries 0`, no `option redispatch`, no `retry-on`), so the benchmark
shows what kiln's router retries buy. Only this benchmark entry point changes the rendered
configuration; kiln itself always renders the retries (router/config.py)."""

from __future__ import annotations

import sys

RETRY_LINES = ("    retries 3", "    option redispatch 1", "    retry-on conn-failure empty-response response-timeout")


def without_retries(text: str) -> str:
    lines = text.splitlines()
    missing = [line for line in RETRY_LINES if line not in lines]
    if missing:  # kiln's config changed: say so rather than measure something else
        raise RuntimeError(f"kiln's router config no longer has {missing}; update bench/kiln_noretries.py")
    kept = [line for line in lines if line not in RETRY_LINES]
    at = kept.index("    timeout queue 10s") + 1
    return "\n".join(kept[:at] + ["    retries 0"] + kept[at:]) + "\n"


def main() -> None:
    import kiln.router.config as config
    import kiln.router.haproxy as haproxy

    render = config.render_config

    def render_without_retries(cfg, on_host=False):  # type: ignore[no-untyped-def]
        return without_retries(render(cfg, on_host))

    haproxy.render_config = render_without_retries  # HaproxyRouter renders through this name
    from kiln.cli import main as kiln_main

    sys.argv[0] = "kiln"
    kiln_main()


if __name__ == "__main__":
    main()
