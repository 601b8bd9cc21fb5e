"""On-policy parts of the UI: the Set-up group of the on_policy section, and in Runs, for an on-policy run,
the completions its student sampled last, the teacher's reverse KL on those samples, and where a step's
time goes (sampling, the teacher's scoring, the update)."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from workbench.store.rundir import finite_number
from workbench.ui.form import STRATEGY_SECTIONS
from workbench.ui.form_layout import Group
from workbench.ui.plots import sampled_rkl, step_seconds, with_terms
from workbench.ui.services import Services

# Every other on_policy field follows in the group's last rows (it owns the section).
ON_POLICY_GROUP = Group(
    (("on_policy.prompts", "on_policy.lmbda", "on_policy.beta", "on_policy.alpha"),
     ("on_policy.temperature", "on_policy.max_new_tokens", "on_policy.seq_kd", "on_policy.prompt_tokens")),
    strategies=(STRATEGY_SECTIONS["on_policy"],), section="on_policy",
    note="**On-policy: the student learns from the teacher's judgement of its own samples.** On a share lmbda "
         "of the steps the student writes completions for the prompts and the teacher scores every token it "
         "sampled; the loss is the divergence on those tokens, so the student learns to recover from its own "
         "mistakes. β = 1 (the default) is reverse KL, mode-seeking: the student keeps to what the teacher finds "
         "likely rather than spreading over all it might say; β = 0 is forward KL, between them the mixture JSD.")

SAMPLE_COLUMNS = ["prompt", "completion", "tokens"]
TEXT_MAX = 2000  # characters of a prompt or completion shown; a completion may run to 32k tokens


@dataclass
class OnPolicyView:
    """The Runs tab's on-policy components, in one box shown only for an on-policy run."""
    box: gr.Column
    note: gr.Markdown
    samples: gr.Dataframe
    rkl: gr.Plot
    seconds: gr.Plot

    @property
    def outputs(self) -> list:
        return [self.box, self.note, self.samples, self.rkl, self.seconds]


def create_on_policy_view() -> OnPolicyView:
    with gr.Column(visible=False, elem_id="run-on-policy") as box:
        note = gr.Markdown(elem_id="on-policy-note")
        # Model text in "str" cells: Gradio shows it as text, never as Markdown or HTML.
        samples = gr.Dataframe(samples_frame([]), label="The student's latest samples", interactive=False,
                               wrap=True, datatype=["str", "str", "number"], elem_id="on-policy-samples",
                               column_widths=["44%", "48%", "8%"])  # without, the prompt's text takes the width
        with gr.Row():
            rkl = gr.Plot(label="Teacher's reverse KL on the student's own samples", elem_id="on-policy-rkl")
            seconds = gr.Plot(label="Seconds per step", elem_id="on-policy-seconds")
    return OnPolicyView(box, note, samples, rkl, seconds)


def _text(value) -> str:
    text = value if isinstance(value, str) else ""
    return text if len(text) <= TEXT_MAX else text[:TEXT_MAX] + " …"


def samples_frame(samples: list[dict]) -> pd.DataFrame:
    """One row per sampled completion, its text as the model wrote it (cut to TEXT_MAX characters)."""
    rows = [{"prompt": _text(s.get("prompt")), "completion": _text(s.get("completion")),
             "tokens": finite_number(s.get("tokens"))} for s in samples]
    return pd.DataFrame(rows, columns=SAMPLE_COLUMNS)


def samples_note(metrics: pd.DataFrame, samples: list[dict]) -> str:
    """The step the samples come from and how fast the student samples, from numbers only: no model text
    reaches this Markdown."""
    step = finite_number(samples[0].get("step")) if samples else None
    head = (f"**The student's own completions at step {step:.0f}** ({len(samples)} shown)." if step is not None
            else "**No sampled completions logged yet.**")
    metrics = with_terms(metrics)
    if "sampled_tokens_per_s" not in metrics:
        return head
    sampled = metrics[metrics.sampled_tokens_per_s > 0]
    if sampled.empty:
        return head
    last = sampled.iloc[-1]
    share = finite_number(last.get("on_policy_share"))
    period = "" if share is None else f"; {share:.0%} of the steps logged at step {last.step:.0f} sampled"
    return f"{head} Sampling ran at {last.sampled_tokens_per_s:,.0f} tokens/s{period}."


def on_policy_outputs(services: Services, run_id: str | None, changed: bool) -> list:
    """OnPolicyView.outputs for a run: shown with its samples and curves for an on-policy run, hidden for
    any other. `changed`: whether the run's logged points changed since they were last shown; if not, nothing
    is sent (the Runs poll stays cheap, and a zoomed plot stays zoomed)."""
    if run_id and not changed:
        return [gr.skip()] * 5
    if not run_id or services.strategy(run_id) != "on_policy":
        return [gr.update(visible=False), *[gr.skip()] * 4]
    # Expanded once here: each view below reads the terms, and parsing them is most of a redraw's time.
    metrics, samples = with_terms(services.store.metrics([run_id])), services.latest_samples(run_id)
    return [gr.update(visible=True), samples_note(metrics, samples), samples_frame(samples), sampled_rkl(metrics),
            step_seconds(metrics)]
