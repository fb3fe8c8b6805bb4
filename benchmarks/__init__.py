"""Performance benchmarks of the repository (`python -m benchmarks`): not part of the wheel.

They run from a checkout, with the tests' fixtures at hand, so they may name the
checkout's own folders through REPO_ROOT; the package never does.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
