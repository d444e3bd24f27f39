"""images/varnish-exporter/Dockerfile cannot be built here (no container engine): check that it
agrees with what the injector runs - the program cache-varnish-exporter's command names, on
PATH, in the image the policy gives cache-varnish (so varnishstat matches varnishd), as
varnishd's uid."""

from __future__ import annotations

from pathlib import Path

from tests.dockerfiles import instructions, stages
from webhook.engine import builder, names
from webhook.engine.options import resolve_options
from webhook.engine.policy import DEFAULT_IMAGES, RunAsUser, default_policy

DOCKERFILE = Path(__file__).resolve().parents[1] / "images" / "varnish-exporter" / "Dockerfile"


TEXT = DOCKERFILE.read_text()


def steps() -> list[tuple[str, str]]:
    return instructions(TEXT)


def final_stage() -> list[tuple[str, str]]:
    return stages(TEXT)[-1]


def test_based_on_the_varnish_image_the_pods_run() -> None:
    args = dict(rest.split("=", 1) for keyword, rest in steps() if keyword == "ARG" and "=" in rest)
    assert final_stage()[0] == ("FROM", "${VARNISH_IMAGE}")
    assert args["VARNISH_IMAGE"] == DEFAULT_IMAGES["varnish"]


def test_installs_the_program_the_container_runs_as_varnishd_uid() -> None:
    policy = default_policy()
    options = resolve_options(
        {"cache-injector.io/backend": "app:8080", "cache-injector.io/metrics": "true"},
        namespace="shop",
        policy=policy,
    )
    command = builder.build_exporter(options, policy)["command"]
    stage = dict(final_stage()[1:])
    _, target = stage["COPY"].split()[-2:]
    assert Path(target).name == command[0] and Path(target).parent.as_posix() == "/usr/local/bin"
    assert stage["USER"] == str(RunAsUser().varnish)
    assert stage["EXPOSE"] == str(names.EXPORTER_PORT) and f":{stage['EXPOSE']}" in command
