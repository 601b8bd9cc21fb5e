"""Compare tab: overlay runs' curves, their configs and final held-out metrics side by side, a read-only
SQL box over the store, and export of the table shown."""
from __future__ import annotations

import time

import gradio as gr
import pandas as pd

from workbench.config.escaping import plain
from workbench.engine.baseline import baseline_verdict
from workbench.store.database import QUERY_MAX_ROWS, StoreError, export_frame
from workbench.ui.plots import compare_curves
from workbench.ui.services import Services

TERMS = ["loss", "ce", "kd", "learning_rate", "grad_norm", "tokens_per_s"]
EXAMPLE_SQL = ("SELECT run_id, divergence, alpha, temperature, status, steps\nFROM runs\n"
               "ORDER BY created DESC")


def run_choices(services: Services) -> list[str]:
    return services.store.runs().run_id.tolist()


def compare(services: Services, run_ids: list[str] | None, term: str) -> tuple[object, pd.DataFrame, str]:
    """(curves, table, verdict). A chosen run's CE-only baselines join the comparison on their own."""
    run_ids = list(run_ids or [])
    run_ids += services.store.baselines(run_ids)
    table = services.store.compare(run_ids)
    return compare_curves(services.store.metrics(run_ids), term), table, baseline_verdict(table)


def run_sql(services: Services, sql: str) -> tuple[pd.DataFrame | None, str]:
    try:
        frame = services.store.query(sql)
    except StoreError as err:
        return None, f"**{plain(err)}**"
    if frame.attrs.get("truncated"):
        return frame, (f"**Cut at the first {QUERY_MAX_ROWS:,} rows**: the query returns more. Add a LIMIT or a WHERE "
                       "to see the rest; the export holds what is shown.")
    return frame, ""


def export(services: Services, frame: pd.DataFrame | None, kind: str) -> tuple[str | None, str]:
    if frame is None or len(frame) == 0:
        return None, "Nothing to export: the table is empty."
    if len(frame) > QUERY_MAX_ROWS:  # the table comes from the caller: no more than a query could show
        return None, f"Not exported: at most {QUERY_MAX_ROWS:,} rows."
    path = services.exports_dir / f"table-{time.strftime('%Y%m%d-%H%M%S')}.{kind}"
    export_frame(pd.DataFrame(frame), path)
    return str(path), f"Exported {len(frame)} rows to `{path.name}`."


def create_compare_tab(services: Services) -> None:
    with gr.Tab("Compare", id="compare") as tab:
        with gr.Row():
            runs = gr.Dropdown(run_choices(services), multiselect=True, label="Runs", elem_id="compare-runs")
            term = gr.Radio(TERMS, value="loss", label="Curve")
        verdict = gr.Markdown(elem_id="compare-verdict")
        curves = gr.Plot(label="Training curves", elem_id="compare-curves")
        table = gr.Dataframe(label="Configs and final held-out metrics", interactive=False, elem_id="compare-table")
        sql = gr.Code(EXAMPLE_SQL, language="sql", label="SQL over the store (SELECT only; tables runs, metrics, "
                                                           "evals, artifacts)")
        run_query = gr.Button("Run query")
        with gr.Row():
            kind = gr.Radio(["csv", "parquet"], value="csv", label="Export as")
            export_button = gr.Button("Export the table")
            download = gr.DownloadButton("Download", visible=False)
        message = gr.Markdown()

    tab.select(lambda chosen: gr.Dropdown(choices=run_choices(services), value=chosen), runs, runs)
    for trigger in (runs.change, term.change):
        trigger(lambda r, t: compare(services, r, t), [runs, term], [curves, table, verdict])
    run_query.click(lambda q: run_sql(services, q), sql, [table, message], api_name="sql")

    def on_export(frame, chosen_kind):
        path, text = export(services, frame, chosen_kind)
        return gr.DownloadButton(value=path, visible=path is not None), text

    export_button.click(on_export, [table, kind], [download, message])
