"""The demo page: one question answered at every scale side by side, and the scale the predictor routes to.

``demo.app.build_demo(model)`` returns the Gradio ``Blocks`` (``scripts/demo.py`` launches it);
``demo.session.load_demo_model`` picks the AdaptiveM3 it shows; ``demo.views`` and ``demo.page`` are the pure
drawing parts (pooled views, FLOPs savings, HTML); ``demo.router`` builds the small certified predictor shipped for
it. Only ``demo.app`` imports gradio (the ``demo`` extra). Depends on m3, predictor and adaptive.
"""
