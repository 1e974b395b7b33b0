"""Execute the notebooks in place, so that the committed files carry their outputs (tables, plots)
for a reader on GitHub, and the tests' helpers to run them.

    python notebooks/execute.py                     # every notebook, with its own parameters
    python notebooks/execute.py 01_quickstart.ipynb --set MULTVAE_EPOCHS=15

Each notebook runs with this interpreter as its kernel (a kernelspec written to a temporary
folder, nothing installed system-wide), single-threaded BLAS, no display, no MLflow store from
the caller's environment, and its working directory in a temporary folder, so what it writes
(OUTPUT_DIR, MLflow) never lands in the checkout. The executed notebook replaces the stored one
only when every cell ran (temporary name, then rename); a failing notebook is left as it was.
Parameters (``--set NAME=VALUE``, a Python literal) are injected papermill-style, in a cell after
the one tagged ``parameters``; the stored copy keeps only the notebook's own cells.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

NOTEBOOKS = Path(__file__).resolve().parent
REPO = NOTEBOOKS.parent
KERNEL = "recsys-notebook"
CELL_TIMEOUT = 900  # seconds per cell: generous for a loaded 2-core machine; a hang still fails
INJECTED = "injected-parameters"


def notebook_names() -> list[str]:
    """The notebooks, in reading order."""
    return sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


def inject_parameters(nb: Any, params: dict[str, Any]) -> None:
    """Insert an ``injected-parameters`` cell after the ``parameters`` cell (as papermill does)."""
    import nbformat

    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    if len(tagged) != 1:
        raise ValueError("a notebook needs exactly one cell tagged 'parameters'")
    source = "\n".join(f"{name} = {value!r}" for name, value in params.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = [INJECTED]
    nb.cells.insert(tagged[0] + 1, cell)


def kernel_manager(folder: Path) -> Any:
    """A kernel manager whose only kernelspec starts ipykernel with this very interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = folder / "kernels" / KERNEL
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "recsys", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(folder / "kernels")], ensure_native_kernel=False)
    return KernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)


def kernel_environment() -> dict[str, str]:
    """What the kernel inherits: one BLAS/OpenMP thread (2 shared cores), no display, no MLflow
    store or telemetry from the caller's environment, and this checkout on the path."""
    env = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    path = os.environ.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *([path] if path else [])])
    return env


def execute(nb: Any, workdir: Path, params: dict[str, Any] | None = None) -> Any:
    """Run ``nb`` (modified in place: outputs filled) with ``workdir`` as its working directory
    and the kernel this interpreter; ``params`` injected after the ``parameters`` cell."""
    import nbclient

    if params:
        inject_parameters(nb, params)
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name=KERNEL, km=kernel_manager(workdir / ".jupyter"),
        resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return nb


def execute_in_place(name: str, params: dict[str, Any] | None = None) -> None:
    """Execute ``notebooks/name`` and store it with its outputs, as described above."""
    import nbformat

    path = NOTEBOOKS / name
    nb = nbformat.read(path, as_version=4)
    kernelspec = nb.metadata.get("kernelspec")
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    env = kernel_environment()
    previous = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    for key in saved:
        os.environ.pop(key, None)
    try:
        with tempfile.TemporaryDirectory(prefix="recsys-notebook-") as tmp:
            execute(nb, Path(tmp), params)
    finally:
        for key, value in {**previous, **saved}.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    nb.cells = [c for c in nb.cells if INJECTED not in c.metadata.get("tags", [])]
    if kernelspec is not None:  # the reader's kernel, not the temporary one
        nb.metadata["kernelspec"] = kernelspec
    tmp_path = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, tmp_path)
    tmp_path.replace(path)


def _assignment(text: str) -> tuple[str, Any]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"--set {text!r}: expected NAME=VALUE")
    try:
        return name.strip(), ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise argparse.ArgumentTypeError(f"--set {text!r}: VALUE must be a Python literal "
                                         "(quote strings: NAME='text')") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NOTEBOOK",
                        help="notebook file names under notebooks/ (default: all)")
    parser.add_argument("--set", dest="params", action="append", type=_assignment, default=[],
                        metavar="NAME=VALUE", help="a parameter for every notebook run")
    args = parser.parse_args(argv)
    known = notebook_names()
    for name in args.names:
        if name not in known:
            parser.error(f"no notebook {name!r} under {NOTEBOOKS} (have: {', '.join(known)})")
    for name in args.names or known:
        print(f"executing {name} ...", file=sys.stderr, flush=True)
        try:
            execute_in_place(name, dict(args.params))
        except Exception as exc:  # a cell failed: its error, in one line; the file is untouched
            first = str(exc).strip().splitlines()
            print(f"error: {name}: {first[-1] if first else type(exc).__name__}",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
