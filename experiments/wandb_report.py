"""``coldstart-wandb-report SWEEP``: the panels of a sweep as a W&B Report (online) or as local Markdown and HTML pages
(offline): one row per job with its differing keys, objective and status, the sweep report's table and figures."""

from __future__ import annotations

import argparse
import base64
import html
import json
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.report import REPORT_DIR, differing_keys, find_jobs, flat_config, write_report


def jobs_table(sweep: Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per job: its directory, every key that differs between jobs, ``complete`` and ``objective``."""
    jobs = find_jobs([sweep])
    if not jobs:
        raise FileNotFoundError(f"no runs under {sweep}")
    configs = [flat_config(j) for j in jobs]
    keys = differing_keys(configs)
    rows = []
    for job, cfg in zip(jobs, configs, strict=True):
        status_path = job / "status.json"
        status: dict[str, Any] = json.loads(status_path.read_text()) if status_path.exists() else {}
        rows.append({"job": str(job.relative_to(sweep)), **{k: cfg.get(k) for k in keys},
                     "complete": status.get("complete"), "objective": status.get("objective")})
    return pd.DataFrame(rows), keys


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-style Markdown table (floats to 4 significant digits)."""
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def _figures(sweep: Path) -> list[Path]:
    """The sweep report's figures, then each job's (the report folder is not a job: its figures come once)."""
    jobs = sorted(p for p in sweep.glob("*/*.png") if p.parent.name != REPORT_DIR)
    return [*sorted(sweep.glob(f"{REPORT_DIR}/*.png")), *jobs]


def _data_uri(path: Path) -> str:
    """A PNG inlined (``data:image/png;base64,…``): the page shows it wherever it is copied or mailed."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def write_local(sweep: Path, title: str) -> tuple[Path, Path]:
    """``<sweep>/report/wandb_report.md`` (figures linked) and ``.html`` (self-contained: figures inlined): the same
    panels as the W&B Report, from the files."""
    out = sweep / REPORT_DIR
    report = write_report([sweep], out, allow_incomplete=True)
    jobs, keys = jobs_table(sweep)
    figures = _figures(sweep)
    rel = [os.path.relpath(f, out) for f in figures]
    md = [f"# {title}", "", f"Sweep `{sweep}`: {len(jobs)} jobs; keys that differ between them: "
          f"{', '.join(f'`{k}`' for k in keys) or 'none'}.", "", "## Jobs", "", markdown_table(jobs), "",
          "## Report (first 50 rows of report.csv)", "", markdown_table(report.head(50)), "", "## Figures", ""]
    md += [f"![{Path(r).stem}]({r})" for r in rel]
    md_path = out / "wandb_report.md"
    md_path.write_text("\n".join(md) + "\n")
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>Sweep <code>{html.escape(str(sweep))}</code>: {len(jobs)} jobs.</p>",
            "<h2>Jobs</h2>", jobs.to_html(index=False), "<h2>Report</h2>", report.head(50).to_html(index=False),
            "<h2>Figures</h2>", *[f'<figure><img src="{_data_uri(f)}" style="max-width:100%" alt="{html.escape(r)}">'
                                  f"<figcaption>{html.escape(r)}</figcaption></figure>" for f, r in
                                  zip(figures, rel, strict=True)]]
    html_path = out / "wandb_report.html"
    html_path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                         f"</head><body>{''.join(body)}</body></html>\n")
    return md_path, html_path


def build_report(sweep: Path, title: str, entity: str, project: str) -> Any:
    """A W&B Report (``wandb-workspaces``) of the sweep's runs, not yet saved: a parallel-coordinates panel over the
    keys that differ between jobs and the objective, and the objective per run."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError as exc:
        raise ImportError("an online W&B Report needs wandb-workspaces: pip install 'coldstart[wandb]' "
                          "(or run with --offline for local pages)") from exc
    jobs, keys = jobs_table(sweep)
    group = f"{sweep.parent.name}/{sweep.name}"  # the WandbLogger's group of this sweep
    runset = wr.Runset(entity=entity, project=project, name=group, filters=f"Group == '{group}'")
    columns = [wr.ParallelCoordinatesPlotColumn(metric=wr.Config(k)) for k in keys]
    columns.append(wr.ParallelCoordinatesPlotColumn(metric=wr.SummaryMetric("objective")))
    panels: list[Any] = [wr.ParallelCoordinatesPlot(columns=columns),
              wr.BarPlot(title="objective per run", metrics=[wr.SummaryMetric("objective")])]
    report = wr.Report(entity=entity, project=project, title=title,
                       description=f"{len(jobs)} jobs of sweep {sweep}; differing keys: {', '.join(keys) or 'none'}")
    report.blocks = [wr.H1(title), wr.P(f"Group {group}: {len(jobs)} jobs."),
                     wr.PanelGrid(runsets=[runset], panels=panels)]
    return report


def publish(sweep: Path, title: str, entity: str, project: str) -> str:
    """Save :func:`build_report` to W&B (needs an API key and the network); returns the report's URL."""
    report = build_report(sweep, title, entity, project)
    report.save()
    return str(report.url)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="coldstart-wandb-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="a multirun folder (results/sweeps/<experiment>/<timestamp>)")
    parser.add_argument("--title", default=None)
    parser.add_argument("--project", default="coldstart")
    parser.add_argument("--entity", default=None)
    parser.add_argument("--offline", action="store_true", help="local pages only (the default without WANDB_API_KEY)")
    args = parser.parse_args(argv)
    title = args.title or f"coldstart sweep {args.sweep.parent.name}/{args.sweep.name}"
    try:
        md, page = write_local(args.sweep, title)
        print(f"local report: {md}, {page}")
        if not args.offline and os.environ.get("WANDB_API_KEY"):
            if not args.entity:
                raise ImportError("an online W&B Report needs --entity (your W&B user or team)")
            print(f"W&B Report: {publish(args.sweep, title, args.entity, args.project)}")
    except (FileNotFoundError, ImportError) as exc:  # nothing to report, or no way to publish it
        print(f"coldstart-wandb-report: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
