"""A local web app for nst_jax (``nst-app``) and a live view of a running optimization.

Needs the ``app`` extra (``pip install ".[app]"``: Starlette and uvicorn). Modules: ``feed``
(progress of one run), ``jobs`` (settings, the device thread, AdaIN and Gatys jobs), ``sessions``
(per-tab storage and uploads), ``server`` (routes), ``live`` (the view ``nst-gatys --web`` serves).
The command line is :mod:`nst_jax.cli.app`.
"""
