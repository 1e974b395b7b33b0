"""Batch scoring: load a registered model -> score every user -> Parquet.

    python pipelines/batch_score.py --model models:/movielens-best@champion --k 100 \\
        --out recs.parquet [--users users.csv] [--tracking-uri URI]

The model is the MLflow pyfunc that `recsys train --register` / the benchmark pipeline logged;
loading it needs only recsys (its weights and the prepared data's vocabularies and history travel
with it). It is logged from code, so loading it unpickles nothing; a model URI that is not such a
model (e.g. one pickled from a PythonModel instance) is refused before anything of it is loaded
(`recsys.tracking.mlflow.load_pyfunc`). Users are scored in chunks through the pyfunc's
``predict`` and committed one Parquet row group at a time (`recsys.scoring.export`: nothing
half-written under the final name, ``--resume`` keeps committed chunks). Known users are scored
from the history the model was packaged with (`Dataset.known_history`: ``before-test`` unless it
was logged with ``all``), logged as the ``history`` parameter. The columns are those of
`recsys recommend`: user, item, rank, score, cold. The job is one MLflow run (experiment
``recsys-batch`` unless --experiment) with its parameters, users per second and one
``step_seconds/<step>`` per step.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from steps import Steps, run_main, score_metrics, scoring_parser  # noqa: E402

from recsys.commands.common import add_tracking_args, tracking_options  # noqa: E402
from recsys.errors import RecsysError  # noqa: E402
from recsys.tracking.setup import make_tracker  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = scoring_parser(__doc__, "MLflow model URI, e.g. models:/NAME@champion or runs:/ID/model",
                       "FILE.parquet", "output Parquet file")
    p.add_argument("--users", default=None, metavar="FILE",
                   help="score only these user ids (a `user` column, or one per line)")
    p.add_argument("--chunk-size", type=int, default=10000, metavar="N",
                   help="users per committed chunk / row group (default 10000)")
    p.add_argument("--resume", action="store_true", help="keep chunks an interrupted run wrote")
    add_tracking_args(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from recsys.data.ids import coerce_ids, read_id_file
    from recsys.scoring.export import ChunkedWriter, output_format
    from recsys.tracking.packaging import load_pyfunc
    from recsys.workflows.recommend import UserRows, score_to_file

    if output_format(args.out) != "parquet":
        raise RecsysError(f"--out {args.out}: batch scoring writes Parquet; use a .parquet name")
    if args.k < 1 or args.chunk_size < 1:
        raise RecsysError("--k and --chunk-size must be at least 1")
    tracker = make_tracker(tracking_options(args), default_experiment="recsys-batch",
                           run_name="batch-score",
                           tags={"recsys.kind": "batch_score", "recsys.model_uri": args.model})
    steps = Steps(total=3, title=f"batch scoring with {args.model}")
    status = "FAILED"
    try:
        with steps("load model", tracker):
            model = load_pyfunc(args.model, tracking_uri=args.tracking_uri)
            predictor = model.unwrap_python_model().predictor
            if args.users:
                raw = read_id_file(args.users, "user")
                users = pd.unique(pd.Series(coerce_ids(raw, predictor.users, args.users,
                                                       "user")))
                users = np.asarray(users)
            else:
                users = predictor.all_users()
            tracker.log_params({"model_uri": args.model, "k": args.k, "users": len(users),
                                "history": predictor.history_kind,
                                "chunk_size": args.chunk_size, "out": str(Path(args.out))})

        with steps("score users", tracker):
            fingerprint = {"model": args.model, "history": predictor.history_kind,
                           "k": args.k, "chunk_size": args.chunk_size,
                           "users": int(len(users)),
                           "first_last": [str(users[0]), str(users[-1])] if len(users) else []}
            writer = ChunkedWriter(args.out, fingerprint, resume=args.resume)
            # The registered pyfunc's own predictor: the lists `model.predict` gives, streamed.
            scored = score_to_file(predictor, UserRows.known(predictor, users), writer,
                                   k=args.k, chunk_size=args.chunk_size)
            seconds = scored.seconds
            tracker.log_metrics(score_metrics(users=len(users), seconds=seconds,
                                              rows=scored.rows, cold=scored.cold))

        with steps("write parquet", tracker):
            tracker.set_tags({"recsys.output": str(Path(args.out).resolve())})
        print(f"wrote {args.out}: {len(users)} users, top-{args.k}, "
              f"{len(users) / max(seconds, 1e-9):,.0f} users/s", file=sys.stderr)
        status = "FINISHED"
        return 0
    finally:
        tracker.close(status)


if __name__ == "__main__":
    sys.exit(main())
