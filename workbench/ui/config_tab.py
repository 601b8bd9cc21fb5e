"""Config tab: edit a run configuration as YAML and check it before anything is launched."""
from __future__ import annotations

import gradio as gr
import yaml

from workbench.config.escaping import plain
from workbench.config.fields import MAX_FILE_BYTES, ConfigError, parse_text
from workbench.config.schema import DistillConfig


def check_config(text: str) -> tuple[str, str]:
    """(verdict markdown, resolved YAML) for a YAML text; errors name the field and the allowed range. Any
    text a caller sends, however long, nested or malformed, gets a message, never a traceback; what the
    message quotes is escaped (a value may hold HTML)."""
    if not isinstance(text, str) or len(text) > MAX_FILE_BYTES:
        return f"**Not a config:** send YAML text of at most {MAX_FILE_BYTES // 2**20} MiB.", ""
    try:
        data = parse_text(text) or {}
        config = DistillConfig.from_dict(data)
    except ConfigError as err:
        items = "\n".join(f"- **{plain(field)}**: {plain(msg)}" for field, msg in err.problems)
        return f"**Invalid config:**\n{items}", ""
    except ValueError as err:
        return f"**Not valid YAML:** {plain(err)}", ""
    return "**Valid.** Run it with `python -m workbench train CONFIG.yaml`.", yaml.safe_dump(
        config.to_dict(), sort_keys=False)


def create_config_tab(example_yaml: str) -> None:
    with gr.Tab("Config", id="config"):
        editor = gr.Code(value=example_yaml, language="yaml", label="Run configuration (YAML)")
        check = gr.Button("Check config", variant="primary")
        verdict = gr.Markdown()
        resolved = gr.Code(language="yaml", label="Resolved (every field, defaults filled in)", interactive=False)
        check.click(check_config, inputs=editor, outputs=[verdict, resolved], api_name="check_config")
