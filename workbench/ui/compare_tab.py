"""Compare tab: overlay runs' curves, their configs and final held-out metrics side by side with the
verdict against their CE-only baselines, a read-only SQL box over the store with its own result table,
and export of either table."""
from __future__ import annotations

import time

import gradio as gr
import pandas as pd

from workbench.config.escaping import plain
from workbench.engine.baseline import baseline_verdict
from workbench.store.database import QUERY_MAX_ROWS, StoreError, export_frame
from workbench.ui.plots import compare_curves, compare_heldout, with_terms
from workbench.ui.pickers import run_picker
from workbench.ui.services import Services
from workbench.ui.tables import for_people

HELDOUT = "held-out CE"  # the default: one quantity for every run, whatever its α (plots.CURVE_NOTES)
TERMS = [HELDOUT, "loss", "ce", "kd", "sampled_rkl", "learning_rate", "grad_norm", "tokens_per_s"]
TABLES = ("comparison", "query result")
EXAMPLE_SQL = ("SELECT run_id, divergence, alpha, temperature, status, steps\nFROM runs\n"
               "ORDER BY created DESC")


def run_choices(services: Services) -> list[str]:
    return services.store.runs().run_id.tolist()


def compare(services: Services, run_ids: list[str] | None, term: str) -> tuple[object, pd.DataFrame, str]:
    """(curves, table, verdict). A chosen run's CE-only baselines join the comparison on their own. The
    table has each run's step beside its status: a verdict waits for both runs of a pair to finish."""
    run_ids = list(run_ids or [])
    run_ids += services.store.baselines(run_ids)
    table = services.store.compare(run_ids)
    if term == HELDOUT:
        figure = compare_heldout(services.store.evals(run_ids), dict(zip(table.run_id, table.steps)))
    else:
        # with_terms: a strategy's own terms (on-policy's sampled_rkl) live in the store's terms JSON.
        figure = compare_curves(with_terms(services.store.metrics(run_ids)), term if term in TERMS else "loss")
    return figure, table, baseline_verdict(table)


def run_sql(services: Services, sql: str) -> tuple[pd.DataFrame | None, str]:
    try:
        frame = services.store.query(sql)
    except StoreError as err:
        return None, f"**Query refused or failed:** {plain(err)}"
    if frame.attrs.get("truncated"):
        return frame, (f"**Cut at the first {QUERY_MAX_ROWS:,} rows**: the query returns more. Add a LIMIT or a WHERE "
                       "to see the rest; the export holds what is shown.")
    return frame, ""


def export(services: Services, frame: pd.DataFrame | None, kind: str) -> tuple[str | None, str]:
    if frame is None or len(frame) == 0:
        return None, "Nothing to export: the table is empty."
    if kind not in ("csv", "parquet"):
        return None, "Export as csv or parquet."
    if len(frame) > QUERY_MAX_ROWS:  # the table comes from the caller: no more than a query could show
        return None, f"Not exported: at most {QUERY_MAX_ROWS:,} rows."
    path = services.exports_dir / f"table-{time.strftime('%Y%m%d-%H%M%S')}.{kind}"
    export_frame(pd.DataFrame(frame), path)
    return str(path), f"Exported {len(frame)} rows to {plain(path.name)}."


def create_compare_tab(services: Services) -> None:
    with gr.Tab("Compare", id="compare") as tab:
        with gr.Row():
            runs = gr.Dropdown(run_choices(services), multiselect=True, label="Runs", elem_id="compare-runs")
            term = gr.Radio(TERMS, value=HELDOUT, label="Curve")
        verdict = gr.Markdown(elem_id="compare-verdict")
        curves = gr.Plot(label="Curves", elem_id="compare-curves")
        table = gr.Dataframe(label="Configs and final held-out metrics", interactive=False,
                             elem_id="compare-table")
        sql = gr.Code(EXAMPLE_SQL, language="sql", label="SQL over the store (SELECT only; tables runs, metrics, "
                                                           "evals, artifacts)")
        run_query = gr.Button("Run query")
        sql_message = gr.Markdown(elem_id="sql-message")
        result = gr.Dataframe(label="Query result", interactive=False, elem_id="sql-result")
        with gr.Row():
            which = gr.Radio(list(TABLES), value=TABLES[0], label="Export")
            kind = gr.Radio(["csv", "parquet"], value="csv", label="as")
            export_button = gr.Button("Export")
            download = gr.DownloadButton("Download", visible=False)
        message = gr.Markdown()
        # The tables' full numbers, for export; the tables show them rounded.
        raw = gr.State({})

    def on_compare(chosen, curve, kept):
        figure, frame, text = compare(services, chosen, curve)
        return figure, for_people(frame), text, {**kept, TABLES[0]: frame}

    def on_sql(query, kept):
        frame, text = run_sql(services, query)
        return (for_people(frame) if frame is not None else gr.skip()), text, {**kept, TABLES[1]: frame}

    def on_export(kept, chosen_table, chosen_kind):
        path, text = export(services, kept.get(chosen_table) if isinstance(kept, dict) else None, chosen_kind)
        return gr.DownloadButton(value=path, visible=path is not None), text

    tab.select(lambda chosen: run_picker(run_choices(services), chosen), runs, runs, api_name="compare_runs")
    for trigger in (runs.change, term.change):
        trigger(on_compare, [runs, term, raw], [curves, table, verdict, raw])
    run_query.click(on_sql, [sql, raw], [result, sql_message, raw], api_name="sql")
    export_button.click(on_export, [raw, which, kind], [download, message])
