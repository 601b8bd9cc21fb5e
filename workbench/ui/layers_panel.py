"""Where the Set-up tab shows co-distillation (the teacher trains too; α's schedule) and hidden-state
matching and attention transfer (the layer map and the term's weight): one group per strategy's section,
shown for that strategy; a field added to one of these sections shows in its group."""
from __future__ import annotations

from workbench.ui.form import STRATEGY_SECTIONS
from workbench.ui.form_layout import Group

LAYER_NOTE = ("**Layer matching**, added to α·CE + (1−α)·KD. Hidden states of other widths meet through a learned "
              "projection, saved beside the student. Attention maps need eager attention, which is slower than "
              "the default kernels. An empty layer map pairs the layers evenly (a pruned student: its own).")

LAYER_GROUPS = (
    Group((("co_distillation.teacher_lr", "co_distillation.alpha_start", "co_distillation.alpha_end",
            "co_distillation.alpha_warmup_steps", "co_distillation.alpha_schedule"),
           ("co_distillation.mutual", "co_distillation.mutual_weight")),
          strategies=(STRATEGY_SECTIONS["co_distillation"],), section="co_distillation",
          note="**Co-distillation: the teacher trains on the labels alongside the student.** The student's α (CE "
               "weight) moves from its start to its end over the warm-up: early on the teacher is noise, so CE "
               "carries the student. Divergence and T above shape the KD term."),
    Group((("hidden.layer_map", "hidden.loss", "hidden.weight"),), strategies=(STRATEGY_SECTIONS["hidden"],),
          section="hidden", note=LAYER_NOTE),
    Group((("attention.layer_map", "attention.loss", "attention.heads", "attention.weight"),),
          strategies=(STRATEGY_SECTIONS["attention"],), section="attention", note=LAYER_NOTE),
)
