"""The browser: `app` builds the Gradio Blocks from one create_*_tab per tab; `services` is what the
handlers call (jobs, store, evaluation, inspector); `form` generates the Set-up fields from the config;
`plots` and `heatmap` draw. Handlers never train or open run files themselves. The top: imports any
package, nothing imports it but app.py."""
