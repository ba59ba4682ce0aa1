"""The Gradio demo (`mmdlm demo`): `app.py` builds and serves the page, `config.py`
holds its settings. Importing `mmdlm.demo.app` needs gradio (the `demo` extra)."""
