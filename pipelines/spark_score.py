"""Batch scoring with Spark: an MLflow model -> top-K lists for a Parquet table of users -> Parquet.

    spark-submit --master yarn --deploy-mode cluster pipelines/spark_score.py \\
        --model models:/movielens-best@champion --tracking-uri http://mlflow:5000 \\
        --users hdfs:///recsys/users.parquet --k 100 --out hdfs:///recsys/recs.parquet

    python pipelines/spark_score.py --master 'local[*]' --model runs:/RUN_ID/model \\
        --users users.parquet --k 100 --out recs.parquet

The model is the pyfunc `recsys train` logs (or registers with --register): any MLflow model URI
(``models:/NAME@ALIAS``, ``runs:/ID/model``, a local or object-store directory). It is applied
with ``mlflow.pyfunc.spark_udf``, which ships it to the executors; see recsys.scoring.spark for
the UDF's one-struct-per-user design. ``--users`` is a Parquet table (a file or a directory of
parts) with a ``user`` column; without it every user the model knows is scored. The output is a
Parquet dataset with the columns of `recsys recommend`: user, item, rank, score, cold. The job is
one MLflow run (experiment ``recsys-batch`` unless --experiment) with its parameters, rows, users
and one ``step_seconds/<step>`` per step; --no-track skips it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from steps import Steps, run_main, score_metrics, scoring_parser  # noqa: E402

from recsys.commands.common import add_tracking_args, tracking_options  # noqa: E402
from recsys.errors import RecsysError  # noqa: E402
from recsys.tracking.setup import make_tracker  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = scoring_parser(__doc__, "MLflow model URI: models:/NAME@ALIAS, runs:/ID/model or a "
                       "directory", "PATH", "output Parquet dataset (local path, hdfs://, s3a://...)")
    p.add_argument("--users", default=None, metavar="PATH",
                   help="Parquet table with a `user` column (default: every user the model knows)")
    p.add_argument("--master", default=None, metavar="URL",
                   help="Spark master (default: spark-submit's, else local[*])")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE",
                   help="extra Spark setting (repeatable), e.g. "
                        "spark.sql.execution.arrow.maxRecordsPerBatch=5000")
    p.add_argument("--env-manager", default="local", choices=("local", "virtualenv", "uv", "conda"),
                   help="Python environment of the UDF: local (the executors' own, with recsys "
                        "installed; default) or one rebuilt from the model's requirements")
    add_tracking_args(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from recsys.scoring.serving import packaged_history
    from recsys.scoring.spark import (
        get_session,
        parse_conf,
        read_users,
        score_users,
        summarise,
        users_frame,
        write_lists,
    )
    from recsys.tracking.packaging import (
        PACKAGED_DATA,
        fetched_model,
        lists_udf,
        model_users,
        use_tracking_uri,
    )

    if args.k < 1:
        raise RecsysError(f"--k must be at least 1 (got {args.k})")
    conf = parse_conf(args.conf)
    use_tracking_uri(args.tracking_uri)
    tracker = make_tracker(tracking_options(args), default_experiment="recsys-batch",
                           run_name="spark-score",
                           tags={"recsys.kind": "spark_score", "recsys.model_uri": args.model})
    steps = Steps(total=3, title=f"Spark scoring with {args.model}")
    spark, owned = None, False
    status = "FAILED"
    try:
        spark, owned = get_session(args.master, conf=conf)
        with steps("load model and users", tracker), fetched_model(args.model) as model:
            # The checked copy of the model is what the executors get (and whose users are
            # read when --users is not given).
            if args.users:
                users = read_users(spark, args.users)
            else:
                users = users_frame(spark, model_users(model))
            predict, user_type = lists_udf(spark, model, args.k, env_manager=args.env_manager)
            lists = score_users(users, predict, user_type)
            tracker.log_params({"model_uri": args.model, "k": args.k, "out": args.out,
                                "users": args.users or "all", "master": spark.sparkContext.master,
                                "env_manager": args.env_manager,
                                # the history its known users are scored from (serving.json)
                                "history": packaged_history(model / PACKAGED_DATA)})

        with steps("score and write", tracker):
            out = write_lists(spark, lists, args.out)

        with steps("summarise", tracker):
            summary = summarise(spark, out)
            tracker.log_metrics(score_metrics(users=summary["users"], rows=summary["rows"],
                                              cold=summary["cold"]))
            tracker.set_tags({"recsys.output": out})
        print(f"wrote {out}: {summary['users']} users ({summary['cold']} cold), top-{args.k}, "
              f"{summary['rows']} rows", file=sys.stderr)
        status = "FINISHED"
        return 0
    finally:
        tracker.close(status)
        if owned and spark is not None:
            spark.stop()


if __name__ == "__main__":
    sys.exit(main())
