import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
REPO = Path(__file__).resolve().parent.parent


def run_script(script: str, *overrides: str, check: bool = True, timeout: int = 300,
               launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run ``scripts/<script>`` with Hydra overrides in a subprocess, as a user would."""
    command = [*launcher] if launcher else [sys.executable]
    command += [str(REPO / "scripts" / script), *overrides]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def mt30_data(tmp_path_factory) -> Path:
    """A small MT30-format dataset (cup-catch and pendulum-swingup, random policy), written by our
    own collection script."""
    out = tmp_path_factory.mktemp("mt30_data")
    run_script("collect_data.py", "tasks=[cup-catch,pendulum-swingup]", "task_set=mt30", "episodes=2",
               "episodes_per_file=1", f"out_dir={out}")
    return out
