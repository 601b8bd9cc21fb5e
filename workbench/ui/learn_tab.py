"""Learn tab: what distillation trains on, shown on a real teacher before any run exists. Type or pick a
sentence; the offline default teacher and student read it once; then the position, T and α re-read the kept
logits (no model runs): the soft label against the hard one, the loss's two terms, and why KL is scaled by T².
Below, what storing a teacher's signal costs. Every value an HTTP caller sends is checked (lesson.check_*,
lesson_reader.check_text, storage_cost.check_scenario), and token text is escaped before it is shown."""
from __future__ import annotations

import time
from dataclasses import dataclass

import gradio as gr

from workbench.config.escaping import plain
from workbench.config.fields import ConfigError
from workbench.engine.storage_cost import (
    CACHE_K,
    DEFAULT_CORPUS_TOKENS,
    PRESETS,
    SMOLLM2_VOCAB,
    check_scenario,
    costs,
)
from workbench.engine.teacher_cache import list_caches
from workbench.eval.lesson import (
    MAX_TEMPERATURE,
    check_alpha,
    check_position,
    check_temperature,
    top_k_mass,
)
from workbench.eval.lesson_reader import (
    MAX_TEXT_CHARS,
    MAX_TOKENS,
    LessonReader,
    LessonUnavailable,
    Reading,
    lesson_at,
)
from workbench.ui import learn_text
from workbench.ui.learn_plots import gradient_figure, labels_figure, loss_figure, storage_figure
from workbench.ui.services import Services

SENTENCES = (
    "In the beginning God created the heavens and the earth.",
    "The cat sat on the mat and looked out of the window at the dog.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "She opened the door, and the little dog ran out into the garden.",
    "Two plus two is four, and three plus three is six.",
)
READ, NEXT = "read so far", "predicted here"


@dataclass
class LearnView:
    tokens: list[tuple[str, str | None]]   # the HighlightedText value: what was read, the token predicted
    rows: int                              # positions the sentence has: the slider's range is [0, rows - 1]
    position: int
    labels: object
    labels_note: str
    loss: object
    loss_note: str
    gradient: object
    gradient_note: str
    status: str


def build_view(reading: Reading, alpha: float, temperature: float, position: int) -> LearnView:
    """The view at one position from kept logits: softmaxes only, no model."""
    lesson = lesson_at(reading, alpha, temperature, position)
    tokens = [(text, READ if i <= position else NEXT if i == position + 1 else None)
              for i, text in enumerate(reading.analysis.tokens)]
    return LearnView(tokens, len(reading.analysis), position, labels_figure(lesson.view, temperature),
                     learn_text.labels_note(lesson.view, temperature), loss_figure(lesson.terms),
                     learn_text.loss_note(lesson.terms), gradient_figure(lesson.curve, temperature, lesson.at_t),
                     learn_text.gradient_note(lesson.curve, temperature, lesson.at_t), "")


def first_view(reader: LessonReader, text, alpha, temperature) -> LearnView:
    """Read `text` (both models run once, unless it was read before) and show the position where the
    teacher's second choice is likeliest."""
    alpha, temperature = check_alpha(alpha), check_temperature(temperature)
    start = time.perf_counter()
    reading = reader.read(text)
    view = build_view(reading, alpha, temperature, reading.first)
    view.status = learn_text.read_status(reading, time.perf_counter() - start)
    return view


def moved_view(reader: LessonReader, text, alpha, temperature, position) -> LearnView:
    """A slider moved: the kept logits of `text` re-read at the new α, T or position."""
    alpha, temperature = check_alpha(alpha), check_temperature(temperature)
    start = time.perf_counter()
    reading = reader.read(text)
    view = build_view(reading, alpha, temperature, check_position(position, len(reading.analysis)))
    view.status = f"Re-read from the kept logits in {1000 * (time.perf_counter() - start):.0f} ms (no model ran)."
    return view


def storage_view(services: Services, reader: LessonReader, vocab, tokens, k, text, position) -> tuple[object, str]:
    """(the storage plot, its note) for the user's numbers and the presets; with the top-k mass at the position
    shown when its sentence's logits are kept."""
    scenario, k = check_scenario(vocab, tokens, k)
    caches = [c for c in list_caches(services.caches_dir) if c.get("mass kept") is not None]
    note = learn_text.storage_note(scenario, k, caches, services.caches_dir, kept_mass(reader, text, position, k))
    return storage_figure(costs([scenario, *PRESETS], k), k), note


def kept_mass(reader: LessonReader, text, position, k: int) -> tuple[int, float] | None:
    """(position, the teacher's mass in its top k there) from kept logits; None when none are kept."""
    reading = reader.kept_reading(text) if isinstance(text, str) else None
    if reading is None:
        return None
    try:
        row = check_position(position, len(reading.analysis))
    except ConfigError:
        return None
    return row, top_k_mass(reading.analysis.teacher_logits[row], k)


def refusal(err: Exception) -> str:
    """What went wrong, as Markdown: the fields named for bad input, the message for anything else."""
    if isinstance(err, ConfigError):
        return "\n".join(f"**{plain(name)}**: {plain(message)}" for name, message in err.problems)
    if isinstance(err, LessonUnavailable):
        return str(err)  # our own text, with a command in a code span
    return f"**Could not read the sentence:** {plain(err)}"


@dataclass
class LearnUi:
    """The tab's components that handlers read or write."""
    preset: gr.Dropdown
    text: gr.Textbox
    read_button: gr.Button
    status: gr.Markdown
    tokens: gr.HighlightedText
    position: gr.Slider
    temperature: gr.Slider
    alpha: gr.Slider
    plots: list          # labels, loss, gradient: (plot, note) pairs in LearnView's order
    storage: list        # vocabulary, tokens, k, button, plot, note
    read_text: gr.State  # the sentence whose logits the sliders re-read
    # Ticks from when the page opens until the models are loaded (once the default is prepared), so the first
    # sentence waits only for its forward, not for loading.
    warmer: gr.Timer

    @property
    def views(self) -> list:
        """LearnView's outputs, in shown()'s order."""
        return [self.tokens, self.position, *self.plots, self.status]


def create_learn_tab(services: Services) -> None:
    reader = LessonReader(cache_dir=services.cache_dir)
    with gr.Tab("Learn", id="learn"):
        gr.Markdown(learn_text.INTRO)
        with gr.Row():
            preset = gr.Dropdown(list(SENTENCES), value=None, label="Pick a sentence", scale=1)
            text = gr.Textbox(SENTENCES[0], label="…or type one", max_lines=3, scale=2, max_length=MAX_TEXT_CHARS,
                              info=f"at most {MAX_TEXT_CHARS:,} characters; the first {MAX_TOKENS} tokens are read")
        read_button = gr.Button("Read it with the teacher and the student", variant="primary")
        status = gr.Markdown(elem_id="learn-status")
        tokens = gr.HighlightedText(label="Click a token to see what the teacher expected there",
                                    color_map={READ: "#c7d2fe", NEXT: "#fdba74"}, show_legend=True,
                                    combine_adjacent=False, elem_id="learn-tokens")
        with gr.Row():
            position = gr.Slider(0, 1, value=0, step=1, label="Position (the token predicted is the next one)",
                                 elem_id="learn-position")
            temperature = gr.Slider(0.1, MAX_TEMPERATURE, value=1.5, step=0.1, label="Temperature T",
                                    elem_id="learn-temperature")
            alpha = gr.Slider(0, 1, value=0.5, step=0.05, label="α (weight of CE on the actual token)",
                              elem_id="learn-alpha")
        plots = [*_explained("Soft vs hard label", learn_text.SOFT_VS_HARD + "\n\n" + learn_text.TEMPERATURE,
                             "learn-labels"),
                 *_explained("The loss at this position", learn_text.ALPHA, "learn-loss"),
                 *_explained("KL's gradient against T", learn_text.WHY_T2, "learn-gradient")]
        storage = _storage_panel(services, reader)
        ui = LearnUi(preset, text, read_button, status, tokens, position, temperature, alpha, plots, storage,
                     gr.State(None), gr.Timer(3.0))
    _wire(ui, services, reader)


def _explained(label: str, text: str, elem_id: str) -> tuple[gr.Plot, gr.Markdown]:
    """A plot with its concept's text beside it and a note with the numbers of the view below the text."""
    with gr.Row():
        plot = gr.Plot(label=label, scale=3, elem_id=elem_id)
        with gr.Column(scale=2):
            gr.Markdown(text)
            note = gr.Markdown(elem_id=f"{elem_id}-note")
    return plot, note


def _storage_panel(services: Services, reader: LessonReader) -> list:
    with gr.Accordion("What storing the teacher costs", open=True):
        gr.Markdown(learn_text.STORAGE)
        with gr.Row():
            vocab = gr.Number(SMOLLM2_VOCAB, label="Vocabulary", precision=0)
            tokens = gr.Number(DEFAULT_CORPUS_TOKENS, label="Tokens", precision=0)
            k = gr.Number(CACHE_K, label="k (top-k cache)", precision=0)
            button = gr.Button("Compute")
        # Arithmetic only: shown before any sentence is read.
        figure, note = storage_view(services, reader, SMOLLM2_VOCAB, DEFAULT_CORPUS_TOKENS, CACHE_K, None, None)
        return [vocab, tokens, k, button, gr.Plot(figure, label="Storage"),
                gr.Markdown(note, elem_id="learn-storage-note")]


def shown(view: LearnView, slider: bool) -> list:
    """A view as the tab's outputs; the position slider's range is set only when a sentence is read or a token
    clicked (setting it on a slider's own move would fight the drag)."""
    bounds = gr.Slider(0, max(view.rows - 1, 1), value=view.position, step=1) if slider else gr.skip()
    return [view.tokens, bounds, view.labels, view.labels_note, view.loss, view.loss_note, view.gradient,
            view.gradient_note, view.status]


def _wire(ui: LearnUi, services: Services, reader: LessonReader) -> None:
    def failed(err: Exception) -> list:
        return [gr.skip()] * (len(ui.views) - 1) + [refusal(err)]

    def on_read(body, a, t):
        try:
            return [*shown(first_view(reader, body, a, t), slider=True), body]
        except Exception as err:  # noqa: BLE001 - bad input named by field, load problems shown as text
            return [*failed(err), gr.skip()]

    def on_move(body, a, t, pos):
        if body is None:
            return failed(ConfigError([("text", "read a sentence first")]))
        try:
            return shown(moved_view(reader, body, a, t, pos), slider=False)
        except Exception as err:  # noqa: BLE001 - as on_read
            return failed(err)

    def on_token(body, a, t, evt: gr.SelectData):
        if body is None or not isinstance(evt.index, int) or evt.index < 1:
            return [gr.skip()] * len(ui.views)  # the first token is context only: nothing predicts it
        try:
            return shown(moved_view(reader, body, a, t, evt.index - 1), slider=True)
        except Exception as err:  # noqa: BLE001 - as on_read
            return failed(err)

    def on_storage(v, n, top, body, pos):
        try:
            return storage_view(services, reader, v, n, top, body, pos)
        except ConfigError as err:
            return gr.skip(), refusal(err)

    vocab, tokens, k, button, plot, note = ui.storage
    storage = dict(fn=on_storage, inputs=[vocab, tokens, k, ui.read_text, ui.position], outputs=[plot, note])
    knobs = [ui.read_text, ui.alpha, ui.temperature]
    ui.preset.input(lambda chosen: chosen or gr.skip(), ui.preset, ui.text)
    ui.read_button.click(on_read, [ui.text, ui.alpha, ui.temperature], ui.views + [ui.read_text],
                         api_name="learn_read").then(**storage)
    ui.text.submit(on_read, [ui.text, ui.alpha, ui.temperature], ui.views + [ui.read_text],
                   api_visibility="private").then(**storage)
    ui.position.input(on_move, knobs + [ui.position], ui.views, api_name="learn_view")
    for slider in (ui.temperature, ui.alpha):
        slider.input(on_move, knobs + [ui.position], ui.views, api_visibility="private")
    ui.tokens.select(on_token, knobs, ui.views, api_visibility="private")
    button.click(api_name="learn_storage", **storage)
    ui.warmer.tick(lambda: gr.Timer(active=not reader.warm()), outputs=ui.warmer, api_visibility="private")
