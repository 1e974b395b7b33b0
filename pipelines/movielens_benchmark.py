"""MovieLens benchmark: prepare -> train several models -> evaluate -> compare -> register the best.

    python pipelines/movielens_benchmark.py configs/compare_ml-latest-small.yaml
    python pipelines/movielens_benchmark.py configs/compare_ml100k.yaml \\
        --tracking-uri http://127.0.0.1:5000 --register movielens-best

Every step is a call into the library (`recsys compare`'s functions: `recsys prepare` when the
prepared data is missing, then one child run per model that is tuned on validation, trained and
evaluated on test, then the comparison table and figure on the parent run, then the best model
on the primary metric registered with the alias `champion`). Each step is printed, timed and
recorded in the parent MLflow run (metric ``step_seconds/<step>``, tag ``pipeline.step.<step>``).
The registered model is what `pipelines/batch_score.py` scores with.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from steps import Steps  # noqa: E402

from recsys.commands.common import add_tracking_args, tracking_options  # noqa: E402
from recsys.commands.compare import ensure_data, load_compare_config, print_table  # noqa: E402
from recsys.errors import RecsysError  # noqa: E402
from recsys.workflows.compare import compare  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[1:]))
    p.add_argument("config", metavar="CONFIG.yaml", help="a comparison file (configs/compare_*)")
    p.add_argument("--out", default=None, metavar="DIR", help="override `out` of the file")
    p.add_argument("--data", default=None, metavar="DIR", help="override `data` of the file")
    p.add_argument("--only", default=None, metavar="LABELS", help="a subset of the models")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, ...")
    add_tracking_args(p)
    p.set_defaults(register=None)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = load_compare_config(args.config, out=args.out, data=args.data,
                                   device=args.device, only=args.only)
        if not args.no_track and args.register is None:
            args.register = f"{spec.name}-best"
        registering = not args.no_track
        steps = Steps(total=2 + len(spec.models) + int(registering),
                      title=f"MovieLens benchmark: {spec.name} ({len(spec.models)} models)")
        result = compare(spec, tracking_options(args), config_path=Path(args.config),
                         step=steps, prepare=ensure_data)
    except RecsysError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print_table(result, spec)
    if result.registered:
        name, version = result.registered
        print(f"champion: {result.best} -> models:/{name}@{args.alias} (version {version})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
