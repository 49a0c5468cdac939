"""The demo page: one question answered at every scale side by side, and the scale the predictor routes to.

``m3_demo.app.build_demo(model)`` returns the Gradio ``Blocks`` (``scripts/demo.py`` launches it);
``m3_demo.session.load_demo_model`` picks the AdaptiveM3 it shows; ``m3_demo.views`` and ``m3_demo.page`` are the
pure drawing parts (pooled views, FLOPs savings, HTML); ``m3_demo.router`` builds the small certified predictor
shipped for it. Only ``m3_demo.app`` imports gradio (the ``demo`` extra). Depends on m3, predictor and adaptive.
"""
