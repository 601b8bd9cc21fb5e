"""Chat tab: one prompt answered side by side by a run's teacher, its student at a saved step and its CE-only
baseline, streamed as the tokens come, with the sampling settings beside each answer. Once written, each
student token is coloured by how much the teacher disagreed with it (KL(student ‖ teacher) where it was
chosen, as Inspect's Sample view colours); click a token for both models' top-k there. All the work is
eval/chat.py's, through the inspector's loaded models; every model-written text is escaped here."""
from __future__ import annotations

import html
import math
from typing import Iterator

import gradio as gr
import plotly.graph_objects as go

from workbench.config.escaping import plain
from workbench.config.fields import ConfigError
from workbench.eval.chat import (
    MAX_NEW_TOKENS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_TEMPERATURE,
    ONE_TOKENIZER,
    TOP_K,
    Answer,
    ChatSettings,
    Rated,
    chat_settings,
    chat_stream,
    open_chat,
)
from workbench.eval.inspector import whole
from workbench.ui.heatmap import CLICK_JS, CSS, token_heatmap
from workbench.ui.pickers import run_picker
from workbench.ui.plots import token_distributions
from workbench.ui.services import Services

ROLES = {"teacher": "Teacher", "student": "Student", "baseline": "CE-only baseline"}
RATED = "KL(student ‖ teacher)"
WRITING = "▍"  # the cursor an answer shows while it is still being written
STARTED = ("succeeded", "running", "cancelled", "failed", "interrupted")  # runs that have saved students


def _runs(services: Services) -> list[str]:
    runs = services.store.runs()
    return runs[runs.status.isin(STARTED)].run_id.tolist()


def answer_html(answer: Answer | None, selected: int | None = None) -> str:
    """A rated answer as tokens coloured by the teacher's disagreement (clickable); otherwise its text so far.
    Both escaped: the model wrote them."""
    if answer is None:
        return ""
    if answer.rated is not None:
        return token_heatmap(["", *answer.rated.tokens], answer.rated.rkl, RATED, selected)
    return f'<div class="dw-heatmap">{html.escape(answer.text)}{"" if answer.done else WRITING}</div>'


def answer_head(role: str, answer: Answer | None, settings: ChatSettings, missing: str = "") -> str:
    """Markdown above an answer: which model, the settings it was sampled with, and what it took."""
    if answer is None:
        return f"### {ROLES[role]}\n\n{plain(missing)}"
    lines = [f"### {ROLES[role]}", f"{plain(answer.title)}", f"Sampling: {settings.describe()}."]
    n = len(answer.ids)
    if not answer.done:
        lines.append(f"Writing: {n} tokens, {answer.seconds:.1f} s…")
    else:
        lines.append(f"{n} tokens in {answer.seconds:.2f} s ({n / max(answer.seconds, 1e-9):.0f} tokens/s).")
    if answer.rated is not None:
        r = answer.rated
        lines.append(f"Rated by the teacher per token (T = 1): mean {RATED} {_mean(r.rkl):.3f} nats; the "
                     f"teacher's log-probability of its tokens {_mean(r.teacher_logp):.2f} (its own "
                     f"{_mean(r.student_logp):.2f}); both models read it in {r.seconds:.2f} s. Click a token.")
    elif answer.note:
        lines.append(f"*{plain(answer.note)}*")
    elif role != "teacher" and answer.done:
        lines.append("The teacher is reading the answer…")
    return "\n\n".join(lines)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def answer_prompt(services: Services, run_id, key, prompt, temperature, top_p, max_new_tokens, seed
                  ) -> Iterator[tuple]:
    """The Send handler: (message, three heads, three answers, the rated answers kept for clicks, the click's
    text, its figure) once per streamed round. A refusal changes the message alone: what was shown stays."""
    def refused(text: str) -> tuple:
        return (text, *(gr.skip(),) * 9)

    if not isinstance(run_id, str) or not run_id:
        yield refused("Pick a run first.")
        return
    if not isinstance(key, str) or not key:
        yield refused("Pick a saved student first.")
        return
    try:
        settings = chat_settings(temperature, top_p, max_new_tokens, seed)
        chat = open_chat(services.inspector, run_id, key, services.baseline_of(run_id), prompt, settings)
    except (ValueError, OSError, RuntimeError) as err:
        yield refused(said(err))
        return
    try:
        for answers in chat_stream(chat, settings.seed):
            by_role = {answer.role: answer for answer in answers}
            heads = [answer_head(role, by_role.get(role), settings, chat.missing.get(role, "")) for role in ROLES]
            bodies = [answer_html(by_role.get(role)) for role in ROLES]
            rated = {a.role: a for a in answers if a.rated is not None}
            yield "", *heads, *bodies, rated, "", None
    except (ValueError, OSError, RuntimeError) as err:  # out of memory, a model that cannot run this prompt
        yield refused(said(err))


def said(err: Exception) -> str:
    """A refusal as Markdown: each bad field named, or the error's own words."""
    if isinstance(err, ConfigError):
        return "\n".join(f"**{plain(field)}**: {plain(message)}" for field, message in err.problems)
    return f"**{plain(err)}**"


def inspect_token(role: str, rated: dict, clicked) -> tuple[str, str, go.Figure | None]:
    """(the answer with the token outlined, what the teacher made of it, both top-k) for a clicked token of
    `role`'s answer. `clicked` comes from the browser: it is checked like any value sent."""
    answer = rated.get(role) if isinstance(rated, dict) else None
    if answer is None:
        return gr.skip(), "This answer is not rated: nothing to show for its tokens.", gr.skip()
    r: Rated = answer.rated
    try:
        position = whole(clicked, "position", len(r.tokens))
    except ValueError as err:
        return gr.skip(), said(err), gr.skip()
    top = r.top[position]
    detail = (f"**{plain(ROLES[role])}**, answer token {position + 1} ({plain(repr(r.tokens[position]))}): "
              f"{RATED} {r.rkl[position]:.3f} nats where it was chosen; the teacher gives that token probability "
              f"{math.exp(r.teacher_logp[position]):.3f}, the {ROLES[role].lower()} "
              f"{math.exp(r.student_logp[position]):.3f}. Below: both models' top-{TOP_K} there (T = 1), and the mass "
              "each puts on every other token.")
    figure = token_distributions(top, 1.0, r.context + "".join(r.tokens[:position]))
    if role == "baseline":
        figure.update_traces(name="CE-only baseline", selector=dict(name="student"))
    return answer_html(answer, position), detail, figure


def choose_run(services: Services, run_id) -> tuple:
    """A run picked: its saved students (the latest chosen), and what its columns will be able to show."""
    if not isinstance(run_id, str) or not run_id:
        return gr.skip(), gr.skip()
    try:
        keys = [point.key for point in services.inspector.points(run_id)]
        cross = services.inspector.cross_tokenizer(run_id)
    except (ValueError, OSError) as err:
        return gr.Dropdown(choices=[], value=None), f"**{plain(err)}**"
    baseline = services.baseline_of(run_id)
    notes = [f"CE-only baseline: {plain(baseline)}." if baseline else "No CE-only baseline for this run."]
    if cross:
        notes.append(f"Student answers are {plain(ONE_TOKENIZER)}.")
    return gr.Dropdown(choices=keys, value=keys[-1]), " ".join(notes)


def create_chat_tab(services: Services) -> None:
    with gr.Tab("Chat", id="chat") as tab:
        gr.Markdown("One prompt, answered side by side by the run's **teacher**, its **student** at a saved step "
                    "and its **CE-only baseline** (when one finished: the same student trained on the labels "
                    "alone), token by token. Each student token is then coloured by how much the teacher "
                    f"disagreed with it ({RATED} where it was chosen); **click a token** to see both "
                    "distributions. The chat template is applied when the model has one.")
        with gr.Row():
            run = gr.Dropdown([], label="Run", allow_custom_value=True, elem_id="chat-run")
            step = gr.Dropdown([], label="Student (saved step)", allow_custom_value=True, elem_id="chat-step")
        prompt = gr.Textbox(label=f"Prompt (up to {MAX_PROMPT_CHARS:,} characters)", lines=3,
                            max_length=MAX_PROMPT_CHARS, elem_id="chat-prompt",
                            value="Write one sentence about the sea.")
        with gr.Row():
            temperature = gr.Slider(0, MAX_TEMPERATURE, value=0.7, step=0.05, label="Temperature (0 = greedy)",
                                    elem_id="chat-temperature")
            top_p = gr.Slider(0.05, 1, value=0.95, step=0.05, label="Top-p", elem_id="chat-top-p")
            max_new = gr.Slider(1, MAX_NEW_TOKENS, value=64, step=1, label="Max new tokens", elem_id="chat-max-new")
            seed = gr.Number(0, precision=0, minimum=0, maximum=MAX_SEED, label="Seed", elem_id="chat-seed")
        send = gr.Button("Send", variant="primary", elem_id="chat-send")
        message = gr.Markdown(elem_id="chat-message")
        heads, bodies = [], []
        with gr.Row(equal_height=False):
            for role in ROLES:
                with gr.Column():
                    heads.append(gr.Markdown(f"### {ROLES[role]}", elem_id=f"chat-{role}-head"))
                    # Only the students' tokens are rated, so only theirs are clickable.
                    bodies.append(gr.HTML("", css_template=CSS, js_on_load=None if role == "teacher" else CLICK_JS,
                                          elem_id=f"chat-{role}"))
        detail = gr.Markdown(elem_id="chat-detail")
        distributions = gr.Plot(label="Teacher vs student at the clicked token", elem_id="chat-distributions")
        # The rated answers of the last Send (top-k rows only, a few KB), kept on the server for the clicks.
        rated = gr.State({})

    tab.select(lambda chosen: run_picker(_runs(services), chosen), run, run, api_name="chat_runs")
    run.input(lambda r: choose_run(services, r), run, [step, message], api_name="chat_run")
    inputs = [run, step, prompt, temperature, top_p, max_new, seed]

    def send_prompt(run_id, key, text, t, p, n, s):  # a generator function: Gradio streams what it yields
        yield from answer_prompt(services, run_id, key, text, t, p, n, s)

    send.click(send_prompt, inputs, [message, *heads, *bodies, rated, detail, distributions], api_name="chat")
    for role, body in zip(ROLES, bodies):
        if role != "teacher":
            body.click(_clicker(role), rated, [body, detail, distributions])


def _clicker(role: str):
    def click(shown: dict, evt: gr.EventData):
        data = getattr(evt, "_data", None)
        return inspect_token(role, shown, data.get("pos") if isinstance(data, dict) else None)
    return click
