"""The marketers' workbench (`retain workbench`): the policy folder in the browser.

    from engine.workbench.app import create_app
    app = create_app("policies", input_path="out/decisions.parquet")   # FastAPI app; uvicorn.run(app)

Modules: `workspace` (the working copy: check, diff, save, sign-off), `editing` (forms <-> YAML items,
problems -> fields), `tables` (decision tables), `charts` (SVG bars), `app` (pages and endpoints).
Templates and the vendored htmx live in templates/ and static/.
"""
