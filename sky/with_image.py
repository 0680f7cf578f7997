"""Print a task or pipeline YAML with every task's `resources.image_id` set to $BOOKMATCH_IMAGE.

The YAMLs run on the cloud's default image and install the project from the repository (sky/setup.sh). To run
them on an image of your own (docker/Dockerfile.cuda), set BOOKMATCH_IMAGE and launch the printed copy from the
repository root (`workdir: .` is relative to where sky runs):

    BOOKMATCH_IMAGE=docker:ghcr.io/<you>/bookmatch:0.1.0-cuda python sky/with_image.py jobs/pipeline_contrastive.yaml > my.yaml
    sky jobs launch my.yaml --env INPUT_BUCKET=... --env ARTIFACTS_BUCKET=...

SkyPilot reads no variable inside `resources:`, and `sky jobs launch --image-id` is ignored for a pipeline of
several tasks (SkyPilot 0.14.1 says so and drops it), hence this copy. Needs PyYAML (SkyPilot brings it).
"""

from __future__ import annotations

import os
import sys

import yaml

IMAGE_ENV = "BOOKMATCH_IMAGE"


def with_image(text: str, image: str) -> str:
    """`text` (one task, or a pipeline: a header document then one document per task) with the image set."""
    documents = list(yaml.safe_load_all(text))
    for document in documents:
        # a pipeline's header document holds only the pipeline's name
        if isinstance(document, dict) and ("run" in document or "resources" in document):
            document.setdefault("resources", {})["image_id"] = image
    return yaml.safe_dump_all(documents, sort_keys=False, width=120)


def main(argv: list[str]) -> int:
    image = os.environ.get(IMAGE_ENV, "").strip()
    if len(argv) != 1 or not image:
        print(
            f"usage: {IMAGE_ENV}=docker:<registry>/<repo>:<tag> python sky/with_image.py TASK.yaml > OUT.yaml",
            file=sys.stderr,
        )
        return 2
    if not image.startswith("docker:"):
        print(
            f"{IMAGE_ENV} must name a container image as docker:<registry>/<repo>:<tag>, not {image!r}", file=sys.stderr
        )
        return 2
    with open(argv[0], encoding="utf-8") as handle:
        sys.stdout.write(with_image(handle.read(), image))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
