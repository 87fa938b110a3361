"""The file `spark-submit` runs: the `retain` command line inside a Spark application.

    spark-submit [spark options] "$(python -c 'import engine.spark.job as j; print(j.__file__)')" \
        decide --engine spark --input hdfs:///retain/2026-12 --out hdfs:///retain/decisions/2026-12

Under spark-submit the session comes from spark-submit's master and settings (`--spark-master` is not
needed); everything else is the ordinary CLI.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from engine.cli.main import app

    app(args=list(sys.argv[1:] if argv is None else argv), prog_name="retain")


if __name__ == "__main__":
    main()
