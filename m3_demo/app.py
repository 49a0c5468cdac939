"""The Gradio page: :func:`build_demo` returns the ``Blocks``; ``scripts/demo.py`` only launches it.

Asking runs the model once per question (:meth:`demo.session.DemoModel.ask`: one vision pass, every scale); the
threshold (or price, for a model that routes by the priced rule), eps, token cap and model-size controls only
re-route and redraw from the stored answers. Every error a
user can cause (no image, a file that is not an image, an empty question, a cap below every scale) becomes a
message on the page, never a traceback.
"""

from __future__ import annotations

import gradio as gr

from predictor.calibration import certificate_at, certified_point

from .examples import Examples, load_examples
from .page import CSS, certificate_html, message_html, scale_card_html, summary_html
from .session import Asked, DemoModel, open_image
from .views import DEFAULT_MODEL_SIZE, MODEL_SIZES, saving

TITLE = "M3: one question at every scale"
NO_IMAGE = "Choose an example image or upload one first."
NO_QUESTION = "Type a question first (or pick one of the example questions)."
PRICE_MAX = 2.0  # the price slider's end: at 2 a query buys 576 tokens only for 2 points of P(correct) per 576 tokens


def theme() -> gr.themes.Base:
    """Gradio's default theme with system fonts: the page loads nothing from the internet."""
    system = ["ui-sans-serif", "system-ui", "sans-serif"]
    return gr.themes.Default(font=system, font_mono=["ui-monospace", "monospace"])


def check_port(port: int) -> int:
    """``port`` if a server can listen on it (0-65535; 0: any free port); ``ValueError`` naming it otherwise (the
    socket's ``OverflowError`` came only after the model had loaded)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"--port must be a whole number in [0, 65535] (0: any free port), got {port!r}")
    return port


def launch_kwargs() -> dict:
    """What ``Blocks.launch`` needs for this page besides host and port (Gradio 6 takes theme and CSS there)."""
    return {"theme": theme(), "css": CSS}


class _Page:
    """The event handlers, closed over one :class:`DemoModel` and the example set."""

    def __init__(self, model: DemoModel, examples: Examples, text_tokens: int) -> None:
        self.model = model
        self.examples = examples
        self.text_tokens = text_tokens
        self.by_epsilon = {c.epsilon: c for c in model.certificates}

    def value_of(self, epsilon) -> float:
        """The threshold (or price) certified at ``epsilon`` for the model's rule, else the model's default."""
        certificate = self.by_epsilon.get(float(epsilon)) if epsilon is not None else None
        rule, value = (None, None) if certificate is None else certified_point(certificate)
        return value if rule == self.model.rule else self.model.default_value

    def certified_at(self, value: float, cap: int | None = None):
        """The certificate that holds at this threshold or price (the slider may have moved off every certified
        one), and only without a binding token cap (a cap changes the routing the certificate covers)."""
        return None if cap is not None else certificate_at(self.model.certificates, value, self.model.rule)

    def blank(self, text: str = "", kind: str = "error") -> tuple:
        return (None, message_html(text, kind), *[""] * len(self.model.scales), "")

    def upload(self, path):
        """A new upload: shown when it reads as an image, refused with a message when it does not."""
        if path is None:
            return gr.update(), message_html(NO_IMAGE)
        try:
            open_image(path)
        except ValueError as error:
            return None, message_html(f"{error}. Upload a PNG or JPEG image.")
        return path, message_html("")

    def ask(self, image_path, question, threshold, max_tokens, size):
        if image_path is None:
            return self.blank(NO_IMAGE)
        if not isinstance(question, str) or not question.strip():
            return self.blank(NO_QUESTION)
        try:
            asked = self.model.ask(open_image(image_path), question)
        except (OSError, ValueError) as error:
            return self.blank(str(error))
        state = {"asked": asked, "truth": self.examples.truth(image_path, question)}
        message, cards, summary = self.render(state, threshold, max_tokens, size)
        return state, message, *cards, summary

    def reroute(self, state, threshold, max_tokens, size):
        if state is None:
            return (gr.update(), *[gr.update()] * len(self.model.scales), gr.update())
        message, cards, summary = self.render(state, threshold, max_tokens, size)
        return message, *cards, summary

    def render(self, state: dict, threshold, max_tokens, size) -> tuple[str, list[str], str]:
        asked: Asked = state["asked"]
        truth = state["truth"]
        threshold = float(threshold)
        cap = None if max_tokens is None or int(max_tokens) >= max(asked.visual_tokens) else int(max_tokens)
        try:
            routed = self.model.route(asked, threshold, cap)
        except ValueError as error:
            empty = [""] * len(asked.scales)
            return message_html(f"{error}: raise the token cap."), empty, ""
        grid = self.model.grid_tokens
        rule = self.model.rule
        cards = [scale_card_html(asked, i, routed, threshold, cap, grid, truth, rule) for i in range(len(asked.scales))]
        try:
            cost = saving(routed, size or DEFAULT_MODEL_SIZE, self.text_tokens)
        except ValueError as error:
            return message_html(f"no FLOPs estimate for scale {routed}: {error}", "info"), cards, ""
        summary = summary_html(asked, routed, cost, threshold, self.certified_at(threshold, cap), truth, rule)
        return message_html(""), cards, summary

    def epsilon_changed(self, epsilon):
        certificate = self.by_epsilon.get(float(epsilon))
        return gr.update(value=self.value_of(epsilon)), certificate_html(certificate)


def build_demo(model: DemoModel, examples: Examples | None = None, text_tokens: int = 30) -> gr.Blocks:
    """The demo page for ``model`` (with ``examples``: default the bundled ones). ``text_tokens``: the prompt
    length the FLOPs estimate assumes (30, the paper's Table 9). Launch it with ``**launch_kwargs()``."""
    examples = load_examples() if examples is None else examples
    page = _Page(model, examples, text_tokens)
    scales = model.scales
    # the eps whose certificate the model routes at by default; None (no eps chosen) when none does, so the page
    # starts where AdaptiveM3.generate routes
    default_epsilon = page.certified_at(model.default_value)
    default_epsilon = None if default_epsilon is None else default_epsilon.epsilon
    with gr.Blocks(title=TITLE, analytics_enabled=False) as blocks:
        gr.Markdown(
            f"## {TITLE}\nOne vision pass; the answer at {', '.join(map(str, scales))} visual tokens side by side; the "
            f"scale predictor routes each query to the fewest tokens it expects to be enough.\n\n"
            f"Using {model.source}."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    label="Image", type="filepath", image_mode=None, format="png", interactive=False, height=220,
                    elem_id="m3-image",
                )  # fmt: skip
                upload = gr.UploadButton("Upload an image", file_types=["image"], elem_id="m3-upload")
                if examples.images:
                    gr.Examples(
                        [[str(p)] for p in examples.images], inputs=[image], label="Example images",
                        elem_id="m3-example-images",
                    )  # fmt: skip
            with gr.Column(scale=1):
                question = gr.Textbox(label="Question", placeholder="what color is in the white frame ?", lines=1,
                                      elem_id="m3-question")  # fmt: skip
                if examples.questions:
                    gr.Examples(
                        [[q] for q in examples.questions.values()], inputs=[question], label="Example questions",
                        elem_id="m3-example-questions",
                    )  # fmt: skip
                ask = gr.Button("Ask at every scale", variant="primary", elem_id="m3-ask")
            with gr.Column(scale=1):
                if model.certificates:
                    epsilon = gr.Dropdown(
                        [(f"{c.epsilon:g}", c.epsilon) for c in model.certificates], value=default_epsilon,
                        label="ε: accuracy drop against 576 tokens the router may cause (certified)",
                        elem_id="m3-epsilon",
                    )  # fmt: skip
                    certificate = gr.HTML(certificate_html(page.by_epsilon.get(default_epsilon)), elem_id="m3-cert")
                if model.rule == "price":  # the priced rule: the same control, a price instead of a threshold
                    threshold = gr.Slider(
                        0.0, PRICE_MAX, value=min(model.default_value, PRICE_MAX), step=0.001, elem_id="m3-price",
                        label="price: the P(correct) a query pays for all 576 visual tokens (the best scale net of it)",
                    )  # fmt: skip
                else:
                    threshold = gr.Slider(
                        0.0, 1.0, value=model.default_value, step=0.001,
                        label="threshold: the P(correct) a scale must reach", elem_id="m3-threshold",
                    )  # fmt: skip
                budget = gr.Slider(
                    1, max(scales), value=max(scales), step=1, label="token cap: the most visual tokens allowed",
                    elem_id="m3-budget",
                )  # fmt: skip
                size = gr.Radio(list(MODEL_SIZES), value=DEFAULT_MODEL_SIZE, label="FLOPs estimate for",
                                elem_id="m3-size")  # fmt: skip
        message = gr.HTML("", elem_id="m3-message")
        with gr.Row(elem_id="m3-scales"):
            cards = [gr.HTML("", elem_id=f"m3-scale-{s}", min_width=120) for s in scales]
        summary = gr.HTML("", elem_id="m3-summary")
        state = gr.State(None)

        upload.upload(page.upload, [upload], [image, message])
        controls = [threshold, budget, size]
        for trigger in (ask.click, question.submit):
            trigger(page.ask, [image, question, *controls], [state, message, *cards, summary])
        for control in controls:
            control.change(page.reroute, [state, *controls], [message, *cards, summary])
        if model.certificates:
            epsilon.change(page.epsilon_changed, [epsilon], [threshold, certificate])
    return blocks
