"""Map the repository's folders onto one import namespace, `agentrl` (metadata is in pyproject.toml).

libs/common -> agentrl.common, libs/proto (generated) -> agentrl.proto, services/<name> ->
agentrl.<name>. A service folder joins by having an __init__.py; nothing else to register.
"""

from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent

package_dir = {"agentrl.common": "libs/common", "agentrl.proto": "libs/proto"}
for init in sorted(ROOT.glob("services/*/__init__.py")):
    package_dir[f"agentrl.{init.parent.name}"] = f"services/{init.parent.name}"

packages = []
for name, folder in package_dir.items():
    packages.append(name)
    for init in sorted((ROOT / folder).rglob("*/__init__.py")):
        relative = init.parent.relative_to(ROOT / folder)
        packages.append(".".join([name, *relative.parts]))

setup(packages=packages, package_dir=package_dir)
