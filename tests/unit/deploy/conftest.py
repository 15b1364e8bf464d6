"""Makes this folder's helper modules (deploy_render) importable by its tests.

The suite runs with --import-mode=importlib, which puts no test folder on sys.path; the helper
names are unique to this folder, so adding it cannot shadow another module.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
