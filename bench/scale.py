"""`make bench-scale`: what a lab's number of runs costs (docs/performance.md "At a lab's scale").

Builds a bench project (bench/scale_build.py) up to each size in `--sizes`: real CLI runs up to
`--real`, beyond that runs synthesised from them (bench/scale_copy.py). At each size it prints:
seconds per real backtest (median of the last ones built, and of the one run the sync below
needs), instance bytes per run-month, the catalog sync job's step time with that one new run,
`quantlab backtest catalog-query` and `quantlab runs status`, the GraphQL time of three UI pages on
a cold webserver and the webserver's memory (bench/scale_ui.py). With `--compare-synthesised`, a
second project of the same size made of 1 real run per month and synthesised copies is measured
beside the first: a synthesised run must cost what a real one does.

    .venv/bin/python bench/scale.py                                   # 100, 1,000 (real), 10,000
    .venv/bin/python bench/scale.py --sizes 3,13 --real 3 --no-ui     # the test suite's smoke run
    .venv/bin/python bench/scale.py --postgres --sizes 10000 --real 3 # the deploy/ instance

Bench data lives under `--data-dir` (default /tmp/quantlab-bench-scale); a stopped bench resumes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import scale_build
import scale_ui

# The sensor's job, run in process on the project's instance; each step's time from its events.
SYNC_SCRIPT = """
import json
from dagster import DagsterInstance
from quantlab_pipeline.definitions import defs
with DagsterInstance.get() as instance:
    result = defs.get_job_def("catalog_sync_job").execute_in_process(instance=instance, raise_on_error=False)
    steps = instance.get_run_step_stats(result.run_id)
    print(json.dumps({"ok": result.success, "steps": {s.step_key: s.end_time - s.start_time for s in steps}}))
"""


def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def timed_cli(project: scale_build.Project, *args: str, repeat: int = 3) -> float:
    """Median wall seconds of a `quantlab` command (through the warm server, as a user runs it)."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        project.cli(*args)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def sync_step(project: scale_build.Project) -> dict:
    """The catalog sync job's step time after one new run (the sensor's case): the catalog is first
    brought up to date (a full sync: synthesised runs write no journal lines), then one real run
    is made, then the job runs in process on the project's instance."""
    project.cli("backtest", "catalog-sync", "--full")
    backtest = scale_build.real_run(project)["wall_s"]
    done = subprocess.run(
        [sys.executable, "-c", SYNC_SCRIPT], cwd=project.root, env=project.env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"catalog_sync_job: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if not result["ok"]:
        raise RuntimeError(f"catalog_sync_job failed: {result}")
    steps = result["steps"]
    return {
        "backtest_s": backtest,
        "sync_step_s": steps.pop("backtest_catalog"),
        "sync_other_steps_s": sum(steps.values()),  # the job's other steps (its asset checks)
    }


def instance_bytes(project: scale_build.Project) -> int:
    local = tree_bytes(project.root / ".dagster")
    if "DAGSTER_PG_HOST" not in project.env:
        return local
    from sqlalchemy import text

    engine, _ = scale_build.engines(project)
    with engine.connect() as conn:
        database = conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()
    engine.dispose()
    return local + int(database)


def grow(project: scale_build.Project, size: int, real: int, log) -> None:
    """Real runs up to `real` (and `size`), synthesised ones beyond."""
    while project.runs < min(size, real):
        record = scale_build.real_run(project)
        if len(project.real) % 50 == 0:
            log(f"  {len(project.real)} real runs, last {record['wall_s']:.2f} s")
    if project.runs < size:
        seconds = scale_build.build_synthesised(project, size - project.runs)
        log(f"  synthesised up to {project.runs} runs in {seconds:.0f} s")


def measure(project: scale_build.Project, args: argparse.Namespace, label: str) -> dict:
    runs = project.runs
    walls = [r["wall_s"] for r in project.real[-50:]]
    row: dict = {"label": label, "runs": runs, "real": len(project.real), "synthesised": project.synthesised}
    row["backtest_s_recent"] = statistics.median(walls) if walls else None
    row["instance_bytes_per_run_month"] = instance_bytes(project) / runs
    row.update(sync_step(project))
    some_run = project.real[0]["run_id"]
    row["catalog_query_s"] = timed_cli(project, "backtest", "catalog-query", repeat=args.repeat)
    row["runs_status_s"] = timed_cli(project, "runs", "status", some_run, repeat=args.repeat)
    if args.no_ui:
        row["pages"] = {"skipped": "--no-ui"}
        return row
    work = args.data_dir / "work"
    work.mkdir(parents=True, exist_ok=True)
    pages = {name: path for name, path in scale_ui.PAGES.items() if name in args.pages}
    if args.browser and not args.captured:
        chromium = shutil.which("chromium")
        if chromium is None:
            row["pages_browser"] = {
                "skipped": "no headless Chromium (apt-get install chromium); replaying " + str(args.capture)
            }
        else:  # once: the pages' own requests, from the browser, saved for the replays
            row["pages_browser"] = scale_ui.measure_pages(
                project.root, project.env, pages, chromium=chromium, capture=args.capture, work=work
            )
        args.captured = True
    row["pages"] = scale_ui.measure_pages(
        project.root, project.env, pages, chromium=None, capture=args.capture, work=work
    )
    return row


def render(rows: list[dict]) -> str:
    lines = []
    head = f"{'project':<14} {'runs':>6} {'real':>5} {'backtest s':>10} {'KB/run-month':>12} {'sync step s':>11}"
    head += f" {'checks s':>8}"
    head += f" {'query s':>8} {'status s':>8}"
    pages = [p for p in scale_ui.PAGES if any(p in r.get("pages", {}) for r in rows)]
    head += "".join(f" {p[:14]:>15}" for p in pages) + f" {'webserver MB':>12}"
    lines.append(head)
    for r in rows:
        line = f"{r['label']:<14} {r['runs']:>6} {r['real']:>5} {r['backtest_s']:>10.2f}"
        line += f" {r['instance_bytes_per_run_month'] / 1024:>12.0f} {r['sync_step_s']:>11.2f}"
        line += f" {r['sync_other_steps_s']:>8.2f}"
        line += f" {r['catalog_query_s']:>8.2f} {r['runs_status_s']:>8.2f}"
        peak = 0.0
        for p in pages:
            fig = r["pages"].get(p, {})
            if "wall_s" in fig:
                slowest = max(fig["queries"].values())
                line += f" {fig['wall_s']:>7.2f} ({slowest:.2f})"
                peak = max(peak, fig["peak_rss_mb"])
            else:
                line += f" {'-':>15}"
        line += f" {peak:>12.0f}" if peak else f" {'-':>12}"
        lines.append(line)
    lines.append("pages: wall seconds of the page's GraphQL requests on a cold webserver (slowest query)")
    return "\n".join(lines)


PROJECTED = ("instance_bytes_per_run_month", "sync_step_s", "sync_other_steps_s", "catalog_query_s", "runs_status_s")


def projection(rows: list[dict], label: str, to_runs: int) -> dict | None:
    """Each figure at `to_runs`, extended along the straight line through the project's two
    largest measured sizes (the growth measured, not a model of it); one that shrank is held."""
    mine = sorted((r for r in rows if r["label"] == label), key=lambda r: r["runs"])[-2:]
    if len(mine) < 2 or mine[0]["runs"] == mine[1]["runs"]:
        return None
    (a, b), out = mine, {"label": f"{label} (projected)", "runs": to_runs}

    def line(fa: float, fb: float) -> float:  # a figure that did not grow (noise) is held, not extended down
        return max(fa, fb, fb + (fb - fa) * (to_runs - b["runs"]) / (b["runs"] - a["runs"]))

    for name in PROJECTED:
        out[name] = line(a[name], b[name])
    out["pages"] = {
        page: {
            "wall_s": line(a["pages"][page]["wall_s"], b["pages"][page]["wall_s"]),
            "peak_rss_mb": line(a["pages"][page]["peak_rss_mb"], b["pages"][page]["peak_rss_mb"]),
        }
        for page in scale_ui.PAGES
        if "wall_s" in a["pages"].get(page, {}) and "wall_s" in b["pages"].get(page, {})
    }
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="run counts to measure at (default 100,1000,10000)")
    parser.add_argument("--real", type=int, default=1000, help="real CLI runs before synthesising (default 1000)")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/quantlab-bench-scale"))
    parser.add_argument("--no-ui", action="store_true", help="skip the webserver pages")
    parser.add_argument("--repeat", type=int, default=3, help="samples of each CLI command (default 3; the median)")
    parser.add_argument(
        "--compare-synthesised", action="store_true", help="also measure a synthesised project at each size"
    )
    parser.add_argument(
        "--capture",
        type=Path,
        default=Path(__file__).resolve().parent / "scale_pages.json",
        help="the pages' GraphQL requests, as the browser sent them (default bench/scale_pages.json)",
    )
    parser.add_argument("--browser", action="store_true", help="capture them anew with headless Chromium first")
    parser.add_argument("--pages", default=",".join(scale_ui.PAGES), help="which pages (default: all three)")
    parser.add_argument("--postgres", action="store_true", help="on the Postgres instance of deploy/ (pgserver)")
    parser.add_argument("--project-to", type=int, default=100_000, help="runs to project the last two sizes to")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    args.captured = False
    args.pages = [p.strip() for p in args.pages.split(",")]
    sizes = sorted(int(s) for s in args.sizes.split(","))

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    rows = []
    with instance_config(args) as (dagster_yaml, extra_env, name):
        project = scale_build.open_project(args.data_dir / name, dagster_yaml=dagster_yaml, extra_env=extra_env)
        for size in sizes:
            log(f"{name}: building {size} runs")
            grow(project, size, args.real, log)
            rows.append(measure(project, args, name))
            log(render(rows))
            if args.compare_synthesised:
                twin = scale_build.open_project(
                    args.data_dir / f"{name}-synth", dagster_yaml=dagster_yaml, extra_env=extra_env
                )
                grow(twin, size, len(scale_build.MONTHS), log)
                rows.append(measure(twin, args, f"{name}-synth"))
                log(render(rows))
    print(render(rows))
    for label in dict.fromkeys(r["label"] for r in rows):
        projected = projection(rows, label, args.project_to)
        if projected:
            print(json.dumps(projected))
            rows.append(projected)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return rows


def instance_config(args: argparse.Namespace):
    """`(dagster.yaml, extra environment, project name)`: the repository's SQLite instance, or
    deploy/dagster.yaml on a throwaway PostgreSQL server."""
    import contextlib

    if not args.postgres:
        return contextlib.nullcontext((None, None, "sqlite"))
    return postgres_instance(args)


def postgres_instance(args: argparse.Namespace):
    import contextlib

    sys.path.insert(0, str(scale_build.REPO))
    from quantlab_pipeline_tests.deploy.postgres import temporary_postgres

    @contextlib.contextmanager
    def managed():
        root = args.data_dir / "postgres"
        if root.exists():  # its database went with the last server: start afresh
            shutil.rmtree(root)
        with temporary_postgres() as server:
            env = {
                **server.env(),
                "DAGSTER_ARTIFACTS_DIR": str(root / ".dagster"),
                "DAGSTER_COMPUTE_LOGS_DIR": str(root / ".dagster" / "compute_logs"),
            }
            yield scale_build.REPO / "deploy" / "dagster.yaml", env, "postgres"

    return managed()


if __name__ == "__main__":
    main()
