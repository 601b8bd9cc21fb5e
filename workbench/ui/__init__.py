"""Gradio UI: one create_*_tab builder per tab; handlers call services and never train."""
